use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::policy::TrafficPolicy;
use crate::route::{BackendRef, HttpRoute, TcpRoute};
use crate::{AppProtocol, ServiceKey};

/// One place a destination's traffic can go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Where to connect: a meshed workload's inbound listener, or the application itself.
    pub address: SocketAddr,
    /// A trellis proxy answers at `address`: the hop may be upgraded to HTTP/2.
    pub meshed: bool,
    pub identity: Option<String>,
    pub workload: String,
    pub labels: BTreeMap<String, String>,
    /// The application port behind the peer proxy that the traffic is for.
    pub target_port: u16,
    /// Set when the endpoint is in another cluster, reached through that cluster's east-west
    /// gateway at `address`; `None` for this cluster's own endpoints. Balancers prefer local
    /// endpoints and fail over to remote ones (see `crate::multicluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteCluster>,
}

/// Where a remote endpoint lives and how its cluster's east-west gateway is told the
/// destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCluster {
    /// The remote cluster's name (its `Link`'s `spec.cluster`), a locality for balancing and
    /// a label for logs.
    pub cluster: String,
    /// The TLS SNI the client sends so that the gateway, which does not terminate TLS, can
    /// route the connection: `outbound_.PORT_._.HOST` (Istio's AUTO_PASSTHROUGH form,
    /// [`crate::multicluster::sni`]).
    pub sni: String,
}

/// A backend other than the destination itself that a route or mirror names (another service,
/// or a subset), with the endpoints and policy discovery resolved for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Backend {
    pub backend: BackendRef,
    /// `name.namespace.svc.cluster.local:port`, for logs and metrics.
    pub authority: String,
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub policy: TrafficPolicy,
}

/// What a proxy knows about one service port it sends traffic to: its endpoints and policy, and
/// the routes that may send its traffic elsewhere.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    /// `name.namespace.svc.cluster.local:port`, for logs and metrics.
    pub authority: String,
    pub service: ServiceKey,
    pub port: u16,
    pub protocol: AppProtocol,
    /// The service port's own endpoints: where traffic goes when no route says otherwise.
    pub endpoints: Vec<Endpoint>,
    /// Policy for the service's own endpoints.
    #[serde(default)]
    pub policy: TrafficPolicy,
    /// In precedence order; the first match wins. Empty: every request goes to `endpoints`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<HttpRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_routes: Vec<TcpRoute>,
    /// Every other backend the routes and mirrors name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
}

impl Destination {
    /// Whether `backend` names this destination's own endpoints (no subset, same service and
    /// port).
    pub fn is_self(&self, backend: &BackendRef) -> bool {
        backend.subset.is_none()
            && backend.service == self.service
            && backend.port.is_none_or(|p| p == self.port)
    }

    /// The endpoints and policy for a backend a route names. `None` when discovery sent none
    /// (a route to an unknown service: the request fails with 503, `no endpoints`).
    pub fn backend(&self, backend: &BackendRef) -> Option<(&[Endpoint], &TrafficPolicy)> {
        if self.is_self(backend) {
            return Some((&self.endpoints, &self.policy));
        }
        self.backends
            .iter()
            .find(|b| &b.backend == backend)
            .map(|b| (&b.endpoints[..], &b.policy))
    }
}
