use super::*;
use crate::{Outcome, parse_documents};

fn parse(yaml: &str) -> Vec<RequestAuthn> {
    parse_documents("ra.yaml", yaml.as_bytes())
        .into_iter()
        .map(|d| match d.outcome {
            Outcome::Resource(Resource::RequestAuthentication(p)) => *p,
            other => panic!("{other:?}"),
        })
        .collect()
}

fn error(yaml: &str) -> String {
    let docs = parse_documents("ra.yaml", yaml.as_bytes());
    match &docs[0].outcome {
        Outcome::Invalid(e) => e.to_string(),
        other => panic!("expected an error, got {other:?}"),
    }
}

const JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"}]}"#;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn reads_every_field() {
    let yaml = format!(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  jwtRules:
  - issuer: https://issuer.example
    audiences: [web, api]
    jwks: '{JWKS}'
    fromHeaders: [{{name: X-Jwt, prefix: "Token "}}]
    fromParams: [access_token]
    outputPayloadToHeader: X-Jwt-Payload
    forwardOriginalToken: true
    outputClaimToHeaders: [{{header: X-Sub, claim: sub}}]
  - issuer: other
    jwksUri: http://127.0.0.1:8080/jwks.json
"#
    );
    let p = &parse(&yaml)[0];
    assert_eq!(p.source.to_string(), "RequestAuthentication shop/jwt");
    assert_eq!(p.selector, Some(labels(&[("app", "web")])));
    let r = &p.rules[0];
    assert_eq!(r.issuer, "https://issuer.example");
    assert_eq!(r.audiences, ["web", "api"]);
    assert_eq!(r.jwks, JwksSource::Inline(JWKS.to_string()));
    assert_eq!(
        r.from_headers,
        [JwtHeader {
            name: "x-jwt".into(),
            prefix: "Token ".into()
        }]
    );
    assert_eq!(r.from_params, ["access_token"]);
    assert_eq!(r.output_payload_to_header.as_deref(), Some("x-jwt-payload"));
    assert!(r.forward_original_token);
    assert_eq!(
        r.output_claim_to_headers,
        [ClaimToHeader {
            header: "x-sub".into(),
            claim: "sub".into()
        }]
    );
    let r = &p.rules[1];
    assert_eq!(
        r.jwks,
        JwksSource::Uri("http://127.0.0.1:8080/jwks.json".into())
    );
    assert!(!r.forward_original_token, "false by default, as Istio");
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (
            "jwks: 'not json'",
            "spec.jwtRules[0].jwks",
            "not a JWKS document",
        ),
        (
            r#"jwks: '{"keys": []}'"#,
            "spec.jwtRules[0].jwks",
            "no keys",
        ),
        (
            r#"jwks: '{"kty": "RSA"}'"#,
            "spec.jwtRules[0].jwks",
            "not a JWKS",
        ),
        (
            "jwksUri: ftp://x/jwks",
            "spec.jwtRules[0].jwksUri",
            "http:// or https://",
        ),
        (
            "audiences: [a]",
            "spec.jwtRules[0]",
            "must set jwks or jwksUri",
        ),
        (
            "jwksUri: http://a/\n    jwks: '{}'",
            "spec.jwtRules[0]",
            "only one of",
        ),
        (
            "jwksUri: http://a/\n    fromHeaders: [{name: 'bad header'}]",
            "spec.jwtRules[0].fromHeaders[0].name",
            "not a valid header name",
        ),
        (
            "jwksUri: http://a/\n    outputClaimToHeaders: [{header: x, claim: ''}]",
            "spec.jwtRules[0].outputClaimToHeaders[0].claim",
            "must not be empty",
        ),
    ];
    for (rule, field, message) in cases {
        let yaml = format!(
            "apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {{name: bad, namespace: shop}}\nspec:\n  jwtRules:\n  - issuer: i\n    {rule}\n"
        );
        let err = error(&yaml);
        assert!(
            err.contains("ra.yaml")
                && err.contains("shop/bad")
                && err.contains(field)
                && err.contains(message),
            "{rule}: {err}"
        );
    }
    let err = error(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: bad}\nspec:\n  jwtRules:\n  - jwksUri: http://a/\n",
    );
    assert!(err.contains("spec.jwtRules[0].issuer"), "{err}");
    let err = error(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: bad}\nspec:\n  selector: {matchLabels: {a: b}}\n  targetRefs: [{kind: Service, name: web}]\n",
    );
    assert!(err.contains("spec.selector"), "{err}");
}

