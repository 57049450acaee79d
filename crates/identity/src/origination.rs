//! Client TLS a proxy originates to a server outside the mesh (Istio DestinationRule
//! `tls.mode: SIMPLE` and `MUTUAL`): the rustls configs and the handshake, nothing about files,
//! policies or HTTP.
//!
//! What is checked (Istio `ClientTLSSettings`):
//! - the server's chain against the given roots (or the system's);
//! - its names: one of `subject_alt_names` (a DNS, URI or IP SAN; a wildcard DNS SAN in the
//!   certificate covers one label) or, when that list is empty, the server name sent as SNI;
//! - with `insecure_skip_verify`, neither: any certificate is accepted (the handshake
//!   signature is still checked, so the server holds the certificate's key), which is what
//!   Istio's `insecureSkipVerify` documents.
//!
//! `MUTUAL` presents a client certificate chain and key. TLS 1.2 and 1.3, as for public servers
//! ([`crate::public_tls`]).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::client_config;
use crate::verify::ChainCheck;

pub use crate::tls::ClientStream;

/// What to trust and what to present; PEM bytes the caller has read.
#[derive(Clone, Copy, Debug, Default)]
pub struct OriginationSpec<'a> {
    /// Trusted roots (PEM); `None`: the system roots.
    pub roots_pem: Option<&'a [u8]>,
    /// `MUTUAL`: the client's certificate chain and its key (PEM).
    pub client: Option<(&'a [u8], &'a [u8])>,
    /// Names the server's certificate must carry one of; empty: the SNI name.
    pub subject_alt_names: &'a [String],
    /// Skip every check of the server's certificate.
    pub insecure_skip_verify: bool,
}

/// Why a spec could not become a config. Each names the PEM it is about, so the caller can name
/// the field.
#[derive(Debug, thiserror::Error)]
pub enum OriginationError {
    #[error("no usable root certificate ({0})")]
    NoRoots(String),
    #[error("no certificate in the client certificate PEM")]
    NoClientCertificate,
    #[error("no private key in the private key PEM")]
    NoPrivateKey,
    #[error("the client certificate and private key do not go together: {0}")]
    ClientKey(rustls::Error),
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A failed origination handshake, with the reason label of
/// `trellis_tls_handshake_failures_total`.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with {host}: {source}")]
pub struct OriginationHandshakeError {
    pub host: String,
    /// `unknown_ca`, `identity_mismatch` (no name matched), `bad_certificate`, `alert` (the
    /// server refused, e.g. our client certificate), `protocol`, `io`, or `other` (the server
    /// name is not a DNS name or IP address).
    pub reason: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// The client configs of one origination: ALPN `http/1.1` and `h2`.
#[derive(Clone, Debug)]
pub struct OriginationTls {
    http1: Arc<ClientConfig>,
    h2: Arc<ClientConfig>,
}

impl OriginationTls {
    pub fn new(spec: &OriginationSpec<'_>) -> Result<Self, OriginationError> {
        // Not the mesh's provider (TLS 1.3 and hybrid groups only): servers outside the mesh
        // may speak TLS 1.2 and offer only classic groups.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let algs = provider.signature_verification_algorithms;
        let roots = match (spec.insecure_skip_verify, spec.roots_pem) {
            // Nothing is verified: do not fail for want of roots nobody will use.
            (true, _) => RootCertStore::empty(),
            (false, Some(pem)) => roots_from_pem(pem)?,
            (false, None) => system_roots()?,
        };
        let verifier = Arc::new(OriginationVerifier {
            check: ChainCheck::new(roots, algs),
            subject_alt_names: spec.subject_alt_names.to_vec(),
            insecure: spec.insecure_skip_verify,
        });
        let builder = client_config::verified_by(provider, rustls::DEFAULT_VERSIONS, verifier)?;
        let config = match spec.client {
            None => builder.with_no_client_auth(),
            Some((chain_pem, key_pem)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
                    .filter_map(Result::ok)
                    .collect();
                if chain.is_empty() {
                    return Err(OriginationError::NoClientCertificate);
                }
                let key = PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|_| OriginationError::NoPrivateKey)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(OriginationError::ClientKey)?
            }
        };
        Ok(Self {
            http1: client_config::offering(&config, &[b"http/1.1"]),
            h2: client_config::offering(&config, &[b"h2"]),
        })
    }

