//! A request to a discovered destination: route selection, then the route's filters in Envoy's
//! order (fault delay, fault abort, direct response, redirect, rewrite, request headers of the
//! route then of the chosen backend, mirrors), the weighted split, the attempts, and the
//! response header edits on the way back.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use trellis_model::matching::RequestView;
use trellis_model::rewrite::matched_prefix;
use trellis_model::route::{AbortStatus, HttpRoute, Mirror, RouteAction, select_route};

use super::HttpForward;
use super::attempt::{self, Attempts};
use super::body::ReqBody;
use crate::client::UpBody;
use crate::filters::{
    HeaderEdits, grpc_response, made_response, redirect_location, rewrite_path, shadow_authority,
};
use crate::http::{ProxyBody, error_response};
use crate::resilience::retry::DEFAULT_POLICY;
use crate::route::endpoint_hop;
use crate::split;
use crate::telemetry::FaultKind;
use crate::telemetry::exchange::Upstream;
use crate::traffic::{BackendRt, Plan, RoutePlan};

/// The longest a mirrored request may run before it is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// The request's authority: the URI's (HTTP/2, absolute form) or the Host header.
fn authority<B>(req: &Request<B>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
        .unwrap_or("")
}

/// Replaces the request's authority wherever it is carried.
fn set_authority<B>(req: &mut Request<B>, authority: &str) {
    if let Ok(v) = HeaderValue::from_str(authority) {
        if req.uri().authority().is_some() {
            let mut parts = req.uri().clone().into_parts();
            if let Ok(a) = authority.parse() {
                parts.authority = Some(a);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        if req.uri().authority().is_none() || req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
}

/// Replaces the path, keeping the query.
fn set_path<B>(req: &mut Request<B>, path: &str) {
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

pub(super) async fn forward(
    fwd: &HttpForward,
    plan: &Arc<Plan>,
    req: Request<UpBody>,
    upgrade: bool,
    tagged: bool,
) -> Response<ProxyBody> {
    let dest = &plan.dest;
    let selected = {
        let view = RequestView {
            method: req.method().as_str(),
            path: req.uri().path(),
            query: req.uri().query(),
            authority: authority(&req),
            headers: req.headers(),
            port: dest.port,
            source_labels: &fwd.ctx.source.labels,
            source_namespace: &fwd.ctx.source.namespace,
        };
        select_route(&dest.routes, &view).map(|(i, r)| (i, r, matched_prefix(r, &view)))
    };
    let Some((index, route, prefix)) = selected else {
        tracing::trace!(destination = %dest.authority, "no route; the service's own endpoints");
        let mut resp = send(
            fwd,
            &plan.own,
            req,
            upgrade,
            tagged,
            Attempts::default_for(None),
        )
        .await;
        Upstream::of(&mut resp).destination = Some(plan.dest.clone());
        return resp;
    };
    // Parallel to `dest.routes` by construction (one plan per destination version).
    let Some(rp) = plan.routes.get(index) else {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "no backends");
    };
    tracing::debug!(destination = %dest.authority, route = %rp.name, "route selected");
    let mut resp = forward_route(fwd, rp, route, prefix, req, upgrade, tagged).await;
    let up = Upstream::of(&mut resp);
    up.destination = Some(plan.dest.clone());
    up.route = Some(rp.name.clone());
    resp
}

async fn forward_route(
    fwd: &HttpForward,
    rp: &RoutePlan,
    route: &HttpRoute,
    prefix: Option<&str>,
    mut req: Request<UpBody>,
    upgrade: bool,
    tagged: bool,
) -> Response<ProxyBody> {
    if let Some(fault) = &route.fault {
        let decision = fault.decide(split::next_f64(), split::next_f64());
        if let Some(delay) = decision.delay {
            fwd.ctx.metrics.fault(fwd.direction, FaultKind::Delay);
            tokio::time::sleep(delay).await;
        }
        if let Some(abort) = decision.abort {
            fwd.ctx.metrics.fault(fwd.direction, FaultKind::Abort);
            return match abort {
                AbortStatus::Http(status) => {
                    made_response(status, Some("fault filter abort"), Some("fault abort"))
                }
                AbortStatus::Grpc(code) => grpc_response(code, "fault filter abort", "fault abort"),
            };
        }
    }

    let backends = match &route.action {
        RouteAction::DirectResponse { status, body } => {
            let mut resp = made_response(*status, body.as_deref(), None);
            rp.response_headers.apply(resp.headers_mut());
            return resp;
        }
        RouteAction::Redirect(r) => {
            let location = redirect_location(
                r,
                authority(&req),
                req.uri().path(),
                req.uri().query(),
                prefix,
            );
            let mut resp = made_response(r.status, None, None);
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            rp.response_headers.apply(resp.headers_mut());
            return resp;
        }
        RouteAction::Forward(backends) => backends,
    };

    if let Some(rw) = &route.rewrite {
        if let Some(path) = &rw.path {
            let new = rewrite_path(req.uri().path(), path, prefix);
            set_path(&mut req, &new);
        }
        if let Some(a) = &rw.authority {
            set_authority(&mut req, a);
        }
    }

    let Some((chosen, _)) = split::pick(backends) else {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "no backends");
    };
    let Some(backend) = rp.split.get(chosen).and_then(Option::as_ref) else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "no endpoints");
    };
    let no_edits = (HeaderEdits::default(), HeaderEdits::default());
    let (backend_request, backend_response) = rp.split_headers.get(chosen).unwrap_or(&no_edits);
    rp.request_headers.apply(req.headers_mut());
    backend_request.apply(req.headers_mut());

    let mut resp = if upgrade {
        send(fwd, backend, req, true, tagged, Attempts::default_for(None)).await
    } else {
        let attempts = Attempts {
            policy: route.retry.as_ref().unwrap_or(&DEFAULT_POLICY),
            timeout: route.timeout,
            mirrors: MirrorSet {
                mirrors: &route.mirrors,
                backends: &rp.mirrors,
            },
        };
        send(fwd, backend, req, false, tagged, attempts).await
    };
    rp.response_headers.apply(resp.headers_mut());
    backend_response.apply(resp.headers_mut());
    resp
}

