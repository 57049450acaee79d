//! The attempts of one routed request: the request timeout (the route's, or the caller's gRPC
//! deadline if sooner) over everything; per attempt the balancer's pick (avoiding the endpoint
//! that just failed), the connection-pool limits, the per-try timeout, outlier accounting; and
//! between attempts the retry conditions, the retry budget and the retry limit.

use std::net::SocketAddr;
use std::time::Duration;

use crate::client::RespBody;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::time::Instant;
use trellis_model::policy::HashKey;
use trellis_model::route::RetryPolicy;

use super::body::{BodyDeadline, Guarded, Held, ReqBody};
use super::routed::{MirrorSet, mirror};
use super::{HttpForward, downstream_parts};
use crate::balance::hash::hash_key;
use crate::client::{UpBody, UpstreamError};
use crate::filters::{grpc_response, is_grpc};
use crate::http::{ProxyBody, error_response};
use crate::resilience::deadline::{self, format_grpc_timeout, itoa_buf, parse_grpc_timeout};
use crate::resilience::outlier::Outcome;
use crate::resilience::retry::{AttemptError, DEFAULT_POLICY, retries_error};
use crate::route::endpoint_hop;
use crate::telemetry::exchange::Upstream;
use crate::traffic::BackendRt;

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// gRPC DEADLINE_EXCEEDED.
const GRPC_DEADLINE_EXCEEDED: u32 = 4;
/// The latency recorded for an attempt that failed, so peak-EWMA steers away from an endpoint
/// that fails fast instead of favouring it.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// What governs a routed request's attempts.
#[derive(Debug)]
pub(super) struct Attempts<'a> {
    pub policy: &'a RetryPolicy,
    pub timeout: Option<std::time::Duration>,
    pub mirrors: MirrorSet<'a>,
}

impl Attempts<'static> {
    /// The default retry policy, no mirrors.
    pub fn default_for(timeout: Option<Duration>) -> Self {
        Self {
            policy: &DEFAULT_POLICY,
            timeout,
            mirrors: MirrorSet::default(),
        }
    }
}

/// A copy of a request head (method, URI, version, headers) for another attempt or a mirror.
pub(super) fn clone_head(head: &Request<()>) -> Request<()> {
    let mut r = Request::new(());
    *r.method_mut() = head.method().clone();
    *r.uri_mut() = head.uri().clone();
    *r.version_mut() = head.version();
    *r.headers_mut() = head.headers().clone();
    r
}

/// The consistent-hash key of a request, when the backend hashes and the request has one.
fn request_hash<B>(
    key: Option<&HashKey>,
    req: &Request<B>,
    peer: Option<SocketAddr>,
) -> Option<u64> {
    match key? {
        HashKey::Header(name) => req
            .headers()
            .get(name.as_str())
            .map(|v| hash_key(v.as_bytes())),
        HashKey::Cookie { name, .. } => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(n, _)| n == name)
            .map(|(_, v)| hash_key(v.as_bytes())),
        HashKey::SourceIp => peer.map(|p| match p.ip() {
            std::net::IpAddr::V4(v4) => hash_key(&v4.octets()),
            std::net::IpAddr::V6(v6) => hash_key(&v6.octets()),
        }),
        HashKey::QueryParameter(name) => req
            .uri()
            .query()?
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(n, _)| n == name)
            .map(|(_, v)| hash_key(v.as_bytes())),
    }
}

/// A session cookie for a request without one, when the backend hashes on a cookie with a TTL
/// (Envoy's rule): a random value that keys this request and is set on its answer, so the
/// client's next requests hash to the same endpoint.
fn new_session_cookie(key: Option<&HashKey>) -> Option<(u64, HeaderValue)> {
    let Some(HashKey::Cookie {
        name,
        ttl: Some(ttl),
        path,
    }) = key
    else {
        return None;
    };
    let value = format!("{:016x}", crate::split::next_u64());
    let mut cookie = format!("{name}={value}; Max-Age={}", ttl.as_secs());
    if let Some(path) = path {
        cookie.push_str("; Path=");
        cookie.push_str(path);
    }
    cookie.push_str("; HttpOnly");
    Some((
        hash_key(value.as_bytes()),
        HeaderValue::from_str(&cookie).ok()?,
    ))
}

pub(super) async fn run(
    fwd: &HttpForward,
    backend: &BackendRt,
    req: Request<UpBody>,
    tagged: bool,
    a: Attempts<'_>,
) -> Response<ProxyBody> {
    let key = backend.hash_key.as_ref();
    let (hash, set_cookie) = match request_hash(key, &req, fwd.peer) {
        Some(hash) => (Some(hash), None),
        None => match new_session_cookie(key) {
            Some((hash, cookie)) => (Some(hash), Some(cookie)),
            None => (None, None),
        },
    };
    let mut resp = run_timed(fwd, backend, req, tagged, a, hash).await;
    if let Some(cookie) = set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    resp
}

