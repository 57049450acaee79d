//! The traffic plan of one destination: for each backend its balancer, limits, retry budget
//! and outlier detection, and for each route the backends its split and mirrors name. A plan is
//! built once per destination update (never per request) and swapped in atomically
//! ([`TargetTraffic`] holds it in an `ArcSwap`); the hot path compares one pointer and reads.
//!
//! State that must outlive an update survives it: endpoint state (in-flight counts, EWMA,
//! ejections) by endpoint address, and a backend's retry budget and limits by backend while
//! their config is unchanged. This module decides nothing about a request; see
//! [`crate::forward`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::time::Instant;
use trellis_model::policy::{ConnectionPool, HashKey, LoadBalancer, OutlierDetection, RetryBudget};
use trellis_model::route::{BackendRef, RouteAction, WeightedBackend, pick_weighted};
use trellis_model::{Destination, Endpoint};

use crate::balance::{Balancer, EndpointState};
use crate::client::PoolOptions;
use crate::filters::HeaderEdits;
use crate::resilience::budget::Budget;
use crate::resilience::limits::Limits;
use crate::resilience::outlier::{Outcome, max_ejections};
use crate::split;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are short assignments; a panic cannot leave the value torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One backend at run time.
#[derive(Debug)]
pub struct BackendRt {
    pub backend: BackendRef,
    pub authority: String,
    pub balancer: Balancer,
    pub hash_key: Option<HashKey>,
    pub limits: Arc<Limits>,
    /// Connect and idle timeouts; kept (with its connections) while the pool config is.
    pub pool_options: PoolOptions,
    pool: ConnectionPool,
    budget_config: RetryBudget,
    budget: Arc<Mutex<Budget>>,
    outlier: Option<OutlierDetection>,
    next_sweep: Mutex<Option<Instant>>,
    origin: Instant,
    /// Active health checks of this backend's endpoints; kept (with the endpoints' health)
    /// while the config is unchanged.
    health: Option<Arc<crate::resilience::health::Checker>>,
}

impl BackendRt {
    fn build(
        backend: BackendRef,
        authority: &str,
        endpoints: &[Endpoint],
        policy: &trellis_model::policy::TrafficPolicy,
        known: &mut HashMap<SocketAddr, Arc<EndpointState>>,
        old: Option<&BackendRt>,
    ) -> Self {
        let states: Vec<Arc<EndpointState>> = endpoints
            .iter()
            .map(|e| {
                let state = match known.get(&e.address) {
                    Some(s) if s.endpoint() == e => return s.clone(),
                    // Same address, new metadata: new description, same live state.
                    Some(s) => Arc::new(s.with_endpoint(e.clone())),
                    None => Arc::new(EndpointState::new(e.clone())),
                };
                known.insert(e.address, state.clone());
                state
            })
            .collect();
        let hash_key = match &policy.load_balancer {
            LoadBalancer::ConsistentHash { key, .. } => Some(key.clone()),
            _ => None,
        };
        let health = policy.health_check.as_ref().map(|hc| {
            let plaintext = policy.mtls_disabled;
            match old
                .and_then(|o| o.health.as_ref())
                .filter(|c| c.fits(hc, plaintext))
            {
                Some(checker) => {
                    checker.set_endpoints(states.clone());
                    checker.clone()
                }
                None => crate::resilience::health::Checker::start(
                    hc.clone(),
                    authority,
                    plaintext,
                    states.clone(),
                ),
            }
        });
        let keep_limits = old.filter(|o| o.pool == policy.connection_pool);
        let keep_budget = old.filter(|o| o.budget_config == policy.retry_budget);
        Self {
            backend,
            authority: authority.to_string(),
            balancer: Balancer::new(&policy.load_balancer, states),
            hash_key,
            limits: keep_limits.map_or_else(
                || Arc::new(Limits::new(&policy.connection_pool)),
                |o| o.limits.clone(),
            ),
            pool_options: {
                // The origination (its files read once) is kept while its settings are, and
                // while new settings' files cannot be used (see client::originate).
                let previous = old.and_then(|o| o.pool_options.origination());
                let origination = policy
                    .tls_origination
                    .as_ref()
                    .map(|s| crate::client::Origination::update(previous, s, authority));
                let same_tls = old.is_some_and(|o| {
                    o.pool_options.origination().map(Arc::as_ptr)
                        == origination.as_ref().map(Arc::as_ptr)
                });
                let mut options = keep_limits.filter(|_| same_tls).map_or_else(
                    || {
                        PoolOptions::new(
                            policy.connection_pool.connect_timeout,
                            policy.connection_pool.idle_timeout,
                            policy.connection_pool.max_requests_per_connection,
                            origination,
                        )
                    },
                    |o| o.pool_options.clone(),
                );
                // Not part of the kept pool config: a tls.mode change applies at once.
                options.plaintext = policy.mtls_disabled;
                // Likewise: new requests follow a changed h2UpgradePolicy at once.
                options.h2_upgrade = policy.connection_pool.h2_upgrade;
                options
            },
            pool: policy.connection_pool.clone(),
            budget_config: policy.retry_budget.clone(),
            budget: keep_budget.map_or_else(
                || Arc::new(Mutex::new(Budget::new(&policy.retry_budget))),
                |o| o.budget.clone(),
            ),
            outlier: policy.outlier_detection.clone(),
            next_sweep: Mutex::new(None),
            origin: old.map_or_else(Instant::now, |o| o.origin),
            health,
        }
    }

