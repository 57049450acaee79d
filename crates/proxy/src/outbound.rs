//! Outbound listeners: traffic leaving the workload.
//!
//! - Transparent (`--outbound`): iptables redirected the connection; its original destination is
//!   looked up in discovery as an address target (short wait, then watched for the connection's
//!   life), routed and balanced when known, passed through to the original destination
//!   otherwise.
//! - Explicit (`--outbound-port LISTEN=TARGET`): every connection goes to one service target
//!   whose discovery watch the listener holds for its whole life; with no endpoints, HTTP gets
//!   503 and opaque connections are closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use trellis_model::Target;

pub mod registry_only;
pub mod tls_route;

use crate::discovery::Resolution;
use crate::listen::accept_loop;
use crate::route::Dest;
use crate::serve::{Ctx, serve};
use crate::telemetry::Direction;
use crate::transport::{is_own_listener, original_dst};

/// How long a transparent connection waits for discovery before passing through.
pub const ADDRESS_RESOLVE_WAIT: Duration = Duration::from_millis(200);

/// The destination of a connection to `orig`: discovery's watch for the address, after waiting
/// up to [`ADDRESS_RESOLVE_WAIT`] for a first answer.
async fn address_dest(ctx: &Ctx, orig: std::net::SocketAddr) -> Dest {
    let target = Target::Address(orig);
    let mut resolution_rx = ctx.discovery.watch(&target);
    let outbound = ctx.discovery.outbound_policy();
    // REGISTRY_ONLY refuses what has no answer, so it waits as long as a service target would
    // rather than refuse a known destination whose answer is on its way.
    let wait = if outbound.registry_only() {
        crate::route::FIRST_ANSWER_WAIT
    } else {
        ADDRESS_RESOLVE_WAIT
    };
    // A timeout or a closed channel both leave the current value in force.
    let _ = tokio::time::timeout(
        wait,
        resolution_rx.wait_for(|r| !matches!(r, Resolution::Pending)),
    )
    .await;
    Dest::Address {
        orig,
        resolution_rx,
        traffic: ctx.traffic(&target),
        outbound: Some(outbound),
    }
}

/// Runs the transparent outbound listener until the drain starts.
pub async fn run_transparent(listener: TcpListener, ctx: Arc<Ctx>) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "outbound listener has no local address");
            return;
        }
    };
    let conn_ctx = ctx.clone();
    accept_loop("outbound", Direction::Outbound, listener, ctx, move |stream, peer| {
        let Some(orig) = original_dst(&stream, local) else {
            tracing::info!(%peer, "outbound connection without original destination; closing");
            return None;
        };
        if is_own_listener(orig, &conn_ctx.listeners) {
            tracing::warn!(%peer, %orig, "outbound connection would loop back into the proxy; refusing");
            return None;
        }
        let ctx = conn_ctx.clone();
        Some(async move {
            let dest = address_dest(&ctx, orig).await;
            serve(ctx, Direction::Outbound, stream, dest, orig.port()).await;
        })
    })
    .await;
}

/// Runs one explicit outbound listener for `target` until the drain starts. An address target
/// behaves like a transparent connection to that address (resolved per connection, passed
/// through when unknown), which also makes explicit ports useful without a control plane.
pub async fn run_explicit(listener: TcpListener, ctx: Arc<Ctx>, target: Target) {
    let conn_ctx = ctx.clone();
    match target {
        Target::Address(orig) => {
            accept_loop(
                "outbound-port",
                Direction::Outbound,
                listener,
                ctx,
                move |stream, _peer| {
                    let ctx = conn_ctx.clone();
                    Some(async move {
                        let dest = address_dest(&ctx, orig).await;
                        serve(ctx, Direction::Outbound, stream, dest, orig.port()).await;
                    })
                },
            )
            .await;
        }
        Target::Service { port, .. } => {
            let resolution_rx = ctx.discovery.watch(&target);
            let traffic = ctx.traffic(&target);
            let dest = Dest::Service {
                resolution_rx,
                traffic,
            };
            accept_loop(
                "outbound-port",
                Direction::Outbound,
                listener,
                ctx,
                move |stream, _peer| {
                    Some(serve(
                        conn_ctx.clone(),
                        Direction::Outbound,
                        stream,
                        dest.clone(),
                        port,
                    ))
                },
            )
            .await;
        }
    }
}
