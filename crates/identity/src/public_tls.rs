//! TLS to servers outside the mesh that prove themselves with an ordinary (WebPKI)
//! certificate for their host name, such as an issuer's `jwksUri`. Unlike mesh mTLS there is
//! no client certificate and no SPIFFE ID: the server's chain must verify against the system's
//! roots (or roots given explicitly) and name the host dialled.
//!
//! System roots come from `rustls-native-certs`, which honours `SSL_CERT_FILE` and
//! `SSL_CERT_DIR` as OpenSSL does, so an operator (or a test) can point the proxy at a private
//! CA without a flag. TLS 1.2 is allowed here, unlike inside the mesh: public servers still
//! speak it.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};

/// A client TLS config for public servers.
#[derive(Clone, Debug)]
pub struct PublicTls {
    config: Arc<ClientConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublicTlsError {
    #[error("no usable root certificate ({0})")]
    NoRoots(String),
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0:?} is not a valid server name")]
    ServerName(String),
    #[error("TLS handshake with {host}: {source}")]
    Handshake {
        host: String,
        source: std::io::Error,
    },
}

impl PublicTls {
    /// Trusting the system's roots (see the module docs for `SSL_CERT_FILE`).
    pub fn system() -> Result<Self, PublicTlsError> {
        let roots = crate::verify::system_roots()
            .map_err(|why| PublicTlsError::NoRoots(why.unwrap_or_else(|| "none found".into())))?;
        Self::with_roots(roots)
    }

    /// Trusting only the PEM certificates in `pem` (a private issuer, tests).
    pub fn with_roots_pem(pem: &[u8]) -> Result<Self, PublicTlsError> {
        let roots = crate::verify::roots_from_pem(pem)
            .ok_or_else(|| PublicTlsError::NoRoots("no certificate in the PEM".into()))?;
        Self::with_roots(roots)
    }

    /// The same trust, offering `protocols` in ALPN instead of `http/1.1` (an HTTP/2 client
    /// offers `h2`).
    pub fn with_alpn(&self, protocols: &[&[u8]]) -> Self {
        Self {
            config: crate::client_config::offering(&self.config, protocols),
        }
    }

    fn with_roots(roots: RootCertStore) -> Result<Self, PublicTlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// Client handshake over `io` with SNI `host`; succeeds only when the server's chain
    /// verifies and names `host` (a DNS name or an IP address).
    pub async fn connect<IO>(
        &self,
        host: &str,
        io: IO,
    ) -> Result<tokio_rustls::client::TlsStream<IO>, PublicTlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| PublicTlsError::ServerName(host.to_string()))?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, io)
            .await
            .map_err(|source| PublicTlsError::Handshake {
                host: host.to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rcgen::{CertificateParams, KeyPair};
    use rustls::ServerConfig;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A TLS server on 127.0.0.1 with a self-signed certificate for `names`, answering each
    /// connection with "hello". Returns its address and the certificate's PEM.
    async fn server(names: &[&str]) -> (std::net::SocketAddr, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let _ = tls.write_all(b"hello").await;
                    let _ = tls.shutdown().await;
                }
            }
        });
        (addr, cert.pem())
    }

    #[tokio::test]
    async fn verifies_the_chain_and_the_name() {
        let (addr, pem) = server(&["127.0.0.1", "jwks.test"]).await;
        let tls = PublicTls::with_roots_pem(pem.as_bytes()).unwrap();
        for host in ["127.0.0.1", "jwks.test"] {
            let io = TcpStream::connect(addr).await.unwrap();
            let mut stream = tls.connect(host, io).await.unwrap();
            let mut got = String::new();
            stream.read_to_string(&mut got).await.unwrap();
            assert_eq!(got, "hello");
        }
        // A name the certificate does not carry.
        let io = TcpStream::connect(addr).await.unwrap();
        let err = tls.connect("other.test", io).await.unwrap_err();
        assert!(matches!(err, PublicTlsError::Handshake { .. }), "{err}");
        // Roots that did not issue it.
        let (_, other_pem) = server(&["127.0.0.1"]).await;
        let stranger = PublicTls::with_roots_pem(other_pem.as_bytes()).unwrap();
        let io = TcpStream::connect(addr).await.unwrap();
        assert!(stranger.connect("127.0.0.1", io).await.is_err());
        assert!(PublicTls::with_roots_pem(b"not pem").is_err());
    }
}
