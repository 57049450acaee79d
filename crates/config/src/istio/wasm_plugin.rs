//! Istio `WasmPlugin` (extensions.istio.io v1alpha1) -> [`WasmPluginPolicy`]: which workloads
//! it covers (selector, targetRefs, namespace) and the [`WasmPlugin`] the proxy runs.
//!
//! Scope, as Istio: a plugin in the mesh root namespace without selector or targetRefs covers
//! the mesh; in another namespace, that namespace; `selector.matchLabels` the matching
//! workloads of its namespace; `targetRefs` to a Service the workloads that Service selects.
//!
//! Read: `url` (`file:///abs/path.wasm` or `http://host/path.wasm`, the module is read or
//! fetched by the proxy; `oci://` and `https://` are refused with a clear error), `sha256` (64 hex digits), `phase`, `priority`,
//! `pluginConfig` (any YAML, passed to the plugin as JSON), `pluginName`, `failStrategy`,
//! `match` (mode, ports). Accepted and ignored with a note: `imagePullPolicy`,
//! `imagePullSecret`, `verificationKey`, `vmConfig`, `type` (only HTTP). See docs/wasm.md.

use std::collections::BTreeMap;

use serde::Deserialize;
use trellis_model::route::ResourceRef;
use trellis_model::wasm::{FailStrategy, Mode, Phase, WasmPlugin};
use trellis_model::{Service, ServiceKey};

use crate::document::{Resource, Translated};
use crate::kube::FieldError;
use crate::traffic::{Meta, from_value, port};

use super::PortSelector;
use super::policy_target::{Selector, TargetRef, covers, service_targets};

/// One WasmPlugin, translated.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WasmPluginPolicy {
    pub source: ResourceRef,
    /// `None`: no selector.
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<ServiceKey>,
    pub plugin: WasmPlugin,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Raw {
    metadata: Meta,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    selector: Option<Selector>,
    target_ref: Option<TargetRef>,
    #[serde(default)]
    target_refs: Vec<TargetRef>,
    #[serde(default)]
    url: String,
    sha256: Option<String>,
    image_pull_policy: Option<String>,
    image_pull_secret: Option<String>,
    verification_key: Option<String>,
    plugin_config: Option<serde_json::Value>,
    #[serde(default)]
    plugin_name: String,
    phase: Option<String>,
    priority: Option<i64>,
    fail_strategy: Option<String>,
    vm_config: Option<serde_json::Value>,
    #[serde(default, rename = "match")]
    matches: Vec<TrafficSelector>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TrafficSelector {
    mode: Option<String>,
    #[serde(default)]
    ports: Vec<PortSelector>,
}

fn url(raw: &str) -> Result<String, FieldError> {
    if raw.is_empty() {
        return Err(FieldError::new("spec.url", "is required"));
    }
    if let Some(path) = raw.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(FieldError::new(
                "spec.url",
                format!("must be file:///absolute/path.wasm, got {raw:?}"),
            ));
        }
        return Ok(raw.to_string());
    }
    // Fetched by the proxy (docs/wasm.md): a host is all that can be checked here.
    if let Some(rest) = raw.strip_prefix("http://") {
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() || rest.contains(char::is_whitespace) {
            return Err(FieldError::new(
                "spec.url",
                format!("must be http://host[:port]/path.wasm, got {raw:?}"),
            ));
        }
        return Ok(raw.to_string());
    }
    let scheme = raw.split_once("://").map_or("", |(s, _)| s);
    Err(FieldError::new(
        "spec.url",
        match scheme {
            "oci" | "https" => {
                format!(
                    "{scheme}:// modules are not supported yet (use file:// or http://), got {raw:?}"
                )
            }
            _ => format!("must be a file:// or http:// URL, got {raw:?}"),
        },
    ))
}

fn sha256(raw: Option<String>) -> Result<Option<String>, FieldError> {
    let Some(s) = raw else { return Ok(None) };
    let s = s.strip_prefix("sha256:").unwrap_or(&s).to_ascii_lowercase();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FieldError::new(
            "spec.sha256",
            format!("must be 64 hex digits, got {s:?}"),
        ));
    }
    Ok(Some(s))
}

