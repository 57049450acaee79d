//! Where a connection's traffic goes: the next hop for a request or an opaque stream, decided
//! from the listener's destination and discovery's current answer.
//!
//! A destination discovery found is handed on as its traffic [`Plan`] (routes, backends,
//! balancers), which the forwarding code walks per request; everything else becomes a fixed
//! [`Hop`]. The decisions are pure; waiting for discovery's first answer is the only async part.
//! This module must not touch sockets.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::balance::EndpointState;
use crate::discovery::Resolution;
use crate::traffic::{BackendRt, Plan, TargetTraffic};

/// How long a request to a service target waits for discovery's first answer.
pub const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(3);

/// The next hop: an address, and whether a trellis proxy answers there. Borrows the
/// endpoint's identity (from the destination plan), so choosing a hop never allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop<'a> {
    pub addr: SocketAddr,
    pub meshed: bool,
    /// For meshed hops: the application port behind the peer proxy.
    pub target_port: Option<u16>,
    /// For meshed hops: the SPIFFE ID the peer proxy must prove (mTLS).
    pub identity: Option<&'a str>,
    /// For an endpoint in another cluster: the SNI its east-west gateway routes by.
    pub sni: Option<&'a str>,
}

impl Hop<'static> {
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            meshed: false,
            target_port: None,
            identity: None,
            sni: None,
        }
    }
}

/// Why no hop could be chosen: a 503 at the edge (or a closed connection for opaque traffic).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoHop {
    #[error("no destination")]
    NotFound,
    #[error("no endpoints")]
    NoEndpoints,
    #[error("discovery timeout")]
    Pending,
    #[error("no application")]
    NoApp,
    /// The outbound traffic policy is REGISTRY_ONLY and the mesh does not know the destination.
    #[error("registry-only")]
    RegistryOnly,
}

impl NoHop {
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotFound => "no destination",
            Self::NoEndpoints => "no endpoints",
            Self::Pending => "discovery timeout",
            Self::NoApp => "no application",
            Self::RegistryOnly => "registry-only",
        }
    }

    /// The HTTP status the request gets: 502 for a destination REGISTRY_ONLY refuses (as
    /// Envoy's BlackHoleCluster answers in Istio), 503 otherwise.
    pub fn status(self) -> hyper::StatusCode {
        match self {
            Self::RegistryOnly => hyper::StatusCode::BAD_GATEWAY,
            _ => hyper::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A listener's (or connection's) destination.
#[derive(Clone, Debug)]
pub enum Dest {
    /// A fixed address: an inbound connection's original destination.
    Fixed(SocketAddr),
    /// Inbound without an original destination: `--app`, or per request the app port a peer
    /// proxy names in `trellis-target-port` when it is one of `ports` (`--app-port`).
    Local {
        app: Option<SocketAddr>,
        ports: Arc<[u16]>,
        local_ip: IpAddr,
    },
    /// An explicit outbound port's service target; the receiver lives as long as the listener.
    Service {
        resolution_rx: watch::Receiver<Resolution>,
        traffic: Arc<TargetTraffic>,
    },
    /// A transparent outbound connection's original destination, watched for the connection's
    /// life (so a keep-alive connection follows route changes); passed through while discovery
    /// knows nothing about it.
    Address {
        orig: SocketAddr,
        resolution_rx: watch::Receiver<Resolution>,
        traffic: Arc<TargetTraffic>,
        /// The mesh's outbound traffic policy, read per request; `None`: always ALLOW_ANY.
        outbound: Option<Arc<crate::outbound::registry_only::OutboundPolicy>>,
    },
}

/// An opaque stream's upstream: the hop and, for a discovered destination, the backend and
/// endpoint it was balanced to.
#[derive(Debug)]
pub struct StreamHop {
    /// Its `identity` is `None`: read it from `chosen`'s endpoint.
    pub hop: Hop<'static>,
    pub chosen: Option<(Arc<BackendRt>, Arc<EndpointState>)>,
}

/// Where the next request or stream goes: a fixed hop, or a discovered destination's plan.
#[derive(Clone, Debug)]
pub enum Next {
    Hop(Hop<'static>),
    Routed(Arc<Plan>),
}

/// The pure choice for [`Dest::Local`]. `--app` wins when set: in local mode the registered
/// `--app-port`s are the ports peers know, not necessarily where the app listens. Without it
/// (a pod), a requested port the workload declares is dialled on `local_ip`, the address the
/// peer reached this proxy on (the pod's IP); anything else has no application.
pub fn local_hop(
    app: Option<SocketAddr>,
    ports: &[u16],
    local_ip: IpAddr,
    requested: Option<u16>,
) -> Result<Hop<'static>, NoHop> {
    if let Some(app) = app {
        return Ok(Hop::plain(app));
    }
    requested
        .filter(|p| ports.contains(p))
        .map(|port| Hop::plain(SocketAddr::new(local_ip, port)))
        .ok_or(NoHop::NoApp)
}

/// The pure choice: `passthrough` is where traffic goes when discovery has no destination
/// (transparent targets), `None` fails it (service targets).
pub fn next_for(
    resolution: &Resolution,
    traffic: &TargetTraffic,
    passthrough: Option<SocketAddr>,
) -> Result<Next, NoHop> {
    match (resolution, passthrough) {
        (Resolution::Found(dest), _) => Ok(Next::Routed(traffic.plan(dest))),
        (_, Some(addr)) => Ok(Next::Hop(Hop::plain(addr))),
        (Resolution::NotFound, None) => Err(NoHop::NotFound),
        (Resolution::Pending, None) => Err(NoHop::Pending),
    }
}

/// The hop to an endpoint.
pub fn endpoint_hop(e: &trellis_model::Endpoint) -> Hop<'_> {
    Hop {
        addr: e.address,
        meshed: e.meshed,
        target_port: e.meshed.then_some(e.target_port),
        identity: e.identity.as_deref().filter(|_| e.meshed),
        sni: e.remote.as_ref().map(|r| r.sni.as_str()),
    }
}

