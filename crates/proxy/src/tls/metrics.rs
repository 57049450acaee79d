//! TLS metrics: certificate expiry, handshakes made and failed (by direction and reason).
//! Preallocated atomics with fixed labels: recording never allocates or formats.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::telemetry::{Direction, family, labelled, per_direction, sample};

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
        // `write!` into a String cannot fail; the result is ignored on purpose.
        let _ = self.render_families(out, enabled);
    }

    fn render_families(&self, out: &mut String, enabled: bool) -> std::fmt::Result {
        if enabled {
            let name = "trellis_identity_cert_expiry_timestamp_seconds";
            let help = "When this proxy's workload certificate expires (0: none yet).";
            family(out, name, "gauge", help)?;
            sample(out, name, "", self.expiry_secs.load(Ordering::Relaxed))?;
        }
        per_direction(
            out,
            "trellis_tls_handshakes_total",
            "Completed mesh mTLS handshakes.",
            |d| self.handshakes(d),
        )?;
        let name = "trellis_mtls_dry_run_plaintext_total";
        let help = "Inbound connections that are not mesh mTLS, let in, that a dry-run STRICT PeerAuthentication would have refused.";
        family(out, name, "counter", help)?;
        sample(
            out,
            name,
            "",
            self.dry_run_plaintext.load(Ordering::Relaxed),
        )?;
        let name = "trellis_tls_handshake_failures_total";
        let help = "Failed TLS handshakes (mesh mTLS, and outbound TLS origination) and refused plaintext, by reason.";
        family(out, name, "counter", help)?;
        for d in Direction::ALL {
            for (reason, n) in REASONS.iter().zip(&self.failures[d as usize]) {
                let n = n.load(Ordering::Relaxed);
                // Only reasons seen are rendered, as with status codes.
                if n > 0 {
                    let labels = [("direction", d.as_str()), ("reason", *reason)];
                    labelled(out, name, &labels, n)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The whole rendering, byte for byte: what scrapers and `trellis stat` read. Failure
    /// reasons never seen are left out; an unknown one counts as `other`.
    #[test]
    fn renders_the_exact_text_format() {
        let m = TlsMetrics::default();
        m.set_expiry(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        m.handshake_ok(Direction::Inbound);
        m.handshake_ok(Direction::Inbound);
        m.dry_run_plaintext();
        m.handshake_failed(Direction::Inbound, "no such reason");
        m.handshake_failed(Direction::Outbound, "unknown_ca");
        m.handshake_failed(Direction::Outbound, "unknown_ca");
        let mut s = String::new();
        m.render(&mut s, true);
        let want = [
            "# HELP trellis_identity_cert_expiry_timestamp_seconds When this proxy's workload certificate expires (0: none yet).\n",
            "# TYPE trellis_identity_cert_expiry_timestamp_seconds gauge\n",
            "trellis_identity_cert_expiry_timestamp_seconds 1700000000\n",
            "# HELP trellis_tls_handshakes_total Completed mesh mTLS handshakes.\n",
            "# TYPE trellis_tls_handshakes_total counter\n",
            "trellis_tls_handshakes_total{direction=\"inbound\"} 2\n",
            "trellis_tls_handshakes_total{direction=\"outbound\"} 0\n",
            "# HELP trellis_mtls_dry_run_plaintext_total Inbound connections that are not mesh mTLS, let in, that a dry-run STRICT PeerAuthentication would have refused.\n",
            "# TYPE trellis_mtls_dry_run_plaintext_total counter\n",
            "trellis_mtls_dry_run_plaintext_total 1\n",
            "# HELP trellis_tls_handshake_failures_total Failed TLS handshakes (mesh mTLS, and outbound TLS origination) and refused plaintext, by reason.\n",
            "# TYPE trellis_tls_handshake_failures_total counter\n",
            "trellis_tls_handshake_failures_total{direction=\"inbound\",reason=\"other\"} 1\n",
            "trellis_tls_handshake_failures_total{direction=\"outbound\",reason=\"unknown_ca\"} 2\n",
        ];
        assert_eq!(s, want.concat());
        // Without identity (mTLS off) there is no certificate to expire.
        s.clear();
        m.render(&mut s, false);
        assert!(s.starts_with("# HELP trellis_tls_handshakes_total "), "{s}");
    }
}
