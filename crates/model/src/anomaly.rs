//! Anomaly detection: is a workload's traffic departing from its own recent baseline?
//!
//! Pure and clock-free: the caller closes a window of traffic (requests, failures, summed
//! latency) every [`AnomalyConfig::window`] and hands it to [`Detector::observe`]. The
//! baseline is an exponentially weighted moving average over the closed windows with a time
//! constant of [`AnomalyConfig::baseline`] (about 10 minutes by default), so "normal" is what
//! this workload did recently, not a fixed threshold. A window is judged only when it has at
//! least `min_requests` requests and the baseline has seen `warmup_windows` such windows, so
//! a quiet workload or a fresh proxy is never flagged on noise.
//!
//! - **Success rate**: flagged when the window's failure rate exceeds the baseline's by at
//!   least `failure_rate_increase` (absolute, 0.10 = ten points); cleared when the excess falls
//!   below half of that.
//! - **Latency**: flagged when the window's mean latency is at least `latency_factor` times the
//!   baseline's and at least `latency_floor` above it (so 1 ms → 3 ms is not an incident);
//!   cleared when it falls below the midpoint factor (1 + (factor - 1) / 2).
//!
//! The two thresholds per signal are the hysteresis: a value hovering at the threshold does
//! not flap. A window judged anomalous still feeds the baseline, so a lasting change becomes
//! the new normal over the baseline's time constant and the flag clears by itself.

use std::time::Duration;

/// Tuning; [`Default`] is the production setting.
#[derive(Clone, Debug, PartialEq)]
pub struct AnomalyConfig {
    /// Length of one judged window.
    pub window: Duration,
    /// Time constant of the baseline EWMA.
    pub baseline: Duration,
    /// Fewer requests in a window than this: not judged (and not fed to the baseline).
    pub min_requests: u64,
    /// Judged windows the baseline needs before anything is flagged.
    pub warmup_windows: u32,
    pub failure_rate_increase: f64,
    pub latency_factor: f64,
    pub latency_floor: Duration,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            baseline: Duration::from_secs(600),
            min_requests: 20,
            warmup_windows: 3,
            failure_rate_increase: 0.10,
            latency_factor: 2.0,
            latency_floor: Duration::from_millis(10),
        }
    }
}

/// One closed window of traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    pub failures: u64,
    /// Sum of the requests' latencies.
    pub latency_total: Duration,
}

/// What is flagged now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub success_rate: bool,
    pub latency: bool,
}

/// The baseline and the current flags of one workload.
#[derive(Clone, Debug)]
pub struct Detector {
    config: AnomalyConfig,
    /// Weight of a new window in the EWMA: 1 - e^(-window / baseline).
    alpha: f64,
    /// Baseline failure rate (0..1) and mean latency (seconds); `None` before the first
    /// judged window.
    failure_rate: Option<f64>,
    latency: Option<f64>,
    windows_seen: u32,
    verdict: Verdict,
}

impl Detector {
    pub fn new(config: AnomalyConfig) -> Self {
        let baseline = config.baseline.as_secs_f64().max(f64::MIN_POSITIVE);
        let alpha = 1.0 - (-config.window.as_secs_f64() / baseline).exp();
        Self {
            config,
            alpha: alpha.clamp(0.0, 1.0),
            failure_rate: None,
            latency: None,
            windows_seen: 0,
            verdict: Verdict::default(),
        }
    }

