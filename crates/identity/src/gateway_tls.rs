//! TLS for a gateway's own listeners: terminating with the certificates its Gateways name (one
//! server config per certificate, chosen by the ClientHello's SNI before the handshake goes on,
//! so each host has its own certificate and, for Istio `MUTUAL`, its own client roots), and
//! reading the SNI of a ClientHello that is passed through untouched.
//!
//! This module knows nothing about hosts or routing: the caller picks the config from the SNI.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use rustls::server::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::tls::{FirstRecord, first_record};

pub use tokio_rustls::server::TlsStream;

#[derive(Debug, thiserror::Error)]
pub enum GatewayTlsError {
    #[error("no certificate in the PEM chain")]
    NoCertificate,
    #[error("no private key in the PEM key")]
    NoKey,
    #[error("no certificate in the client CA PEM")]
    NoClientCa,
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("TLS handshake: {0}")]
    Handshake(#[from] std::io::Error),
    #[error("no certificate for server name {0:?}")]
    NoCertFor(Option<String>),
}

/// A server config for one certificate (PEM chain and key), offering `h2` and `http/1.1`, and
/// requiring a client certificate signed by `client_ca_pem` when given.
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> Result<Arc<ServerConfig>, GatewayTlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(GatewayTlsError::NoCertificate);
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| GatewayTlsError::NoKey)?;
    let provider = crate::tls::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match client_ca_pem {
        None => builder.with_no_client_auth().with_single_cert(chain, key)?,
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()).filter_map(Result::ok) {
                roots.add(cert)?;
            }
            if roots.is_empty() {
                return Err(GatewayTlsError::NoClientCa);
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| GatewayTlsError::Verifier(e.to_string()))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A terminated connection and what its handshake said.
#[derive(Debug)]
pub struct Accepted<IO> {
    pub stream: TlsStream<IO>,
    pub server_name: Option<String>,
    /// The protocol ALPN chose: `true` for h2.
    pub h2: bool,
}

/// Reads the ClientHello from `io`, lets `choose` pick a config by its SNI (lowercase), and
/// completes the handshake with it.
pub async fn accept<IO>(
    io: IO,
    choose: impl FnOnce(Option<&str>) -> Option<Arc<ServerConfig>>,
) -> Result<Accepted<IO>, GatewayTlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let start =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
    let server_name = start
        .client_hello()
        .server_name()
        .map(str::to_ascii_lowercase);
    let config = choose(server_name.as_deref())
        .ok_or_else(|| GatewayTlsError::NoCertFor(server_name.clone()))?;
    let stream = start.into_stream(config).await?;
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    Ok(Accepted {
        stream,
        server_name,
        h2,
    })
}

/// What the first bytes of a connection say about its SNI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sni {
    /// More bytes are needed: at least this many in total.
    NeedBytes(usize),
    /// A ClientHello, with the server name it asks for (lowercase), if any.
    Name(Option<String>),
    /// Not a parsable ClientHello.
    Invalid,
}

/// Reads the SNI of the ClientHello at the start of `prefix` without consuming it.
pub fn peek_sni(prefix: &[u8]) -> Sni {
    // Not a handshake record: refused at once rather than waiting for its length in bytes.
    if prefix.len() >= 5 && prefix[0] != 0x16 {
        return Sni::Invalid;
    }
    // A ClientHello over several records: rare; its SNI is not read.
    let record = first_record(prefix, |accepted| {
        accepted.and_then(|a| a.client_hello().server_name().map(str::to_ascii_lowercase))
    });
    match record {
        FirstRecord::NeedBytes(n) => Sni::NeedBytes(n),
        FirstRecord::Hello(name) => Sni::Name(name),
        FirstRecord::Invalid => Sni::Invalid,
    }
}
