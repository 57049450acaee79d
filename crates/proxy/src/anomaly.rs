//! Anomaly detection on this proxy's inbound traffic: is the workload behind it answering
//! worse (more failures, or slower) than its own recent baseline? The decision is
//! `trellis_model::anomaly` (pure); this module feeds it and exposes the result as the gauges
//! `trellis_anomaly{kind="success_rate"|"latency"}` (1 = anomalous) on `/metrics`, which
//! `trellis stat` and the dashboard read.
//!
//! The request path pays one call per inbound answer ([`Anomaly::record`]: three relaxed
//! atomic adds, no allocation, no lock). A task closes a window every `--anomaly-window`
//! (default 30 s) by swapping the counters out and judges it against the baseline
//! (`--anomaly-baseline`, default 10 min). A failure is a 5xx answer, as the request metrics'
//! `response_class` for HTTP (a gRPC status in the trailers is not seen here).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trellis_model::anomaly::{AnomalyConfig, Detector, Verdict, Window};

const SUCCESS_RATE: u8 = 1;
const LATENCY: u8 = 2;

/// The counters of the window being filled and the flags of the last judged one.
#[derive(Debug, Default)]
pub struct Anomaly {
    requests: AtomicU64,
    failures: AtomicU64,
    latency_micros: AtomicU64,
    flags: AtomicU8,
}

impl Anomaly {
    /// Counts one inbound answer (`status` of the response head, `elapsed` to that head).
    #[inline]
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.requests.fetch_add(1, Relaxed);
        if status >= 500 {
            self.failures.fetch_add(1, Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_micros.fetch_add(micros, Relaxed);
    }

    /// Empties the counters into a window. Not atomic across the three counters: a request
    /// counted in between lands in the next window, which a 30-second window does not notice.
    fn take(&self) -> Window {
        Window {
            requests: self.requests.swap(0, Relaxed),
            failures: self.failures.swap(0, Relaxed),
            latency_total: Duration::from_micros(self.latency_micros.swap(0, Relaxed)),
        }
    }

    fn store(&self, v: Verdict) {
        let flags =
            if v.success_rate { SUCCESS_RATE } else { 0 } | if v.latency { LATENCY } else { 0 };
        self.flags.store(flags, Relaxed);
    }

    pub fn verdict(&self) -> Verdict {
        let flags = self.flags.load(Relaxed);
        Verdict {
            success_rate: flags & SUCCESS_RATE != 0,
            latency: flags & LATENCY != 0,
        }
    }

    /// The gauges, in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let v = self.verdict();
        let _ = crate::telemetry::family(
            out,
            "trellis_anomaly",
            "gauge",
            "1 when this workload's inbound success rate or latency departs from its own recent baseline.",
        );
        for (kind, on) in [("success_rate", v.success_rate), ("latency", v.latency)] {
            let _ = writeln!(out, "trellis_anomaly{{kind=\"{kind}\"}} {}", u8::from(on));
        }
    }
}

/// The detector's tuning from the proxy's flags; the rest are the model's defaults.
pub fn config(window: Duration, baseline: Duration) -> AnomalyConfig {
    AnomalyConfig {
        window,
        baseline,
        ..AnomalyConfig::default()
    }
}

/// Closes a window every `config.window` and judges it, until `stop`.
pub async fn run(anomaly: Arc<Anomaly>, config: AnomalyConfig, stop: CancellationToken) {
    let period = config.window.max(Duration::from_millis(100));
    let mut detector = Detector::new(config);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: skip it so the first window is a whole one.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let before = detector.verdict();
        let now = detector.observe(anomaly.take());
        anomaly.store(now);
        if now != before {
            tracing::warn!(
                success_rate = now.success_rate,
                latency = now.latency,
                baseline = ?detector.baseline(),
                "inbound anomaly state changed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_failures_after_a_healthy_period_sets_the_gauge() {
        let anomaly = Arc::new(Anomaly::default());
        let stop = CancellationToken::new();
        let window = Duration::from_secs(1);
        tokio::spawn(run(
            anomaly.clone(),
            config(window, Duration::from_secs(20)),
            stop.clone(),
        ));
        for second in 0..8 {
            for i in 0..50 {
                let failing = second >= 5 && i % 2 == 0;
                anomaly.record(if failing { 503 } else { 200 }, Duration::from_millis(2));
            }
            tokio::time::sleep(window).await;
        }
        let mut text = String::new();
        anomaly.render(&mut text);
        assert!(
            text.contains("trellis_anomaly{kind=\"success_rate\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("trellis_anomaly{kind=\"latency\"} 0"),
            "{text}"
        );
        stop.cancel();
    }
}
