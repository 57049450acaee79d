//! Endpoint deltas: when nothing but a destination's own endpoints changed since the value a
//! stream last sent for a target, the Update carries the endpoints removed and added
//! (`EndpointDelta`, applied by the proxy on the destination it holds) instead of the whole
//! destination (route JSON and every endpoint again, ≈ 5.6 kB for 50 endpoints).
//!
//! - [`endpoint_changes`] and [`plan`] are the pure decision: a delta only when the rest of the
//!   destination is equal, every address is unique on both sides (addresses are the key the
//!   proxy removes by), the endpoints that stay kept their order, and the delta encodes smaller
//!   than the whole destination.
//! - [`shared_plan`] computes that once per pair of compiled values, for every stream: thousands
//!   of streams go from the same previous value to the same new one (see `cache`); the plan is
//!   kept on the new value, so it goes when the value does.
//! - [`StreamDeltas`] is one stream's record: whether the proxy negotiated deltas, the version
//!   last sent per target (a delta's base), and the deltas sent lately, so that a Nacked delta
//!   is answered with the whole destination.
//!
//! It must not send or wait: the session sends what it builds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use prost::Message as _;
use trellis_api::discovery as pb;
use trellis_model::{Destination, Endpoint, Target};

use crate::discovery::cache::Compiled;
use crate::discovery::grpc::SharedUpdate;
use crate::telemetry::Metrics;
use crate::wire;

/// What changed in a destination's own endpoints, when nothing else did.
#[derive(Debug, PartialEq)]
pub struct Changes<'a> {
    /// Addresses to remove from the previous list, in its order.
    pub removed: Vec<SocketAddr>,
    /// Endpoints to insert, each with its index in the new list, ascending.
    pub added: Vec<(usize, &'a Endpoint)>,
}

/// The delta from `before` to `after`, or `None` when it cannot be one: something besides the
/// endpoints differs, an address appears twice on either side (several remote endpoints behind
/// one east-west gateway do), or endpoints that stay changed their relative order.
pub fn endpoint_changes<'a>(before: &Destination, after: &'a Destination) -> Option<Changes<'a>> {
    let rest_equal = before.authority == after.authority
        && before.service == after.service
        && before.port == after.port
        && before.protocol == after.protocol
        && before.policy == after.policy
        && before.routes == after.routes
        && before.tcp_routes == after.tcp_routes
        && before.backends == after.backends;
    if !rest_equal {
        return None;
    }
    let old: HashMap<SocketAddr, &Endpoint> =
        before.endpoints.iter().map(|e| (e.address, e)).collect();
    let new: HashSet<SocketAddr> = after.endpoints.iter().map(|e| e.address).collect();
    if old.len() != before.endpoints.len() || new.len() != after.endpoints.len() {
        return None;
    }
    // An endpoint stays when its address is on both sides with equal fields; any other old one
    // is removed, any other new one added (a changed endpoint is both).
    let stays = |e: &Endpoint| old.get(&e.address).is_some_and(|o| *o == e);
    let mut added = Vec::new();
    let mut kept_after = Vec::new();
    for (i, e) in after.endpoints.iter().enumerate() {
        if stays(e) {
            kept_after.push(e.address);
        } else {
            added.push((i, e));
        }
    }
    let kept: HashSet<SocketAddr> = kept_after.iter().copied().collect();
    let mut removed = Vec::new();
    let mut kept_before = Vec::with_capacity(kept_after.len());
    for e in &before.endpoints {
        if kept.contains(&e.address) {
            kept_before.push(e.address);
        } else {
            removed.push(e.address);
        }
    }
    // The proxy keeps the order of what stays; a reordering needs the whole list.
    (kept_before == kept_after).then_some(Changes { removed, added })
}

/// How a changed target is sent.
#[derive(Debug, PartialEq)]
pub enum Plan {
    Full,
    /// The delta with `base_version` 0: each stream sets its own.
    Delta(pb::EndpointDelta),
}

