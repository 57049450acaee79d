//! Compile, for one proxy: the authorization its workload's inbound side enforces (Istio
//! AuthorizationPolicies that cover the workload, and the mesh default) as the JSON the
//! discovery `InboundPolicy.authorization_json` carries. Pure: config snapshot and workload
//! in, message field out.

use std::collections::BTreeMap;

use trellis_config::istio::authorization_policy::AuthzPolicy;
use trellis_model::authz::{DefaultPolicy, WorkloadAuthz};
use trellis_model::{Service, ServiceKey, Workload};

/// A workload label (local mode) that overrides the mesh default for that workload, as
/// Linkerd's annotation of the same name does for a pod.
pub const DEFAULT_POLICY_LABEL: &str = "config.linkerd.io/default-inbound-policy";

/// The policies covering `workload` (sorted by name, so the result does not depend on the
/// order files were read in) and its default.
pub fn workload_authz(
    policies: &[AuthzPolicy],
    services: &BTreeMap<ServiceKey, Service>,
    root_namespace: &str,
    default: DefaultPolicy,
    workload: &Workload,
) -> WorkloadAuthz {
    let mut covering: Vec<_> =
        super::scope::covering(policies, |p| &p.scope, services, root_namespace, workload)
            .into_iter()
            .map(|p| p.policy.clone())
            .collect();
    covering.sort_by(|a, b| a.name.cmp(&b.name));
    let default = workload
        .labels
        .get(DEFAULT_POLICY_LABEL)
        .and_then(|v| DefaultPolicy::parse(v))
        .unwrap_or(default);
    WorkloadAuthz {
        default,
        cluster_networks: Vec::new(),
        policies: covering,
    }
}

/// The `--default-inbound-policy` flag's parser.
pub fn parse_default_policy(s: &str) -> Result<DefaultPolicy, String> {
    DefaultPolicy::parse(s).ok_or_else(|| {
        format!(
            "{s:?} is not a default inbound policy; use one of {}",
            DefaultPolicy::NAMES.join(", ")
        )
    })
}

/// [`workload_authz`] as the wire JSON.
pub fn authorization_json(
    policies: &[AuthzPolicy],
    services: &BTreeMap<ServiceKey, Service>,
    root_namespace: &str,
    default: DefaultPolicy,
    workload: &Workload,
) -> String {
    let authz = workload_authz(policies, services, root_namespace, default, workload);
    // Plain data with string keys: serialization cannot fail; an empty string (allow all, as
    // an older control plane) would be the safe reading if it ever did.
    serde_json::to_string(&authz).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::test_support::{resources, workload};
    use trellis_config::Resource;

    fn parse(yaml: &str) -> (Vec<AuthzPolicy>, BTreeMap<ServiceKey, Service>) {
        let policies = resources(yaml, |r| match r {
            Resource::AuthorizationPolicy(p) => Some(*p),
            _ => None,
        });
        let services = resources(yaml, |r| match r {
            Resource::Service(s) => Some((s.key.clone(), s)),
            _ => None,
        });
        (policies, services.into_iter().collect())
    }

    const YAML: &str = "\
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {selector: {app: reviews}, ports: [{port: 9080}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-legacy, namespace: trellis-system}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [legacy]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec: {targetRefs: [{kind: Service, name: reviews}], rules: [{from: [{source: {principals: [\"*/sa/productpage\"]}}]}]}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: ratings-only, namespace: default}
spec: {selector: {matchLabels: {app: ratings}}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop-all, namespace: shop}
spec: {rules: [{}]}
";

    #[test]
    fn mesh_namespace_selector_and_target_ref_scopes() {
        let (policies, services) = parse(YAML);
        let names = |w: &Workload| -> Vec<String> {
            workload_authz(
                &policies,
                &services,
                "trellis-system",
                DefaultPolicy::AllUnauthenticated,
                w,
            )
            .policies
            .into_iter()
            .map(|p| p.name)
            .collect()
        };
        assert_eq!(
            names(&workload("default", "reviews")),
            ["default/reviews-viewer", "trellis-system/mesh-deny-legacy"]
        );
        assert_eq!(
            names(&workload("default", "ratings")),
            ["default/ratings-only", "trellis-system/mesh-deny-legacy"]
        );
        assert_eq!(
            names(&workload("shop", "reviews")),
            ["shop/shop-all", "trellis-system/mesh-deny-legacy"]
        );
    }

    #[test]
    fn default_from_flag_and_workload_label() {
        let (policies, services) = parse(YAML);
        let mut w = workload("other", "x");
        let json = authorization_json(
            &policies,
            &services,
            "trellis-system",
            DefaultPolicy::Deny,
            &w,
        );
        let back: WorkloadAuthz = serde_json::from_str(&json).unwrap();
        assert_eq!(back.default, DefaultPolicy::Deny);
        w.labels
            .insert(DEFAULT_POLICY_LABEL.into(), "all-authenticated".into());
        let authz = workload_authz(
            &policies,
            &services,
            "trellis-system",
            DefaultPolicy::Deny,
            &w,
        );
        assert_eq!(authz.default, DefaultPolicy::AllAuthenticated);
    }
}
