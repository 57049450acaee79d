//! WebAssembly (Proxy-Wasm) plugins as the proxy runs them: Istio's `WasmPlugin`, resolved by
//! the control plane for one workload, in the order the proxy applies them. Carried as JSON in
//! the discovery `InboundPolicy.wasm_plugins_json`; see docs/wasm.md.

use serde::{Deserialize, Serialize};

/// Where in the request path a plugin runs, relative to the proxy's own filters (Istio's
/// `PluginPhase`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// Before authentication (JWT).
    Authn,
    /// After authentication, before authorization.
    Authz,
    /// After authorization, before forwarding (Istio: before its stats filter).
    Stats,
    /// Istio's default: after the proxy's own filters, next to the router.
    #[default]
    UnspecifiedPhase,
}

/// What a failing plugin (trap, fuel or memory exhausted, load error) does to a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailStrategy {
    /// The request fails (HTTP 500, `trellis-error: wasm-plugin-failed`).
    #[default]
    FailClose,
    /// The request goes on as if the plugin were not there.
    FailOpen,
}

/// Which traffic of the workload a plugin sees (Istio's `WorkloadMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    /// Outbound: requests the workload sends.
    Client,
    /// Inbound: requests the workload receives.
    #[default]
    Server,
    ClientAndServer,
}

impl Mode {
    pub fn inbound(self) -> bool {
        matches!(self, Mode::Server | Mode::ClientAndServer)
    }

    pub fn outbound(self) -> bool {
        matches!(self, Mode::Client | Mode::ClientAndServer)
    }
}

/// One plugin a proxy runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasmPlugin {
    /// `namespace/name` of the WasmPlugin: metric label and log field.
    pub name: String,
    /// `pluginName`: the root id the module is configured with.
    #[serde(default)]
    pub plugin_name: String,
    /// `file:///...` (read by the proxy); see docs/wasm.md.
    pub url: String,
    /// Lower-case hex SHA-256 the module must have; `None`: not checked.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub phase: Phase,
    #[serde(default)]
    pub priority: i64,
    /// `pluginConfig` as JSON text: the plugin's configuration buffer.
    #[serde(default)]
    pub config: String,
    #[serde(default)]
    pub fail_strategy: FailStrategy,
    #[serde(default)]
    pub mode: Mode,
    /// `match[].ports`: application ports the plugin is limited to; empty: all.
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// The plugins of one workload, sorted by phase, then priority (higher first), then name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasmPlugins {
    pub plugins: Vec<WasmPlugin>,
}

impl WasmPlugins {
    /// Sorts into the order the proxy runs them: by phase, higher priority first, then name.
    pub fn sort(&mut self) {
        self.plugins.sort_by(|a, b| {
            a.phase
                .cmp(&b.phase)
                .then(b.priority.cmp(&a.priority))
                .then(a.name.cmp(&b.name))
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wasm_plugins_sort_by_phase_then_priority() {
        let p = |name: &str, phase, priority| WasmPlugin {
            name: name.into(),
            plugin_name: String::new(),
            url: "file:///x.wasm".into(),
            sha256: None,
            phase,
            priority,
            config: String::new(),
            fail_strategy: FailStrategy::FailClose,
            mode: Mode::Server,
            ports: vec![],
        };
        let mut set = WasmPlugins {
            plugins: vec![
                p("a", Phase::UnspecifiedPhase, 0),
                p("b", Phase::Authn, 1),
                p("c", Phase::Authn, 10),
                p("d", Phase::Stats, 0),
            ],
        };
        set.sort();
        let names: Vec<_> = set.plugins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["c", "b", "d", "a"]);
        let json = serde_json::to_string(&set).unwrap();
        assert!(json.contains("\"AUTHN\""), "{json}");
        assert_eq!(serde_json::from_str::<WasmPlugins>(&json).unwrap(), set);
    }
}
