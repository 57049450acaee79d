//! Multi-cluster kinds: what a cluster exports and which other clusters it links to.
//!
//! - `ServiceExport` (`multicluster.x-k8s.io/v1alpha1`, the Kubernetes Multi-Cluster Services
//!   API): the Service of the same namespace and name is exported, so linked clusters may send
//!   it traffic through this cluster's east-west gateway. Nothing in its spec is read.
//! - `Link` (`multicluster.trellis.io/v1alpha1`, Trellis' own; `trellis multicluster link`
//!   writes one): another cluster this control plane fetches exported services from.
//!
//! ```yaml
//! apiVersion: multicluster.trellis.io/v1alpha1
//! kind: Link
//! metadata: {name: east, namespace: trellis-system}
//! spec:
//!   cluster: east                          # the remote cluster's name (default: metadata.name)
//!   controlPlane: http://198.18.1.2:15014  # its control plane's HTTP API
//!   gateway: 198.18.1.2:15443              # its east-west gateway
//!   refreshInterval: 2s                    # how often exports are fetched again (default 5s)
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use trellis_model::ServiceKey;

use crate::document::{Resource, Translated};
use crate::kube::FieldError;
use crate::traffic::{Meta, duration, from_value};

/// How often a link's exports are fetched when the Link does not say.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

/// A multi-cluster resource, translated.
#[derive(Clone, Debug, PartialEq)]
pub enum MulticlusterResource {
    Link(Link),
    /// The Service this ServiceExport exports.
    Export(ServiceKey),
}

/// Another cluster to take exported services from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The remote cluster's name: the locality its endpoints carry.
    pub cluster: String,
    /// Its control plane's HTTP API (`http://host:port`, no path).
    pub control_plane: String,
    /// Its east-west gateway: where endpoints of its services are reached.
    pub gateway: SocketAddr,
    pub refresh: Duration,
}

#[derive(Deserialize)]
struct Document {
    #[serde(default)]
    metadata: Meta,
    spec: Option<LinkSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LinkSpec {
    cluster: Option<String>,
    control_plane: Option<String>,
    gateway: Option<String>,
    refresh_interval: Option<String>,
}

#[derive(Deserialize)]
struct ExportDocument {
    #[serde(default)]
    metadata: Meta,
}

pub(crate) fn translate_export(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let doc: ExportDocument = from_value(value)?;
    let source = doc.metadata.reference("ServiceExport")?;
    Ok(Translated::Resource(Resource::Multicluster(Box::new(
        MulticlusterResource::Export(ServiceKey::new(source.namespace, source.name)),
    ))))
}

pub(crate) fn translate_link(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let doc: Document = from_value(value)?;
    let source = doc.metadata.reference("Link")?;
    let spec = doc
        .spec
        .ok_or_else(|| FieldError::new("spec", "is required"))?;
    let cluster = spec.cluster.unwrap_or(source.name);
    if !crate::kube::is_dns1123_label(&cluster) {
        return Err(FieldError::new(
            "spec.cluster",
            format!("must be a DNS-1123 label, got {cluster:?}"),
        ));
    }
    let control_plane = spec
        .control_plane
        .ok_or_else(|| FieldError::new("spec.controlPlane", "is required"))?;
    let control_plane = control_plane_url(&control_plane)
        .ok_or_else(|| {
            FieldError::new(
                "spec.controlPlane",
                format!("must be http://HOST:PORT (the remote control plane's --http address), got {control_plane:?}"),
            )
        })?;
    let gateway = spec
        .gateway
        .ok_or_else(|| FieldError::new("spec.gateway", "is required"))?;
    let gateway: SocketAddr = gateway.parse().map_err(|_| {
        FieldError::new(
            "spec.gateway",
            format!("must be IP:PORT (the remote east-west gateway), got {gateway:?}"),
        )
    })?;
    let refresh = match &spec.refresh_interval {
        Some(text) => {
            let d = duration("spec.refreshInterval", text)?;
            if d < Duration::from_millis(100) {
                return Err(FieldError::new(
                    "spec.refreshInterval",
                    format!("must be at least 100ms, got {text:?}"),
                ));
            }
            d
        }
        None => DEFAULT_REFRESH,
    };
    Ok(Translated::Resource(Resource::Multicluster(Box::new(
        MulticlusterResource::Link(Link {
            cluster,
            control_plane,
            gateway,
            refresh,
        }),
    ))))
}

/// `http://host:port` without a trailing slash, or `None` for anything else (https is not
/// served by the control plane's HTTP API, and a path would be ignored).
fn control_plane_url(text: &str) -> Option<String> {
    let rest = text.strip_prefix("http://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':')?;
    let valid_host = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    (valid_host && port.parse::<u16>().is_ok_and(|p| p != 0)).then(|| format!("http://{rest}"))
}

#[cfg(test)]
mod tests {
    use crate::document::{Outcome, parse_documents};

    use super::*;

    fn one(yaml: &str) -> Outcome {
        let mut docs = parse_documents("mc.yaml", yaml.as_bytes());
        assert_eq!(docs.len(), 1);
        docs.remove(0).outcome
    }

    #[test]
    fn a_link_is_read() {
        let outcome = one(
            "apiVersion: multicluster.trellis.io/v1alpha1\nkind: Link\nmetadata: {name: east}\nspec:\n  controlPlane: http://198.18.1.2:15014/\n  gateway: 198.18.1.2:15443\n",
        );
        let Outcome::Resource(Resource::Multicluster(r)) = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(
            *r,
            MulticlusterResource::Link(Link {
                cluster: "east".into(),
                control_plane: "http://198.18.1.2:15014".into(),
                gateway: "198.18.1.2:15443".parse().unwrap(),
                refresh: DEFAULT_REFRESH,
            })
        );
    }

    #[test]
    fn bad_links_name_the_field() {
        for (spec, field) in [
            ("{gateway: 1.2.3.4:1}", "spec.controlPlane: is required"),
            (
                "{controlPlane: 'https://a:1', gateway: 1.2.3.4:1}",
                "spec.controlPlane: must be http://",
            ),
            (
                "{controlPlane: 'http://a:1', gateway: nope}",
                "spec.gateway: must be IP:PORT",
            ),
            (
                "{cluster: East, controlPlane: 'http://a:1', gateway: 1.2.3.4:1}",
                "spec.cluster: must be a DNS-1123 label",
            ),
            (
                "{controlPlane: 'http://a:1', gateway: 1.2.3.4:1, refreshInterval: 1ms}",
                "spec.refreshInterval: must be at least 100ms",
            ),
        ] {
            let yaml = format!(
                "apiVersion: multicluster.trellis.io/v1alpha1\nkind: Link\nmetadata: {{name: east}}\nspec: {spec}\n"
            );
            let Outcome::Invalid(err) = one(&yaml) else {
                panic!("{spec} was accepted");
            };
            assert!(err.to_string().contains(field), "{err}");
            assert!(err.to_string().contains("Link default/east"), "{err}");
        }
    }

    #[test]
    fn a_service_export_exports_its_namesake() {
        let outcome = one(
            "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: echo, namespace: shop}\n",
        );
        assert_eq!(
            outcome,
            Outcome::Resource(Resource::Multicluster(Box::new(
                MulticlusterResource::Export(ServiceKey::new("shop", "echo"))
            )))
        );
    }
}
