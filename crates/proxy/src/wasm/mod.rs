//! Proxy-Wasm plugins (Istio `WasmPlugin`): a host for the Proxy-Wasm ABI 0.2.1 on the wasmi
//! interpreter, run on HTTP requests in the phase each plugin asks for.
//!
//! The control plane resolves which plugins apply to this workload and sends them, in order,
//! as JSON in the discovery `InboundPolicy.wasm_plugins_json` ([`follow`]). The proxy reads
//! each module from its `file://` URL, checks its sha256, compiles it once and keeps a pool of
//! instances ([`plugin`]). A changed set is loaded off the request path and swapped in
//! atomically: a request in flight finishes on the instances it started with. A plugin that
//! cannot be loaded keeps its last good version, or (never loaded) fails requests per its
//! failStrategy.
//!
//! Per request ([`WasmRequest`]): each plugin gets an HTTP context on an instance of its own
//! for the request's life; its request-headers callback runs at its phase (AUTHN before
//! authentication, AUTHZ before authorization, STATS and the default after them), its
//! response-headers callback on the way back in reverse order. A trap, exhausted fuel or memory
//! fails the request (FAIL_CLOSE: 500 `trellis-error: wasm-plugin-failed`) or skips the plugin
//! (FAIL_OPEN), and the instance is dropped; the proxy goes on. See docs/wasm.md.

mod abi;
mod body;
mod calls;
mod fetch;
mod metrics;
mod plugin;
#[cfg(test)]
mod real_plugins;
mod shared;
mod vm;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use trellis_model::wasm::{FailStrategy, Phase, WasmPlugin, WasmPlugins};

use crate::client::UpBody;
use crate::http::{ProxyBody, error_response};
use crate::telemetry::Direction;

use body::{Abort, Chain, Slot, Stage, Verdict, WasmBody};
pub use calls::{CallOut, MeshCalls};
pub use metrics::{Reason, WasmMetrics};
use plugin::Plugin;
use shared::SharedData;
use vm::{Action, Failure, Limits, LocalResponse, Side};

/// The `trellis-error` of a request a failing plugin failed (FAIL_CLOSE).
pub const FAILED: &str = "wasm-plugin-failed";

/// A plugin in force: loaded, or (never loaded) the error requests fail with.
#[derive(Debug, Clone)]
enum Entry {
    Ready(Arc<Plugin>),
    Broken { spec: WasmPlugin, error: Arc<str> },
}

impl Entry {
    fn spec(&self) -> &WasmPlugin {
        match self {
            Entry::Ready(p) => &p.spec,
            Entry::Broken { spec, .. } => spec,
        }
    }
}

/// The plugins in force, in the order they run (phase, then priority).
#[derive(Debug, Default)]
struct Active {
    entries: Vec<Entry>,
}

/// One proxy's Wasm host.
#[derive(Debug)]
pub struct Wasm {
    engine: wasmi::Engine,
    active: ArcSwap<Active>,
    metrics: Arc<WasmMetrics>,
    shared_data: Arc<SharedData>,
    limits: Limits,
    /// Woken after every install, so the tick loop can sleep while no plugin is in force.
    installed: tokio::sync::Notify,
}

impl Default for Wasm {
    fn default() -> Self {
        let mut config = wasmi::Config::default();
        config.consume_fuel(true);
        Self {
            engine: wasmi::Engine::new(&config),
            active: ArcSwap::default(),
            metrics: Arc::default(),
            shared_data: Arc::default(),
            limits: Limits::default(),
            installed: tokio::sync::Notify::new(),
        }
    }
}

