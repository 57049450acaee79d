//! AuthorizationPolicy YAML -> model, and errors that name the field.

use trellis_model::authz::{Action, Key, Values};

use super::AuthzPolicy;
use crate::{Outcome, Resource, parse_documents};

fn parse(yaml: &str) -> Result<AuthzPolicy, String> {
    let docs = parse_documents("authz.yaml", yaml.as_bytes());
    match docs.into_iter().next().map(|d| d.outcome) {
        Some(Outcome::Resource(Resource::AuthorizationPolicy(p))) => Ok(*p),
        Some(Outcome::Invalid(e)) => Err(e.to_string()),
        other => panic!("unexpected {other:?}"),
    }
}

fn doc(version: &str, meta: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/{version}\nkind: AuthorizationPolicy\nmetadata: {meta}\nspec: {spec}\n"
    )
}

#[test]
fn reads_a_full_policy() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: reviews-viewer
  namespace: default
  annotations: {"trellis.io/dry-run": "true"}
spec:
  selector:
    matchLabels: {app: reviews}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]
        notNamespaces: ["test"]
        ipBlocks: ["10.0.0.0/8", "127.0.0.1"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/reviews/*"]
        notPaths: ["/reviews/secret"]
        ports: ["9080"]
    when:
    - key: request.headers[End-User]
      values: ["jason"]
    - key: request.auth.claims[realm][role]
      notValues: ["guest"]
    - key: source.ip
      values: ["10.1.0.0/16"]
"#;
    let p = parse(yaml).unwrap();
    assert_eq!(p.policy.name, "default/reviews-viewer");
    assert_eq!(p.policy.action, Action::Allow);
    assert!(p.policy.dry_run);
    assert_eq!(p.scope.selector.unwrap()["app"], "reviews");
    let rule = &p.policy.rules[0];
    assert_eq!(rule.from[0].source_ip_count(), 2);
    assert_eq!(rule.to[0].ports, vec![9080]);
    assert_eq!(rule.when[0].key, Key::RequestHeader("end-user".into()));
    assert_eq!(
        rule.when[1].key,
        Key::Claim(vec!["realm".into(), "role".into()])
    );
    assert!(matches!(rule.when[2].values, Values::Cidrs(_)));
}

trait IpCount {
    fn source_ip_count(&self) -> usize;
}
impl IpCount for trellis_model::authz::Source {
    fn source_ip_count(&self) -> usize {
        self.ip_blocks.len()
    }
}

#[test]
fn empty_spec_is_allow_nothing_with_a_note() {
    let p = parse(&doc("v1beta1", "{name: deny-all, namespace: shop}", "{}")).unwrap();
    assert_eq!(p.policy.action, Action::Allow);
    assert!(p.policy.rules.is_empty());
    assert!(p.notes[0].contains("denies every request"), "{:?}", p.notes);
    assert!(p.scope.selector.is_none());
    assert_eq!(p.scope.namespace, "shop");
}

#[test]
fn target_refs_to_a_service() {
    let p = parse(&doc(
        "v1",
        "{name: x, namespace: default}",
        "{targetRefs: [{kind: Service, group: \"\", name: reviews}], rules: [{}]}",
    ))
    .unwrap();
    assert_eq!(p.scope.services, vec!["reviews".to_string()]);
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (
            "{action: CUSTOM, provider: {name: ext}}",
            "spec.provider: CUSTOM",
        ),
        (
            "{action: MAYBE}",
            "spec.action: must be ALLOW, DENY or AUDIT",
        ),
        (
            "{rules: [{from: [{source: {principals: [\"a*b\"]}}]}]}",
            "spec.rules[0].from[0].source.principals[0]: `*` is only supported",
        ),
        (
            "{rules: [{from: [{source: {ipBlocks: [\"10.0.0.0/40\"]}}]}]}",
            "spec.rules[0].from[0].source.ipBlocks[0]: \"10.0.0.0/40\" is not an IP",
        ),
        (
            "{rules: [{to: [{operation: {ports: [\"http\"]}}]}]}",
            "spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port",
        ),
        (
            "{rules: [{to: [{operation: {}}]}]}",
            "spec.rules[0].to[0].operation: must set at least one field",
        ),
        (
            "{rules: [{from: [{}]}]}",
            "spec.rules[0].from[0].source: is required",
        ),
        (
            "{rules: [{when: [{key: request.weird, values: [a]}]}]}",
            "spec.rules[0].when[0].key: \"request.weird\": not a supported condition key",
        ),
        (
            "{rules: [{when: [{key: source.ip}]}]}",
            "spec.rules[0].when[0]: must set values or notValues",
        ),
        (
            "{rules: [{when: [{key: destination.port, values: [x]}]}]}",
            "spec.rules[0].when[0].values[0]: \"x\" is not a port",
        ),
        (
            "{selector: {matchLabels: {app: a}}, targetRefs: [{kind: Service, name: a}]}",
            "spec.selector: cannot be set together with spec.targetRefs",
        ),
        (
            "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: a}]}",
            "spec.targetRefs[0].kind: only Services",
        ),
        (
            "{rules: [{form: []}]}",
            "spec.rules[0].form: unknown field `form`",
        ),
    ];
    for (spec, want) in cases {
        let err = parse(&doc("v1", "{name: bad, namespace: default}", spec)).unwrap_err();
        assert!(
            err.starts_with("authz.yaml: AuthorizationPolicy default/bad: ") && err.contains(want),
            "{spec}: {err}"
        );
    }
    let err = parse(&doc(
        "v1",
        "{name: bad, annotations: {\"istio.io/dry-run\": \"yes\"}}",
        "{}",
    ))
    .unwrap_err();
    assert!(
        err.contains("metadata.annotations[istio.io/dry-run]: must be \"true\" or \"false\""),
        "{err}"
    );
}
