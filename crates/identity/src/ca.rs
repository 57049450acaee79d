//! The mesh CA: a trust anchor (root), an issuer (intermediate) and the pure rules for issuing a
//! workload's leaf certificate from its CSR, plus the anchor rotation steps.
//!
//! Everything here takes data and returns data: no files, sockets or clocks (the caller passes
//! `now`). Keys are ECDSA P-256. The control plane holds one [`Authority`]; proxies never see
//! the issuer's key.
//!
//! Rotation keeps the mesh up by never asking a proxy to trust a chain it has not been given
//! first: [`Authority::prepare_rotation`] adds a new anchor to the bundle (proxies learn it),
//! [`Authority::activate_rotation`] switches issuing to the new issuer (proxies are reissued),
//! [`Authority::retire_rotation`] drops the old anchor once every proxy holds a new leaf.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateSigningRequestDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::SpiffeId;

/// Default lifetime of a workload leaf (DESIGN §5).
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of a generated root.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of a generated issuer.
const ISSUER_TTL: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// Leaves are valid from a little before issue, so a peer whose clock lags still accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Why the CA could not load, issue or rotate.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot generate {what}: {source}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what} is not a usable PEM: {message}")]
    Pem { what: &'static str, message: String },
    #[error("the issuer certificate is not signed by the root certificate")]
    IssuerNotSignedByRoot,
    #[error("{cert} is not signed by {by}")]
    NotSignedBy {
        cert: &'static str,
        by: &'static str,
    },
    #[error("{what} is not a CA certificate (basicConstraints CA:TRUE is missing)")]
    NotCa { what: &'static str },
    #[error("{key} is not the private key of {cert}")]
    KeyMismatch {
        key: &'static str,
        cert: &'static str,
    },
    #[error("the CSR cannot be parsed or its signature is invalid: {0}")]
    Csr(#[source] rcgen::Error),
    #[error("the CSR asks for {asked:?}, but the proof allows only {allowed}")]
    ForbiddenIdentity { asked: Vec<String>, allowed: String },
    #[error("the CSR asks for a CA certificate")]
    CsrIsCa,
    #[error("cannot sign the leaf: {0}")]
    Sign(#[source] rcgen::Error),
    #[error("{0}")]
    Rotation(&'static str),
}

/// The root certificates a proxy trusts (PEM, one per anchor; several during a rotation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustBundle {
    pub roots_pem: Vec<String>,
}

/// A signed leaf: its PEM chain (leaf, then issuer) and when it expires.
#[derive(Clone, Debug)]
pub struct Issued {
    pub chain_pem: String,
    pub not_after: SystemTime,
}

/// A CA certificate and the key that signs with it.
struct SigningCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for SigningCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys.
        f.debug_struct("SigningCa").finish_non_exhaustive()
    }
}

/// Where an anchor rotation stands.
#[derive(Debug)]
enum Rotation {
    Idle,
    /// A new anchor is in the bundle; the old issuer still signs.
    Prepared {
        root_pem: String,
        issuer: Box<SigningCa>,
    },
    /// The new issuer signs; the old anchor stays in the bundle until retired.
    Activated {
        old_root_pem: String,
    },
}

/// Public state of the CA, for APIs and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaStatus {
    pub anchors: usize,
    /// `idle`, `prepared` or `activated`.
    pub rotation: &'static str,
    /// Increases on every issuer change: proxies renew when it moves.
    pub issuer_generation: u64,
}

/// Expiry of the CA's own certificates (see [`Authority::expiries`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaExpiries {
    pub issuer: Option<SystemTime>,
    pub anchors: Vec<SystemTime>,
}

/// The mesh CA.
#[derive(Debug)]
pub struct Authority {
    trust_domain: String,
    root_pem: String,
    /// The issuer that signs leaves now.
    issuer: SigningCa,
    bundle: TrustBundle,
    rotation: Rotation,
    generation: u64,
}

