//! Istio `ServiceEntry` (networking.istio.io v1, v1beta1, v1alpha3) -> [`ServiceEntry`]: hosts
//! the mesh's registry does not learn from Kubernetes (external APIs, VMs), with their ports,
//! addresses, location, resolution and endpoints.
//!
//! This module only parses and validates; the control plane registers the hosts as services and
//! compiles their endpoints (`trellis-control`'s `compile::service_entry`). Hosts resolve as in
//! every Istio kind ([`crate::traffic::resolve_host`]): an external name becomes
//! [`ServiceKey::external`], so a VirtualService or DestinationRule naming the same host
//! attaches to the same key. Refused (Invalid): `workloadSelector` (WorkloadEntry selection is
//! not supported yet), STATIC endpoints that are not IP addresses, endpoints with resolution
//! NONE, unix-socket endpoints, DNS without endpoints on a wildcard host. Noted and ignored:
//! `exportTo` (visible mesh-wide), `subjectAltNames`, endpoints' `weight`, `network`,
//! `locality` and `serviceAccount`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
use trellis_model::authz::Cidr;
use trellis_model::route::ResourceRef;
use trellis_model::{AppProtocol, ServiceKey, ServicePort, TargetPort};

use crate::document::{Resource, Translated};
use crate::kube::FieldError;
use crate::traffic::{Meta, from_value, port, resolve_host};

/// Where the hosts' workloads live (Istio `ServiceEntry.Location`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh: no proxy answers there, so no mesh mTLS (plain, or TLS originated by
    /// a DestinationRule).
    #[default]
    MeshExternal,
    /// Part of the mesh (VMs, hand-managed endpoints). Reached plaintext too until
    /// WorkloadEntry-style registration says a proxy answers there.
    MeshInternal,
}

/// How the proxy finds the endpoints (Istio `ServiceEntry.Resolution`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Traffic goes to the address the application connected to.
    #[default]
    None,
    /// The endpoints' IP addresses.
    Static,
    /// The endpoints' addresses (or the hosts) looked up in DNS; every address is an endpoint.
    Dns,
    /// Like DNS, but one address at a time (the first the lookup returns), as Envoy's
    /// LOGICAL_DNS.
    DnsRoundRobin,
}

