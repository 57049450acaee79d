//! What this cluster exports: the JSON of `GET /api/v1/multicluster/exports`, computed from one
//! snapshot of config and workloads with compile's own code, so a linked cluster learns exactly
//! the endpoints a local proxy would.
//!
//! ```json
//! {"services": [{"namespace": "default", "name": "echo",
//!   "ports": [{"port": 8080, "target_port": 8080, "ready_endpoints": 2,
//!              "identity": "spiffe://cluster.local/ns/default/sa/echo"}]}]}
//! ```
//!
//! Only meshed endpoints with an identity count: the connection arrives as mesh mTLS through
//! the east-west gateway, which an endpoint without a proxy could not accept. Endpoints this
//! cluster itself learnt from its links are never exported again (no transitive routing).

use serde::{Deserialize, Serialize};
use trellis_model::{Target, multicluster};

use crate::compile::{MeshView, compile};

/// The exports document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exports {
    pub services: Vec<ExportedService>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedService {
    pub namespace: String,
    pub name: String,
    pub ports: Vec<ExportedPort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedPort {
    pub port: u16,
    /// The application port behind the endpoints' proxies (the Service's `targetPort`).
    pub target_port: u16,
    pub ready_endpoints: usize,
    /// The SPIFFE ID the endpoints prove. Endpoints of one service under several service
    /// accounts: the first by name (a caller then expects that one; see docs/multicluster.md).
    pub identity: Option<String>,
}

/// The services `exported` names that exist in `view`, with their local endpoints per port.
pub fn exports<'a>(
    view: MeshView<'_>,
    exported: impl IntoIterator<Item = &'a trellis_model::ServiceKey>,
) -> Exports {
    let mut services = Vec::new();
    for key in exported {
        let Some(svc) = view.services.get(key) else {
            continue;
        };
        let ports = svc
            .ports
            .iter()
            .filter_map(|p| {
                let target = Target::Service {
                    service: key.clone(),
                    port: p.port,
                };
                let dest = compile(view, &target)?;
                let ready: Vec<_> = dest
                    .endpoints
                    .iter()
                    .filter(|e| multicluster::is_local(e) && e.meshed && e.identity.is_some())
                    .collect();
                let mut identities: Vec<&str> =
                    ready.iter().filter_map(|e| e.identity.as_deref()).collect();
                identities.sort_unstable();
                Some(ExportedPort {
                    port: p.port,
                    target_port: ready.first().map_or(p.port, |e| e.target_port),
                    ready_endpoints: ready.len(),
                    identity: identities.first().map(|s| s.to_string()),
                })
            })
            .collect();
        services.push(ExportedService {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            ports,
        });
    }
    Exports { services }
}