impl Wasm {
    /// Installs a new plugin set (the control plane's JSON; empty: none). Loads what changed
    /// (reads files, compiles: call it off the async threads); a plugin that fails to load
    /// keeps its last good version when there is one.
    pub fn install(&self, set: WasmPlugins) {
        let current = self.active.load_full();
        let mut entries = Vec::with_capacity(set.plugins.len());
        for spec in set.plugins {
            let same = current.entries.iter().find_map(|e| match e {
                Entry::Ready(p) if p.spec == spec => Some(p.clone()),
                _ => None,
            });
            if let Some(p) = same {
                entries.push(Entry::Ready(p));
                continue;
            }
            match Plugin::load(
                spec.clone(),
                &self.engine,
                self.metrics.clone(),
                self.shared_data.clone(),
                self.limits,
            ) {
                Ok(p) => {
                    tracing::info!(plugin = %spec.name, url = %spec.url, phase = ?spec.phase, "wasm plugin loaded");
                    entries.push(Entry::Ready(Arc::new(p)));
                }
                Err(e) => {
                    self.metrics.failed(&spec.name, Reason::Load);
                    let last_good = current.entries.iter().find_map(|e| match e {
                        Entry::Ready(p) if p.spec.name == spec.name => Some(p.clone()),
                        _ => None,
                    });
                    match last_good {
                        Some(p) => {
                            tracing::error!(error = %e, "wasm plugin not loaded; its last good version stays in force");
                            entries.push(Entry::Ready(p));
                        }
                        None => {
                            tracing::error!(error = %e, fail_strategy = ?spec.fail_strategy, "wasm plugin not loaded");
                            entries.push(Entry::Broken {
                                spec,
                                error: Arc::from(e.to_string()),
                            });
                        }
                    }
                }
            }
        }
        self.active.store(Arc::new(Active { entries }));
        self.installed.notify_waiters();
    }

    /// The plugins in force, for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let active = self.active.load();
        serde_json::Value::Array(
            active
                .entries
                .iter()
                .map(|e| match e {
                    Entry::Ready(p) => serde_json::json!({"plugin": p.spec, "state": "loaded"}),
                    Entry::Broken { spec, error } => {
                        serde_json::json!({"plugin": spec, "state": "failed", "error": &**error})
                    }
                })
                .collect(),
        )
    }

    /// Appends the plugin metrics and failure counters to `/metrics`.
    pub fn render(&self, out: &mut String) {
        self.metrics.render(out);
    }

    /// Whether no plugin is in force: the request path then skips the host altogether (no
    /// per-request state, no reference counts).
    pub fn is_idle(&self) -> bool {
        self.active.load().entries.is_empty()
    }

    /// Starts one request's plugin run: `port` is the application (inbound) or destination
    /// (outbound) port, matched against each plugin's `match.ports`.
    pub fn begin(&self, direction: Direction, port: u16, peer: Option<SocketAddr>) -> WasmRequest {
        WasmRequest {
            active: self.active.load_full(),
            next: 0,
            running: Vec::new(),
            inbound: direction == Direction::Inbound,
            port,
            peer,
            metrics: self.metrics.clone(),
            calls: None,
            verdict: None,
        }
    }
}

/// A plugin's context on one request.
#[derive(Debug)]
struct Running {
    plugin: Arc<Plugin>,
    slot: Slot,
    id: i32,
    /// The plugin paused on the request head with no call to wait for: it wants the body
    /// before the request goes on (Envoy's `StopIteration`), so the body is read first.
    paused: bool,
}

/// How a callback's pause ended.
enum Settled {
    Continue,
    /// Paused with no call pending.
    Paused,
    Local(LocalResponse),
    /// Paused on a call whose answer neither resumed nor answered the request.
    Stalled,
}

