//! The proxy side of authorization without sockets: a request described from its parts and
//! extensions, the denial responses, and the counters.

use std::sync::Arc;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use trellis_model::authn::RequestAuth;

use super::*;

fn install(authz: &Authz, json: &str) {
    authz.install(decode(json).unwrap());
}

fn local() -> Dest {
    Dest::Local {
        app: Some("127.0.0.1:9080".parse().unwrap()),
        ports: Arc::from([9080u16].as_slice()),
        local_ip: "127.0.0.1".parse().unwrap(),
    }
}

fn request(principal: Option<&str>, path: &str) -> Request<()> {
    let mut req = Request::get(format!("http://reviews:9080{path}"))
        .body(())
        .unwrap();
    if let Some(p) = principal {
        req.extensions_mut()
            .insert(PeerIdentity(Arc::from(format!("spiffe://{p}"))));
    }
    req
}

const POLICIES: &str = r#"{"default":"all-unauthenticated","policies":[
 {"name":"default/reviews-viewer","action":"ALLOW","rules":[{"from":[{"principals":["cluster.local/ns/default/sa/bookinfo-productpage"]}]}]},
 {"name":"default/no-admin","action":"DENY","rules":[{"to":[{"paths":["/admin/*"]}]}]},
 {"name":"default/audit-all","action":"AUDIT","rules":[{}]},
 {"name":"default/shadow","action":"DENY","rules":[{"to":[{"paths":["/shadow"]}]}],"dry_run":true}
]}"#;

const PRODUCTPAGE: &str = "cluster.local/ns/default/sa/bookinfo-productpage";

#[tokio::test]
async fn denies_with_istio_body_and_counts() {
    let authz = Authz::default();
    install(&authz, POLICIES);
    let peer = Some("127.0.0.1:5000".parse().unwrap());
    assert!(
        authz
            .check_http(&request(Some(PRODUCTPAGE), "/reviews/0"), peer, &local())
            .is_none()
    );
    let denied = authz
        .check_http(
            &request(Some("cluster.local/ns/default/sa/sleep"), "/reviews/0"),
            peer,
            &local(),
        )
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    // The access log's response flag for it.
    let reason = denied.headers()[crate::http::TRELLIS_ERROR]
        .to_str()
        .unwrap();
    assert_eq!(crate::accesslog::response_flags(Some(reason)), "DENIED");
    let body = denied.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"RBAC: access denied");
    assert!(
        authz
            .check_http(&request(Some(PRODUCTPAGE), "/admin/x"), peer, &local())
            .is_some()
    );
    assert!(
        authz
            .check_http(&request(Some(PRODUCTPAGE), "/shadow"), peer, &local())
            .is_none()
    );
    let mut out = String::new();
    authz.render(&mut out);
    for line in [
        "trellis_authz_allowed_total{policy=\"default/reviews-viewer\",action=\"ALLOW\"} 2",
        "trellis_authz_denied_total{policy=\"default/no-admin\",action=\"DENY\"} 1",
        "trellis_authz_denied_total{policy=\"none\",action=\"ALLOW\"} 1",
        "trellis_authz_audit_total{policy=\"default/audit-all\",action=\"AUDIT\"} 4",
        "trellis_authz_dry_run_denied_total{policy=\"default/shadow\",action=\"DENY\"} 1",
    ] {
        assert!(out.contains(line), "missing {line} in\n{out}");
    }
}

#[test]
fn grpc_denial_is_permission_denied() {
    let authz = Authz::default();
    install(&authz, r#"{"default":"deny"}"#);
    let mut req = request(None, "/pkg.Svc/Get");
    req.headers_mut()
        .insert("content-type", "application/grpc+proto".parse().unwrap());
    let resp = authz.check_http(&req, None, &local()).unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "7");
}

#[test]
fn claims_from_request_auth_extension() {
    let authz = Authz::default();
    install(
        &authz,
        r#"{"policies":[{"name":"default/admins","action":"ALLOW","rules":[{"when":[{"key":{"claim":["role"]},"values":{"patterns":["admin"]},"not_values":{"patterns":[]}}]}]}]}"#,
    );
    let mut req = request(None, "/");
    assert!(authz.check_http(&req, None, &local()).is_some());
    let claims = serde_json::json!({"role": "admin"})
        .as_object()
        .cloned()
        .unwrap();
    req.extensions_mut().insert(RequestAuth {
        principal: "iss/sub".into(),
        audiences: vec![],
        presenter: None,
        claims,
    });
    assert!(authz.check_http(&req, None, &local()).is_none());
}

#[test]
fn tcp_uses_l4_rules_only() {
    let authz = Authz::default();
    // An ALLOW on principals only is all L4: it decides TCP connections as it does requests.
    install(
        &authz,
        r#"{"policies":[{"name":"default/reviews-viewer","action":"ALLOW","rules":[{"from":[{"principals":["cluster.local/ns/default/sa/bookinfo-productpage"]}]}]}]}"#,
    );
    let peer = Some("127.0.0.1:5000".parse().unwrap());
    let pp = format!("spiffe://{PRODUCTPAGE}");
    assert!(authz.allow_tcp(peer, Some(&pp), &local(), 9080));
    assert!(!authz.allow_tcp(
        peer,
        Some("spiffe://cluster.local/ns/x/sa/y"),
        &local(),
        9080
    ));
    // `no-admin` is a DENY with only an HTTP field: for TCP its (empty) L4 part matches.
    install(
        &authz,
        r#"{"policies":[{"name":"default/no-admin","action":"DENY","rules":[{"to":[{"paths":["/admin/*"]}]}]}]}"#,
    );
    assert!(!authz.allow_tcp(peer, Some(&pp), &local(), 9080));
}

#[test]
fn empty_json_allows_and_bad_json_is_an_error() {
    assert_eq!(decode("").unwrap(), WorkloadAuthz::default());
    assert!(decode("{\"default\": \"sometimes\"}").is_err());
    let authz = Authz::default();
    assert!(
        authz
            .check_http(&request(None, "/"), None, &local())
            .is_none()
    );
}
