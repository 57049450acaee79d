//! Forwarding one HTTP request: a fixed hop (inbound, passthrough) is sent as is; a discovered
//! destination goes through its routes (`routed`: match, filters, split, mirrors) and
//! attempts (`attempt`: timeouts, retries, budget, limits, balancer, outlier detection).
//! Every hop gets the header and version rules of [`crate::http`]; failures become the proxy's
//! own responses, made here once. Upgrades (WebSocket and others) are forwarded over HTTP/1.1
//! and, on `101`, joined into a byte tunnel.
//!
//! Bodies stream: the downstream body is handed to the upstream client and the upstream's body
//! back, so flow control and trailers (gRPC status) pass through untouched. A request that may
//! be retried keeps a copy of up to 64 KiB as it streams ([`replay`]); only a request with
//! mirrors and a small body of declared length is read whole first ([`body`]).

mod attempt;
pub mod body;
pub mod replay;
mod routed;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::client::{PoolOptions, RespBody, UpBody, UpstreamError};
use crate::http::{
    HopVersion, ORIG_PROTO, ORIG_PROTO_HTTP1, ProxyBody, TARGET_PORT, choose_version,
    error_response, strip_hop_by_hop, strip_request, to_http1, to_http2,
};
use crate::route::{Dest, Hop, Next};
use crate::serve::Ctx;
use crate::telemetry::Direction;
use crate::telemetry::memo::SeriesMemo;
use crate::tls::PeerIdentity;
use crate::transport::is_own_listener;
use trellis_model::wasm::Phase;

/// Forwards the requests of one downstream connection; cheap to clone per request.
#[derive(Clone, Debug)]
pub struct HttpForward {
    ctx: Arc<Ctx>,
    direction: Direction,
    dest: Arc<Dest>,
    /// The downstream peer, for consistent hashing on the source IP.
    peer: Option<SocketAddr>,
    /// Inbound over mesh mTLS: the peer proxy's verified identity, put in each request's
    /// extensions for telemetry and authorization.
    peer_identity: Option<PeerIdentity>,
    /// The connection's last request series: its next request with the same labels skips
    /// the registry lookup.
    series_memo: Option<Arc<SeriesMemo>>,
}

impl HttpForward {
    pub fn new(ctx: Arc<Ctx>, direction: Direction, dest: Dest) -> Self {
        Self {
            ctx,
            direction,
            dest: Arc::new(dest),
            peer: None,
            peer_identity: None,
            series_memo: Some(Arc::default()),
        }
    }

    /// Marks the connection as mesh mTLS from `id`.
    pub fn with_peer_identity(mut self, id: Option<PeerIdentity>) -> Self {
        self.peer_identity = id;
        self
    }

