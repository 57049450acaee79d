//! `trellis-proxy --mode gateway`: an ingress (or egress) gateway. Its listeners are not flags
//! but what discovery says the Gateways selecting this workload declare
//! (`trellis_model::gateway::GatewayConfig`): each port is bound on `--listen-host` (or where
//! `--gateway-port PORT=ADDR` puts it) when it first appears and closed when it goes, and every
//! update swaps the listener's routes, certificates and passthrough hosts in place, so open
//! connections are not dropped.
//!
//! Per connection ([`conn`]): plain HTTP is routed by `Host`; TLS is passed through by SNI or
//! terminated with the certificate for its SNI and then routed as HTTP; TCP goes to its route's
//! backends. Routing, balancing, retries and the mTLS hop into the mesh are the sidecar's own
//! outbound path ([`crate::forward`]) over a destination per virtual host. The proxy's limit
//! flags hold on every listener as on the sidecar's ([`http_conn`], counted as outbound).
//!
//! A config that cannot be decoded is refused and the last good listeners stay; a certificate
//! that cannot be loaded leaves its hosts out (logged), the rest is served.

mod conn;
mod east_west;
mod http_conn;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use trellis_identity::gateway_tls;
use trellis_model::Destination;
use trellis_model::gateway::{CertSource, GatewayConfig, GatewayListener, ListenerProtocol};

use crate::discovery::Resolution;
use crate::route::Dest;
use crate::serve::Ctx;
use crate::traffic::TargetTraffic;

/// What the proxy runs as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Beside one workload (the default).
    #[default]
    Sidecar,
    /// A gateway: listeners from the Gateways that select this workload.
    Gateway,
}

/// The gateway flags of `trellis-proxy run`.
#[derive(Clone, Debug, clap::Args)]
pub struct GatewayArgs {
    /// `sidecar` (default) or `gateway` (listeners from Istio/Gateway API Gateways).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = Mode::Sidecar)]
    pub mode: Mode,
    /// In gateway mode: the address Gateway ports are bound on.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub listen_host: IpAddr,
    /// In gateway mode: bind the Gateway's PORT at ADDR instead (repeatable; port 0 picks a
    /// free one), e.g. `--gateway-port 80=127.0.0.1:8080` to run without privileges.
    #[arg(long = "gateway-port", value_name = "PORT=ADDR", value_parser = parse_port_map)]
    pub gateway_port: Vec<(u16, SocketAddr)>,
    /// In gateway mode: serve the east-west port at ADDR (Istio's 15443, AUTO_PASSTHROUGH):
    /// mesh mTLS from other clusters, routed by SNI to this cluster's endpoints without being
    /// terminated. See docs/multicluster.md.
    #[arg(long = "east-west", value_name = "ADDR")]
    pub east_west: Option<SocketAddr>,
}

impl Default for GatewayArgs {
    fn default() -> Self {
        Self {
            mode: Mode::Sidecar,
            listen_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            gateway_port: Vec::new(),
            east_west: None,
        }
    }
}

impl GatewayArgs {
    /// Checks the flags together; `--gateway-port` outside gateway mode is a usage error.
    pub fn validate(self) -> Result<GatewaySettings, crate::args::ConfigError> {
        if self.mode != Mode::Gateway && !self.gateway_port.is_empty() {
            return Err(crate::args::ConfigError {
                flag: "--gateway-port",
                message: "only means something with --mode gateway".into(),
            });
        }
        if self.mode != Mode::Gateway && self.east_west.is_some() {
            return Err(crate::args::ConfigError {
                flag: "--east-west",
                message: "only means something with --mode gateway".into(),
            });
        }
        let mut ports = BTreeMap::new();
        for (port, addr) in self.gateway_port {
            if ports.insert(port, addr).is_some() {
                return Err(crate::args::ConfigError {
                    flag: "--gateway-port",
                    message: format!("port {port} is remapped twice"),
                });
            }
        }
        Ok(GatewaySettings {
            mode: self.mode,
            listen_host: self.listen_host,
            ports,
            east_west: self.east_west,
        })
    }
}

