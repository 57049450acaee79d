//! Serving one accepted connection: count it, detect its protocol (unless its port is declared
//! opaque), then run it as an HTTP/1.1 or HTTP/2 server connection that forwards each request,
//! or splice it as opaque TCP. HTTP connections shut down gracefully when the proxy drains.
//!
//! Inbound, a mesh ClientHello is terminated here (mTLS, client verified) and what is inside is
//! served the same way, by ALPN; the inbound policy (PeerAuthentication) may refuse anything
//! that is not mesh mTLS. Outbound opaque streams to meshed endpoints go over mTLS.
//!
//! Accepting connections and choosing their destination is the listeners' job
//! ([`crate::inbound`], [`crate::outbound`]); this module serves what it is handed.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trellis_model::Target;

pub(crate) mod drain;
mod h1direct;
pub mod h1head;
mod http1;
mod http2;
mod recycle;

use http1::serve_http1;
use http2::serve_http2;

use crate::client::Upstreams;
use crate::detect::{Detected, Protocol, detect};
use crate::discovery::Discovery;
use crate::forward::HttpForward;
use crate::resilience::outlier::Outcome;
use crate::route::Dest;
use crate::telemetry::exchange::{LocalWorkload, Telemetry};
use crate::telemetry::tcp::TcpTag;
use crate::telemetry::{DetectOutcome, Direction, Metrics};
use crate::tls::{MeshIdentity, PeerIdentity, policy};
use crate::traffic::TargetTraffic;
use crate::transport::{CountingIo, PrefixedIo, connect, is_own_listener, mx, splice};
use tokio::io::{AsyncRead, AsyncWrite};
use trellis_identity::tls::MeshAlpn;

/// Bound on remembered per-target traffic state for transparent traffic; past it the map is
/// reset (losing balancer and budget history, never config), so memory cannot grow without
/// limit.
const MAX_TARGETS: usize = 4096;

/// How many mirrored requests may be in flight at once, proxy-wide; a copy over the limit is
/// not sent (mirroring must never queue or slow the primary).
pub const MAX_MIRRORS_IN_FLIGHT: usize = 256;

/// The calling workload, as route matches see it (`sourceLabels`, source namespace).
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub namespace: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// State shared by every listener and connection of one proxy.
#[derive(Debug)]
pub struct Ctx {
    pub metrics: Arc<Metrics>,
    /// Request metrics with workload labels (and traces, access logs): shares `metrics`.
    pub telemetry: Arc<Telemetry>,
    pub upstreams: Upstreams,
    pub discovery: Discovery,
    pub detect_timeout: Duration,
    pub opaque_ports: BTreeSet<u16>,
    /// Every bound listener address: an original destination among them would loop.
    pub listeners: Vec<SocketAddr>,
    /// Cancelled when the proxy starts draining.
    pub shutdown: CancellationToken,
    /// Every connection and tunnel task, so the drain can wait for them.
    pub tracker: TaskTracker,
    /// This proxy's own workload, for route matching.
    pub source: Source,
    /// Bounds concurrent mirrored requests ([`MAX_MIRRORS_IN_FLIGHT`]).
    pub mirror_permits: Arc<tokio::sync::Semaphore>,
    /// The workload certificate and inbound mTLS policy.
    pub identity: Arc<MeshIdentity>,
    /// End-user authentication (RequestAuthentication JWT rules) for inbound requests.
    pub authn: Arc<crate::authn::Authenticator>,
    /// The proxy's own limits and the in-flight counts they are checked against.
    pub admission: Arc<crate::limits::Admission>,
    /// Inbound local rate limits (RateLimitPolicy), installed from discovery.
    pub rate_limits: Arc<crate::resilience::ratelimit::RateLimiter>,
    /// In gateway mode, its bound Gateway listeners: where a mesh TCP stream goes by the
    /// target port its metadata header names ([`mesh_dest`]).
    pub gateway_listeners: Option<crate::gateway::BoundListeners>,
    traffic: Mutex<HashMap<Target, Arc<TargetTraffic>>>,
}

