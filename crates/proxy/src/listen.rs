//! The accept loop shared by every data listener: accept until the drain starts, hand each
//! connection to a tracked task, and back off briefly on accept errors (file descriptor
//! exhaustion would otherwise spin).
//!
//! What to do with a connection is the caller's closure; this module only accepts.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::limits::Limit;
use crate::serve::Ctx;
use crate::telemetry::Direction;

/// Pause after a failed `accept` before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Accepts after which the loop lets the rest of the runtime run. tokio lets a task accept up
/// to its cooperative budget (128) in one poll; a slowloris whose 500 connections (or, once
/// penalized, reconnects) arrive in one burst then kept the proxy's thread for a millisecond
/// or more while a good request that arrived in the burst waited (its p99 2-4x). Yielding
/// every few accepts bounds that wait to a few accepts. It costs a burst of connections (a
/// reschedule every 4), never a request on an open connection.
const ACCEPTS_PER_YIELD: u32 = 4;

/// Accepts until `ctx.shutdown` is cancelled; dropping the listener then refuses new
/// connections while the accepted ones finish.
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    direction: Direction,
    listener: TcpListener,
    ctx: Arc<Ctx>,
    on_accept: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    // `--max-connections`, counted per listener; the slot travels with the connection's task.
    let conns = crate::limits::conns::ConnLimit::new(ctx.admission.limits().max_connections);
    // Accepts since the loop last yielded.
    let mut accepts: u32 = 0;
    loop {
        if accepts >= ACCEPTS_PER_YIELD {
            accepts = 0;
            // Deferred until the runtime has polled its I/O driver, so the connections that
            // became ready in the burst (and the tasks just spawned) run first.
            tokio::task::yield_now().await;
        }
        let accepted = tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        if accepted.is_ok() {
            accepts += 1;
        }
        match accepted {
            Ok((stream, peer)) => {
                // An address just caught flooding HTTP/2 (limits::penalty): refused before it
                // costs a task, detection or a handshake; held unread a while, then closed.
                if !ctx.admission.abusive_peers().admit(peer.ip()) {
                    ctx.metrics.limits.rejected(direction, Limit::AbusivePeer);
                    tracing::debug!(listener = name, %peer, "abusive peer over its allowance; refused");
                    ctx.admission.abusive_peers().refuse(stream);
                    continue;
                }
                let Some(slot) = conns.try_acquire() else {
                    ctx.metrics.limits.rejected(direction, Limit::Connections);
                    tracing::debug!(listener = name, %peer, "connection limit reached; closing");
                    drop(stream);
                    continue;
                };
                // Nagle only delays proxied writes; failing to disable it is harmless.
                let _ = stream.set_nodelay(true);
                if let Some(task) = on_accept(stream, peer) {
                    ctx.tracker.spawn(async move {
                        let _slot = slot;
                        task.await
                    });
                }
            }
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    tracing::debug!(listener = name, "stopped accepting");
}
