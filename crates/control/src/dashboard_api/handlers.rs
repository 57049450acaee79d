//! The HTTP adapter of the dashboard API: query parsing, reading [`DashboardState`] and the
//! shared registry/config, shaping JSON. Errors are made here, once: 400 naming the parameter.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::time::Instant;

use super::graph::{self, Graph};
use super::series::{NodeId, Point, SeriesKey, Stats};
use super::sync::{self, ConfigState, SyncReport};
use super::{DashboardState, HISTORY_TICKS, SCRAPE_INTERVAL, lock};
use crate::compile::{MeshView, compile, selected};
use crate::state::Shared;

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    state: Arc<DashboardState>,
    options: Arc<super::DashboardOptions>,
}

pub(super) fn routes(
    shared: Arc<Shared>,
    state: Arc<DashboardState>,
    options: Arc<super::DashboardOptions>,
) -> Router {
    Router::new()
        .route("/api/v1/graph", get(graph_json))
        .route("/api/v1/routes", get(routes_json))
        .route("/api/v1/routes/timeseries", get(route_series))
        .route(
            "/api/v1/workloads/{namespace}/{name}/timeseries",
            get(workload_series),
        )
        .route(
            "/api/v1/services/{namespace}/{name}/timeseries",
            get(service_series),
        )
        .route(
            "/api/v1/workloads/{namespace}/{name}/authorization",
            get(authorization_json),
        )
        .route("/api/v1/proxies", get(proxies_json))
        .with_state(App {
            shared,
            state,
            options,
        })
}

/// Whether the proxy whose `/config_dump` this is holds what compile makes now.
pub(super) fn check_sync(shared: &Shared, dump: &serde_json::Value) -> SyncReport {
    let config = shared.config_rx.borrow().clone();
    let workloads = shared.workloads_rx().borrow().clone();
    sync::check(dump, |target| {
        let view = MeshView {
            services: &config.services,
            traffic: &config.traffic,
            workloads: &workloads,
            trust_domain: &shared.trust_domain,
        };
        compile(view, target)
    })
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message + "\n").into_response()
}

/// Default window for "now" numbers: long enough for a steady rate at a few requests a second,
/// short enough that a change shows within half a minute.
const DEFAULT_WINDOW_SECS: f64 = 20.0;
const HISTORY_SECS: f64 = HISTORY_TICKS as f64 * SCRAPE_INTERVAL.as_secs_f64();

/// `window` (seconds) from the query: 2 s to 15 min.
fn window(query: &BTreeMap<String, String>) -> Result<f64, String> {
    let Some(raw) = query.get("window") else {
        return Ok(DEFAULT_WINDOW_SECS);
    };
    match raw.parse::<f64>() {
        Ok(w) if (2.0..=HISTORY_SECS).contains(&w) => Ok(w),
        _ => Err(format!(
            "window: {raw:?} is not a number of seconds from 2 to {HISTORY_SECS}"
        )),
    }
}

/// `step` (seconds) of a time series: 2 s to 5 min, default 10 s (90 points over 15 min).
fn step_ms(query: &BTreeMap<String, String>) -> Result<u64, String> {
    let Some(raw) = query.get("step") else {
        return Ok(10_000);
    };
    match raw.parse::<u64>() {
        Ok(s) if (2..=300).contains(&s) => Ok(s * 1000),
        _ => Err(format!(
            "step: {raw:?} is not a whole number of seconds from 2 to 300"
        )),
    }
}

#[derive(Serialize)]
struct GraphJson {
    /// The seconds of scrapes the numbers cover (less than asked for just after start).
    window_seconds: f64,
    scrape_interval_seconds: f64,
    /// When the newest scrape round ended (Unix ms); `null` before the second round.
    updated_at_ms: Option<u64>,
    failing_below: f64,
    min_requests_for_health: f64,
    #[serde(flatten)]
    graph: Graph,
}

