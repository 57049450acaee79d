//! The HTTP adapter: the JSON API the dashboard, CLI and demo read, metrics, probes, and the
//! dashboard's own routes. Handlers only read shared state and shape JSON.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde::Serialize;
use tokio::time::Instant;

use crate::compile::{identity, selected};
use crate::state::Shared;
use crate::store::ResourceStatus;

#[derive(Clone, Debug)]
struct App {
    shared: Arc<Shared>,
    ready: Arc<AtomicBool>,
}

/// The control plane's HTTP routes merged with the dashboard's. `ready` turns `/ready` to 200.
pub fn router(
    shared: Arc<Shared>,
    ready: Arc<AtomicBool>,
    dashboard: crate::dashboard_api::DashboardOptions,
) -> Router {
    let api = Router::new()
        .route("/api/v1/services", get(services))
        .route("/api/v1/workloads", get(workloads))
        .route("/api/v1/config", get(config))
        .route("/api/v1/destination", get(destination))
        .route("/api/v1/tap", get(tap))
        .route(
            crate::multicluster::link::EXPORTS_PATH,
            get(multicluster_exports),
        )
        .route("/metrics", get(metrics))
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(is_ready))
        .with_state(App {
            shared: shared.clone(),
            ready,
        });
    api.merge(crate::dashboard_api::router(shared, dashboard))
        .merge(trellis_dashboard::router())
}

#[derive(Serialize)]
struct ServiceJson {
    namespace: String,
    name: String,
    ports: Vec<PortJson>,
    selector: BTreeMap<String, String>,
    endpoints: Vec<EndpointJson>,
}

#[derive(Serialize)]
struct PortJson {
    name: Option<String>,
    port: u16,
    protocol: &'static str,
}

#[derive(Serialize)]
struct EndpointJson {
    workload: String,
    address: String,
    identity: Option<String>,
}

async fn services(State(app): State<App>) -> Json<Vec<ServiceJson>> {
    let config = app.shared.config_rx.borrow().clone();
    let workloads = app.shared.registry().workloads();
    let td = &app.shared.trust_domain;
    let out = config
        .services
        .values()
        .map(|svc| ServiceJson {
            namespace: svc.key.namespace.clone(),
            name: svc.key.name.clone(),
            ports: svc
                .ports
                .iter()
                .map(|p| PortJson {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: p.protocol.as_str(),
                })
                .collect(),
            selector: svc.selector.clone(),
            endpoints: selected(svc, &workloads)
                .map(|w| EndpointJson {
                    workload: w.name.clone(),
                    address: w.inbound_address.to_string(),
                    identity: identity(td, w),
                })
                .collect(),
        })
        .collect();
    Json(out)
}

#[derive(Serialize)]
struct WorkloadJson {
    name: String,
    namespace: String,
    service_account: String,
    identity: Option<String>,
    labels: BTreeMap<String, String>,
    inbound: String,
    admin: Option<String>,
    connected: bool,
    last_seen_ms_ago: u64,
    acked_version: Option<u64>,
    nacks: u64,
    last_nack: Option<String>,
    subscriptions: Vec<String>,
    /// The proxy's build version as it said on Hello (empty: it did not say).
    proxy_version: String,
    /// The discovery protocol revision its stream speaks.
    protocol_version: u32,
}

async fn workloads(State(app): State<App>) -> Json<Vec<WorkloadJson>> {
    let now = Instant::now();
    let td = &app.shared.trust_domain;
    let registry = app.shared.registry();
    let out = registry
        .registrations()
        .map(|r| WorkloadJson {
            name: r.workload.name.clone(),
            namespace: r.workload.namespace.clone(),
            service_account: r.workload.service_account.clone(),
            identity: identity(td, &r.workload),
            labels: r.workload.labels.clone(),
            inbound: r.workload.inbound_address.to_string(),
            admin: r.workload.admin_address.map(|a| a.to_string()),
            connected: r.connected,
            last_seen_ms_ago: u64::try_from(now.saturating_duration_since(r.last_seen).as_millis())
                .unwrap_or(u64::MAX),
            acked_version: r.acked_version,
            nacks: r.nacks,
            last_nack: r.last_nack.clone(),
            subscriptions: r.subscriptions.iter().map(ToString::to_string).collect(),
            proxy_version: r.versions.proxy_version.clone(),
            protocol_version: r.versions.protocol,
        })
        .collect();
    Json(out)
}

