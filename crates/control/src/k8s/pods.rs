//! Pods as workloads: the pure mapping from a Pod to the [`Workload`] compile selects
//! endpoints from, and the index of them.
//!
//! A pod is a workload when it has an IP, is Ready and is not terminating: the same rule
//! Kubernetes uses for ready endpoints. With the proxy (a container or a native sidecar) its
//! address is the proxy's inbound port, since meshed traffic enters there, and its identity its
//! ServiceAccount's. Without it the pod is a plain endpoint: labelled
//! [`TLS_MODE_LABEL`]`=disabled`, which compile turns into `podIP:targetPort`, not meshed, no
//! identity, so clients dial it in plaintext (as Istio does for pods without a sidecar).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Pod;
use trellis_model::Workload;

use crate::compile::TLS_MODE_LABEL;
use crate::webhook::inject::{ADMIN_PORT, INBOUND_PORT, PROXY_CONTAINER};

/// The workload a pod is, or `None` when it is not (yet, or any more) an endpoint.
pub fn workload(pod: &Pod) -> Option<Workload> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    let meshed =
        spec.containers.iter().any(|c| c.name == PROXY_CONTAINER)
            || spec.init_containers.iter().flatten().any(|c| {
                c.name == PROXY_CONTAINER && c.restart_policy.as_deref() == Some("Always")
            });
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let mut ports: Vec<u16> = spec
        .containers
        .iter()
        .filter(|c| c.name != PROXY_CONTAINER)
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p != 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    let mut labels = meta.labels.clone().unwrap_or_default();
    labels.remove(TLS_MODE_LABEL);
    if !meshed {
        labels.insert(TLS_MODE_LABEL.into(), "disabled".into());
    }
    Some(Workload {
        name: meta.name.clone()?,
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        service_account: spec
            .service_account_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        labels,
        // Unmeshed: no inbound listener; compile addresses the application's port instead.
        inbound_address: SocketAddr::new(ip, if meshed { INBOUND_PORT } else { 0 }),
        ports,
        admin_address: meshed.then(|| SocketAddr::new(ip, ADMIN_PORT)),
    })
}

/// Workloads by `namespace/name`, fed by the pod watcher.
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: BTreeMap<(String, String), Workload>,
}

fn key(pod: &Pod) -> (String, String) {
    let meta = &pod.metadata;
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl PodIndex {
    /// Returns whether the set of workloads changed.
    pub fn apply(&mut self, pod: &Pod) -> bool {
        let key = key(pod);
        match workload(pod) {
            Some(w) => self.pods.insert(key, w.clone()).as_ref() != Some(&w),
            None => self.pods.remove(&key).is_some(),
        }
    }

    pub fn delete(&mut self, pod: &Pod) -> bool {
        self.pods.remove(&key(pod)).is_some()
    }

    /// Replaces every pod (a watch restart's full list).
    pub fn reset(&mut self, pods: &[Pod]) {
        self.pods = pods
            .iter()
            .filter_map(|p| workload(p).map(|w| (key(p), w)))
            .collect();
    }

    pub fn workloads(&self) -> Vec<Workload> {
        self.pods.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod(containers: &[&str], ready: bool, ip: Option<&str>) -> Pod {
        let containers: Vec<_> = containers
            .iter()
            .map(|n| serde_json::json!({"name": n, "ports": [{"containerPort": 9080}, {"containerPort": 53, "protocol": "UDP"}]}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "reviews-1", "namespace": "shop", "labels": {"app": "reviews"}},
            "spec": {"containers": containers, "serviceAccountName": "reviews"},
            "status": {
                "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn meshed_ready_pod_is_a_workload_at_its_inbound_port() {
        let w = workload(&pod(&["app", "trellis-proxy"], true, Some("10.1.0.5"))).unwrap();
        assert_eq!(w.inbound_address, "10.1.0.5:15006".parse().unwrap());
        assert_eq!(
            w.ports,
            [9080],
            "UDP and the proxy's own ports are not app ports"
        );
        assert_eq!(w.service_account, "reviews");
        assert_eq!(w.labels["app"], "reviews");
    }

    #[test]
    fn a_pod_without_the_proxy_is_a_plain_endpoint() {
        let w = workload(&pod(&["app"], true, Some("10.1.0.5"))).unwrap();
        assert_eq!(w.labels[TLS_MODE_LABEL], "disabled");
        assert_eq!(w.labels["app"], "reviews");
        assert_eq!(w.inbound_address, "10.1.0.5:0".parse().unwrap());
        assert_eq!(w.admin_address, None);
        // A meshed pod cannot claim the label to be dialled in plaintext.
        let mut p = pod(&["app", "trellis-proxy"], true, Some("10.1.0.5"));
        p.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(TLS_MODE_LABEL.into(), "disabled".into());
        assert!(!workload(&p).unwrap().labels.contains_key(TLS_MODE_LABEL));
    }

    #[test]
    fn not_ready_no_ip_or_terminating_is_not() {
        assert!(workload(&pod(&["app", "trellis-proxy"], false, Some("10.1.0.5"))).is_none());
        assert!(workload(&pod(&["app", "trellis-proxy"], true, None)).is_none());
        let mut p = pod(&["app", "trellis-proxy"], true, Some("10.1.0.5"));
        p.metadata.deletion_timestamp =
            Some(serde_json::from_value(serde_json::json!("2026-01-01T00:00:00Z")).unwrap());
        assert!(workload(&p).is_none());
    }

    #[test]
    fn index_tracks_changes() {
        let mut index = PodIndex::default();
        let p = pod(&["app", "trellis-proxy"], true, Some("10.1.0.5"));
        assert!(index.apply(&p));
        assert!(!index.apply(&p), "same pod again: no change");
        assert!(index.apply(&pod(&["app", "trellis-proxy"], false, Some("10.1.0.5"))));
        assert!(index.workloads().is_empty());
        index.reset(std::slice::from_ref(&p));
        assert_eq!(index.workloads().len(), 1);
        assert!(index.delete(&p));
    }
}
