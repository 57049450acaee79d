//! The mesh's outbound traffic policy for transparent connections (Istio's
//! `outboundTrafficPolicy.mode`): ALLOW_ANY passes a destination discovery does not know
//! through to the original address; REGISTRY_ONLY refuses it (HTTP 502 with
//! `trellis-error: registry-only`, opaque TCP closed) and counts it in
//! `trellis_outbound_blocked_total`.
//!
//! The mode arrives with the workload's policy over discovery and is read per request (per
//! stream for opaque TCP), so a change applies to live keep-alive connections too. Under
//! REGISTRY_ONLY a destination without an answer yet is refused after the first-answer wait, not
//! passed through: the mode is a guard, so it fails closed. This module decides and counts; it
//! never touches a socket.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use trellis_api::discovery as pb;

use crate::discovery::Resolution;
use crate::route::{Next, NoHop, next_for};
use crate::telemetry::family;
use crate::traffic::TargetTraffic;

/// The current mode and what it refused. One per proxy, shared by discovery (which sets the
/// mode) and every transparent connection (which reads it).
#[derive(Debug, Default)]
pub struct OutboundPolicy {
    registry_only: AtomicBool,
    blocked: AtomicU64,
}

impl OutboundPolicy {
    /// Applies the mode the control plane sent (`InboundPolicy.outbound_traffic_policy`);
    /// unspecified or unknown values are ALLOW_ANY, as from an older control plane.
    pub fn set_from_wire(&self, mode: i32) {
        let registry_only = mode == pb::OutboundTrafficPolicy::RegistryOnly as i32;
        let was = self.registry_only.swap(registry_only, Ordering::Relaxed);
        if was != registry_only {
            tracing::info!(
                mode = if registry_only {
                    "REGISTRY_ONLY"
                } else {
                    "ALLOW_ANY"
                },
                "outbound traffic policy changed"
            );
        }
    }

    pub fn registry_only(&self) -> bool {
        self.registry_only.load(Ordering::Relaxed)
    }

    /// Requests and streams refused so far.
    pub fn blocked(&self) -> u64 {
        self.blocked.load(Ordering::Relaxed)
    }

    /// Where traffic to `orig` goes: as [`next_for`] with passthrough under ALLOW_ANY; under
    /// REGISTRY_ONLY a destination discovery does not know (or has not answered) is refused.
    pub fn next(
        &self,
        resolution: &Resolution,
        traffic: &TargetTraffic,
        orig: std::net::SocketAddr,
    ) -> Result<Next, NoHop> {
        if !self.registry_only() {
            return next_for(resolution, traffic, Some(orig));
        }
        match next_for(resolution, traffic, None) {
            Err(NoHop::NotFound | NoHop::Pending) => {
                self.blocked.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%orig, "REGISTRY_ONLY: refusing traffic to a destination the mesh does not know");
                Err(NoHop::RegistryOnly)
            }
            other => other,
        }
    }

    /// Appends `trellis_outbound_blocked_total` in Prometheus text.
    pub fn render(&self, out: &mut String) {
        let name = "trellis_outbound_blocked_total";
        let help = "Outbound requests and connections refused because their destination is not in the mesh's registry (REGISTRY_ONLY).";
        // Writing into a String cannot fail.
        let _ = family(out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", self.blocked());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use trellis_model::{AppProtocol, Destination, ServiceKey};

    use super::*;

    fn orig() -> std::net::SocketAddr {
        "198.18.0.9:80".parse().unwrap()
    }

    #[test]
    fn allow_any_passes_unknown_destinations_through() {
        let policy = OutboundPolicy::default();
        let traffic = TargetTraffic::default();
        for r in [Resolution::NotFound, Resolution::Pending] {
            match policy.next(&r, &traffic, orig()) {
                Ok(Next::Hop(hop)) => assert_eq!(hop.addr, orig()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(policy.blocked(), 0);
    }

    #[test]
    fn registry_only_refuses_unknown_and_counts() {
        let policy = OutboundPolicy::default();
        policy.set_from_wire(pb::OutboundTrafficPolicy::RegistryOnly as i32);
        let traffic = TargetTraffic::default();
        for r in [Resolution::NotFound, Resolution::Pending] {
            assert_eq!(
                policy.next(&r, &traffic, orig()).err(),
                Some(NoHop::RegistryOnly)
            );
        }
        let known = Resolution::Found(Arc::new(Destination {
            authority: "api.external.test:80".into(),
            service: ServiceKey::external("api.external.test"),
            port: 80,
            protocol: AppProtocol::Http,
            ..Destination::default()
        }));
        assert!(matches!(
            policy.next(&known, &traffic, orig()),
            Ok(Next::Routed(_))
        ));
        assert_eq!(policy.blocked(), 2);
        let mut out = String::new();
        policy.render(&mut out);
        assert!(out.contains("trellis_outbound_blocked_total 2"), "{out}");
        policy.set_from_wire(pb::OutboundTrafficPolicy::AllowAny as i32);
        assert!(!policy.registry_only());
    }
}