    pub fn config(&self) -> &AnomalyConfig {
        &self.config
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Baseline failure rate and mean latency in seconds, once known.
    pub fn baseline(&self) -> Option<(f64, f64)> {
        Some((self.failure_rate?, self.latency?))
    }

    /// Judges a closed window against the baseline, then folds it into the baseline.
    pub fn observe(&mut self, w: Window) -> Verdict {
        if w.requests < self.config.min_requests.max(1) {
            // Too little traffic to say anything: flags stay as they are.
            return self.verdict;
        }
        let failure_rate = w.failures.min(w.requests) as f64 / w.requests as f64;
        let latency = w.latency_total.as_secs_f64() / w.requests as f64;
        if let (Some(base_fail), Some(base_lat)) = (self.failure_rate, self.latency)
            && self.windows_seen >= self.config.warmup_windows
        {
            let excess = failure_rate - base_fail;
            let limit = self.config.failure_rate_increase;
            self.verdict.success_rate = if self.verdict.success_rate {
                excess >= limit / 2.0
            } else {
                excess >= limit
            };
            let factor = self.config.latency_factor.max(1.0);
            let floor = self.config.latency_floor.as_secs_f64();
            self.verdict.latency = if self.verdict.latency {
                latency >= base_lat * (1.0 + (factor - 1.0) / 2.0)
            } else {
                latency >= base_lat * factor && latency - base_lat >= floor
            };
        }
        self.failure_rate = Some(match self.failure_rate {
            None => failure_rate,
            Some(b) => b + self.alpha * (failure_rate - b),
        });
        self.latency = Some(match self.latency {
            None => latency,
            Some(b) => b + self.alpha * (latency - b),
        });
        self.windows_seen = self.windows_seen.saturating_add(1);
        self.verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// `n` requests, `failed` of them failures, each taking `latency_ms`.
    fn w(n: u64, failed: u64, latency_ms: u64) -> Window {
        Window {
            requests: n,
            failures: failed,
            latency_total: ms(latency_ms * n),
        }
    }

    fn config() -> AnomalyConfig {
        AnomalyConfig {
            window: Duration::from_secs(1),
            baseline: Duration::from_secs(20),
            ..AnomalyConfig::default()
        }
    }

    /// Feeds windows in order and returns the verdict after each.
    fn run(windows: &[Window]) -> Vec<Verdict> {
        let mut d = Detector::new(config());
        windows.iter().map(|&win| d.observe(win)).collect()
    }

    const OK: Verdict = Verdict {
        success_rate: false,
        latency: false,
    };
    const FAILING: Verdict = Verdict {
        success_rate: true,
        latency: false,
    };
    const SLOW: Verdict = Verdict {
        success_rate: false,
        latency: true,
    };

    #[test]
    fn table() {
        let healthy = w(100, 0, 5);
        struct Case {
            name: &'static str,
            windows: Vec<Window>,
            last: Verdict,
        }
        let cases = [
            Case {
                name: "steady traffic is never flagged",
                windows: vec![healthy; 10],
                last: OK,
            },
            Case {
                name: "a jump in failures is flagged",
                windows: [vec![healthy; 5], vec![w(100, 30, 5)]].concat(),
                last: FAILING,
            },
            Case {
                name: "a small rise in failures is not",
                windows: [vec![healthy; 5], vec![w(100, 5, 5)]].concat(),
                last: OK,
            },
            Case {
                name: "a workload that always fails a third is its own normal",
                windows: vec![w(100, 33, 5); 10],
                last: OK,
            },
            Case {
                name: "latency four times the baseline is flagged",
                windows: [vec![healthy; 5], vec![w(100, 0, 20)]].concat(),
                last: SLOW,
            },
            Case {
                name: "a tiny absolute rise is below the floor",
                windows: [vec![w(100, 0, 1); 5], vec![w(100, 0, 3)]].concat(),
                last: OK,
            },
            Case {
                name: "nothing is judged during warm-up",
                windows: vec![healthy, healthy, w(100, 100, 500)],
                last: OK,
            },
            Case {
                name: "too few requests are not judged",
                windows: [vec![healthy; 5], vec![w(5, 5, 500)]].concat(),
                last: OK,
            },
            Case {
                name: "both at once",
                windows: [vec![healthy; 5], vec![w(100, 50, 100)]].concat(),
                last: Verdict {
                    success_rate: true,
                    latency: true,
                },
            },
        ];
        for case in cases {
            let verdicts = run(&case.windows);
            assert_eq!(verdicts.last().copied(), Some(case.last), "{}", case.name);
        }
    }

    #[test]
    fn hysteresis_holds_the_flag_until_well_below_the_threshold() {
        let mut d = Detector::new(config());
        for _ in 0..5 {
            d.observe(w(100, 0, 5));
        }
        assert!(d.observe(w(100, 20, 5)).success_rate);
        // 7% above the baseline: under the 10-point entry threshold, over the 5-point exit.
        assert!(d.observe(w(100, 7, 5)).success_rate, "still flagged");
        assert!(!d.observe(w(100, 0, 5)).success_rate, "cleared");
        // Re-entering needs the full threshold again.
        assert!(!d.observe(w(100, 8, 5)).success_rate);
    }

    #[test]
    fn a_quiet_window_keeps_the_flag_and_recovery_clears_it() {
        let mut d = Detector::new(config());
        for _ in 0..5 {
            d.observe(w(100, 0, 5));
        }
        assert!(d.observe(w(100, 0, 50)).latency);
        assert!(
            d.observe(Window::default()).latency,
            "no traffic: unchanged"
        );
        assert!(!d.observe(w(100, 0, 5)).latency);
    }

    #[test]
    fn a_lasting_change_becomes_the_new_normal() {
        let mut d = Detector::new(config());
        for _ in 0..5 {
            d.observe(w(100, 0, 5));
        }
        assert!(d.observe(w(100, 0, 50)).latency);
        // With a 20-window time constant the baseline absorbs the new level.
        let cleared = (0..200).position(|_| !d.observe(w(100, 0, 50)).latency);
        let n = cleared.expect("clears within 200 windows");
        assert!((5..100).contains(&n), "cleared after {n} windows");
    }
}