fn phase(raw: Option<&str>) -> Result<Phase, FieldError> {
    Ok(match raw {
        None | Some("UNSPECIFIED_PHASE") => Phase::UnspecifiedPhase,
        Some("AUTHN") => Phase::Authn,
        Some("AUTHZ") => Phase::Authz,
        Some("STATS") => Phase::Stats,
        Some(other) => {
            return Err(FieldError::new(
                "spec.phase",
                format!("must be AUTHN, AUTHZ, STATS or UNSPECIFIED_PHASE, got {other:?}"),
            ));
        }
    })
}

fn fail_strategy(raw: Option<&str>) -> Result<FailStrategy, FieldError> {
    match raw {
        None | Some("FAIL_CLOSE") => Ok(FailStrategy::FailClose),
        Some("FAIL_OPEN") => Ok(FailStrategy::FailOpen),
        Some(other) => Err(FieldError::new(
            "spec.failStrategy",
            format!("must be FAIL_CLOSE or FAIL_OPEN, got {other:?}"),
        )),
    }
}

/// `match`: the union of its selectors' modes and ports (Istio ORs them).
fn traffic(matches: Vec<TrafficSelector>) -> Result<(Mode, Vec<u16>), FieldError> {
    if matches.is_empty() {
        return Ok((Mode::ClientAndServer, Vec::new()));
    }
    let (mut inbound, mut outbound) = (false, false);
    let mut ports = Vec::new();
    let mut all_ports = false;
    for (i, m) in matches.into_iter().enumerate() {
        match m.mode.as_deref() {
            None | Some("UNDEFINED" | "CLIENT_AND_SERVER") => (inbound, outbound) = (true, true),
            Some("SERVER") => inbound = true,
            Some("CLIENT") => outbound = true,
            Some(other) => {
                return Err(FieldError::new(
                    format!("spec.match[{i}].mode"),
                    format!("must be CLIENT, SERVER or CLIENT_AND_SERVER, got {other:?}"),
                ));
            }
        }
        if m.ports.is_empty() {
            all_ports = true;
        }
        for (j, p) in m.ports.iter().enumerate() {
            ports.push(port(
                &format!("spec.match[{i}].ports[{j}].number"),
                p.number,
            )?);
        }
    }
    if all_ports {
        ports.clear();
    }
    ports.sort_unstable();
    ports.dedup();
    let mode = match (inbound, outbound) {
        (true, true) => Mode::ClientAndServer,
        (false, true) => Mode::Client,
        _ => Mode::Server,
    };
    Ok((mode, ports))
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let raw: Raw = from_value(value)?;
    let source = raw.metadata.reference("WasmPlugin")?;
    let spec = raw.spec;
    let mut notes = Vec::new();
    for (field, set) in [
        ("imagePullPolicy", spec.image_pull_policy.is_some()),
        ("imagePullSecret", spec.image_pull_secret.is_some()),
        ("verificationKey", spec.verification_key.is_some()),
        ("vmConfig", spec.vm_config.is_some()),
    ] {
        if set {
            notes.push(format!("spec.{field} ignored: not supported"));
        }
    }
    match spec.plugin_type.as_deref() {
        None | Some("HTTP" | "UNSPECIFIED_PLUGIN_TYPE") => {}
        Some(other) => {
            return Err(FieldError::new(
                "spec.type",
                format!("only HTTP plugins are supported, got {other:?}"),
            ));
        }
    }
    let target_refs = service_targets(
        &source.namespace,
        "plugin",
        spec.selector.is_some(),
        spec.target_ref,
        spec.target_refs,
        &mut notes,
    )?;
    let (mode, ports) = traffic(spec.matches)?;
    let config = match spec.plugin_config {
        None => String::new(),
        Some(v) => serde_json::to_string(&v)
            .map_err(|e| FieldError::new("spec.pluginConfig", format!("is not JSON: {e}")))?,
    };
    let plugin = WasmPlugin {
        name: format!("{}/{}", source.namespace, source.name),
        plugin_name: spec.plugin_name,
        url: url(&spec.url)?,
        sha256: sha256(spec.sha256)?,
        phase: phase(spec.phase.as_deref())?,
        priority: spec.priority.unwrap_or(0),
        config,
        fail_strategy: fail_strategy(spec.fail_strategy.as_deref())?,
        mode,
        ports,
    };
    Ok(Translated::Resource(Resource::WasmPlugin(Box::new(
        WasmPluginPolicy {
            source,
            selector: spec.selector.map(|s| s.match_labels),
            target_refs,
            plugin,
            notes,
        },
    ))))
}