/// One request's plugins: each gets its context when the request reaches its phase.
#[derive(Debug)]
pub struct WasmRequest {
    active: Arc<Active>,
    /// The next entry to consider (entries are in phase order).
    next: usize,
    running: Vec<Running>,
    inbound: bool,
    port: u16,
    peer: Option<SocketAddr>,
    metrics: Arc<WasmMetrics>,
    calls: Option<Arc<dyn CallOut>>,
    /// Set when the request body's plugins answer instead of letting it through.
    verdict: Option<Arc<Verdict>>,
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn failed_response() -> Response<ProxyBody> {
    error_response(StatusCode::INTERNAL_SERVER_ERROR, FAILED)
}

fn local_response(l: LocalResponse) -> Response<ProxyBody> {
    let mut resp = Response::new(full(l.body));
    *resp.status_mut() =
        StatusCode::from_u16(l.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in l.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(&k), HeaderValue::from_bytes(&v)) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

/// A request held for the plugins that asked to see its body first: at most this long.
const HOLD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Rounds of calls one callback may chain (a call's answer dispatching another call).
const MAX_CALL_ROUNDS: usize = 4;

impl WasmRequest {
    /// Lets the request's plugins make HTTP calls (`proxy_http_call`) through `calls`.
    pub fn with_calls(mut self, calls: Arc<dyn CallOut>) -> Self {
        self.calls = Some(calls);
        self
    }

    fn applies(&self, spec: &WasmPlugin) -> bool {
        let mode = if self.inbound {
            spec.mode.inbound()
        } else {
            spec.mode.outbound()
        };
        mode && (spec.ports.is_empty() || spec.ports.contains(&self.port))
    }

    /// Runs the request-headers callback of every plugin whose phase is at most `phase`
    /// (waiting for the HTTP calls a plugin paused on); `Some(response)` answers the request
    /// instead of forwarding it (a plugin's local response, or a failure under FAIL_CLOSE),
    /// already through the response callbacks. After the last phase the request body is
    /// routed through the plugins' body callbacks.
    pub async fn run_until(
        &mut self,
        phase: Phase,
        req: &mut Request<UpBody>,
    ) -> Option<Response<ProxyBody>> {
        while let Some(entry) = self.active.entries.get(self.next) {
            if entry.spec().phase > phase {
                break;
            }
            self.next += 1;
            let entry = entry.clone();
            if !self.applies(entry.spec()) {
                continue;
            }
            let plugin = match entry {
                Entry::Ready(p) => p,
                Entry::Broken { spec, error } => {
                    tracing::debug!(plugin = %spec.name, %error, "request meets a plugin that failed to load");
                    if let Some(resp) = self.fail(&spec, Reason::Load) {
                        return Some(resp);
                    }
                    continue;
                }
            };
            match self.start(&plugin, req).await {
                Ok(Some(local)) => return Some(self.finish_early(local).await),
                Ok(None) => {}
                Err(failure) => {
                    tracing::warn!(plugin = plugin.name(), reason = failure.reason.as_str(), error = %failure, "wasm plugin failed on request headers");
                    if let Some(resp) = self.fail(&plugin.spec, failure.reason) {
                        return Some(self.finish_early(resp).await);
                    }
                }
            }
        }
        if phase == Phase::UnspecifiedPhase
            && let Some(resp) = self.wrap_request_body(req).await
        {
            return Some(self.finish_early(resp).await);
        }
        None
    }

    /// Counts a failure; under FAIL_CLOSE the response the request gets.
    fn fail(&self, spec: &WasmPlugin, reason: Reason) -> Option<Response<ProxyBody>> {
        self.metrics.failed(&spec.name, reason);
        match spec.fail_strategy {
            FailStrategy::FailClose => Some(failed_response()),
            FailStrategy::FailOpen => None,
        }
    }

    /// Takes an instance and runs its request-headers callback (and the calls it waits
    /// for); `Some` is a local response.
    async fn start(
        &mut self,
        plugin: &Arc<Plugin>,
        req: &mut Request<UpBody>,
    ) -> Result<Option<Response<ProxyBody>>, Failure> {
        let mut vm = plugin.take()?;
        {
            let stream = vm.stream();
            stream.request_headers = request_pairs(req);
            stream.source = self.peer;
            stream.destination_port = self.port;
        }
        let (id, action) = vm.request_headers(req.body().is_end_stream())?;
        self.running.push(Running {
            plugin: plugin.clone(),
            slot: Arc::new(std::sync::Mutex::new(Some(vm))),
            id,
            paused: false,
        });
        let at = self.running.len() - 1;
        let settled = self.settle(at, action).await;
        let slot = self.running[at].slot.clone();
        if let Some(vm) = body::lock(&slot).as_mut() {
            let stream = vm.stream();
            if stream.request_dirty {
                apply_request(req, &stream.request_headers);
                stream.request_dirty = false;
            }
        }
        match settled? {
            Settled::Continue => Ok(None),
            Settled::Paused => {
                self.running[at].paused = true;
                Ok(None)
            }
            Settled::Local(l) => {
                tracing::debug!(plugin = plugin.name(), status = l.status, details = %l.details, "wasm plugin answered the request");
                Ok(Some(local_response(l)))
            }
            Settled::Stalled => Err(Failure {
                reason: Reason::HttpCall,
                what:
                    "paused on an http call whose answer neither resumed nor answered the request"
                        .into(),
            }),
        }
    }

    /// After a callback: a local response, or the calls it dispatched (waited for when it
    /// paused, each answer delivered to `proxy_on_http_call_response`). A failure drops the
    /// instance.
    async fn settle(&mut self, at: usize, action: Action) -> Result<Settled, Failure> {
        let (plugin, slot, id) = {
            let r = &self.running[at];
            (r.plugin.clone(), r.slot.clone(), r.id)
        };
        let mut paused = action == Action::Pause;
        let mut waited = false;
        for _ in 0..=MAX_CALL_ROUNDS {
            let (calls, local) = match body::lock(&slot).as_mut() {
                Some(vm) => {
                    let stream = vm.stream();
                    (
                        std::mem::take(&mut stream.calls),
                        stream.local_response.take(),
                    )
                }
                None => return Ok(Settled::Continue),
            };
            if let Some(l) = local {
                return Ok(Settled::Local(l));
            }
            if calls.is_empty() {
                return Ok(match (paused, waited) {
                    (false, _) => Settled::Continue,
                    (true, false) => Settled::Paused,
                    (true, true) => Settled::Stalled,
                });
            }
            let Some(out) = self.calls.clone() else {
                tracing::warn!(
                    plugin = plugin.name(),
                    "wasm plugin dispatched an http call where calls are not supported"
                );
                return Ok(if paused {
                    Settled::Stalled
                } else {
                    Settled::Continue
                });
            };
            if !paused {
                // Nothing waits for the answers: make the calls and drop them.
                let name = plugin.name().to_string();
                tokio::spawn(async move {
                    for call in calls {
                        calls::perform(&*out, &name, &call).await;
                    }
                });
                return Ok(Settled::Continue);
            }
            waited = true;
            for call in calls {
                let answer = calls::perform(&*out, plugin.name(), &call).await;
                let mut guard = body::lock(&slot);
                let Some(vm) = guard.as_mut() else {
                    return Ok(Settled::Continue);
                };
                vm.stream().call_response = Some(answer);
                vm.stream().resumed = false;
                let result = vm.http_call_response(id, call.token);
                vm.stream().call_response = None;
                if let Err(e) = result {
                    *guard = None;
                    return Err(e);
                }
                if std::mem::take(&mut vm.stream().resumed) {
                    paused = false;
                }
            }
        }
        Ok(if paused {
            Settled::Stalled
        } else {
            Settled::Continue
        })
    }

    async fn finish_early(&mut self, mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
        self.respond(&mut resp).await;
        resp
    }

    /// Routes the request body through the body callbacks of the running plugins that have
    /// one (none: the body is left alone). When a plugin paused on the head, the body is read
    /// through them first; `Some` answers the request instead.
    async fn wrap_request_body(
        &mut self,
        req: &mut Request<UpBody>,
    ) -> Option<Response<ProxyBody>> {
        if req.body().is_end_stream() {
            return None;
        }
        let mut hold = false;
        let mut stages = Vec::new();
        for r in &self.running {
            if body::lock(&r.slot)
                .as_ref()
                .is_some_and(|vm| vm.wants_body(Side::Request))
            {
                hold |= r.paused;
                stages.push(Stage::new(r.plugin.clone(), r.slot.clone(), r.id));
            }
        }
        if stages.is_empty() {
            return None;
        }
        let verdict = Arc::new(Verdict::default());
        self.verdict = Some(verdict.clone());
        let chain = Chain {
            side: Side::Request,
            stages,
            metrics: self.metrics.clone(),
        };
        let inner = std::mem::replace(
            req.body_mut(),
            Full::default().map_err(|never| match never {}).boxed(),
        );
        let mut wrapped = WasmBody::new(inner, chain, Some(verdict.clone()), None);
        if !hold {
            *req.body_mut() = wrapped.boxed();
            return None;
        }
        let read = tokio::time::timeout(HOLD_TIMEOUT, read_whole(&mut wrapped));
        let read = tokio::select! {
            () = verdict.notify.notified() => {
                return Some(verdict.take().map_or_else(failed_response, body::abort_response));
            }
            read = read => read,
        };
        match read {
            Ok(Ok(frames)) => {
                // The body was read whole: nothing can answer from it any more.
                self.verdict = None;
                for r in &self.running {
                    if let Some(vm) = body::lock(&r.slot).as_mut() {
                        let stream = vm.stream();
                        if std::mem::take(&mut stream.request_dirty) {
                            apply_request(req, &stream.request_headers);
                        }
                    }
                }
                set_length(req.headers_mut(), &frames);
                *req.body_mut() = body::replay(frames);
                None
            }
            Ok(Err(e)) => Some(match (verdict.take(), e) {
                (Some(abort), _) => body::abort_response(abort),
                (None, Unread::TooBig) => {
                    error_response(StatusCode::PAYLOAD_TOO_LARGE, "wasm-body-too-large")
                }
                (None, Unread::Broken) => {
                    error_response(StatusCode::BAD_REQUEST, "wasm-body-read-failed")
                }
            }),
            Err(_) => Some(error_response(
                StatusCode::REQUEST_TIMEOUT,
                "wasm-body-timeout",
            )),
        }
    }

    /// Whether the request body streams through plugins that may answer the request from it
    /// (only then must the forward race them).
    pub fn may_answer_from_body(&self) -> bool {
        self.verdict.is_some()
    }

    /// Forwards the request, unless its body's plugins answer it first (the forward is then
    /// dropped, which cancels the upstream exchange).
    pub async fn forward(
        &mut self,
        forward: impl std::future::Future<Output = Response<ProxyBody>>,
    ) -> Response<ProxyBody> {
        let Some(verdict) = self.verdict.clone() else {
            return forward.await;
        };
        tokio::select! {
            resp = forward => resp,
            () = verdict.notify.notified() => match verdict.take() {
                Some(abort) => body::abort_response(abort),
                None => failed_response(),
            },
        }
    }

    /// Runs the response-headers callbacks (last plugin first), then routes the response body
    /// through the body callbacks (or ends every context at once when there is none). Under
    /// FAIL_CLOSE a failure replaces the response with a 500.
    pub async fn respond(&mut self, resp: &mut Response<ProxyBody>) {
        // The request body's plugins may have answered after the upstream did.
        if let Some(abort) = self.verdict.take().and_then(|v| v.take()) {
            *resp = body::abort_response(abort);
        }
        let mut hold = false;
        for at in (0..self.running.len()).rev() {
            let (plugin, slot, id) = {
                let r = &self.running[at];
                (r.plugin.clone(), r.slot.clone(), r.id)
            };
            let end_of_stream = resp.body().is_end_stream();
            let result = {
                let mut guard = body::lock(&slot);
                let Some(vm) = guard.as_mut() else { continue };
                let stream = vm.stream();
                stream.response_headers = response_pairs(resp);
                stream.response_code = Some(resp.status().as_u16());
                let result = vm.response_headers(id, end_of_stream);
                let stream = vm.stream();
                if stream.response_dirty {
                    apply_response(resp, &stream.response_headers);
                    stream.response_dirty = false;
                }
                if result.is_err() {
                    *guard = None;
                }
                result
            };
            let settled = match result {
                Ok(action) => self.settle(at, action).await,
                Err(e) => Err(e),
            };
            match settled {
                Ok(Settled::Continue) => {}
                Ok(Settled::Paused) => hold |= !end_of_stream,
                Ok(Settled::Local(l)) => *resp = local_response(l),
                Ok(Settled::Stalled) => self.response_failed(
                    &plugin,
                    &slot,
                    resp,
                    &Failure {
                        reason: Reason::HttpCall,
                        what: "paused on an http call that neither resumed nor answered".into(),
                    },
                ),
                Err(failure) => self.response_failed(&plugin, &slot, resp, &failure),
            }
        }
        self.wrap_response_body(resp, hold).await;
    }

    fn response_failed(
        &self,
        plugin: &Plugin,
        slot: &Slot,
        resp: &mut Response<ProxyBody>,
        failure: &Failure,
    ) {
        tracing::warn!(plugin = plugin.name(), reason = failure.reason.as_str(), error = %failure, "wasm plugin failed on the response");
        self.metrics.failed(plugin.name(), failure.reason);
        *body::lock(slot) = None;
        if plugin.spec.fail_strategy == FailStrategy::FailClose {
            *resp = failed_response();
        }
    }

    /// Hands the contexts to the response body (they end when it does), or ends them now.
    /// `hold`: a plugin paused on the response head, so the body is read through the plugins
    /// before the head goes out (and their changes to it, or their answer, still apply).
    async fn wrap_response_body(&mut self, resp: &mut Response<ProxyBody>, hold: bool) {
        let running = std::mem::take(&mut self.running);
        let stages: Vec<Stage> = if resp.body().is_end_stream() {
            Vec::new()
        } else {
            running
                .iter()
                .rev()
                .filter(|r| {
                    body::lock(&r.slot)
                        .as_ref()
                        .is_some_and(|vm| vm.wants_body(Side::Response))
                })
                .map(|r| Stage::new(r.plugin.clone(), r.slot.clone(), r.id))
                .collect()
        };
        let metrics = self.metrics.clone();
        let finish = move || {
            for r in running.iter().rev() {
                let Some(mut vm) = body::lock(&r.slot).take() else {
                    continue;
                };
                match vm.finish(r.id) {
                    Ok(()) => r.plugin.give_back(vm),
                    Err(failure) => {
                        tracing::warn!(plugin = r.plugin.name(), reason = failure.reason.as_str(), error = %failure, "wasm plugin failed ending its context");
                        metrics.failed(r.plugin.name(), failure.reason);
                    }
                }
            }
        };
        if stages.is_empty() {
            finish();
            return;
        }
        let slots: Vec<Slot> = stages.iter().map(|s| s.slot.clone()).collect();
        let chain = Chain {
            side: Side::Response,
            stages,
            metrics: self.metrics.clone(),
        };
        let inner = std::mem::replace(resp.body_mut(), full(Bytes::new()));
        if !hold {
            *resp.body_mut() = WasmBody::new(inner, chain, None, Some(Box::new(finish))).boxed();
            return;
        }
        let verdict = Arc::new(Verdict::default());
        let mut wrapped = WasmBody::new(inner, chain, Some(verdict.clone()), None);
        let read = tokio::time::timeout(HOLD_TIMEOUT, read_whole(&mut wrapped)).await;
        match read {
            Ok(Ok(frames)) => {
                // The head was held: changes the body callbacks made to it apply.
                for slot in &slots {
                    if let Some(vm) = body::lock(slot).as_mut() {
                        let stream = vm.stream();
                        if std::mem::take(&mut stream.response_dirty) {
                            apply_response(resp, &stream.response_headers);
                        }
                    }
                }
                set_length(resp.headers_mut(), &frames);
                *resp.body_mut() = body::replay(frames);
            }
            Ok(Err(_)) => {
                *resp = match verdict.take() {
                    Some(Abort::Local(l)) => local_response(l),
                    _ => failed_response(),
                };
            }
            Err(_) => *resp = failed_response(),
        }
        drop(wrapped);
        finish();
    }
}

/// Why a held body could not be read whole.
enum Unread {
    /// Longer than [`body::MAX_BUFFER`].
    TooBig,
    /// The body failed (the peer went away) or a plugin cut it short.
    Broken,
}

/// Reads a (plugin-wrapped) body whole, up to [`body::MAX_BUFFER`].
async fn read_whole<B>(body: &mut B) -> Result<Vec<http_body::Frame<Bytes>>, Unread>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut frames = Vec::new();
    let mut size = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Unread::Broken)?;
        size += frame.data_ref().map_or(0, Bytes::len);
        if size > body::MAX_BUFFER {
            return Err(Unread::TooBig);
        }
        frames.push(frame);
    }
    Ok(frames)
}

