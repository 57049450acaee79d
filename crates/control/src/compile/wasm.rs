//! Compile, for one proxy: its workload's Proxy-Wasm plugins (Istio WasmPlugin) as the JSON
//! carried in the discovery `InboundPolicy.wasm_plugins_json`. Pure: config snapshot and
//! workload in, string out. The module itself is not read here: the proxy reads the
//! `file://` URL and checks its sha256 (docs/wasm.md).

use std::collections::BTreeMap;

use trellis_config::istio::wasm_plugin::WasmPluginPolicy;
use trellis_model::wasm::WasmPlugins;
use trellis_model::{Service, ServiceKey, Workload};

/// Every applicable plugin, in the order the proxy runs them, as JSON; `""` when none applies
/// (so a proxy of a workload without plugins sees no change on the wire).
pub fn wasm_plugins_json(
    plugins: &[WasmPluginPolicy],
    services: &BTreeMap<ServiceKey, Service>,
    root_namespace: &str,
    workload: &Workload,
) -> String {
    let mut set = WasmPlugins {
        plugins: plugins
            .iter()
            .filter(|p| {
                p.applies_to(
                    root_namespace,
                    &workload.namespace,
                    &workload.labels,
                    services,
                )
            })
            .map(|p| p.plugin.clone())
            .collect(),
    };
    if set.plugins.is_empty() {
        return String::new();
    }
    set.sort();
    // Serializing plain data cannot fail; an empty string would only mean "no plugins".
    serde_json::to_string(&set).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::compile::test_support::{resources, workload};
    use trellis_config::Resource;

    #[test]
    fn wasm_plugins_for_a_workload_by_selector_and_namespace() {
        let yaml = "\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: web-only, namespace: shop}
spec: {selector: {matchLabels: {app: web}}, url: 'file:///a.wasm', priority: 1}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: mesh, namespace: trellis-system}
spec: {url: 'file:///b.wasm', phase: AUTHN}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: other-ns, namespace: bank}
spec: {url: 'file:///c.wasm'}
";
        let plugins = resources(yaml, |r| match r {
            Resource::WasmPlugin(p) => Some(*p),
            _ => None,
        });
        assert_eq!(plugins.len(), 3);
        let mut workload = workload("shop", "web");
        let json = wasm_plugins_json(&plugins, &BTreeMap::new(), "trellis-system", &workload);
        let set: WasmPlugins = serde_json::from_str(&json).unwrap();
        let names: Vec<_> = set.plugins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["trellis-system/mesh", "shop/web-only"]);
        workload.labels.clear();
        let json = wasm_plugins_json(&plugins, &BTreeMap::new(), "trellis-system", &workload);
        assert!(json.contains("trellis-system/mesh") && !json.contains("web-only"));
    }
}
