//! Conversions between the discovery wire types and the model, at the client's edge. Updates
//! from the control plane are validated here; a failure becomes a Nack.

use std::net::SocketAddr;
use std::sync::Arc;

use trellis_api::discovery as pb;
use trellis_identity::SpiffeId;
use trellis_model::{AppProtocol, Destination, Endpoint, ServiceKey, Target, Workload};

use super::Resolution;

/// Why an Update was refused. Displays as `destination.endpoints[0].address: ...`, the text
/// the Nack carries back to the control plane.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("{0}: is required")]
    Missing(String),
    #[error("{field}: {value:?} is not an ip:port address")]
    Address { field: String, value: String },
    #[error("{field}: {value} is not a port (1-65535)")]
    Port { field: String, value: u32 },
    #[error("{field}: {value:?} is not a valid target")]
    Target { field: String, value: String },
    #[error("{field}: {source}")]
    Identity {
        field: String,
        #[source]
        source: trellis_identity::SpiffeIdError,
    },
}

fn port(field: &str, value: u32) -> Result<u16, UpdateError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| UpdateError::Port {
            field: field.to_string(),
            value,
        })
}

fn addr(field: &str, value: &str) -> Result<SocketAddr, UpdateError> {
    value.parse().map_err(|_| UpdateError::Address {
        field: field.to_string(),
        value: value.to_string(),
    })
}

pub(crate) fn workload_to_wire(w: &Workload) -> pb::Workload {
    pb::Workload {
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        service_account: w.service_account.clone(),
        labels: w
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        inbound_address: w.inbound_address.to_string(),
        ports: w.ports.iter().map(|p| u32::from(*p)).collect(),
        admin_address: w.admin_address.map(|a| a.to_string()).unwrap_or_default(),
    }
}

pub(crate) fn target_to_wire(t: &Target) -> pb::Target {
    let kind = match t {
        Target::Service { service, port } => pb::target::Kind::Service(pb::ServiceTarget {
            name: service.name.clone(),
            namespace: service.namespace.clone(),
            port: u32::from(*port),
        }),
        Target::Address(a) => pb::target::Kind::Address(a.to_string()),
    };
    pb::Target { kind: Some(kind) }
}

pub(crate) fn target_from_wire(t: Option<pb::Target>) -> Result<Target, UpdateError> {
    match t
        .and_then(|t| t.kind)
        .ok_or_else(|| UpdateError::Missing("target".into()))?
    {
        pb::target::Kind::Service(s) => {
            let text = format!(
                "{}.{}:{}",
                s.name,
                s.namespace,
                port("target.port", s.port)?
            );
            text.parse().map_err(|_| UpdateError::Target {
                field: "target".into(),
                value: text,
            })
        }
        pb::target::Kind::Address(a) => Ok(Target::Address(addr("target.address", &a)?)),
    }
}

pub(crate) fn destination_from_wire(d: pb::Destination) -> Result<Destination, UpdateError> {
    let required = |field: &str, value: &str| {
        if value.is_empty() {
            Err(UpdateError::Missing(field.to_string()))
        } else {
            Ok(())
        }
    };
    required("destination.authority", &d.authority)?;
    required("destination.service_name", &d.service_name)?;
    required("destination.service_namespace", &d.service_namespace)?;
    let endpoints = d
        .endpoints
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let field = |f: &str| format!("destination.endpoints[{i}].{f}");
            let identity = match e.identity.as_str() {
                "" => None,
                id => {
                    // The proxy will verify peers against this name: refuse what cannot be one.
                    id.parse::<SpiffeId>()
                        .map_err(|source| UpdateError::Identity {
                            field: field("identity"),
                            source,
                        })?;
                    Some(e.identity)
                }
            };
            Ok(Endpoint {
                address: addr(&field("address"), &e.address)?,
                meshed: e.meshed,
                identity,
                workload: e.workload,
                labels: e.labels.into_iter().collect(),
                target_port: port(&field("target_port"), e.target_port)?,
            })
        })
        .collect::<Result<Vec<_>, UpdateError>>()?;
    Ok(Destination {
        authority: d.authority,
        service: ServiceKey::new(d.service_namespace, d.service_name),
        port: port("destination.port", d.port)?,
        protocol: AppProtocol::from_wire(&d.protocol),
        endpoints,
        ..Destination::default()
    })
}

/// The target an Update is about and the resolution it carries.
pub(crate) fn update_from_wire(u: pb::Update) -> Result<(Target, Resolution), UpdateError> {
    let target = target_from_wire(u.target)?;
    let resolution = match u.destination {
        None => Resolution::NotFound,
        Some(d) => Resolution::Found(Arc::new(destination_from_wire(d)?)),
    };
    Ok((target, resolution))
}
