//! The CA's CSR path (`trellis_identity::ca::Authority::issue`): any bytes, as DER or PEM,
//! never panic; and whatever a CSR asks for, a certificate is only ever issued for the identity
//! the requester proved (the `allowed` SPIFFE ID), as the only SAN, not a CA, for the key that
//! signed the CSR. Each input is tried twice: as raw bytes, and as the choices of an honest
//! client's CSR (SANs of this and other identities, near-misses, DNS/IP/email SANs, a CA
//! request), properly signed and then maybe corrupted.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use trellis_identity::SpiffeId;
use trellis_identity::ca::Authority;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::input::Input;

const ALLOWED: &str = "spiffe://cluster.local/ns/default/sa/web";

/// SAN URIs a client may ask for: its own, other identities, and near-misses of its own.
const URIS: &[&str] = &[
    ALLOWED,
    "spiffe://cluster.local/ns/default/sa/admin",
    "spiffe://cluster.local/ns/kube-system/sa/web",
    "spiffe://evil.local/ns/default/sa/web",
    "SPIFFE://cluster.local/ns/default/sa/web",
    "spiffe://cluster.local/ns/default/sa/web/",
    "spiffe://cluster.local/ns/default/sa/web\0.admin",
    "spiffe://cluster.local/ns/default/sa/WEB",
    "spiffe://cluster.local/ns/default/sa/web?x",
    "spiffe://cluster.local/ns/default/sa/web#",
    " spiffe://cluster.local/ns/default/sa/web",
];

struct Fixture {
    ca: Authority,
    allowed: SpiffeId,
    key: KeyPair,
    now: SystemTime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let now = SystemTime::now();
        let ca = match Authority::generate("cluster.local", now) {
            Ok(ca) => ca,
            Err(e) => panic!("cannot make a CA: {e}"),
        };
        let allowed = match ALLOWED.parse() {
            Ok(id) => id,
            Err(e) => panic!("{ALLOWED}: {e}"),
        };
        let key = match KeyPair::generate() {
            Ok(k) => k,
            Err(e) => panic!("cannot make a key: {e}"),
        };
        Fixture {
            ca,
            allowed,
            key,
            now,
        }
    })
}

pub fn check_csr(data: &[u8]) {
    let f = fixture();
    issue_and_check(f, data, None);
    if let Some((csr, honest)) = built_csr(f, data) {
        let leaf = issue_and_check(f, &csr, Some(&f.key));
        // An uncorrupted CSR that asks for nothing but the proven identity is served.
        if honest {
            assert!(leaf, "an honest CSR was refused");
        }
    }
}

/// Issues from `csr`; when a leaf comes back, checks it is for the allowed identity only (and,
/// for our own CSRs, for `key`). Returns whether a leaf was issued.
fn issue_and_check(f: &Fixture, csr: &[u8], key: Option<&KeyPair>) -> bool {
    let ttl = Duration::from_secs(3600);
    let Ok(issued) = f.ca.issue(csr, &f.allowed, ttl, f.now) else {
        return false;
    };
    let pem = match Pem::iter_from_buffer(issued.chain_pem.as_bytes()).next() {
        Some(Ok(pem)) => pem,
        other => panic!("issued chain without a leaf PEM: {other:?}"),
    };
    let leaf = match pem.parse_x509() {
        Ok(cert) => cert,
        Err(e) => panic!("issued leaf does not parse: {e}"),
    };
    let sans: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => (*u).to_string(),
                other => format!("{other:?}"),
            })
            .collect(),
        other => panic!("issued leaf without a readable SAN: {other:?}"),
    };
    assert_eq!(sans, [ALLOWED], "a leaf for another identity");
    let is_ca = matches!(leaf.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    assert!(!is_ca, "a CA certificate was issued from a CSR");
    if let Some(key) = key {
        assert_eq!(
            leaf.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw(),
            "the leaf is not for the CSR's key"
        );
    }
    true
}

/// A CSR signed by the fixture's key from the input's choices, and whether it is honest (asks
/// only for the allowed identity, not a CA, and was not corrupted after signing).
fn built_csr(f: &Fixture, data: &[u8]) -> Option<(Vec<u8>, bool)> {
    let mut input = Input::new(data);
    let mut params = CertificateParams::default();
    let mut honest = true;
    for _ in 0..input.below(4) {
        let san = match input.below(6) {
            0..=2 => {
                let uri = input.pick(URIS);
                honest &= uri == ALLOWED;
                SanType::URI(Ia5String::try_from(uri).ok()?)
            }
            3 => {
                honest = false;
                let raw: String = input
                    .bytes(12)
                    .iter()
                    .map(|b| char::from(b & 0x7f))
                    .collect();
                SanType::URI(Ia5String::try_from(raw).ok()?)
            }
            4 => {
                honest = false;
                SanType::DnsName(Ia5String::try_from("web.default.svc.cluster.local").ok()?)
            }
            _ => {
                honest = false;
                SanType::IpAddress([127, 0, 0, 1].into())
            }
        };
        params.subject_alt_names.push(san);
    }
    params.is_ca = match input.below(4) {
        0 => {
            honest = false;
            IsCa::Ca(BasicConstraints::Unconstrained)
        }
        1 => IsCa::ExplicitNoCa,
        _ => IsCa::NoCa,
    };
    if input.bool() {
        let cn = String::from_utf8_lossy(input.bytes(8)).into_owned();
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    let csr = params.serialize_request(&f.key).ok()?;
    let mut bytes = if input.bool() {
        csr.pem().ok()?.into_bytes()
    } else {
        csr.der().to_vec()
    };
    // Corruption after signing: one byte flipped, or the end cut off.
    match input.below(4) {
        0 => {
            let at = input.u16() as usize % bytes.len().max(1);
            if let Some(b) = bytes.get_mut(at) {
                *b ^= 1 << input.below(8);
                honest = false;
            }
        }
        1 => {
            let at = input.u16() as usize % bytes.len().max(1);
            bytes.truncate(at);
            honest = false;
        }
        _ => {}
    }
    Some((bytes, honest))
}

#[cfg(test)]
mod tests {
    use super::{check_csr, fixture};
    use crate::input::Rng;

    #[test]
    fn seeded_random_inputs() {
        let mut rng = Rng(0xc5a0_0001_2026_0012);
        // Bounded: 1,500 inputs, each up to two CSR signatures and two leaf signatures.
        for _ in 0..1_500 {
            let len = rng.below(40);
            check_csr(&rng.bytes(len));
        }
    }

    #[test]
    fn mutated_real_csrs() {
        let f = fixture();
        let honest = trellis_identity::tls::LeafKey::generate()
            .and_then(|k| k.csr_pem(&f.allowed))
            .map_err(|e| e.to_string());
        let Ok(pem) = honest else {
            panic!("cannot make a CSR: {honest:?}");
        };
        let mut rng = Rng(0xc5a0_0002_2026_0012);
        check_csr(pem.as_bytes());
        for _ in 0..1_000 {
            check_csr(&rng.mutate(pem.as_bytes()));
        }
    }
}
