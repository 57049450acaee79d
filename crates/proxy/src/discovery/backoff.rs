//! Jittered exponential backoff for reconnecting to the control plane.

use std::time::Duration;

use rand::Rng;

/// Doubles from `min` up to `max`; each delay is drawn from [d/2, d] so that proxies that lost
/// the control plane together do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let floor = ceiling / 2;
        rand::rng().random_range(floor..=ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_cap_with_jitter_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut b = Backoff::new(min, max);
        let first = b.next_delay();
        assert!(first >= min / 2 && first <= min);
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= max && d >= min / 2);
        }
        assert!(b.next_delay() >= max / 2, "capped near max");
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
