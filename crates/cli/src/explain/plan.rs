//! What the mesh does with one request, as data: the pure core of `trellis explain`.
//!
//! The destination is compiled with the control plane's `compile` and the route chosen with
//! the model's `select_route`, the very functions discovery and the proxy run, so the answer
//! cannot drift from what the mesh does. Nothing here is random: weights are reported as
//! shares, faults and mirrors as percentages.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use trellis_control::compile::{MeshView, compile};
use trellis_control::store::ConfigSnapshot;
use trellis_model::authz::{DefaultPolicy, WorkloadAuthz};
use trellis_model::matching::RequestView;
use trellis_model::policy::{ConnectionPool, OutlierDetection, TrafficPolicy};
use trellis_model::rewrite::{matched_prefix, rewrite_path};
use trellis_model::route::{
    BackendRef, HeaderModifier, HttpRoute, RetryOn, RouteAction, select_route,
};
use trellis_model::{Destination, Endpoint, Target, Workload};

use super::authz::{self, Asked, Authorization, Caller, Landing};

/// The proxy's retry policy when a route sets none (docs/proxy.md, "Traffic defaults").
pub const DEFAULT_RETRIES: &str = "2 retries on connect-failure, refused-stream (proxy default: the request never reached the application)";
/// The proxy's request timeout when a route sets none.
pub const DEFAULT_TIMEOUT: &str = "none (proxy default)";
/// Timeout and retries of a request the proxy answers itself.
pub const NOT_SENT: &str = "none (the proxy answers; nothing is sent)";

