use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{AppProtocol, CLUSTER_DOMAIN};

/// A service's namespaced name: the unit traffic is addressed to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// A host outside the cluster's Service names (an Istio ServiceEntry host such as
    /// `api.example.com`): no namespace, the host is the name. Kubernetes namespaces are never
    /// empty, so such a key cannot collide with a Service's.
    pub fn external(host: impl Into<String>) -> Self {
        Self {
            namespace: String::new(),
            name: host.into(),
        }
    }

    /// Whether this key names an external host (see [`ServiceKey::external`]).
    pub fn is_external(&self) -> bool {
        self.namespace.is_empty()
    }

    /// The fully qualified host, `name.namespace.svc.cluster.local` (an external host as is).
    pub fn fqdn(&self) -> String {
        if self.is_external() {
            return self.name.clone();
        }
        format!("{}.{}.{CLUSTER_DOMAIN}", self.name, self.namespace)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_external() {
            return f.write_str(&self.name);
        }
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a service port sends traffic on the selected workloads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetPort {
    Number(u16),
    /// A named container port; resolved against the workload's declared ports by name.
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: TargetPort,
    pub protocol: AppProtocol,
}

/// A service as the mesh sees it: a name, ports, and a label selector choosing its workloads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub key: ServiceKey,
    pub ports: Vec<ServicePort>,
    /// Workloads whose labels include all of these back the service. Empty selects none, as in
    /// Kubernetes (a selector-less Service has manually managed endpoints).
    pub selector: BTreeMap<String, String>,
    pub cluster_ip: Option<IpAddr>,
}

impl Service {
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// Whether a workload with these labels backs this service.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn reviews() -> Service {
        Service {
            key: ServiceKey::new("default", "reviews"),
            ports: vec![],
            selector: labels(&[("app", "reviews")]),
            cluster_ip: None,
        }
    }

    #[test]
    fn selector_needs_every_label() {
        let svc = reviews();
        assert!(svc.selects(&labels(&[("app", "reviews"), ("version", "v2")])));
        assert!(!svc.selects(&labels(&[("app", "ratings")])));
        assert!(!svc.selects(&labels(&[])));
    }

    #[test]
    fn empty_selector_selects_nothing() {
        let mut svc = reviews();
        svc.selector.clear();
        assert!(!svc.selects(&labels(&[("app", "reviews")])));
    }

    #[test]
    fn fqdn_uses_cluster_domain() {
        assert_eq!(reviews().key.fqdn(), "reviews.default.svc.cluster.local");
    }

    #[test]
    fn external_hosts_are_their_own_name() {
        let key = ServiceKey::external("api.example.com");
        assert!(key.is_external() && !reviews().key.is_external());
        assert_eq!(key.fqdn(), "api.example.com");
        assert_eq!(key.to_string(), "api.example.com");
    }
}
