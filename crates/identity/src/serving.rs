//! Serving certificates for the control plane's own HTTPS endpoints (the admission webhooks):
//! a self-signed CA made at startup and a leaf for the names the API server dials.
//!
//! This is not the mesh CA (workload identities): the API server only needs a `caBundle` to
//! trust, and a fresh CA per process keeps no secret at rest. The control plane writes the CA
//! into its webhook configurations at startup, so a restart rotates both.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use tokio_rustls::TlsAcceptor;
pub use tokio_rustls::server::TlsStream;

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("cannot generate the serving certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot build the TLS server config: {0}")]
    Tls(#[from] rustls::Error),
}

/// A CA and one leaf it signed, in memory.
#[derive(Debug)]
pub struct ServingCert {
    /// PEM of the CA: what a client (the API server) must trust.
    pub ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl ServingCert {
    /// A new CA and a leaf valid for `names`: DNS names, or IP addresses when they parse as one.
    pub fn generate(names: &[String]) -> Result<Self, ServingError> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "trellis-webhook-ca");
        ca_params.distinguished_name = dn;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(Vec::<String>::new())?;
        for name in names {
            leaf.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into()?),
            });
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "trellis-webhook");
        leaf.distinguished_name = dn;
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            chain: vec![leaf_cert.der().clone(), ca_cert.der().clone()],
            key_der: leaf_key.serialize_der(),
        })
    }

    /// A TLS acceptor (aws-lc-rs provider, HTTP/1.1 by ALPN) serving the leaf.
    pub fn acceptor(&self) -> Result<TlsAcceptor, ServingError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generates_a_chain_and_an_acceptor() {
        let cert = ServingCert::generate(&[
            "trellis-control.trellis-system.svc".into(),
            "127.0.0.1".into(),
        ])
        .unwrap();
        assert!(cert.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(cert.chain.len(), 2);
        cert.acceptor().unwrap();
    }
}
