//! The east-west gateway port (`--east-west ADDR`): how another cluster's sidecars reach this
//! cluster's endpoints.
//!
//! Istio's AUTO_PASSTHROUGH: the connection is mesh mTLS from a sidecar in another cluster to
//! a sidecar here, and stays encrypted end to end (both identities are preserved, so
//! authorization here sees the caller's SPIFFE ID). The gateway reads only the ClientHello's
//! SNI, `outbound_.PORT_._.HOST` ([`trellis_model::multicluster::parse_sni`]), asks discovery
//! for that service port, and splices the bytes, ClientHello included, to one of the service's
//! endpoints in this cluster. Endpoints that are themselves remote are never used: a gateway
//! forwards into its own cluster only, so two linked clusters cannot loop a connection.
//!
//! A connection whose SNI names no service, or a service without local endpoints, is closed.
//! A failed connect tries another endpoint (at most [`MAX_CONNECT_ATTEMPTS`] in all); the
//! client's own retries and outlier detection handle the rest.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use trellis_model::{Endpoint, Target, multicluster};

use crate::discovery::Resolution;
use crate::listen::accept_loop;
use crate::route::FIRST_ANSWER_WAIT;
use crate::serve::Ctx;
use crate::telemetry::Direction;
use crate::transport::{CountingIo, PrefixedIo, connect, splice};

/// Endpoints tried per connection before it is closed.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Binds `addr` and serves it until the drain starts. A bind failure is logged, as for a
/// Gateway's port, and the rest of the gateway is served.
pub(super) async fn run(ctx: Arc<Ctx>, addr: SocketAddr) {
    let socket = match TcpListener::bind(addr).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot bind the east-west listener; it is not served");
            return;
        }
    };
    let local = socket.local_addr().unwrap_or(addr);
    tracing::info!(addr = %local, "east-west listener bound");
    let serve_ctx = ctx.clone();
    let stop: CancellationToken = ctx.shutdown.clone();
    let accepting = accept_loop(
        "east-west",
        Direction::Outbound,
        socket,
        ctx,
        move |stream, peer| Some(serve(serve_ctx.clone(), stream, peer)),
    );
    tokio::select! {
        () = stop.cancelled() => {}
        () = accepting => {}
    }
}

async fn serve(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr) {
    let mut io = CountingIo::new(stream, ctx.metrics.clone(), Direction::Outbound);
    let Some((prefix, sni)) = super::conn::read_sni(&mut io, &ctx).await else {
        tracing::debug!(%peer, "east-west connection without a readable ClientHello; closing");
        return;
    };
    let Some((service, port)) = sni.as_deref().and_then(multicluster::parse_sni) else {
        tracing::info!(%peer, sni = sni.as_deref().unwrap_or(""), "east-west SNI names no service; closing");
        return;
    };
    let target = Target::Service { service, port };
    let dest = match ctx.discovery.resolve(&target, FIRST_ANSWER_WAIT).await {
        Resolution::Found(dest) => dest,
        _ => {
            tracing::info!(%peer, %target, "east-west: no such service here; closing");
            return;
        }
    };
    let local: Vec<&Endpoint> = dest
        .endpoints
        .iter()
        .filter(|e| multicluster::is_local(e))
        .collect();
    if local.is_empty() {
        tracing::info!(%peer, %target, "east-west: the service has no endpoints in this cluster; closing");
        return;
    }
    // A random start spreads connections; the following ones are the fallbacks.
    let start = crate::split::below(local.len());
    let mut upstream = None;
    for i in 0..local.len().min(MAX_CONNECT_ATTEMPTS) {
        let endpoint = local[(start + i) % local.len()];
        match connect(endpoint.address).await {
            Ok(s) => {
                upstream = Some(s);
                break;
            }
            Err(e) => {
                tracing::info!(%peer, %target, endpoint = %endpoint.address, error = %e, "east-west: connect failed; trying another endpoint")
            }
        }
    }
    let Some(upstream) = upstream else {
        return;
    };
    let mut io = PrefixedIo::new(prefix, io);
    if let Err(e) = splice(&mut io, upstream).await {
        tracing::debug!(%peer, %target, error = %e, "east-west connection ended with an error");
    }
}
