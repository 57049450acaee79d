//! Gateway API `Gateway` and `GatewayClass` (gateway.networking.k8s.io v1, v1beta1).
//!
//! A Gateway's `listeners[]` (name, port, protocol HTTP/HTTPS/TLS/TCP, hostname,
//! tls{mode Terminate|Passthrough, certificateRefs}, allowedRoutes{namespaces.from Same|All,
//! kinds}) become listeners of the gateway workloads that serve it (see
//! `trellis_control::compile::gateway` for which ones). Refused "not supported yet":
//! `allowedRoutes.namespaces.from: Selector`, `spec.addresses`, `tls.options`,
//! `tls.frontendValidation`, protocol UDP. Noted: `spec.infrastructure`.

use serde::Deserialize;
use trellis_model::gateway::ListenerProtocol;

use crate::document::{Resource, Translated};
use crate::gateways::{
    AllowedRoutes, ApiGateway, ApiListener, ApiTls, GatewayClass, GatewayResource, SecretRef,
};
use crate::kube::{FieldError, not_yet};
use crate::traffic::{Meta, from_value, port};

#[derive(Debug, Deserialize)]
struct Gateway {
    metadata: Meta,
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    gateway_class_name: String,
    #[serde(default)]
    listeners: Vec<Listener>,
    #[serde(default)]
    addresses: Vec<serde_yaml::Value>,
    infrastructure: Option<serde_yaml::Value>,
    backend_tls: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Listener {
    name: String,
    hostname: Option<String>,
    port: i64,
    protocol: String,
    tls: Option<Tls>,
    allowed_routes: Option<Allowed>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Tls {
    mode: Option<String>,
    #[serde(default)]
    certificate_refs: Vec<CertRef>,
    options: Option<serde_yaml::Value>,
    frontend_validation: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertRef {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Allowed {
    namespaces: Option<Namespaces>,
    #[serde(default)]
    kinds: Vec<RouteKind>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Namespaces {
    from: Option<String>,
    selector: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteKind {
    group: Option<String>,
    kind: String,
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let gw: Gateway = from_value(value)?;
    let source = gw.metadata.reference("Gateway")?;
    let mut notes = Vec::new();
    if !gw.spec.addresses.is_empty() {
        return Err(not_yet("spec.addresses", "requesting addresses"));
    }
    if gw.spec.infrastructure.is_some() {
        notes.push("spec.infrastructure ignored".into());
    }
    if gw.spec.backend_tls.is_some() {
        return Err(not_yet("spec.backendTLS", "backend TLS"));
    }
    if gw.spec.listeners.is_empty() {
        return Err(FieldError::new(
            "spec.listeners",
            "must have at least one listener",
        ));
    }
    let mut listeners: Vec<ApiListener> = Vec::new();
    for (i, l) in gw.spec.listeners.iter().enumerate() {
        let field = format!("spec.listeners[{i}]");
        let listener = listener(&field, l, &source.namespace)?;
        if listeners.iter().any(|o| o.name == listener.name) {
            return Err(FieldError::new(
                format!("{field}.name"),
                format!("listener name {:?} is used twice", listener.name),
            ));
        }
        // The spec's listener conflicts: one port is one protocol family, and two listeners
        // on a port need distinct hostnames.
        if let Some(o) = listeners.iter().find(|o| o.port == listener.port) {
            let http_family = |p| matches!(p, ListenerProtocol::Http);
            if http_family(o.protocol) != http_family(listener.protocol)
                || (o.protocol == ListenerProtocol::Tcp
                    || listener.protocol == ListenerProtocol::Tcp)
                || o.hostname == listener.hostname
            {
                return Err(FieldError::new(
                    field,
                    format!(
                        "conflicts with listener {:?} on port {}: same port needs a compatible protocol and a distinct hostname",
                        o.name, o.port
                    ),
                ));
            }
        }
        listeners.push(listener);
    }
    Ok(Translated::Resource(Resource::Gateway(Box::new(
        GatewayResource::Api(ApiGateway {
            source,
            created: gw.metadata.creation_timestamp,
            class_name: gw.spec.gateway_class_name,
            listeners,
            notes,
        }),
    ))))
}

fn listener(field: &str, l: &Listener, namespace: &str) -> Result<ApiListener, FieldError> {
    let protocol = match l.protocol.as_str() {
        "HTTP" => ListenerProtocol::Http,
        "HTTPS" => ListenerProtocol::Https,
        "TLS" => ListenerProtocol::Tls,
        "TCP" => ListenerProtocol::Tcp,
        "UDP" => return Err(not_yet(format!("{field}.protocol"), "UDP")),
        other => {
            return Err(FieldError::new(
                format!("{field}.protocol"),
                format!("must be one of HTTP, HTTPS, TLS, TCP; got {other:?}"),
            ));
        }
    };
    if let Some(h) = &l.hostname
        && !crate::gateways::is_api_hostname(h)
    {
        return Err(FieldError::new(
            format!("{field}.hostname"),
            format!("must be a host name or \"*.suffix\", got {h:?}"),
        ));
    }
    let tls = match (&l.tls, protocol) {
        (None, ListenerProtocol::Https | ListenerProtocol::Tls) => {
            return Err(FieldError::new(
                format!("{field}.tls"),
                format!("is required for protocol {}", l.protocol),
            ));
        }
        (None, _) => None,
        (Some(_), ListenerProtocol::Http | ListenerProtocol::Tcp) => {
            return Err(FieldError::new(
                format!("{field}.tls"),
                format!("must not be set for protocol {}", l.protocol),
            ));
        }
        (Some(t), _) => Some(tls(&format!("{field}.tls"), t, protocol, namespace)?),
    };
    let mut allowed = AllowedRoutes::default();
    if let Some(a) = &l.allowed_routes {
        if let Some(ns) = &a.namespaces {
            match ns.from.as_deref().unwrap_or("Same") {
                "Same" => {}
                "All" => allowed.all_namespaces = true,
                "Selector" => {
                    return Err(not_yet(
                        format!("{field}.allowedRoutes.namespaces.from"),
                        "Selector (namespace labels)",
                    ));
                }
                other => {
                    return Err(FieldError::new(
                        format!("{field}.allowedRoutes.namespaces.from"),
                        format!("must be Same, All or Selector, got {other:?}"),
                    ));
                }
            }
            if ns.selector.is_some() && ns.from.as_deref() != Some("Selector") {
                return Err(FieldError::new(
                    format!("{field}.allowedRoutes.namespaces.selector"),
                    "needs from: Selector",
                ));
            }
        }
        for (j, k) in a.kinds.iter().enumerate() {
            let group = k.group.as_deref().unwrap_or("gateway.networking.k8s.io");
            if group != "gateway.networking.k8s.io"
                || !matches!(
                    k.kind.as_str(),
                    "HTTPRoute" | "GRPCRoute" | "TLSRoute" | "TCPRoute"
                )
            {
                return Err(FieldError::new(
                    format!("{field}.allowedRoutes.kinds[{j}]"),
                    format!("{group}/{} is not a route kind this gateway serves", k.kind),
                ));
            }
            allowed.kinds.push(k.kind.clone());
        }
    }
    Ok(ApiListener {
        name: l.name.clone(),
        port: port(&format!("{field}.port"), l.port)?,
        protocol,
        hostname: l.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
        tls,
        allowed,
    })
}

fn tls(
    field: &str,
    t: &Tls,
    protocol: ListenerProtocol,
    namespace: &str,
) -> Result<ApiTls, FieldError> {
    if t.options.is_some() {
        return Err(not_yet(format!("{field}.options"), "TLS options"));
    }
    if t.frontend_validation.is_some() {
        return Err(not_yet(
            format!("{field}.frontendValidation"),
            "client certificate validation",
        ));
    }
    let passthrough = match t.mode.as_deref().unwrap_or("Terminate") {
        "Terminate" => false,
        "Passthrough" if protocol == ListenerProtocol::Tls => true,
        "Passthrough" => {
            return Err(FieldError::new(
                format!("{field}.mode"),
                "Passthrough needs protocol TLS",
            ));
        }
        other => {
            return Err(FieldError::new(
                format!("{field}.mode"),
                format!("must be Terminate or Passthrough, got {other:?}"),
            ));
        }
    };
    let mut certificate_refs = Vec::new();
    for (i, c) in t.certificate_refs.iter().enumerate() {
        let group = c.group.as_deref().unwrap_or("");
        let kind = c.kind.as_deref().unwrap_or("Secret");
        if !matches!(group, "" | "core") || kind != "Secret" {
            return Err(FieldError::new(
                format!("{field}.certificateRefs[{i}]"),
                format!("must be a core Secret, got {group}/{kind}"),
            ));
        }
        certificate_refs.push(SecretRef {
            namespace: c.namespace.clone().unwrap_or_else(|| namespace.to_string()),
            name: c.name.clone(),
        });
    }
    if !passthrough && certificate_refs.is_empty() {
        return Err(FieldError::new(
            format!("{field}.certificateRefs"),
            "mode Terminate needs at least one certificateRef",
        ));
    }
    Ok(ApiTls {
        passthrough,
        certificate_refs,
    })
}

#[derive(Debug, Deserialize)]
struct Class {
    metadata: Meta,
    spec: ClassSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClassSpec {
    controller_name: String,
}

/// `GatewayClass`: cluster-scoped, so its namespace is ignored.
pub(crate) fn translate_class(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let class: Class = from_value(value)?;
    let mut source = class.metadata.reference("GatewayClass")?;
    source.namespace = String::new();
    if class.spec.controller_name.is_empty() {
        return Err(FieldError::new("spec.controllerName", "is required"));
    }
    Ok(Translated::Resource(Resource::Gateway(Box::new(
        GatewayResource::Class(GatewayClass {
            source,
            controller_name: class.spec.controller_name,
        }),
    ))))
}
