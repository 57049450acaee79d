//! The live state of one endpoint, shared by every request to it and kept across destination
//! updates while the endpoint (by address) remains: in-flight requests, peak-EWMA latency and
//! outlier-detection state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;
use trellis_model::Endpoint;

use super::ewma::PeakEwma;
use crate::resilience::outlier::EndpointOutlier;

/// An endpoint as discovery describes it, and its live state.
#[derive(Debug)]
pub struct EndpointState {
    endpoint: Endpoint,
    live: Arc<Live>,
}

/// What is learnt about an address from traffic; shared by every version of the endpoint's
/// metadata (labels, identity) while its address stays.
#[derive(Debug)]
struct Live {
    origin: Instant,
    in_flight: AtomicU64,
    ewma: Mutex<PeakEwma>,
    /// Mirrors `outlier.is_ejected()` for a lock-free check on every pick.
    ejected: AtomicBool,
    /// Failed active health checks (`resilience::health`): out of the balancer.
    unhealthy: AtomicBool,
    outlier: Mutex<EndpointOutlier>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few assignments; a panic cannot leave the value torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EndpointState {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            live: Arc::new(Live {
                origin: Instant::now(),
                in_flight: AtomicU64::new(0),
                ewma: Mutex::new(PeakEwma::new(0)),
                ejected: AtomicBool::new(false),
                unhealthy: AtomicBool::new(false),
                outlier: Mutex::new(EndpointOutlier::default()),
            }),
        }
    }

    /// The same address with new metadata, keeping what traffic taught about it.
    pub fn with_endpoint(&self, endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            live: self.live.clone(),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.address
    }

    /// In this proxy's own cluster (not behind another cluster's east-west gateway).
    pub fn is_local(&self) -> bool {
        trellis_model::multicluster::is_local(&self.endpoint)
    }

    pub fn in_flight(&self) -> u64 {
        self.live.in_flight.load(Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.live.ejected.load(Relaxed)
    }

    /// Whether active health checks have taken this endpoint out.
    pub fn is_unhealthy(&self) -> bool {
        self.live.unhealthy.load(Relaxed)
    }

    /// Set by the health checker; returns the previous value.
    pub fn set_unhealthy(&self, unhealthy: bool) -> bool {
        self.live.unhealthy.swap(unhealthy, Relaxed)
    }

    /// Neither ejected by outlier detection nor failing health checks: a balancer's first
    /// choice.
    pub fn is_available(&self) -> bool {
        !self.is_ejected() && !self.is_unhealthy()
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.live.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn ewma_cost(&self) -> f64 {
        let now = self.nanos(Instant::now());
        lock(&self.live.ewma).cost(self.in_flight(), now)
    }

    /// Counts a request as in flight until the guard drops; the guard records its latency.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.live.in_flight.fetch_add(1, Relaxed);
        InFlight {
            endpoint: self.clone(),
            started: Instant::now(),
        }
    }

    /// Outlier state, locked briefly (never across an await).
    pub fn with_outlier<R>(&self, f: impl FnOnce(&mut EndpointOutlier) -> R) -> R {
        let mut o = lock(&self.live.outlier);
        let r = f(&mut o);
        self.live.ejected.store(o.is_ejected(), Relaxed);
        r
    }
}

/// One request in flight on an endpoint.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<EndpointState>,
    started: Instant,
}

impl InFlight {
    /// Records the round trip to now (response headers) in the EWMA.
    pub fn observe(&self) {
        let now = Instant::now();
        let rtt = now.saturating_duration_since(self.started).as_nanos() as f64;
        let at = self.endpoint.nanos(now);
        lock(&self.endpoint.live.ewma).observe(rtt, at);
    }

    /// Records the round trip, but at least `floor`: a failed attempt counts as slow.
    pub fn observe_at_least(&self, floor: std::time::Duration) {
        let now = Instant::now();
        let rtt = now
            .saturating_duration_since(self.started)
            .max(floor)
            .as_nanos() as f64;
        let at = self.endpoint.nanos(now);
        lock(&self.endpoint.live.ewma).observe(rtt, at);
    }

    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.endpoint
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.live.in_flight.fetch_sub(1, Relaxed);
    }
}