#[test]
fn scope_and_merge() {
    let yaml = format!(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: mesh, namespace: trellis-system}}
spec:
  jwtRules: [{{issuer: mesh, jwks: '{JWKS}'}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: ns, namespace: shop}}
spec:
  jwtRules: [{{issuer: ns, jwks: '{JWKS}'}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: web-only, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  jwtRules: [{{issuer: web, jwks: '{JWKS}'}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: by-service, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: api}}]
  jwtRules: [{{issuer: api, jwks: '{JWKS}'}}]
"#
    );
    let all = parse(&yaml);
    let api = Service {
        key: ServiceKey::new("shop", "api"),
        ports: vec![],
        selector: labels(&[("app", "api")]),
        cluster_ip: None,
    };
    let services = BTreeMap::from([(api.key.clone(), api)]);
    let issuers = |ns: &str, l: &[(&str, &str)]| -> Vec<String> {
        jwt_rules_for(&all, "trellis-system", ns, &labels(l), &services)
            .rules
            .into_iter()
            .map(|r| r.issuer)
            .collect()
    };
    assert_eq!(issuers("shop", &[("app", "web")]), ["mesh", "ns", "web"]);
    assert_eq!(issuers("shop", &[("app", "api")]), ["mesh", "api", "ns"]);
    assert_eq!(issuers("shop", &[("app", "db")]), ["mesh", "ns"]);
    assert_eq!(issuers("other", &[("app", "web")]), ["mesh"]);
    let r = jwt_rules_for(
        &all,
        "trellis-system",
        "shop",
        &labels(&[("app", "web")]),
        &services,
    );
    assert_eq!(
        r.policies,
        ["trellis-system/mesh", "shop/ns", "shop/web-only"]
    );
}

#[test]
fn dry_run_annotation_keeps_a_policy_apart() {
    let yaml = format!(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: enforced, namespace: shop}}
spec:
  jwtRules: [{{issuer: real, jwks: '{JWKS}'}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: trial
  namespace: shop
  annotations: {{"trellis.io/dry-run": "true"}}
spec:
  jwtRules: [{{issuer: trial, jwks: '{JWKS}'}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: istio-spelling
  namespace: shop
  annotations: {{"istio.io/dry-run": "true"}}
spec:
  jwtRules: [{{issuer: istio, jwks: '{JWKS}'}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: not-dry
  namespace: shop
  annotations: {{"trellis.io/dry-run": "false"}}
spec:
  jwtRules: [{{issuer: not-dry, jwks: '{JWKS}'}}]
"#
    );
    let all = parse(&yaml);
    let flags: Vec<bool> = all.iter().map(|p| p.dry_run).collect();
    assert_eq!(flags, [false, true, true, false]);
    let out = jwt_rules_for(
        &all,
        "trellis-system",
        "shop",
        &labels(&[]),
        &BTreeMap::new(),
    );
    let issuers: Vec<&str> = out.rules.iter().map(|r| r.issuer.as_str()).collect();
    assert_eq!(issuers, ["real", "not-dry"]);
    assert_eq!(out.policies, ["shop/enforced", "shop/not-dry"]);
    let dry: Vec<(&str, &str)> = out
        .dry_run
        .iter()
        .map(|d| (d.policy.as_str(), d.rules[0].issuer.as_str()))
        .collect();
    assert_eq!(
        dry,
        [("shop/istio-spelling", "istio"), ("shop/trial", "trial")]
    );
    // Only dry-run policies: not empty (the proxy still has something to evaluate).
    let only_dry = jwt_rules_for(
        &all[1..2],
        "trellis-system",
        "shop",
        &labels(&[]),
        &BTreeMap::new(),
    );
    assert!(only_dry.rules.is_empty() && !only_dry.is_empty());
}

#[test]
fn dry_run_annotation_must_be_true_or_false() {
    let err = error(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: bad, namespace: shop, annotations: {\"trellis.io/dry-run\": \"yes\"}}\nspec: {}\n",
    );
    assert!(
        err.contains("metadata.annotations[trellis.io/dry-run]: must be \"true\" or \"false\""),
        "{err}"
    );
}