async fn graph_json(
    State(app): State<App>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let window = match window(&query) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let (covered, stats, updated) = {
        let history = lock(&app.state.history);
        let (covered, stats) = history.window(window);
        (covered, stats, history.last_at_ms())
    };
    let config = app.shared.config_rx.borrow().clone();
    let workloads = app.shared.workloads_rx().borrow().clone();
    let services = config
        .services
        .values()
        .map(|svc| {
            (
                NodeId::service(&svc.key.namespace, &svc.key.name),
                selected(svc, &workloads)
                    .map(|w| NodeId::workload(&w.namespace, &w.name))
                    .collect(),
            )
        })
        .collect();
    let registered = app
        .shared
        .registry()
        .registrations()
        .map(|r| {
            (
                NodeId::workload(&r.workload.namespace, &r.workload.name),
                r.subscriptions
                    .iter()
                    .filter_map(|t| match t {
                        trellis_model::Target::Service { service, .. } => {
                            Some(NodeId::service(&service.namespace, &service.name))
                        }
                        trellis_model::Target::Address(_) => None,
                    })
                    .collect(),
            )
        })
        .collect();
    let anomalies = lock(&app.state.proxies)
        .iter()
        .filter(|(_, scrape)| !scrape.anomalies.is_empty())
        .map(|((ns, name), scrape)| (NodeId::workload(ns, name), scrape.anomalies.clone()))
        .collect();
    let graph = graph::build(&graph::Inputs {
        stats: &stats,
        services,
        workloads: registered,
        anomalies,
    });
    Json(GraphJson {
        window_seconds: covered,
        scrape_interval_seconds: SCRAPE_INTERVAL.as_secs_f64(),
        updated_at_ms: updated,
        failing_below: graph::FAILING_BELOW,
        min_requests_for_health: graph::MIN_REQUESTS_FOR_HEALTH,
        graph,
    })
    .into_response()
}

#[derive(Serialize)]
struct RouteJson {
    namespace: String,
    service: String,
    route: String,
    stats: Stats,
}

async fn routes_json(
    State(app): State<App>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let window = match window(&query) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let (_, stats) = lock(&app.state.history).window(window);
    let routes: Vec<RouteJson> = stats
        .into_iter()
        .filter_map(|(key, stats)| match key {
            SeriesKey::Route {
                namespace,
                service,
                route,
            } => Some(RouteJson {
                namespace,
                service,
                route,
                stats,
            }),
            _ => None,
        })
        .collect();
    Json(routes).into_response()
}

#[derive(Serialize)]
struct SeriesJson {
    step_seconds: u64,
    points: Vec<Point>,
}

fn series(app: &App, key: &SeriesKey, query: &BTreeMap<String, String>) -> Response {
    let step = match step_ms(query) {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    let points = lock(&app.state.history).series(key, step);
    Json(SeriesJson {
        step_seconds: step / 1000,
        points,
    })
    .into_response()
}

async fn workload_series(
    State(app): State<App>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let key = SeriesKey::Node(NodeId::workload(&namespace, &name));
    series(&app, &key, &query)
}

async fn service_series(
    State(app): State<App>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let key = SeriesKey::Node(NodeId::service(&namespace, &name));
    series(&app, &key, &query)
}

async fn route_series(
    State(app): State<App>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let field = |name: &str| query.get(name).filter(|v| !v.is_empty()).cloned();
    let (Some(namespace), Some(service), Some(route)) =
        (field("namespace"), field("service"), field("route"))
    else {
        return bad_request(
            "namespace, service and route query parameters are all required".to_string(),
        );
    };
    let key = SeriesKey::Route {
        namespace,
        service,
        route,
    };
    series(&app, &key, &query)
}

#[derive(Serialize)]
struct ProxyJson {
    namespace: String,
    workload: String,
    proxy_id: String,
    admin: Option<String>,
    connected: bool,
    last_seen_ms_ago: u64,
    /// The last version the control plane saw this proxy ACK on its stream.
    acked_version: Option<u64>,
    nacks: u64,
    last_nack: Option<String>,
    /// `current`, `stale`, `pending` or `unknown` (see `sync`).
    config: ConfigState,
    stale_targets: Vec<String>,
    targets: usize,
    /// How long ago the proxy was last scraped; `null` before the first scrape.
    checked_ms_ago: Option<u64>,
    metrics_error: Option<String>,
    /// What the proxy's anomaly detector flags now (`success_rate`, `latency`).
    anomalies: Vec<String>,
}

fn ms_since(then: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(then).as_millis()).unwrap_or(u64::MAX)
}