/// A route's mirrors with their resolved backends.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct MirrorSet<'a> {
    pub mirrors: &'a [Mirror],
    pub backends: &'a [Option<Arc<BackendRt>>],
}

async fn send(
    fwd: &HttpForward,
    backend: &Arc<BackendRt>,
    req: Request<UpBody>,
    upgrade: bool,
    tagged: bool,
    attempts: Attempts<'_>,
) -> Response<ProxyBody> {
    if upgrade {
        // Upgrades use a one-off connection without TLS origination; refused rather than sent
        // in plaintext to a backend whose policy asks for TLS.
        if backend.pool_options.origination().is_some() {
            return error_response(
                StatusCode::BAD_GATEWAY,
                "upgrade with TLS origination not supported",
            );
        }
        backend.sweep();
        let Some(ep) = backend.balancer.pick(None, None) else {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "no endpoints");
        };
        let hop = endpoint_hop(ep.endpoint());
        if fwd.is_loop(hop) {
            return error_response(StatusCode::BAD_GATEWAY, "forwarding loop");
        }
        return Box::pin(fwd.forward_upgrade(hop, req)).await;
    }
    attempt::run(fwd, backend, req, tagged, attempts).await
}

/// Sends copies of a request whose body is replayable to each mirror that draws it, fire and
/// forget: a copy over the proxy-wide mirror limit, or to a backend without endpoints, is not
/// sent, and nothing about a copy reaches the primary exchange.
pub(super) fn mirror(
    fwd: &HttpForward,
    mirrors: MirrorSet<'_>,
    head: &Request<()>,
    body: &ReqBody,
) {
    let Some(known) = body.known() else {
        return;
    };
    for (m, backend) in mirrors.mirrors.iter().zip(mirrors.backends) {
        let Some(backend) = backend else { continue };
        if !m.percent.hit(split::next_f64()) {
            continue;
        }
        let Ok(permit) = fwd.ctx.mirror_permits.clone().try_acquire_owned() else {
            tracing::debug!(backend = %backend.authority, "mirror limit reached; copy not sent");
            continue;
        };
        let Some(ep) = backend.balancer.pick(None, None) else {
            continue;
        };
        let hop = endpoint_hop(ep.endpoint());
        if fwd.is_loop(hop) {
            continue;
        }
        let mut copy = attempt::clone_head(head);
        let shadow = shadow_authority(authority(head));
        set_authority(&mut copy, &shadow);
        let body = if known.is_empty() {
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed()
        } else {
            http_body_util::Full::new(known.clone())
                .map_err(|never| match never {})
                .boxed()
        };
        let copy = copy.map(|()| body);
        fwd.ctx.metrics.mirrored(fwd.direction);
        let fwd = fwd.clone();
        let backend = backend.clone();
        // The hop borrows the endpoint (its identity); the task owns the endpoint.
        let ep = ep.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let hop = endpoint_hop(ep.endpoint());
            let work = async {
                match fwd.send(hop, copy, false, &backend.pool_options).await {
                    // Read the answer to its end so the connection can be reused.
                    Ok(resp) => drop(resp.into_body().collect().await),
                    Err(e) => {
                        tracing::debug!(hop = %hop.addr, error = %e, "mirrored request failed")
                    }
                }
            };
            if tokio::time::timeout(MIRROR_TIMEOUT, work).await.is_err() {
                tracing::debug!(hop = %hop.addr, "mirrored request timed out");
            }
        });
    }
}
