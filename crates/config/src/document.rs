//! Splitting a file into YAML documents and routing each by `apiVersion`/`kind`.

use serde::Deserialize;
use serde_yaml::Value;

use crate::error::{ConfigError, ResourceRef};
use crate::kinds::ignored_reason;
use crate::kube;
use crate::traffic::{DestinationPolicy, RouteSet};
use crate::{gateway, istio, linkerd, smi};

/// Bounds the work one file can cause; far above any real config file.
const MAX_DOCUMENTS: usize = 10_000;

/// A resource the mesh reads, translated into the model.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Service(trellis_model::Service),
    /// Routes from a VirtualService, HTTPRoute, GRPCRoute, ServiceProfile or TrafficSplit.
    Routes(Box<RouteSet>),
    /// A DestinationRule: subsets and traffic policy for one service.
    DestinationPolicy(Box<DestinationPolicy>),
    /// An Istio PeerAuthentication: the inbound mTLS mode of a mesh, namespace or workload.
    PeerAuthentication(Box<istio::peer_authentication::PeerAuthn>),
    /// An Istio AuthorizationPolicy: its scope and the rules proxies evaluate.
    AuthorizationPolicy(Box<istio::authorization_policy::AuthzPolicy>),
    /// An Istio RequestAuthentication: JWT rules for a mesh, namespace or workload.
    RequestAuthentication(Box<istio::request_authentication::RequestAuthn>),
    /// An Istio Telemetry: tracing and access-log settings of a mesh, namespace or workload.
    Telemetry(Box<istio::telemetry::TelemetryPolicy>),
    /// Istio's MeshConfig (the ConfigMap `istio`): telemetry extension providers.
    MeshConfig(Box<istio::mesh_config::MeshConfig>),
    /// An Istio WasmPlugin: a Proxy-Wasm module for a mesh, namespace or workload.
    WasmPlugin(Box<istio::wasm_plugin::WasmPluginPolicy>),
    /// An SMI HTTPRouteGroup, or a TrafficSplit with `matches` still to resolve against the
    /// config set's groups (`smi::resolve`).
    Smi(Box<smi::Pending>),
    /// An Istio ServiceEntry: hosts outside the Kubernetes registry, with their endpoints.
    ServiceEntry(Box<istio::service_entry::ServiceEntry>),
    /// A Trellis RateLimitPolicy: local rate limits for the inbound side of the workloads it
    /// covers.
    RateLimitPolicy(Box<crate::trellis::ratelimit::RateLimitPolicy>),
    /// A gateway, GatewayClass, ReferenceGrant, TLS Secret, or routes bound to gateways.
    Gateway(Box<crate::gateways::GatewayResource>),
    /// A multi-cluster `Link` or `ServiceExport` (docs/multicluster.md).
    Multicluster(Box<crate::multicluster::MulticlusterResource>),
}

/// What an adapter made of one document it reads.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Translated {
    Resource(Resource),
    /// Valid, but nothing of it applies to the mesh; the reason says why.
    Ignored(String),
}

/// What became of one document.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Resource(Resource),
    /// A kind this mesh does not read (yet); `reason` says which case it is.
    Ignored {
        reason: String,
    },
    Invalid(ConfigError),
}

/// One YAML document of a file, and what became of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub resource: ResourceRef,
    pub outcome: Outcome,
}

impl Document {
    pub fn is_invalid(&self) -> bool {
        matches!(self.outcome, Outcome::Invalid(_))
    }
}

/// Parses the bytes of one file (`file` is used in messages only) into its documents, in order.
/// Empty documents are skipped. A YAML syntax error ends the file: what follows it cannot be
/// split into documents reliably, so it is reported once as an invalid document.
pub fn parse_documents(file: &str, bytes: &[u8]) -> Vec<Document> {
    let mut documents = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_slice(bytes).enumerate() {
        if index >= MAX_DOCUMENTS {
            documents.push(invalid(
                file,
                unnamed(index),
                None,
                format!("too many documents (more than {MAX_DOCUMENTS})"),
            ));
            break;
        }
        match Value::deserialize(de) {
            Ok(Value::Null) => {}
            Ok(value) => documents.push(read_document(file, index, value)),
            Err(err) => {
                documents.push(invalid(
                    file,
                    unnamed(index),
                    None,
                    format!("invalid YAML: {err}"),
                ));
                break;
            }
        }
    }
    documents
}

fn unnamed(document: usize) -> ResourceRef {
    ResourceRef {
        document,
        kind: None,
        namespace: None,
        name: None,
    }
}