/// Validated gateway settings.
#[derive(Clone, Debug, Serialize)]
pub struct GatewaySettings {
    pub mode: Mode,
    pub listen_host: IpAddr,
    /// Gateway port -> where it is bound instead.
    pub ports: BTreeMap<u16, SocketAddr>,
    /// `--east-west`: where the east-west (SNI passthrough) port is served.
    pub east_west: Option<SocketAddr>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewayArgs::default()
            .validate()
            .unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }
}

impl GatewaySettings {
    fn bind_addr(&self, port: u16) -> SocketAddr {
        self.ports
            .get(&port)
            .copied()
            .unwrap_or_else(|| SocketAddr::new(self.listen_host, port))
    }
}

fn parse_port_map(s: &str) -> Result<(u16, SocketAddr), String> {
    let (port, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected PORT=ADDR, e.g. 80=127.0.0.1:8080"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port 1-65535"))?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP:PORT address"))?;
    Ok((port, addr))
}

/// The listeners a gateway has bound: Gateway port -> local address (for the ready file,
/// `/config_dump` and the demo).
pub type BoundListeners = Arc<Mutex<BTreeMap<u16, SocketAddr>>>;

/// One listener's config at run time, swapped whole on every update.
#[derive(Debug)]
pub(crate) struct ListenerRt {
    pub port: u16,
    pub protocol: ListenerProtocol,
    pub vhosts: Vec<(Vec<String>, Dest)>,
    pub https_redirect: Vec<String>,
    pub tls: Vec<(Vec<String>, Arc<gateway_tls::ServerConfig>)>,
    pub passthrough: Vec<(Vec<String>, Dest)>,
    /// Only connections from this pod's own address (the inbound listener handing over mesh
    /// mTLS it verified): Istio `ISTIO_MUTUAL` servers.
    pub mesh_only: bool,
}

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    rt_tx: watch::Sender<Arc<ListenerRt>>,
}

/// Serves the gateway config discovery sends until the drain starts.
pub async fn run(
    ctx: Arc<Ctx>,
    mut config_rx: watch::Receiver<Arc<str>>,
    settings: GatewaySettings,
    bound: BoundListeners,
) {
    if let Some(addr) = settings.east_west {
        ctx.tracker.spawn(east_west::run(ctx.clone(), addr));
    }
    let mut running: BTreeMap<u16, Running> = BTreeMap::new();
    // Balancer, budget and outlier state per virtual host survive updates.
    let mut traffic = Traffic::new();
    loop {
        let json = config_rx.borrow_and_update().clone();
        if !json.is_empty() {
            match serde_json::from_str::<GatewayConfig>(&json) {
                Ok(config) => {
                    apply(&ctx, &settings, &config, &mut running, &mut traffic, &bound).await
                }
                Err(e) => {
                    tracing::error!(error = %e, "refusing an undecodable gateway config; keeping the last good listeners")
                }
            }
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            changed = config_rx.changed() => if changed.is_err() { break },
        }
    }
    for r in running.values() {
        r.stop.cancel();
    }
}

async fn apply(
    ctx: &Arc<Ctx>,
    settings: &GatewaySettings,
    config: &GatewayConfig,
    running: &mut BTreeMap<u16, Running>,
    traffic: &mut Traffic,
    bound: &BoundListeners,
) {
    let mut keep = std::collections::BTreeSet::new();
    for listener in &config.listeners {
        keep.insert(listener.port);
        let rt = Arc::new(runtime(listener, traffic).await);
        if let Some(r) = running.get(&listener.port) {
            r.rt_tx.send_replace(rt);
            continue;
        }
        let addr = settings.bind_addr(listener.port);
        let socket = match TcpListener::bind(addr).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(port = listener.port, %addr, error = %e, "cannot bind a gateway listener; its port is not served");
                continue;
            }
        };
        let local = socket.local_addr().unwrap_or(addr);
        tracing::info!(port = listener.port, addr = %local, protocol = ?listener.protocol, "gateway listener bound");
        let stop = ctx.shutdown.child_token();
        let (rt_tx, rt_rx) = watch::channel(rt);
        ctx.tracker
            .spawn(conn::accept(socket, ctx.clone(), rt_rx, stop.clone()));
        lock(bound).insert(listener.port, local);
        running.insert(
            listener.port,
            Running {
                addr: local,
                stop,
                rt_tx,
            },
        );
    }
    running.retain(|port, r| {
        let kept = keep.contains(port);
        if !kept {
            tracing::info!(port, addr = %r.addr, "gateway listener removed");
            r.stop.cancel();
            lock(bound).remove(port);
        }
        kept
    });
    traffic.retain(|(port, ..), _| keep.contains(port));
}

