//! One gateway listener's connections: accept until the listener is removed or the drain
//! starts; per connection read the listener's current config once, then serve plain HTTP
//! (routed by `Host`, or 301 to https for `httpsRedirect` hosts), TLS (passed through by SNI,
//! or terminated with the SNI's certificate and routed as HTTP), or TCP. HTTP connections are
//! served by [`super::http_conn`], under the sidecar's server limits and `--idle-timeout`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use trellis_identity::gateway_tls;
use trellis_model::gateway::{ListenerProtocol, best_host, host_matches, request_host};

use super::ListenerRt;
use crate::forward::HttpForward;
use crate::http::{ProxyBody, error_response};
use crate::limits::Limit;
use crate::listen::accept_loop;
use crate::route::Dest;
use crate::serve::{Ctx, Downstream, serve_opaque};
use crate::telemetry::Direction;
use crate::transport::{CountingIo, PrefixedIo};

/// Accepts with the sidecar's accept loop (and its `--max-connections`) until `stop`:
/// dropping the loop closes the socket, and the connections it started finish in the tracker.
pub(super) async fn accept(
    socket: TcpListener,
    ctx: Arc<Ctx>,
    rt_rx: watch::Receiver<Arc<ListenerRt>>,
    stop: CancellationToken,
) {
    let serve_ctx = ctx.clone();
    let accepting = accept_loop(
        "gateway",
        Direction::Outbound,
        socket,
        ctx,
        move |stream, peer| {
            // A connection keeps the listener config it was accepted with.
            let rt = rt_rx.borrow().clone();
            if rt.mesh_only && !from_own_address(&stream, peer) {
                tracing::debug!(%peer, port = rt.port, "ISTIO_MUTUAL gateway port: not from the inbound listener; closing");
                return None;
            }
            Some(serve(serve_ctx.clone(), rt, stream, peer))
        },
    );
    tokio::select! {
        () = stop.cancelled() => {}
        () = accepting => {}
    }
}

/// Whether a connection comes from the address it reached (the pod's own IP, or loopback):
/// how the inbound listener connects when it hands over a request whose mTLS it terminated.
/// A client elsewhere on the network has its own address.
fn from_own_address(stream: &TcpStream, peer: SocketAddr) -> bool {
    stream
        .local_addr()
        .is_ok_and(|local| local.ip() == peer.ip() || peer.ip().is_loopback())
}

async fn serve(ctx: Arc<Ctx>, rt: Arc<ListenerRt>, stream: TcpStream, peer: SocketAddr) {
    ctx.metrics.detection(
        Direction::Outbound,
        crate::telemetry::DetectOutcome::OpaquePort,
    );
    let io = CountingIo::new(stream, ctx.metrics.clone(), Direction::Outbound);
    match rt.protocol {
        ListenerProtocol::Http => serve_http(ctx, rt, io, peer, false, None, false).await,
        ListenerProtocol::Tcp => {
            let Some((_, dest)) = rt.passthrough.first() else {
                return;
            };
            let tag = io.tag();
            serve_opaque(&ctx, Direction::Outbound, io, dest, rt.port, &tag).await
        }
        ListenerProtocol::Https | ListenerProtocol::Tls => serve_tls(ctx, rt, io, peer).await,
    }
}

/// Reads the ClientHello (bounded by the detect timeout and its size) to learn the SNI.
pub(super) async fn read_sni<I: tokio::io::AsyncRead + Unpin>(
    io: &mut I,
    ctx: &Ctx,
) -> Option<(BytesMut, Option<String>)> {
    let mut prefix = BytesMut::with_capacity(1024);
    let sni = crate::tls::accept::read_sni(io, &mut prefix, ctx.detect_timeout).await?;
    Some((prefix, sni))
}