/// A held body's length is known: say it (the plugins may have changed it), unless trailers
/// follow.
fn set_length(headers: &mut HeaderMap, frames: &[http_body::Frame<Bytes>]) {
    if frames.iter().any(|f| f.is_trailers()) {
        headers.remove(http::header::CONTENT_LENGTH);
        return;
    }
    let size: usize = frames
        .iter()
        .filter_map(|f| f.data_ref())
        .map(Bytes::len)
        .sum();
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(size));
}

/// A request's headers as a Proxy-Wasm header map: the HTTP/2 pseudo headers first.
fn request_pairs<B>(req: &Request<B>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::with_capacity(req.headers().len() + 4);
    let uri = req.uri();
    let authority = uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .map(HeaderValue::as_bytes)
        })
        .unwrap_or_default();
    out.push((b":authority".to_vec(), authority.to_vec()));
    let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    out.push((b":path".to_vec(), path.as_bytes().to_vec()));
    out.push((
        b":method".to_vec(),
        req.method().as_str().as_bytes().to_vec(),
    ));
    out.push((
        b":scheme".to_vec(),
        uri.scheme_str().unwrap_or("http").as_bytes().to_vec(),
    ));
    push_headers(req.headers(), &mut out);
    out
}

fn response_pairs<B>(resp: &Response<B>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::with_capacity(resp.headers().len() + 1);
    out.push((
        b":status".to_vec(),
        resp.status().as_str().as_bytes().to_vec(),
    ));
    push_headers(resp.headers(), &mut out);
    out
}