async fn run_timed(
    fwd: &HttpForward,
    backend: &BackendRt,
    req: Request<UpBody>,
    tagged: bool,
    a: Attempts<'_>,
    hash: Option<u64>,
) -> Response<ProxyBody> {
    let grpc = is_grpc(req.headers());
    let caller = req
        .headers()
        .get(GRPC_TIMEOUT)
        .filter(|_| grpc)
        .and_then(|v| parse_grpc_timeout(v.as_bytes()));
    let Some(timeout) = deadline::effective(a.timeout, caller) else {
        return attempts(fwd, backend, req, tagged, &a, Deadlines::default(), hash).await;
    };
    let ends = Instant::now() + timeout;
    let limits = Deadlines {
        grpc: grpc.then_some(ends),
        body: Some((ends, grpc)),
    };
    match tokio::time::timeout(
        timeout,
        attempts(fwd, backend, req, tagged, &a, limits, hash),
    )
    .await
    {
        Ok(resp) => resp,
        Err(_) => {
            fwd.ctx.metrics.request_timeout(fwd.direction);
            tracing::debug!(backend = %backend.authority, ?timeout, "request timed out");
            if grpc {
                grpc_response(
                    GRPC_DEADLINE_EXCEEDED,
                    "deadline exceeded",
                    "request timeout",
                )
            } else {
                error_response(StatusCode::GATEWAY_TIMEOUT, "request timeout")
            }
        }
    }
}

/// When a request must be done by: the gRPC deadline sent upstream, and the end of the
/// response body (with whether to end it as gRPC).
#[derive(Clone, Copy, Debug, Default)]
struct Deadlines {
    grpc: Option<Instant>,
    body: Option<(Instant, bool)>,
}

/// How one attempt ended without an answer.
fn classify(e: &UpstreamError) -> AttemptError {
    if matches!(e, UpstreamError::Originate { .. }) {
        AttemptError::TlsOrigination
    } else if e.is_connect() {
        AttemptError::Connect
    } else if e.is_refused_stream() {
        AttemptError::RefusedStream
    } else {
        AttemptError::Reset
    }
}