async fn proxies_json(
    State(app): State<App>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Json<Vec<ProxyJson>> {
    let now = Instant::now();
    let scrapes = lock(&app.state.proxies).clone();
    let want = |k: &str, v: &str| query.get(k).is_none_or(|w| w.is_empty() || w == v);
    let registry = app.shared.registry();
    let out = registry
        .registrations()
        .filter(|r| want("namespace", &r.workload.namespace) && want("workload", &r.workload.name))
        .map(|r| {
            let key = (r.workload.namespace.clone(), r.workload.name.clone());
            // A scrape of an earlier proxy under this name says nothing about this one.
            let scrape = scrapes.get(&key).filter(|s| s.proxy_id == r.proxy_id);
            let sync = scrape.map_or_else(SyncReport::unknown, |s| s.sync.clone());
            ProxyJson {
                namespace: key.0,
                workload: key.1,
                proxy_id: r.proxy_id.clone(),
                admin: r.workload.admin_address.map(|a| a.to_string()),
                connected: r.connected,
                last_seen_ms_ago: ms_since(r.last_seen, now),
                acked_version: r.acked_version,
                nacks: r.nacks,
                last_nack: r.last_nack.clone(),
                config: sync.state,
                stale_targets: sync.stale_targets,
                targets: sync.targets,
                checked_ms_ago: scrape.map(|s| ms_since(s.at, now)),
                metrics_error: scrape.and_then(|s| s.metrics_error.clone()),
                anomalies: scrape.map(|s| s.anomalies.clone()).unwrap_or_default(),
            }
        })
        .collect();
    Json(out)
}

#[derive(Serialize)]
struct AuthorizationJson {
    namespace: String,
    workload: String,
    /// Where mesh-wide policies are looked for (`--root-namespace`).
    root_namespace: String,
    /// What applies when no ALLOW policy covers the workload (`--default-inbound-policy`).
    default_policy: String,
    /// `namespace/name`, action (`ALLOW`, `DENY`, `AUDIT`), rule count, dry run: each
    /// AuthorizationPolicy that covers the workload, by name.
    policies: Vec<PolicyJson>,
}

#[derive(Serialize)]
struct PolicyJson {
    name: String,
    action: &'static str,
    rules: usize,
    dry_run: bool,
}

/// `GET /api/v1/workloads/{namespace}/{name}/authorization`: the Istio AuthorizationPolicies
/// that cover a registered workload, as compile selects them for its proxy. 404 for a workload
/// not registered. Mesh-wide policies are read from `--root-namespace`.
async fn authorization_json(
    State(app): State<App>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let workload = app
        .shared
        .workloads_rx()
        .borrow()
        .iter()
        .find(|w| w.namespace == namespace && w.name == name)
        .cloned();
    let Some(workload) = workload else {
        return (
            StatusCode::NOT_FOUND,
            format!("no workload {name} in namespace {namespace}\n"),
        )
            .into_response();
    };
    let config = app.shared.config_rx.borrow().clone();
    let authz = crate::compile::authz::workload_authz(
        &config.authorization_policies,
        &config.services,
        &app.options.root_namespace,
        app.options.default_inbound_policy,
        &workload,
    );
    Json(AuthorizationJson {
        namespace,
        workload: name,
        root_namespace: app.options.root_namespace.clone(),
        default_policy: app.options.default_inbound_policy.as_str().to_string(),
        policies: authz
            .policies
            .iter()
            .map(|p| PolicyJson {
                name: p.name.clone(),
                action: p.action.as_str(),
                rules: p.rules.len(),
                dry_run: p.dry_run,
            })
            .collect(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::store::ConfigSnapshot;

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        sock.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        sock.read_to_end(&mut raw).await.unwrap();
        let (status, body) = super::super::fetch::parse_response(&raw).unwrap();
        (status, String::from_utf8(body).unwrap())
    }

    /// The API on a real socket, with an empty mesh: answers, and 400s that name the parameter.
    #[tokio::test]
    async fn answers_and_names_bad_parameters() {
        let (_config_tx, config_rx) = watch::channel(Arc::new(ConfigSnapshot::default()));
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared::new(
            "cluster.local".into(),
            Duration::from_secs(2),
            Duration::from_secs(10),
            Duration::ZERO,
            config_rx,
            shutdown.clone(),
        ));
        let app = super::super::router(shared, super::super::DashboardOptions::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
        });

        let (status, body) = get(addr, "/api/v1/graph").await;
        assert_eq!(status, 200, "{body}");
        let graph: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(graph["nodes"], serde_json::json!([]));
        assert_eq!(graph["failing_below"], FAILING_BELOW_JSON);
        assert_eq!(get(addr, "/api/v1/proxies").await, (200, "[]".to_string()));
        assert_eq!(
            get(addr, "/api/v1/routes?window=900").await,
            (200, "[]".to_string())
        );
        let (status, body) = get(addr, "/api/v1/services/default/reviews/timeseries").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"step_seconds\":10"), "{body}");

        for (path, names) in [
            ("/api/v1/graph?window=1", "window"),
            ("/api/v1/graph?window=abc", "window"),
            ("/api/v1/routes?window=901", "window"),
            ("/api/v1/workloads/default/a/timeseries?step=0", "step"),
            (
                "/api/v1/routes/timeseries?namespace=default&service=reviews",
                "route",
            ),
        ] {
            let (status, body) = get(addr, path).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert!(body.contains(names), "{path}: {body}");
        }
        let (status, body) = get(addr, "/api/v1/workloads/default/nope/authorization").await;
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("nope"), "{body}");
        shutdown.cancel();
    }

    const FAILING_BELOW_JSON: f64 = super::super::FAILING_BELOW;
}