async fn serve_tls(
    ctx: Arc<Ctx>,
    rt: Arc<ListenerRt>,
    mut io: CountingIo<TcpStream>,
    peer: SocketAddr,
) {
    let Some((prefix, sni)) = read_sni(&mut io, &ctx).await else {
        tracing::debug!(%peer, port = rt.port, "gateway TLS connection without a readable ClientHello; closing");
        return;
    };
    let host = sni.clone().unwrap_or_default();
    // Passthrough or termination: the most specific host pattern among both decides.
    let candidates = rt
        .passthrough
        .iter()
        .enumerate()
        .map(|(i, (h, _))| (&h[..], (true, i)))
        .chain(
            rt.tls
                .iter()
                .enumerate()
                .map(|(i, (h, _))| (&h[..], (false, i))),
        );
    let chosen = match sni {
        Some(_) => best_host(candidates, &host),
        // No SNI: the first certificate (clients that send none get the default server).
        None => (!rt.tls.is_empty()).then_some((false, 0)),
    };
    let tag = io.tag();
    let io = PrefixedIo::new(prefix, io);
    match chosen {
        Some((true, i)) => {
            let dest = &rt.passthrough[i].1;
            serve_opaque(&ctx, Direction::Outbound, io, dest, rt.port, &tag).await
        }
        Some((false, i)) => {
            let config = rt.tls[i].1.clone();
            // A client that stalls mid-handshake would hold its connection as a slow request
            // head does: the handshake gets the head's time (`--header-read-timeout`).
            let within = ctx.admission.limits().header_read_timeout;
            let handshake = gateway_tls::accept(io, |_| Some(config));
            match tokio::time::timeout(within, handshake).await {
                Ok(Ok(accepted)) => {
                    let (stream, sni, h2) = (accepted.stream, accepted.server_name, accepted.h2);
                    serve_http(ctx, rt, stream, peer, true, sni, h2).await
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, port = rt.port, error = %e, "gateway TLS handshake failed")
                }
                Err(_elapsed) => {
                    ctx.metrics
                        .limits
                        .rejected(Direction::Outbound, Limit::HeaderTimeout);
                    tracing::debug!(%peer, port = rt.port, "gateway TLS handshake not done within --header-read-timeout; closing");
                }
            }
        }
        None => {
            tracing::info!(%peer, port = rt.port, sni = %host, "no gateway host for this SNI; closing");
        }
    }
}

/// Serves HTTP on `io` (plain, or inside TLS the gateway terminated with `secure`), routed by
/// host; `alpn_h2`: the TLS handshake chose HTTP/2.
async fn serve_http<I: Downstream>(
    ctx: Arc<Ctx>,
    rt: Arc<ListenerRt>,
    io: I,
    peer: SocketAddr,
    secure: bool,
    sni: Option<String>,
    alpn_h2: bool,
) {
    let router = Router {
        ctx: ctx.clone(),
        rt,
        peer,
        secure,
        // Shared by the connection's requests without copying the name for each.
        sni: sni.map(Arc::from),
    };
    super::http_conn::serve(&ctx, io, alpn_h2, router).await;
}

/// What answers one connection's requests: the listener's config it was accepted with, and
/// what the connection says about the client.
#[derive(Clone)]
pub(super) struct Router {
    ctx: Arc<Ctx>,
    rt: Arc<ListenerRt>,
    pub(super) peer: SocketAddr,
    secure: bool,
    sni: Option<Arc<str>>,
}

impl Router {
    pub(super) async fn answer(
        self,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let sni = self.sni.as_deref();
        Ok(route(self.ctx, &self.rt, req, self.peer, self.secure, sni).await)
    }
}

/// The host a request is for: the URI's authority (HTTP/2, absolute-form) or `Host`.
fn host_of(req: &Request<Incoming>) -> String {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
        .unwrap_or_default();
    request_host(authority)
}

async fn route(
    ctx: Arc<Ctx>,
    rt: &ListenerRt,
    req: Request<Incoming>,
    peer: SocketAddr,
    secure: bool,
    sni: Option<&str>,
) -> Response<ProxyBody> {
    let host = host_of(&req);
    if !secure && rt.https_redirect.iter().any(|p| host_matches(p, &host)) {
        return redirect(&req, &host);
    }
    // Over TLS the request's host must be one the handshake's certificate was chosen for:
    // otherwise a client could reach any host with any host's certificate (421, RFC 9110).
    if let Some(sni) = sni
        && sni != host
        && !rt.tls.iter().any(|(hosts, _)| {
            hosts.iter().any(|p| host_matches(p, sni))
                && hosts.iter().any(|p| host_matches(p, &host))
        })
    {
        return error_response(StatusCode::MISDIRECTED_REQUEST, "misdirected request");
    }
    let vhosts = rt.vhosts.iter().map(|(h, d)| (&h[..], d));
    let Some(dest): Option<&Dest> = best_host(vhosts, &host) else {
        return error_response(StatusCode::NOT_FOUND, "no route");
    };
    let forward = HttpForward::new(ctx, Direction::Outbound, dest.clone()).with_peer(Some(peer));
    match forward.handle(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// 301 to the same host and path over https (Istio `httpsRedirect`).
fn redirect(req: &Request<Incoming>, host: &str) -> Response<ProxyBody> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{path}");
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