fn offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // A failing system RNG leaves zeros; the high bit is cleared so the serial stays positive.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn ca_params(cn: String, now: SystemTime, ttl: Duration, path_len: u8) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Trellis");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(now.checked_sub(CLOCK_SKEW).unwrap_or(now));
    params.not_after = offset(now + ttl);
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params
}

/// Makes a root and an issuer signed by it.
fn generate_pair(
    trust_domain: &str,
    now: SystemTime,
    label: &str,
) -> Result<(String, SigningCa), CaError> {
    let gen_err = |what| move |source| CaError::Generate { what, source };
    // A random tag keeps names distinct between CAs (and across rotations), so that a chain is
    // never matched to the wrong anchor by name.
    let mut tag = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut tag);
    let label = format!("{label} {:08x}", u32::from_be_bytes(tag));
    let root_key = KeyPair::generate().map_err(gen_err("the root key"))?;
    let root_params = ca_params(
        format!("Trellis root {trust_domain} {label}"),
        now,
        ROOT_TTL,
        1,
    );
    let root_cert = root_params
        .self_signed(&root_key)
        .map_err(gen_err("the root certificate"))?;
    let root = Issuer::new(root_params, root_key);
    let issuer_key = KeyPair::generate().map_err(gen_err("the issuer key"))?;
    let issuer_params = ca_params(
        format!("Trellis issuer {trust_domain} {label}"),
        now,
        ISSUER_TTL,
        0,
    );
    let issuer_cert = issuer_params
        .signed_by(&issuer_key, &root)
        .map_err(gen_err("the issuer certificate"))?;
    Ok((
        root_cert.pem(),
        SigningCa {
            cert_pem: issuer_cert.pem(),
            issuer: Issuer::new(issuer_params, issuer_key),
        },
    ))
}

/// The DER of the first certificate in a PEM text.
pub(crate) fn first_cert_der(pem: &str, what: &'static str) -> Result<Vec<u8>, CaError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| CaError::Pem {
            what,
            message: "no CERTIFICATE block".into(),
        })?
        .map(|c| c.to_vec())
        .map_err(|e| CaError::Pem {
            what,
            message: e.to_string(),
        })
}

/// Whether two PEM texts hold the same first certificate (the text may differ in whitespace
/// or comments when one came from the user).
fn same_cert(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (first_cert_der(a, "a"), first_cert_der(b, "b")),
            (Ok(x), Ok(y)) if x == y
        )
}

/// The parts of a CA the user brings, each as (where it came from, PEM text).
#[derive(Clone, Copy, Debug)]
pub struct PluggedCa<'a> {
    /// The trust anchor proxies get.
    pub root: (&'static str, &'a str),
    /// The certificate that signs leaves (an intermediate, or the root itself).
    pub issuer: (&'static str, &'a str),
    /// The issuer's private key.
    pub key: (&'static str, &'a str),
    /// The intermediates between leaves and the root, the issuer first (Istio's
    /// `cert-chain.pem`); `None` or empty: the issuer alone.
    pub chain: Option<(&'static str, &'a str)>,
}

/// Checks `pem` starts with the issuer and each certificate is signed by the next, the last
/// by the root (a copy of the root at the end is allowed).
fn verify_chain(
    what: &'static str,
    pem: &str,
    issuer_der: &[u8],
    root_der: &[u8],
    root_what: &'static str,
) -> Result<(), CaError> {
    use rustls::pki_types::pem::PemObject;
    let pem_err = |message: String| CaError::Pem { what, message };
    let mut ders = Vec::new();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| pem_err(e.to_string()))?;
        if cert.as_ref() != root_der {
            ders.push(cert.to_vec());
        }
    }
    if ders.first().map(Vec::as_slice) != Some(issuer_der) {
        return Err(pem_err(
            "its first certificate must be the issuer (signing) certificate".into(),
        ));
    }
    ders.push(root_der.to_vec());
    for pair in ders.windows(2) {
        let (_, child) = X509Certificate::from_der(&pair[0]).map_err(|e| pem_err(e.to_string()))?;
        let (_, parent) =
            X509Certificate::from_der(&pair[1]).map_err(|e| pem_err(e.to_string()))?;
        if !parent.is_ca() {
            return Err(CaError::NotCa { what });
        }
        child
            .verify_signature(Some(parent.public_key()))
            .map_err(|_| CaError::NotSignedBy {
                cert: what,
                by: root_what,
            })?;
    }
    Ok(())
}