/// Full or delta for a stream that was sent `before` and must now be sent `after`.
pub fn plan(before: &Compiled, after: &Compiled) -> Plan {
    let (Some(b), Some(a)) = (&before.dest, &after.dest) else {
        return Plan::Full;
    };
    let Some(changes) = endpoint_changes(b, a) else {
        return Plan::Full;
    };
    let delta = pb::EndpointDelta {
        base_version: 0,
        removed: changes.removed.iter().map(ToString::to_string).collect(),
        added: changes
            .added
            .iter()
            .map(|(i, e)| pb::PlacedEndpoint {
                // A destination of over 4 billion endpoints is not sent by any means.
                index: u32::try_from(*i).unwrap_or(u32::MAX),
                endpoint: Some(wire::endpoint_to_wire(e)),
            })
            .collect(),
    };
    // The stream's base version adds at most 10 bytes to the delta; the full message is what
    // the Update would carry instead.
    let full = after.encoded().map_or(0, |d| d.len());
    if delta.encoded_len() + 10 < full {
        Plan::Delta(delta)
    } else {
        Plan::Full
    }
}

/// [`plan`], computed once per pair however many streams ask: the plan is kept on `after`,
/// keyed by its predecessor (`Compiled::plan_from`), so it lives as long as the value does.
pub fn shared_plan(before: &Arc<Compiled>, after: &Arc<Compiled>) -> Arc<Plan> {
    after.plan_from(before, || plan(before, after))
}

/// Deltas remembered per stream to answer a Nack; older ones are forgotten (their Nack then
/// goes unanswered, as a Nack of a whole destination does).
const MAX_RECENT: usize = 256;

/// One stream's side of endpoint deltas.
#[derive(Debug, Default)]
pub struct StreamDeltas {
    enabled: bool,
    /// The version of the last Update sent for each target.
    sent: HashMap<Target, u64>,
    /// (version, target) of the deltas sent lately, oldest first.
    recent: VecDeque<(u64, Target)>,
}

impl StreamDeltas {
    /// Uses deltas on this stream if the proxy negotiated them (see `protocol_version`).
    pub fn enable(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// What Welcome.features says the control plane will use.
    pub fn features(&self) -> Vec<i32> {
        if self.enabled {
            vec![pb::Feature::EndpointDelta as i32]
        } else {
            Vec::new()
        }
    }

    /// The Update that moves the proxy from `before` (what this stream last sent for `target`,
    /// `None` if nothing) to `after`, numbered `version`: a delta when the proxy takes them
    /// and [`shared_plan`] says so, else the whole destination.
    pub fn update(
        &mut self,
        version: u64,
        target: &Target,
        before: Option<&Arc<Compiled>>,
        after: &Arc<Compiled>,
        metrics: &Metrics,
    ) -> SharedUpdate {
        let base = self.sent.insert(target.clone(), version);
        let delta = match (self.enabled, before, base) {
            (true, Some(before), Some(base)) => match &*shared_plan(before, after) {
                Plan::Delta(delta) => Some(pb::EndpointDelta {
                    base_version: base,
                    ..delta.clone()
                }),
                Plan::Full => None,
            },
            _ => None,
        };
        if delta.is_some() {
            metrics.endpoint_delta();
            if self.recent.len() >= MAX_RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back((version, target.clone()));
        }
        SharedUpdate {
            version,
            target: Some(wire::target_to_wire(target)),
            destination: if delta.is_some() {
                None
            } else {
                after.encoded()
            },
            endpoint_delta: delta,
        }
    }

    /// The target to send whole again if `version` was a delta (the proxy could not apply it).
    pub fn nacked(&mut self, version: u64) -> Option<Target> {
        let at = self.recent.iter().position(|(v, _)| *v == version)?;
        self.recent.remove(at).map(|(_, target)| target)
    }

    /// The stream no longer follows `target`.
    pub fn forget(&mut self, target: &Target) {
        self.sent.remove(target);
        self.recent.retain(|(_, t)| t != target);
    }
}

#[cfg(test)]
mod tests;
