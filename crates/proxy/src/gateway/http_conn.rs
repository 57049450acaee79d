//! Serving a gateway listener's HTTP connections (plain, or TLS the gateway terminated) under
//! the sidecar's server limits: HTTP/1 with hyper's HTTP/1 server and HTTP/2 with its HTTP/2
//! server, each configured by [`crate::limits::server`] (so `--max-request-headers-size` holds
//! for HTTP/1 heads too, answered 431), and every connection watched by `--idle-timeout`
//! ([`IdleConn`]). Refusals are counted in `trellis_limit_rejected_total{direction="outbound"}`,
//! like the rest of the gateway's traffic.
//!
//! Which of the two a client speaks: ALPN `h2` after a TLS handshake, otherwise its first bytes
//! (the HTTP/2 connection preface or not, as hyper-util's `auto` server judges). That read is
//! bounded by `--header-read-timeout` (a client that connects and sends nothing is closed and
//! counted as `header_timeout`) and ends early when the connection is found idle or the proxy
//! drains.

use bytes::BytesMut;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::conn::Router;
use crate::detect::H2_PREFACE;
use crate::limits::Limit;
use crate::limits::idle::IdleConn;
use crate::serve::drain::serve_until_drained;
use crate::serve::{Ctx, Downstream};
use crate::telemetry::Direction;
use crate::transport::{HeadTimer, PrefixedIo};

/// The gateway's traffic is counted as outbound (it originates requests into the mesh).
const DIRECTION: Direction = Direction::Outbound;

/// What a connection's first bytes say it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Speaks {
    Http1,
    Http2,
}

/// Serves `io` to its end with `router` answering each request. `alpn_h2`: a TLS handshake
/// chose `h2`, so no bytes need reading to know.
pub(super) async fn serve(ctx: &Ctx, mut io: impl Downstream, alpn_h2: bool, router: Router) {
    let limits = ctx.admission.limits();
    let idle = IdleConn::start(limits.idle_timeout, &ctx.shutdown, &ctx.metrics, DIRECTION);
    let mut prefix = BytesMut::new();
    let speaks = if alpn_h2 {
        Speaks::Http2
    } else {
        let read = tokio::time::timeout(limits.header_read_timeout, sniff(&mut io, &mut prefix));
        let sniffed = tokio::select! {
            sniffed = read => sniffed,
            // Idle (counted when `idle` drops) or draining: nothing was asked yet.
            () = idle.token().cancelled() => return,
        };
        match sniffed {
            Ok(Ok(Some(speaks))) => speaks,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "gateway HTTP connection failed before its first request");
                return;
            }
            Err(_elapsed) => {
                ctx.metrics.limits.rejected(DIRECTION, Limit::HeaderTimeout);
                return;
            }
        }
    };
    let router_peer = router.peer;
    let io = PrefixedIo::new(prefix, io);
    // Boxed, as the sidecar's: the forward's future is large, and hyper's dispatcher moves it
    // on the way in; a box moves as a pointer (see `crate::serve`).
    let svc = idle.service(move |req| Box::pin(router.clone().answer(req)));
    // The HTTP/1 connection's timer, which tells whether a head had started when the header
    // read timeout ended it (a slow client, not an idle keep-alive one); HTTP/2 has no such
    // timeout.
    let mut h1_timer: Option<HeadTimer> = None;
    let res = match speaks {
        Speaks::Http1 => {
            let mut builder = hyper::server::conn::http1::Builder::new();
            // The header-read timeout's timer, one tokio sleep per connection (not per
            // request); it watches the IO (the sniffed prefix included) to tell a slow head
            // from an idle keep-alive connection, and counts stalled heads against the client.
            let timer = HeadTimer::watching(Some(router_peer), &ctx.admission);
            builder.timer(timer.clone());
            crate::limits::server::http1(&mut builder, limits);
            let conn = builder
                .serve_connection(TokioIo::new(timer.watch(io)), svc)
                .with_upgrades();
            tokio::pin!(conn);
            // On a drain or the idle timeout: finish the request in flight, then close.
            let res = idle
                .serve_http1(serve_until_drained(idle.token(), conn.as_mut(), |c| {
                    c.graceful_shutdown()
                }))
                .await;
            h1_timer = Some(timer);
            res
        }
        Speaks::Http2 => {
            let io = TokioIo::new(io);
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            crate::limits::server::http2(&mut builder, limits);
            let conn = builder.serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => res,
                () = idle.token().cancelled() => {
                    // GOAWAY: open streams finish, no new ones are accepted.
                    conn.as_mut().graceful_shutdown();
                    idle.finish(conn.as_mut()).await
                }
            }
        }
    };
    if let Err(e) = res {
        // Counted, and a slow or oversized HTTP/1 head is a strike against the client's
        // address, as on the sidecar's listeners (`limits::penalty`).
        crate::limits::server::connection_ended(
            &e,
            DIRECTION,
            Some(router_peer.ip()),
            h1_timer.is_some_and(|t| t.head_started()),
            &ctx.admission,
            &ctx.metrics.limits,
        );
        tracing::debug!(error = %e, "gateway HTTP connection ended with an error");
    }
}

/// Reads until [`speaks`] decides: at most the preface's 24 bytes, and for HTTP/1 usually
/// one read. `None`: the client closed first.
async fn sniff<I: AsyncRead + Unpin>(
    io: &mut I,
    prefix: &mut BytesMut,
) -> std::io::Result<Option<Speaks>> {
    // Each pass reads at least one byte or returns, so the preface's length bounds the loop.
    loop {
        if let Some(speaks) = speaks(prefix) {
            return Ok(Some(speaks));
        }
        let want = (H2_PREFACE.len() - prefix.len()) as u64;
        if (&mut *io).take(want).read_buf(prefix).await? == 0 {
            return Ok(None);
        }
    }
}

/// HTTP/2 once `prefix` is the whole connection preface, HTTP/1 as soon as it differs from
/// it (hyper then judges the request head); `None` while it is a proper prefix of it.
fn speaks(prefix: &[u8]) -> Option<Speaks> {
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] != H2_PREFACE[..n] {
        Some(Speaks::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Speaks::Http2)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_decides() {
        assert_eq!(speaks(b""), None);
        assert_eq!(speaks(b"PRI * HTTP/2"), None);
        assert_eq!(speaks(H2_PREFACE), Some(Speaks::Http2));
        assert_eq!(speaks(b"G"), Some(Speaks::Http1));
        assert_eq!(speaks(b"PRI * HTTP/1.1\r\n"), Some(Speaks::Http1));
        // Garbage is HTTP/1's to refuse (400).
        assert_eq!(speaks(&[0, 1, 2]), Some(Speaks::Http1));
    }

    #[tokio::test]
    async fn sniffing_reads_no_further_than_the_preface() {
        let head = b"GET / HTTP/1.1\r\nhost: a.example.com\r\n\r\n";
        let (mut client, mut server) = tokio::io::duplex(256);
        tokio::io::AsyncWriteExt::write_all(&mut client, head)
            .await
            .unwrap();
        drop(client);
        let mut prefix = BytesMut::new();
        let got = sniff(&mut server, &mut prefix).await.unwrap();
        assert_eq!(got, Some(Speaks::Http1));
        assert!(!prefix.is_empty() && prefix.len() <= H2_PREFACE.len());
        // The rest is still there for hyper, after the prefix is replayed.
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!([&prefix[..], &rest[..]].concat(), head);

        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let closed = sniff(&mut server, &mut BytesMut::new()).await.unwrap();
        assert_eq!(closed, None, "closed before a byte");
    }
}
