use super::*;
use trellis_identity::tls::LeafKey;

fn state(require: bool) -> CaState {
    let authority = Authority::generate("cluster.local", SystemTime::now()).unwrap();
    CaState::new(
        authority,
        JoinTokens::new(b"secret"),
        Duration::from_secs(60),
        require,
    )
}

fn csr(sa: &str) -> String {
    let id = SpiffeId::new("cluster.local", "default", sa).unwrap();
    LeafKey::generate().unwrap().csr_pem(&id).unwrap()
}

fn input<'a>(sa: &'a str, csr: &'a str, token: &'a str) -> CertifyInput<'a> {
    CertifyInput {
        namespace: "default",
        service_account: sa,
        csr: csr.as_bytes(),
        join_token: token,
    }
}

#[tokio::test]
async fn tokens_prove_exactly_one_identity() {
    let ca = state(true);
    let web_csr = csr("web");
    let token = ca.join_token("default", "web", None).unwrap();
    assert!(ca.certify(&input("web", &web_csr, &token)).await.is_ok());
    // A token for web cannot get admin, nor can a CSR for admin ride web's token.
    let admin_csr = csr("admin");
    let err = ca
        .certify(&input("admin", &admin_csr, &token))
        .await
        .unwrap_err();
    assert!(matches!(err, CertifyError::WrongIdentity { .. }), "{err}");
    let err = ca
        .certify(&input("web", &admin_csr, &token))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CertifyError::Ca(CaError::ForbiddenIdentity { .. })),
        "{err}"
    );
    // Without a token, or with a forged or expired one: refused.
    assert!(matches!(
        ca.certify(&input("web", &web_csr, "")).await,
        Err(CertifyError::TokenRequired)
    ));
    let forged = JoinTokens::new(b"guess").issue("default", "web", None, SystemTime::now());
    assert!(matches!(
        ca.certify(&input("web", &web_csr, &forged)).await,
        Err(CertifyError::Token(TokenError::BadSignature))
    ));
    let expired = JoinTokens::new(b"secret").issue(
        "default",
        "web",
        Some(Duration::from_secs(1)),
        SystemTime::now() - Duration::from_secs(10),
    );
    assert!(matches!(
        ca.certify(&input("web", &web_csr, &expired)).await,
        Err(CertifyError::Token(TokenError::Expired))
    ));
    let mut out = String::new();
    ca.metrics.render(&mut out, 1);
    assert!(out.contains("trellis_control_certificates_issued_total{result=\"issued\"} 1"));
    assert!(out.contains("trellis_control_certificates_issued_total{result=\"refused\"} 5"));
    super::metrics::render_expiries(&mut out, &ca.expiries());
    let value = |name: &str| -> u64 {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The generated issuer lives 2 years, its anchor 10.
    let issuer = value("trellis_control_issuer_cert_expiry_timestamp_seconds ");
    let anchor = value("trellis_control_trust_anchor_expiry_timestamp_seconds{anchor=\"0\"} ");
    assert!(
        issuer > now + 700 * 86400 && issuer < now + 800 * 86400,
        "{out}"
    );
    assert!(anchor > issuer, "{out}");
}

#[tokio::test]
async fn without_require_the_claimed_identity_is_accepted_but_still_matched_to_the_csr() {
    let ca = state(false);
    let web_csr = csr("web");
    assert!(ca.certify(&input("web", &web_csr, "")).await.is_ok());
    assert!(ca.certify(&input("admin", &web_csr, "")).await.is_err());
}

#[test]
fn rotation_publishes_bundles() {
    let ca = state(false);
    let rx = ca.bundle_rx();
    assert_eq!(rx.borrow().bundle.roots_pem.len(), 1);
    ca.rotate(RotationStep::Prepare).unwrap();
    assert_eq!(rx.borrow().bundle.roots_pem.len(), 2);
    assert!(ca.rotate(RotationStep::Retire).is_err());
    ca.rotate(RotationStep::Activate).unwrap();
    assert_eq!(rx.borrow().issuer_generation, 2);
    ca.rotate(RotationStep::Retire).unwrap();
    assert_eq!(rx.borrow().bundle.roots_pem.len(), 1);
}

