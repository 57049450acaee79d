//! Conversions between the discovery wire types and the model, at the client's edge. Updates
//! from the control plane are validated here; a failure becomes a Nack.

use std::net::SocketAddr;
use std::sync::Arc;

use trellis_api::discovery as pb;
use trellis_identity::SpiffeId;
use trellis_model::policy::TrafficPolicy;
use trellis_model::route::{AbortStatus, HttpRoute, Percent, RouteAction, TcpRoute};
use trellis_model::{AppProtocol, Backend, Destination, Endpoint, ServiceKey, Target, Workload};

use super::Resolution;
use super::delta::EndpointDelta;

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
    /// `traffic_json` could not be decoded, or decoded to values out of range.
    #[error("{field}: {message}")]
    Traffic { field: String, message: String },
    /// Fields that may not be set together.
    #[error("{0}")]
    Conflict(&'static str),
    /// An endpoint delta that does not fit the destination in force.
    #[error(transparent)]
    Delta(#[from] super::delta::DeltaError),
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
    // No namespace names an external host (an Istio ServiceEntry host such as
    // `api.example.com`; see `ServiceKey::external`).
    let endpoints = d
        .endpoints
        .into_iter()
        .enumerate()
        .map(|(i, e)| endpoint_from_wire(&format!("destination.endpoints[{i}]"), e))
        .collect::<Result<Vec<_>, UpdateError>>()?;
    let traffic = traffic_from_wire(&d.traffic_json, d.traffic_schema)?;
    Ok(Destination {
        authority: d.authority,
        service: ServiceKey::new(d.service_namespace, d.service_name),
        port: port("destination.port", d.port)?,
        protocol: AppProtocol::from_wire(&d.protocol),
        endpoints,
        policy: traffic.policy,
        routes: traffic.routes,
        tcp_routes: traffic.tcp_routes,
        backends: traffic.backends,
    })
}

/// One endpoint of a Destination or an EndpointDelta; `at` names it in errors
/// (`destination.endpoints[3]`).
fn endpoint_from_wire(at: &str, e: pb::Endpoint) -> Result<Endpoint, UpdateError> {
    let field = |f: &str| format!("{at}.{f}");
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
        remote: e.remote.map(|r| trellis_model::RemoteCluster {
            cluster: r.cluster,
            sni: r.sni,
        }),
    })
}

/// An endpoint delta, its addresses and endpoints validated as a destination's are.
fn delta_from_wire(d: pb::EndpointDelta) -> Result<EndpointDelta, UpdateError> {
    let removed = d
        .removed
        .iter()
        .enumerate()
        .map(|(i, a)| addr(&format!("endpoint_delta.removed[{i}]"), a))
        .collect::<Result<Vec<_>, _>>()?;
    let added = d
        .added
        .into_iter()
        .enumerate()
        .map(|(i, placed)| {
            let at = format!("endpoint_delta.added[{i}].endpoint");
            let endpoint = placed
                .endpoint
                .ok_or_else(|| UpdateError::Missing(at.clone()))?;
            // u32 -> usize is lossless on every target this proxy builds for.
            Ok((placed.index as usize, endpoint_from_wire(&at, endpoint)?))
        })
        .collect::<Result<Vec<_>, UpdateError>>()?;
    Ok(EndpointDelta {
        base_version: d.base_version,
        removed,
        added,
    })
}

/// The `traffic_schema` this proxy reads (see the proto).
pub(crate) const TRAFFIC_SCHEMA: u32 = 1;

/// The decoded `traffic_json`: the model's own serde encoding, every key optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct TrafficJson {
    policy: TrafficPolicy,
    routes: Vec<HttpRoute>,
    tcp_routes: Vec<TcpRoute>,
    backends: Vec<Backend>,
}

fn traffic_error(field: String, message: impl Into<String>) -> UpdateError {
    UpdateError::Traffic {
        field,
        message: message.into(),
    }
}

