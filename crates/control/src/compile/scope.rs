//! Which policies scoped by a [`Scope`] (AuthorizationPolicy, RateLimitPolicy) cover a
//! workload: Istio's rule for kinds that merge every covering policy rather than pick the most
//! specific one. Only the filter is shared; each kind orders what it gets its own way.
//!
//! Kinds that pick or override by specificity (PeerAuthentication, Telemetry) and those with
//! their own scope fields (RequestAuthentication, WasmPlugin) resolve in `trellis_config`.

use std::collections::BTreeMap;

use trellis_model::authz::Scope;
use trellis_model::{Service, ServiceKey, Workload};

/// The policies among `policies` whose scope (`scope_of`) covers `workload`, in their order.
pub fn covering<'a, P>(
    policies: &'a [P],
    scope_of: impl Fn(&P) -> &Scope,
    services: &BTreeMap<ServiceKey, Service>,
    root_namespace: &str,
    workload: &Workload,
) -> Vec<&'a P> {
    // The Services that select the workload: what a policy's targetRefs may name.
    let backing: Vec<ServiceKey> = services
        .values()
        .filter(|s| super::selects(s, workload))
        .map(|s| s.key.clone())
        .collect();
    policies
        .iter()
        .filter(|p| {
            scope_of(p).covers(
                root_namespace,
                &workload.namespace,
                &workload.labels,
                &backing,
            )
        })
        .collect()
}