/// Where the inbound listener hands a mesh TCP stream whose metadata header names
/// `target_port`: the Gateway listener bound on that port (where the gateway Service's
/// `targetPort` points, e.g. `--gateway-port 443=0.0.0.0:8443` for 8443), else the one whose
/// Gateway port it is. A wildcard bind is dialled on `local_ip` (the address the peer reached,
/// the pod's), or loopback when that is of the other family; an `ISTIO_MUTUAL` port accepts
/// either as the inbound listener's own hand-off. `None`: no listener serves that port now.
pub(crate) fn listener_for_target_port(
    bound: &BoundListeners,
    target_port: u16,
    local_ip: IpAddr,
) -> Option<SocketAddr> {
    let bound = lock(bound);
    let addr = bound
        .values()
        .find(|addr| addr.port() == target_port)
        .or_else(|| bound.get(&target_port))?;
    if !addr.ip().is_unspecified() {
        return Some(*addr);
    }
    let ip = match (addr.ip(), local_ip) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => local_ip,
        (IpAddr::V4(_), _) => Ipv4Addr::LOCALHOST.into(),
        (IpAddr::V6(_), _) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    Some(SocketAddr::new(ip, addr.port()))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Inserts and removes only: a panic cannot leave the map torn.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Traffic state by listener port, `http` or `tls`, and the virtual host's hosts.
type Traffic = HashMap<(u16, &'static str, String), Arc<TargetTraffic>>;

/// A destination the forwarding path can walk: a fixed answer in a watch of its own, and the
/// traffic state kept for `key`.
fn dest(
    key: (u16, &'static str, String),
    destination: &Destination,
    traffic: &mut Traffic,
) -> Dest {
    let (_tx, resolution_rx) = watch::channel(Resolution::Found(Arc::new(destination.clone())));
    Dest::Service {
        resolution_rx,
        traffic: traffic.entry(key).or_default().clone(),
    }
}

async fn runtime(l: &GatewayListener, traffic: &mut Traffic) -> ListenerRt {
    let mut tls = Vec::new();
    for t in &l.tls_hosts {
        match load(&t.cert, t.client_ca.as_ref()).await {
            Ok(config) => tls.push((t.hosts.clone(), config)),
            Err(e) => {
                tracing::error!(port = l.port, hosts = ?t.hosts, error = %e, "cannot load a gateway certificate; these hosts are not served over TLS")
            }
        }
    }
    ListenerRt {
        port: l.port,
        protocol: l.protocol,
        vhosts: l
            .virtual_hosts
            .iter()
            .map(|v| {
                let key = (l.port, "http", v.hosts.join(","));
                (v.hosts.clone(), dest(key, &v.destination, traffic))
            })
            .collect(),
        https_redirect: l.https_redirect.clone(),
        tls,
        passthrough: l
            .passthrough
            .iter()
            .map(|p| {
                let key = (l.port, "tls", p.hosts.join(","));
                (p.hosts.clone(), dest(key, &p.destination, traffic))
            })
            .collect(),
        mesh_only: l.mesh_only,
    }
}

async fn read_source(source: &CertSource) -> Result<(String, String), String> {
    match source {
        CertSource::Pem {
            cert_chain,
            private_key,
        } => Ok((cert_chain.clone(), private_key.clone())),
        CertSource::Files {
            cert_chain,
            private_key,
        } => {
            let read = |p: String| async move {
                tokio::fs::read_to_string(&p)
                    .await
                    .map_err(|e| format!("{p}: {e}"))
            };
            let chain = read(cert_chain.clone()).await?;
            let key = if private_key.is_empty() {
                String::new()
            } else {
                read(private_key.clone()).await?
            };
            Ok((chain, key))
        }
    }
}

async fn load(
    cert: &CertSource,
    client_ca: Option<&CertSource>,
) -> Result<Arc<gateway_tls::ServerConfig>, String> {
    let (chain, key) = read_source(cert).await?;
    let ca = match client_ca {
        Some(ca) => Some(read_source(ca).await?.0),
        None => None,
    };
    gateway_tls::server_config(&chain, &key, ca.as_deref()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::discovery::Discovery;
    use crate::limits::ServerLimits;
    use crate::telemetry::Metrics;

    /// Polls `f` every 20 ms for up to 5 s.
    async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        for _ in 0..250 {
            if let Some(v) = f() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[test]
    fn a_target_port_finds_the_listener_bound_there_then_the_gateway_port() {
        let bound = BoundListeners::default();
        let v4: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        let v6: SocketAddr = "[::]:9443".parse().unwrap();
        let fixed: SocketAddr = "127.0.0.1:41000".parse().unwrap();
        lock(&bound).extend([(443, v4), (9443, v6), (80, fixed)]);
        let pod_ip: IpAddr = "10.1.2.3".parse().unwrap();
        let found = |p| listener_for_target_port(&bound, p, pod_ip).map(|a| a.to_string());
        // A wildcard bind is reached on the pod's address, or loopback of its own family.
        assert_eq!(found(8443).as_deref(), Some("10.1.2.3:8443"));
        assert_eq!(found(9443).as_deref(), Some("[::1]:9443"));
        // Gateway port 80 remapped to a port of its own: found by either.
        assert_eq!(found(41000).as_deref(), Some("127.0.0.1:41000"));
        assert_eq!(found(80).as_deref(), Some("127.0.0.1:41000"));
        // Gateway port 443 is bound on 8443: 443 itself still finds it.
        assert_eq!(found(443).as_deref(), Some("10.1.2.3:8443"));
        assert_eq!(found(8080), None);
    }

    /// A request's status line, or `None` when the gateway closes without answering.
    async fn status_line(stream: &mut TcpStream) -> Option<String> {
        let req = b"GET / HTTP/1.1\r\nhost: a.example.com\r\nconnection: close\r\n\r\n";
        send_for_status(stream, req).await
    }

    /// Sends `req` (which closes the connection) and returns the status line of the answer.
    async fn send_for_status(stream: &mut TcpStream, req: &[u8]) -> Option<String> {
        stream.write_all(req).await.ok()?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&out);
        text.lines().next().map(str::to_string)
    }

    /// The count of `limit` the gateway's listeners have made (they count as outbound).
    fn rejected(ctx: &Ctx, limit: crate::limits::Limit) -> u64 {
        let outbound = crate::telemetry::Direction::Outbound;
        ctx.metrics.limits.rejected_count(outbound, limit)
    }

    /// A gateway serving one HTTP listener (Gateway port 8080) under `limits`: its context,
    /// config sender, bound address and task.
    async fn gateway_with(
        limits: ServerLimits,
    ) -> (
        Arc<Ctx>,
        watch::Sender<Arc<str>>,
        BoundListeners,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let shutdown = CancellationToken::new();
        let ctx = Arc::new(
            Ctx::new(
                Arc::new(Metrics::new()),
                Discovery::disabled(),
                Duration::from_secs(1),
                Default::default(),
                Vec::new(),
                shutdown.clone(),
                TaskTracker::new(),
            )
            .with_limits(limits),
        );
        let settings = GatewayArgs {
            mode: Mode::Gateway,
            gateway_port: vec![(8080, "127.0.0.1:0".parse().unwrap())],
            ..GatewayArgs::default()
        }
        .validate()
        .unwrap();
        let with_listener: Arc<str> = r#"{"listeners":[{"port":8080,"protocol":"HTTP"}]}"#.into();
        let (config_tx, config_rx) = watch::channel(with_listener);
        let bound = BoundListeners::default();
        let gateway = tokio::spawn(run(ctx.clone(), config_rx, settings, bound.clone()));
        eventually("the listener", || lock(&bound).get(&8080).copied()).await;
        (ctx, config_tx, bound, shutdown, gateway)
    }

    /// A listener counts `--max-connections` like every data listener, and closes when the
    /// config no longer has it.
    #[tokio::test]
    async fn listeners_are_limited_and_removed() {
        let limits = ServerLimits {
            max_connections: Some(1),
            ..ServerLimits::default()
        };
        let (ctx, config_tx, bound, shutdown, gateway) = gateway_with(limits).await;
        let addr = lock(&bound)[&8080];

        // Accepted in order: the first takes the one slot at accept and holds it while it waits
        // for its request.
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            status_line(&mut second).await,
            None,
            "over the limit: closed"
        );
        assert_eq!(
            ctx.metrics.limits.rejected_count(
                crate::telemetry::Direction::Outbound,
                crate::limits::Limit::Connections
            ),
            1
        );
        let line = status_line(&mut first).await.unwrap_or_default();
        assert!(line.contains(" 404 "), "no virtual host: {line}");

        config_tx.send_replace(r#"{"listeners":[]}"#.into());
        eventually("the listener removed", || {
            lock(&bound).is_empty().then_some(())
        })
        .await;
        let refused = eventually("connections refused", || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).err()
        })
        .await;
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        shutdown.cancel();
        gateway.await.unwrap();
    }

    /// A request head that does not arrive within `--header-read-timeout` closes the
    /// connection (slowloris), counted as `header_timeout`.
    #[tokio::test]
    async fn a_slow_request_head_is_cut() {
        let limits = ServerLimits {
            header_read_timeout: Duration::from_millis(300),
            ..ServerLimits::default()
        };
        let (ctx, _config_tx, bound, shutdown, gateway) = gateway_with(limits).await;
        let addr = lock(&bound)[&8080];
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: a.example.com\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut out))
            .await
            .expect("the gateway closes a slow head")
            .ok();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let limit = crate::limits::Limit::HeaderTimeout;
        eventually("the header timeout counted", || {
            let n = ctx
                .metrics
                .limits
                .rejected_count(crate::telemetry::Direction::Outbound, limit);
            (n == 1).then_some(())
        })
        .await;
        shutdown.cancel();
        gateway.await.unwrap();
    }

    /// `--max-request-headers-size` holds on gateway listeners as on the sidecar's: a head over
    /// it gets 431 and is counted as `headers`; one within it is served.
    #[tokio::test]
    async fn an_oversized_request_head_gets_431() {
        let limits = ServerLimits {
            max_header_bytes: 4096,
            ..ServerLimits::default()
        };
        let (ctx, _config_tx, bound, shutdown, gateway) = gateway_with(limits).await;
        let addr = lock(&bound)[&8080];
        let head = |filler: usize| {
            let filler = "x".repeat(filler);
            format!(
                "GET / HTTP/1.1\r\nhost: a.example.com\r\nx-filler: {filler}\r\nconnection: close\r\n\r\n"
            )
        };
        let mut within = TcpStream::connect(addr).await.unwrap();
        let line = send_for_status(&mut within, head(3000).as_bytes()).await;
        let line = line.unwrap_or_default();
        assert!(line.contains(" 404 "), "within the limit, no route: {line}");
        assert_eq!(rejected(&ctx, crate::limits::Limit::Headers), 0);

        let mut over = TcpStream::connect(addr).await.unwrap();
        let line = send_for_status(&mut over, head(6000).as_bytes()).await;
        let line = line.unwrap_or_default();
        assert!(line.contains(" 431 "), "over the limit: {line}");
        eventually("the oversized head counted", || {
            (rejected(&ctx, crate::limits::Limit::Headers) == 1).then_some(())
        })
        .await;
        shutdown.cancel();
        gateway.await.unwrap();
    }

    /// `--idle-timeout` closes a gateway connection with no request in flight: a keep-alive
    /// connection after its response, and one that never sent a byte; each is counted as
    /// `idle_timeout`. Letting the timeout pass is the behaviour under test.
    #[tokio::test]
    async fn idle_connections_are_closed() {
        let timeout = Duration::from_millis(300);
        let limits = ServerLimits {
            idle_timeout: Some(timeout),
            ..ServerLimits::default()
        };
        let (ctx, _config_tx, bound, shutdown, gateway) = gateway_with(limits).await;
        let addr = lock(&bound)[&8080];
        let silent = TcpStream::connect(addr).await.unwrap();
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nhost: a.example.com\r\n\r\n")
            .await
            .unwrap();
        // The whole 404 (its body is short and declared), then the connection stays open.
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            while !String::from_utf8_lossy(&got).contains("no route") {
                match kept.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            true
        })
        .await;
        assert_eq!(answered, Ok(true), "{}", String::from_utf8_lossy(&got));
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 404 "));
        let answered_at = std::time::Instant::now();

        let closed = tokio::time::timeout(Duration::from_secs(5), kept.read(&mut buf)).await;
        let waited = answered_at.elapsed();
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "closed after the timeout: {closed:?}"
        );
        // Between one and one and a quarter timeouts after the response ended on the gateway
        // (a little before it was read here); well before the timeout would be a bug.
        assert!(
            waited >= timeout / 2 && waited < Duration::from_secs(3),
            "closed after {waited:?}"
        );
        let mut silent = silent;
        let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection is closed too: {closed:?}"
        );
        eventually("both idle closes counted", || {
            (rejected(&ctx, crate::limits::Limit::IdleTimeout) == 2).then_some(())
        })
        .await;
        assert_eq!(rejected(&ctx, crate::limits::Limit::HeaderTimeout), 0);
        shutdown.cancel();
        gateway.await.unwrap();
    }

    /// HTTP/2 with prior knowledge is still recognised on a plain listener and answered, and an
    /// idle HTTP/2 connection is closed (GOAWAY) and counted.
    #[tokio::test]
    async fn http2_is_served_and_closed_when_idle() {
        let limits = ServerLimits {
            idle_timeout: Some(Duration::from_millis(300)),
            ..ServerLimits::default()
        };
        let (ctx, _config_tx, bound, shutdown, gateway) = gateway_with(limits).await;
        let addr = lock(&bound)[&8080];
        let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let req = http::Request::get("http://a.example.com/")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::NOT_FOUND);
        drop(resp);
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        assert!(ended.is_ok(), "the idle HTTP/2 connection is closed");
        eventually("the idle close counted", || {
            (rejected(&ctx, crate::limits::Limit::IdleTimeout) == 1).then_some(())
        })
        .await;
        shutdown.cancel();
        gateway.await.unwrap();
    }

    /// A TLS client that sends its ClientHello and then stalls mid-handshake is closed at
    /// `--header-read-timeout`, counted as `header_timeout`, like a slow request head.
    #[tokio::test]
    async fn a_stalled_tls_handshake_is_cut() {
        let timeout = Duration::from_millis(300);
        let limits = ServerLimits {
            header_read_timeout: timeout,
            ..ServerLimits::default()
        };
        let (ctx, config_tx, bound, shutdown, gateway) = gateway_with(limits).await;
        let addr = lock(&bound)[&8080];
        // The same port becomes HTTPS with a certificate for a.example.com.
        let cert = rcgen::generate_simple_self_signed(vec!["a.example.com".to_string()]).unwrap();
        let https = serde_json::json!({"listeners": [{
            "port": 8080,
            "protocol": "HTTPS",
            "tls_hosts": [{
                "hosts": ["a.example.com"],
                "cert": {"pem": {
                    "cert_chain": cert.cert.pem(),
                    "private_key": cert.signing_key.serialize_pem(),
                }},
            }],
        }]});
        config_tx.send_replace(https.to_string().into());

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let client = Arc::new(client);
        let server_name = rustls::pki_types::ServerName::try_from("a.example.com").unwrap();
        let mut hello = Vec::new();
        rustls::ClientConnection::new(client, server_name)
            .unwrap()
            .write_tls(&mut hello)
            .unwrap();
        // Until the swap is seen, the port still speaks plain HTTP (400 to a ClientHello).
        let mut stalled = None;
        for _ in 0..50 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&hello).await.unwrap();
            let mut first = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut first)).await;
            // 0x16: a TLS handshake record, the gateway's ServerHello.
            if matches!(read, Ok(Ok(1))) && first[0] == 0x16 {
                stalled = Some(stream);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut stalled = stalled.expect("the listener answers TLS");
        let answered = std::time::Instant::now();
        // The client never sends its Finished: the gateway closes the connection.
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the stalled handshake is cut");
        assert!(
            answered.elapsed() < Duration::from_secs(3),
            "{:?}",
            answered.elapsed()
        );
        eventually("the stalled handshake counted", || {
            (rejected(&ctx, crate::limits::Limit::HeaderTimeout) == 1).then_some(())
        })
        .await;
        shutdown.cancel();
        gateway.await.unwrap();
    }
}
