//! Registered workloads indexed by (namespace, label key, label value), so that the workloads a
//! Service selects are found without a scan of every workload.
//!
//! A route change compiles every subscribed target again; each compile used to call
//! `Service::selects` on every registered workload (15,000 in the bench, for each of 200
//! targets). The index hands out, for a selector, the workloads that carry its first label in
//! the service's namespace, in the order of the list; the caller still checks the whole
//! selector, so what is selected, and in which order, is exactly what the scan gave.
//!
//! Keys are hashes of the three strings, so that the index borrows nothing from the list and
//! allocates no string per label; two keys that collide only add candidates the full check
//! drops.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use trellis_model::{Service, Workload};

/// Positions in a workload list by (namespace, label key, label value).
#[derive(Debug, Default)]
pub struct SelectorIndex {
    by_label: HashMap<u64, Vec<usize>>,
    /// The hasher of the keys (random per index, as `HashMap`'s own).
    hasher: std::collections::hash_map::RandomState,
    /// How many workloads the index was built from: a guard against use with another list.
    len: usize,
}

impl SelectorIndex {
    /// Indexes `workloads` (each workload once per label).
    pub fn new(workloads: &[Arc<Workload>]) -> Self {
        let mut index = Self {
            len: workloads.len(),
            ..Self::default()
        };
        for (i, w) in workloads.iter().enumerate() {
            for (k, v) in &w.labels {
                let key = index.key(&w.namespace, k, v);
                index.by_label.entry(key).or_default().push(i);
            }
        }
        index
    }

    fn key(&self, namespace: &str, label: &str, value: &str) -> u64 {
        self.hasher.hash_one((namespace, label, value))
    }

    /// The workloads of `workloads` (the list the index was built from) that `svc` selects,
    /// in list order: what `workloads.iter().filter(|w| compile::selects(svc, w))` gives.
    pub fn selected<'a>(
        &'a self,
        svc: &'a Service,
        workloads: &'a [Arc<Workload>],
    ) -> Box<dyn Iterator<Item = &'a Workload> + 'a> {
        if workloads.len() != self.len {
            // Not the list indexed: scan, as without an index.
            return Box::new(super::selected(svc, workloads));
        }
        // An empty selector selects nothing.
        let Some((k, v)) = svc.selector.iter().next() else {
            return Box::new(std::iter::empty());
        };
        let positions = self
            .by_label
            .get(&self.key(&svc.key.namespace, k, v))
            .map_or(&[][..], Vec::as_slice);
        Box::new(
            positions
                .iter()
                .filter_map(|&i| workloads.get(i).map(|w| &**w))
                .filter(move |w| super::selects(svc, w)),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use trellis_model::{ServiceKey, ServicePort, TargetPort};

    use super::*;

    fn workload(name: &str, namespace: &str, labels: &[(&str, &str)]) -> Arc<Workload> {
        Arc::new(Workload {
            name: name.into(),
            namespace: namespace.into(),
            service_account: "sa".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            inbound_address: "127.0.0.1:15006".parse().unwrap(),
            ports: vec![9080],
            admin_address: None,
        })
    }

    fn service(namespace: &str, selector: &[(&str, &str)]) -> Service {
        Service {
            key: ServiceKey::new(namespace, "s"),
            selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ports: vec![ServicePort {
                name: None,
                port: 80,
                target_port: TargetPort::Number(80),
                protocol: Default::default(),
            }],
            cluster_ip: None,
        }
    }

    #[test]
    fn selects_what_the_scan_selects_in_the_same_order() {
        let workloads = vec![
            workload("a", "default", &[("app", "web"), ("v", "1")]),
            workload("b", "other", &[("app", "web"), ("v", "1")]),
            workload("c", "default", &[("app", "db")]),
            workload("d", "default", &[("app", "web"), ("v", "2")]),
            workload("e", "default", &[("app", "web")]),
        ];
        let index = SelectorIndex::new(&workloads);
        for selector in [
            &[("app", "web")][..],
            &[("app", "web"), ("v", "1")],
            &[("v", "2"), ("app", "web")],
            &[("app", "db")],
            &[("app", "none")],
            &[],
        ] {
            for ns in ["default", "other"] {
                let svc = service(ns, selector);
                let scan: Vec<&str> = crate::compile::selected(&svc, &workloads)
                    .map(|w| w.name.as_str())
                    .collect();
                let indexed: Vec<&str> = index
                    .selected(&svc, &workloads)
                    .map(|w| w.name.as_str())
                    .collect();
                assert_eq!(indexed, scan, "{ns} {selector:?}");
            }
        }
        // Another list than the one indexed: a scan.
        let fewer = &workloads[..2];
        let svc = service("default", &[("app", "web")]);
        assert_eq!(index.selected(&svc, fewer).count(), 1);
    }
}
