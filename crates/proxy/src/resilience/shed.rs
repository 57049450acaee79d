//! Load shedding and the concurrent-request cap: requests in flight, per direction, counted
//! with one atomic from the moment a request is admitted until its response head is returned.
//!
//! Shedding starts at `--load-shed-in-flight` (on by default) and answers 503 with
//! `Retry-After`, so callers back off before the proxy's memory or latency run away while an
//! upstream is slow; `--max-concurrent-requests` is the hard backstop (503
//! `trellis-error: overloaded`) when shedding is off or set above it. A turned-away request
//! costs one `fetch_add` and one `fetch_sub`, no lock and no queue.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// Why a request arriving with others in flight is turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over the shedding threshold: 503 + `Retry-After`.
    Shed,
    /// Over the hard cap: 503 `trellis-error: overloaded`.
    Overloaded,
}

/// The decision for a request arriving with `prev` others in flight, pure: `None` admits it.
/// Shedding (the lower threshold) is checked first.
pub fn decide(prev: u32, shed_at: Option<u32>, max: Option<u32>) -> Option<Refusal> {
    match (shed_at, max) {
        (Some(shed), _) if prev >= shed => Some(Refusal::Shed),
        (_, Some(max)) if prev >= max => Some(Refusal::Overloaded),
        _ => None,
    }
}

/// The in-flight count of one direction.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicU32,
}

/// One admitted request's place in the count; released on drop. It borrows the count (which
/// lives as long as the proxy's shared context) rather than holding an `Arc` to it, so a
/// request costs no reference-count traffic.
#[derive(Debug)]
pub struct InFlightGuard<'a> {
    count: &'a AtomicU32,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Relaxed);
    }
}

impl InFlight {
    /// Counts a new request and decides on it; the guard is returned only when admitted.
    pub fn enter(
        &self,
        shed_at: Option<u32>,
        max: Option<u32>,
    ) -> Result<InFlightGuard<'_>, Refusal> {
        let prev = self.count.fetch_add(1, Relaxed);
        let guard = InFlightGuard { count: &self.count };
        match decide(prev, shed_at, max) {
            None => Ok(guard),
            // `guard` drops here and gives the count back.
            Some(refused) => Err(refused),
        }
    }

    /// Requests in flight now.
    #[cfg(test)]
    fn current(&self) -> u32 {
        self.count.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_before_the_hard_cap() {
        assert_eq!(decide(0, Some(2), Some(4)), None);
        assert_eq!(decide(2, Some(2), Some(4)), Some(Refusal::Shed));
        assert_eq!(decide(4, None, Some(4)), Some(Refusal::Overloaded));
        assert_eq!(decide(1_000_000, None, None), None);
    }

    #[test]
    fn refused_requests_do_not_stay_counted() {
        let f = InFlight::default();
        let a = f.enter(Some(1), None).expect("admitted");
        assert_eq!(f.enter(Some(1), None).unwrap_err(), Refusal::Shed);
        assert_eq!(f.current(), 1);
        drop(a);
        assert_eq!(f.current(), 0);
        assert!(f.enter(Some(1), None).is_ok());
    }
}
