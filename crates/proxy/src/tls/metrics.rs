//! TLS metrics: certificate expiry, handshakes made and failed (by direction and reason).
//! Preallocated atomics with fixed labels: recording never allocates or formats.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::telemetry::{Direction, per_direction};

/// Every failure reason, in render order. Unknown reasons count as `other`.
const REASONS: [&str; 13] = [
    "bad_certificate",
    "no_client_cert",
    "unknown_ca",
    "alert",
    "protocol",
    "io",
    "identity_mismatch",
    "no_identity",
    "no_alpn",
    "plaintext_refused",
    "timeout",
    // Inbound: the TCP metadata exchange's header was bad or late (`crate::transport::mx`).
    "metadata_exchange",
    "other",
];

#[derive(Debug, Default)]
pub struct TlsMetrics {
    expiry_secs: AtomicU64,
    handshakes: [AtomicU64; 2],
    failures: [[AtomicU64; REASONS.len()]; 2],
    /// Inbound plaintext a dry-run STRICT PeerAuthentication would have refused.
    dry_run_plaintext: AtomicU64,
}

impl TlsMetrics {
    pub fn set_expiry(&self, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.expiry_secs.store(secs, Ordering::Relaxed);
    }

    pub fn handshake_ok(&self, direction: Direction) {
        self.handshakes[direction as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn handshake_failed(&self, direction: Direction, reason: &str) {
        let i = REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REASONS.len() - 1);
        self.failures[direction as usize][i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dry_run_plaintext(&self) {
        self.dry_run_plaintext.fetch_add(1, Ordering::Relaxed);
    }

    pub fn handshakes(&self, direction: Direction) -> u64 {
        self.handshakes[direction as usize].load(Ordering::Relaxed)
    }

    pub fn render(&self, out: &mut String, enabled: bool) {
        if enabled {
            let _ = writeln!(
                out,
                "# HELP trellis_identity_cert_expiry_timestamp_seconds When this proxy's workload certificate expires (0: none yet).\n\
                 # TYPE trellis_identity_cert_expiry_timestamp_seconds gauge\n\
                 trellis_identity_cert_expiry_timestamp_seconds {}",
                self.expiry_secs.load(Ordering::Relaxed)
            );
        }
        let _ = per_direction(
            out,
            "trellis_tls_handshakes_total",
            "Completed mesh mTLS handshakes.",
            |d| self.handshakes(d),
        );
        let _ = writeln!(
            out,
            "# HELP trellis_mtls_dry_run_plaintext_total Inbound connections that are not mesh mTLS, let in, that a dry-run STRICT PeerAuthentication would have refused.\n\
             # TYPE trellis_mtls_dry_run_plaintext_total counter\n\
             trellis_mtls_dry_run_plaintext_total {}",
            self.dry_run_plaintext.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP trellis_tls_handshake_failures_total Failed TLS handshakes (mesh mTLS, and outbound TLS origination) and refused plaintext, by reason.\n\
             # TYPE trellis_tls_handshake_failures_total counter"
        );
        for d in Direction::ALL {
            for (reason, n) in REASONS.iter().zip(&self.failures[d as usize]) {
                let n = n.load(Ordering::Relaxed);
                // Only reasons seen are rendered, as with status codes.
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "trellis_tls_handshake_failures_total{{direction=\"{}\",reason=\"{reason}\"}} {n}",
                        d.as_str()
                    );
                }
            }
        }
    }
}
