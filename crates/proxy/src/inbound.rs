//! The inbound listener: traffic coming to the workload. A connection goes to its original
//! destination when iptables redirected it (the proxy's uid is excluded from redirection, so
//! connecting there reaches the application), else to `--app`. An HTTP/2 request tagged
//! `trellis-orig-proto` by a peer proxy reaches the application as HTTP/1.1 again.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::listen::accept_loop;
use crate::route::Dest;
use crate::serve::{Ctx, serve};
use crate::telemetry::Direction;
use crate::transport::{is_own_listener, original_dst};

/// Runs the inbound listener until the drain starts.
pub async fn run(listener: TcpListener, ctx: Arc<Ctx>, app: Option<SocketAddr>) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "inbound listener has no local address");
            return;
        }
    };
    let conn_ctx = ctx.clone();
    accept_loop("inbound", listener, ctx, move |stream, peer| {
        let Some(target) = original_dst(&stream, local).or(app) else {
            tracing::info!(%peer, "inbound connection without original destination and no --app; closing");
            return None;
        };
        if is_own_listener(target, &conn_ctx.listeners) {
            tracing::warn!(%peer, %target, "inbound connection would loop back into the proxy; refusing");
            return None;
        }
        Some(serve(conn_ctx.clone(), Direction::Inbound, stream, Dest::Fixed(target), target.port()))
    })
    .await;
}
