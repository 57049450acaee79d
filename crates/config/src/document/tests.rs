use trellis_model::{AppProtocol, TargetPort};

use super::*;

fn one(yaml: &str) -> Document {
    let mut docs = parse_documents("test.yaml", yaml.as_bytes());
    assert_eq!(docs.len(), 1, "{docs:?}");
    docs.remove(0)
}

fn error(yaml: &str) -> String {
    match one(yaml).outcome {
        Outcome::Invalid(err) => err.to_string(),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn service(yaml: &str) -> trellis_model::Service {
    match one(yaml).outcome {
        Outcome::Resource(Resource::Service(svc)) => svc,
        other => panic!("expected a Service, got {other:?}"),
    }
}

const REVIEWS: &str = "
apiVersion: v1
kind: Service
metadata:
  name: reviews
spec:
  selector: {app: reviews}
  ports:
  - name: http
    port: 9080
";

#[test]
fn service_defaults() {
    let svc = service(REVIEWS);
    assert_eq!(svc.key.to_string(), "default/reviews");
    assert_eq!(svc.ports.len(), 1);
    assert_eq!(svc.ports[0].target_port, TargetPort::Number(9080));
    assert_eq!(svc.ports[0].protocol, AppProtocol::Http);
    assert_eq!(svc.selector.get("app").map(String::as_str), Some("reviews"));
    assert_eq!(svc.cluster_ip, None);
}

#[test]
fn service_full() {
    let svc = service(
        "
apiVersion: v1
kind: Service
metadata: {name: db, namespace: prod, labels: {a: b}}
spec:
  clusterIP: 10.96.0.7
  ports:
  - {name: sql, port: 5432, targetPort: pg, appProtocol: tcp}
  - {name: admin, port: 8080, targetPort: 18080}
  - {name: dns, port: 53, protocol: UDP}
",
    );
    assert_eq!(svc.key.to_string(), "prod/db");
    assert_eq!(svc.cluster_ip, Some("10.96.0.7".parse().unwrap()));
    assert_eq!(svc.ports.len(), 2, "UDP ports are not meshed");
    assert_eq!(svc.ports[0].target_port, TargetPort::Named("pg".into()));
    assert_eq!(svc.ports[0].protocol, AppProtocol::Tcp);
    assert_eq!(svc.ports[1].target_port, TargetPort::Number(18080));
}

#[test]
fn errors_name_file_resource_and_field() {
    let bad = REVIEWS.replace("port: 9080", "port: 0");
    assert_eq!(
        error(&bad),
        "test.yaml: Service default/reviews: spec.ports[0].port: must be 1-65535, got 0"
    );
    let bad = REVIEWS.replace("port: 9080", "port: 70000");
    assert!(error(&bad).ends_with("spec.ports[0].port: must be 1-65535, got 70000"));
    let bad = REVIEWS.replace("port: 9080", "port: nine");
    let msg = error(&bad);
    assert!(
        msg.starts_with("test.yaml: Service default/reviews: spec.ports[0].port: "),
        "{msg}"
    );
    let bad = REVIEWS.replace("port: 9080", "port: 9080\n    targetPort: [1]");
    assert!(error(&bad).contains("spec.ports[0].targetPort: must be a port number or a port name"));
    let bad = REVIEWS.replace("port: 9080", "port: 9080\n    protocol: QUIC");
    assert!(error(&bad).contains("spec.ports[0].protocol: must be TCP, UDP or SCTP"));
    let bad = REVIEWS.replace("name: reviews", "name: Reviews");
    assert!(error(&bad).contains("Service default/Reviews: metadata.name: must be a DNS-1035"));
    let bad = REVIEWS.replace("selector: {app: reviews}", "selector: {app: [x]}");
    assert!(
        error(&bad).contains("spec.selector.app: "),
        "{}",
        error(&bad)
    );
    let bad = REVIEWS.replace("selector: {app: reviews}", "clusterIP: banana");
    assert!(error(&bad).contains("spec.clusterIP: must be an IP address"));
    let bad = REVIEWS.replace("  - name: http\n", "  - name: http\n    port: 1\n  - ");
    assert!(!error(&bad).is_empty());
}

#[test]
fn missing_fields() {
    let msg = error("apiVersion: v1\nkind: Service\nmetadata: {}\n");
    assert_eq!(
        msg,
        "test.yaml: Service (document 1): metadata.name: is required"
    );
    assert!(
        error("apiVersion: v1\nmetadata: {name: x}\n").contains("document 1: kind: is required")
    );
    assert!(error("kind: Service\nmetadata: {name: x}\n").contains(": apiVersion: is required"));
    assert!(error("- a\n- b\n").contains("document 1: document is not a mapping"));
}

#[test]
fn ignored_kinds_and_empty_documents() {
    let docs = parse_documents(
        "mix.yaml",
        b"---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n---\n---\n\
apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: r, namespace: x}\n",
    );
    assert_eq!(docs.len(), 2);
    assert!(matches!(&docs[0].outcome, Outcome::Ignored { reason } if reason.contains("not read")));
    assert!(
        matches!(&docs[1].outcome, Outcome::Ignored { reason } if reason.contains("not supported yet"))
    );
    assert_eq!(docs[1].resource.namespace.as_deref(), Some("x"));
    assert_eq!(docs[1].resource.document, 2);
}

#[test]
fn syntax_error_is_one_invalid_document() {
    let docs = parse_documents(
        "bad.yaml",
        format!("{REVIEWS}---\nkind: [unclosed\n").as_bytes(),
    );
    assert!(docs.iter().any(Document::is_invalid), "{docs:?}");
    let last = docs.last().unwrap();
    match &last.outcome {
        Outcome::Invalid(err) => assert!(err.message.starts_with("invalid YAML"), "{err}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn never_panics_on_garbage() {
    let mut inputs: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\0\xff\xfe".to_vec(),
        b"{{{{".to_vec(),
        b"apiVersion: v1\nkind: Service\nmetadata: 7\n".to_vec(),
        b"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: []\n".to_vec(),
        b"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: {a: 1}}\n".to_vec(),
        b"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 1.5}]}\n"
            .to_vec(),
        b"apiVersion: 1\nkind: 2\n".to_vec(),
        b"a: &a [*a]\n".to_vec(),
        b"!!binary xyz\n".to_vec(),
        "[".repeat(10_000).into_bytes(),
        b"a: b\n---\n: : :\n".to_vec(),
    ];
    // Every truncation of a valid multi-document file.
    let full = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bookinfo.yaml"
    ))
    .unwrap();
    for cut in (0..full.len()).step_by(37) {
        inputs.push(full[..cut].to_vec());
    }
    for input in &inputs {
        let docs = parse_documents("garbage.yaml", input);
        for doc in docs {
            if let Outcome::Invalid(err) = doc.outcome {
                assert!(err.to_string().starts_with("garbage.yaml: "));
            }
        }
    }
}
