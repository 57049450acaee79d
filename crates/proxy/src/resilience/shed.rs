//! Load shedding and the concurrent-request cap: requests in flight, per direction, counted
//! with one atomic from the moment a request is admitted until its response head is returned.
//!
//! Shedding starts at `--load-shed-in-flight` (on by default) and answers 503 with
//! `Retry-After`, so callers back off before the proxy's memory or latency run away while an
//! upstream is slow; `--max-concurrent-requests` is the hard backstop (503
//! `trellis-error: overloaded`) when shedding is off or set above it. A turned-away request
//! costs one `fetch_add` and one `fetch_sub`, no lock and no queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// What happens to a request arriving with `prev` others in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Over the shedding threshold: 503 + `Retry-After`.
    Shed,
    /// Over the hard cap: 503 `trellis-error: overloaded`.
    Overloaded,
}

/// The decision, pure: shedding (the lower threshold) is checked first.
pub fn decide(prev: u32, shed_at: Option<u32>, max: Option<u32>) -> Verdict {
    match (shed_at, max) {
        (Some(shed), _) if prev >= shed => Verdict::Shed,
        (_, Some(max)) if prev >= max => Verdict::Overloaded,
        _ => Verdict::Admit,
    }
}

/// The in-flight count of one direction.
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    count: Arc<AtomicU32>,
}

/// One admitted request's place in the count; released on drop.
#[derive(Debug)]
pub struct InFlightGuard {
    count: Arc<AtomicU32>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Relaxed);
    }
}

impl InFlight {
    /// Counts a new request and decides on it; the guard is returned only when admitted.
    pub fn enter(&self, shed_at: Option<u32>, max: Option<u32>) -> Result<InFlightGuard, Verdict> {
        let prev = self.count.fetch_add(1, Relaxed);
        let guard = InFlightGuard {
            count: self.count.clone(),
        };
        match decide(prev, shed_at, max) {
            Verdict::Admit => Ok(guard),
            // `guard` drops here and gives the count back.
            refused => Err(refused),
        }
    }

    pub fn current(&self) -> u32 {
        self.count.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_before_the_hard_cap() {
        assert_eq!(decide(0, Some(2), Some(4)), Verdict::Admit);
        assert_eq!(decide(2, Some(2), Some(4)), Verdict::Shed);
        assert_eq!(decide(4, None, Some(4)), Verdict::Overloaded);
        assert_eq!(decide(1_000_000, None, None), Verdict::Admit);
    }

    #[test]
    fn refused_requests_do_not_stay_counted() {
        let f = InFlight::default();
        let a = f.enter(Some(1), None).expect("admitted");
        assert_eq!(f.enter(Some(1), None).unwrap_err(), Verdict::Shed);
        assert_eq!(f.current(), 1);
        drop(a);
        assert_eq!(f.current(), 0);
        assert!(f.enter(Some(1), None).is_ok());
    }
}
