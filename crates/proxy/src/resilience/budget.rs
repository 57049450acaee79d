//! The retry budget (Linkerd's `retryBudget`): retries may add at most `ratio` of the requests
//! seen over the last `ttl`, plus `min_per_second × ttl` so a quiet backend can still retry.
//! A backend whose every endpoint fails therefore sees at most `(1 + ratio) × requests + floor`
//! attempts, however many retries each route allows.
//!
//! The window is ten slots of `ttl / 10`; a slot older than `ttl` is forgotten. Time is an
//! explicit `Duration` since an origin, so the arithmetic is tested without a clock.

use std::time::Duration;

use trellis_model::policy::RetryBudget;

const SLOTS: usize = 10;

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Which slot period this holds (time / slot width).
    epoch: u64,
    requests: u64,
    retries: u64,
}

#[derive(Clone, Debug)]
pub struct Budget {
    ratio: f64,
    floor: f64,
    slot_nanos: u64,
    slots: [Slot; SLOTS],
}

impl Budget {
    pub fn new(config: &RetryBudget) -> Self {
        let ttl = config.ttl.max(Duration::from_millis(10));
        Self {
            ratio: config.ratio.max(0.0),
            floor: f64::from(config.min_per_second) * ttl.as_secs_f64(),
            slot_nanos: u64::try_from(ttl.as_nanos() / SLOTS as u128)
                .unwrap_or(u64::MAX)
                .max(1),
            slots: [Slot::default(); SLOTS],
        }
    }

    fn slot(&mut self, now: Duration) -> &mut Slot {
        let epoch = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX) / self.slot_nanos;
        let slot = &mut self.slots[(epoch % SLOTS as u64) as usize];
        if slot.epoch != epoch {
            *slot = Slot {
                epoch,
                ..Slot::default()
            };
        }
        slot
    }

    fn totals(&self, now: Duration) -> (u64, u64) {
        let epoch = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX) / self.slot_nanos;
        self.slots
            .iter()
            .filter(|s| epoch.saturating_sub(s.epoch) < SLOTS as u64 && s.epoch <= epoch)
            .fold((0, 0), |(q, r), s| (q + s.requests, r + s.retries))
    }

    /// Counts one original request.
    pub fn deposit(&mut self, now: Duration) {
        self.slot(now).requests += 1;
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&mut self, now: Duration) -> bool {
        let (requests, retries) = self.totals(now);
        if (retries as f64) < self.floor + self.ratio * requests as f64 {
            self.slot(now).retries += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> Budget {
        Budget::new(&RetryBudget {
            ratio,
            min_per_second,
            ttl: Duration::from_secs(10),
        })
    }

    #[test]
    fn retries_are_capped_at_ratio_plus_floor() {
        let mut b = budget(0.2, 1);
        let now = Duration::from_secs(1);
        let mut granted = 0;
        for _ in 0..1_000 {
            b.deposit(now);
            // Every request wants two retries.
            for _ in 0..2 {
                if b.try_withdraw(now) {
                    granted += 1;
                }
            }
        }
        // 20% of 1,000 plus a floor of 1/s × 10 s.
        assert!((200..=210).contains(&granted), "granted {granted}");
    }

    #[test]
    fn the_floor_lets_a_quiet_backend_retry() {
        let mut b = budget(0.0, 2);
        let now = Duration::from_secs(3);
        assert!((0..20).all(|_| b.try_withdraw(now)));
        assert!(!b.try_withdraw(now));
    }

    #[test]
    fn old_requests_and_retries_expire() {
        let mut b = budget(0.5, 0);
        for _ in 0..10 {
            b.deposit(Duration::ZERO);
        }
        assert!((0..5).all(|_| b.try_withdraw(Duration::ZERO)));
        assert!(!b.try_withdraw(Duration::from_secs(1)));
        // Eleven seconds on, both the deposits and the retries have left the window.
        let later = Duration::from_secs(11);
        assert!(!b.try_withdraw(later));
        b.deposit(later);
        b.deposit(later);
        assert!(b.try_withdraw(later));
        assert!(!b.try_withdraw(later));
    }
}
