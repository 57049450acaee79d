//! Compile, for one proxy: the local rate limits its workload's inbound side enforces (the
//! Trellis RateLimitPolicies that cover the workload) as the JSON the discovery
//! `InboundPolicy.rate_limits_json` carries. Pure: config snapshot and workload in, message
//! field out.

use std::collections::BTreeMap;

use trellis_config::trellis::ratelimit::RateLimitPolicy;
use trellis_model::ratelimit::WorkloadRateLimits;
use trellis_model::{Service, ServiceKey, Workload};

/// The limits of every policy covering `workload`, policies sorted by `namespace/name` (so
/// the result does not depend on the order files were read in), each policy's limits in its
/// own order. Scope as an AuthorizationPolicy's: selector, targetRefs to Services, or the
/// namespace (the root namespace: the mesh).
pub fn workload_rate_limits(
    policies: &[RateLimitPolicy],
    services: &BTreeMap<ServiceKey, Service>,
    root_namespace: &str,
    workload: &Workload,
) -> WorkloadRateLimits {
    let mut covering =
        super::scope::covering(policies, |p| &p.scope, services, root_namespace, workload);
    covering.sort_by(|a, b| {
        (&a.source.namespace, &a.source.name).cmp(&(&b.source.namespace, &b.source.name))
    });
    WorkloadRateLimits {
        limits: covering
            .into_iter()
            .flat_map(|p| p.limits.iter().cloned())
            .collect(),
    }
}

/// The message field: empty when no policy covers the workload (the proxy then limits
/// nothing), else the JSON of [`WorkloadRateLimits`].
pub fn rate_limits_json(
    policies: &[RateLimitPolicy],
    services: &BTreeMap<ServiceKey, Service>,
    root_namespace: &str,
    workload: &Workload,
) -> String {
    let limits = workload_rate_limits(policies, services, root_namespace, workload);
    if limits.limits.is_empty() {
        return String::new();
    }
    // Plain data with string keys: serializing cannot fail.
    serde_json::to_string(&limits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::test_support::{resources, workload};
    use trellis_config::Resource;

    fn policies(yaml: &str) -> Vec<RateLimitPolicy> {
        resources(yaml, |r| match r {
            Resource::RateLimitPolicy(p) => Some(*p),
            _ => None,
        })
    }

    #[test]
    fn selected_and_namespace_policies_apply_in_name_order() {
        let yaml = "apiVersion: trellis.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: b-web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  limits: [{name: web, requestsPerUnit: 5, unit: second}]\n---\napiVersion: trellis.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: a-all, namespace: shop}\nspec:\n  limits: [{name: all, requestsPerUnit: 50, unit: minute}]\n---\napiVersion: trellis.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: other, namespace: bank}\nspec:\n  limits: [{requestsPerUnit: 1, unit: hour}]\n";
        let p = policies(yaml);
        let none = BTreeMap::new();
        let web = workload_rate_limits(&p, &none, "trellis-system", &workload("shop", "web"));
        let names: Vec<_> = web.limits.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["all", "web"]);
        let db = workload_rate_limits(&p, &none, "trellis-system", &workload("shop", "db"));
        assert_eq!(db.limits.len(), 1);
        assert_eq!(
            rate_limits_json(&p, &none, "trellis-system", &workload("elsewhere", "x")),
            ""
        );
        let json = rate_limits_json(&p, &none, "trellis-system", &workload("bank", "x"));
        let back: WorkloadRateLimits = serde_json::from_str(&json).unwrap();
        assert_eq!(back.limits[0].policy, "bank/other");
    }
}