/// A reviewer that knows one token per identity, as TokenReview would answer.
#[derive(Debug)]
struct Reviewer;

impl TokenReviewer for Reviewer {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a> {
        Box::pin(async move {
            match token {
                "web-token" => Ok(ReviewedIdentity {
                    namespace: "default".into(),
                    service_account: "web".into(),
                }),
                "down" => Err(ReviewError::Unavailable("connection refused".into())),
                _ => Err(ReviewError::Refused("invalid bearer token".into())),
            }
        })
    }
}

#[tokio::test]
async fn with_a_reviewer_only_the_reviewed_identity_is_signed() {
    let ca = state(false);
    ca.use_token_reviewer(Arc::new(Reviewer));
    let web_csr = csr("web");
    assert!(
        ca.certify(&input("web", &web_csr, "web-token"))
            .await
            .is_ok()
    );
    // A join token, or nothing, proves nothing any more.
    let join = ca.join_token("default", "web", None).unwrap();
    let err = ca
        .certify(&input("web", &web_csr, &join))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CertifyError::Review(ReviewError::Refused(_))),
        "{err}"
    );
    assert!(err.is_denied());
    let err = ca.certify(&input("web", &web_csr, "")).await.unwrap_err();
    assert!(
        matches!(err, CertifyError::ServiceAccountTokenRequired),
        "{err}"
    );
    // Web's token for another identity, or a CSR for another identity: refused.
    let admin_csr = csr("admin");
    let err = ca
        .certify(&input("admin", &admin_csr, "web-token"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the token is for default/web, not default/admin"
    );
    let err = ca
        .certify(&input("web", &admin_csr, "web-token"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CertifyError::Ca(CaError::ForbiddenIdentity { .. })),
        "{err}"
    );
    // A reviewer that cannot be reached is not the proxy's fault: retried, not denied.
    let err = ca
        .certify(&input("web", &web_csr, "down"))
        .await
        .unwrap_err();
    assert!(!err.is_denied(), "{err}");
}