pub(crate) fn push_headers(headers: &HeaderMap, out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
    for (k, v) in headers {
        out.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
}

/// The regular headers of a header map; names or values that are not valid HTTP are dropped
/// (a plugin cannot make the proxy send a malformed header).
pub(crate) fn header_map(pairs: &[(Vec<u8>, Vec<u8>)]) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for (k, v) in pairs.iter().filter(|(k, _)| !k.starts_with(b":")) {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) {
            headers.append(k, v);
        }
    }
    headers
}

/// Writes a plugin's changes back: headers, and `:path` / `:method`.
fn apply_request<B>(req: &mut Request<B>, pairs: &[(Vec<u8>, Vec<u8>)]) {
    for (k, v) in pairs {
        match k.as_slice() {
            b":path"
                if v.as_slice()
                    != req
                        .uri()
                        .path_and_query()
                        .map_or(&b"/"[..], |p| p.as_str().as_bytes()) =>
            {
                if let Ok(pq) = PathAndQuery::try_from(v.as_slice()) {
                    let mut parts = req.uri().clone().into_parts();
                    parts.path_and_query = Some(pq);
                    if let Ok(uri) = Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                    }
                }
            }
            b":method" => {
                if let Ok(m) = Method::from_bytes(v) {
                    *req.method_mut() = m;
                }
            }
            _ => {}
        }
    }
    *req.headers_mut() = header_map(pairs);
}

