//! One loaded plugin: its module read from the `file://` URL (or fetched from the `http://`
//! one) and checked against its sha256,
//! compiled once, and a pool of ready instances. A request takes an instance from the pool
//! (or a fresh one is made) for its whole life and gives it back when done; an instance that
//! failed is dropped instead, so the next request gets a fresh one.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use trellis_model::wasm::WasmPlugin;
use wasmi::{Engine, Linker, Module};

use super::metrics::WasmMetrics;
use super::shared::SharedData;
use super::vm::{Failure, Host, Limits, PluginShared, Vm};

/// Modules bigger than this are refused before reading.
const MAX_MODULE_BYTES: u64 = 64 << 20;
/// Idle instances kept per plugin; more concurrent requests make (and then drop) extra ones.
const MAX_IDLE: usize = 64;

/// Why a plugin could not be loaded; each names the plugin and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "WasmPlugin {plugin}: url {url:?}: only file:// and http:// URLs are read by the proxy"
    )]
    Scheme { plugin: String, url: String },
    #[error("WasmPlugin {plugin}: spec.url {url}: fetch failed: {reason}")]
    Fetch {
        plugin: String,
        url: String,
        reason: String,
    },
    #[error("WasmPlugin {plugin}: reading {path}: {source}")]
    Read {
        plugin: String,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "WasmPlugin {plugin}: {path} is {size} bytes, more than the {MAX_MODULE_BYTES} allowed"
    )]
    TooBig {
        plugin: String,
        path: String,
        size: u64,
    },
    #[error(
        "WasmPlugin {plugin}: sha256 mismatch for {path}: spec.sha256 is {expected}, the file's is {actual}"
    )]
    Sha256 {
        plugin: String,
        path: String,
        expected: String,
        actual: String,
    },
    #[error("WasmPlugin {plugin}: {path} is not a valid WebAssembly module: {reason}")]
    Compile {
        plugin: String,
        path: String,
        reason: String,
    },
    #[error("WasmPlugin {plugin}: starting the module failed: {source}")]
    Start { plugin: String, source: Failure },
}

/// A loaded plugin, shared by every request that runs it.
#[derive(Debug)]
pub struct Plugin {
    pub spec: WasmPlugin,
    engine: Engine,
    module: Module,
    linker: Linker<Host>,
    shared: Arc<PluginShared>,
    limits: Limits,
    idle: Mutex<Vec<Vm>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Push and pop only: a panic elsewhere cannot leave the pool half-changed.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Plugin {
    /// Reads, verifies and compiles the module, and starts one instance (which must
    /// configure itself) so a broken plugin is refused here, not on a request.
    pub fn load(
        spec: WasmPlugin,
        engine: &Engine,
        metrics: Arc<WasmMetrics>,
        shared_data: Arc<SharedData>,
        limits: Limits,
    ) -> Result<Self, LoadError> {
        let plugin = spec.name.clone();
        let (path, bytes) = if spec.url.starts_with("http://") {
            let bytes = super::fetch::fetch(&spec.url, MAX_MODULE_BYTES).map_err(|reason| {
                LoadError::Fetch {
                    plugin: plugin.clone(),
                    url: spec.url.clone(),
                    reason,
                }
            })?;
            (spec.url.clone(), bytes)
        } else {
            let path = spec
                .url
                .strip_prefix("file://")
                .ok_or_else(|| LoadError::Scheme {
                    plugin: plugin.clone(),
                    url: spec.url.clone(),
                })?
                .to_string();
            let read_err = |source| LoadError::Read {
                plugin: plugin.clone(),
                path: path.clone(),
                source,
            };
            let size = std::fs::metadata(Path::new(&path)).map_err(read_err)?.len();
            if size > MAX_MODULE_BYTES {
                return Err(LoadError::TooBig { plugin, path, size });
            }
            let bytes = std::fs::read(&path).map_err(read_err)?;
            (path, bytes)
        };
        if let Some(expected) = &spec.sha256 {
            let actual =
                hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref());
            if actual != *expected {
                return Err(LoadError::Sha256 {
                    plugin,
                    path,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let compile_err = |reason: String| LoadError::Compile {
            plugin: plugin.clone(),
            path: path.clone(),
            reason,
        };
        let module = Module::new(engine, &bytes[..]).map_err(|e| compile_err(e.to_string()))?;
        let linker = super::abi::linker(engine, &module).map_err(|e| compile_err(e.to_string()))?;
        let shared = Arc::new(PluginShared {
            name: spec.name.clone(),
            config: spec.config.clone().into_bytes(),
            metrics,
            shared_data,
            tick_ms: Default::default(),
        });
        let this = Self {
            spec,
            engine: engine.clone(),
            module,
            linker,
            shared,
            limits,
            idle: Mutex::new(Vec::new()),
        };
        let first = this.fresh().map_err(|source| LoadError::Start {
            plugin: plugin.clone(),
            source,
        })?;
        lock(&this.idle).push(first);
        Ok(this)
    }

    fn fresh(&self) -> Result<Vm, Failure> {
        Vm::new(
            &self.engine,
            &self.linker,
            &self.module,
            self.shared.clone(),
            self.limits,
        )
    }

    /// An instance for one request: an idle one, or a fresh one.
    pub fn take(&self) -> Result<Vm, Failure> {
        if let Some(vm) = lock(&self.idle).pop() {
            return Ok(vm);
        }
        self.fresh()
    }

    /// Gives back an instance whose request ended without a failure.
    pub fn give_back(&self, vm: Vm) {
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(vm);
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Runs `proxy_on_tick` on an idle instance when the plugin's tick period has passed since
    /// `last`; returns when it ran.
    pub fn tick_if_due(
        &self,
        now: std::time::Instant,
        last: Option<std::time::Instant>,
    ) -> Option<std::time::Instant> {
        let period = std::time::Duration::from_millis(u64::from(self.tick_ms()));
        if period.is_zero() || last.is_some_and(|l| now.duration_since(l) < period) {
            return last;
        }
        let Ok(mut vm) = self.take() else {
            return Some(now);
        };
        match vm.tick() {
            Ok(()) => self.give_back(vm),
            Err(e) => {
                tracing::warn!(plugin = self.name(), reason = e.reason.as_str(), error = %e, "wasm plugin failed on tick")
            }
        }
        Some(now)
    }

    /// The tick period the plugin asked for, in milliseconds (0: none).
    pub fn tick_ms(&self) -> u32 {
        self.shared
            .tick_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}
