//! One plugin instance (a "VM"): a wasmi store with the host state the ABI calls read and
//! write, the plugin's exported callbacks, and the limits every call runs under.
//!
//! Every callback gets a fresh fuel budget ([`Limits::fuel`]): a runaway loop ends in an
//! out-of-fuel trap instead of holding a proxy thread. Linear memory is capped
//! ([`Limits::memory`]): a grow past it traps. Any trap leaves the instance in an unknown
//! state, so the caller drops it and the pool makes a fresh one.

use std::sync::Arc;

use wasmi::{
    Engine, Instance, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder, TrapCode,
    TypedFunc,
};

use super::metrics::{Reason, WasmMetrics};
use super::shared::SharedData;

/// The root context every VM is configured with (the SDK's root id; any non-zero id works).
pub const ROOT_ID: i32 = 1;

/// Per-call and per-instance bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Fuel (roughly: Wasm instructions) one callback may use.
    pub fuel: u64,
    /// Bytes of linear memory one instance may have.
    pub memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 20_000_000,
            memory: 64 << 20,
        }
    }
}

/// A failed call: the reason label and what happened.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct Failure {
    pub reason: Reason,
    pub what: String,
}

impl Failure {
    pub fn load(what: impl Into<String>) -> Self {
        Self {
            reason: Reason::Load,
            what: what.into(),
        }
    }

    fn from_wasmi(callback: &str, e: &wasmi::Error) -> Self {
        let text = e.to_string();
        let reason = match e.as_trap_code() {
            Some(TrapCode::OutOfFuel) => Reason::Fuel,
            // A memory.grow past the store's limit (`trap_on_grow_failure`).
            Some(TrapCode::GrowthOperationLimited) => Reason::Memory,
            _ if text.contains("limiter") => Reason::Memory,
            _ => Reason::Trap,
        };
        Self {
            reason,
            what: format!("{callback}: {text}"),
        }
    }
}

/// What one plugin's VMs share: its name and configuration, the proxy's metrics and shared
/// data.
#[derive(Debug)]
pub struct PluginShared {
    pub name: String,
    pub config: Vec<u8>,
    pub metrics: Arc<WasmMetrics>,
    pub shared_data: Arc<SharedData>,
    /// Last `proxy_set_tick_period_milliseconds` (0: no timer).
    pub tick_ms: std::sync::atomic::AtomicU32,
}

