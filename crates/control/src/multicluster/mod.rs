//! Multi-cluster: what this control plane exports to linked clusters, and the endpoints it
//! learns from the clusters it links to.
//!
//! - [`exports`] (pure): the exported services (a `ServiceExport` names them) with, per port,
//!   how many meshed endpoints of this cluster are ready and the identity they prove. Served
//!   read-only as `GET /api/v1/multicluster/exports` on the HTTP listener.
//! - [`link`]: the adapter between the config store and discovery that fetches each linked
//!   cluster's exports and puts them into the snapshot (`traffic.remote`), as
//!   `service_entry_dns` does with DNS answers, so that compile stays pure.
//! - [`endpoints`] (pure, called by compile): a local service's remote endpoints: one per
//!   linked cluster that exports the same service and port with ready endpoints, at that
//!   cluster's east-west gateway, tagged with the cluster and the SNI the gateway routes by.
//!
//! See docs/multicluster.md.

pub mod exports;
pub mod link;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use trellis_config::multicluster::{Link, MulticlusterResource};
use trellis_model::policy::{OutlierDetection, TrafficPolicy};
use trellis_model::{Endpoint, RemoteCluster, ServiceKey};

pub use exports::{ExportedPort, ExportedService, Exports};

/// The multi-cluster resources in force (part of the config snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MulticlusterConfig {
    /// By remote cluster name; a second Link to one cluster is ignored (the first file wins).
    pub links: BTreeMap<String, Link>,
    pub exports: BTreeSet<ServiceKey>,
}

impl MulticlusterConfig {
    pub fn add(&mut self, resource: &MulticlusterResource) {
        match resource {
            MulticlusterResource::Link(link) => {
                self.links
                    .entry(link.cluster.clone())
                    .or_insert_with(|| link.clone());
            }
            MulticlusterResource::Export(key) => {
                self.exports.insert(key.clone());
            }
        }
    }
}

/// One linked cluster's view of one exported service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteService {
    pub cluster: String,
    pub gateway: SocketAddr,
    pub ports: Vec<ExportedPort>,
}

/// What every linked cluster exports, by service (part of the snapshot's traffic).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteServices {
    pub by_service: BTreeMap<ServiceKey, Vec<RemoteService>>,
}

impl RemoteServices {
    /// The services of `exports` (each cluster's last good answer) reached through each link's
    /// gateway.
    pub fn from_exports<'a>(answers: impl IntoIterator<Item = (&'a Link, &'a Exports)>) -> Self {
        let mut by_service: BTreeMap<ServiceKey, Vec<RemoteService>> = BTreeMap::new();
        for (link, exports) in answers {
            for svc in &exports.services {
                by_service
                    .entry(ServiceKey::new(&svc.namespace, &svc.name))
                    .or_default()
                    .push(RemoteService {
                        cluster: link.cluster.clone(),
                        gateway: link.gateway,
                        ports: svc.ports.clone(),
                    });
            }
        }
        Self { by_service }
    }
}

/// The endpoints of `service`'s `port` in linked clusters: one per cluster that exports it with
/// at least one ready endpoint. Sorted by cluster (stable, so an unchanged answer is not
/// re-pushed).
pub fn endpoints(remote: &RemoteServices, service: &ServiceKey, port: u16) -> Vec<Endpoint> {
    let Some(clusters) = remote.by_service.get(service) else {
        return Vec::new();
    };
    let mut out: Vec<Endpoint> = clusters
        .iter()
        .filter_map(|r| {
            let p = r
                .ports
                .iter()
                .find(|p| p.port == port && p.ready_endpoints > 0)?;
            Some(Endpoint {
                address: r.gateway,
                meshed: true,
                // The gateway does not terminate TLS: the endpoint behind it proves this.
                identity: p.identity.clone(),
                workload: format!("{}/east-west", r.cluster),
                labels: BTreeMap::from([(CLUSTER_LABEL.to_string(), r.cluster.clone())]),
                target_port: p.target_port,
                remote: Some(RemoteCluster {
                    cluster: r.cluster.clone(),
                    sni: trellis_model::multicluster::sni(service, port),
                }),
            })
        })
        .collect();
    out.sort_by(|a, b| a.workload.cmp(&b.workload));
    out
}

/// Failover needs failing local endpoints out of the balancer (Istio: locality failover only
/// works with `outlierDetection`). A policy for endpoints that include other clusters' and
/// that sets no outlier detection gets Istio's defaults (5 consecutive 5xx or connect
/// failures, 30 s base ejection), so that failover works without a DestinationRule. A policy
/// that sets its own is left as it is.
pub fn failover_policy(policy: &mut TrafficPolicy, endpoints: &[Endpoint]) {
    if policy.outlier_detection.is_none()
        && endpoints.iter().any(|e| e.remote.is_some())
        && endpoints.iter().any(|e| e.remote.is_none())
    {
        policy.outlier_detection = Some(OutlierDetection::default());
    }
}

/// The label a remote endpoint carries with its cluster's name (Istio's).
pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";

#[cfg(test)]
mod tests;
