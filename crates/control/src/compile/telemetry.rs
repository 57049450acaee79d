//! Compile, for one proxy: the Istio Telemetry settings in force for its workload, as the JSON
//! the discovery `InboundPolicy.telemetry_json` carries. Pure: config snapshot and workload in,
//! text out. The scoping rule (workload > namespace > mesh, field by field) is
//! `trellis_config::istio::telemetry::effective`; this encodes its answer and resolves the
//! tracing provider it names (else the MeshConfig's `defaultProviders.tracing`) against the
//! MeshConfig's `extensionProviders` to a collector address ([`resolve_collector`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use trellis_config::istio::mesh_config::{MeshConfig, OtlpProtocol, ProviderKind, known};
use trellis_config::istio::service_entry::{Resolution, ServiceEntry};
use trellis_config::istio::telemetry::{TelemetryPolicy, TelemetrySettings, effective};
use trellis_model::{ServiceKey, Workload};

/// Where a workload's proxy sends its spans (the proxy's `trace::export::Collector`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Collector {
    /// `http://host:port` (gRPC) or the full OTLP/HTTP URL.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
}

/// What compile needs of the mesh besides the Telemetries.
#[derive(Clone, Copy, Debug)]
pub struct MeshInputs<'a> {
    pub mesh_configs: &'a [MeshConfig],
    pub service_entries: &'a BTreeMap<ServiceKey, Arc<ServiceEntry>>,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(flatten)]
    settings: &'a TelemetrySettings,
    #[serde(skip_serializing_if = "Option::is_none")]
    collector: Option<Collector>,
}

/// The settings for `workload` as JSON; `"{}"` when no Telemetry applies and the mesh names no
/// default tracing provider (the proxy's flags stay in force). A tracing provider that does
/// not resolve against the MeshConfig is logged (naming the Telemetry and field) and turns span reporting off for the
/// workload: its spans are meant for a collector Trellis cannot find, and sending them to the
/// proxy's `--otlp-endpoint` instead could hand them to the wrong party.
pub fn telemetry_json(
    policies: &[TelemetryPolicy],
    mesh: MeshInputs<'_>,
    root_namespace: &str,
    workload: &Workload,
) -> String {
    let mut settings: TelemetrySettings = effective(
        policies,
        root_namespace,
        &workload.namespace,
        &workload.labels,
    );
    let collector = match resolve_collector(&settings, mesh, root_namespace) {
        Ok(c) => c,
        Err(problem) => {
            tracing::warn!(workload = %workload.name, namespace = %workload.namespace, %problem, "tracing provider not resolved; span reporting off for this workload");
            settings.tracing_disabled = Some(true);
            None
        }
    };
    let wire = Wire {
        settings: &settings,
        collector,
    };
    // Serializing plain options and numbers cannot fail; an empty object is the safe fallback.
    serde_json::to_string(&wire).unwrap_or_else(|_| "{}".to_string())
}

/// The collector of the tracing provider in force: the Telemetry's, else the MeshConfig's
/// default; `Ok(None)` (the proxy's `--otlp-endpoint`) when neither names one or there is no
/// MeshConfig. Only the MeshConfig in the root namespace counts (Istio reads the one in
/// istiod's namespace).
pub fn resolve_collector(
    settings: &TelemetrySettings,
    mesh: MeshInputs<'_>,
    root_namespace: &str,
) -> Result<Option<Collector>, String> {
    let config = MeshConfig::of_mesh(mesh.mesh_configs, root_namespace);
    let (name, at) = match (&settings.tracing_provider, config) {
        (Some(p), _) => (
            p.name.as_str(),
            format!("Telemetry {} {}", p.telemetry, p.field),
        ),
        (None, Some(m)) => match m.default_tracing.first() {
            Some(name) => (
                name.as_str(),
                format!(
                    "ConfigMap {}/{} data.mesh: defaultProviders.tracing[0]",
                    m.source.namespace, m.source.name
                ),
            ),
            None => return Ok(None),
        },
        (None, None) => return Ok(None),
    };
    let Some(config) = config else {
        // Without a MeshConfig, provider names stay what they were before Trellis read one:
        // labels, with the spans going to the proxy's --otlp-endpoint.
        return Ok(None);
    };
    let provider = config.provider(name).ok_or_else(|| {
        format!(
            "{at}: unknown provider {name:?}: not in extensionProviders of ConfigMap {}/{}{}",
            config.source.namespace,
            config.source.name,
            known(&config.extension_providers)
        )
    })?;
    match &provider.kind {
        ProviderKind::Unsupported(kind) => Err(format!(
            "{at}: provider {name:?} is {kind}: Trellis exports traces over OTLP only (an opentelemetry provider)"
        )),
        ProviderKind::OpenTelemetry {
            service,
            port,
            protocol,
            path,
        } => {
            let (host, port) = address(service, *port, mesh.service_entries);
            let authority = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let endpoint = match protocol {
                OtlpProtocol::Grpc => format!("http://{authority}"),
                OtlpProtocol::HttpProtobuf => format!(
                    "http://{authority}{}",
                    path.as_deref().unwrap_or("/v1/traces")
                ),
            };
            Ok(Some(Collector {
                endpoint,
                protocol: *protocol,
            }))
        }
    }
}

