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

#[test]
fn tokens_prove_exactly_one_identity() {
    let ca = state(true);
    let web_csr = csr("web");
    let token = ca.join_token("default", "web", None).unwrap();
    assert!(ca.certify(&input("web", &web_csr, &token)).is_ok());
    // A token for web cannot get admin, nor can a CSR for admin ride web's token.
    let admin_csr = csr("admin");
    let err = ca.certify(&input("admin", &admin_csr, &token)).unwrap_err();
    assert!(matches!(err, CertifyError::WrongIdentity { .. }), "{err}");
    let err = ca.certify(&input("web", &admin_csr, &token)).unwrap_err();
    assert!(
        matches!(err, CertifyError::Ca(CaError::ForbiddenIdentity { .. })),
        "{err}"
    );
    // Without a token, or with a forged or expired one: refused.
    assert!(matches!(
        ca.certify(&input("web", &web_csr, "")),
        Err(CertifyError::TokenRequired)
    ));
    let forged = JoinTokens::new(b"guess").issue("default", "web", None, SystemTime::now());
    assert!(matches!(
        ca.certify(&input("web", &web_csr, &forged)),
        Err(CertifyError::Token(TokenError::BadSignature))
    ));
    let expired = JoinTokens::new(b"secret").issue(
        "default",
        "web",
        Some(Duration::from_secs(1)),
        SystemTime::now() - Duration::from_secs(10),
    );
    assert!(matches!(
        ca.certify(&input("web", &web_csr, &expired)),
        Err(CertifyError::Token(TokenError::Expired))
    ));
    let mut out = String::new();
    ca.metrics.render(&mut out, 1);
    assert!(out.contains("trellis_control_certificates_issued_total{result=\"issued\"} 1"));
    assert!(out.contains("trellis_control_certificates_issued_total{result=\"refused\"} 5"));
}

#[test]
fn without_require_the_claimed_identity_is_accepted_but_still_matched_to_the_csr() {
    let ca = state(false);
    let web_csr = csr("web");
    assert!(ca.certify(&input("web", &web_csr, "")).is_ok());
    assert!(ca.certify(&input("admin", &web_csr, "")).is_err());
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
