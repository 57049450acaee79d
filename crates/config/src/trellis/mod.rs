//! Trellis's own kinds (group `trellis.io`), for what the Istio, Gateway API, Linkerd and SMI
//! APIs have no resource for.
//!
//! - `RateLimitPolicy` (trellis.io/v1alpha1): local rate limits a workload's inbound proxy
//!   enforces ([`ratelimit`]).

pub mod ratelimit;