    pub fn with_peer(mut self, peer: Option<SocketAddr>) -> Self {
        self.peer = peer;
        self
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The hyper service entry point: never fails, errors become responses.
    pub async fn handle(self, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        self.handle_up(req.map(crate::client::up_body)).await
    }

    /// [`Self::handle`] for a request whose body is already an [`UpBody`] (the direct server
    /// path's, which has none).
    pub async fn handle_up(
        mut self,
        mut req: Request<UpBody>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        if let Some(id) = &self.peer_identity {
            req.extensions_mut().insert(id.clone());
        }
        let telemetry = self.ctx.telemetry.clone();
        let (mut exchange, mut req) = telemetry.begin(self.direction, req, self.peer);
        // Moved, not cloned: `self` is this request's copy of the connection's forwarder.
        exchange.use_memo(self.series_memo.take());
        // The proxy's own limits and load shedding come first: a refusal costs nothing more.
        // The guard counts the request in flight until its response head is returned.
        let _in_flight =
            match self
                .ctx
                .admission
                .admit(self.direction, &req, &self.ctx.metrics.limits)
            {
                Ok(guard) => guard,
                Err(refused) => return Ok(telemetry.end(exchange, *refused)),
            };
        // Wasm plugins run at their phase: AUTHN before authentication, AUTHZ before
        // authorization, the rest before forwarding; their answers are exchanges too.
        let host = &self.ctx.metrics.wasm;
        let mut wasm = (!host.is_idle()).then(|| {
            let port = crate::wasm::request_port(&self.dest, &req);
            host.begin(self.direction, port, self.peer)
                .with_calls(Arc::new(crate::wasm::MeshCalls(self.ctx.clone())))
        });
        if let Some(w) = wasm.as_mut()
            && let Some(resp) = Box::pin(w.run_until(Phase::Authn, &mut req)).await
        {
            return Ok(telemetry.end(exchange, resp));
        }
        // Authentication runs before authorization, which reads the `RequestAuth` it leaves
        // in the extensions; a 401 is still counted and logged as an exchange.
        if self.direction == Direction::Inbound
            && let Err(rejected) = self.ctx.authn.authenticate(&mut req).await
        {
            return Ok(telemetry.end(exchange, rejected.response()));
        }
        if let Some(w) = wasm.as_mut()
            && let Some(resp) = Box::pin(w.run_until(Phase::Authz, &mut req)).await
        {
            return Ok(telemetry.end(exchange, resp));
        }
        // Authorization runs after authentication (it reads the `RequestAuth` left in the
        // extensions); a denial is still an exchange (counted, logged, traced).
        if self.direction == Direction::Inbound
            && let Some(denied) = self
                .ctx
                .metrics
                .authz
                .check_http(&req, self.peer, &self.dest)
        {
            return Ok(telemetry.end(exchange, denied));
        }
        // Local rate limits (RateLimitPolicy) count what authorization let through.
        if self.direction == Direction::Inbound
            && let Some(limited) = self.ctx.rate_limits.check(&req, self.peer)
        {
            self.ctx.metrics.limits.rate_limited(self.direction);
            return Ok(telemetry.end(exchange, limited));
        }
        if let Some(w) = wasm.as_mut()
            && let Some(resp) = Box::pin(w.run_until(Phase::UnspecifiedPhase, &mut req)).await
        {
            return Ok(telemetry.end(exchange, resp));
        }
        // A body of unknown length is cut at `--max-request-body-size` as it streams.
        let limit = self.ctx.admission.limits().max_request_body_bytes;
        let (req, body_cap) =
            crate::limits::body::cap(limit, &self.ctx.metrics, self.direction, req);
        let mut resp = match wasm.as_mut() {
            // A plugin may answer from the request body while it streams upstream.
            Some(w) if w.may_answer_from_body() => Box::pin(w.forward(self.forward(req))).await,
            _ => self.forward(req).await,
        };
        resp = body_cap.answer(resp);
        if let Some(w) = wasm.as_mut() {
            Box::pin(w.respond(&mut resp)).await;
        }
        Ok(telemetry.end(exchange, resp))
    }

    /// Sends a request on (also a Wasm plugin's HTTP call, `wasm::MeshCalls`).
    pub(crate) async fn forward(&self, mut req: Request<UpBody>) -> Response<ProxyBody> {
        let found = strip_request(&mut req);
        let upgrade = found.upgrade;
        // Like the version tag, the port hint only means something coming from a peer proxy.
        let requested_port = found
            .target_port
            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
            .filter(|_| self.direction == Direction::Inbound);
        // The tag is only meaningful on the meshed hop; whatever an application sent is dropped.
        let tagged = found.orig_proto.is_some_and(|v| v == ORIG_PROTO_HTTP1)
            && self.direction == Direction::Inbound;
        let next = match self.dest.next(requested_port).await {
            Ok(next) => next,
            Err(no_hop) => {
                tracing::info!(direction = self.direction.as_str(), uri = %req.uri(), reason = no_hop.reason(), "no hop for request");
                return error_response(no_hop.status(), no_hop.reason());
            }
        };
        match next {
            Next::Routed(plan) => routed::forward(self, &plan, req, upgrade, tagged).await,
            Next::Hop(hop) => {
                if self.is_loop(hop) {
                    return error_response(StatusCode::BAD_GATEWAY, "forwarding loop");
                }
                if upgrade {
                    // Boxed, as every rare path here: see `forward_upgrade`.
                    return Box::pin(self.forward_upgrade(hop, req)).await;
                }
                match self.send(hop, req, tagged, &PoolOptions::default()).await {
                    Ok(resp) => downstream_response(resp, false),
                    Err(e) => {
                        tracing::warn!(direction = self.direction.as_str(), hop = %hop.addr, error = %e, "upstream request failed");
                        error_response(StatusCode::BAD_GATEWAY, e.reason())
                    }
                }
            }
        }
    }

    fn is_loop(&self, hop: Hop<'_>) -> bool {
        let looped = is_own_listener(hop.addr, &self.ctx.listeners);
        if looped {
            tracing::warn!(direction = self.direction.as_str(), hop = %hop.addr, "request would loop into the proxy");
        }
        looped
    }

    /// Sends one request on `hop` with the hop's version and header rules.
    async fn send(
        &self,
        hop: Hop<'_>,
        mut req: Request<UpBody>,
        tagged: bool,
        opts: &PoolOptions,
    ) -> Result<Response<RespBody>, UpstreamError> {
        if let Some(port) = hop.target_port.filter(|_| hop.meshed) {
            req.headers_mut()
                .insert(TARGET_PORT, HeaderValue::from(port));
        }
        if hop.meshed && self.direction == Direction::Outbound {
            self.ctx.telemetry.tag_meshed_hop(req.headers_mut());
        }
        let (version, tag) = choose_version(
            self.direction,
            req.version(),
            false,
            hop.meshed.then(|| {
                opts.h2_upgrade
                    .unwrap_or_else(|| self.ctx.discovery.mesh_h2_upgrade().upgrade())
            }),
            tagged,
        );
        match version {
            HopVersion::Http1 => {
                to_http1(&mut req);
                let resp = self
                    .ctx
                    .upstreams
                    .send_http1(hop.addr, req, opts, hop.identity, hop.sni)
                    .await?;
                Ok(resp)
            }
            HopVersion::Http2 => {
                to_http2(&mut req, hop.addr);
                if tag {
                    req.headers_mut().insert(ORIG_PROTO, ORIG_PROTO_HTTP1);
                }
                let resp = self
                    .ctx
                    .upstreams
                    .send_http2(hop.addr, req, opts, hop.identity, hop.sni)
                    .await?;
                Ok(resp.map(RespBody::Http2))
            }
        }
    }

    async fn forward_upgrade(&self, hop: Hop<'_>, mut req: Request<UpBody>) -> Response<ProxyBody> {
        if let Some(port) = hop.target_port.filter(|_| hop.meshed) {
            req.headers_mut()
                .insert(TARGET_PORT, HeaderValue::from(port));
        }
        let downstream = hyper::upgrade::on(&mut req);
        to_http1(&mut req);
        let mut resp = match self
            .ctx
            .upstreams
            .send_upgrade(hop.addr, req, hop.identity, hop.sni)
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(direction = self.direction.as_str(), hop = %hop.addr, error = %e, "upstream upgrade failed");
                return error_response(StatusCode::BAD_GATEWAY, e.reason());
            }
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return downstream_response(resp.map(RespBody::Http1), false);
        }
        let upstream = hyper::upgrade::on(&mut resp);
        let direction = self.direction;
        // Tracked so that a graceful drain waits for open tunnels (up to the drain timeout).
        self.ctx.tracker.spawn(async move {
            match tokio::try_join!(downstream, upstream) {
                Ok((down, up)) => {
                    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                        tracing::debug!(direction = direction.as_str(), error = %e, "upgraded stream ended");
                    }
                }
                Err(e) => tracing::debug!(direction = direction.as_str(), error = %e, "upgrade did not complete"),
            }
        });
        downstream_response(resp.map(RespBody::Http1), true)
    }
}

/// A response's head with hop-by-hop headers removed, and its body.
fn downstream_parts(resp: Response<RespBody>) -> (http::response::Parts, RespBody) {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    (parts, body)
}

fn downstream_response(resp: Response<RespBody>, upgrade: bool) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    Response::from_parts(parts, body.boxed())
}

#[cfg(test)]
mod tests;