impl Ctx {
    pub fn new(
        metrics: Arc<Metrics>,
        discovery: Discovery,
        detect_timeout: Duration,
        opaque_ports: BTreeSet<u16>,
        listeners: Vec<SocketAddr>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            telemetry: Arc::new(Telemetry::new(metrics.clone(), LocalWorkload::default())),
            metrics,
            upstreams: Upstreams::new(),
            discovery,
            detect_timeout,
            opaque_ports,
            listeners,
            shutdown,
            tracker,
            source: Source::default(),
            mirror_permits: Arc::new(tokio::sync::Semaphore::new(MAX_MIRRORS_IN_FLIGHT)),
            identity: Arc::new(MeshIdentity::disabled()),
            authn: Arc::default(),
            admission: Arc::default(),
            rate_limits: Arc::default(),
            gateway_listeners: None,
            traffic: Mutex::new(HashMap::new()),
        }
    }

    /// Sets the mesh identity (certificate, inbound policy) for listeners and upstreams.
    pub fn with_identity(mut self, identity: Arc<MeshIdentity>) -> Self {
        self.upstreams = Upstreams::with_identity(identity.clone());
        self.identity = identity;
        self
    }

    /// Sets the JWT authenticator inbound requests go through.
    pub fn with_authn(mut self, authn: Arc<crate::authn::Authenticator>) -> Self {
        self.authn = authn;
        self
    }

    /// Sets the connection and request limits (`--max-connections`, ...).
    pub fn with_limits(mut self, limits: crate::limits::ServerLimits) -> Self {
        self.admission = Arc::new(crate::limits::Admission::new(limits));
        self
    }

    /// Sets the workload that route matches see as the source.
    pub fn with_source(mut self, source: Source) -> Self {
        self.source = source;
        self
    }

    /// Gateway mode: mesh TCP streams are handed to these listeners by target port.
    pub fn with_gateway_listeners(mut self, bound: Option<crate::gateway::BoundListeners>) -> Self {
        self.gateway_listeners = bound;
        self
    }

    /// Sets the telemetry (its metrics should be this context's `metrics`).
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// The traffic state (plan, balancers, budgets) for a target, shared by all its
    /// connections.
    pub fn traffic(&self, target: &Target) -> Arc<TargetTraffic> {
        // Poisoning cannot leave the map inconsistent (single insert); keep using it.
        let mut map = self.traffic.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TARGETS && !map.contains_key(target) {
            map.clear();
        }
        map.entry(target.clone()).or_default().clone()
    }
}