/// One of `spec.endpoints`: an address (IP, or a DNS name with resolution DNS) with per-port
/// overrides and labels (for DestinationRule subsets).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EntryEndpoint {
    pub address: String,
    /// Port name -> the port to connect to on this endpoint.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One ServiceEntry, translated.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ServiceEntry {
    pub source: ResourceRef,
    pub created: Option<String>,
    /// As written (for messages and wildcard hosts).
    pub hosts: Vec<String>,
    /// One per host: the key traffic config names it by (a cluster Service's for short names,
    /// [`ServiceKey::external`] otherwise; a wildcard keeps its text and matches no route).
    pub keys: Vec<ServiceKey>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Cidr>,
    /// `targetPort` (default: the port) as a number.
    pub ports: Vec<ServicePort>,
    pub location: Location,
    pub resolution: Resolution,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EntryEndpoint>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Doc {
    metadata: Meta,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    ports: Vec<PortSpec>,
    location: Option<String>,
    resolution: Option<String>,
    #[serde(default)]
    endpoints: Vec<EndpointSpec>,
    workload_selector: Option<serde_yaml::Value>,
    #[serde(default)]
    export_to: Vec<String>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortSpec {
    number: i64,
    name: Option<String>,
    protocol: Option<String>,
    target_port: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EndpointSpec {
    address: Option<String>,
    #[serde(default)]
    ports: BTreeMap<String, i64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    network: Option<String>,
    locality: Option<String>,
    weight: Option<i64>,
    service_account: Option<String>,
}

/// Istio's port protocols; HTTPS, TLS and the database protocols are opaque to the proxy
/// (the application's own TLS passes through, or is detected per connection).
fn protocol(field: &str, text: Option<&str>) -> Result<AppProtocol, FieldError> {
    let Some(text) = text else {
        return Ok(AppProtocol::Unknown);
    };
    match text.to_ascii_uppercase().as_str() {
        "HTTP" => Ok(AppProtocol::Http),
        "HTTP2" => Ok(AppProtocol::Http2),
        "GRPC" => Ok(AppProtocol::Grpc),
        "HTTPS" | "TLS" | "TCP" | "MONGO" | "MYSQL" | "REDIS" => Ok(AppProtocol::Tcp),
        _ => Err(FieldError::new(
            field,
            format!(
                "must be one of HTTP, HTTPS, HTTP2, GRPC, TLS, TCP, MONGO, MYSQL, REDIS, got {text:?}"
            ),
        )),
    }
}

fn enum_field<T: serde::de::DeserializeOwned>(
    field: &str,
    text: Option<&str>,
    allowed: &str,
) -> Result<Option<T>, FieldError> {
    text.map(|t| {
        serde_yaml::from_value(serde_yaml::Value::String(t.to_string()))
            .map_err(|_| FieldError::new(field, format!("must be one of {allowed}, got {t:?}")))
    })
    .transpose()
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let doc: Doc = from_value(value)?;
    let source = doc.metadata.reference("ServiceEntry")?;
    let spec = doc.spec;
    let mut notes = Vec::new();
    if spec.workload_selector.is_some() {
        return Err(FieldError::new(
            "spec.workloadSelector",
            "is not supported yet (list the workloads under spec.endpoints)",
        ));
    }
    if !spec.export_to.is_empty() {
        notes.push("spec.exportTo ignored: service entries are visible mesh-wide".to_string());
    }
    if !spec.subject_alt_names.is_empty() {
        notes.push("spec.subjectAltNames ignored".to_string());
    }
    if spec.hosts.is_empty() {
        return Err(FieldError::new("spec.hosts", "must name at least one host"));
    }
    let location = enum_field(
        "spec.location",
        spec.location.as_deref(),
        "MESH_EXTERNAL, MESH_INTERNAL",
    )?
    .unwrap_or_default();
    let resolution: Resolution = enum_field(
        "spec.resolution",
        spec.resolution.as_deref(),
        "NONE, STATIC, DNS, DNS_ROUND_ROBIN",
    )?
    .unwrap_or_default();
    let mut keys = Vec::new();
    for (i, host) in spec.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if host.contains('*') {
            let valid = host.starts_with("*.") && !host[2..].contains('*') || host == "*";
            if !valid {
                return Err(FieldError::new(
                    field,
                    format!(
                        "a wildcard must be the whole first label (*.example.com), got {host:?}"
                    ),
                ));
            }
            if matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin)
                && spec.endpoints.is_empty()
            {
                return Err(FieldError::new(
                    field,
                    format!(
                        "{host:?}: a wildcard host cannot be resolved in DNS; list spec.endpoints or use resolution NONE"
                    ),
                ));
            }
            notes.push(format!(
                "host {host:?}: wildcard hosts are matched by spec.addresses only (Host and SNI matching is not supported yet)"
            ));
            keys.push(ServiceKey::external(host.as_str()));
            continue;
        }
        let key = resolve_host(host, &source.namespace)
            .ok_or_else(|| FieldError::new(&field, format!("must be a DNS name, got {host:?}")))?;
        keys.push(key);
    }
    let mut addresses = Vec::new();
    for (i, a) in spec.addresses.iter().enumerate() {
        let cidr = a
            .parse::<Cidr>()
            .map_err(|e| FieldError::new(format!("spec.addresses[{i}]"), e.to_string()))?;
        addresses.push(cidr);
    }
    if spec.ports.is_empty() {
        return Err(FieldError::new("spec.ports", "must list at least one port"));
    }
    let mut ports: Vec<ServicePort> = Vec::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let number = port(&format!("{field}.number"), p.number)?;
        if ports.iter().any(|o| o.port == number) {
            return Err(FieldError::new(
                format!("{field}.number"),
                format!("duplicate port {number}"),
            ));
        }
        if let Some(name) = &p.name
            && ports.iter().any(|o| o.name.as_ref() == Some(name))
        {
            return Err(FieldError::new(
                format!("{field}.name"),
                format!("duplicate port name {name:?}"),
            ));
        }
        let target = p
            .target_port
            .map(|t| port(&format!("{field}.targetPort"), t))
            .transpose()?
            .unwrap_or(number);
        ports.push(ServicePort {
            name: p.name.clone(),
            port: number,
            target_port: TargetPort::Number(target),
            protocol: protocol(&format!("{field}.protocol"), p.protocol.as_deref())?,
        });
    }
    if resolution == Resolution::None && !spec.endpoints.is_empty() {
        return Err(FieldError::new(
            "spec.endpoints",
            "must be empty with resolution NONE (traffic goes to the address the application connected to)",
        ));
    }
    let mut endpoints = Vec::new();
    for (i, e) in spec.endpoints.iter().enumerate() {
        let field = format!("spec.endpoints[{i}]");
        let Some(address) = e.address.clone().filter(|a| !a.is_empty()) else {
            return Err(FieldError::new(format!("{field}.address"), "is required"));
        };
        if address.starts_with("unix://") {
            return Err(FieldError::new(
                format!("{field}.address"),
                "unix domain socket endpoints are not supported",
            ));
        }
        let is_ip = address.parse::<IpAddr>().is_ok();
        if resolution == Resolution::Static && !is_ip {
            return Err(FieldError::new(
                format!("{field}.address"),
                format!("must be an IP address with resolution STATIC, got {address:?}"),
            ));
        }
        if !is_ip && !address.split('.').all(crate::kube::is_dns1123_label) {
            return Err(FieldError::new(
                format!("{field}.address"),
                format!("must be an IP address or a DNS name, got {address:?}"),
            ));
        }
        let mut endpoint_ports = BTreeMap::new();
        for (name, number) in &e.ports {
            let f = format!("{field}.ports.{name}");
            if !ports
                .iter()
                .any(|p| p.name.as_deref() == Some(name.as_str()))
            {
                return Err(FieldError::new(f, "names no port of spec.ports"));
            }
            endpoint_ports.insert(name.clone(), port(&f, *number)?);
        }
        if e.weight.is_some() {
            notes.push(format!(
                "{field}.weight ignored: endpoints are balanced unweighted"
            ));
        }
        if e.network.is_some() || e.locality.is_some() || e.service_account.is_some() {
            notes.push(format!(
                "{field}: network, locality and serviceAccount ignored"
            ));
        }
        endpoints.push(EntryEndpoint {
            address,
            ports: endpoint_ports,
            labels: e.labels.clone(),
        });
    }
    Ok(Translated::Resource(Resource::ServiceEntry(Box::new(
        ServiceEntry {
            source,
            created: doc.metadata.creation_timestamp,
            hosts: spec.hosts,
            keys,
            addresses,
            ports,
            location,
            resolution,
            endpoints,
            notes,
        },
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ServiceEntry, FieldError> {
        let value: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        match translate(value)? {
            Translated::Resource(Resource::ServiceEntry(se)) => Ok(*se),
            other => panic!("unexpected {other:?}"),
        }
    }

    const HEAD: &str = "metadata: {name: ext, namespace: default}\n";

    #[test]
    fn static_entry_with_two_endpoints() {
        let se = parse(&format!(
            "{HEAD}spec:
  hosts: [api.external.test]
  addresses: [198.18.7.0/24]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}]
  endpoints:
  - address: 198.18.0.5
  - address: 198.18.0.6
    ports: {{http: 9090}}
    labels: {{version: v2}}
"
        ))
        .unwrap();
        assert_eq!(se.keys, vec![ServiceKey::external("api.external.test")]);
        assert_eq!(se.resolution, Resolution::Static);
        assert_eq!(se.ports[0].target_port, TargetPort::Number(8080));
        assert_eq!(se.ports[0].protocol, AppProtocol::Http);
        assert_eq!(se.endpoints[1].ports.get("http"), Some(&9090));
        assert!(se.addresses[0].contains("198.18.7.200".parse().unwrap()));
        assert!(!se.addresses[0].contains("198.18.8.1".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "spec: {hosts: [a.b.c], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: host.example.com}]}",
                "spec.endpoints[0].address",
            ),
            (
                "spec: {hosts: [a.b.c], ports: [{number: 80, name: http}], resolution: DNSX}",
                "spec.resolution",
            ),
            (
                "spec: {hosts: [a.b.c], ports: [{number: 80, name: http}], location: OUTSIDE}",
                "spec.location",
            ),
            (
                "spec: {hosts: [a.b.c], ports: [{number: 0, name: http}]}",
                "spec.ports[0].number",
            ),
            (
                "spec: {hosts: [a.b.c], ports: [{number: 80, protocol: SMTP}]}",
                "spec.ports[0].protocol",
            ),
            (
                "spec: {hosts: [a.b.c], ports: [{number: 80}], addresses: [10.0.0.0/33]}",
                "spec.addresses[0]",
            ),
            (
                "spec: {hosts: [a.b.c], ports: [{number: 80}], endpoints: [{address: 1.2.3.4}]}",
                "spec.endpoints",
            ),
            (
                "spec: {hosts: [a.b.c], ports: [{number: 80}], workloadSelector: {labels: {app: x}}}",
                "spec.workloadSelector",
            ),
            (
                "spec: {hosts: ['*.b.c'], ports: [{number: 80}], resolution: DNS}",
                "spec.hosts[0]",
            ),
            (
                "spec: {hosts: [a.b.c], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 1.2.3.4, ports: {grpc: 9}}]}",
                "spec.endpoints[0].ports.grpc",
            ),
            ("spec: {hosts: [], ports: [{number: 80}]}", "spec.hosts"),
            ("spec: {hosts: [a.b.c]}", "spec.ports"),
        ];
        for (spec, field) in cases {
            let err = parse(&format!("{HEAD}{spec}")).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{spec}: {err:?}");
        }
    }

    #[test]
    fn wildcard_none_is_accepted_with_a_note() {
        let se = parse(&format!(
            "{HEAD}spec: {{hosts: ['*.wikipedia.org'], ports: [{{number: 443, name: tls, protocol: TLS}}], location: MESH_EXTERNAL}}"
        ))
        .unwrap();
        assert_eq!(se.resolution, Resolution::None);
        assert!(se.notes[0].contains("wildcard"), "{:?}", se.notes);
    }
}
