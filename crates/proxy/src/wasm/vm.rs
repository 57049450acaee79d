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

/// An HTTP call a plugin dispatched (`proxy_http_call`), to be made by the request path.
#[derive(Debug, Clone)]
pub struct CallRequest {
    pub token: u32,
    /// The cluster name as the plugin gave it: a mesh service or `host:port`.
    pub upstream: String,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    pub timeout: std::time::Duration,
}

/// An HTTP call's answer, readable during `proxy_on_http_call_response` (empty when it
/// failed: no `:status`, as Envoy delivers a failed call).
#[derive(Debug, Default)]
pub struct CallResponse {
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The request or response a callback sees: headers (with the HTTP/2 pseudo headers),
/// the body buffered for the running body callback, trailers, and a few properties.
#[derive(Debug, Default)]
pub struct Stream {
    pub request_headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub request_dirty: bool,
    pub response_headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub response_dirty: bool,
    /// The plugin's buffered request (or response) body during its body callback.
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub request_trailers: Vec<(Vec<u8>, Vec<u8>)>,
    pub response_trailers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Calls dispatched during the last callback.
    pub calls: Vec<CallRequest>,
    /// The answer being delivered to `proxy_on_http_call_response`.
    pub call_response: Option<CallResponse>,
    /// The plugin resumed its paused stream (`proxy_continue_stream` and friends).
    pub resumed: bool,
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
    /// The last `proxy_http_call` token handed out (unique per instance).
    pub last_token: u32,
}

/// `proxy_on_http_call_response(context, token, headers, body size, trailers)`.
type CallResponseFn = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// The plugin's exported callbacks (the optional ones may be missing).
#[derive(Debug)]
struct Exports {
    context_create: TypedFunc<(i32, i32), ()>,
    request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    http_call_response: Option<CallResponseFn>,
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

/// A callback's answer (`FilterHeadersStatus` / `FilterDataStatus`): anything but
/// `Continue` stops iteration (the SDK's `Action::Pause`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

impl Action {
    fn from_abi(v: i32) -> Self {
        if v == 0 {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

/// Which half of the exchange a body or trailers callback is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

fn len32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
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
            last_token: 0,
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
            request_body: typed(&instance, &store, "proxy_on_request_body")?,
            response_body: typed(&instance, &store, "proxy_on_response_body")?,
            request_trailers: typed(&instance, &store, "proxy_on_request_trailers")?,
            response_trailers: typed(&instance, &store, "proxy_on_response_trailers")?,
            http_call_response: typed(&instance, &store, "proxy_on_http_call_response")?,
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

    /// Creates an HTTP context and runs `proxy_on_request_headers`; returns the context id
    /// and the plugin's action.
    pub fn request_headers(&mut self, end_of_stream: bool) -> Result<(i32, Action), Failure> {
        let id = self.next_id;
        // Ids only have to be unique among this VM's live contexts.
        self.next_id = if id == i32::MAX { ROOT_ID + 1 } else { id + 1 };
        let create = self.exports.context_create;
        self.call("proxy_on_context_create", &create, (id, ROOT_ID))?;
        let mut action = Action::Continue;
        if let Some(f) = self.exports.request_headers {
            let n = len32(self.stream().request_headers.len());
            action = Action::from_abi(self.call(
                "proxy_on_request_headers",
                &f,
                (id, n, i32::from(end_of_stream)),
            )?);
        }
        Ok((id, action))
    }

    pub fn response_headers(&mut self, id: i32, end_of_stream: bool) -> Result<Action, Failure> {
        let Some(f) = self.exports.response_headers else {
            return Ok(Action::Continue);
        };
        let n = len32(self.stream().response_headers.len());
        let action = self.call(
            "proxy_on_response_headers",
            &f,
            (id, n, i32::from(end_of_stream)),
        )?;
        Ok(Action::from_abi(action))
    }

    /// Whether the plugin has a body callback for that side (every SDK build does).
    pub fn wants_body(&self, side: Side) -> bool {
        match side {
            Side::Request => self.exports.request_body.is_some(),
            Side::Response => self.exports.response_body.is_some(),
        }
    }

    /// `proxy_on_request_body` / `proxy_on_response_body` over `stream.*_body` (the plugin's
    /// buffered bytes so far).
    pub fn body(&mut self, side: Side, id: i32, end_of_stream: bool) -> Result<Action, Failure> {
        let (f, name, len) = match side {
            Side::Request => (
                self.exports.request_body,
                "proxy_on_request_body",
                self.stream().request_body.len(),
            ),
            Side::Response => (
                self.exports.response_body,
                "proxy_on_response_body",
                self.stream().response_body.len(),
            ),
        };
        let Some(f) = f else {
            return Ok(Action::Continue);
        };
        let action = self.call(name, &f, (id, len32(len), i32::from(end_of_stream)))?;
        Ok(Action::from_abi(action))
    }

    /// `proxy_on_request_trailers` / `proxy_on_response_trailers` over `stream.*_trailers`.
    pub fn trailers(&mut self, side: Side, id: i32) -> Result<(), Failure> {
        let (f, name, len) = match side {
            Side::Request => (
                self.exports.request_trailers,
                "proxy_on_request_trailers",
                self.stream().request_trailers.len(),
            ),
            Side::Response => (
                self.exports.response_trailers,
                "proxy_on_response_trailers",
                self.stream().response_trailers.len(),
            ),
        };
        if let Some(f) = f {
            self.call(name, &f, (id, len32(len)))?;
        }
        Ok(())
    }

    /// Delivers a call's answer (`stream.call_response`) to `proxy_on_http_call_response`.
    pub fn http_call_response(&mut self, id: i32, token: u32) -> Result<(), Failure> {
        let Some(f) = self.exports.http_call_response else {
            return Ok(());
        };
        let (h, b, t) = self.stream().call_response.as_ref().map_or((0, 0, 0), |r| {
            (r.headers.len(), r.body.len(), r.trailers.len())
        });
        // Tokens travel as the u32 the plugin was given.
        let token = token as i32;
        self.call(
            "proxy_on_http_call_response",
            &f,
            (id, token, len32(h), len32(b), len32(t)),
        )
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
        // Calls are made for requests only; one left here would run on the next request.
        let dropped = std::mem::take(&mut self.stream().calls);
        if !dropped.is_empty() {
            tracing::warn!(plugin = %self.store.data().plugin.name, calls = dropped.len(), "http calls from proxy_on_tick are not made");
        }
        Ok(())
    }
}