    fn since_origin(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    /// Counts one request against the retry budget.
    pub fn deposit(&self) {
        let now = self.since_origin();
        lock(&self.budget).deposit(now);
    }

    /// Takes a retry from the budget; `false` when it is spent.
    pub fn try_retry(&self) -> bool {
        let now = self.since_origin();
        lock(&self.budget).try_withdraw(now)
    }

    /// Records an attempt's outcome for outlier detection; `true` when it ejected the endpoint.
    pub fn record(&self, endpoint: &EndpointState, outcome: Outcome) -> bool {
        let Some(config) = &self.outlier else {
            return false;
        };
        let eps = self.balancer.endpoints();
        let room = eps.iter().filter(|e| e.is_ejected()).count()
            < max_ejections(eps.len(), config.max_ejection_percent);
        // Counting and ejecting under one lock, so two failures at once eject only once.
        let ejected_for = endpoint.with_outlier(|o| {
            (o.record(outcome, config) && room).then(|| o.eject(Instant::now(), config))
        });
        let Some(time) = ejected_for else {
            return false;
        };
        tracing::info!(backend = %self.authority, endpoint = %endpoint.addr(), ejected_for = ?time, "outlier detection ejected an endpoint");
        true
    }

    /// Re-admits endpoints whose ejection is over, at most once per `interval`.
    pub fn sweep(&self) {
        let Some(config) = &self.outlier else {
            return;
        };
        let now = Instant::now();
        {
            let mut next = lock(&self.next_sweep);
            match *next {
                Some(at) if at > now => return,
                _ => *next = Some(now + config.interval.max(Duration::from_millis(1))),
            }
        }
        for e in self.balancer.endpoints() {
            if e.is_ejected() && e.with_outlier(|o| o.readmit_if_due(now)) {
                tracing::info!(backend = %self.authority, endpoint = %e.addr(), "outlier detection re-admitted an endpoint");
            }
        }
    }
}

/// What one route needs at run time: its name (for logs and `explain`), its header edits
/// parsed once, and the backends it names in the order of its split and of its mirrors; `None`
/// where discovery sent nothing for the backend (a request sent there gets `503 no
/// endpoints`).
#[derive(Debug, Default)]
pub struct RoutePlan {
    pub name: Arc<str>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub split: Vec<Option<Arc<BackendRt>>>,
    /// Parallel to `split`: each backend's own request and response header edits.
    pub split_headers: Vec<(HeaderEdits, HeaderEdits)>,
    pub mirrors: Vec<Option<Arc<BackendRt>>>,
}

/// Everything the hot path needs about one destination version.
#[derive(Debug)]
pub struct Plan {
    pub dest: Arc<Destination>,
    /// The service's own endpoints.
    pub own: Arc<BackendRt>,
    /// Parallel to `dest.routes`.
    pub routes: Vec<RoutePlan>,
    /// Parallel to `dest.tcp_routes`: backends parallel to each route's `backends`.
    pub tcp_routes: Vec<Vec<Option<Arc<BackendRt>>>>,
}

impl Plan {
    pub fn build(dest: Arc<Destination>, old: Option<&Plan>) -> Self {
        // Endpoint state by address, from the old plan and then from this one, so an address in
        // several backends (a subset of the service's own endpoints) has one live state.
        let mut known: HashMap<SocketAddr, Arc<EndpointState>> = HashMap::new();
        let mut old_backends: HashMap<BackendRef, Arc<BackendRt>> = HashMap::new();
        if let Some(old) = old {
            for b in old.backends() {
                for e in b.balancer.endpoints() {
                    known.insert(e.addr(), e.clone());
                }
                old_backends.insert(b.backend.clone(), b.clone());
            }
        }
        let own_ref = BackendRef {
            service: dest.service.clone(),
            port: None,
            subset: None,
        };
        let own = Arc::new(BackendRt::build(
            own_ref.clone(),
            &dest.authority,
            &dest.endpoints,
            &dest.policy,
            &mut known,
            old_backends.get(&own_ref).map(|b| &**b),
        ));
        let mut built: HashMap<BackendRef, Arc<BackendRt>> = HashMap::new();
        let mut resolve = |r: &BackendRef| -> Option<Arc<BackendRt>> {
            if dest.is_self(r) {
                return Some(own.clone());
            }
            if let Some(b) = built.get(r) {
                return Some(b.clone());
            }
            let b = dest.backends.iter().find(|b| &b.backend == r)?;
            let rt = Arc::new(BackendRt::build(
                r.clone(),
                &b.authority,
                &b.endpoints,
                &b.policy,
                &mut known,
                old_backends.get(r).map(|b| &**b),
            ));
            built.insert(r.clone(), rt.clone());
            Some(rt)
        };
        let routes = dest
            .routes
            .iter()
            .map(|route| {
                let backends = match &route.action {
                    RouteAction::Forward(backends) => &backends[..],
                    _ => &[],
                };
                RoutePlan {
                    name: Arc::from(route.name.as_str()),
                    request_headers: HeaderEdits::compile(&route.request_headers),
                    response_headers: HeaderEdits::compile(&route.response_headers),
                    split: backends.iter().map(|wb| resolve(&wb.backend)).collect(),
                    split_headers: backends
                        .iter()
                        .map(|wb| {
                            (
                                HeaderEdits::compile(&wb.request_headers),
                                HeaderEdits::compile(&wb.response_headers),
                            )
                        })
                        .collect(),
                    mirrors: route.mirrors.iter().map(|m| resolve(&m.backend)).collect(),
                }
            })
            .collect();
        let tcp_routes = dest
            .tcp_routes
            .iter()
            .map(|r| r.backends.iter().map(|wb| resolve(&wb.backend)).collect())
            .collect();
        Self {
            own,
            routes,
            tcp_routes,
            dest,
        }
    }

