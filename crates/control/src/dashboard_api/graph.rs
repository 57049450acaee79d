//! The service graph the dashboard draws: nodes for workloads, services and callers outside
//! the mesh; edges for the traffic between them, each with its golden metrics over a window.
//!
//! Pure. Nodes and edges the config and registry imply (a service's selected workloads, a
//! proxy's subscriptions) are drawn even before traffic flows, so the graph shows the mesh's
//! shape at once; traffic adds any edge they do not (say, to an address target).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::series::{NodeId, SeriesKey, Stats};

/// Below this success rate (with at least [`MIN_REQUESTS_FOR_HEALTH`] requests in the window)
/// a node or edge is failing: drawn red.
pub const FAILING_BELOW: f64 = 0.95;
/// Fewer requests than this say too little to call anything failing.
pub const MIN_REQUESTS_FOR_HEALTH: f64 = 5.0;

#[derive(Clone, Debug, Serialize)]
pub struct Node {
    pub id: String,
    /// `workload`, `service` or `external`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub stats: Option<Stats>,
    pub failing: bool,
    /// What the workload's proxy's anomaly detector flags against its own recent baseline
    /// (`success_rate`, `latency`); empty for services and unflagged workloads.
    pub anomalies: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    pub id: String,
    pub source: String,
    pub target: String,
    pub stats: Option<Stats>,
    /// Most of the window's requests went over mesh mTLS.
    pub mtls: bool,
    pub failing: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// What the graph is made from.
pub struct Inputs<'a> {
    /// Series stats over the window.
    pub stats: &'a BTreeMap<SeriesKey, Stats>,
    /// Each service and the workloads it selects.
    pub services: Vec<(NodeId, Vec<NodeId>)>,
    /// Each registered workload and the services its proxy subscribed to.
    pub workloads: Vec<(NodeId, Vec<NodeId>)>,
    /// Workloads whose proxy flags an anomaly, with the kinds.
    pub anomalies: BTreeMap<NodeId, Vec<String>>,
}

fn failing(stats: Option<&Stats>) -> bool {
    stats.is_some_and(|s| {
        s.requests >= MIN_REQUESTS_FOR_HEALTH && s.success_rate.is_some_and(|r| r < FAILING_BELOW)
    })
}

fn node(id: &NodeId, stats: Option<&Stats>, anomalies: Vec<String>) -> Node {
    let (kind, namespace, name) = match id {
        NodeId::External => ("external", String::new(), "outside the mesh".to_string()),
        NodeId::Workload { namespace, name } => ("workload", namespace.clone(), name.clone()),
        NodeId::Service { namespace, name } => ("service", namespace.clone(), name.clone()),
    };
    Node {
        id: id.id(),
        kind,
        namespace,
        name,
        stats: stats.cloned(),
        failing: failing(stats),
        anomalies,
    }
}

pub fn build(inputs: &Inputs<'_>) -> Graph {
    let mut nodes: BTreeSet<NodeId> = BTreeSet::new();
    let mut edges: BTreeSet<(NodeId, NodeId)> = BTreeSet::new();
    for (svc, selected) in &inputs.services {
        nodes.insert(svc.clone());
        for wl in selected {
            nodes.insert(wl.clone());
            edges.insert((svc.clone(), wl.clone()));
        }
    }
    for (wl, subscribed) in &inputs.workloads {
        nodes.insert(wl.clone());
        for svc in subscribed {
            nodes.insert(svc.clone());
            edges.insert((wl.clone(), svc.clone()));
        }
    }
    for key in inputs.stats.keys() {
        match key {
            SeriesKey::Edge { from, to } => {
                nodes.insert(from.clone());
                nodes.insert(to.clone());
                edges.insert((from.clone(), to.clone()));
            }
            SeriesKey::Node(id) => {
                nodes.insert(id.clone());
            }
            SeriesKey::Route { .. } => {}
        }
    }
    let nodes = nodes
        .iter()
        .map(|id| {
            let flagged = inputs.anomalies.get(id).cloned().unwrap_or_default();
            node(id, inputs.stats.get(&SeriesKey::Node(id.clone())), flagged)
        })
        .collect();
    let edges = edges
        .into_iter()
        .map(|(from, to)| {
            let (source, target) = (from.id(), to.id());
            let stats = inputs.stats.get(&SeriesKey::Edge { from, to });
            Edge {
                id: format!("{source}->{target}"),
                source,
                target,
                mtls: stats.and_then(|s| s.tls_share).is_some_and(|t| t > 0.5),
                failing: failing(stats),
                stats: stats.cloned(),
            }
        })
        .collect();
    Graph { nodes, edges }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(requests: f64, success: f64, tls: f64) -> Stats {
        Stats {
            requests,
            rps: requests / 10.0,
            success_rate: Some(success),
            tls_share: Some(tls),
            ..Stats::default()
        }
    }

    #[test]
    fn static_shape_plus_traffic_with_health_and_mtls() {
        let wl = |n: &str| NodeId::workload("default", n);
        let svc = |n: &str| NodeId::service("default", n);
        let mut map = BTreeMap::new();
        map.insert(
            SeriesKey::Edge {
                from: wl("reviews-v2"),
                to: svc("ratings"),
            },
            stats(40.0, 0.0, 1.0),
        );
        map.insert(SeriesKey::Node(svc("ratings")), stats(40.0, 0.0, 1.0));
        map.insert(
            SeriesKey::Edge {
                from: NodeId::External,
                to: wl("productpage-v1"),
            },
            stats(3.0, 0.0, 0.0),
        );
        let graph = build(&Inputs {
            stats: &map,
            services: vec![(svc("ratings"), vec![wl("ratings-v1")])],
            workloads: vec![
                (wl("reviews-v2"), vec![svc("ratings")]),
                (wl("ratings-v1"), vec![]),
            ],
            anomalies: [(wl("ratings-v1"), vec!["latency".to_string()])].into(),
        });
        let ids: Vec<&str> = graph.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "external",
                "workload/default/productpage-v1",
                "workload/default/ratings-v1",
                "workload/default/reviews-v2",
                "service/default/ratings",
            ]
        );
        let edge = |id: &str| graph.edges.iter().find(|e| e.id == id).unwrap();
        let failing = edge("workload/default/reviews-v2->service/default/ratings");
        assert!(failing.failing && failing.mtls);
        let quiet = edge("service/default/ratings->workload/default/ratings-v1");
        assert!(!quiet.failing && !quiet.mtls && quiet.stats.is_none());
        // Three failed requests are too few to call the edge failing.
        assert!(!edge("external->workload/default/productpage-v1").failing);
        assert!(
            graph
                .nodes
                .iter()
                .any(|n| n.id == "service/default/ratings" && n.failing)
        );
    }
}