impl Dest {
    /// Where the next request or stream goes, waiting up to [`FIRST_ANSWER_WAIT`] if a service
    /// target has no answer yet. `requested_port` is a peer proxy's `trellis-target-port`.
    pub async fn next(&self, requested_port: Option<u16>) -> Result<Next, NoHop> {
        match self {
            Self::Fixed(addr) => Ok(Next::Hop(Hop::plain(*addr))),
            Self::Local {
                app,
                ports,
                local_ip,
            } => local_hop(*app, ports, *local_ip, requested_port).map(Next::Hop),
            Self::Address {
                orig,
                resolution_rx,
                traffic,
                outbound,
            } => {
                let current = resolution_rx.borrow().clone();
                match outbound {
                    Some(policy) => policy.next(&current, traffic, *orig),
                    None => next_for(&current, traffic, Some(*orig)),
                }
            }
            Self::Service {
                resolution_rx,
                traffic,
            } => {
                let pending = matches!(*resolution_rx.borrow(), Resolution::Pending);
                if pending {
                    let mut rx = resolution_rx.clone();
                    // A closed channel or the wait running out both leave the last value.
                    let _ = tokio::time::timeout(
                        FIRST_ANSWER_WAIT,
                        rx.wait_for(|r| !matches!(r, Resolution::Pending)),
                    )
                    .await;
                }
                let current = resolution_rx.borrow().clone();
                next_for(&current, traffic, None)
            }
        }
    }

