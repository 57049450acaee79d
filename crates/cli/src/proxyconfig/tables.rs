//! The pure half of `trellis proxy-config`: a proxy's `/config_dump` JSON in, rows out.
//!
//! Destinations in the dump are the model's `Destination` in its serde form (the proxy and the
//! CLI link the same model crate), so they are decoded with the model's types, never re-parsed
//! by hand.

use serde::Serialize;
use serde_json::Value;
use trellis_model::Destination;
use trellis_model::route::{HttpRoute, RouteAction};

/// Which part of the config to show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Listeners,
    Routes,
    Clusters,
    Endpoints,
    #[default]
    All,
}

/// The dump could not be read as a proxy's config dump.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("not a trellis-proxy /config_dump: {0}")]
    Shape(String),
    #[error("destination for {target}: {source}")]
    Destination {
        target: String,
        source: serde_json::Error,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Listener {
    pub name: String,
    pub address: String,
    /// For outbound ports: the target they forward to.
    pub target: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteRow {
    pub target: String,
    /// `None`: no route, the service's own endpoints.
    pub index: Option<usize>,
    pub name: String,
    pub resource: String,
    #[serde(rename = "match")]
    pub matches: String,
    pub action: String,
    pub timeout: String,
    pub retries: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterRow {
    pub target: String,
    /// `authority` or `authority|subset`.
    pub cluster: String,
    pub service: String,
    pub subset: Option<String>,
    pub endpoints: usize,
    pub load_balancer: String,
    pub outlier_detection: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EndpointRow {
    pub cluster: String,
    pub address: String,
    pub workload: String,
    pub identity: Option<String>,
    pub meshed: bool,
    pub labels: String,
}

/// One watched target and what discovery resolved for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Watched {
    pub target: String,
    pub state: String,
    pub destination: Option<Destination>,
}

/// Everything the tables are built from.
#[derive(Clone, Debug, PartialEq)]
pub struct Dump {
    pub listeners: Vec<Listener>,
    pub targets: Vec<Watched>,
}

/// Reads the parts of a `/config_dump` the tables show.
pub fn parse(dump: &Value) -> Result<Dump, DumpError> {
    let listeners_json = dump
        .pointer("/proxy/listeners")
        .and_then(Value::as_object)
        .ok_or_else(|| DumpError::Shape("no proxy.listeners".into()))?;
    let mut listeners = Vec::new();
    for (name, v) in listeners_json {
        match v {
            Value::String(addr) => listeners.push(Listener {
                name: name.clone(),
                address: addr.clone(),
                target: None,
            }),
            Value::Object(ports) => {
                for (target, addr) in ports {
                    listeners.push(Listener {
                        name: name.trim_end_matches('s').to_string(),
                        address: addr.as_str().unwrap_or_default().to_string(),
                        target: Some(target.clone()),
                    });
                }
            }
            _ => {}
        }
    }
    let mut targets = Vec::new();
    let empty = Vec::new();
    let watched = dump
        .pointer("/discovery/dump/targets")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for t in watched {
        let target = t["target"].as_str().unwrap_or_default().to_string();
        let state = t["state"].as_str().unwrap_or("unknown").to_string();
        let destination = match t.get("destination") {
            Some(d) => Some(serde_json::from_value(d.clone()).map_err(|source| {
                DumpError::Destination {
                    target: target.clone(),
                    source,
                }
            })?),
            None => None,
        };
        targets.push(Watched {
            target,
            state,
            destination,
        });
    }
    Ok(Dump { listeners, targets })
}

fn summarize_matches(route: &HttpRoute) -> String {
    match route.matches.as_slice() {
        [] => "*".to_string(),
        [one] => serde_json::to_string(one).unwrap_or_default(),
        [first, rest @ ..] => format!(
            "{} (+{} more)",
            serde_json::to_string(first).unwrap_or_default(),
            rest.len()
        ),
    }
}

fn summarize_action(action: &RouteAction) -> String {
    match action {
        RouteAction::Forward(bs) => {
            let total: u64 = bs.iter().map(|b| u64::from(b.weight)).sum();
            if total == 0 {
                return "all weights 0 (500)".to_string();
            }
            let parts: Vec<String> = bs
                .iter()
                .map(|b| {
                    let pct = u64::from(b.weight) * 100 / total;
                    format!("{} {pct}%", b.backend)
                })
                .collect();
            parts.join(", ")
        }
        RouteAction::Redirect(r) => format!("redirect {}", r.status),
        RouteAction::DirectResponse { status, .. } => format!("direct response {status}"),
    }
}

pub fn routes(dump: &Dump) -> Vec<RouteRow> {
    let mut rows = Vec::new();
    for w in &dump.targets {
        let Some(d) = &w.destination else { continue };
        if d.routes.is_empty() {
            rows.push(RouteRow {
                target: w.target.clone(),
                index: None,
                name: "-".into(),
                resource: "-".into(),
                matches: "*".into(),
                action: format!("{} (own endpoints)", d.authority),
                timeout: "-".into(),
                retries: "default".into(),
            });
        }
        for (i, r) in d.routes.iter().enumerate() {
            rows.push(RouteRow {
                target: w.target.clone(),
                index: Some(i),
                name: r.name.clone(),
                resource: r.source.to_string(),
                matches: summarize_matches(r),
                action: summarize_action(&r.action),
                timeout: r.timeout.map_or("-".to_string(), |t| format!("{t:?}")),
                retries: r
                    .retry
                    .as_ref()
                    .map_or("default".to_string(), |p| p.attempts.to_string()),
            });
        }
    }
    rows
}

fn cluster_name(authority: &str, subset: Option<&str>) -> String {
    match subset {
        Some(s) => format!("{authority}|{s}"),
        None => authority.to_string(),
    }
}

fn lb(policy: &trellis_model::policy::TrafficPolicy) -> String {
    serde_json::to_value(&policy.load_balancer)
        .ok()
        .map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        })
        .unwrap_or_default()
}

pub fn clusters(dump: &Dump) -> Vec<ClusterRow> {
    let mut rows = Vec::new();
    for w in &dump.targets {
        let Some(d) = &w.destination else { continue };
        rows.push(ClusterRow {
            target: w.target.clone(),
            cluster: d.authority.clone(),
            service: d.service.to_string(),
            subset: None,
            endpoints: d.endpoints.len(),
            load_balancer: lb(&d.policy),
            outlier_detection: d.policy.outlier_detection.is_some(),
        });
        for b in &d.backends {
            rows.push(ClusterRow {
                target: w.target.clone(),
                cluster: cluster_name(&b.authority, b.backend.subset.as_deref()),
                service: b.backend.service.to_string(),
                subset: b.backend.subset.clone(),
                endpoints: b.endpoints.len(),
                load_balancer: lb(&b.policy),
                outlier_detection: b.policy.outlier_detection.is_some(),
            });
        }
    }
    rows
}

pub fn endpoints(dump: &Dump) -> Vec<EndpointRow> {
    let mut rows = Vec::new();
    let mut push = |cluster: String, eps: &[trellis_model::Endpoint]| {
        for e in eps {
            let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            rows.push(EndpointRow {
                cluster: cluster.clone(),
                address: e.address.to_string(),
                workload: e.workload.clone(),
                identity: e.identity.clone(),
                meshed: e.meshed,
                labels: labels.join(","),
            });
        }
    };
    for w in &dump.targets {
        let Some(d) = &w.destination else { continue };
        push(d.authority.clone(), &d.endpoints);
        for b in &d.backends {
            push(
                cluster_name(&b.authority, b.backend.subset.as_deref()),
                &b.endpoints,
            );
        }
    }
    rows
}