pub(crate) fn invalid(
    file: &str,
    resource: ResourceRef,
    field: Option<String>,
    message: String,
) -> Document {
    let err = ConfigError {
        file: file.to_string(),
        resource: resource.clone(),
        field,
        message,
    };
    Document {
        resource,
        outcome: Outcome::Invalid(err),
    }
}

fn read_document(file: &str, index: usize, value: Value) -> Document {
    let Value::Mapping(map) = &value else {
        return invalid(
            file,
            unnamed(index),
            None,
            "document is not a mapping with apiVersion, kind and metadata".to_string(),
        );
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let metadata = map.get("metadata");
    let mut resource = ResourceRef {
        document: index,
        kind: text(map.get("kind")),
        namespace: text(metadata.and_then(|m| m.get("namespace"))),
        name: text(metadata.and_then(|m| m.get("name"))),
    };
    let Some(kind) = resource.kind.clone() else {
        let field = Some("kind".to_string());
        return invalid(
            file,
            resource,
            field,
            "is required and must be a string".into(),
        );
    };
    let Some(api_version) = text(map.get("apiVersion")) else {
        let field = Some("apiVersion".to_string());
        return invalid(
            file,
            resource,
            field,
            "is required and must be a string".into(),
        );
    };
    if let Some(reason) = ignored_reason(&api_version, &kind) {
        return Document {
            resource,
            outcome: Outcome::Ignored { reason },
        };
    }
    // Namespaced kinds live in "default" when the document names none, as `kubectl apply` does.
    if resource.namespace.is_none() {
        resource.namespace = Some(kube::DEFAULT_NAMESPACE.to_string());
    }
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    let translated = match (group, kind.as_str()) {
        ("", "Service") => {
            kube::service::translate(value).map(|svc| Translated::Resource(Resource::Service(svc)))
        }
        ("", "Secret") => crate::gateways::secret::translate(value),
        ("", "ConfigMap") => istio::mesh_config::translate(value),
        ("networking.istio.io", "Gateway") => istio::gateway::translate(value),
        ("gateway.networking.k8s.io", "Gateway") => gateway::gateway::translate(value),
        ("gateway.networking.k8s.io", "GatewayClass") => gateway::gateway::translate_class(value),
        ("gateway.networking.k8s.io", "ReferenceGrant") => {
            gateway::reference_grant::translate(value)
        }
        ("networking.istio.io", "VirtualService") => istio::virtual_service::translate(value),
        ("networking.istio.io", "DestinationRule") => istio::destination_rule::translate(value),
        ("networking.istio.io", "ServiceEntry") => istio::service_entry::translate(value),
        ("security.istio.io", "PeerAuthentication") => istio::peer_authentication::translate(value),
        ("security.istio.io", "AuthorizationPolicy") => {
            istio::authorization_policy::translate(value)
        }
        ("security.istio.io", "RequestAuthentication") => {
            istio::request_authentication::translate(value)
        }
        ("telemetry.istio.io", "Telemetry") => istio::telemetry::translate(value),
        ("extensions.istio.io", "WasmPlugin") => istio::wasm_plugin::translate(value),
        ("gateway.networking.k8s.io", "HTTPRoute") => gateway::translate_http(value),
        ("gateway.networking.k8s.io", "GRPCRoute") => gateway::translate_grpc(value),
        ("linkerd.io", "ServiceProfile") => linkerd::translate(value),
        ("trellis.io", "RateLimitPolicy") => crate::trellis::ratelimit::translate(value),
        ("multicluster.trellis.io", "Link") => crate::multicluster::translate_link(value),
        ("multicluster.x-k8s.io", "ServiceExport") => crate::multicluster::translate_export(value),
        ("split.smi-spec.io", "TrafficSplit") => smi::translate(value),
        ("specs.smi-spec.io", "HTTPRouteGroup") => smi::translate_route_group(value),
        _ => Ok(Translated::Ignored(format!(
            "{kind} ({api_version}) is not read by the mesh"
        ))),
    };
    let outcome = match translated {
        Ok(Translated::Resource(r)) => Outcome::Resource(r),
        Ok(Translated::Ignored(reason)) => Outcome::Ignored { reason },
        Err(err) => Outcome::Invalid(ConfigError {
            file: file.to_string(),
            resource: resource.clone(),
            field: err.field,
            message: err.message,
        }),
    };
    Document { resource, outcome }
}

#[cfg(test)]
mod tests;