impl Authority {
    /// A fresh root and issuer (what `trellis-control` does when given no `--ca-dir`).
    pub fn generate(trust_domain: &str, now: SystemTime) -> Result<Self, CaError> {
        let (root_pem, issuer) = generate_pair(trust_domain, now, "1")?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            bundle: TrustBundle {
                roots_pem: vec![root_pem.clone()],
            },
            root_pem,
            issuer,
            rotation: Rotation::Idle,
            generation: 1,
        })
    }

    /// A CA the user brings: the root certificate, the issuer certificate and the issuer's
    /// private key (PKCS#8 PEM). The issuer must be signed by the root.
    pub fn from_pems(
        trust_domain: &str,
        root_pem: &str,
        issuer_pem: &str,
        issuer_key_pem: &str,
    ) -> Result<Self, CaError> {
        Self::from_plugged(
            trust_domain,
            &PluggedCa {
                root: ("root.pem", root_pem),
                issuer: ("issuer.pem", issuer_pem),
                key: ("issuer-key.pem", issuer_key_pem),
                chain: None,
            },
        )
        .map_err(|e| match e {
            CaError::NotSignedBy { .. } => CaError::IssuerNotSignedByRoot,
            other => other,
        })
    }

    /// A CA the user brings, with the names its parts came from (files, or a Secret's keys) so
    /// that every error says which part is wrong. Checks: each part parses, the issuer is a CA,
    /// the key is the issuer's, and the issuer chains to the root (through `chain` when given).
    pub fn from_plugged(trust_domain: &str, ca: &PluggedCa<'_>) -> Result<Self, CaError> {
        let pem_err = |what: &'static str| move |e: String| CaError::Pem { what, message: e };
        let root_der = first_cert_der(ca.root.1, ca.root.0)?;
        let issuer_der = first_cert_der(ca.issuer.1, ca.issuer.0)?;
        let (_, root_x509) =
            X509Certificate::from_der(&root_der).map_err(|e| pem_err(ca.root.0)(e.to_string()))?;
        let (_, issuer_x509) = X509Certificate::from_der(&issuer_der)
            .map_err(|e| pem_err(ca.issuer.0)(e.to_string()))?;
        if !issuer_x509.is_ca() {
            return Err(CaError::NotCa { what: ca.issuer.0 });
        }
        let key = KeyPair::from_pem(ca.key.1).map_err(|e| pem_err(ca.key.0)(e.to_string()))?;
        // The issuer's public key (SubjectPublicKeyInfo) must be the key's: a mismatched pair
        // would sign leaves that no peer can verify.
        if issuer_x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::KeyMismatch {
                key: ca.key.0,
                cert: ca.issuer.0,
            });
        }
        // The chain sent with every leaf: the given intermediates (the issuer first), or the
        // issuer alone. Each link must be signed by the next, the last by the root.
        let chain_pem = match ca.chain {
            Some((what, pem)) if !pem.trim().is_empty() => {
                verify_chain(what, pem, &issuer_der, &root_der, ca.root.0)?;
                pem.to_string()
            }
            _ => {
                issuer_x509
                    .verify_signature(Some(root_x509.public_key()))
                    .map_err(|_| CaError::NotSignedBy {
                        cert: ca.issuer.0,
                        by: ca.root.0,
                    })?;
                ca.issuer.1.to_string()
            }
        };
        let issuer = Issuer::from_ca_cert_pem(ca.issuer.1, key)
            .map_err(|e| pem_err(ca.issuer.0)(e.to_string()))?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            bundle: TrustBundle {
                roots_pem: vec![ca.root.1.to_string()],
            },
            root_pem: ca.root.1.to_string(),
            issuer: SigningCa {
                cert_pem: chain_pem,
                issuer,
            },
            rotation: Rotation::Idle,
            generation: 1,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The roots proxies must trust now.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// The root the current issuer chains to.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn status(&self) -> CaStatus {
        CaStatus {
            anchors: self.bundle.roots_pem.len(),
            rotation: match self.rotation {
                Rotation::Idle => "idle",
                Rotation::Prepared { .. } => "prepared",
                Rotation::Activated { .. } => "activated",
            },
            issuer_generation: self.generation,
        }
    }

    /// Signs a leaf for `allowed` from a PEM or DER CSR. The CSR's signature must verify (the
    /// requester holds the key), it must not ask for a CA, and every SAN it asks for must be
    /// `allowed`'s URI: a CSR for any other identity is refused, whatever the proof was for.
    /// The leaf gets only the URI SAN, client and server auth, and `ttl` of life.
    pub fn issue(
        &self,
        csr: &[u8],
        allowed: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        let parsed = match std::str::from_utf8(csr) {
            Ok(pem) if pem.contains("-----BEGIN") => CertificateSigningRequestParams::from_pem(pem),
            _ => CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
                csr.to_vec(),
            )),
        }
        .map_err(CaError::Csr)?;
        let want = allowed.to_string();
        let asked: Vec<String> = parsed
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if asked.iter().any(|a| *a != want) {
            return Err(CaError::ForbiddenIdentity {
                asked,
                allowed: want,
            });
        }
        if !matches!(parsed.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
            return Err(CaError::CsrIsCa);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = rcgen::string::Ia5String::try_from(want.clone()).map_err(CaError::Sign)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let not_after = now + ttl;
        params.not_before = offset(now.checked_sub(CLOCK_SKEW).unwrap_or(now));
        params.not_after = offset(not_after);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&parsed.public_key, &self.issuer.issuer)
            .map_err(CaError::Sign)?;
        let mut chain_pem = leaf.pem();
        chain_pem.push_str(&self.issuer.cert_pem);
        Ok(Issued {
            chain_pem,
            not_after,
        })
    }

    /// Step 1: a new anchor and issuer are made and the anchor joins the bundle. Issuing goes
    /// on with the old issuer until [`Self::activate_rotation`].
    pub fn prepare_rotation(&mut self, now: SystemTime) -> Result<(), CaError> {
        if !matches!(self.rotation, Rotation::Idle) {
            return Err(CaError::Rotation(
                "a rotation is already in progress (retire it first)",
            ));
        }
        let label = (self.generation + 1).to_string();
        let (root_pem, issuer) = generate_pair(&self.trust_domain, now, &label)?;
        self.bundle.roots_pem.push(root_pem.clone());
        self.rotation = Rotation::Prepared {
            root_pem,
            issuer: Box::new(issuer),
        };
        Ok(())
    }

    /// Step 1 with a CA the user brings: `next` (checked by [`Self::from_plugged`]) supplies
    /// the new anchor and the issuer [`Self::activate_rotation`] switches to. Its root joins
    /// the bundle unless the bundle already holds it (a new issuer under the same root: the
    /// steps then rotate the issuer alone, and `retire` keeps that root).
    pub fn prepare_rotation_to(&mut self, next: Authority) -> Result<(), CaError> {
        if !matches!(self.rotation, Rotation::Idle) {
            return Err(CaError::Rotation(
                "a rotation is already in progress (retire it first)",
            ));
        }
        if next.trust_domain != self.trust_domain {
            return Err(CaError::Rotation("the new CA is for another trust domain"));
        }
        if !self
            .bundle
            .roots_pem
            .iter()
            .any(|r| same_cert(r, &next.root_pem))
        {
            self.bundle.roots_pem.push(next.root_pem.clone());
        }
        self.rotation = Rotation::Prepared {
            root_pem: next.root_pem,
            issuer: Box::new(next.issuer),
        };
        Ok(())
    }

    /// Step 2: the new issuer signs from now on. Proxies see the issuer generation move and
    /// renew; the old anchor stays trusted so that old and new leaves meet.
    pub fn activate_rotation(&mut self) -> Result<(), CaError> {
        match std::mem::replace(&mut self.rotation, Rotation::Idle) {
            Rotation::Prepared { root_pem, issuer } => {
                let old_root_pem = std::mem::replace(&mut self.root_pem, root_pem);
                self.issuer = *issuer;
                self.generation += 1;
                self.rotation = Rotation::Activated { old_root_pem };
                Ok(())
            }
            other => {
                self.rotation = other;
                Err(CaError::Rotation("no prepared rotation to activate"))
            }
        }
    }

    /// Step 3: the old anchor leaves the bundle. Call only once every proxy holds a leaf of
    /// the new issuer (leaves of the old one stop verifying at peers that refresh the bundle).
    pub fn retire_rotation(&mut self) -> Result<(), CaError> {
        match std::mem::replace(&mut self.rotation, Rotation::Idle) {
            Rotation::Activated { old_root_pem } => {
                // An issuer-only rotation (the new issuer under the old root) keeps the root.
                if !same_cert(&old_root_pem, &self.root_pem) {
                    self.bundle
                        .roots_pem
                        .retain(|r| !same_cert(r, &old_root_pem));
                }
                Ok(())
            }
            other => {
                self.rotation = other;
                Err(CaError::Rotation("no activated rotation to retire"))
            }
        }
    }

    /// Increases on every issuer change; proxies renew when it moves.
    pub fn issuer_generation(&self) -> u64 {
        self.generation
    }

    /// When the signing issuer and each trust anchor expire, for the expiry metrics and
    /// alerts (`None` for a certificate that does not parse, which construction rules out).
    pub fn expiries(&self) -> CaExpiries {
        let not_after = |pem: &str| {
            first_cert_der(pem, "certificate")
                .ok()
                .and_then(|der| crate::tls::not_after(&der))
        };
        CaExpiries {
            issuer: not_after(&self.issuer.cert_pem),
            anchors: self
                .bundle
                .roots_pem
                .iter()
                .filter_map(|p| not_after(p))
                .collect(),
        }
    }

    /// Continues the generation count of a CA this one replaces, so proxies renew.
    pub fn set_issuer_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// A serving certificate for the control plane's own HTTPS endpoints (the admission
    /// webhooks): a key made here, a leaf for `names` (DNS names, or IPs when they parse as
    /// one) with serverAuth only, signed by the current issuer. Clients trust it through the
    /// bundle's roots, so the API server's `caBundle` is the mesh's trust bundle.
    pub fn issue_serving(
        &self,
        names: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<crate::serving::ServingCert, CaError> {
        let key = KeyPair::generate().map_err(|source| CaError::Generate {
            what: "the serving key",
            source,
        })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "trellis-webhook");
        params.distinguished_name = dn;
        for name in names {
            params
                .subject_alt_names
                .push(crate::serving::san(name).map_err(CaError::Sign)?);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let not_after = now + ttl;
        params.not_before = offset(now.checked_sub(CLOCK_SKEW).unwrap_or(now));
        params.not_after = offset(not_after);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&key, &self.issuer.issuer)
            .map_err(CaError::Sign)?;
        let issuer_der = first_cert_der(&self.issuer.cert_pem, "the issuer certificate")?;
        Ok(crate::serving::ServingCert::from_parts(
            self.bundle.roots_pem.concat(),
            vec![leaf.der().clone(), issuer_der.into()],
            key.serialize_der(),
            not_after,
            self.generation,
        ))
    }
}

#[cfg(test)]
mod tests;