/// A reply a plugin asked for with `proxy_send_local_response`.
#[derive(Debug, Default, Clone)]
pub struct LocalResponse {
    pub status: u16,
    pub details: String,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The request or response a callback sees: headers (with the HTTP/2 pseudo headers) and a
/// few properties.
#[derive(Debug, Default)]
pub struct Stream {
    pub request_headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub request_dirty: bool,
    pub response_headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub response_dirty: bool,
    pub local_response: Option<LocalResponse>,
    pub source: Option<std::net::SocketAddr>,
    pub destination_port: u16,
    pub response_code: Option<u16>,
}

/// A VM's host state.
#[derive(Debug)]
pub struct Host {
    limits: StoreLimits,
    pub plugin: Arc<PluginShared>,
    pub memory: Option<Memory>,
    pub malloc: Option<TypedFunc<i32, i32>>,
    pub stream: Stream,
}

/// The plugin's exported callbacks (the optional ones may be missing).
#[derive(Debug)]
struct Exports {
    context_create: TypedFunc<(i32, i32), ()>,
    request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    done: Option<TypedFunc<i32, i32>>,
    log: Option<TypedFunc<i32, ()>>,
    delete: Option<TypedFunc<i32, ()>>,
    tick: Option<TypedFunc<i32, ()>>,
}

/// One plugin instance.
#[derive(Debug)]
pub struct Vm {
    store: Store<Host>,
    exports: Exports,
    fuel: u64,
    next_id: i32,
}

fn typed<P: wasmi::WasmParams, R: wasmi::WasmResults>(
    instance: &Instance,
    store: &Store<Host>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, Failure> {
    match instance.get_func(store, name) {
        None => Ok(None),
        Some(f) => f
            .typed::<P, R>(store)
            .map(Some)
            .map_err(|e| Failure::load(format!("export {name} has the wrong signature: {e}"))),
    }
}

impl Vm {
    /// Instantiates `module` and runs its start-up: `_initialize` (or `_start`),
    /// `proxy_on_context_create(root)`, `proxy_on_vm_start`, `proxy_on_configure`.
    pub fn new(
        engine: &Engine,
        linker: &Linker<Host>,
        module: &Module,
        plugin: Arc<PluginShared>,
        limits: Limits,
    ) -> Result<Self, Failure> {
        let host = Host {
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory)
                .instances(1)
                .trap_on_grow_failure(true)
                .build(),
            plugin,
            memory: None,
            malloc: None,
            stream: Stream::default(),
        };
        let mut store = Store::new(engine, host);
        store.limiter(|h| &mut h.limits);
        store
            .set_fuel(limits.fuel)
            .map_err(|e| Failure::load(e.to_string()))?;
        let instance = linker
            .instantiate_and_start(&mut store, module)
            .map_err(|e| Failure::from_wasmi("instantiate", &e))?;
        let memory = instance
            .get_memory(&store, "memory")
            .ok_or_else(|| Failure::load("the module exports no memory"))?;
        let malloc = typed::<i32, i32>(&instance, &store, "proxy_on_memory_allocate")?
            .or(typed::<i32, i32>(&instance, &store, "malloc")?)
            .ok_or_else(|| Failure::load("the module exports no proxy_on_memory_allocate"))?;
        store.data_mut().memory = Some(memory);
        store.data_mut().malloc = Some(malloc);
        let context_create = typed(&instance, &store, "proxy_on_context_create")?
            .ok_or_else(|| Failure::load("the module exports no proxy_on_context_create"))?;
        let exports = Exports {
            context_create,
            request_headers: typed(&instance, &store, "proxy_on_request_headers")?,
            response_headers: typed(&instance, &store, "proxy_on_response_headers")?,
            done: typed(&instance, &store, "proxy_on_done")?,
            log: typed(&instance, &store, "proxy_on_log")?,
            delete: typed(&instance, &store, "proxy_on_delete")?,
            tick: typed(&instance, &store, "proxy_on_tick")?,
        };
        let mut vm = Self {
            store,
            exports,
            fuel: limits.fuel,
            next_id: ROOT_ID + 1,
        };
        for start in ["_initialize", "_start"] {
            if let Some(f) = typed::<(), ()>(&instance, &vm.store, start)? {
                vm.call(start, &f, ())?;
                break;
            }
        }
        let create = vm.exports.context_create;
        vm.call("proxy_on_context_create", &create, (ROOT_ID, 0))?;
        if let Some(f) = typed::<(i32, i32), i32>(&instance, &vm.store, "proxy_on_vm_start")?
            && vm.call("proxy_on_vm_start", &f, (ROOT_ID, 0))? == 0
        {
            return Err(Failure::load("proxy_on_vm_start returned false"));
        }
        if let Some(f) = typed::<(i32, i32), i32>(&instance, &vm.store, "proxy_on_configure")? {
            let size = i32::try_from(vm.store.data().plugin.config.len()).unwrap_or(i32::MAX);
            if vm.call("proxy_on_configure", &f, (ROOT_ID, size))? == 0 {
                return Err(Failure::load(
                    "proxy_on_configure returned false (the plugin refused its pluginConfig)",
                ));
            }
        }
        Ok(vm)
    }

    fn call<P: wasmi::WasmParams, R: wasmi::WasmResults>(
        &mut self,
        name: &str,
        f: &TypedFunc<P, R>,
        args: P,
    ) -> Result<R, Failure> {
        // A fresh budget per callback: one request cannot starve the next.
        self.store
            .set_fuel(self.fuel)
            .map_err(|e| Failure::load(e.to_string()))?;
        f.call(&mut self.store, args)
            .map_err(|e| Failure::from_wasmi(name, &e))
    }

    pub fn stream(&mut self) -> &mut Stream {
        &mut self.store.data_mut().stream
    }

    /// Creates an HTTP context and runs `proxy_on_request_headers`; returns the context id.
    pub fn request_headers(&mut self, end_of_stream: bool) -> Result<i32, Failure> {
        let id = self.next_id;
        // Ids only have to be unique among this VM's live contexts.
        self.next_id = if id == i32::MAX { ROOT_ID + 1 } else { id + 1 };
        let create = self.exports.context_create;
        self.call("proxy_on_context_create", &create, (id, ROOT_ID))?;
        if let Some(f) = self.exports.request_headers {
            let n = i32::try_from(self.stream().request_headers.len()).unwrap_or(i32::MAX);
            self.call(
                "proxy_on_request_headers",
                &f,
                (id, n, i32::from(end_of_stream)),
            )?;
        }
        Ok(id)
    }

    pub fn response_headers(&mut self, id: i32, end_of_stream: bool) -> Result<(), Failure> {
        if let Some(f) = self.exports.response_headers {
            let n = i32::try_from(self.stream().response_headers.len()).unwrap_or(i32::MAX);
            self.call(
                "proxy_on_response_headers",
                &f,
                (id, n, i32::from(end_of_stream)),
            )?;
        }
        Ok(())
    }

    /// Ends a context: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn finish(&mut self, id: i32) -> Result<(), Failure> {
        if let Some(f) = self.exports.done {
            self.call("proxy_on_done", &f, id)?;
        }
        if let Some(f) = self.exports.log {
            self.call("proxy_on_log", &f, id)?;
        }
        if let Some(f) = self.exports.delete {
            self.call("proxy_on_delete", &f, id)?;
        }
        self.store.data_mut().stream = Stream::default();
        Ok(())
    }

    /// Runs the root context's `proxy_on_tick`, when the plugin set a tick period.
    pub fn tick(&mut self) -> Result<(), Failure> {
        if let Some(f) = self.exports.tick {
            self.call("proxy_on_tick", &f, ROOT_ID)?;
        }
        Ok(())
    }
}
