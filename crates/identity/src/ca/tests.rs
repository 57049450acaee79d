use super::*;
use crate::tls::{LeafKey, spiffe_ids};
use rustls::pki_types::pem::PemObject;
use std::time::UNIX_EPOCH;

fn now() -> SystemTime {
    // Certificates need a real-ish time: rcgen encodes it, webpki checks it in tls tests.
    SystemTime::now()
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", sa).unwrap()
}

fn leaf_der(chain_pem: &str) -> Vec<u8> {
    first_cert_der(chain_pem, "chain").unwrap()
}

#[test]
fn issues_the_allowed_identity_only() {
    let ca = Authority::generate("cluster.local", now()).unwrap();
    let key = LeafKey::generate().unwrap();
    let csr = key.csr_pem(&id("web")).unwrap();
    let issued = ca
        .issue(csr.as_bytes(), &id("web"), DEFAULT_LEAF_TTL, now())
        .unwrap();
    assert_eq!(spiffe_ids(&leaf_der(&issued.chain_pem)), vec![id("web")]);
    assert_eq!(issued.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
    // A CSR for another identity than the proof allows is refused.
    let err = ca
        .issue(csr.as_bytes(), &id("admin"), DEFAULT_LEAF_TTL, now())
        .unwrap_err();
    assert!(matches!(err, CaError::ForbiddenIdentity { .. }), "{err}");
    // A tampered CSR (signature no longer matches) is refused.
    let mut der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let last = der.len() - 3;
    der[last] ^= 0x55;
    assert!(matches!(
        ca.issue(&der, &id("web"), DEFAULT_LEAF_TTL, now()),
        Err(CaError::Csr(_))
    ));
    assert!(matches!(
        ca.issue(b"garbage", &id("web"), DEFAULT_LEAF_TTL, now()),
        Err(CaError::Csr(_))
    ));
}

#[test]
fn leaf_lifetime_follows_ttl() {
    let t0 = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let ca = Authority::generate("cluster.local", t0).unwrap();
    let key = LeafKey::generate().unwrap();
    let csr = key.csr_pem(&id("web")).unwrap();
    let issued = ca
        .issue(csr.as_bytes(), &id("web"), Duration::from_secs(10), t0)
        .unwrap();
    assert_eq!(issued.not_after, t0 + Duration::from_secs(10));
    assert_eq!(
        crate::tls::not_after(&leaf_der(&issued.chain_pem)),
        Some(t0 + Duration::from_secs(10))
    );
}

#[test]
fn rotation_steps_in_order() {
    let mut ca = Authority::generate("cluster.local", now()).unwrap();
    let old_root = ca.root_pem().to_string();
    assert!(ca.activate_rotation().is_err());
    assert!(ca.retire_rotation().is_err());
    ca.prepare_rotation(now()).unwrap();
    assert_eq!(ca.bundle().roots_pem.len(), 2);
    assert_eq!(ca.status().rotation, "prepared");
    assert!(ca.prepare_rotation(now()).is_err());
    assert_eq!(ca.issuer_generation(), 1);
    ca.activate_rotation().unwrap();
    assert_eq!(ca.issuer_generation(), 2);
    assert_ne!(ca.root_pem(), old_root);
    assert_eq!(ca.bundle().roots_pem.len(), 2);
    ca.retire_rotation().unwrap();
    assert_eq!(ca.bundle().roots_pem, vec![ca.root_pem().to_string()]);
    assert_eq!(ca.status().rotation, "idle");
}

#[test]
fn loads_a_user_ca_and_refuses_a_mismatched_pair() {
    let t = now();
    let (root_pem, issuer) = generate_pair("cluster.local", t, "x").unwrap();
    let key_pem = issuer.issuer.key().serialize_pem();
    let ca = Authority::from_pems("cluster.local", &root_pem, &issuer.cert_pem, &key_pem).unwrap();
    let key = LeafKey::generate().unwrap();
    let csr = key.csr_pem(&id("web")).unwrap();
    assert!(
        ca.issue(csr.as_bytes(), &id("web"), DEFAULT_LEAF_TTL, t)
            .is_ok()
    );
    let (other_root, _) = generate_pair("cluster.local", t, "y").unwrap();
    assert!(matches!(
        Authority::from_pems("cluster.local", &other_root, &issuer.cert_pem, &key_pem),
        Err(CaError::IssuerNotSignedByRoot)
    ));
    assert!(matches!(
        Authority::from_pems("cluster.local", "nope", &issuer.cert_pem, &key_pem),
        Err(CaError::Pem {
            what: "root.pem",
            ..
        })
    ));
}

#[test]
fn expiries_of_issuer_and_anchors() {
    let t0 = now();
    let mut ca = Authority::generate("cluster.local", t0).unwrap();
    let e = ca.expiries();
    let secs = |t: SystemTime| t.duration_since(t0).unwrap().as_secs();
    // The generated issuer lives 2 years, the anchor 10 (to the second, give or take rounding).
    let issuer = secs(e.issuer.unwrap());
    assert!(issuer.abs_diff(2 * 365 * 24 * 3600) < 5, "{issuer}");
    assert_eq!(e.anchors.len(), 1);
    assert!(secs(e.anchors[0]).abs_diff(10 * 365 * 24 * 3600) < 5);
    ca.prepare_rotation(t0).unwrap();
    assert_eq!(ca.expiries().anchors.len(), 2);
}

#[test]
fn rotates_to_a_ca_the_user_brings() {
    let t = now();
    let mut ca = Authority::generate("cluster.local", t).unwrap();
    let old_root = ca.root_pem().to_string();
    let (user_root, user_issuer) = generate_pair("cluster.local", t, "user").unwrap();
    let key = user_issuer.issuer.key().serialize_pem();
    let next =
        Authority::from_pems("cluster.local", &user_root, &user_issuer.cert_pem, &key).unwrap();
    ca.prepare_rotation_to(next).unwrap();
    assert_eq!(ca.bundle().roots_pem, vec![old_root, user_root.clone()]);
    assert_eq!(ca.status().rotation, "prepared");
    assert_eq!(ca.issuer_generation(), 1);
    ca.activate_rotation().unwrap();
    assert_eq!(ca.issuer_generation(), 2);
    // Leaves now carry the user's issuer.
    let csr = LeafKey::generate().unwrap().csr_pem(&id("web")).unwrap();
    let issued = ca
        .issue(csr.as_bytes(), &id("web"), DEFAULT_LEAF_TTL, t)
        .unwrap();
    assert!(issued.chain_pem.ends_with(&user_issuer.cert_pem));
    ca.retire_rotation().unwrap();
    assert_eq!(ca.bundle().roots_pem, vec![user_root]);
    assert_eq!(ca.status().rotation, "idle");
}

#[test]
fn a_new_issuer_under_the_same_root_keeps_the_root() {
    let t = now();
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("Test root".into(), t, ROOT_TTL, 1);
    let root_pem = root_params.self_signed(&root_key).unwrap().pem();
    let root = Issuer::new(root_params, root_key);
    let issuer = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = ca_params(cn.into(), t, ISSUER_TTL, 0)
            .signed_by(&key, &root)
            .unwrap()
            .pem();
        (cert, key.serialize_pem())
    };
    let ((one, one_key), (two, two_key)) = (issuer("one"), issuer("two"));
    let mut ca = Authority::from_pems("cluster.local", &root_pem, &one, &one_key).unwrap();
    // The same root in other text (a trailing blank line) is still the same anchor.
    let next =
        Authority::from_pems("cluster.local", &format!("{root_pem}\n"), &two, &two_key).unwrap();
    ca.prepare_rotation_to(next).unwrap();
    assert_eq!(ca.bundle().roots_pem, vec![root_pem.clone()]);
    ca.activate_rotation().unwrap();
    assert_eq!(ca.issuer_generation(), 2);
    ca.retire_rotation().unwrap();
    assert_eq!(ca.bundle().roots_pem, vec![root_pem]);
    // Another trust domain is refused and changes nothing.
    let other = Authority::generate("other.local", t).unwrap();
    assert!(matches!(
        ca.prepare_rotation_to(other),
        Err(CaError::Rotation(_))
    ));
    assert_eq!(ca.status().rotation, "idle");
}
