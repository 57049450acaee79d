//! Control-plane metrics, rendered in the Prometheus text format.
//!
//! Counters are atomics bumped on the discovery path; gauges that mirror state (config
//! resources, registered workloads) are read from that state at scrape time so they cannot
//! drift from it. The propagation histogram measures, per proxy, the time from a config or
//! workload change reaching a discovery stream to that proxy's ACK of the update it caused.
//! Certificates issued are the CA's (`ca::metrics`), not counted here.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the propagation buckets, in seconds.
pub const PROPAGATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A fixed-bucket histogram of durations (per-bucket counts; the last slot is `+Inf`).
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; PROPAGATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = PROPAGATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(PROPAGATION_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, name: &str, out: &mut String) {
        let mut cumulative = 0;
        for (i, bound) in PROPAGATION_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[PROPAGATION_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

use crate::store::{ConfigSnapshot, Status};

#[derive(Debug, Default)]
pub struct Metrics {
    connected_proxies: AtomicI64,
    pushes: AtomicU64,
    /// Of `pushes`, those sent as an endpoint delta (see `discovery::delta`).
    endpoint_deltas: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    propagation: Histogram,
}

impl Metrics {
    pub fn proxy_connected(&self) {
        self.connected_proxies.fetch_add(1, Ordering::Relaxed);
    }

    pub fn proxy_disconnected(&self) {
        self.connected_proxies.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn push(&self) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
    }

    /// An Update went out as an endpoint delta (counted by [`Self::push`] too).
    pub fn endpoint_delta(&self) {
        self.endpoint_deltas.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ack(&self) {
        self.acks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn nack(&self) {
        self.nacks.fetch_add(1, Ordering::Relaxed);
    }

    /// A proxy ACKed an update `elapsed` after the change that caused it.
    pub fn propagated(&self, elapsed: Duration) {
        self.propagation.observe(elapsed);
    }

    pub fn connected_proxies(&self) -> i64 {
        self.connected_proxies.load(Ordering::Relaxed)
    }

    pub fn render(&self, config: &ConfigSnapshot, registered_workloads: usize) -> String {
        let mut out = String::with_capacity(1024);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "trellis_control_connected_proxies",
            "gauge",
            "Proxies with an open discovery stream that said Hello.",
            &[("", self.connected_proxies().to_string())],
        );
        let counter = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        metric(
            "trellis_control_pushes_total",
            "counter",
            "Updates sent to proxies.",
            &[("", counter(&self.pushes))],
        );
        metric(
            "trellis_control_endpoint_deltas_total",
            "counter",
            "Updates sent as an endpoint delta rather than a whole destination (also counted in trellis_control_pushes_total).",
            &[("", counter(&self.endpoint_deltas))],
        );
        metric(
            "trellis_control_acks_total",
            "counter",
            "Updates proxies acknowledged.",
            &[("", counter(&self.acks))],
        );
        metric(
            "trellis_control_nacks_total",
            "counter",
            "Updates proxies refused.",
            &[("", counter(&self.nacks))],
        );
        let count = |s: Status| {
            config
                .resources
                .iter()
                .filter(|r| r.status == s)
                .count()
                .to_string()
        };
        metric(
            "trellis_control_config_resources",
            "gauge",
            "Config documents by status.",
            &[
                ("{status=\"Accepted\"}", count(Status::Accepted)),
                ("{status=\"Invalid\"}", count(Status::Invalid)),
                ("{status=\"Ignored\"}", count(Status::Ignored)),
                ("{status=\"Conflicted\"}", count(Status::Conflicted)),
            ],
        );
        metric(
            "trellis_control_registered_workloads",
            "gauge",
            "Workloads registered by their proxies and not expired.",
            &[("", registered_workloads.to_string())],
        );
        let name = "trellis_control_propagation_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a config or workload change to a proxy's ACK of the update it caused.\n# TYPE {name} histogram"
        );
        self.propagation.render(name, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric() {
        let m = Metrics::default();
        m.proxy_connected();
        m.push();
        m.push();
        let text = m.render(&ConfigSnapshot::default(), 3);
        assert!(text.contains("trellis_control_connected_proxies 1\n"));
        assert!(text.contains("trellis_control_pushes_total 2\n"));
        assert!(text.contains("trellis_control_acks_total 0\n"));
        assert!(text.contains("trellis_control_nacks_total 0\n"));
        assert!(text.contains("trellis_control_config_resources{status=\"Invalid\"} 0\n"));
        assert!(text.contains("trellis_control_registered_workloads 3\n"));
        assert!(text.contains("trellis_control_propagation_seconds_count 0\n"));
    }

    #[test]
    fn propagation_is_a_cumulative_histogram() {
        let m = Metrics::default();
        m.propagated(Duration::from_millis(3));
        m.propagated(Duration::from_millis(40));
        let text = m.render(&ConfigSnapshot::default(), 0);
        assert!(text.contains("trellis_control_propagation_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("trellis_control_propagation_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("trellis_control_propagation_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("trellis_control_propagation_seconds_count 2\n"));
    }
}