/// `[<namespace>/]<host>` and a port -> where to connect: a static ServiceEntry endpoint of that
/// host when there is one (local mode has no cluster DNS), else the host itself (cluster DNS on
/// Kubernetes, an address or `localhost` elsewhere).
fn address(
    service: &str,
    port: u16,
    entries: &BTreeMap<ServiceKey, Arc<ServiceEntry>>,
) -> (String, u16) {
    let host = service.rsplit_once('/').map_or(service, |(_, h)| h);
    let found = entries.values().find_map(|e| {
        if e.resolution != Resolution::Static || !e.hosts.iter().any(|h| h == host) {
            return None;
        }
        let sp = e.ports.iter().find(|p| p.port == port)?;
        let ep = e.endpoints.first()?;
        let target = sp
            .name
            .as_ref()
            .and_then(|n| ep.ports.get(n).copied())
            .unwrap_or(port);
        Some((ep.address.clone(), target))
    });
    found.unwrap_or_else(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::test_support::{resources, workload};
    use trellis_config::Resource;

    fn policies(yaml: &str) -> Vec<TelemetryPolicy> {
        resources(yaml, |r| match r {
            Resource::Telemetry(p) => Some(*p),
            _ => None,
        })
    }

    fn meshes(yaml: &str) -> Vec<MeshConfig> {
        resources(yaml, |r| match r {
            Resource::MeshConfig(m) => Some(*m),
            _ => None,
        })
    }

    fn entries(yaml: &str) -> BTreeMap<ServiceKey, Arc<ServiceEntry>> {
        let list = resources(yaml, |r| match r {
            Resource::ServiceEntry(e) => Some(Arc::new(*e)),
            _ => None,
        });
        list.into_iter()
            .flat_map(|e| e.keys.clone().into_iter().map(move |k| (k, e.clone())))
            .collect()
    }

    const NONE: MeshInputs<'static> = MeshInputs {
        mesh_configs: &[],
        service_entries: &BTreeMap::new(),
    };

    #[test]
    fn mesh_namespace_and_workload_scopes() {
        let all = policies(
            r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: trellis-system}
spec:
  tracing: [{randomSamplingPercentage: 1}]
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: shop, namespace: shop}
spec:
  accessLogging: [{providers: [{name: envoy}]}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  tracing: [{randomSamplingPercentage: 50, disableSpanReporting: true}]
  accessLogging: [{providers: [{name: envoy-json}], filter: {expression: "response.code >= 500"}}]
"#,
        );
        let root = "trellis-system";
        let reviews: serde_json::Value = serde_json::from_str(&telemetry_json(
            &all,
            NONE,
            root,
            &workload("shop", "reviews"),
        ))
        .unwrap();
        assert_eq!(
            reviews,
            serde_json::json!({"sampling": 0.5, "tracing_disabled": true,
                "access_logging": true, "access_log_format": "json",
                "access_log_min_status": 500})
        );
        let web: serde_json::Value =
            serde_json::from_str(&telemetry_json(&all, NONE, root, &workload("shop", "web")))
                .unwrap();
        assert_eq!(
            web,
            serde_json::json!({"sampling": 0.01, "access_logging": true,
                "access_log_format": "text"})
        );
        assert_eq!(
            telemetry_json(&all, NONE, root, &workload("other", "web")),
            r#"{"sampling":0.01}"#
        );
        assert_eq!(
            telemetry_json(&[], NONE, root, &workload("shop", "web")),
            "{}"
        );
    }

    const MESH: &str = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: trellis-system}