/// Serves one accepted connection to its end. `dest_port` decides whether detection is skipped
/// (`--opaque-ports`).
pub async fn serve(
    ctx: Arc<Ctx>,
    direction: Direction,
    stream: TcpStream,
    dest: Dest,
    dest_port: u16,
) {
    let peer = stream.peer_addr().ok();
    let mut io = CountingIo::new(stream, ctx.metrics.clone(), direction);
    // Attaches the connection's TCP metric labels once its peer is known (below).
    let tag = io.tag();
    let mut detected = if ctx.opaque_ports.contains(&dest_port) {
        Detected {
            protocol: Protocol::Opaque,
            outcome: DetectOutcome::OpaquePort,
            prefix: BytesMut::new(),
        }
    } else {
        match detect(&mut io, ctx.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(direction = direction.as_str(), error = %e, "connection failed during detection");
                return;
            }
        }
    };
    ctx.metrics.detection(direction, detected.outcome);
    if direction == Direction::Inbound && ctx.identity.enabled() {
        let mesh = detected.protocol == Protocol::Tls
            && crate::tls::accept::read_client_hello(
                &mut io,
                &mut detected.prefix,
                ctx.detect_timeout,
            )
            .await;
        let tls = ctx.identity.current();
        match (
            ctx.identity.admission(dest_port, mesh, tls.is_some(), peer),
            tls,
        ) {
            (policy::Admission::Refuse, _) => {
                ctx.identity
                    .metrics
                    .handshake_failed(direction, "plaintext_refused");
                tracing::info!(
                    ?peer,
                    port = dest_port,
                    "refusing a connection that is not mesh mTLS (STRICT)"
                );
                return;
            }
            (policy::Admission::Terminate, Some(tls)) => {
                let io = PrefixedIo::new(detected.prefix, io);
                let Ok((mut stream, p)) = crate::tls::accept::accept(&ctx.identity, &tls, io).await
                else {
                    return;
                };
                let peer_id = Some(PeerIdentity(Arc::from(p.id.to_string())));
                // `trellis-mx/1`: the caller's workload comes first; a bad or late one closes.
                let caller = match p.alpn {
                    MeshAlpn::TcpMx => match mx::read(&mut stream, ctx.detect_timeout).await {
                        Ok(m) => Some(m),
                        Err(e) => {
                            ctx.identity
                                .metrics
                                .handshake_failed(direction, "metadata_exchange");
                            tracing::info!(?peer, error = %e, "closing: TCP metadata exchange failed");
                            return;
                        }
                    },
                    _ => None,
                };
                tag.inbound_from(
                    &ctx.telemetry.local,
                    peer_id.as_ref().map(|id| &*id.0),
                    caller.as_ref().map(|m| (&*m.workload, &*m.namespace)),
                );
                let forward = || {
                    HttpForward::new(ctx.clone(), direction, dest.clone())
                        .with_peer(peer)
                        .with_peer_identity(peer_id.clone())
                };
                return match p.alpn {
                    MeshAlpn::H2 => serve_http2(&ctx, stream, forward(), peer).await,
                    MeshAlpn::Http1 => serve_http1(&ctx, stream, forward(), peer).await,
                    MeshAlpn::Tcp | MeshAlpn::TcpMx => {
                        let target_port = caller.as_ref().and_then(|m| m.target_port);
                        let (dest, dest_port) = mesh_dest(&ctx, dest, dest_port, target_port);
                        let id = peer_id.as_ref().map(|id| &*id.0);
                        // A denied connection is closed: TCP has no way to say why.
                        if ctx.metrics.authz.allow_tcp(peer, id, &dest, dest_port) {
                            serve_opaque(&ctx, direction, stream, &dest, dest_port, &tag).await
                        }
                    }
                };
            }
            _ => {}
        }
    }
    if direction == Direction::Outbound && detected.protocol == Protocol::Tls {
        let (prefix, sni) =
            crate::outbound::tls_route::read_sni(io, detected.prefix, ctx.detect_timeout).await;
        return serve_opaque_sni(
            &ctx,
            direction,
            prefix,
            &dest,
            dest_port,
            &tag,
            sni.as_deref(),
        )
        .await;
    }
    let io = PrefixedIo::new(detected.prefix, io);
    // Outbound opaque streams are labelled when their endpoint is chosen (`serve_opaque`).
    match (direction, detected.protocol) {
        (Direction::Inbound, _) => tag.inbound(&ctx.telemetry.local, None),
        (Direction::Outbound, Protocol::Http1 | Protocol::Http2) => {
            tag.outbound(&ctx.telemetry.local, None, false)
        }
        (Direction::Outbound, _) => {}
    }
    match detected.protocol {
        Protocol::Http1 => {
            let forward = HttpForward::new(ctx.clone(), direction, dest).with_peer(peer);
            serve_http1(&ctx, io, forward, peer).await
        }
        Protocol::Http2 => {
            let forward = HttpForward::new(ctx.clone(), direction, dest).with_peer(peer);
            serve_http2(&ctx, io, forward, peer).await
        }
        // The application's own TLS (and mesh TLS outbound) passes through untouched.
        Protocol::Tls | Protocol::Opaque => {
            if direction == Direction::Inbound
                && !ctx.metrics.authz.allow_tcp(peer, None, &dest, dest_port)
            {
                return;
            }
            serve_opaque(&ctx, direction, io, &dest, dest_port, &tag).await
        }
    }
}

