//! Peak-EWMA latency, as in Linkerd (and Finagle before it): a latency estimate that jumps up
//! at once on a slow answer (the peak) and decays towards faster answers exponentially, with a
//! time constant of [`DECAY_NANOS`]. Without new observations the estimate also decays towards
//! zero with the same time constant (as tower's `PeakEwma` does), so an endpoint that was slow
//! or failed once, or was never tried, is tried again in time instead of starving. The
//! balancer's cost is `estimate × (in_flight + 1)`, so an endpoint that is slow, or busy, or
//! both, is chosen less.
//!
//! Pure: time is passed in as nanoseconds since an arbitrary origin.

/// How quickly old latency observations are forgotten (Linkerd's default: 10 s).
pub const DECAY_NANOS: f64 = 10e9;

/// The estimate a new endpoint starts with. Linkerd uses 30 ms: high enough that a brand-new
/// endpoint does not get flooded before it has answered once (an optimistic zero would send it
/// everything), low enough that it is tried soon.
pub const DEFAULT_RTT_NANOS: f64 = 30e6;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeakEwma {
    rtt_nanos: f64,
    stamp_nanos: u64,
}

impl PeakEwma {
    pub fn new(now_nanos: u64) -> Self {
        Self {
            rtt_nanos: DEFAULT_RTT_NANOS,
            stamp_nanos: now_nanos,
        }
    }

    /// Records one observed round trip.
    pub fn observe(&mut self, rtt_nanos: f64, now_nanos: u64) {
        if rtt_nanos > self.rtt_nanos {
            // Peak: a slower answer is believed at once.
            self.rtt_nanos = rtt_nanos;
        } else {
            let elapsed = now_nanos.saturating_sub(self.stamp_nanos) as f64;
            let w = (-elapsed / DECAY_NANOS).exp();
            self.rtt_nanos = self.rtt_nanos * w + rtt_nanos * (1.0 - w);
        }
        self.stamp_nanos = self.stamp_nanos.max(now_nanos);
    }

    pub fn estimate_nanos(&self) -> f64 {
        self.rtt_nanos
    }

    /// The estimate at `now`, decayed towards zero since the last observation.
    pub fn decayed_nanos(&self, now_nanos: u64) -> f64 {
        let idle = now_nanos.saturating_sub(self.stamp_nanos) as f64;
        self.rtt_nanos * (-idle / DECAY_NANOS).exp()
    }

    /// The balancer's cost at `now`: the decayed estimate scaled by the work already waiting
    /// on the endpoint.
    pub fn cost(&self, in_flight: u64, now_nanos: u64) -> f64 {
        self.decayed_nanos(now_nanos) * (in_flight as f64 + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;
    const SEC: u64 = 1_000_000_000;

    #[test]
    fn peaks_immediately_and_decays_with_time() {
        let mut e = PeakEwma::new(0);
        assert_eq!(e.estimate_nanos(), DEFAULT_RTT_NANOS);
        e.observe(500.0 * MS, 0);
        assert_eq!(e.estimate_nanos(), 500.0 * MS);
        // A fast answer right after barely moves it...
        e.observe(1.0 * MS, 1_000_000);
        assert!(e.estimate_nanos() > 490.0 * MS);
        // ...but after several decay periods of fast answers it has come down.
        let mut t = 0;
        for _ in 0..50 {
            t += SEC;
            e.observe(1.0 * MS, t);
        }
        assert!(e.estimate_nanos() < 5.0 * MS, "{}", e.estimate_nanos());
    }

    #[test]
    fn cost_grows_with_in_flight_work() {
        let e = PeakEwma::new(0);
        assert!(e.cost(3, 0) > e.cost(0, 0));
        assert_eq!(e.cost(1, 0), 2.0 * DEFAULT_RTT_NANOS);
    }

    #[test]
    fn an_idle_estimate_fades() {
        let mut e = PeakEwma::new(0);
        e.observe(1e9, 0);
        assert_eq!(e.decayed_nanos(0), 1e9);
        // After 10 s idle: 1/e of it; after a minute, below the default for new endpoints.
        let ten = e.decayed_nanos(10 * SEC);
        assert!((ten - 1e9 / std::f64::consts::E).abs() < 1e6, "{ten}");
        assert!(e.decayed_nanos(60 * SEC) < DEFAULT_RTT_NANOS);
    }
}
