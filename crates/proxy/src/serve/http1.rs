//! An HTTP/1.1 server connection: hyper's, with the head timer, the idle timeout and the
//! limits; each request is forwarded, upgrades included.

use std::net::SocketAddr;

use hyper_util::rt::TokioIo;

use super::recycle::Recycled;
use super::{Ctx, Downstream, drain};
use crate::forward::HttpForward;
use crate::limits::idle::IdleConn;
use crate::transport::HeadTimer;

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
    // On the heap: the forward's future is about 9 KiB, and hyper's dispatcher and the idle
    // tracker move it on the way in; copying it cost about 15k instructions per request (the
    // CI smoke run caught it: 37k -> 53k per hop). A box moves as a pointer, and a recycled
    // one also skips the allocator's slow path for blocks that large (`recycle`).
    let svc = idle.service(move |req| Recycled::new(|| forward.clone().handle(req)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The header-read timeout's timer, one tokio sleep per connection (not per request); it
    // watches the IO to tell a slow head from an idle keep-alive connection.
    let timer = HeadTimer::watching(peer, &ctx.admission);
    builder.timer(timer.clone());
    crate::limits::server::http1(&mut builder, ctx.admission.limits());
    let conn = builder
        .serve_connection(TokioIo::new(timer.watch(io)), svc)
        .with_upgrades();
    tokio::pin!(conn);
    // On shutdown: finishes the in-flight request, then closes instead of keeping the
    // connection alive. Not a `select!`, which would poll the shutdown signal on every wake-up.
    // The idle timeout shuts an idle connection down the same way.
    let res = idle
        .serve_http1(drain::serve_until_drained(
            idle.token(),
            conn.as_mut(),
            |c| c.graceful_shutdown(),
        ))
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