fn apply_response<B>(resp: &mut Response<B>, pairs: &[(Vec<u8>, Vec<u8>)]) {
    if let Some((_, v)) = pairs.iter().find(|(k, _)| k.as_slice() == b":status")
        && let Ok(s) = StatusCode::from_bytes(v)
    {
        *resp.status_mut() = s;
    }
    *resp.headers_mut() = header_map(pairs);
}

/// The port a request's plugins match `match.ports` against: the application port inbound,
/// the original destination's outbound (0 when unknown: only port-less plugins run).
pub fn request_port<B>(dest: &crate::route::Dest, req: &Request<B>) -> u16 {
    use crate::route::Dest;
    match dest {
        Dest::Fixed(addr) | Dest::Address { orig: addr, .. } => addr.port(),
        Dest::Local { app, .. } => req
            .headers()
            .get(crate::http::TARGET_PORT)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .or(app.map(|a| a.port()))
            .unwrap_or(0),
        Dest::Service { .. } => 0,
    }
}

/// The wire JSON; empty (an older control plane, or none sent yet) is "no plugins".
pub fn decode(json: &str) -> Result<WasmPlugins, serde_json::Error> {
    if json.trim().is_empty() {
        return Ok(WasmPlugins::default());
    }
    serde_json::from_str(json)
}

