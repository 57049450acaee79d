//! The metrics plugins define (`proxy_define_metric` and friends) and the host's own
//! `trellis_wasm_plugin_failures_total{plugin,reason}`, both on the admin `/metrics`.
//!
//! A plugin's metric is keyed by plugin and name, so every VM of a plugin (the pool, and the
//! instances that replace trapped ones or come with a reload) adds to the same series.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::telemetry::escape;
use crate::telemetry::family;

/// Proxy-Wasm `MetricType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn from_abi(v: i32) -> Option<Self> {
        match v {
            0 => Some(Kind::Counter),
            1 => Some(Kind::Gauge),
            2 => Some(Kind::Histogram),
            _ => None,
        }
    }
}

/// One plugin-defined metric. A histogram keeps its sum and count.
#[derive(Debug)]
pub struct Metric {
    plugin: String,
    name: String,
    kind: Kind,
    value: AtomicI64,
    count: AtomicU64,
}

impl Metric {
    pub fn increment(&self, by: i64) {
        self.value.fetch_add(by, Ordering::Relaxed);
    }

    pub fn record(&self, v: i64) {
        match self.kind {
            Kind::Histogram => {
                self.value.fetch_add(v, Ordering::Relaxed);
                self.count.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Counter | Kind::Gauge => self.value.store(v, Ordering::Relaxed),
        }
    }

    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
}

/// Why a plugin failed a request (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// A trap: `unreachable` (a Rust panic), an out-of-bounds access, a bad call.
    Trap,
    /// The callback used up its fuel: a runaway loop.
    Fuel,
    /// The instance reached its memory cap.
    Memory,
    /// The module could not be read, verified, compiled, instantiated or configured.
    Load,
    /// The plugin paused the request on an HTTP call whose answer neither resumed nor
    /// answered it (the call failed, or the plugin did not decide).
    HttpCall,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Trap => "trap",
            Reason::Fuel => "fuel",
            Reason::Memory => "memory",
            Reason::Load => "load",
            Reason::HttpCall => "http_call",
        }
    }
}

/// A proxy's plugin metrics.
#[derive(Debug, Default)]
pub struct WasmMetrics {
    metrics: Mutex<Vec<Arc<Metric>>>,
    failures: Mutex<BTreeMap<(String, Reason), u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is a single statement: a panic elsewhere cannot leave them half-done.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Prometheus metric names allow `[a-zA-Z_:][a-zA-Z0-9_:]*`; anything else becomes `_`.
fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

impl WasmMetrics {
    /// The id (1-based) of `plugin`'s metric `name`, defining it on first use. The same name
    /// with another type is refused (`None`).
    pub fn define(&self, plugin: &str, kind: Kind, name: &str) -> Option<u32> {
        let name = sanitize(name);
        let mut all = lock(&self.metrics);
        if let Some(i) = all
            .iter()
            .position(|m| m.plugin == plugin && m.name == name)
        {
            return (all[i].kind == kind).then(|| u32::try_from(i + 1).ok())?;
        }
        // Bounds what a plugin can make the proxy keep; far above a sane plugin's needs.
        if all.len() >= 10_000 {
            return None;
        }
        all.push(Arc::new(Metric {
            plugin: plugin.to_string(),
            name,
            kind,
            value: AtomicI64::new(0),
            count: AtomicU64::new(0),
        }));
        u32::try_from(all.len()).ok()
    }

    /// The metric of `id`, when it is `plugin`'s own.
    pub fn get(&self, plugin: &str, id: u32) -> Option<Arc<Metric>> {
        let all = lock(&self.metrics);
        let i = usize::try_from(id).ok()?.checked_sub(1)?;
        all.get(i).filter(|m| m.plugin == plugin).cloned()
    }

    pub fn failed(&self, plugin: &str, reason: Reason) {
        *lock(&self.failures)
            .entry((plugin.to_string(), reason))
            .or_default() += 1;
    }

    /// How often `plugin` failed for `reason` (tests, logs).
    pub fn failures(&self, plugin: &str, reason: Reason) -> u64 {
        lock(&self.failures)
            .get(&(plugin.to_string(), reason))
            .copied()
            .unwrap_or(0)
    }

    /// Appends the plugin metrics and failure counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let failures = lock(&self.failures).clone();
        if !failures.is_empty() {
            let help = "Requests a Wasm plugin failed (trap, fuel, memory, load), by plugin.";
            let _ = family(out, "trellis_wasm_plugin_failures_total", "counter", help);
            for ((plugin, reason), n) in &failures {
                out.push_str("trellis_wasm_plugin_failures_total{plugin=\"");
                escape(plugin, out);
                let _ = writeln!(out, "\",reason=\"{}\"}} {n}", reason.as_str());
            }
        }
        let mut all = lock(&self.metrics).clone();
        all.sort_by(|a, b| a.name.cmp(&b.name).then(a.plugin.cmp(&b.plugin)));
        let mut last = "";
        let mut plugin = String::new();
        for m in &all {
            plugin.clear();
            escape(&m.plugin, &mut plugin);
            let value = m.value.load(Ordering::Relaxed);
            if m.name != last {
                let kind = match m.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                    Kind::Histogram => "summary",
                };
                let _ = writeln!(out, "# TYPE {} {kind}", m.name);
                last = &m.name;
            }
            match m.kind {
                Kind::Counter | Kind::Gauge => {
                    let _ = writeln!(out, "{}{{plugin=\"{plugin}\"}} {value}", m.name);
                }
                Kind::Histogram => {
                    let count = m.count.load(Ordering::Relaxed);
                    let _ = writeln!(out, "{}_sum{{plugin=\"{plugin}\"}} {value}", m.name);
                    let _ = writeln!(out, "{}_count{{plugin=\"{plugin}\"}} {count}", m.name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wasm_metrics_define_share_and_render() {
        let m = WasmMetrics::default();
        let id = m.define("shop/count", Kind::Counter, "wasm.seen").unwrap();
        assert_eq!(m.define("shop/count", Kind::Counter, "wasm.seen"), Some(id));
        assert_eq!(m.define("shop/count", Kind::Gauge, "wasm.seen"), None);
        assert!(m.get("shop/other", id).is_none(), "another plugin's id");
        m.get("shop/count", id).unwrap().increment(3);
        m.failed("shop/trap", Reason::Fuel);
        m.failed("odd\"name", Reason::Trap);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("wasm_seen{plugin=\"shop/count\"} 3"), "{out}");
        assert!(
            out.contains(
                "trellis_wasm_plugin_failures_total{plugin=\"shop/trap\",reason=\"fuel\"} 1"
            ),
            "{out}"
        );
        assert!(
            out.contains(
                r#"trellis_wasm_plugin_failures_total{plugin="odd\"name",reason="trap"} 1"#
            ),
            "label values are escaped: {out}"
        );
    }
}
