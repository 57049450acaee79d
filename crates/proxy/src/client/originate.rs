//! TLS origination (Istio DestinationRule `tls.mode: SIMPLE`): the proxy itself opens TLS to a
//! backend's endpoints, which are plain servers outside the mesh, verifying the server's chain
//! against the rule's `caCertificates` file (or the system roots) and the name `sni`.
//!
//! The CA file is read when the policy arrives, not per connection (while it is unreadable,
//! on every policy update). An unreadable or empty file does not stop the proxy: the error is logged once and every request to the backend
//! fails with `trellis-error: upstream TLS origination failed` and the reason in the log, so a
//! bad path is never answered with plaintext.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use trellis_identity::public_tls::PublicTls;
use trellis_identity::tls::ClientStream;
use trellis_model::policy::TlsOrigination;

use super::UpstreamError;

/// The ALPN a connection offers: HTTP/1.1 for the pooled HTTP/1 client, h2 for HTTP/2.
#[derive(Clone, Copy, Debug)]
pub enum Alpn {
    Http1,
    H2,
}

/// One backend's TLS origination: its settings, the server name, and the client configs built
/// from them (or why they could not be built).
#[derive(Debug)]
pub struct Origination {
    settings: TlsOrigination,
    sni: String,
    clients: Result<Clients, String>,
}

#[derive(Debug)]
struct Clients {
    http1: PublicTls,
    h2: PublicTls,
}

impl Origination {
    /// Builds the clients for `settings`; `authority` (the backend's `host:port`) gives the
    /// default server name.
    pub fn new(settings: &TlsOrigination, authority: &str) -> Self {
        let sni = settings
            .sni
            .clone()
            .unwrap_or_else(|| host_of(authority).to_string());
        let clients = build(settings).map(|http1| Clients {
            h2: http1.with_alpn(&[b"h2"]),
            http1,
        });
        if let Err(e) = &clients {
            tracing::error!(backend = authority, error = %e, "TLS origination unavailable; requests to this backend fail until the policy or file is fixed");
        }
        Self {
            settings: settings.clone(),
            sni,
            clients,
        }
    }

    /// Whether this origination was built from `settings` and could be (so it can be kept
    /// across policy updates; a failed one is built again, reading the file again).
    pub fn is_for(&self, settings: &TlsOrigination) -> bool {
        self.settings == *settings && self.clients.is_ok()
    }

    /// The client handshake with the endpoint at `addr` over `io`.
    pub async fn connect<IO>(
        &self,
        addr: SocketAddr,
        io: IO,
        alpn: Alpn,
    ) -> Result<ClientStream<IO>, UpstreamError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let clients = self
            .clients
            .as_ref()
            .map_err(|reason| UpstreamError::Originate {
                addr,
                reason: reason.clone(),
            })?;
        let tls = match alpn {
            Alpn::Http1 => &clients.http1,
            Alpn::H2 => &clients.h2,
        };
        tls.connect(&self.sni, io)
            .await
            .map_err(|e| UpstreamError::Originate {
                addr,
                reason: e.to_string(),
            })
    }
}

/// The roots: the `caCertificates` file, or the system's.
fn build(settings: &TlsOrigination) -> Result<PublicTls, String> {
    match &settings.ca_certificates {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                format!("DestinationRule tls.caCertificates: cannot read {path:?}: {e}")
            })?;
            PublicTls::with_roots_pem(&pem)
                .map_err(|e| format!("DestinationRule tls.caCertificates: {path:?}: {e}"))
        }
        None => PublicTls::system()
            .map_err(|e| format!("DestinationRule tls (system roots, no caCertificates): {e}")),
    }
}

/// `host` of `host:port` (and of a label such as `host:port (subset)`); IPv6 brackets stay.
fn host_of(authority: &str) -> &str {
    let authority = authority.split(' ').next().unwrap_or(authority);
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_server_name_is_the_authority_host() {
        assert_eq!(host_of("api.example.com:443"), "api.example.com");
        assert_eq!(
            host_of("reviews.default.svc:9080 (v1)"),
            "reviews.default.svc"
        );
        assert_eq!(host_of("api.example.com"), "api.example.com");
    }

    #[tokio::test]
    async fn an_unreadable_ca_file_is_a_clear_error_on_every_connect() {
        let o = Origination::new(
            &TlsOrigination {
                ca_certificates: Some("/nonexistent/ca.pem".into()),
                sni: None,
            },
            "api.example.com:443",
        );
        let (a, _b) = tokio::io::duplex(64);
        let addr: SocketAddr = ([127, 0, 0, 1], 9).into();
        let Err(err) = o.connect(addr, a, Alpn::Http1).await else {
            panic!("connected without roots");
        };
        let text = err.to_string();
        assert!(
            text.contains("caCertificates") && text.contains("/nonexistent/ca.pem"),
            "{text}"
        );
        assert_eq!(err.reason(), "upstream TLS origination failed");
    }
}
