//! Istio's MeshConfig as Istio users carry it: the ConfigMap `istio` whose key `mesh` is a YAML
//! string. Trellis reads the part that names telemetry collectors: `extensionProviders[]` of
//! kind `opentelemetry` (OTLP; gRPC, or HTTP/protobuf when `http` is set) and
//! `defaultProviders.tracing`. A `Telemetry`'s `tracing[].providers[].name` is resolved against
//! these by the control plane (`compile::telemetry`), which knows the root namespace: only the
//! ConfigMap in the root namespace is the mesh's. It also reads `h2UpgradePolicy`, the mesh-wide
//! default for whether HTTP/1.1 is upgraded to HTTP/2 between two proxies (a DestinationRule's
//! `connectionPool.http.h2UpgradePolicy` overrides it per host).
//!
//! Other provider kinds (`zipkin`, `datadog`, `envoyExtAuthzHttp`, ...) are kept by name and
//! kind so that a Telemetry naming one gets a precise refusal, and noted as not applied; other
//! MeshConfig fields are noted as not read. This module parses bytes only.

use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};
use trellis_model::route::ResourceRef;

use crate::document::{Resource, Translated};
use crate::kube::FieldError;
use crate::traffic::Meta;

/// The ConfigMap's name, as Istio's (`istio` in istiod's namespace).
pub const CONFIG_MAP_NAME: &str = "istio";
/// The ConfigMap key holding the MeshConfig YAML.
pub const MESH_KEY: &str = "mesh";

/// How an OpenTelemetry provider's spans travel (Istio: `http` set → OTLP/HTTP, else gRPC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// What a provider is, as far as Trellis can use it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// An OTLP collector: `service` is `[<namespace>/]<host>`.
    OpenTelemetry {
        service: String,
        port: u16,
        protocol: OtlpProtocol,
        /// OTLP/HTTP path (`http.path`); `None`: `/v1/traces`.
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
    /// A kind Trellis does not export to (its Istio field name: `zipkin`, `datadog`, ...).
    Unsupported(String),
}

/// One `extensionProviders[]` entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExtensionProvider {
    pub name: String,
    pub kind: ProviderKind,
}

/// The MeshConfig part Trellis reads, from one `istio` ConfigMap.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MeshConfig {
    pub source: ResourceRef,
    pub extension_providers: Vec<ExtensionProvider>,
    /// `defaultProviders.tracing`: used where a Telemetry names no tracing provider.
    pub default_tracing: Vec<String>,
    /// `h2UpgradePolicy`: `Some(true)` UPGRADE, `Some(false)` DO_NOT_UPGRADE; `None` (absent)
    /// leaves Trellis's default, which upgrades (unlike Istio's, which does not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_upgrade: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl MeshConfig {
    /// The mesh's MeshConfig among `configs`: the one in the root namespace (Istio reads the one
    /// in istiod's namespace); one elsewhere is parsed and validated but not the mesh's.
    pub fn of_mesh<'a>(configs: &'a [MeshConfig], root_namespace: &str) -> Option<&'a MeshConfig> {
        configs
            .iter()
            .find(|m| m.source.namespace == root_namespace)
    }

    pub fn provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.extension_providers.iter().find(|p| p.name == name)
    }
}

