//! Conversions between the discovery wire types and the model, at the server's edge.

use std::net::SocketAddr;

use trellis_api::discovery as pb;
use trellis_identity::SpiffeId;
use trellis_model::{Destination, ServiceKey, Target, Workload};

/// A proxy sent something the control plane cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("{field}: {value:?} is not an ip:port address")]
    Address { field: &'static str, value: String },
    #[error("{field}: {value} is not a port (1-65535)")]
    Port { field: &'static str, value: u32 },
    #[error("workload: {0}")]
    Identity(#[from] trellis_identity::SpiffeIdError),
    #[error("workload.name: {0:?} is not a valid name (lowercase letters, digits, '-', '.')")]
    Name(String),
}

fn port(field: &'static str, value: u32) -> Result<u16, WireError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(WireError::Port { field, value })
}

fn addr(field: &'static str, value: &str) -> Result<SocketAddr, WireError> {
    value.parse().map_err(|_| WireError::Address {
        field,
        value: value.to_string(),
    })
}

/// Validates a registration: names must be able to form the workload's SPIFFE ID.
pub fn workload_from_wire(w: pb::Workload, trust_domain: &str) -> Result<Workload, WireError> {
    SpiffeId::new(trust_domain, &w.namespace, &w.service_account)?;
    let name_ok = !w.name.is_empty()
        && w.name.len() <= 253
        && w.name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !name_ok {
        return Err(WireError::Name(w.name));
    }
    let ports = w
        .ports
        .iter()
        .map(|p| port("workload.ports", *p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Workload {
        inbound_address: addr("workload.inbound_address", &w.inbound_address)?,
        admin_address: match w.admin_address.as_str() {
            "" => None,
            a => Some(addr("workload.admin_address", a)?),
        },
        name: w.name,
        namespace: w.namespace,
        service_account: w.service_account,
        labels: w.labels.into_iter().collect(),
        ports,
    })
}

pub fn target_from_wire(t: Option<pb::Target>) -> Result<Target, WireError> {
    match t.and_then(|t| t.kind).ok_or(WireError::Missing("target"))? {
        pb::target::Kind::Service(s) => {
            // Re-parse through the model so wire targets obey the same name rules as others.
            let text = format!(
                "{}.{}:{}",
                s.name,
                s.namespace,
                port("target.port", s.port)?
            );
            text.parse().map_err(|_| WireError::Address {
                field: "target",
                value: text,
            })
        }
        pb::target::Kind::Address(a) => Ok(Target::Address(addr("target.address", &a)?)),
    }
}

pub fn target_to_wire(t: &Target) -> pb::Target {
    let kind = match t {
        Target::Service {
            service: ServiceKey { namespace, name },
            port,
        } => pb::target::Kind::Service(pb::ServiceTarget {
            name: name.clone(),
            namespace: namespace.clone(),
            port: u32::from(*port),
        }),
        Target::Address(a) => pb::target::Kind::Address(a.to_string()),
    };
    pb::Target { kind: Some(kind) }
}

/// The `traffic_schema` this control plane writes (see the proto).
pub const TRAFFIC_SCHEMA: u32 = 1;

/// The traffic part of a destination as it travels in `traffic_json`. Borrowing, so encoding
/// copies nothing; the proxy decodes the same shape into owned model types.
#[derive(serde::Serialize)]
struct TrafficJson<'a> {
    policy: &'a trellis_model::policy::TrafficPolicy,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    routes: &'a [trellis_model::route::HttpRoute],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tcp_routes: &'a [trellis_model::route::TcpRoute],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    backends: &'a [trellis_model::Backend],
}

fn traffic_json(d: &Destination) -> String {
    let traffic = TrafficJson {
        policy: &d.policy,
        routes: &d.routes,
        tcp_routes: &d.tcp_routes,
        backends: &d.backends,
    };
    // Serializing plain data with string keys cannot fail; an empty string would only mean
    // "defaults", never a half-written value.
    serde_json::to_string(&traffic).unwrap_or_default()
}

pub fn destination_to_wire(d: &Destination) -> pb::Destination {
    pb::Destination {
        traffic_json: traffic_json(d),
        traffic_schema: TRAFFIC_SCHEMA,
        authority: d.authority.clone(),
        service_name: d.service.name.clone(),
        service_namespace: d.service.namespace.clone(),
        port: u32::from(d.port),
        protocol: d.protocol.as_str().to_string(),
        endpoints: d.endpoints.iter().map(endpoint_to_wire).collect(),
    }
}

/// One endpoint as it travels in a Destination and in an EndpointDelta.
pub fn endpoint_to_wire(e: &trellis_model::Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        address: e.address.to_string(),
        meshed: e.meshed,
        identity: e.identity.clone().unwrap_or_default(),
        workload: e.workload.clone(),
        labels: e
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        target_port: u32::from(e.target_port),
        remote: e.remote.as_ref().map(|r| pb::RemoteCluster {
            cluster: r.cluster.clone(),
            sni: r.sni.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_workload() -> pb::Workload {
        pb::Workload {
            name: "reviews-v1".into(),
            namespace: "default".into(),
            service_account: "bookinfo-reviews".into(),
            labels: [("app".to_string(), "reviews".to_string())]
                .into_iter()
                .collect(),
            inbound_address: "127.0.0.1:15006".into(),
            ports: vec![9080],
            admin_address: String::new(),
        }
    }

    #[test]
    fn workload_validation() {
        let w = workload_from_wire(wire_workload(), "cluster.local").unwrap();
        assert_eq!(w.admin_address, None);
        assert_eq!(w.ports, [9080]);
        let mut bad = wire_workload();
        bad.inbound_address = "nope".into();
        assert!(
            workload_from_wire(bad, "td")
                .unwrap_err()
                .to_string()
                .contains("inbound_address")
        );
        let mut bad = wire_workload();
        bad.ports = vec![70000];
        assert!(matches!(
            workload_from_wire(bad, "td"),
            Err(WireError::Port { .. })
        ));
        let mut bad = wire_workload();
        bad.service_account = "Bad".into();
        assert!(matches!(
            workload_from_wire(bad, "td"),
            Err(WireError::Identity(_))
        ));
    }

    #[test]
    fn target_round_trip() {
        for t in ["reviews.default:9080", "10.0.0.1:80", "[::1]:443"] {
            let t: Target = t.parse().unwrap();
            assert_eq!(target_from_wire(Some(target_to_wire(&t))).unwrap(), t);
        }
        assert!(target_from_wire(None).is_err());
        assert!(
            target_from_wire(Some(pb::Target {
                kind: Some(pb::target::Kind::Address("x".into()))
            }))
            .is_err()
        );
    }
}