/// Where an inbound mesh TCP stream goes, and the port authorization checks, when its
/// metadata header named `target_port` and the connection has no original destination
/// (`Dest::Local`): in gateway mode the Gateway listener bound for that port (its passthrough
/// or TLS routing then runs as for a client connecting there); in a sidecar without `--app`,
/// that port on the pod's address when it is a declared `--app-port`. Otherwise, or without a
/// port (a client from before the field), `dest` as it was: `--app`.
fn mesh_dest(ctx: &Ctx, dest: Dest, dest_port: u16, target_port: Option<u16>) -> (Dest, u16) {
    let Some(port) = target_port else {
        return (dest, dest_port);
    };
    let Dest::Local {
        app,
        ports,
        local_ip,
    } = &dest
    else {
        return (dest, dest_port);
    };
    if let Some(bound) = &ctx.gateway_listeners {
        return match crate::gateway::listener_for_target_port(bound, port, *local_ip) {
            Some(addr) => (Dest::Fixed(addr), port),
            None => (dest, dest_port),
        };
    }
    // `--app` keeps the stream where it was (and the port authorization checks): the same
    // choice as for requests, made by `local_hop`.
    if app.is_none()
        && let Ok(hop) = crate::route::local_hop(None, ports, *local_ip, Some(port))
    {
        return (Dest::Fixed(hop.addr), port);
    }
    (dest, dest_port)
}

/// What a server connection may run over: the accepted socket, or mTLS on it.
pub(crate) trait Downstream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Downstream for T {}

pub(crate) async fn serve_opaque(
    ctx: &Ctx,
    direction: Direction,
    io: impl Downstream,
    dest: &Dest,
    dest_port: u16,
    tag: &TcpTag,
) {
    serve_opaque_sni(ctx, direction, io, dest, dest_port, tag, None).await
}

