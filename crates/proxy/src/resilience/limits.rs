//! Circuit breaking by connection-pool limits (Istio `connectionPool`), per backend:
//!
//! - `max_requests`: concurrent requests (HTTP/2 `http2MaxRequests`); over it → reject.
//! - `max_connections`: concurrent HTTP/1.1 exchanges, each of which holds a connection; a
//!   request over it waits as pending, unless `max_pending_requests` are already waiting → reject.
//! - `max_retries`: concurrent retries; over it the retry is not made (the answer stands).
//!
//! A rejection is answered at once with 503 and `trellis-error: <reason>`; nothing queues
//! beyond `max_pending_requests`. Permits are RAII guards released when the response body ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use trellis_model::policy::ConnectionPool;

/// Which limit turned a request away; also the metric's `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    MaxRequests = 0,
    MaxPending = 1,
    MaxRetries = 2,
}

impl Rejection {
    pub const ALL: [Rejection; 3] = [Self::MaxRequests, Self::MaxPending, Self::MaxRetries];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxRequests => "max_requests",
            Self::MaxPending => "max_pending_requests",
            Self::MaxRetries => "max_retries",
        }
    }

    /// The `trellis-error` reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MaxRequests => "circuit open: max requests",
            Self::MaxPending => "circuit open: max pending requests",
            Self::MaxRetries => "circuit open: max retries",
        }
    }
}

#[derive(Debug)]
pub struct Limits {
    max_requests: Option<u32>,
    max_pending: Option<u32>,
    max_retries: Option<u32>,
    requests: Arc<AtomicU32>,
    retries: Arc<AtomicU32>,
    pending: AtomicU32,
    connections: Option<Arc<Semaphore>>,
}

/// A counted slot, released on drop.
#[derive(Debug)]
pub struct Slot {
    counter: Arc<AtomicU32>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Relaxed);
    }
}

fn take(counter: &Arc<AtomicU32>, max: Option<u32>) -> Option<Slot> {
    let prev = counter.fetch_add(1, Relaxed);
    let slot = Slot {
        counter: counter.clone(),
    };
    match max {
        Some(max) if prev >= max => None, // `slot` drops here and gives the count back.
        _ => Some(slot),
    }
}

impl Limits {
    pub fn new(pool: &ConnectionPool) -> Self {
        Self {
            max_requests: pool.max_requests,
            max_pending: pool.max_pending_requests,
            max_retries: pool.max_retries,
            requests: Arc::new(AtomicU32::new(0)),
            retries: Arc::new(AtomicU32::new(0)),
            pending: AtomicU32::new(0),
            connections: pool
                .max_connections
                .map(|n| Arc::new(Semaphore::new(n as usize))),
        }
    }

    /// A slot for one request (all its attempts).
    pub fn request(&self) -> Result<Slot, Rejection> {
        take(&self.requests, self.max_requests).ok_or(Rejection::MaxRequests)
    }

    /// A slot for one retry.
    pub fn retry(&self) -> Result<Slot, Rejection> {
        take(&self.retries, self.max_retries).ok_or(Rejection::MaxRetries)
    }

    /// A connection for a retry, without waiting: the answer being retried may still hold the
    /// only connection, so waiting could never end. `Err` when none is free.
    pub fn try_connection(&self) -> Result<Option<OwnedSemaphorePermit>, Rejection> {
        match &self.connections {
            None => Ok(None),
            Some(sem) => sem
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| Rejection::MaxPending),
        }
    }

    /// A connection for one HTTP/1.1 exchange, waiting as pending when none is free. `None`
    /// permit when connections are unlimited.
    pub async fn connection(&self) -> Result<Option<OwnedSemaphorePermit>, Rejection> {
        let Some(sem) = &self.connections else {
            return Ok(None);
        };
        if let Ok(p) = sem.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        let waiting = self.pending.fetch_add(1, Relaxed);
        if self.max_pending.is_some_and(|max| waiting >= max) {
            self.pending.fetch_sub(1, Relaxed);
            return Err(Rejection::MaxPending);
        }
        let permit = sem.clone().acquire_owned().await;
        self.pending.fetch_sub(1, Relaxed);
        // The semaphore is never closed; a closed one would mean no limit.
        Ok(permit.ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_retry_slots_are_counted_and_released() {
        let l = Limits::new(&ConnectionPool {
            max_requests: Some(2),
            max_retries: Some(1),
            ..Default::default()
        });
        let a = l.request().unwrap();
        let _b = l.request().unwrap();
        assert_eq!(l.request().unwrap_err(), Rejection::MaxRequests);
        drop(a);
        assert!(l.request().is_ok());
        let r = l.retry().unwrap();
        assert_eq!(l.retry().unwrap_err(), Rejection::MaxRetries);
        drop(r);
        assert!(l.retry().is_ok());
        let open = Limits::new(&ConnectionPool::default());
        let held: Vec<_> = (0..1000).map(|_| open.request().unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }

    #[tokio::test]
    async fn pending_requests_wait_until_the_queue_is_full() {
        let l = Arc::new(Limits::new(&ConnectionPool {
            max_connections: Some(1),
            max_pending_requests: Some(1),
            ..Default::default()
        }));
        let first = l.connection().await.unwrap();
        assert!(first.is_some());
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.connection().await.map(|p| p.is_some()) })
        };
        // Let the waiter queue up, bounded.
        for _ in 0..100 {
            if l.pending.load(Relaxed) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(l.connection().await.unwrap_err(), Rejection::MaxPending);
        assert_eq!(l.try_connection().unwrap_err(), Rejection::MaxPending);
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(true));
    }
}
