//! EndpointSlices (`discovery.k8s.io`, v1 where served, else v1beta1 as on Kubernetes 1.20):
//! the endpoints of Services without a selector, whose addresses someone else manages (a
//! database outside the cluster, another cluster's gateway).
//!
//! Pods remain the source for Services with a selector (a pod tells whether a proxy is there,
//! its ServiceAccount and its labels, which a slice does not); slices written by Kubernetes'
//! own controller are therefore skipped. Every address of any other slice becomes a plain
//! workload (no proxy: [`TLS_MODE_LABEL`]`=disabled`) labelled with its Service's name, and the
//! Service, having no selector, is given one on that label ([`SERVICE_LABEL`], see
//! `objects`), so that compile selects them as it selects pods.
//!
//! Everything here is pure except [`served_version`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use kube::Client;
use serde_json::Value;
use trellis_model::Workload;

use crate::compile::TLS_MODE_LABEL;

pub const GROUP: &str = "discovery.k8s.io";
/// Newest first: the first one the server serves is watched.
pub const VERSIONS: [&str; 2] = ["v1", "v1beta1"];
/// Labels a workload made from a slice with its Service; selectorless Services select on it.
pub const SERVICE_LABEL: &str = "trellis.io/endpoint-slice-service";
/// The controller Kubernetes runs for Services with a selector (its slices mirror pods).
const KUBE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// The EndpointSlice version the API server serves, newest first; `None` when neither is.
pub async fn served_version(client: &Client) -> Option<&'static str> {
    for version in VERSIONS {
        if let Ok(list) = client
            .list_api_group_resources(&format!("{GROUP}/{version}"))
            .await
            && list.resources.iter().any(|r| r.name == "endpointslices")
        {
            return Some(version);
        }
    }
    None
}

/// The plain workloads one slice (as JSON, either version) stands for: none for slices of
/// Kubernetes' controller, without a Service name, or of a non-IP address type.
pub fn workloads(slice: &Value) -> Vec<Workload> {
    let meta = &slice["metadata"];
    let labels = &meta["labels"];
    if labels["endpointslice.kubernetes.io/managed-by"] == KUBE_CONTROLLER {
        return Vec::new();
    }
    let (Some(service), Some(name)) = (
        labels["kubernetes.io/service-name"].as_str(),
        meta["name"].as_str(),
    ) else {
        return Vec::new();
    };
    if !matches!(slice["addressType"].as_str(), Some("IPv4" | "IPv6")) {
        return Vec::new();
    }
    let namespace = meta["namespace"].as_str().unwrap_or("default");
    let mut ports: Vec<u16> = slice["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["protocol"].as_str().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| u16::try_from(p["port"].as_u64()?).ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let mut out = Vec::new();
    for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
        // Absent means unknown, which consumers are to read as ready (API reference).
        if endpoint["conditions"]["ready"] == false {
            continue;
        }
        for address in endpoint["addresses"].as_array().into_iter().flatten() {
            let Some(ip) = address.as_str().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            out.push(Workload {
                name: format!("{name}-{ip}"),
                namespace: namespace.to_string(),
                service_account: "default".into(),
                labels: BTreeMap::from([
                    (SERVICE_LABEL.to_string(), service.to_string()),
                    (TLS_MODE_LABEL.to_string(), "disabled".to_string()),
                ]),
                inbound_address: SocketAddr::new(ip, 0),
                ports: ports.clone(),
                admin_address: None,
            });
        }
    }
    out
}

/// Workloads by slice `namespace/name`, fed by the slice watcher.
#[derive(Debug, Default)]
pub struct SliceIndex {
    slices: BTreeMap<(String, String), Vec<Workload>>,
}

fn key(slice: &Value) -> (String, String) {
    let meta = &slice["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_string(),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

impl SliceIndex {
    /// Returns whether the workloads changed.
    pub fn apply(&mut self, slice: &Value) -> bool {
        let new = workloads(slice);
        let key = key(slice);
        if new.is_empty() {
            return self.slices.remove(&key).is_some();
        }
        self.slices.insert(key, new.clone()).as_ref() != Some(&new)
    }

    pub fn delete(&mut self, slice: &Value) -> bool {
        self.slices.remove(&key(slice)).is_some()
    }

    pub fn reset(&mut self, slices: &[Value]) {
        self.slices = slices
            .iter()
            .map(|s| (key(s), workloads(s)))
            .filter(|(_, w)| !w.is_empty())
            .collect();
    }

    pub fn workloads(&self) -> Vec<Workload> {
        self.slices.values().flatten().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    /// A user-managed slice of Service `db`, in the shape of `version`.
    fn slice(version: &str, managed_by: &str) -> Value {
        let mut endpoint = json!({
            "addresses": ["192.0.2.10"],
            "conditions": {"ready": true},
        });
        // The versions differ in topology: v1beta1 has a `topology` map, v1 `zone`/`nodeName`.
        if version == "v1" {
            endpoint["zone"] = json!("z1");
            endpoint["nodeName"] = json!("n1");
        } else {
            endpoint["topology"] = json!({"topology.kubernetes.io/zone": "z1"});
        }
        json!({
            "apiVersion": format!("discovery.k8s.io/{version}"),
            "kind": "EndpointSlice",
            "metadata": {"name": "db-1", "namespace": "shop", "labels": {
                "kubernetes.io/service-name": "db",
                "endpointslice.kubernetes.io/managed-by": managed_by,
            }},
            "addressType": "IPv4",
            "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
            "endpoints": [
                endpoint,
                {"addresses": ["192.0.2.11"], "conditions": {"ready": false}},
                {"addresses": ["192.0.2.12"]},
            ],
        })
    }

    #[test]
    fn both_versions_give_plain_workloads_of_ready_addresses() {
        for version in VERSIONS {
            let w = workloads(&slice(version, "staff"));
            let names: Vec<&str> = w.iter().map(|w| w.name.as_str()).collect();
            assert_eq!(
                names,
                ["db-1-192.0.2.10", "db-1-192.0.2.12"],
                "{version}: not-ready skipped, unknown readiness counts as ready"
            );
            assert_eq!(w[0].namespace, "shop");
            assert_eq!(w[0].labels[SERVICE_LABEL], "db");
            assert_eq!(w[0].labels[TLS_MODE_LABEL], "disabled");
            assert_eq!(w[0].inbound_address, "192.0.2.10:0".parse().unwrap());
            assert_eq!(w[0].ports, [5432], "{version}: TCP ports only");
        }
    }

    #[test]
    fn controller_slices_and_other_address_types_are_skipped() {
        assert!(workloads(&slice("v1", KUBE_CONTROLLER)).is_empty());
        let mut fqdn = slice("v1", "staff");
        fqdn["addressType"] = json!("FQDN");
        assert!(workloads(&fqdn).is_empty());
        let mut index = SliceIndex::default();
        assert!(index.apply(&slice("v1", "staff")));
        assert!(!index.apply(&slice("v1", "staff")), "no change");
        assert_eq!(index.workloads().len(), 2);
        assert!(index.delete(&slice("v1", "staff")));
        index.reset(&[slice("v1beta1", "staff"), slice("v1", KUBE_CONTROLLER)]);
        assert_eq!(index.workloads().len(), 2);
    }
}
