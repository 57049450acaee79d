//! TLS origination (Istio DestinationRule `tls.mode: SIMPLE` and `MUTUAL`): the proxy itself
//! opens TLS to a backend's endpoints, which are plain servers outside the mesh, verifying the
//! server's chain against the rule's `caCertificates` file (or the system roots) and the name
//! `sni` or one of `subjectAltNames` (or nothing, with `insecureSkipVerify`), and presenting
//! the `clientCertificate` and `privateKey` files with MUTUAL. The rustls side is
//! [`trellis_identity::origination`]; this module reads the files and keeps the result.
//!
//! The files are read when the policy arrives, not per connection (while they cannot be used,
//! again on every policy update). A missing, unreadable or bad file does not stop the proxy:
//! the error is logged, naming the DestinationRule and the field, and
//! - if this backend had a working origination, it is kept (the last good config stays) until
//!   a policy update brings files that can be used;
//! - otherwise every request to the backend fails with `trellis-error: upstream TLS origination
//!   failed` and the reason in the log, so a bad path is never answered with plaintext.
//!
//! Failed handshakes are counted in `trellis_tls_handshake_failures_total{direction="outbound"}`
//! by reason, with mesh mTLS's.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncRead, AsyncWrite};
use trellis_identity::origination::{OriginationSpec, OriginationTls};
use trellis_identity::tls::ClientStream;
use trellis_model::policy::TlsOrigination;

use super::UpstreamError;
use crate::telemetry::Direction;
use crate::tls::MeshIdentity;

/// Where failed handshakes are counted: the proxy's identity, whose TLS metrics are rendered.
/// One proxy per process; set at startup (unset in unit tests: nothing counted).
static METRICS: OnceLock<Arc<MeshIdentity>> = OnceLock::new();

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
    clients: Result<OriginationTls, String>,
    /// The settings could not be used and this is the last good origination, kept.
    kept_despite: Option<String>,
}

impl Origination {
    /// Counts failed origination handshakes in `identity`'s TLS metrics (called once, at
    /// startup).
    pub fn count_failures_in(identity: Arc<MeshIdentity>) {
        let _ = METRICS.set(identity);
    }

    /// Builds the clients for `settings`; `authority` (the backend's `host:port`) gives the
    /// default server name.
    pub fn new(settings: &TlsOrigination, authority: &str) -> Self {
        let sni = settings
            .sni
            .clone()
            .unwrap_or_else(|| host_of(authority).to_string());
        Self {
            settings: settings.clone(),
            sni,
            clients: build(settings),
            kept_despite: None,
        }
    }

    /// The origination for `settings` after a policy update, given the backend's `previous`
    /// one: kept while built from the same settings; else built again, and when that fails
    /// while the previous one works, the previous one stays (the error is logged either way).
    pub fn update(
        previous: Option<&Arc<Self>>,
        settings: &TlsOrigination,
        authority: &str,
    ) -> Arc<Self> {
        if let Some(p) = previous.filter(|p| p.is_for(settings)) {
            return p.clone();
        }
        let fresh = Self::new(settings, authority);
        let Err(error) = &fresh.clients else {
            return Arc::new(fresh);
        };
        match previous.filter(|p| p.clients.is_ok()) {
            Some(good) => {
                tracing::error!(backend = authority, error = %error, "TLS origination settings unusable; keeping the last good ones until the policy or files are fixed");
                Arc::new(Self {
                    settings: settings.clone(),
                    sni: good.sni.clone(),
                    clients: good.clients.clone(),
                    kept_despite: Some(error.clone()),
                })
            }
            None => {
                tracing::error!(backend = authority, error = %error, "TLS origination unavailable; requests to this backend fail until the policy or files are fixed");
                Arc::new(fresh)
            }
        }
    }

    /// Whether this origination was built from `settings` and could be (so it can be kept
    /// across policy updates; a failed or stand-in one is built again, reading the files
    /// again).
    pub fn is_for(&self, settings: &TlsOrigination) -> bool {
        self.settings == *settings && self.clients.is_ok() && self.kept_despite.is_none()
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
        let tls = self
            .clients
            .as_ref()
            .map_err(|reason| UpstreamError::Originate {
                addr,
                reason: reason.clone(),
            })?;
        tls.connect(&self.sni, matches!(alpn, Alpn::H2), io)
            .await
            .map_err(|e| {
                if let Some(identity) = METRICS.get() {
                    identity
                        .metrics
                        .handshake_failed(Direction::Outbound, e.reason);
                }
                UpstreamError::Originate {
                    addr,
                    reason: format!("{e} (reason {})", e.reason),
                }
            })
    }
}

