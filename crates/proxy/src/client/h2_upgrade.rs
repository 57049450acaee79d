//! The mesh-wide default for HTTP/1.x to a meshed destination (Istio's
//! `meshConfig.h2UpgradePolicy`): upgraded to HTTP/2 between the two proxies, or kept HTTP/1.x
//! over pooled mTLS. It arrives with the workload's policy over discovery
//! (`InboundPolicy.h2_upgrade_policy`) and is read per request, only where the destination's
//! own DestinationRule does not say ([`super::PoolOptions::h2_upgrade`]), so a change applies
//! to the next request. This module holds the value; it never touches a connection.

use std::sync::atomic::{AtomicBool, Ordering};

use trellis_api::discovery as pb;

/// The current mesh default. One per proxy, set by discovery, read by every forwarder.
#[derive(Debug, Default)]
pub struct MeshH2Upgrade {
    /// `false` (the zero value) upgrades: Trellis's default, and an older control plane's.
    keep_http1: AtomicBool,
}

impl MeshH2Upgrade {
    /// Applies the value the control plane sent; unspecified or unknown values upgrade.
    pub fn set_from_wire(&self, policy: i32) {
        let keep = policy == pb::H2UpgradePolicy::DoNotUpgrade as i32;
        let was = self.keep_http1.swap(keep, Ordering::Relaxed);
        if was != keep {
            tracing::info!(
                h2_upgrade_policy = if keep { "DO_NOT_UPGRADE" } else { "UPGRADE" },
                "mesh-wide HTTP/2 upgrade default changed"
            );
        }
    }

    /// Whether HTTP/1.x to a meshed destination without its own policy rides HTTP/2.
    pub fn upgrade(&self) -> bool {
        !self.keep_http1.load(Ordering::Relaxed)
    }

    /// For `/config_dump`: the Istio name of the value in force.
    pub fn as_str(&self) -> &'static str {
        if self.upgrade() {
            "UPGRADE"
        } else {
            "DO_NOT_UPGRADE"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrades_unless_told_not_to() {
        let mesh = MeshH2Upgrade::default();
        assert!(mesh.upgrade(), "the default, before any policy");
        mesh.set_from_wire(pb::H2UpgradePolicy::DoNotUpgrade as i32);
        assert!(!mesh.upgrade());
        assert_eq!(mesh.as_str(), "DO_NOT_UPGRADE");
        mesh.set_from_wire(pb::H2UpgradePolicy::Unspecified as i32);
        assert!(mesh.upgrade(), "an older control plane sends nothing");
        mesh.set_from_wire(pb::H2UpgradePolicy::DoNotUpgrade as i32);
        mesh.set_from_wire(99);
        assert!(mesh.upgrade(), "an unknown value upgrades");
        mesh.set_from_wire(pb::H2UpgradePolicy::Upgrade as i32);
        assert!(mesh.upgrade());
    }
}