/// Installs the control plane's plugin set on every change, until `stop`. An undecodable
/// JSON is logged and the last good set stays in force.
pub async fn follow(
    mut json_rx: tokio::sync::watch::Receiver<Arc<str>>,
    wasm: Arc<Wasm>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let json = json_rx.borrow_and_update().clone();
        match decode(&json) {
            Ok(set) => {
                let wasm = wasm.clone();
                // Reading and compiling modules blocks: not on the proxy's async threads.
                if let Err(e) = tokio::task::spawn_blocking(move || wasm.install(set)).await {
                    tracing::error!(error = %e, "installing wasm plugins failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable wasm plugins; keeping the last good ones");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = json_rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Delivers `proxy_on_tick` to plugins that set a tick period, at a 50 ms resolution. With no
/// plugin in force it sleeps until an install, so a proxy without Wasm does not wake 20 times a
/// second for nothing.
pub async fn tick(wasm: Arc<Wasm>, stop: tokio_util::sync::CancellationToken) {
    let mut last: Vec<(String, std::time::Instant)> = Vec::new();
    let mut interval = tokio::time::interval(std::time::Duration::from_millis(50));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Registered before the check, so an install between the two still wakes us.
        let installed = wasm.installed.notified();
        tokio::pin!(installed);
        installed.as_mut().enable();
        if wasm.is_idle() {
            last.clear();
            tokio::select! {
                () = stop.cancelled() => return,
                () = installed => {}
            }
            interval.reset();
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let active = wasm.active.load_full();
        let now = std::time::Instant::now();
        let mut next = Vec::with_capacity(last.len());
        for entry in &active.entries {
            if let Entry::Ready(p) = entry {
                let prev = last.iter().find(|(n, _)| n == p.name()).map(|(_, t)| *t);
                if let Some(t) = p.tick_if_due(now, prev) {
                    next.push((p.name().to_string(), t));
                }
            }
        }
        last = next;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Counts how often the wrapped future is polled: each poll is a wake-up of the task.
    struct CountPolls<F> {
        inner: std::pin::Pin<Box<F>>,
        polls: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<F: std::future::Future> std::future::Future for CountPolls<F> {
        type Output = F::Output;
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            self.polls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.as_mut().poll(cx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_tick_loop_sleeps_while_no_plugin_is_in_force() {
        let wasm = Arc::new(Wasm::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = tokio::spawn(CountPolls {
            inner: Box::pin(tick(wasm.clone(), stop.clone())),
            polls: polls.clone(),
        });
        // One simulated second: a 50 ms interval would wake it 20 times.
        for _ in 0..20 {
            tokio::time::advance(std::time::Duration::from_millis(50)).await;
            tokio::task::yield_now().await;
        }
        let idle_polls = polls.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            idle_polls <= 2,
            "polled {idle_polls} times in one idle second"
        );

        // An install wakes it (it re-checks and, still idle, sleeps again).
        wasm.install(WasmPlugins::default());
        tokio::task::yield_now().await;
        let after_install = polls.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            after_install > idle_polls,
            "the install did not wake the tick loop"
        );

        stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(1), task)
            .await
            .expect("the tick loop stops on cancel")
            .unwrap();
    }

    #[test]
    fn wasm_request_headers_round_trip_with_pseudo_headers() {
        let mut req = Request::builder()
            .method("GET")
            .uri("/a?b=1")
            .header("host", "web")
            .header("x-a", "1")
            .body(())
            .unwrap();
        let mut pairs = request_pairs(&req);
        assert_eq!(pairs[0], (b":authority".to_vec(), b"web".to_vec()));
        assert_eq!(pairs[1], (b":path".to_vec(), b"/a?b=1".to_vec()));
        pairs[1].1 = b"/c".to_vec();
        pairs.push((b"x-new".to_vec(), b"2".to_vec()));
        pairs.push((b"bad header".to_vec(), b"3".to_vec()));
        apply_request(&mut req, &pairs);
        assert_eq!(req.uri().path(), "/c");
        assert_eq!(req.headers()["x-new"], "2");
        assert_eq!(req.headers()["x-a"], "1");
        assert_eq!(req.headers().len(), 3, "{:?}", req.headers());
    }

    #[tokio::test]
    async fn wasm_install_keeps_a_broken_plugin_failing_per_strategy() {
        let wasm = Wasm::default();
        let spec = |name: &str, fail_strategy| WasmPlugin {
            name: name.into(),
            plugin_name: String::new(),
            url: "file:///nonexistent/plugin.wasm".into(),
            sha256: None,
            phase: Phase::UnspecifiedPhase,
            priority: 0,
            config: String::new(),
            fail_strategy,
            mode: trellis_model::wasm::Mode::ClientAndServer,
            ports: vec![],
        };
        wasm.install(WasmPlugins {
            plugins: vec![spec("t/open", FailStrategy::FailOpen)],
        });
        let mut req = Request::builder()
            .uri("/")
            .body(
                Full::<Bytes>::default()
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap();
        let mut run = wasm.begin(Direction::Inbound, 80, None);
        assert!(
            run.run_until(Phase::UnspecifiedPhase, &mut req)
                .await
                .is_none()
        );
        wasm.install(WasmPlugins {
            plugins: vec![spec("t/close", FailStrategy::FailClose)],
        });
        let mut run = wasm.begin(Direction::Inbound, 80, None);
        let resp = run
            .run_until(Phase::UnspecifiedPhase, &mut req)
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()["trellis-error"], FAILED);
        assert_eq!(wasm.metrics.failures("t/close", Reason::Load), 2);
        let dump = wasm.dump().to_string();
        assert!(dump.contains("No such file"), "{dump}");
    }
}