/// The request to explain, as the calling proxy would see it.
#[derive(Clone, Debug)]
pub struct Request {
    pub source: Workload,
    pub method: String,
    pub target: Target,
    /// As written in the URL (`reviews:9080`): what authority matches compare against.
    pub authority: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    /// Who the destination proxies see calling: the source's mesh identity and address.
    pub caller: Caller,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    pub source: Source,
    pub method: String,
    pub target: String,
    pub path: String,
    /// `None`: the mesh knows nothing at the target; the proxy answers 503 `no destination`.
    pub destination: Option<DestinationInfo>,
    pub route: Option<RouteInfo>,
    pub action: Action,
    pub timeout: String,
    pub retries: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub header_edits: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// The decision of each destination workload's proxy (see [`authz`]).
    pub authorization: Authorization,
    /// The workloads the request can land on, as their proxies receive it.
    #[serde(skip)]
    pub landings: Vec<Landing>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Source {
    pub workload: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DestinationInfo {
    pub service: String,
    pub port: u16,
    pub authority: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteInfo {
    /// `VirtualService default/reviews`.
    pub resource: String,
    pub name: String,
    /// 0-based position among the destination's routes (first match wins).
    pub index: usize,
    /// The match block that hit (JSON of the model's match), `None` for a catch-all route.
    pub matched: Option<String>,
    pub match_index: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Action {
    /// Split across backends by weight (one backend with 100% when no route matched).
    Forward {
        backends: Vec<BackendInfo>,
    },
    /// Every backend has weight 0: the proxy answers 500.
    NoBackend,
    Redirect {
        location: String,
        status: u16,
    },
    DirectResponse {
        status: u16,
    },
    /// A routing resource (VirtualService, HTTPRoute, GRPCRoute) governs the destination but
    /// none of its routes matches: the proxy answers itself, as Istio and Gateway API do (404;
    /// gRPC UNIMPLEMENTED for a GRPCRoute, in a 200 trailers-only answer).
    NoRoute {
        status: u16,
        #[serde(skip_serializing_if = "Option::is_none")]
        grpc_status: Option<u32>,
    },
    /// No destination: 503.
    NoDestination,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendInfo {
    pub backend: String,
    pub subset: Option<String>,
    /// The subset's labels, ANDed with the service's selector.
    pub subset_labels: BTreeMap<String, String>,
    pub weight: u32,
    /// Share of the route's traffic, in percent.
    pub percent: f64,
    /// Workloads behind it; empty means 503 `no endpoints`.
    pub endpoints: Vec<String>,
    pub load_balancer: String,
    pub connection_pool: String,
    pub outlier_detection: String,
    pub retry_budget: String,
}

/// How the local config's authorization is compiled: `trellis-control`'s
/// `--root-namespace` and `--default-inbound-policy`.
#[derive(Clone, Copy, Debug)]
pub struct AuthzSettings<'a> {
    pub root_namespace: &'a str,
    pub default: DefaultPolicy,
}

/// Explains `req` against the mesh in `snapshot` with `workloads` registered: compiles the
/// destination, and each destination workload's policies, as the control plane would.
pub fn explain(
    snapshot: &ConfigSnapshot,
    workloads: &[Workload],
    req: &Request,
    settings: AuthzSettings<'_>,
) -> Explanation {
    // The control plane's view shares each workload by `Arc`; one explanation copies them once.
    let shared: Vec<Arc<Workload>> = workloads.iter().cloned().map(Arc::new).collect();
    let view = MeshView {
        services: &snapshot.services,
        traffic: &snapshot.traffic,
        workloads: &shared,
        trust_domain: trellis_identity::DEFAULT_TRUST_DOMAIN,
    };
    let dest = compile(view, &req.target);
    let subset_labels = |b: &BackendRef| {
        b.subset
            .as_deref()
            .and_then(|s| snapshot.traffic.policies.get(&b.service)?.subset(s))
            .map(|s| s.labels.clone())
            .unwrap_or_default()
    };
    let mut out = explain_destination(dest.as_ref(), &subset_labels, req);
    let authz_of = |l: &Landing| -> Result<WorkloadAuthz, String> {
        let w = workloads
            .iter()
            .find(|w| w.name == l.workload && w.namespace == l.namespace)
            .ok_or_else(|| format!("workload {}.{} is not known", l.workload, l.namespace))?;
        Ok(trellis_control::compile::authz::workload_authz(
            &snapshot.authorization_policies,
            &snapshot.services,
            settings.root_namespace,
            settings.default,
            w,
        ))
    };
    authorize(&mut out, req, "config", &authz_of);
    out
}

/// Fills `out.authorization`: each landing decided with the policies `authz_of` gives, or why
/// the request reaches no workload. `source` says where the policies come from.
pub fn authorize(
    out: &mut Explanation,
    req: &Request,
    source: &str,
    authz_of: &dyn Fn(&Landing) -> Result<WorkloadAuthz, String>,
) {
    let why = match &out.action {
        Action::Forward { .. } if out.landings.is_empty() => Some("no endpoints"),
        Action::Forward { .. } => None,
        Action::NoDestination => Some("no destination"),
        Action::NoBackend
        | Action::Redirect { .. }
        | Action::DirectResponse { .. }
        | Action::NoRoute { .. } => {
            Some("the calling proxy answers itself; nothing reaches a workload")
        }
    };
    out.authorization = match why {
        Some(why) => authz::not_reached(&req.caller, why),
        None => authz::decide(
            Asked {
                method: &req.method,
                caller: &req.caller,
            },
            &out.landings,
            source,
            authz_of,
        ),
    };
}

/// Explains `req` against a destination already compiled (by [`explain`], or fetched from a
/// running control plane). `subset_labels` names a subset's labels where they are known.
pub fn explain_destination(
    dest: Option<&Destination>,
    subset_labels: &dyn Fn(&BackendRef) -> BTreeMap<String, String>,
    req: &Request,
) -> Explanation {
    let mut out = Explanation {
        source: Source {
            workload: req.source.name.clone(),
            namespace: req.source.namespace.clone(),
            labels: req.source.labels.clone(),
        },
        method: req.method.clone(),
        target: req.target.to_string(),
        path: req.path.clone(),
        destination: None,
        route: None,
        action: Action::NoDestination,
        timeout: DEFAULT_TIMEOUT.to_string(),
        retries: DEFAULT_RETRIES.to_string(),
        faults: Vec::new(),
        mirrors: Vec::new(),
        header_edits: Vec::new(),
        rewrite: None,
        authorization: authz::not_reached(&req.caller, "no destination"),
        landings: Vec::new(),
    };
    let Some(dest) = dest else {
        return out;
    };
    out.destination = Some(DestinationInfo {
        service: dest.service.to_string(),
        port: dest.port,
        authority: dest.authority.clone(),
    });
    let request_view = RequestView {
        method: &req.method,
        path: &req.path,
        query: req.query.as_deref(),
        authority: &req.authority,
        headers: &req.headers,
        port: dest.port,
        source_labels: &req.source.labels,
        source_namespace: &req.source.namespace,
    };
    let Some((index, route)) = select_route(&dest.routes, &request_view) else {
        // No route: the service's own endpoints, with the proxy's defaults.
        let own = BackendRef {
            service: dest.service.clone(),
            port: None,
            subset: None,
        };
        out.action = Action::Forward {
            backends: vec![backend_info(subset_labels, dest, &own, 1, 1)],
        };
        let arriving = Arriving {
            authority: req.authority.clone(),
            path: req.path.clone(),
            headers: req.headers.clone(),
        };
        add_landings(&mut out.landings, &own, &dest.endpoints, &arriving);
        return out;
    };
    let match_index = route.matches.iter().position(|m| m.matches(&request_view));
    out.route = Some(RouteInfo {
        resource: route.source.to_string(),
        name: route.name.clone(),
        index,
        matched: match_index
            .and_then(|i| route.matches.get(i))
            .and_then(|m| serde_json::to_string(m).ok()),
        match_index,
    });
    if trellis_config::no_route::is_no_route(route) {
        describe_no_route(route, &mut out);
        return out;
    }
    describe_route(subset_labels, dest, route, &mut out);
    out.landings = landings(dest, route, req, &request_view);
    out
}

/// The request as the calling proxy sends it on (rewritten, headers edited).
struct Arriving {
    authority: String,
    path: String,
    headers: http::HeaderMap,
}

/// Where a forwarding route's traffic lands: every endpoint of every backend with a weight,
/// with the request as the proxy's `forward_route` rewrites it.
fn landings(
    dest: &Destination,
    route: &HttpRoute,
    req: &Request,
    view: &RequestView<'_>,
) -> Vec<Landing> {
    let RouteAction::Forward(backends) = &route.action else {
        return Vec::new();
    };
    let mut path = req.path.clone();
    let mut authority = req.authority.clone();
    if let Some(rw) = &route.rewrite {
        if let Some(p) = &rw.path {
            path = rewrite_path(&req.path, p, matched_prefix(route, view));
        }
        if let Some(a) = &rw.authority {
            authority = a.clone();
        }
    }
    let mut out = Vec::new();
    for b in backends.iter().filter(|b| b.weight > 0) {
        let Some((endpoints, _)) = dest.backend(&b.backend) else {
            continue;
        };
        let mut headers = req.headers.clone();
        authz::apply_edits(&route.request_headers, &mut headers);
        authz::apply_edits(&b.request_headers, &mut headers);
        let arriving = Arriving {
            authority: authority.clone(),
            path: path.clone(),
            headers,
        };
        add_landings(&mut out, &b.backend, endpoints, &arriving);
    }
    out
}

/// Adds each endpoint not already there (a workload behind two backends is decided once).
fn add_landings(out: &mut Vec<Landing>, b: &BackendRef, eps: &[Endpoint], arriving: &Arriving) {
    for e in eps {
        let namespace = b.service.namespace.clone();
        if out
            .iter()
            .any(|l| l.workload == e.workload && l.namespace == namespace)
        {
            continue;
        }
        out.push(Landing {
            workload: e.workload.clone(),
            namespace,
            address: e.address,
            meshed: e.meshed,
            target_port: e.target_port,
            authority: arriving.authority.clone(),
            path: arriving.path.clone(),
            headers: arriving.headers.clone(),
        });
    }
}

/// The no-route catch-all: nothing is sent anywhere, so no timeout, retries or backends apply.
fn describe_no_route(route: &HttpRoute, out: &mut Explanation) {
    let status = match &route.action {
        RouteAction::DirectResponse { status, .. } => *status,
        _ => 404,
    };
    let grpc_status = route
        .response_headers
        .set
        .iter()
        .find(|(k, _)| k == "grpc-status")
        .and_then(|(_, v)| v.parse().ok());
    out.action = Action::NoRoute {
        status,
        grpc_status,
    };
    out.timeout = NOT_SENT.to_string();
    out.retries = NOT_SENT.to_string();
}

fn describe_route(
    subset_labels: &dyn Fn(&BackendRef) -> BTreeMap<String, String>,
    dest: &Destination,
    route: &HttpRoute,
    out: &mut Explanation,
) {
    out.action = match &route.action {
        RouteAction::Forward(bs) => {
            let total: u64 = bs.iter().map(|b| u64::from(b.weight)).sum();
            if total == 0 {
                Action::NoBackend
            } else {
                let backends = bs
                    .iter()
                    .map(|b| backend_info(subset_labels, dest, &b.backend, b.weight, total))
                    .collect();
                for b in bs {
                    edits(
                        &format!("request to {}", b.backend),
                        &b.request_headers,
                        &mut out.header_edits,
                    );
                    edits(
                        &format!("response from {}", b.backend),
                        &b.response_headers,
                        &mut out.header_edits,
                    );
                }
                Action::Forward { backends }
            }
        }
        RouteAction::Redirect(r) => Action::Redirect {
            location: serde_json::to_string(r).unwrap_or_default(),
            status: r.status,
        },
        RouteAction::DirectResponse { status, .. } => Action::DirectResponse { status: *status },
    };
    if let Some(t) = route.timeout {
        out.timeout = format!("{t:?} (whole request, retries included)");
    }
    if let Some(r) = &route.retry {
        let per_try = r
            .per_try_timeout
            .map(|t| format!(", {t:?} per try"))
            .unwrap_or_default();
        out.retries = format!("{} retries on {}{per_try}", r.attempts, retry_on(&r.on));
    }
    if let Some(f) = &route.fault {
        if let Some(d) = &f.delay {
            out.faults.push(format!(
                "delay {:?} for {}% of requests",
                d.fixed, d.percent.0
            ));
        }
        if let Some(a) = &f.abort {
            out.faults.push(format!(
                "abort {:?} for {}% of requests",
                a.status, a.percent.0
            ));
        }
    }
    for m in &route.mirrors {
        out.mirrors.push(format!(
            "{} ({}% of requests, answers discarded)",
            m.backend, m.percent.0
        ));
    }
    edits("request", &route.request_headers, &mut out.header_edits);
    edits("response", &route.response_headers, &mut out.header_edits);
    out.rewrite = route
        .rewrite
        .as_ref()
        .and_then(|r| serde_json::to_string(r).ok());
}

fn edits(what: &str, m: &HeaderModifier, out: &mut Vec<String>) {
    for (k, v) in &m.set {
        out.push(format!("{what}: set {k}: {v}"));
    }
    for (k, v) in &m.add {
        out.push(format!("{what}: add {k}: {v}"));
    }
    for k in &m.remove {
        out.push(format!("{what}: remove {k}"));
    }
}

fn backend_info(
    subset_labels: &dyn Fn(&BackendRef) -> BTreeMap<String, String>,
    dest: &Destination,
    b: &BackendRef,
    weight: u32,
    total: u64,
) -> BackendInfo {
    let subset_labels = subset_labels(b);
    let (endpoints, policy) = match dest.backend(b) {
        Some((eps, policy)) => (
            eps.iter().map(|e| e.workload.clone()).collect(),
            policy.clone(),
        ),
        None => (Vec::new(), TrafficPolicy::default()),
    };
    BackendInfo {
        backend: b.to_string(),
        subset: b.subset.clone(),
        subset_labels,
        weight,
        percent: (f64::from(weight) * 100.0 / total as f64 * 100.0).round() / 100.0,
        endpoints,
        // Debug, not serde: durations read as `30s` rather than `{secs, nanos}`.
        load_balancer: format!("{:?}", policy.load_balancer),
        connection_pool: pool(&policy.connection_pool),
        outlier_detection: policy
            .outlier_detection
            .as_ref()
            .map_or_else(|| "off".to_string(), outlier),
        retry_budget: format!(
            "{}% of requests + {}/s, over {:?}",
            policy.retry_budget.ratio * 100.0,
            policy.retry_budget.min_per_second,
            policy.retry_budget.ttl
        ),
    }
}

/// The limits a connection pool sets, `defaults (no limits)` when none.
fn pool(p: &ConnectionPool) -> String {
    let mut parts = Vec::new();
    let mut num = |name: &str, v: Option<u32>| {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    };
    num("max_connections", p.max_connections);
    num("max_pending_requests", p.max_pending_requests);
    num("max_requests", p.max_requests);
    num("max_requests_per_connection", p.max_requests_per_connection);
    num("max_retries", p.max_retries);
    if let Some(t) = p.connect_timeout {
        parts.push(format!("connect_timeout={t:?}"));
    }
    if let Some(t) = p.idle_timeout {
        parts.push(format!("idle_timeout={t:?}"));
    }
    if parts.is_empty() {
        "defaults (no limits; connect timeout 3s)".to_string()
    } else {
        parts.join(" ")
    }
}

/// Retry conditions in Envoy's/Istio's `retryOn` words.
fn retry_on(on: &RetryOn) -> String {
    let mut parts: Vec<String> = [
        (on.server_error, "5xx"),
        (on.gateway_error, "gateway-error"),
        (on.connect_failure, "connect-failure"),
        (on.refused_stream, "refused-stream"),
        (on.reset, "reset"),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .map(|(_, name)| name.to_string())
    .collect();
    parts.extend(on.statuses.iter().map(|s| format!("status {s}")));
    parts.extend(on.grpc_codes.iter().map(|c| format!("grpc-status {c}")));
    if parts.is_empty() {
        "nothing".to_string()
    } else {
        parts.join(", ")
    }
}

fn outlier(o: &OutlierDetection) -> String {
    let mut parts = Vec::new();
    if let Some(n) = o.consecutive_5xx {
        parts.push(format!("eject after {n} consecutive 5xx"));
    }
    if let Some(n) = o.consecutive_gateway_errors {
        parts.push(format!("after {n} consecutive gateway errors"));
    }
    parts.push(format!(
        "every {:?}, for {:?} x ejections, at most {}% ejected",
        o.interval, o.base_ejection_time, o.max_ejection_percent
    ));
    parts.join(", ")
}
