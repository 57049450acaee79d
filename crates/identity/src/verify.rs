//! What this crate's rustls server verifiers share: a server's chain checked against roots
//! with a provider's algorithms, the handshake signatures, and root stores read from PEM or
//! from the system. Not which names the certificate must carry, nor which TLS versions are
//! allowed: each verifier decides those.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A server's chain and signatures, checked against `roots` with `algs`.
#[derive(Debug)]
pub(crate) struct ChainCheck {
    roots: RootCertStore,
    algs: WebPkiSupportedAlgorithms,
}

impl ChainCheck {
    pub(crate) fn new(roots: RootCertStore, algs: WebPkiSupportedAlgorithms) -> Self {
        Self { roots, algs }
    }

    /// The leaf, once its chain (with `intermediates`) leads to one of the roots at `now`;
    /// its names are not looked at.
    pub(crate) fn chain<'a>(
        &self,
        end_entity: &'a CertificateDer<'a>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ParsedCertificate<'a>, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        Ok(cert)
    }

    pub(crate) fn tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    pub(crate) fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    pub(crate) fn schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The certificates of `pem` as roots; `None` when it holds none that parse.
pub(crate) fn roots_from_pem(pem: &[u8]) -> Option<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    (added > 0).then_some(roots)
}

/// The system's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` or the platform's store); when none
/// loads, the first error the loader met, if any (the caller words "none found").
pub(crate) fn system_roots() -> Result<RootCertStore, Option<String>> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        return Err(loaded.errors.first().map(ToString::to_string));
    }
    Ok(roots)
}