/// Reads the files `settings` name and builds the client configs; errors name the rule and
/// the field (`DestinationRule shop/billing spec.trafficPolicy.tls.privateKey: ...`).
fn build(settings: &TlsOrigination) -> Result<OriginationTls, String> {
    let origin = settings.origin.as_deref().unwrap_or("DestinationRule tls");
    let read = |field: &str, path: &str| {
        std::fs::read(path).map_err(|e| format!("{origin}.{field}: cannot read {path:?}: {e}"))
    };
    // Not read when nothing is verified: insecureSkipVerify ignores the roots.
    let roots = match &settings.ca_certificates {
        Some(path) if !settings.insecure_skip_verify => Some(read("caCertificates", path)?),
        _ => None,
    };
    let client = match &settings.client_certificate {
        Some(c) => Some((
            read("clientCertificate", &c.certificate)?,
            read("privateKey", &c.private_key)?,
        )),
        None => None,
    };
    let spec = OriginationSpec {
        roots_pem: roots.as_deref(),
        client: client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        subject_alt_names: &settings.subject_alt_names,
        insecure_skip_verify: settings.insecure_skip_verify,
    };
    OriginationTls::new(&spec).map_err(|e| {
        use trellis_identity::origination::OriginationError as E;
        let (field, path) = match (&e, &settings.client_certificate) {
            (E::NoRoots(_), _) => (
                "caCertificates",
                settings
                    .ca_certificates
                    .as_deref()
                    .unwrap_or("(system roots)"),
            ),
            (E::NoClientCertificate | E::ClientKey(_), Some(c)) => {
                ("clientCertificate", c.certificate.as_str())
            }
            (E::NoPrivateKey, Some(c)) => ("privateKey", c.private_key.as_str()),
            _ => return format!("{origin}: {e}"),
        };
        format!("{origin}.{field}: {path:?}: {e}")
    })
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
                ..TlsOrigination::default()
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

    #[test]
    fn unusable_files_keep_the_last_good_origination_and_name_the_rule_and_field() {
        use trellis_model::policy::ClientCertificate;
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["api.example.com".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (ca, cert_file, key_file) = (
            dir.path().join("ca.pem"),
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
        );
        std::fs::write(&ca, cert.pem()).unwrap();
        std::fs::write(&cert_file, cert.pem()).unwrap();
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let good = TlsOrigination {
            ca_certificates: Some(path(&ca)),
            origin: Some("DestinationRule shop/api spec.trafficPolicy.tls".into()),
            ..TlsOrigination::default()
        };
        let first = Origination::update(None, &good, "api.example.com:443");
        assert!(first.is_for(&good));
        assert!(Arc::ptr_eq(
            &first,
            &Origination::update(Some(&first), &good, "api.example.com:443")
        ));
        // MUTUAL with a key file that is not there: the last good origination stays.
        let mutual = TlsOrigination {
            client_certificate: Some(ClientCertificate {
                certificate: path(&cert_file),
                private_key: path(&key_file),
            }),
            ..good.clone()
        };
        let kept = Origination::update(Some(&first), &mutual, "api.example.com:443");
        assert!(kept.clients.is_ok());
        assert!(!kept.is_for(&mutual), "tried again on the next update");
        let why = kept.kept_despite.as_deref().unwrap();
        assert!(
            why.starts_with(
                "DestinationRule shop/api spec.trafficPolicy.tls.privateKey: cannot read"
            ) && why.contains("k.pem"),
            "{why}"
        );
        // A key that is no PEM, with nothing good before it: named, and every connect fails.
        std::fs::write(&key_file, "not a key").unwrap();
        let bad = Origination::update(None, &mutual, "api.example.com:443");
        let why = bad.clients.as_ref().unwrap_err();
        assert!(
            why.starts_with("DestinationRule shop/api spec.trafficPolicy.tls.privateKey: ")
                && why.contains("no private key"),
            "{why}"
        );
        // Once the file is right, the next update uses the new settings.
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let fixed = Origination::update(Some(&kept), &mutual, "api.example.com:443");
        assert!(fixed.is_for(&mutual));
    }
}
