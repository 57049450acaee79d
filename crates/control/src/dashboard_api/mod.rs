//! The dashboard's metrics source and its JSON API (`/api/v1/graph`, `/api/v1/proxies`,
//! `/api/v1/routes`, and per workload, service and route time series).
//!
//! Every [`SCRAPE_INTERVAL`] a task reads each registered proxy's admin `/metrics` and
//! `/config_dump` (the registry knows the admin addresses), turns the counters' increases into
//! per-edge, per-node and per-route points ([`series`]), and keeps the last 15 minutes in a
//! fixed-size ring; it also checks whether each proxy holds the config the control plane would
//! send now ([`sync`]). Handlers only read that state. Pure parts (`prom`, `series`, `graph`,
//! `sync`) are tested without sockets; `fetch` is the only I/O.
//!
//! With `--prometheus-url` (`TRELLIS_PROMETHEUS_URL`) set (see [`prometheus`]), the counters come from that
//! Prometheus instead of the proxies' `/metrics`; the config state still comes from the proxies.
//!
//! This module must not change what proxies are sent: it only reads the shared state. It scrapes
//! from the control plane's own network position, which in Kubernetes mode means pod IPs (the
//! admin port must be reachable from the control plane's pod).

mod fetch;
mod graph;
mod handlers;
pub mod prom;
pub mod prometheus;
mod series;
mod sync;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use futures_util::StreamExt as _;
use tokio::time::Instant;

use crate::registry::WorkloadKey;
use crate::state::Shared;

pub use graph::{FAILING_BELOW, MIN_REQUESTS_FOR_HEALTH};
pub use series::HISTORY_TICKS;

/// How often proxies are scraped: the graph's freshness and the series' resolution.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(2);
/// One proxy's scrape (both requests) must finish within this.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Proxies scraped at once: a large mesh is read in waves, not with thousands of sockets.
const MAX_CONCURRENT_SCRAPES: usize = 32;
/// The config dump (larger than `/metrics`, and its state changes only with config) is read
/// every this many rounds; the last report stands in between.
const DUMP_EVERY_ROUNDS: u64 = 3;

/// What the last scrape of one proxy found.
#[derive(Clone, Debug)]
struct ProxyScrape {
    proxy_id: String,
    at: Instant,
    /// Why `/metrics` could not be read.
    metrics_error: Option<String>,
    /// What the proxy's anomaly detector flags (`trellis_anomaly` gauges at 1).
    anomalies: Vec<String>,
    sync: sync::SyncReport,
}

/// The state the scraper writes and the handlers read. Locks are held only to copy in or out,
/// never across an await.
#[derive(Debug, Default)]
pub struct DashboardState {
    history: Mutex<series::History>,
    proxies: Mutex<BTreeMap<WorkloadKey, ProxyScrape>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic mid-update leaves at worst a partial tick; reading on is safe.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the dashboard API needs from the control plane's flags.
#[derive(Clone, Debug)]
pub struct DashboardOptions {
    /// `--prometheus-url` (or `TRELLIS_PROMETHEUS_URL`): read the numbers from this
    /// Prometheus instead of scraping the proxies.
    pub prometheus: Option<prometheus::PrometheusUrl>,
    /// `--root-namespace`: where mesh-wide authorization policies live.
    pub root_namespace: String,
    /// `--default-inbound-policy`: what applies when no ALLOW policy covers a workload.
    pub default_inbound_policy: trellis_model::authz::DefaultPolicy,
}

impl Default for DashboardOptions {
    fn default() -> Self {
        Self {
            prometheus: None,
            root_namespace: crate::DEFAULT_ROOT_NAMESPACE.to_string(),
            default_inbound_policy: trellis_model::authz::DefaultPolicy::default(),
        }
    }
}

/// The dashboard API's routes, and (inside a Tokio runtime) the scraper task, which stops
/// with the control plane's shutdown token.
pub fn router(shared: Arc<Shared>, options: DashboardOptions) -> Router {
    let state = Arc::new(DashboardState::default());
    if let Some(url) = &options.prometheus {
        tracing::info!(prometheus = %url.authority, "dashboard metrics from Prometheus");
    }
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::spawn(run(
            shared.clone(),
            state.clone(),
            options.prometheus.clone(),
        ));
    }
    handlers::routes(shared, state, Arc::new(options))
}

/// One proxy to scrape.
#[derive(Clone)]
struct Target {
    key: WorkloadKey,
    proxy_id: String,
    admin: Option<SocketAddr>,
}

/// A proxy's series and the anomalies it flags; `None` when metrics come from Prometheus.
type Scraped = Result<Option<(series::Snapshot, Vec<String>)>, String>;

