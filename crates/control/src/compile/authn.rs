//! Compile, for one proxy: its workload's JWT rules (Istio RequestAuthentication) as the JSON
//! carried in the discovery `InboundPolicy.request_authentication_json`. Pure: config snapshot
//! and workload in, string out.

use std::collections::BTreeMap;

use trellis_config::istio::request_authentication::{RequestAuthn, jwt_rules_for};
use trellis_model::{Service, ServiceKey, Workload};

/// Every applicable policy's `jwtRules`, merged, as JSON; `""` when none applies (so a proxy
/// of a workload without policies sees no change on the wire).
pub fn request_authentication_json(
    policies: &[RequestAuthn],
    services: &BTreeMap<ServiceKey, Service>,
    root_namespace: &str,
    workload: &Workload,
) -> String {
    let rules = jwt_rules_for(
        policies,
        root_namespace,
        &workload.namespace,
        &workload.labels,
        services,
    );
    if rules.is_empty() {
        return String::new();
    }
    // Serializing plain data (strings, vectors, enums) cannot fail; an empty string would
    // only mean "no rules", never a wrong rule.
    serde_json::to_string(&rules).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::compile::test_support::{resources, workload};
    use trellis_config::Resource;
    use trellis_model::authn::{JwksSource, RequestAuthentication};

    #[test]
    fn workload_gets_its_rules_as_json() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: shop}\nspec: {selector: {matchLabels: {app: web}}, jwtRules: [{issuer: iss, jwksUri: 'http://127.0.0.1:1/jwks'}]}\n";
        let policies = resources(yaml, |r| match r {
            Resource::RequestAuthentication(p) => Some(*p),
            _ => None,
        });
        let workload = workload("shop", "web");
        let services = BTreeMap::new();
        let json = request_authentication_json(&policies, &services, "trellis-system", &workload);
        let rules: RequestAuthentication = serde_json::from_str(&json).unwrap();
        assert_eq!(rules.policies, ["shop/jwt"]);
        assert_eq!(
            rules.rules[0].jwks,
            JwksSource::Uri("http://127.0.0.1:1/jwks".into())
        );
        let other = Workload {
            labels: BTreeMap::new(),
            ..workload
        };
        assert_eq!(
            request_authentication_json(&policies, &services, "trellis-system", &other),
            ""
        );
    }
}