fn traffic_from_wire(json: &str, schema: u32) -> Result<TrafficJson, UpdateError> {
    const FIELD: &str = "destination.traffic_json";
    if json.is_empty() {
        return Ok(TrafficJson::default());
    }
    if schema != TRAFFIC_SCHEMA {
        return Err(traffic_error(
            "destination.traffic_schema".into(),
            format!("schema {schema} is not supported (this proxy reads {TRAFFIC_SCHEMA})"),
        ));
    }
    let traffic: TrafficJson = serde_json::from_str(json)
        .map_err(|e| traffic_error(FIELD.into(), format!("cannot decode: {e}")))?;
    validate_traffic(&traffic)?;
    Ok(traffic)
}

/// Range checks serde cannot make: a value the proxy would misbehave on is refused whole.
fn validate_traffic(t: &TrafficJson) -> Result<(), UpdateError> {
    let pct = |field: String, p: Percent| {
        if (0.0..=100.0).contains(&p.0) {
            Ok(())
        } else {
            Err(traffic_error(
                field,
                format!("percent must be 0-100, got {}", p.0),
            ))
        }
    };
    for (i, r) in t.routes.iter().enumerate() {
        let f = |s: &str| format!("destination.traffic_json.routes[{i}].{s}");
        match &r.action {
            RouteAction::Redirect(redirect) if !(300..=399).contains(&redirect.status) => {
                return Err(traffic_error(
                    f("action.redirect.status"),
                    format!("must be 300-399, got {}", redirect.status),
                ));
            }
            RouteAction::DirectResponse { status, .. } if !(100..=599).contains(status) => {
                return Err(traffic_error(
                    f("action.direct_response.status"),
                    format!("must be 100-599, got {status}"),
                ));
            }
            _ => {}
        }
        for (j, m) in r.mirrors.iter().enumerate() {
            pct(f(&format!("mirrors[{j}].percent")), m.percent)?;
        }
        if let Some(fault) = &r.fault {
            if let Some(d) = &fault.delay {
                pct(f("fault.delay.percent"), d.percent)?;
            }
            if let Some(a) = &fault.abort {
                pct(f("fault.abort.percent"), a.percent)?;
                if let AbortStatus::Http(s) = a.status
                    && !(200..=599).contains(&s)
                {
                    return Err(traffic_error(
                        f("fault.abort.status.http"),
                        format!("must be 200-599, got {s}"),
                    ));
                }
            }
        }
    }
    let budget = |field: String, p: &TrafficPolicy| {
        let ratio = p.retry_budget.ratio;
        if ratio.is_finite() && ratio >= 0.0 {
            Ok(())
        } else {
            Err(traffic_error(
                field,
                format!("must be a finite ratio >= 0, got {ratio}"),
            ))
        }
    };
    budget(
        "destination.traffic_json.policy.retry_budget.ratio".into(),
        &t.policy,
    )?;
    for (i, b) in t.backends.iter().enumerate() {
        let f = |s: &str| format!("destination.traffic_json.backends[{i}].{s}");
        budget(f("policy.retry_budget.ratio"), &b.policy)?;
        for (j, e) in b.endpoints.iter().enumerate() {
            if let Some(id) = &e.identity {
                id.parse::<SpiffeId>()
                    .map_err(|source| UpdateError::Identity {
                        field: f(&format!("endpoints[{j}].identity")),
                        source,
                    })?;
            }
            if e.target_port == 0 {
                return Err(UpdateError::Port {
                    field: f(&format!("endpoints[{j}].target_port")),
                    value: 0,
                });
            }
        }
    }
    Ok(())
}

/// What an Update says about its target.
#[derive(Debug)]
pub(crate) enum Change {
    /// The whole new value.
    Full(Resolution),
    /// Endpoints removed and added on the destination held.
    Delta(EndpointDelta),
}

/// The target an Update is about and the change it carries.
pub(crate) fn update_from_wire(u: pb::Update) -> Result<(Target, Change), UpdateError> {
    let target = target_from_wire(u.target)?;
    let change = match (u.destination, u.endpoint_delta) {
        (Some(_), Some(_)) => {
            return Err(UpdateError::Conflict(
                "update: destination and endpoint_delta are both set",
            ));
        }
        (None, Some(delta)) => Change::Delta(delta_from_wire(delta)?),
        (None, None) => Change::Full(Resolution::NotFound),
        (Some(d), None) => Change::Full(Resolution::Found(Arc::new(destination_from_wire(d)?))),
    };
    Ok((target, change))
}
