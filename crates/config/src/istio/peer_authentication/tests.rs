use super::*;
use crate::{Outcome, parse_documents};

fn parse(yaml: &str) -> Vec<PeerAuthn> {
    parse_documents("pa.yaml", yaml.as_bytes())
        .into_iter()
        .map(|d| match d.outcome {
            Outcome::Resource(Resource::PeerAuthentication(p)) => *p,
            other => panic!("{other:?}"),
        })
        .collect()
}

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: trellis-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: legacy}
spec:
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: metrics-port, namespace: legacy}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: UNSET}
  portLevelMtls:
    "9100": {mode: DISABLE}
"#;

#[test]
fn workload_beats_namespace_beats_mesh() {
    let all = parse(POLICIES);
    let refs: Vec<&PeerAuthn> = all.iter().collect();
    let none = BTreeMap::new();
    let web = BTreeMap::from([("app".to_string(), "web".to_string())]);
    // Mesh-wide STRICT for a namespace without its own policy.
    let shop = inbound_mtls(&refs, "trellis-system", "shop", &none);
    assert_eq!(shop.mode, Some(MtlsMode::Strict));
    // The namespace's PERMISSIVE wins over the mesh's.
    let legacy = inbound_mtls(&refs, "trellis-system", "legacy", &none);
    assert_eq!(legacy.mode, Some(MtlsMode::Permissive));
    assert!(legacy.ports.is_empty());
    // The workload policy is UNSET: the namespace's mode, plus its port override.
    let legacy_web = inbound_mtls(&refs, "trellis-system", "legacy", &web);
    assert_eq!(legacy_web.mode, Some(MtlsMode::Permissive));
    assert_eq!(
        legacy_web.ports,
        BTreeMap::from([(9100, MtlsMode::Disable)])
    );
    // Another root namespace: nothing mesh-wide.
    assert_eq!(
        inbound_mtls(&refs, "istio-system", "shop", &none).mode,
        None
    );
}

#[test]
fn refuses_bad_modes_and_ports() {
    for (yaml, field) in [
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\nspec: {mtls: {mode: STRICTEST}}\n",
            "spec.mtls.mode",
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\nspec: {selector: {matchLabels: {app: x}}, portLevelMtls: {\"0\": {mode: STRICT}}}\n",
            "spec.portLevelMtls[0]",
        ),
    ] {
        let docs = parse_documents("pa.yaml", yaml.as_bytes());
        match &docs[0].outcome {
            Outcome::Invalid(err) => {
                assert_eq!(err.field.as_deref(), Some(field), "{err}")
            }
            other => panic!("{other:?}"),
        }
    }
    // Port-level settings without a selector are noted and dropped, as Istio does.
    let p = parse(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\nspec: {portLevelMtls: {\"80\": {mode: STRICT}}}\n",
    );
    assert!(p[0].port_modes.is_empty());
    assert_eq!(p[0].notes.len(), 1);
}

#[test]
fn dry_run_policy_is_reported_not_enforced() {
    let all = parse(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec:
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: web-strict
  namespace: shop
  annotations: {"trellis.io/dry-run": "true"}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
  portLevelMtls: {"9100": {mode: PERMISSIVE}}
"#,
    );
    assert_eq!(
        all.iter().map(|p| p.dry_run).collect::<Vec<_>>(),
        [false, true]
    );
    let refs: Vec<&PeerAuthn> = all.iter().collect();
    let web: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
    let enforced = inbound_mtls(&refs, "trellis-system", "shop", &web);
    assert_eq!(enforced.mode, Some(MtlsMode::Permissive));
    assert!(enforced.ports.is_empty());
    let would = inbound_mtls_dry_run(&refs, "trellis-system", "shop", &web).unwrap();
    assert_eq!(would.mode, Some(MtlsMode::Strict));
    assert_eq!(would.ports, BTreeMap::from([(9100, MtlsMode::Permissive)]));
    // A workload the dry-run policy does not select: nothing to report.
    let db: BTreeMap<String, String> = [("app".to_string(), "db".to_string())].into();
    assert_eq!(
        inbound_mtls_dry_run(&refs, "trellis-system", "shop", &db),
        None
    );
}

#[test]
fn dry_run_annotation_value_is_checked() {
    let docs = parse_documents(
        "pa.yaml",
        b"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x, namespace: shop, annotations: {\"istio.io/dry-run\": \"1\"}}\nspec: {mtls: {mode: STRICT}}\n",
    );
    match &docs[0].outcome {
        Outcome::Invalid(e) => assert!(
            e.to_string()
                .contains("metadata.annotations[istio.io/dry-run]: must be \"true\" or \"false\""),
            "{e}"
        ),
        other => panic!("expected an error, got {other:?}"),
    }
}