#[derive(Debug, Deserialize)]
struct ConfigMap {
    metadata: Meta,
    #[serde(default)]
    data: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DefaultProviders {
    #[serde(default)]
    tracing: Vec<String>,
    #[serde(default)]
    metrics: Vec<String>,
    #[serde(default)]
    access_logging: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OtelProvider {
    service: String,
    port: u32,
    http: Option<OtelHttp>,
    // Accepted, not applied (noted): maxTagLength, grpc, resourceDetectors, dynatraceSampler.
    #[serde(flatten)]
    rest: Mapping,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OtelHttp {
    path: Option<String>,
    #[serde(flatten)]
    rest: Mapping,
}

/// The adapter for `document`: the ConfigMap `istio` is the MeshConfig; any other ConfigMap is
/// not the mesh's.
pub(crate) fn translate(value: Value) -> Result<Translated, FieldError> {
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    if name != Some(CONFIG_MAP_NAME) {
        return Ok(Translated::Ignored(format!(
            "ConfigMap {} is not read by the mesh: only `{CONFIG_MAP_NAME}` (Istio's MeshConfig, key `{MESH_KEY}`) is",
            name.unwrap_or("(unnamed)")
        )));
    }
    Ok(Translated::Resource(Resource::MeshConfig(Box::new(parse(
        value,
    )?))))
}

/// Parses and validates the `istio` ConfigMap. Field paths inside the mesh YAML are written
/// `data.mesh: <path>`, since `data.mesh` is one string holding a document of its own.
pub(crate) fn parse(value: Value) -> Result<MeshConfig, FieldError> {
    let cm: ConfigMap = crate::traffic::from_value(value)?;
    let source = cm.metadata.reference("ConfigMap")?;
    let field = format!("data.{MESH_KEY}");
    let text = cm.data.get(MESH_KEY).map(String::as_str).unwrap_or("");
    let mesh: Value = if text.trim().is_empty() {
        Value::Mapping(Mapping::new())
    } else {
        serde_yaml::from_str(text)
            .map_err(|e| FieldError::new(field.clone(), format!("invalid YAML: {e}")))?
    };
    let Value::Mapping(mesh) = mesh else {
        return Err(FieldError::new(
            field,
            "must be a YAML mapping (a MeshConfig)",
        ));
    };
    let mut notes = Vec::new();
    let other: Vec<String> = mesh
        .keys()
        .filter_map(Value::as_str)
        .filter(|k| {
            !matches!(
                *k,
                "extensionProviders" | "defaultProviders" | H2_UPGRADE_KEY
            )
        })
        .map(str::to_owned)
        .collect();
    if !other.is_empty() {
        notes.push(format!(
            "{field}: {} not read (Trellis reads extensionProviders, defaultProviders and {H2_UPGRADE_KEY})",
            other.join(", ")
        ));
    }
    let h2_upgrade = h2_upgrade_policy(&field, mesh.get(H2_UPGRADE_KEY))?;
    let mut extension_providers: Vec<ExtensionProvider> = Vec::new();
    let providers = match mesh.get("extensionProviders") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(s)) => s.clone(),
        Some(_) => {
            return Err(FieldError::new(
                format!("{field}: extensionProviders"),
                "must be a list",
            ));
        }
    };
    for (i, p) in providers.iter().enumerate() {
        let at = format!("{field}: extensionProviders[{i}]");
        let provider = provider(&at, p, &mut notes)?;
        if extension_providers.iter().any(|e| e.name == provider.name) {
            return Err(FieldError::new(
                format!("{at}.name"),
                format!("duplicate provider name {:?}", provider.name),
            ));
        }
        extension_providers.push(provider);
    }
    let defaults: DefaultProviders = match mesh.get("defaultProviders") {
        None | Some(Value::Null) => DefaultProviders::default(),
        Some(v) => crate::traffic::from_value(v.clone()).map_err(|e| {
            FieldError::new(
                format!(
                    "{field}: defaultProviders{}",
                    e.field.map(|f| format!(".{f}")).unwrap_or_default()
                ),
                e.message,
            )
        })?,
    };
    for (j, name) in defaults.tracing.iter().enumerate() {
        let at = format!("{field}: defaultProviders.tracing[{j}]");
        match extension_providers.iter().find(|p| &p.name == name) {
            None => {
                return Err(FieldError::new(
                    at,
                    format!(
                        "unknown provider {name:?}: not in extensionProviders{}",
                        known(&extension_providers)
                    ),
                ));
            }
            Some(ExtensionProvider {
                kind: ProviderKind::Unsupported(kind),
                ..
            }) => {
                return Err(FieldError::new(
                    at,
                    format!(
                        "provider {name:?} is {kind}: Trellis exports traces over OTLP only (an opentelemetry provider)"
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    if !defaults.metrics.is_empty() || !defaults.access_logging.is_empty() {
        notes.push(format!(
            "{field}: defaultProviders.metrics and accessLogging not applied (the proxy's own metrics and access log are used)"
        ));
    }
    Ok(MeshConfig {
        source,
        extension_providers,
        default_tracing: defaults.tracing,
        h2_upgrade,
        notes,
    })
}

/// The MeshConfig key of the mesh-wide HTTP/2 upgrade default.
const H2_UPGRADE_KEY: &str = "h2UpgradePolicy";

/// `h2UpgradePolicy`: Istio's MeshConfig enum has the two values; absent (or null) is `None`.
fn h2_upgrade_policy(field: &str, value: Option<&Value>) -> Result<Option<bool>, FieldError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s == "UPGRADE" => Ok(Some(true)),
        Some(Value::String(s)) if s == "DO_NOT_UPGRADE" => Ok(Some(false)),
        Some(other) => Err(FieldError::new(
            format!("{field}: {H2_UPGRADE_KEY}"),
            format!(
                "must be UPGRADE or DO_NOT_UPGRADE, got {}",
                serde_json::to_string(other).unwrap_or_else(|_| format!("{other:?}"))
            ),
        )),
    }
}

/// ` (known: a, b)` or nothing.
pub fn known(providers: &[ExtensionProvider]) -> String {
    if providers.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
    format!(" (known: {})", names.join(", "))
}

fn provider(at: &str, p: &Value, notes: &mut Vec<String>) -> Result<ExtensionProvider, FieldError> {
    let Value::Mapping(m) = p else {
        return Err(FieldError::new(
            at,
            "must be a mapping with name and one provider kind",
        ));
    };
    let name = match m.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(FieldError::new(
                format!("{at}.name"),
                "is required and must be a non-empty string",
            ));
        }
    };
    let kinds: Vec<&str> = m
        .keys()
        .filter_map(Value::as_str)
        .filter(|k| *k != "name")
        .collect();
    let [kind] = kinds.as_slice() else {
        return Err(FieldError::new(
            at,
            format!(
                "provider {name:?} must set exactly one kind (e.g. opentelemetry), got {}",
                if kinds.is_empty() {
                    "none".to_string()
                } else {
                    kinds.join(", ")
                }
            ),
        ));
    };
    if *kind != "opentelemetry" {
        notes.push(format!(
            "{at}: provider {name:?} of kind {kind} not applied: Trellis exports traces over OTLP only (opentelemetry)"
        ));
        return Ok(ExtensionProvider {
            name,
            kind: ProviderKind::Unsupported((*kind).to_owned()),
        });
    }
    let at = format!("{at}.opentelemetry");
    let otel: OtelProvider = crate::traffic::from_value(
        m.get("opentelemetry").cloned().unwrap_or_default(),
    )
    .map_err(|e| {
        FieldError::new(
            format!(
                "{at}{}",
                e.field.map(|f| format!(".{f}")).unwrap_or_default()
            ),
            e.message,
        )
    })?;
    let service = otel.service.trim();
    let host = service.rsplit_once('/').map_or(service, |(_, h)| h);
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(FieldError::new(
            format!("{at}.service"),
            format!("must be [<namespace>/]<hostname>, got {:?}", otel.service),
        ));
    }
    let port = u16::try_from(otel.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            FieldError::new(
                format!("{at}.port"),
                format!("must be 1-65535, got {}", otel.port),
            )
        })?;
    let mut ignored: Vec<String> = otel
        .rest
        .keys()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let (protocol, path) = match &otel.http {
        None => (OtlpProtocol::Grpc, None),
        Some(h) => {
            ignored.extend(
                h.rest
                    .keys()
                    .filter_map(Value::as_str)
                    .map(|k| format!("http.{k}")),
            );
            if let Some(p) = &h.path
                && !p.starts_with('/')
            {
                return Err(FieldError::new(
                    format!("{at}.http.path"),
                    format!("must start with '/', got {p:?}"),
                ));
            }
            (OtlpProtocol::HttpProtobuf, h.path.clone())
        }
    };
    if !ignored.is_empty() {
        notes.push(format!("{at}: {} not applied", ignored.join(", ")));
    }
    Ok(ExtensionProvider {
        name,
        kind: ProviderKind::OpenTelemetry {
            service: otel.service,
            port,
            protocol,
            path,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Result<MeshConfig, FieldError> {
        parse(serde_yaml::from_str(yaml).unwrap())
    }

    const MESH: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |-
    accessLogFile: /dev/stdout
    defaultProviders:
      tracing: [otel]
    extensionProviders:
    - name: otel
      opentelemetry:
        service: opentelemetry-collector.observability.svc.cluster.local
        port: 4317
        maxTagLength: 256
    - name: otel-http
      opentelemetry:
        service: observability/collector.example.com
        port: 4318
        http: {path: /v1/traces, timeout: 5s}
    - name: zipkin
      zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
"#;

    #[test]
    fn reads_opentelemetry_providers_and_default_tracing() {
        let m = doc(MESH).unwrap();
        assert_eq!(m.default_tracing, vec!["otel".to_string()]);
        assert_eq!(
            m.provider("otel").unwrap().kind,
            ProviderKind::OpenTelemetry {
                service: "opentelemetry-collector.observability.svc.cluster.local".into(),
                port: 4317,
                protocol: OtlpProtocol::Grpc,
                path: None,
            }
        );
        assert_eq!(
            m.provider("otel-http").unwrap().kind,
            ProviderKind::OpenTelemetry {
                service: "observability/collector.example.com".into(),
                port: 4318,
                protocol: OtlpProtocol::HttpProtobuf,
                path: Some("/v1/traces".into()),
            }
        );
        assert_eq!(
            m.provider("zipkin").unwrap().kind,
            ProviderKind::Unsupported("zipkin".into())
        );
        let notes = m.notes.join("\n");
        for needle in [
            "accessLogFile",
            "maxTagLength",
            "http.timeout",
            "zipkin not applied",
        ] {
            assert!(notes.contains(needle), "{needle} in {notes}");
        }
    }

    #[test]
    fn errors_name_the_field_inside_the_mesh_yaml() {
        let cases = [
            (
                "extensionProviders: [{name: a, opentelemetry: {service: c, port: 70000}}]",
                "data.mesh: extensionProviders[0].opentelemetry.port",
            ),
            (
                "extensionProviders: [{name: a, opentelemetry: {port: 4317}}]",
                "data.mesh: extensionProviders[0].opentelemetry",
            ),
            (
                "extensionProviders: [{name: a}]",
                "data.mesh: extensionProviders[0]",
            ),
            (
                "extensionProviders: [{opentelemetry: {service: c, port: 1}}]",
                "data.mesh: extensionProviders[0].name",
            ),
            (
                "defaultProviders: {tracing: [nope]}",
                "data.mesh: defaultProviders.tracing[0]",
            ),
            (
                "extensionProviders: [{name: z, zipkin: {service: z, port: 9411}}]\ndefaultProviders: {tracing: [z]}",
                "data.mesh: defaultProviders.tracing[0]",
            ),
            ("h2UpgradePolicy: SOMETIMES", "data.mesh: h2UpgradePolicy"),
            ("h2UpgradePolicy: [UPGRADE]", "data.mesh: h2UpgradePolicy"),
            ("[1, 2]", "data.mesh"),
            ("a: [", "data.mesh"),
        ];
        for (mesh, field) in cases {
            let yaml = format!(
                "metadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: {}\n",
                serde_json::to_string(mesh).unwrap()
            );
            let e = doc(&yaml).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{mesh}: {e:?}");
        }
    }

    #[test]
    fn reads_the_mesh_wide_h2_upgrade_policy() {
        let with = |line: &str| {
            let yaml = format!(
                "metadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: {}\n",
                serde_json::to_string(line).unwrap()
            );
            doc(&yaml).unwrap()
        };
        assert_eq!(with("h2UpgradePolicy: UPGRADE").h2_upgrade, Some(true));
        let keep = with("h2UpgradePolicy: DO_NOT_UPGRADE");
        assert_eq!(keep.h2_upgrade, Some(false));
        assert!(keep.notes.is_empty(), "{:?}", keep.notes);
        assert_eq!(with("accessLogFile: /dev/stdout").h2_upgrade, None);
    }

    #[test]
    fn only_the_istio_config_map_is_read() {
        let other: Value = serde_yaml::from_str(
            "metadata: {name: app-settings, namespace: default}\ndata: {a: b}\n",
        )
        .unwrap();
        assert!(matches!(translate(other), Ok(Translated::Ignored(_))));
        let empty: Value =
            serde_yaml::from_str("metadata: {name: istio, namespace: istio-system}\n").unwrap();
        match translate(empty).unwrap() {
            Translated::Resource(Resource::MeshConfig(m)) => {
                assert!(m.extension_providers.is_empty())
            }
            other => panic!("{other:?}"),
        }
    }
}
