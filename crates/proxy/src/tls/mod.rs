//! Mesh TLS in the proxy: the workload's certificate (made, renewed and swapped by
//! [`manager`]), the handshakes every meshed connection goes through, the inbound policy
//! (PeerAuthentication) and the TLS metrics.
//!
//! The current [`MeshTls`] (configs for one leaf and one bundle) sits in an `ArcSwapOption`:
//! a handshake loads it without locking, and a renewal or bundle change swaps in a new one
//! without touching open connections. Without a control plane (or before the first
//! certificate) there is none and meshed hops stay plaintext HTTP/2, as before mTLS.
//! The rustls work itself is `trellis_identity::tls`; this module adapts it to sockets.

pub mod accept;
pub mod manager;
mod metrics;
pub mod policy;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use tokio::io::{AsyncRead, AsyncWrite};
use trellis_identity::tls::{ClientStream, HandshakeError, MeshAlpn, MeshTls};

pub use metrics::TlsMetrics;
pub use policy::{InboundPolicy, MtlsMode};

use crate::telemetry::Direction;

/// The verified SPIFFE ID of the peer proxy of an inbound mTLS connection. Request handling
/// finds it in each request's extensions (authorization and telemetry read it); plaintext
/// requests have none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity(pub Arc<str>);

/// What `/ready` and `/config_dump` say about the certificate.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct IdentityStatus {
    /// This proxy's SPIFFE ID once certified.
    pub identity: Option<String>,
    /// Seconds since the epoch.
    pub not_after: Option<u64>,
    pub renewals: u64,
    /// The last failed Certify, cleared by the next success.
    pub last_error: Option<String>,
    pub trust_anchors: usize,
    pub issuer_generation: u64,
}

/// The proxy's mesh identity: the current TLS configs, status and metrics. Shared by every
/// listener and the upstream clients.
#[derive(Debug)]
pub struct MeshIdentity {
    /// Whether a control plane issues certificates (else mTLS is off).
    enabled: bool,
    current: ArcSwapOption<MeshTls>,
    status: Mutex<IdentityStatus>,
    pub metrics: TlsMetrics,
    /// The inbound policy (PeerAuthentication) for this workload, from discovery.
    pub inbound_policy: arc_swap::ArcSwap<InboundPolicy>,
    /// Counts installs, so that whoever waits for a certificate (the ready file) wakes on one.
    installs: tokio::sync::watch::Sender<u64>,
}

impl MeshIdentity {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            current: ArcSwapOption::empty(),
            status: Mutex::new(IdentityStatus::default()),
            metrics: TlsMetrics::default(),
            inbound_policy: arc_swap::ArcSwap::from_pointee(InboundPolicy::default()),
            installs: tokio::sync::watch::channel(0).0,
        }
    }

    /// No control plane: no certificates, plaintext everywhere.
    pub fn disabled() -> Self {
        Self::new(false)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The configs in force, if certified.
    pub fn current(&self) -> Option<Arc<MeshTls>> {
        self.current.load_full()
    }

    /// Whether a certificate is installed: the per-request check (no reference count taken).
    pub fn is_certified(&self) -> bool {
        self.current.load().is_some()
    }

    fn install(&self, tls: MeshTls, status: impl FnOnce(&mut IdentityStatus)) {
        let not_after = tls.not_after();
        self.metrics.set_expiry(not_after);
        {
            let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            s.identity = Some(tls.id().to_string());
            s.not_after = not_after
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs());
            status(&mut s);
        }
        self.current.store(Some(Arc::new(tls)));
        self.installs.send_modify(|n| *n += 1);
    }

    /// Changes with every certificate or bundle installed.
    pub fn installs_rx(&self) -> tokio::sync::watch::Receiver<u64> {
        self.installs.subscribe()
    }

    fn with_status(&self, f: impl FnOnce(&mut IdentityStatus)) {
        f(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    pub fn status(&self) -> IdentityStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `Err(reason)` when this proxy cannot take part in mTLS: not certified yet, or its
    /// certificate expired. A failing renewal with time left is a warning, not unreadiness:
    /// the proxy keeps serving until expiry.
    pub fn readiness(&self) -> Result<Option<String>, String> {
        if !self.enabled {
            return Ok(None);
        }
        let Some(tls) = self.current() else {
            return Err("waiting for a workload certificate".into());
        };
        let now = SystemTime::now();
        let left = tls
            .not_after()
            .duration_since(now)
            .unwrap_or(Duration::ZERO);
        if left.is_zero() {
            return Err("the workload certificate expired and could not be renewed".into());
        }
        let status = self.status();
        Ok(status.last_error.map(|e| {
            format!(
                "certificate renewal failing ({e}); the certificate expires in {}s",
                left.as_secs()
            )
        }))
    }

    /// Client handshake to a meshed peer that must prove `expected`; failures are counted by
    /// reason. `None` when this proxy holds no certificate (the caller goes plaintext).
    pub async fn connect<IO>(
        &self,
        io: IO,
        alpn: MeshAlpn,
        expected: &str,
    ) -> Option<Result<ClientStream<IO>, HandshakeError>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.connect_with_sni(io, alpn, expected, None).await
    }

    /// [`MeshIdentity::connect`] sending `sni` (a remote cluster's endpoint, reached through
    /// its east-west gateway).
    pub async fn connect_with_sni<IO>(
        &self,
        io: IO,
        alpn: MeshAlpn,
        expected: &str,
        sni: Option<&str>,
    ) -> Option<Result<ClientStream<IO>, HandshakeError>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = self.current()?;
        let result = tls.connect_with_sni(io, alpn, expected, sni).await;
        match &result {
            Ok(_) => self.metrics.handshake_ok(Direction::Outbound),
            Err(e) => {
                self.metrics
                    .handshake_failed(Direction::Outbound, e.reason());
                tracing::warn!(peer_identity = expected, reason = e.reason(), error = %e, "mTLS handshake failed");
            }
        }
        Some(result)
    }

    /// Appends the TLS metric families.
    pub fn render(&self, out: &mut String) {
        self.metrics.render(out, self.enabled);
    }
}