data:
  mesh: |
    extensionProviders:
    - name: otel
      opentelemetry: {service: otel-collector.observability.svc.cluster.local, port: 4317}
    - name: otel-http
      opentelemetry: {service: observability/collector.example.com, port: 4318, http: {path: /otlp/v1/traces}}
    - name: local
      opentelemetry: {service: collector.local, port: 4317}
    - name: zipkin
      zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
"#;

    fn json_for(telemetry: &str, mesh: &str, se: &str) -> serde_json::Value {
        let meshes = meshes(mesh);
        let se = entries(se);
        let inputs = MeshInputs {
            mesh_configs: &meshes,
            service_entries: &se,
        };
        serde_json::from_str(&telemetry_json(
            &policies(telemetry),
            inputs,
            "trellis-system",
            &workload("shop", "reviews"),
        ))
        .unwrap()
    }

    fn telemetry(provider: &str) -> String {
        format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: shop}}\nspec:\n  tracing: [{{providers: [{{name: {provider}}}], randomSamplingPercentage: 100}}]\n"
        )
    }

    #[test]
    fn a_named_provider_becomes_the_collector() {
        let v = json_for(&telemetry("otel"), MESH, "");
        assert_eq!(
            v["collector"],
            serde_json::json!({"endpoint": "http://otel-collector.observability.svc.cluster.local:4317", "protocol": "grpc"})
        );
        let v = json_for(&telemetry("otel-http"), MESH, "");
        assert_eq!(
            v["collector"],
            serde_json::json!({"endpoint": "http://collector.example.com:4318/otlp/v1/traces", "protocol": "http/protobuf"})
        );
        // A static ServiceEntry gives the host an address (local mode has no cluster DNS).
        let se = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: collector, namespace: trellis-system}
spec:
  hosts: [collector.local]
  ports: [{number: 4317, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {grpc: 14317}}]
"#;
        let v = json_for(&telemetry("local"), MESH, se);
        assert_eq!(v["collector"]["endpoint"], "http://127.0.0.1:14317");
    }

    #[test]
    fn unknown_or_unsupported_providers_turn_reporting_off_and_say_where() {
        for (name, needle) in [("nope", "unknown provider"), ("zipkin", "OTLP only")] {
            let v = json_for(&telemetry(name), MESH, "");
            assert_eq!(v["tracing_disabled"], true, "{name}");
            assert!(v.get("collector").is_none(), "{name}");
            let settings = effective(
                &policies(&telemetry(name)),
                "trellis-system",
                "shop",
                &BTreeMap::new(),
            );
            let meshes = meshes(MESH);
            let e = resolve_collector(
                &settings,
                MeshInputs {
                    mesh_configs: &meshes,
                    service_entries: &BTreeMap::new(),
                },
                "trellis-system",
            )
            .unwrap_err();
            assert!(
                e.contains("Telemetry shop/t spec.tracing[0].providers[0].name"),
                "{e}"
            );
            assert!(e.contains(needle), "{e}");
        }
        // A MeshConfig outside the root namespace is not the mesh's; without one, a provider
        // name resolves to nothing and the proxy's --otlp-endpoint stays in force.
        let elsewhere = MESH.replace("namespace: trellis-system", "namespace: istio-system");
        let v = json_for(&telemetry("otel"), &elsewhere, "");
        assert_eq!(v, serde_json::json!({"sampling": 1.0}));
    }

    #[test]
    fn the_default_provider_applies_where_no_telemetry_names_one() {
        let mesh = MESH.replace(
            "    extensionProviders:",
            "    defaultProviders: {tracing: [otel]}\n    extensionProviders:",
        );
        let v = json_for("", &mesh, "");
        assert_eq!(
            v["collector"]["endpoint"],
            "http://otel-collector.observability.svc.cluster.local:4317"
        );
        let v = json_for(&telemetry("otel-http"), &mesh, "");
        assert_eq!(v["collector"]["protocol"], "http/protobuf");
        assert_eq!(json_for("", MESH, ""), serde_json::json!({}));
    }
}
