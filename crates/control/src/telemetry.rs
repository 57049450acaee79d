//! Control-plane metrics, rendered in the Prometheus text format.
//!
//! Counters are atomics bumped on the discovery path; gauges that mirror state (config
//! resources, registered workloads) are read from that state at scrape time so they cannot
//! drift from it.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::store::{ConfigSnapshot, Status};

#[derive(Debug, Default)]
pub struct Metrics {
    connected_proxies: AtomicI64,
    pushes: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
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

    pub fn ack(&self) {
        self.acks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn nack(&self) {
        self.nacks.fetch_add(1, Ordering::Relaxed);
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
    }
}
