//! Compile, for one proxy: its workload's inbound mTLS policy (Istio PeerAuthentication) as
//! the discovery `InboundPolicy` message. Pure: config snapshot and workload in, message out.

use trellis_api::discovery as pb;
use trellis_config::istio::peer_authentication::{
    MtlsMode, PeerAuthn, inbound_mtls, inbound_mtls_dry_run,
};
use trellis_model::Workload;

fn to_wire(mode: MtlsMode) -> pb::MtlsMode {
    match mode {
        MtlsMode::Permissive => pb::MtlsMode::Permissive,
        MtlsMode::Strict => pb::MtlsMode::Strict,
        MtlsMode::Disable => pb::MtlsMode::Disable,
    }
}

/// The policy for `workload`: the most specific PeerAuthentication's mode (PERMISSIVE when
/// none applies) and its port overrides.
pub fn inbound_policy(
    policies: &[PeerAuthn],
    root_namespace: &str,
    workload: &Workload,
) -> pb::InboundPolicy {
    let refs: Vec<&PeerAuthn> = policies.iter().collect();
    let resolved = inbound_mtls(&refs, root_namespace, &workload.namespace, &workload.labels);
    let dry = inbound_mtls_dry_run(&refs, root_namespace, &workload.namespace, &workload.labels);
    pb::InboundPolicy {
        dry_run_mode: dry.as_ref().map_or(pb::MtlsMode::Unspecified, |d| {
            to_wire(d.mode.unwrap_or(MtlsMode::Permissive))
        }) as i32,
        dry_run_ports: dry
            .map(|d| d.ports)
            .unwrap_or_default()
            .into_iter()
            .map(|(port, mode)| (u32::from(port), to_wire(mode) as i32))
            .collect(),
        mode: to_wire(resolved.mode.unwrap_or(MtlsMode::Permissive)) as i32,
        ports: resolved
            .ports
            .into_iter()
            .map(|(port, mode)| (u32::from(port), to_wire(mode) as i32))
            .collect(),
        // The other fields (authorization, telemetry, ...) are filled in by discovery.
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::test_support::{resources, workload};
    use trellis_config::Resource;

    #[test]
    fn strict_namespace_with_a_permissive_port() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: web, namespace: shop}\nspec: {selector: {matchLabels: {app: web}}, portLevelMtls: {\"9100\": {mode: PERMISSIVE}}}\n";
        let policies = resources(yaml, |r| match r {
            Resource::PeerAuthentication(p) => Some(*p),
            _ => None,
        });
        let workload = workload("shop", "web");
        let p = inbound_policy(&policies, "trellis-system", &workload);
        assert_eq!(p.mode, pb::MtlsMode::Strict as i32);
        assert_eq!(p.ports.get(&9100), Some(&(pb::MtlsMode::Permissive as i32)));
        let other = Workload {
            namespace: "default".into(),
            ..workload
        };
        assert_eq!(
            inbound_policy(&policies, "trellis-system", &other).mode,
            pb::MtlsMode::Permissive as i32
        );
    }
}
