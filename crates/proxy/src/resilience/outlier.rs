//! Outlier detection (Istio `outlierDetection`, Envoy's consecutive-error detectors): an
//! endpoint that answers `consecutive_5xx` 5xx in a row (or `consecutive_gateway_errors`
//! 502/503/504 in a row; connect failures count as both) is ejected for
//! `base_ejection_time × times ejected`, capped at [`MAX_EJECTION_TIME`]. At most
//! `max_ejection_percent` of a backend's endpoints are out at once, but, as in Envoy, one
//! endpoint may always be ejected when the percentage is above zero. Ejected endpoints are
//! re-admitted by the sweep that runs every `interval` once their time is up.
//!
//! Pure: the state machine takes the time as an argument.

use std::time::Duration;

use tokio::time::Instant;
use trellis_model::policy::OutlierDetection;

/// The longest ejection, however often an endpoint was ejected (Envoy's `max_ejection_time`
/// default).
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// How one attempt ended, as outlier detection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx other than 502/503/504.
    ServerError,
    /// 502, 503, 504, a connect failure or a reset.
    GatewayError,
}

impl Outcome {
    pub fn of_status(status: u16) -> Self {
        match status {
            502..=504 => Self::GatewayError,
            500..=599 => Self::ServerError,
            _ => Self::Success,
        }
    }
}

/// One endpoint's outlier state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointOutlier {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
}

impl EndpointOutlier {
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.is_some()
    }

    pub fn times_ejected(&self) -> u32 {
        self.times_ejected
    }

    /// Counts one outcome; `true` when a threshold is reached and the endpoint should be
    /// ejected (if the backend's cap allows: [`Self::eject`]).
    pub fn record(&mut self, outcome: Outcome, config: &OutlierDetection) -> bool {
        match outcome {
            Outcome::Success => {
                self.consecutive_5xx = 0;
                self.consecutive_gateway = 0;
                return false;
            }
            Outcome::ServerError => {
                self.consecutive_5xx += 1;
                self.consecutive_gateway = 0;
            }
            Outcome::GatewayError => {
                self.consecutive_5xx += 1;
                self.consecutive_gateway += 1;
            }
        }
        let over = |limit: Option<u32>, n: u32| limit.is_some_and(|l| l > 0 && n >= l);
        !self.is_ejected()
            && (over(config.consecutive_5xx, self.consecutive_5xx)
                || over(config.consecutive_gateway_errors, self.consecutive_gateway))
    }

    /// Ejects the endpoint from `now`; returns how long for.
    pub fn eject(&mut self, now: Instant, config: &OutlierDetection) -> Duration {
        self.times_ejected = self.times_ejected.saturating_add(1);
        let time = config
            .base_ejection_time
            .saturating_mul(self.times_ejected)
            .min(MAX_EJECTION_TIME);
        self.ejected_until = Some(now + time);
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
        time
    }

    /// Re-admits the endpoint if its time is up; `true` when it was.
    pub fn readmit_if_due(&mut self, now: Instant) -> bool {
        match self.ejected_until {
            Some(until) if until <= now => {
                self.ejected_until = None;
                true
            }
            _ => false,
        }
    }
}

/// How many of `endpoints` may be ejected at once.
pub fn max_ejections(endpoints: usize, max_ejection_percent: u32) -> usize {
    if max_ejection_percent == 0 {
        return 0;
    }
    let pct = max_ejection_percent.min(100) as usize;
    (endpoints * pct / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: Some(3),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }

    #[test]
    fn consecutive_errors_trip_and_success_resets() {
        let c = config();
        let mut o = EndpointOutlier::default();
        assert!(!o.record(Outcome::ServerError, &c));
        assert!(!o.record(Outcome::GatewayError, &c));
        assert!(!o.record(Outcome::Success, &c));
        assert!(!o.record(Outcome::ServerError, &c));
        assert!(!o.record(Outcome::ServerError, &c));
        assert!(o.record(Outcome::GatewayError, &c));
        let gw = OutlierDetection {
            consecutive_5xx: None,
            consecutive_gateway_errors: Some(2),
            ..c
        };
        let mut o = EndpointOutlier::default();
        assert!(!o.record(Outcome::ServerError, &gw));
        assert!(!o.record(Outcome::GatewayError, &gw));
        assert!(o.record(Outcome::GatewayError, &gw));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_and_is_capped() {
        let c = config();
        let mut o = EndpointOutlier::default();
        let t0 = Instant::now();
        assert_eq!(o.eject(t0, &c), Duration::from_secs(30));
        assert!(o.is_ejected());
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!o.readmit_if_due(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(o.readmit_if_due(Instant::now()));
        assert!(!o.is_ejected());
        assert_eq!(o.eject(Instant::now(), &c), Duration::from_secs(60));
        for _ in 0..20 {
            o.eject(Instant::now(), &c);
        }
        assert_eq!(o.eject(Instant::now(), &c), MAX_EJECTION_TIME);
    }

    #[test]
    fn ejection_cap_allows_at_least_one() {
        assert_eq!(max_ejections(3, 10), 1);
        assert_eq!(max_ejections(20, 10), 2);
        assert_eq!(max_ejections(3, 100), 3);
        assert_eq!(max_ejections(3, 0), 0);
        assert_eq!(max_ejections(0, 50), 1);
    }
}