#[derive(Serialize)]
struct ConfigJson {
    resources: Vec<ResourceStatus>,
}

async fn config(State(app): State<App>) -> Json<ConfigJson> {
    Json(ConfigJson {
        resources: app.shared.config_rx.borrow().resources.clone(),
    })
}

/// `GET /api/v1/destination?target=reviews.default:9080`: the Destination compile makes for the
/// target from the config and registrations in force now (`null`: nothing there), as discovery
/// would send it; `trellis explain --control` matches requests against it. 400 on a bad target.
async fn destination(
    State(app): State<App>,
    axum::extract::Query(query): axum::extract::Query<BTreeMap<String, String>>,
) -> axum::response::Response {
    let Some(target) = query.get("target") else {
        return (
            StatusCode::BAD_REQUEST,
            "the target query parameter is required\n",
        )
            .into_response();
    };
    let target: trellis_model::Target = match target.parse() {
        Ok(t) => t,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("target: {e}\n")).into_response(),
    };
    let config = app.shared.config_rx.borrow().clone();
    let workloads = app.shared.registry().workloads();
    let view = crate::compile::MeshView {
        services: &config.services,
        traffic: &config.traffic,
        workloads: &workloads,
        trust_domain: &app.shared.trust_domain,
    };
    Json(crate::compile::compile(view, &target)).into_response()
}

/// `GET /api/v1/multicluster/exports`: the exported services and their ready endpoints, what
/// linked clusters fetch (see [`crate::multicluster::exports`]).
async fn multicluster_exports(State(app): State<App>) -> Json<crate::multicluster::Exports> {
    let config = app.shared.config_rx.borrow().clone();
    // The published workloads: registrations, or Pods in Kubernetes mode.
    let workloads = app.shared.workloads_rx().borrow().clone();
    let view = crate::compile::MeshView {
        services: &config.services,
        traffic: &config.traffic,
        workloads: &workloads,
        trust_domain: &app.shared.trust_domain,
    };
    Json(crate::multicluster::exports::exports(
        view,
        &config.multicluster.exports,
    ))
}

/// `GET /api/v1/tap?workload=NAME&...`: a workload's live requests (see [`crate::tap`]).
async fn tap(
    State(app): State<App>,
    axum::extract::Query(pairs): axum::extract::Query<Vec<(String, String)>>,
) -> axum::response::Response {
    crate::tap::serve(app.shared, pairs).await
}

async fn metrics(
    State(app): State<App>,
    ca: Option<axum::Extension<Arc<crate::ca::CaState>>>,
) -> impl IntoResponse {
    let config = app.shared.config_rx.borrow().clone();
    let registered = app.shared.registry().len();
    let mut body = app.shared.metrics.render(&config, registered);
    render_info(&mut body, app.ready.load(Ordering::Acquire));
    if let Some(axum::Extension(ca)) = ca {
        ca.metrics.render(&mut body, ca.status().anchors);
        crate::ca::metrics::render_expiries(&mut body, &ca.expiries());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// The control plane's version (`trellis check` compares it with the CLI's and the proxies')
/// and readiness, as gauges so that alerts see "up but not ready" as well as "down" (`up`).
fn render_info(out: &mut String, ready: bool) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP trellis_control_info Control plane build information.\n\
         # TYPE trellis_control_info gauge\n\
         trellis_control_info{{version=\"{}\",discovery_protocol=\"{}\"}} 1\n\
         # HELP trellis_control_ready 1 once the control plane has loaded its config (GET /ready answers 200).\n\
         # TYPE trellis_control_ready gauge\n\
         trellis_control_ready {}",
        env!("CARGO_PKG_VERSION"),
        trellis_api::DISCOVERY_PROTOCOL,
        u8::from(ready)
    );
}

async fn is_ready(State(app): State<App>) -> impl IntoResponse {
    if app.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading config\n")
    }
}
