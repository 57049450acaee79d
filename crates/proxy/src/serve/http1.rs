//! An HTTP/1.1 server connection: the direct path ([`super::h1direct`]) for the common
//! requests, then hyper's server from the first head it does not serve; with the head timer,
//! the idle timeout and the limits. Each request is forwarded, upgrades included.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::h1direct::{DirectServer, Ended};
use super::recycle::Recycled;
use super::{Ctx, Downstream, drain};
use crate::forward::HttpForward;
use crate::limits::idle::IdleConn;
use crate::limits::{Limit, ServerLimits};
use crate::transport::{HeadTimer, PrefixedIo};

pub(super) async fn serve_http1(
    ctx: &Ctx,
    io: impl Downstream,
    forward: HttpForward,
    peer: Option<SocketAddr>,
) {
    let direction = forward.direction();
    let idle = IdleConn::start(
        ctx.admission.limits().idle_timeout,
        &ctx.shutdown,
        &ctx.metrics,
        direction,
    );
    // The header-read timeout's timer, one tokio sleep per connection (not per request); it
    // watches the IO to tell a slow head from an idle keep-alive connection.
    let timer = HeadTimer::watching(peer, &ctx.admission);
    let mut io = timer.watch(io);
    let mut buf = BytesMut::new();
    let limits = ctx.admission.limits();
    let res = idle
        .serve_http1(async {
            // The common requests first, on the direct path; hyper's server takes the rest of
            // the connection at the first head that path does not serve.
            let drained = AtomicBool::new(false);
            let direct = DirectServer {
                forward: &forward,
                idle: &idle,
                timer: &timer,
                limits,
                drained: &drained,
            };
            let ended = drain::serve_until_drained(
                idle.token(),
                std::pin::pin!(direct.serve(&mut io, &mut buf)),
                |_| drained.store(true, Relaxed),
            )
            .await;
            match ended {
                Ended::HandOff => {}
                Ended::Closed => return Ok(()),
                Ended::TimedOut => {
                    crate::limits::server::limit_ended(
                        Limit::HeaderTimeout,
                        direction,
                        peer.map(|p| p.ip()),
                        timer.head_started(),
                        &ctx.admission,
                        &ctx.metrics.limits,
                    );
                    return Ok(());
                }
            }
            serve_with_hyper(&idle, &timer, limits, PrefixedIo::new(buf, io), forward).await
        })
        .await;
    if let Err(e) = res {
        // Counted, and a slow or oversized head is a strike against the peer's address.
        crate::limits::server::connection_ended(
            &e,
            direction,
            peer.map(|p| p.ip()),
            timer.head_started(),
            &ctx.admission,
            &ctx.metrics.limits,
        );
        tracing::debug!(error = %e, "HTTP/1 connection ended with an error");
    }
}

/// hyper's HTTP/1.1 server on the rest of a connection, from the head the direct path handed
/// over: with the head timer, the limits and upgrades; each request is forwarded.
async fn serve_with_hyper(
    idle: &IdleConn,
    timer: &HeadTimer,
    limits: &ServerLimits,
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    forward: HttpForward,
) -> Result<(), hyper::Error> {
    // On the heap: the forward's future is about 9 KiB, and hyper's dispatcher and the idle
    // tracker move it on the way in; copying it cost about 15k instructions per request (the
    // CI smoke run caught it: 37k -> 53k per hop). A box moves as a pointer, and a recycled
    // one also skips the allocator's slow path for blocks that large (`recycle`).
    let svc = idle.service(move |req| Recycled::new(|| forward.clone().handle(req)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(timer.clone());
    crate::limits::server::http1(&mut builder, limits);
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    // On shutdown: finishes the in-flight request, then closes instead of keeping the
    // connection alive. Not a `select!`, which would poll the shutdown signal on every wake-up.
    // The idle timeout shuts an idle connection down the same way.
    drain::serve_until_drained(idle.token(), conn.as_mut(), |c| c.graceful_shutdown()).await
}