    /// The hop for an opaque stream to `port`: TCP routes split per connection, then the
    /// backend's balancer.
    pub async fn hop(&self, port: u16) -> Result<Hop<'static>, NoHop> {
        self.stream_hop(port).await.map(|s| s.hop)
    }

    /// [`Self::hop`], with the backend and endpoint chosen when the destination was discovered,
    /// so the stream can count as in flight and report connect failures to outlier detection.
    pub async fn stream_hop(&self, port: u16) -> Result<StreamHop, NoHop> {
        self.stream_hop_for(port, None).await
    }

    /// [`Self::stream_hop`] for a TLS stream whose ClientHello named `sni` (TLS routes).
    pub async fn stream_hop_for(&self, port: u16, sni: Option<&str>) -> Result<StreamHop, NoHop> {
        match self.next(None).await? {
            Next::Hop(hop) => Ok(StreamHop { hop, chosen: None }),
            Next::Routed(plan) => {
                let backend = plan.tcp_backend_for(port, sni).ok_or(NoHop::NoEndpoints)?;
                backend.sweep();
                let endpoint = backend
                    .balancer
                    .pick(None, None)
                    .ok_or(NoHop::NoEndpoints)?
                    .clone();
                let hop = endpoint_hop(endpoint.endpoint());
                Ok(StreamHop {
                    hop: Hop {
                        addr: hop.addr,
                        meshed: hop.meshed,
                        target_port: hop.target_port,
                        identity: None,
                        sni: None,
                    },
                    chosen: Some((backend.clone(), endpoint)),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_model::{AppProtocol, Destination, Endpoint, ServiceKey};

    fn found(ports: &[u16]) -> Resolution {
        Resolution::Found(Arc::new(Destination {
            authority: "web.default.svc.cluster.local:80".into(),
            service: ServiceKey::new("default", "web"),
            port: 80,
            protocol: AppProtocol::Unknown,
            endpoints: ports
                .iter()
                .map(|p| Endpoint {
                    address: ([127, 0, 0, 1], *p).into(),
                    meshed: true,
                    identity: None,
                    workload: "web".into(),
                    labels: Default::default(),
                    target_port: 8080,
                    remote: None,
                })
                .collect(),
            ..Destination::default()
        }))
    }

    fn hop_of(r: &Resolution, passthrough: Option<SocketAddr>) -> Result<Hop<'static>, NoHop> {
        let traffic = TargetTraffic::default();
        match next_for(r, &traffic, passthrough)? {
            Next::Hop(h) => Ok(h),
            Next::Routed(plan) => plan
                .own
                .balancer
                .pick(None, None)
                .map(|e| {
                    let hop = endpoint_hop(e.endpoint());
                    Hop {
                        addr: hop.addr,
                        meshed: hop.meshed,
                        target_port: hop.target_port,
                        identity: None,
                        sni: None,
                    }
                })
                .ok_or(NoHop::NoEndpoints),
        }
    }

    #[test]
    fn service_targets_fail_without_endpoints() {
        assert_eq!(hop_of(&Resolution::NotFound, None), Err(NoHop::NotFound));
        assert_eq!(hop_of(&Resolution::Pending, None), Err(NoHop::Pending));
        assert_eq!(hop_of(&found(&[]), None), Err(NoHop::NoEndpoints));
        assert_eq!(
            hop_of(&found(&[7]), None).unwrap(),
            Hop {
                addr: ([127, 0, 0, 1], 7).into(),
                meshed: true,
                target_port: Some(8080),
                identity: None,
                sni: None,
            }
        );
    }

    #[test]
    fn address_targets_pass_through() {
        let orig: SocketAddr = ([10, 0, 0, 1], 80).into();
        assert_eq!(
            hop_of(&Resolution::NotFound, Some(orig)).unwrap(),
            Hop::plain(orig)
        );
        assert_eq!(hop_of(&Resolution::Pending, Some(orig)).unwrap().addr, orig);
        assert_eq!(hop_of(&found(&[9]), Some(orig)).unwrap().addr.port(), 9);
    }

    #[test]
    fn the_plan_is_built_once_per_destination_version() {
        let traffic = TargetTraffic::default();
        let Resolution::Found(dest) = found(&[1, 2]) else {
            unreachable!()
        };
        let a = traffic.plan(&dest);
        let b = traffic.plan(&dest);
        assert!(Arc::ptr_eq(&a, &b));
        // A new version keeps the state of endpoints that remain.
        let e1 = a.own.balancer.endpoints()[0].clone();
        let _busy = e1.start();
        let Resolution::Found(next) = found(&[1, 3]) else {
            unreachable!()
        };
        let c = traffic.plan(&next);
        assert!(!Arc::ptr_eq(&a, &c));
        let kept = &c.own.balancer.endpoints()[0];
        assert!(Arc::ptr_eq(kept, &e1));
        assert_eq!(kept.in_flight(), 1);
        assert_eq!(c.own.balancer.endpoints()[1].in_flight(), 0);
        // New metadata at the same address keeps the live state too.
        let Resolution::Found(relabelled) = found(&[1]) else {
            unreachable!()
        };
        let mut relabelled = (*relabelled).clone();
        relabelled.endpoints[0]
            .labels
            .insert("version".into(), "v2".into());
        let d = traffic.plan(&Arc::new(relabelled));
        let kept = &d.own.balancer.endpoints()[0];
        assert_eq!(kept.endpoint().labels["version"], "v2");
        assert_eq!(kept.in_flight(), 1);
        drop(_busy);
        assert_eq!(kept.in_flight(), 0);
    }

    #[test]
    fn local_hop_prefers_app_then_declared_ports() {
        let app: SocketAddr = ([127, 0, 0, 1], 41000).into();
        let pod_ip: IpAddr = [10, 0, 0, 5].into();
        let ports = [8080, 9090];
        assert_eq!(
            local_hop(Some(app), &ports, pod_ip, Some(9090))
                .unwrap()
                .addr,
            app
        );
        assert_eq!(
            local_hop(Some(app), &ports, pod_ip, None).unwrap().addr,
            app
        );
        let want = SocketAddr::new(pod_ip, 9090);
        assert_eq!(
            local_hop(None, &ports, pod_ip, Some(9090)).unwrap().addr,
            want
        );
        assert_eq!(local_hop(None, &ports, pod_ip, Some(22)), Err(NoHop::NoApp));
        assert_eq!(local_hop(None, &ports, pod_ip, None), Err(NoHop::NoApp));
    }

    #[tokio::test(start_paused = true)]
    async fn service_waits_for_first_answer() {
        let (tx, rx) = watch::channel(Resolution::Pending);
        let dest = Dest::Service {
            resolution_rx: rx,
            traffic: Arc::new(TargetTraffic::default()),
        };
        let started = tokio::time::Instant::now();
        assert_eq!(dest.hop(80).await, Err(NoHop::Pending));
        assert!(started.elapsed() >= FIRST_ANSWER_WAIT);
        let answer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send_replace(found(&[5]));
            tx
        });
        assert_eq!(dest.hop(80).await.unwrap().addr.port(), 5);
        drop(answer.await.unwrap());
    }
}