/// One proxy's metrics (unless they come from Prometheus: `Ok(None)`) and config dump.
async fn scrape(
    target: &Target,
    with_metrics: bool,
    with_dump: bool,
) -> (Scraped, Option<serde_json::Value>) {
    let Some(admin) = target.admin else {
        return (Err("no admin address registered".to_string()), None);
    };
    let metrics = async {
        if !with_metrics {
            return Ok(None);
        }
        fetch::get_text(admin, "/metrics", SCRAPE_TIMEOUT)
            .await
            .map(|text| Some((series::snapshot(&text), series::anomalies(&text))))
            .map_err(|e| e.to_string())
    };
    let dump = async {
        if !with_dump {
            return None;
        }
        let text = fetch::get_text(admin, "/config_dump", SCRAPE_TIMEOUT)
            .await
            .ok()?;
        serde_json::from_str(&text).ok()
    };
    tokio::join!(metrics, dump)
}

async fn run(
    shared: Arc<Shared>,
    state: Arc<DashboardState>,
    prometheus: Option<prometheus::PrometheusUrl>,
) {
    let mut ticker = tokio::time::interval(SCRAPE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last snapshot of each proxy, by workload and proxy id (a restarted proxy has a new
    // id, so its counters start a new baseline rather than a negative delta).
    let mut previous: HashMap<(WorkloadKey, String), series::Snapshot> = HashMap::new();
    // With Prometheus: the last snapshot of each of its scrape targets.
    let mut previous_prom: HashMap<String, series::Snapshot> = HashMap::new();
    // Logged when it changes, not every round.
    let mut prom_error: Option<String> = None;
    let mut last_round: Option<Instant> = None;
    for round in 0u64.. {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let targets: Vec<Target> = shared
            .registry()
            .registrations()
            .map(|r| Target {
                key: (r.workload.namespace.clone(), r.workload.name.clone()),
                proxy_id: r.proxy_id.clone(),
                admin: r.workload.admin_address,
            })
            .collect();
        let with_metrics = prometheus.is_none();
        let with_dump = round % DUMP_EVERY_ROUNDS == 0;
        // Each future owns its target: futures borrowing `targets` from a stream trip the
        // compiler's lifetime inference inside the spawned task.
        let scrapes_in_order = futures_util::stream::iter(
            targets
                .iter()
                .cloned()
                .map(move |t| async move { scrape(&t, with_metrics, with_dump).await }),
        )
        .buffered(MAX_CONCURRENT_SCRAPES)
        .collect::<Vec<_>>();
        let (results, from_prom) = tokio::join!(scrapes_in_order, async {
            match &prometheus {
                Some(url) => Some(prometheus::query(url, SCRAPE_TIMEOUT).await),
                None => None,
            }
        });
        let now = Instant::now();
        let secs = last_round.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        last_round = Some(now);

        let mut deltas = Vec::with_capacity(targets.len());
        let mut seen = HashMap::with_capacity(targets.len());
        let mut scrapes = BTreeMap::new();
        for (target, (metrics, dump)) in targets.into_iter().zip(results) {
            let id = (target.key.clone(), target.proxy_id.clone());
            let mut anomalies = Vec::new();
            let metrics_error = match metrics {
                Ok(None) => None,
                Ok(Some((snapshot, flagged))) => {
                    if let Some(before) = previous.get(&id) {
                        deltas.push(series::delta(before, &snapshot));
                    }
                    seen.insert(id, snapshot);
                    anomalies = flagged;
                    None
                }
                Err(e) => {
                    // Keep the old baseline: the next good scrape measures from it.
                    if let Some(before) = previous.remove(&id) {
                        seen.insert(id, before);
                    }
                    Some(e)
                }
            };
            let sync = match dump {
                Some(d) => handlers::check_sync(&shared, &d),
                // Not read this round: the last report of this same proxy, if any.
                None => lock(&state.proxies)
                    .get(&target.key)
                    .filter(|s| !with_dump && s.proxy_id == target.proxy_id)
                    .map_or_else(sync::SyncReport::unknown, |s| s.sync.clone()),
            };
            scrapes.insert(
                target.key,
                ProxyScrape {
                    proxy_id: target.proxy_id,
                    at: now,
                    metrics_error,
                    anomalies,
                    sync,
                },
            );
        }
        // Proxies that left the registry are forgotten with their baselines: memory follows
        // the registry, not history.
        previous = seen;
        match from_prom {
            Some(Ok(now)) => {
                if prom_error.take().is_some() {
                    tracing::info!("dashboard: Prometheus answers again");
                }
                for (target, snapshot) in &now {
                    if let Some(before) = previous_prom.get(target) {
                        deltas.push(series::delta(before, snapshot));
                    }
                }
                previous_prom = now;
            }
            // Keep the baselines: the next answer measures from them.
            Some(Err(e)) if prom_error.as_ref() != Some(&e) => {
                tracing::warn!(error = %e, "dashboard: Prometheus query failed");
                prom_error = Some(e);
            }
            Some(Err(_)) | None => {}
        }
        if secs > 0.0 {
            lock(&state.history).push(unix_ms(), secs, deltas);
        }
        *lock(&state.proxies) = scrapes;
    }
}