/// [`serve_opaque`] for a TLS stream whose ClientHello named `client_sni`: TLS routes by SNI
/// choose its backend (`crate::outbound::tls_route`).
pub(crate) async fn serve_opaque_sni(
    ctx: &Ctx,
    direction: Direction,
    mut io: impl Downstream,
    dest: &Dest,
    dest_port: u16,
    tag: &TcpTag,
    client_sni: Option<&str>,
) {
    let target = match dest.stream_hop_for(dest_port, client_sni).await {
        Ok(t) if is_own_listener(t.hop.addr, &ctx.listeners) => {
            tracing::warn!(direction = direction.as_str(), hop = %t.hop.addr, "opaque connection would loop into the proxy; closing");
            return;
        }
        Ok(t) => t,
        Err(no_hop) => {
            tracing::info!(
                direction = direction.as_str(),
                reason = no_hop.reason(),
                "closing opaque connection"
            );
            return;
        }
    };
    let hop = target.hop;
    // A balanced stream counts as in flight on its endpoint (least request, EWMA) while open.
    let _in_flight = target.chosen.as_ref().map(|(_, e)| e.start());
    let upstream = match connect(hop.addr).await {
        Ok(upstream) => upstream,
        Err(e) => {
            if let Some((backend, endpoint)) = &target.chosen
                && backend.record(endpoint, Outcome::GatewayError)
            {
                ctx.metrics.outlier_ejection(direction);
            }
            tracing::info!(direction = direction.as_str(), hop = %hop.addr, error = %e, "opaque connection failed to connect");
            return;
        }
    };
    // A meshed endpoint gets the stream over mTLS (ALPN `trellis-tcp`), unless its backend
    // disables TLS or the port is declared opaque (the peer's inbound skips detection there).
    let peer_identity = target.chosen.as_ref().and_then(|(backend, endpoint)| {
        let e = endpoint.endpoint();
        let plaintext = backend.pool_options.plaintext || ctx.opaque_ports.contains(&dest_port);
        ctx.upstreams
            .mtls_for(e.identity.as_deref().filter(|_| e.meshed), plaintext)
    });
    // A remote cluster's endpoint: its east-west gateway routes the stream by this name.
    let sni = target
        .chosen
        .as_ref()
        .and_then(|(_, e)| e.endpoint().remote.as_ref())
        .map(|r| r.sni.as_str());
    if direction == Direction::Outbound {
        let endpoint = target.chosen.as_ref().map(|(_, e)| e.endpoint());
        tag.outbound(&ctx.telemetry.local, endpoint, peer_identity.is_some());
    }
    let result = match peer_identity {
        Some(peer_identity) => {
            match ctx
                .upstreams
                .tls_connect(upstream, hop.addr, MeshAlpn::Tcp, peer_identity, sni)
                .await
            {
                Ok(mut tls) => {
                    if let Some((backend, endpoint)) = &target.chosen {
                        backend.record(endpoint, Outcome::Success);
                    }
                    // When the server selected `trellis-mx/1`: who is calling, first.
                    // With the endpoint's target port, as `trellis-target-port` for requests.
                    let target_port = hop.target_port;
                    if let Err(e) = mx::announce(&mut tls, &ctx.telemetry.local, target_port).await
                    {
                        tracing::info!(direction = direction.as_str(), hop = %hop.addr, error = %e, "opaque connection failed sending its metadata");
                        return;
                    }
                    splice(&mut io, tls).await
                }
                Err(e) => {
                    if let Some((backend, endpoint)) = &target.chosen
                        && backend.record(endpoint, Outcome::GatewayError)
                    {
                        ctx.metrics.outlier_ejection(direction);
                    }
                    tracing::info!(direction = direction.as_str(), hop = %hop.addr, error = %e, "opaque connection failed mTLS");
                    return;
                }
            }
        }
        None => {
            if let Some((backend, endpoint)) = &target.chosen {
                backend.record(endpoint, Outcome::Success);
            }
            splice(&mut io, upstream).await
        }
    };
    match result {
        Ok((up, down)) => {
            tracing::debug!(direction = direction.as_str(), hop = %hop.addr, up, down, "opaque connection closed")
        }
        Err(e) => {
            tracing::info!(direction = direction.as_str(), hop = %hop.addr, error = %e, "opaque connection failed")
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ctx(gateway: Option<crate::gateway::BoundListeners>) -> Ctx {
        Ctx::new(
            Arc::new(Metrics::new()),
            Discovery::disabled(),
            Duration::from_secs(1),
            BTreeSet::new(),
            Vec::new(),
            CancellationToken::new(),
            TaskTracker::new(),
        )
        .with_gateway_listeners(gateway)
    }

    fn local(app: Option<&str>, ports: &[u16]) -> Dest {
        Dest::Local {
            app: app.map(|a| a.parse().unwrap()),
            ports: ports.into(),
            local_ip: "10.0.0.7".parse().unwrap(),
        }
    }

    /// The fixed address a stream goes to and the port authorization checks, or `None` when
    /// the destination stayed `Dest::Local` (`--app`, or no application).
    fn chosen(ctx: &Ctx, dest: Dest, dest_port: u16, port: Option<u16>) -> (Option<String>, u16) {
        match mesh_dest(ctx, dest, dest_port, port) {
            (Dest::Fixed(addr), p) => (Some(addr.to_string()), p),
            (_, p) => (None, p),
        }
    }

    #[test]
    fn a_gateway_hands_a_stream_to_the_listener_on_its_target_port_else_to_app() {
        let bound = crate::gateway::BoundListeners::default();
        crate::gateway::lock(&bound).insert(443, "0.0.0.0:8443".parse().unwrap());
        let gw = ctx(Some(bound));
        let app = || local(Some("127.0.0.1:9000"), &[]);
        assert_eq!(
            chosen(&gw, app(), 9000, Some(8443)),
            (Some("10.0.0.7:8443".into()), 8443)
        );
        // No listener there, or a client from before the field: `--app`.
        assert_eq!(chosen(&gw, app(), 9000, Some(8080)), (None, 9000));
        assert_eq!(chosen(&gw, app(), 9000, None), (None, 9000));
        // An original destination (iptables) is where the client connected: kept.
        let orig = Dest::Fixed("10.0.0.7:5000".parse().unwrap());
        assert_eq!(
            chosen(&gw, orig, 5000, Some(8443)),
            (Some("10.0.0.7:5000".into()), 5000)
        );
    }

    #[test]
    fn a_sidecar_without_app_uses_a_declared_target_port_only() {
        let sidecar = ctx(None);
        assert_eq!(
            chosen(&sidecar, local(None, &[8080, 9090]), 0, Some(9090)),
            (Some("10.0.0.7:9090".into()), 9090)
        );
        assert_eq!(
            chosen(&sidecar, local(None, &[8080]), 0, Some(22)),
            (None, 0)
        );
        // `--app` wins, as for requests.
        let app = local(Some("127.0.0.1:8080"), &[8080, 9090]);
        assert_eq!(chosen(&sidecar, app, 8080, Some(9090)), (None, 8080));
    }
}
