use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

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
}

/// What a proxy knows about one service port it sends traffic to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// `name.namespace.svc.cluster.local:port`, for logs and metrics.
    pub authority: String,
    pub service: ServiceKey,
    pub port: u16,
    pub protocol: AppProtocol,
    pub endpoints: Vec<Endpoint>,
}