    /// Client handshake over `io` sending SNI `server_name` (a DNS name or an IP address),
    /// offering `h2` when `h2`, else `http/1.1`.
    pub async fn connect<IO>(
        &self,
        server_name: &str,
        h2: bool,
        io: IO,
    ) -> Result<ClientStream<IO>, OriginationHandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let host = server_name.to_string();
        let name = ServerName::try_from(host.clone()).map_err(|e| OriginationHandshakeError {
            host: host.clone(),
            reason: "other",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let config = if h2 { &self.h2 } else { &self.http1 };
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, io)
            .await
            .map_err(|source| OriginationHandshakeError {
                host,
                reason: reason(&source),
                source,
            })
    }
}

fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, OriginationError> {
    crate::verify::roots_from_pem(pem)
        .ok_or_else(|| OriginationError::NoRoots("no certificate in the PEM".into()))
}

fn system_roots() -> Result<RootCertStore, OriginationError> {
    crate::verify::system_roots().map_err(|why| {
        OriginationError::NoRoots(why.unwrap_or_else(|| "no system roots found".into()))
    })
}

/// The reason label of a failed handshake.
fn reason(e: &std::io::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(C::UnknownIssuer)) => "unknown_ca",
        Some(rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        )) => "identity_mismatch",
        Some(rustls::Error::InvalidCertificate(C::Other(other)))
            if other.0.downcast_ref::<NoNameMatched>().is_some() =>
        {
            "identity_mismatch"
        }
        Some(rustls::Error::InvalidCertificate(_)) => "bad_certificate",
        Some(rustls::Error::AlertReceived(_)) => "alert",
        Some(_) => "protocol",
        None => "io",
    }
}

/// The certificate carries none of the names asked for.
#[derive(Debug)]
struct NoNameMatched {
    wanted: Vec<String>,
    presented: Vec<String>,
}

impl fmt::Display for NoNameMatched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the certificate's names {:?} match none of subjectAltNames {:?}",
            self.presented, self.wanted
        )
    }
}

impl std::error::Error for NoNameMatched {}

/// The names of a DER certificate: DNS and URI SANs as text, IP SANs as addresses.
fn certificate_names(der: &[u8]) -> Vec<CertName> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(CertName::Dns(d.to_string())),
            GeneralName::URI(u) => Some(CertName::Uri(u.to_string())),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b).ok().map(|a| CertName::Ip(a.into())),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| CertName::Ip(a.into())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[derive(Debug, PartialEq)]
enum CertName {
    Dns(String),
    Uri(String),
    Ip(IpAddr),
}

impl CertName {
    /// Whether this name of the certificate is `wanted` (a subjectAltNames entry).
    fn matches(&self, wanted: &str) -> bool {
        match self {
            Self::Uri(uri) => uri == wanted,
            Self::Ip(ip) => wanted.parse::<IpAddr>().is_ok_and(|w| w == *ip),
            Self::Dns(dns) => {
                let (dns, wanted) = (dns.to_ascii_lowercase(), wanted.to_ascii_lowercase());
                if dns == wanted {
                    return true;
                }
                // A wildcard certificate name covers exactly one leftmost label.
                match (dns.strip_prefix("*."), wanted.split_once('.')) {
                    (Some(suffix), Some((label, rest))) => !label.is_empty() && rest == suffix,
                    _ => false,
                }
            }
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Dns(s) | Self::Uri(s) => s.clone(),
            Self::Ip(ip) => ip.to_string(),
        }
    }
}

/// The server verifier of one origination (see the module docs).
#[derive(Debug)]
struct OriginationVerifier {
    check: ChainCheck,
    subject_alt_names: Vec<String>,
    insecure: bool,
}

impl ServerCertVerifier for OriginationVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.insecure {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = self.check.chain(end_entity, intermediates, now)?;
        if self.subject_alt_names.is_empty() {
            return rustls::client::verify_server_name(&cert, server_name)
                .map(|()| ServerCertVerified::assertion());
        }
        let names = certificate_names(end_entity.as_ref());
        if self
            .subject_alt_names
            .iter()
            .any(|w| names.iter().any(|n| n.matches(w)))
        {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(NoNameMatched {
                wanted: self.subject_alt_names.clone(),
                presented: names.iter().map(CertName::text).collect(),
            }))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check.tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.check.schemes()
    }
}

#[cfg(test)]
mod tests;