    /// Every distinct backend of the plan.
    fn backends(&self) -> impl Iterator<Item = &Arc<BackendRt>> {
        std::iter::once(&self.own).chain(
            self.routes
                .iter()
                .flat_map(|r| r.split.iter().chain(r.mirrors.iter()))
                .chain(self.tcp_routes.iter().flatten())
                .flatten(),
        )
    }

    /// The backend for an opaque connection to `port`: the first TCP route for the port
    /// (weighted pick per connection), else the service's own endpoints. `None` when a route
    /// names no usable backend.
    pub fn tcp_backend(&self, port: u16) -> Option<&Arc<BackendRt>> {
        self.tcp_backend_for(port, None)
    }

    /// [`Self::tcp_backend`] for a TLS connection whose ClientHello named `sni`: TLS routes
    /// (Istio `tls[]`) whose `sniHosts` match it may take it too.
    pub fn tcp_backend_for(&self, port: u16, sni: Option<&str>) -> Option<&Arc<BackendRt>> {
        let Some((i, route)) = self
            .dest
            .tcp_routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.admits(port, sni))
        else {
            return Some(&self.own);
        };
        let chosen = pick_weighted(&route.backends, split::next_u64())?;
        let at = route
            .backends
            .iter()
            .position(|b: &WeightedBackend| std::ptr::eq(b, chosen))?;
        self.tcp_routes.get(i)?.get(at)?.as_ref()
    }
}

/// A target's current plan, shared by every connection to the target.
#[derive(Debug, Default)]
pub struct TargetTraffic {
    current: ArcSwapOption<Plan>,
    rebuild: Mutex<()>,
}

impl TargetTraffic {
    /// The plan for `dest`, built on the first request after an update.
    pub fn plan(&self, dest: &Arc<Destination>) -> Arc<Plan> {
        if let Some(p) = self
            .current
            .load_full()
            .filter(|p| Arc::ptr_eq(&p.dest, dest))
        {
            return p;
        }
        // One builder at a time, so endpoint state is carried over from the newest plan.
        let _guard = lock(&self.rebuild);
        let old = self.current.load_full();
        if let Some(p) = old.as_ref().filter(|p| Arc::ptr_eq(&p.dest, dest)) {
            return p.clone();
        }
        let plan = Arc::new(Plan::build(dest.clone(), old.as_deref()));
        self.current.store(Some(plan.clone()));
        plan
    }
}

#[cfg(test)]
mod tests;
