//! CA metrics: issuance count (by result) and latency. Atomics only.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the issuance latency histogram.
const BUCKETS: [f64; 8] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0];

#[derive(Debug, Default)]
pub struct CaMetrics {
    issued: AtomicU64,
    refused: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl CaMetrics {
    pub fn observe(&self, ok: bool, took: Duration) {
        let counter = if ok { &self.issued } else { &self.refused };
        counter.fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// Appends the CA families in the Prometheus text format.
    pub fn render(&self, out: &mut String, anchors: usize) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP trellis_control_certificates_issued_total Certify requests by result.\n\
             # TYPE trellis_control_certificates_issued_total counter\n\
             trellis_control_certificates_issued_total{{result=\"issued\"}} {}\n\
             trellis_control_certificates_issued_total{{result=\"refused\"}} {}",
            load(&self.issued),
            load(&self.refused)
        );
        let _ = writeln!(
            out,
            "# HELP trellis_control_certificate_issue_duration_seconds Time to admit and sign one Certify.\n\
             # TYPE trellis_control_certificate_issue_duration_seconds histogram"
        );
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "trellis_control_certificate_issue_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                load(bucket)
            );
        }
        let count = load(&self.count);
        let _ = writeln!(
            out,
            "trellis_control_certificate_issue_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             trellis_control_certificate_issue_duration_seconds_sum {}\n\
             trellis_control_certificate_issue_duration_seconds_count {count}",
            load(&self.sum_micros) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "# HELP trellis_control_trust_anchors Roots in the trust bundle.\n\
             # TYPE trellis_control_trust_anchors gauge\n\
             trellis_control_trust_anchors {anchors}"
        );
    }
}

/// Appends the issuer's and the trust anchors' expiry as Unix times: the issuer gauge alone,
/// the anchors one series each (labelled by their index in the bundle) so that a rotation's
/// new and old anchor are both visible and an alert can take the earliest.
pub fn render_expiries(out: &mut String, expiries: &trellis_identity::ca::CaExpiries) {
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let _ = writeln!(
        out,
        "# HELP trellis_control_issuer_cert_expiry_timestamp_seconds When the CA's signing (issuer) certificate expires.\n\
         # TYPE trellis_control_issuer_cert_expiry_timestamp_seconds gauge"
    );
    if let Some(t) = expiries.issuer {
        let _ = writeln!(
            out,
            "trellis_control_issuer_cert_expiry_timestamp_seconds {}",
            unix(t)
        );
    }
    let _ = writeln!(
        out,
        "# HELP trellis_control_trust_anchor_expiry_timestamp_seconds When each root of the trust bundle expires.\n\
         # TYPE trellis_control_trust_anchor_expiry_timestamp_seconds gauge"
    );
    for (i, t) in expiries.anchors.iter().enumerate() {
        let _ = writeln!(
            out,
            "trellis_control_trust_anchor_expiry_timestamp_seconds{{anchor=\"{i}\"}} {}",
            unix(*t)
        );
    }
}
