//! Authorization (Istio `AuthorizationPolicy` semantics, plus a Linkerd-style mesh default) as
//! pure data and one pure decision, [`evaluate`]. The control plane compiles a
//! [`WorkloadAuthz`] per proxy; the proxy describes each inbound request or connection as a
//! [`Request`] and enforces the [`Decision`]. No I/O, no clocks, no logging here: reporting
//! (metrics, logs, dry-run) belongs to the caller, from what the decision names.

mod cidr;
mod eval;
pub mod pattern;
mod policy;

pub use cidr::{Cidr, ParseCidrError};
pub use eval::{
    Decision, Hit, HttpAttributes, Reason, Request, evaluate, first_match, rule_is_http_only,
};
pub use policy::{
    Action, Condition, DefaultPolicy, Key, Operation, Policy, Rule, Scope, Source, Values,
    WorkloadAuthz,
};

#[cfg(test)]
mod tests;
