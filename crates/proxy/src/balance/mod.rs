//! Endpoint selection within one backend: the per-endpoint live state (in-flight requests,
//! peak-EWMA latency, outlier ejection) and the balancers that choose over it.
//!
//! | `LoadBalancer` | choice |
//! |---|---|
//! | `PeakEwma` (default) | power of two choices, cost = EWMA RTT × (in-flight + 1) |
//! | `LeastRequest` | power of two choices over in-flight requests |
//! | `RoundRobin` | a shared counter over the endpoints |
//! | `Random` | uniform |
//! | `ConsistentHash` | ring or Maglev over the request's key; no key: random |
//!
//! Every balancer skips ejected endpoints (outlier detection or failed active health checks,
//! [`crate::resilience::health`]) and an `exclude`d one (the endpoint a retry just
//! failed on) while any other is available, and falls back to them otherwise ("panic mode":
//! better a suspect endpoint than none). The math lives in [`ewma`], [`p2c`] and [`hash`];
//! this module must not do I/O.
//!
//! Locality: when some endpoints are in another cluster (`Endpoint::remote`), those of this
//! proxy's own cluster are chosen among while any is available, and the remote ones only when
//! none is (gone, ejected by outlier detection, failing health checks, or the one a retry just
//! failed on): Istio's `localityLbSetting` failover. Traffic returns to local endpoints as soon
//! as one is available again. See docs/multicluster.md.

pub mod endpoint;
pub mod ewma;
pub mod hash;
pub mod p2c;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use trellis_model::policy::{HashAlgorithm, LoadBalancer};

pub use endpoint::EndpointState;

use crate::split;

/// The precomputed structure a balancer kind needs, built once per endpoint-set change.
#[derive(Debug)]
enum Kind {
    PeakEwma,
    LeastRequest,
    RoundRobin(AtomicUsize),
    Random,
    Ring(hash::Ring),
    Maglev(hash::Maglev),
}

/// One backend's endpoints and the way to choose among them.
#[derive(Debug)]
pub struct Balancer {
    endpoints: Vec<Arc<EndpointState>>,
    kind: Kind,
    /// Some endpoints are local and some remote: pick with the locality order.
    mixed: bool,
}

impl Balancer {
    pub fn new(lb: &LoadBalancer, endpoints: Vec<Arc<EndpointState>>) -> Self {
        let addrs = || {
            endpoints
                .iter()
                .map(|e| e.addr())
                .collect::<Vec<SocketAddr>>()
        };
        let kind = match lb {
            LoadBalancer::PeakEwma => Kind::PeakEwma,
            LoadBalancer::LeastRequest => Kind::LeastRequest,
            LoadBalancer::RoundRobin => Kind::RoundRobin(AtomicUsize::new(0)),
            LoadBalancer::Random => Kind::Random,
            LoadBalancer::ConsistentHash {
                algorithm: HashAlgorithm::Ring,
                ..
            } => Kind::Ring(hash::Ring::new(&addrs())),
            LoadBalancer::ConsistentHash {
                algorithm: HashAlgorithm::Maglev,
                ..
            } => Kind::Maglev(hash::Maglev::new(&addrs())),
        };
        let local = endpoints.iter().filter(|e| e.is_local()).count();
        let mixed = local > 0 && local < endpoints.len();
        Self {
            endpoints,
            kind,
            mixed,
        }
    }

    pub fn endpoints(&self) -> &[Arc<EndpointState>] {
        &self.endpoints
    }

    /// Chooses an endpoint. `key` is the consistent-hash key (ignored by other kinds);
    /// `exclude` is avoided when anything else is available.
    pub fn pick(
        &self,
        key: Option<u64>,
        exclude: Option<SocketAddr>,
    ) -> Option<&Arc<EndpointState>> {
        let eps = &self.endpoints;
        if eps.is_empty() {
            return None;
        }
        // Strict first (not ejected, not excluded), then without the exclusion, then anything.
        let strict = |e: &EndpointState| e.is_available() && Some(e.addr()) != exclude;
        let loose = |e: &EndpointState| e.is_available();
        let any = |_: &EndpointState| true;
        if !self.mixed {
            let filters: [&dyn Fn(&EndpointState) -> bool; 3] = [&strict, &loose, &any];
            return self.first_pick(key, &filters);
        }
        // Local before remote at each level; a retry leaves a failed local endpoint for a
        // healthy remote one before it would try the failed one again.
        let strict_local = |e: &EndpointState| e.is_local() && strict(e);
        let strict_remote = |e: &EndpointState| !e.is_local() && strict(e);
        let loose_local = |e: &EndpointState| e.is_local() && loose(e);
        let filters: [&dyn Fn(&EndpointState) -> bool; 5] =
            [&strict_local, &strict_remote, &loose_local, &loose, &any];
        self.first_pick(key, &filters)
    }

    /// The pick under the first filter that leaves any endpoint.
    fn first_pick(
        &self,
        key: Option<u64>,
        filters: &[&dyn Fn(&EndpointState) -> bool],
    ) -> Option<&Arc<EndpointState>> {
        for ok in filters {
            if let Some(i) = self.pick_with(key, ok) {
                return self.endpoints.get(i);
            }
        }
        None
    }

    fn pick_with(&self, key: Option<u64>, ok: &dyn Fn(&EndpointState) -> bool) -> Option<usize> {
        let eps = &self.endpoints;
        let available = eps.iter().filter(|e| ok(e)).count();
        if available == 0 {
            return None;
        }
        // The k-th available endpoint, without collecting them (no allocation per request).
        let nth = |k: usize| {
            eps.iter()
                .enumerate()
                .filter(|(_, e)| ok(e))
                .nth(k)
                .map(|(i, _)| i)
        };
        match &self.kind {
            Kind::PeakEwma => {
                let (a, b) = p2c::two_distinct(available)?;
                let (a, b) = (nth(a)?, nth(b.unwrap_or(a))?);
                Some(p2c::cheaper(a, b, |i| eps[i].ewma_cost()))
            }
            Kind::LeastRequest => {
                let (a, b) = p2c::two_distinct(available)?;
                let (a, b) = (nth(a)?, nth(b.unwrap_or(a))?);
                Some(p2c::cheaper(a, b, |i| eps[i].in_flight() as f64))
            }
            Kind::RoundRobin(next) => nth(next.fetch_add(1, Relaxed) % available),
            Kind::Random => nth(split::below(available)),
            Kind::Ring(ring) => match key {
                Some(key) => ring.walk(key).find(|i| ok(&eps[*i])),
                None => nth(split::below(available)),
            },
            Kind::Maglev(table) => match key {
                Some(key) => table.walk(key).find(|i| ok(&eps[*i])),
                None => nth(split::below(available)),
            },
        }
    }
}

#[cfg(test)]
mod tests;
