//! An HTTP/2 server connection: each stream's request is forwarded; on drain or idle timeout
//! the connection sends GOAWAY and lets open streams finish.

use std::net::SocketAddr;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::recycle::Recycled;
use super::{Ctx, Downstream};
use crate::forward::HttpForward;
use crate::limits::idle::IdleConn;

pub(super) async fn serve_http2(
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
    // On the heap: hyper spawns each HTTP/2 stream as a task and moves the service's future
    // into it several times on the way; the forward's future is large, and copying it cost the
    // server side of an mTLS pair about half of its instructions per request (callgrind, memcpy
    // under hyper's execute_h2stream). A box moves as a pointer, and a recycled one also skips
    // the allocator's slow path for blocks that large (`recycle`).
    let svc = idle.service(move |req| Recycled::new(|| forward.clone().handle(req)));
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    crate::limits::server::http2(&mut builder, ctx.admission.limits());
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        _ = idle.token().cancelled() => {
            // Sends GOAWAY: open streams finish, no new ones are accepted.
            conn.as_mut().graceful_shutdown();
            idle.finish(conn.as_mut()).await
        }
    };
    if let Err(e) = res {
        // Counted, and a peer sent GOAWAY ENHANCE_YOUR_CALM is penalized at accept.
        crate::limits::server::connection_ended(
            &e,
            direction,
            peer.map(|p| p.ip()),
            false,
            &ctx.admission,
            &ctx.metrics.limits,
        );
        tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
    }
}