#[test]
fn a_brought_ca_is_checked_file_by_file() {
    use super::plugged::{PluggedError, PluggedPems};
    let ca = state(false);
    let empty: PluggedPems = serde_json::from_str("{}").unwrap();
    assert!(empty.is_empty());
    let missing: PluggedPems =
        serde_json::from_str(r#"{"root-cert.pem": "x", "ca-cert.pem": "y"}"#).unwrap();
    let err = missing.authority(ca.trust_domain()).unwrap_err();
    assert!(
        matches!(err, PluggedError::Missing { file: "ca-key.pem" }),
        "{err}"
    );
    let garbage: PluggedPems =
        serde_json::from_str(r#"{"root-cert.pem": "nope", "ca-cert.pem": "y", "ca-key.pem": "z"}"#)
            .unwrap();
    let err = garbage
        .authority(ca.trust_domain())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("root-cert.pem is not a usable PEM"),
        "{err}"
    );
    // A typo in a file name is refused rather than ignored.
    assert!(serde_json::from_str::<PluggedPems>(r#"{"root.pem": "x"}"#).is_err());
    assert_eq!(ca.status().rotation, "idle");
}

#[test]
fn prepare_with_a_brought_ca_adds_its_root() {
    let ca = state(false);
    let next = Authority::generate("cluster.local", SystemTime::now()).unwrap();
    let root = next.root_pem().to_string();
    let status = ca.prepare_with(next).unwrap();
    assert_eq!((status.anchors, status.rotation), (2, "prepared"));
    assert_eq!(ca.bundle_rx().borrow().bundle.roots_pem[1], root);
    // A second prepare is out of order, as for a generated CA.
    let again = Authority::generate("cluster.local", SystemTime::now()).unwrap();
    assert!(ca.prepare_with(again).is_err());
    assert_eq!(
        ca.rotate(RotationStep::Activate).unwrap().issuer_generation,
        2
    );
    assert_eq!(ca.rotate(RotationStep::Retire).unwrap().anchors, 1);
    assert_eq!(ca.bundle_rx().borrow().bundle.roots_pem, vec![root]);
}

/// `POST path` with `body` to the CA's HTTP API on a real loopback socket; (status, body).
async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: control\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let status = answer.split(' ').nth(1).unwrap().parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[tokio::test]
async fn the_rotate_api_refuses_a_bad_ca_and_changes_nothing() {
    let ca = Arc::new(state(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = http::router(ca.clone()).into_make_service_with_connect_info::<http::Origin>();
    let server = tokio::spawn(axum::serve(listener, app).into_future());
    let prepare = "/api/v1/identity/rotate/prepare";
    let (code, body) = post(addr, prepare, r#"{"root-cert.pem": "x""#).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.starts_with("the request body: "), "{body}");
    let (code, body) = post(
        addr,
        prepare,
        r#"{"root-cert.pem": "x", "ca-cert.pem": "y"}"#,
    )
    .await;
    assert_eq!(
        (code, body.as_str()),
        (
            400,
            "ca-key.pem is missing (root-cert.pem, ca-cert.pem and ca-key.pem are required)"
        )
    );
    let pems = r#"{"root-cert.pem": "x", "ca-cert.pem": "y", "ca-key.pem": "z"}"#;
    let (code, body) = post(addr, "/api/v1/identity/rotate/activate", pems).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.starts_with("only prepare takes a CA"), "{body}");
    assert_eq!(ca.status().rotation, "idle");
    assert_eq!(ca.status().anchors, 1);
    // No body (what callers sent before): a generated CA, as before.
    let (code, body) = post(addr, prepare, "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(ca.status().rotation, "prepared");
    server.abort();
}

#[test]
fn only_callers_on_this_machine_are_local() {
    let origin = |peer: &str, local: &str| http::Origin {
        peer: peer.parse().unwrap(),
        local: Some(local.parse().unwrap()),
    };
    assert!(origin("127.0.0.1:40000", "127.0.0.1:15014").is_local());
    assert!(origin("[::1]:40000", "[::1]:15014").is_local());
    assert!(
        origin("10.1.2.3:40000", "10.1.2.3:15014").is_local(),
        "a pod calling its own IP"
    );
    assert!(
        !origin("10.1.2.9:40000", "10.1.2.3:15014").is_local(),
        "another pod"
    );
}

#[tokio::test]
async fn identity_changes_from_another_machine_are_refused() {
    use axum::extract::ConnectInfo;
    use tower::ServiceExt;
    let ca = Arc::new(state(false));
    let call = |peer: &str, path: &str| {
        let mut request = axum::extract::Request::post(path)
            .body(axum::body::Body::from("{}"))
            .unwrap();
        request.extensions_mut().insert(ConnectInfo(http::Origin {
            peer: peer.parse().unwrap(),
            local: Some("10.1.2.3:15014".parse().unwrap()),
        }));
        http::router(ca.clone()).oneshot(request)
    };
    for path in [
        "/api/v1/identity/rotate/prepare",
        "/api/v1/identity/join-tokens",
    ] {
        let answer = call("10.1.2.9:40000", path).await.unwrap();
        assert_eq!(answer.status(), 403, "{path}");
    }
    assert_eq!(ca.status().rotation, "idle", "nothing changed");
    let answer = call("127.0.0.1:40000", "/api/v1/identity/rotate/prepare")
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // Reads stay open: the dashboard and probes are not local.
    let mut request = axum::extract::Request::get("/api/v1/identity")
        .body(axum::body::Body::empty())
        .unwrap();
    request.extensions_mut().insert(ConnectInfo(http::Origin {
        peer: "10.1.2.9:40000".parse().unwrap(),
        local: None,
    }));
    let answer = http::router(ca.clone()).oneshot(request).await.unwrap();
    assert_eq!(answer.status(), 200);
}
