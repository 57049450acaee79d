//! The inbound listener: traffic coming to the workload. A connection goes to its original
//! destination when iptables redirected it (the proxy's uid is excluded from redirection, so
//! connecting there reaches the application), else to `--app`, or (without `--app`, as in a
//! pod) per request to the `--app-port` a peer proxy names in `trellis-target-port`. An HTTP/2 request tagged
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
pub async fn run(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    app: Option<SocketAddr>,
    app_ports: Vec<u16>,
) {
    let app_ports: Arc<[u16]> = app_ports.into();
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "inbound listener has no local address");
            return;
        }
    };
    let conn_ctx = ctx.clone();
    accept_loop("inbound", Direction::Inbound, listener, ctx, move |stream, peer| {
        let (dest, port) = match original_dst(&stream, local) {
            Some(orig) if is_own_listener(orig, &conn_ctx.listeners) => {
                tracing::warn!(%peer, %orig, "inbound connection would loop into the proxy; refusing");
                return None;
            }
            Some(orig) => (Dest::Fixed(orig), orig.port()),
            // Without a redirect the port the client meant is unknown; `--app`'s decides
            // whether detection is skipped.
            None => {
                let ports = app_ports.clone();
                let local_ip = stream.local_addr().map_or(local.ip(), |a| a.ip());
                let dest = Dest::Local {
                    app,
                    ports,
                    local_ip,
                };
                (dest, app.map_or(0, |a| a.port()))
            }
        };
        Some(serve(conn_ctx.clone(), Direction::Inbound, stream, dest, port))
    })
    .await;
}