impl WasmPluginPolicy {
    /// Whether this plugin covers a workload in `namespace` with `labels`.
    pub fn applies_to(
        &self,
        root_namespace: &str,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        services: &BTreeMap<ServiceKey, Service>,
    ) -> bool {
        covers(
            &self.source.namespace,
            self.selector.as_ref(),
            self.target_refs.iter(),
            root_namespace,
            namespace,
            labels,
            services,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::{Outcome, Resource, parse_documents};

    fn one(yaml: &str) -> Outcome {
        parse_documents("wasm.yaml", yaml.as_bytes())
            .pop()
            .unwrap()
            .outcome
    }

    #[test]
    fn wasm_plugin_reads_every_field() {
        let yaml = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: add, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  url: file:///plugins/add.wasm
  sha256: AB0000000000000000000000000000000000000000000000000000000000000c
  phase: AUTHZ
  priority: 7
  pluginName: add_header
  failStrategy: FAIL_OPEN
  pluginConfig: {name: x-a, value: "1"}
  match: [{mode: SERVER, ports: [{number: 9080}]}]
"#;
        let Outcome::Resource(Resource::WasmPlugin(p)) = one(yaml) else {
            panic!("{:?}", one(yaml))
        };
        assert_eq!(p.plugin.name, "shop/add");
        assert_eq!(p.plugin.phase, trellis_model::wasm::Phase::Authz);
        assert_eq!(p.plugin.priority, 7);
        assert_eq!(
            p.plugin.fail_strategy,
            trellis_model::wasm::FailStrategy::FailOpen
        );
        assert_eq!(p.plugin.mode, trellis_model::wasm::Mode::Server);
        assert_eq!(p.plugin.ports, [9080]);
        assert_eq!(p.plugin.config, r#"{"name":"x-a","value":"1"}"#);
        assert!(p.plugin.sha256.as_deref().unwrap().starts_with("ab00"));
        assert_eq!(p.selector.as_ref().unwrap()["app"], "web");
    }

    #[test]
    fn wasm_plugin_errors_name_the_field() {
        let base = "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: p, namespace: shop}\nspec:\n";
        for (spec, field, words) in [
            ("  url: oci://x/y:1\n", "spec.url", "not supported yet"),
            ("  url: relative.wasm\n", "spec.url", "file://"),
            ("  url: http:///x.wasm\n", "spec.url", "http://host"),
            (
                "  url: file:///a.wasm\n  sha256: xyz\n",
                "spec.sha256",
                "64 hex",
            ),
            (
                "  url: file:///a.wasm\n  phase: LATE\n",
                "spec.phase",
                "AUTHN",
            ),
            (
                "  url: file:///a.wasm\n  failStrategy: MAYBE\n",
                "spec.failStrategy",
                "FAIL_OPEN",
            ),
            (
                "  url: file:///a.wasm\n  match: [{ports: [{number: 70000}]}]\n",
                "spec.match[0].ports[0].number",
                "1-65535",
            ),
        ] {
            let Outcome::Invalid(err) = one(&format!("{base}{spec}")) else {
                panic!("{spec} should be invalid")
            };
            assert_eq!(err.field.as_deref(), Some(field), "{spec}: {err}");
            assert!(err.to_string().contains(words), "{spec}: {err}");
            assert!(err.to_string().contains("wasm.yaml"), "{err}");
        }
    }
}
