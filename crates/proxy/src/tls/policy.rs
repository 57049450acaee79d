//! The inbound mTLS policy (Istio PeerAuthentication, compiled by the control plane for this
//! workload) and the pure decision it makes for each accepted connection.

use std::collections::BTreeMap;

use serde::Serialize;

use super::MeshIdentity;

/// PeerAuthentication's modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// mTLS and plaintext are both accepted (Istio's default).
    #[default]
    Permissive,
    /// Only mesh mTLS: plaintext and non-mesh TLS are refused (the connection is closed).
    Strict,
    /// Plaintext accepted. Mesh mTLS from peer proxies is still terminated: the client side
    /// cannot know this workload's policy, and refusing it would break meshed callers.
    Disable,
}

/// This workload's inbound policy: a mode, and port-level overrides (`portLevelMtls`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InboundPolicy {
    pub mode: MtlsMode,
    pub ports: BTreeMap<u16, MtlsMode>,
    /// What would apply if the dry-run PeerAuthentications were enforced (`None`: none
    /// applies). Never enforced: see [`MeshIdentity::admission`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<DryRunPolicy>,
}

/// The mode and port overrides a dry-run PeerAuthentication would give this workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DryRunPolicy {
    pub mode: MtlsMode,
    pub ports: BTreeMap<u16, MtlsMode>,
}

impl InboundPolicy {
    pub fn mode_for(&self, port: u16) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.mode)
    }

    /// The mode the dry-run policies would give `port`, if any applies.
    pub fn dry_run_mode_for(&self, port: u16) -> Option<MtlsMode> {
        let d = self.dry_run.as_ref()?;
        Some(d.ports.get(&port).copied().unwrap_or(d.mode))
    }
}

impl MeshIdentity {
    /// What an inbound connection to `port` gets under the policy in force now, from one read
    /// of that policy. A connection it lets in that the dry-run policy's mode would have
    /// refused is reported (log and `trellis_mtls_dry_run_plaintext_total`), never refused.
    pub fn admission(
        &self,
        port: u16,
        mesh_hello: bool,
        certified: bool,
        peer: Option<std::net::SocketAddr>,
    ) -> Admission {
        let policy = self.inbound_policy.load();
        let enforced = admit(policy.mode_for(port), mesh_hello, certified);
        if enforced != Admission::Refuse
            && policy
                .dry_run_mode_for(port)
                .is_some_and(|would| admit(would, mesh_hello, certified) == Admission::Refuse)
        {
            self.metrics.dry_run_plaintext();
            tracing::info!(
                ?peer,
                port,
                "dry run: a connection that is not mesh mTLS would be refused (STRICT); let in"
            );
        }
        enforced
    }
}

impl MtlsMode {
    /// From the wire enum; unknown and unspecified values are PERMISSIVE (the default).
    pub fn from_wire(v: i32) -> Self {
        match trellis_api::discovery::MtlsMode::try_from(v) {
            Ok(trellis_api::discovery::MtlsMode::Strict) => Self::Strict,
            Ok(trellis_api::discovery::MtlsMode::Disable) => Self::Disable,
            _ => Self::Permissive,
        }
    }
}

impl InboundPolicy {
    /// From the discovery message; ports outside 1-65535 are dropped.
    pub fn from_wire(p: &trellis_api::discovery::InboundPolicy) -> Self {
        let ports = |m: &std::collections::HashMap<u32, i32>| {
            m.iter()
                .filter_map(|(port, mode)| {
                    let port = u16::try_from(*port).ok().filter(|p| *p != 0)?;
                    Some((port, MtlsMode::from_wire(*mode)))
                })
                .collect()
        };
        // UNSPECIFIED is "no dry-run policy", not PERMISSIVE.
        let dry_run = (p.dry_run_mode != trellis_api::discovery::MtlsMode::Unspecified as i32)
            .then(|| DryRunPolicy {
                mode: MtlsMode::from_wire(p.dry_run_mode),
                ports: ports(&p.dry_run_ports),
            });
        Self {
            mode: MtlsMode::from_wire(p.mode),
            ports: ports(&p.ports),
            dry_run,
        }
    }
}

/// Copies each policy discovery receives into the identity the listeners read, until `stop`.
pub async fn follow(
    mut policy_rx: tokio::sync::watch::Receiver<InboundPolicy>,
    identity: std::sync::Arc<super::MeshIdentity>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let policy = policy_rx.borrow_and_update().clone();
        tracing::info!(mode = ?policy.mode, ports = ?policy.ports, dry_run = ?policy.dry_run, "inbound mTLS policy");
        identity.inbound_policy.store(std::sync::Arc::new(policy));
        tokio::select! {
            () = stop.cancelled() => return,
            changed = policy_rx.changed() => if changed.is_err() { return },
        }
    }
}

/// What an inbound connection gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Mesh mTLS: terminate, verify the client, serve what is inside.
    Terminate,
    /// Serve as it came (plaintext, or the application's own TLS passed through).
    Pass,
    /// Close: STRICT and not mesh mTLS.
    Refuse,
}

/// The pure rule: a mesh ClientHello is always terminated (when this proxy has a
/// certificate); anything else passes unless the mode is STRICT.
pub fn admit(mode: MtlsMode, mesh_hello: bool, certified: bool) -> Admission {
    match (mesh_hello, mode) {
        (true, _) if certified => Admission::Terminate,
        // A mesh client reached a proxy without a certificate: only a passthrough could work,
        // and under STRICT nothing may.
        (_, MtlsMode::Strict) => Admission::Refuse,
        _ => Admission::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        use Admission::*;
        use MtlsMode::*;
        assert_eq!(admit(Strict, true, true), Terminate);
        assert_eq!(admit(Strict, false, true), Refuse);
        assert_eq!(admit(Strict, true, false), Refuse);
        assert_eq!(admit(Permissive, false, true), Pass);
        assert_eq!(admit(Permissive, true, true), Terminate);
        assert_eq!(admit(Disable, true, true), Terminate);
        assert_eq!(admit(Disable, false, true), Pass);
        let policy = InboundPolicy {
            mode: Strict,
            ports: BTreeMap::from([(8080, Permissive)]),
            dry_run: None,
        };
        assert_eq!(policy.mode_for(8080), Permissive);
        assert_eq!(policy.mode_for(9090), Strict);
        assert_eq!(policy.dry_run_mode_for(9090), None);
    }

    #[test]
    fn dry_run_from_wire() {
        use trellis_api::discovery as pb;
        let mut wire = pb::InboundPolicy {
            mode: pb::MtlsMode::Permissive as i32,
            ..Default::default()
        };
        assert_eq!(InboundPolicy::from_wire(&wire).dry_run, None);
        wire.dry_run_mode = pb::MtlsMode::Strict as i32;
        wire.dry_run_ports = [(9100, pb::MtlsMode::Permissive as i32)].into();
        let p = InboundPolicy::from_wire(&wire);
        assert_eq!(p.mode_for(80), MtlsMode::Permissive);
        assert_eq!(p.dry_run_mode_for(80), Some(MtlsMode::Strict));
        assert_eq!(p.dry_run_mode_for(9100), Some(MtlsMode::Permissive));
    }
}
