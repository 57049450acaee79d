//! The mesh-wide HTTP/2 upgrade default (Istio's `meshConfig.h2UpgradePolicy`), from the
//! MeshConfig in the root namespace, as the wire value every proxy gets in its
//! `InboundPolicy.h2_upgrade_policy`. A DestinationRule's `connectionPool.http.h2UpgradePolicy`
//! overrides it per host in the proxy, which knows the destination. Pure.

use trellis_api::discovery as pb;
use trellis_config::istio::mesh_config::MeshConfig;

/// The root namespace's MeshConfig's `h2UpgradePolicy`; unspecified (the proxy upgrades) when
/// it has none or there is no MeshConfig there. A MeshConfig in another namespace is not the
/// mesh's and does not count.
pub fn mesh_h2_upgrade(mesh_configs: &[MeshConfig], root_namespace: &str) -> pb::H2UpgradePolicy {
    match MeshConfig::of_mesh(mesh_configs, root_namespace).and_then(|m| m.h2_upgrade) {
        None => pb::H2UpgradePolicy::Unspecified,
        Some(true) => pb::H2UpgradePolicy::Upgrade,
        Some(false) => pb::H2UpgradePolicy::DoNotUpgrade,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::test_support::resources;
    use trellis_config::Resource;

    fn meshes(yaml: &str) -> Vec<MeshConfig> {
        resources(yaml, |r| match r {
            Resource::MeshConfig(m) => Some(*m),
            _ => None,
        })
    }

    fn config_map(namespace: &str, policy: &str) -> String {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: {namespace}}}\ndata:\n  mesh: \"h2UpgradePolicy: {policy}\"\n"
        )
    }

    #[test]
    fn only_the_root_namespaces_mesh_config_sets_the_default() {
        let root = meshes(&config_map("trellis-system", "DO_NOT_UPGRADE"));
        assert_eq!(
            mesh_h2_upgrade(&root, "trellis-system"),
            pb::H2UpgradePolicy::DoNotUpgrade
        );
        let elsewhere = meshes(&config_map("default", "DO_NOT_UPGRADE"));
        assert_eq!(
            mesh_h2_upgrade(&elsewhere, "trellis-system"),
            pb::H2UpgradePolicy::Unspecified
        );
        let upgrade = meshes(&config_map("trellis-system", "UPGRADE"));
        assert_eq!(
            mesh_h2_upgrade(&upgrade, "trellis-system"),
            pb::H2UpgradePolicy::Upgrade
        );
        assert_eq!(
            mesh_h2_upgrade(&[], "trellis-system"),
            pb::H2UpgradePolicy::Unspecified
        );
    }
}