fn failure_response(e: AttemptError) -> Response<ProxyBody> {
    match e {
        AttemptError::Connect => error_response(StatusCode::BAD_GATEWAY, "upstream connect failed"),
        AttemptError::TlsOrigination => {
            error_response(StatusCode::BAD_GATEWAY, "upstream TLS origination failed")
        }
        AttemptError::RefusedStream | AttemptError::Reset => {
            error_response(StatusCode::BAD_GATEWAY, "upstream reset")
        }
        AttemptError::PerTryTimeout => {
            error_response(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
        }
    }
}

async fn attempts(
    fwd: &HttpForward,
    backend: &BackendRt,
    req: Request<UpBody>,
    tagged: bool,
    a: &Attempts<'_>,
    deadlines: Deadlines,
    hash: Option<u64>,
) -> Response<ProxyBody> {
    let metrics = &fwd.ctx.metrics;
    let dir = fwd.direction;
    let mut request_slot = match backend.limits.request() {
        Ok(slot) => Some(slot),
        Err(why) => {
            metrics.circuit_breaker(dir, why);
            return error_response(StatusCode::SERVICE_UNAVAILABLE, why.reason());
        }
    };
    backend.deposit();
    let (parts, body) = req.into_parts();
    let retries_wanted = a.policy.attempts > 0;
    let mirrors_wanted = !a.mirrors.mirrors.is_empty();
    let mut body = match ReqBody::prepare(body, retries_wanted, mirrors_wanted).await {
        Ok(body) => body,
        Err(e) => {
            tracing::debug!(error = %e, "request body failed while buffering");
            return error_response(StatusCode::BAD_REQUEST, "request body failed");
        }
    };
    let head = Request::from_parts(parts, ());
    mirror(fwd, a.mirrors, &head, &body);
    let retries = if body.replayable() {
        a.policy.attempts
    } else {
        0
    };
    let mut head = Some(head);
    let mut exclude = None;
    let mut last: Option<Response<ProxyBody>> = None;
    let mut timeout_buf = itoa_buf::Buf::default();
    for n in 0..=retries {
        let mut _retry_slot = None;
        if n > 0 {
            if !body.replayable() {
                tracing::debug!(backend = %backend.authority, "request body cannot be replayed; not retrying");
                break;
            }
            if !backend.try_retry() {
                metrics.retry_budget_exhausted(dir);
                break;
            }
            match backend.limits.retry() {
                Ok(slot) => _retry_slot = Some(slot),
                Err(why) => {
                    metrics.circuit_breaker(dir, why);
                    break;
                }
            }
            metrics.retry(dir);
        }
        backend.sweep();
        let Some(ep) = backend.balancer.pick(hash, exclude).cloned() else {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "no endpoints");
        };
        let hop = endpoint_hop(ep.endpoint());
        if fwd.is_loop(hop) {
            return error_response(StatusCode::BAD_GATEWAY, "forwarding loop");
        }
        let last_try = n == retries;
        let this_head = if last_try {
            head.take()
        } else {
            head.as_ref().map(clone_head)
        };
        let (Some(this_head), Some(this_body)) = (this_head, body.for_attempt()) else {
            break;
        };
        let mut req = this_head.map(|()| this_body);
        if let Some(deadline) = deadlines.grpc {
            let mut left = deadline.saturating_duration_since(Instant::now());
            if let Some(per_try) = a.policy.per_try_timeout {
                left = left.min(per_try);
            }
            if let Ok(v) = HeaderValue::from_str(format_grpc_timeout(left, &mut timeout_buf)) {
                req.headers_mut().insert(GRPC_TIMEOUT, v);
            }
        }
        // Every HTTP/1.1 exchange holds a connection of its own; the meshed hop and HTTP/2
        // multiplex one connection per endpoint.
        let connection = if hop.meshed || req.version() == Version::HTTP_2 {
            None
        } else if n == 0 {
            match backend.limits.connection().await {
                Ok(permit) => permit,
                Err(why) => {
                    metrics.circuit_breaker(dir, why);
                    return error_response(StatusCode::SERVICE_UNAVAILABLE, why.reason());
                }
            }
        } else {
            // The answer being retried may hold the last free connection: a retry never waits.
            match backend.limits.try_connection() {
                Ok(permit) => permit,
                Err(why) => {
                    metrics.circuit_breaker(dir, why);
                    break;
                }
            }
        };
        let in_flight = ep.start();
        let sent = fwd.send(hop, req, tagged, &backend.pool_options);
        let result: Result<Response<RespBody>, AttemptError> = match a.policy.per_try_timeout {
            Some(t) => match tokio::time::timeout(t, sent).await {
                Ok(r) => r.map_err(|e| log_failure(backend, hop.addr, &e)),
                Err(_) => Err(AttemptError::PerTryTimeout),
            },
            None => sent.await.map_err(|e| log_failure(backend, hop.addr, &e)),
        };
        exclude = Some(hop.addr);
        match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if status >= 500 {
                    in_flight.observe_at_least(FAILURE_PENALTY);
                } else {
                    in_flight.observe();
                }
                if backend.record(&ep, Outcome::of_status(status)) {
                    metrics.outlier_ejection(dir);
                }
                let grpc_status = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
                let retry = !last_try && a.policy.on.retries_response(status, grpc_status);
                let held = Held {
                    in_flight: Some(in_flight),
                    connection,
                    request: if retry { None } else { request_slot.take() },
                };
                let body_deadline = deadlines.body.map(|(at, grpc)| BodyDeadline {
                    sleep: Box::pin(tokio::time::sleep_until(at)),
                    grpc,
                    metrics: fwd.ctx.metrics.clone(),
                    direction: dir,
                });
                let mut resp = guarded(resp, held, body_deadline);
                let up = Upstream::of(&mut resp);
                up.endpoint = Some(ep.clone());
                // As the client decides: a meshed peer with an identity, a certificate in
                // hand, and no DISABLE policy.
                up.tls = hop.identity.is_some()
                    && !backend.pool_options.plaintext
                    && fwd.ctx.identity.is_certified();
                if !retry {
                    return resp;
                }
                last = Some(resp);
            }
            Err(e) => {
                in_flight.observe_at_least(FAILURE_PENALTY);
                drop(in_flight);
                if backend.record(&ep, Outcome::GatewayError) {
                    metrics.outlier_ejection(dir);
                }
                let mut resp = failure_response(e);
                Upstream::of(&mut resp).endpoint = Some(ep.clone());
                if last_try || !retries_error(&a.policy.on, e) {
                    return resp;
                }
                last = Some(resp);
            }
        }
    }
    last.unwrap_or_else(|| error_response(StatusCode::SERVICE_UNAVAILABLE, "no endpoints"))
}

fn log_failure(backend: &BackendRt, addr: SocketAddr, e: &UpstreamError) -> AttemptError {
    tracing::warn!(backend = %backend.authority, hop = %addr, error = %e, "upstream request failed");
    classify(e)
}

fn guarded(
    resp: Response<RespBody>,
    held: Held,
    deadline: Option<BodyDeadline>,
) -> Response<ProxyBody> {
    let (parts, body) = downstream_parts(resp);
    Response::from_parts(parts, Guarded::new(body, held, deadline).boxed())
}
