//! Serving certificates for the control plane's own HTTPS endpoints (the admission webhooks),
//! issued by the mesh CA ([`crate::ca::Authority::issue_serving`]): the API server trusts them
//! through a `caBundle` that is the mesh's trust bundle, so there is one CA to manage, rotate
//! and audit, and an anchor rotation carries the webhooks along (the control plane reissues the
//! serving leaf when the issuer changes and re-patches the `caBundle` when the bundle does).

use std::sync::Arc;
use std::time::SystemTime;

use rcgen::SanType;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use tokio_rustls::TlsAcceptor;
pub use tokio_rustls::server::TlsStream;

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("cannot build the TLS server config: {0}")]
    Tls(#[from] rustls::Error),
}

/// A SAN for `name`: an IP address when it parses as one, else a DNS name.
pub(crate) fn san(name: &str) -> Result<SanType, rcgen::Error> {
    Ok(match name.parse() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.to_string().try_into()?),
    })
}

/// A serving leaf, its chain and key, in memory (the key never leaves the process).
#[derive(Debug)]
pub struct ServingCert {
    /// PEM of the roots a client (the API server) must trust: the mesh bundle when issued.
    pub ca_pem: String,
    /// When the leaf expires.
    pub not_after: SystemTime,
    /// The issuer generation that signed it: a new generation means reissue.
    pub issuer_generation: u64,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl ServingCert {
    pub(crate) fn from_parts(
        ca_pem: String,
        chain: Vec<CertificateDer<'static>>,
        key_der: Vec<u8>,
        not_after: SystemTime,
        issuer_generation: u64,
    ) -> Self {
        Self {
            ca_pem,
            not_after,
            issuer_generation,
            chain,
            key_der,
        }
    }

    /// A TLS acceptor (aws-lc-rs provider, HTTP/1.1 by ALPN) serving the leaf and its issuer.
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
    use std::time::Duration;

    use super::*;
    use crate::ca::Authority;

    #[test]
    fn issued_by_the_mesh_ca_for_dns_names_and_ips() {
        let now = SystemTime::now();
        let ca = Authority::generate("cluster.local", now).unwrap();
        let cert = ca
            .issue_serving(
                &[
                    "trellis-control.trellis-system.svc".into(),
                    "127.0.0.1".into(),
                ],
                Duration::from_secs(3600),
                now,
            )
            .unwrap();
        assert_eq!(cert.ca_pem, ca.root_pem(), "clients trust the mesh root");
        assert_eq!(cert.chain.len(), 2, "leaf and issuer");
        assert_eq!(cert.issuer_generation, 1);
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, leaf) = X509Certificate::from_der(&cert.chain[0]).unwrap();
        let (_, issuer) = X509Certificate::from_der(&cert.chain[1]).unwrap();
        leaf.verify_signature(Some(issuer.public_key())).unwrap();
        let sans = leaf.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = sans
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(ip) => format!("{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            ["trellis-control.trellis-system.svc", "[127, 0, 0, 1]"]
        );
        assert!(!leaf.is_ca());
        cert.acceptor().unwrap();
    }
}
