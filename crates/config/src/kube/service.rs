//! Kubernetes `v1 Service` -> `trellis_model::Service`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Deserializer};
use trellis_model::{AppProtocol, Service, ServiceKey, ServicePort, TargetPort};

use super::{DEFAULT_NAMESPACE, FieldError, is_dns1035_label, is_dns1123_label, is_iana_svc_name};

/// The fields of a `v1 Service` the mesh reads; everything else is accepted and ignored, as the
/// API server would store it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceResource {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<ServicePortSpec>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortSpec {
    pub name: Option<String>,
    /// Wider than `u16` so that an out-of-range value gets a range error, not a type error.
    pub port: i64,
    pub target_port: Option<IntOrString>,
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
}

/// Kubernetes' `IntOrString`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    // Hand-written rather than `#[serde(untagged)]`, whose error ("did not match any variant")
    // would not tell the user what is expected.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::Number(n) => n
                .as_i64()
                .map(Self::Int)
                .ok_or_else(|| serde::de::Error::custom(format!("must be an integer, got {n}"))),
            serde_yaml::Value::String(s) => Ok(Self::String(s)),
            other => Err(serde::de::Error::custom(format!(
                "must be a port number or a port name, got {}",
                describe(&other)
            ))),
        }
    }
}

fn describe(v: &serde_yaml::Value) -> &'static str {
    match v {
        serde_yaml::Value::Null => "null",
        serde_yaml::Value::Bool(_) => "a boolean",
        serde_yaml::Value::Number(_) => "a number",
        serde_yaml::Value::String(_) => "a string",
        serde_yaml::Value::Sequence(_) => "a list",
        serde_yaml::Value::Mapping(_) => "a mapping",
        serde_yaml::Value::Tagged(_) => "a tagged value",
    }
}

/// Reads and validates one Service document (already known to be `v1`/`Service`).
pub(crate) fn translate(value: serde_yaml::Value) -> Result<Service, FieldError> {
    let resource: ServiceResource = serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        FieldError {
            field: (path != ".").then_some(path),
            message: err.into_inner().to_string(),
        }
    })?;
    validate(resource)
}

fn validate(resource: ServiceResource) -> Result<Service, FieldError> {
    let name = resource
        .metadata
        .name
        .ok_or_else(|| FieldError::new("metadata.name", "is required"))?;
    if !is_dns1035_label(&name) {
        return Err(FieldError::new(
            "metadata.name",
            format!(
                "must be a DNS-1035 label (lowercase letters, digits, '-', starting with a letter, at most 63), got {name:?}"
            ),
        ));
    }
    let namespace = resource
        .metadata
        .namespace
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    if !is_dns1123_label(&namespace) {
        return Err(FieldError::new(
            "metadata.namespace",
            format!(
                "must be a DNS-1123 label (lowercase letters, digits, '-', at most 63), got {namespace:?}"
            ),
        ));
    }
    let spec = resource.spec;
    let ports = validate_ports(&spec.ports)?;
    let cluster_ip = match spec.cluster_ip.as_deref() {
        // "None" is a headless Service; "" asks the API server to allocate one.
        None | Some("") | Some("None") => None,
        Some(ip) => Some(ip.parse::<IpAddr>().map_err(|_| {
            FieldError::new(
                "spec.clusterIP",
                format!("must be an IP address or \"None\", got {ip:?}"),
            )
        })?),
    };
    Ok(Service {
        key: ServiceKey::new(namespace, name),
        ports,
        selector: spec.selector,
        cluster_ip,
    })
}

fn validate_ports(specs: &[ServicePortSpec]) -> Result<Vec<ServicePort>, FieldError> {
    let mut ports = Vec::with_capacity(specs.len());
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, spec) in specs.iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let port = port_number(spec.port).ok_or_else(|| {
            FieldError::new(field("port"), format!("must be 1-65535, got {}", spec.port))
        })?;
        match &spec.name {
            Some(name) if !is_iana_svc_name(name) => {
                return Err(FieldError::new(
                    field("name"),
                    format!(
                        "must be an IANA service name (at most 15 lowercase letters, digits, '-'), got {name:?}"
                    ),
                ));
            }
            Some(name) if !names.insert(name.clone()) => {
                return Err(FieldError::new(
                    field("name"),
                    format!("duplicate port name {name:?}"),
                ));
            }
            None if specs.len() > 1 => {
                return Err(FieldError::new(
                    field("name"),
                    "is required when a Service has more than one port",
                ));
            }
            _ => {}
        }
        let protocol = spec.protocol.as_deref().unwrap_or("TCP");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            return Err(FieldError::new(
                field("protocol"),
                format!("must be TCP, UDP or SCTP, got {protocol:?}"),
            ));
        }
        if !numbers.insert((port, protocol)) {
            return Err(FieldError::new(
                field("port"),
                format!("duplicate port {port}/{protocol}"),
            ));
        }
        let target_port = match &spec.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(port_number(*n).ok_or_else(|| {
                FieldError::new(field("targetPort"), format!("must be 1-65535, got {n}"))
            })?),
            Some(IntOrString::String(s)) if is_iana_svc_name(s) => TargetPort::Named(s.clone()),
            Some(IntOrString::String(s)) => {
                return Err(FieldError::new(
                    field("targetPort"),
                    format!("must be 1-65535 or an IANA service name, got {s:?}"),
                ));
            }
        };
        // The proxies carry TCP only; UDP and SCTP ports are valid Kubernetes but not meshed.
        if protocol != "TCP" {
            continue;
        }
        ports.push(ServicePort {
            name: spec.name.clone(),
            port,
            target_port,
            protocol: AppProtocol::declared(spec.app_protocol.as_deref(), spec.name.as_deref()),
        });
    }
    Ok(ports)
}

fn port_number(n: i64) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}
