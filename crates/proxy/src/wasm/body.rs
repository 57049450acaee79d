//! Request and response bodies through the plugins' body and trailers callbacks.
//!
//! A body is wrapped only when a running plugin exports the side's body callback and the
//! body is not empty; otherwise it streams as before, untouched. Each data frame goes through
//! the plugins in order (`proxy_on_request_body`: first to last; response: last to first).
//! A plugin that answers `Continue` passes on what it buffered (as it may have rewritten it
//! with `proxy_set_buffer_bytes`); one that pauses (`StopIterationAndBuffer`) keeps the bytes
//! and sees them again, with the next ones, on its next callback, up to [`MAX_BUFFER`]. At the
//! end of the stream a pause is taken as `Continue` (nothing else could resume it). Trailers
//! flush every buffer and then go through the trailers callbacks.
//!
//! A failure, a local response or a buffer past the bound ends the stream: on the request
//! side the body stops yielding (the request path races it: see [`Verdict`]) and the request
//! gets the answer instead; on the response side (its head already sent) the body ends in an
//! error. Callbacks run under each instance's lock, never across an `.await`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::{Body, Frame};
use trellis_model::wasm::FailStrategy;

use super::metrics::WasmMetrics;
use super::plugin::Plugin;
use super::vm::{Action, LocalResponse, Side, Vm};
use crate::http::{BoxError, ProxyBody};

/// Bytes one plugin may hold back from one body (Envoy's default buffer limit is 1 MiB too).
pub const MAX_BUFFER: usize = 1 << 20;

/// One plugin context, shared by the request path and the body streams; `None` once it
/// failed (dropped) or finished (given back).
pub type Slot = Arc<Mutex<Option<Vm>>>;

pub fn lock(slot: &Slot) -> MutexGuard<'_, Option<Vm>> {
    // A callback is one call under the lock; a panic elsewhere leaves nothing half-done.
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a body was cut short.
#[derive(Debug)]
pub enum Abort {
    /// A plugin answered the request from a body or trailers callback.
    Local(LocalResponse),
    /// A plugin failed under FAIL_CLOSE.
    Failed,
    /// A plugin held more than [`MAX_BUFFER`].
    TooBig,
}

/// The answer a request body's plugins gave instead of letting it through, for the request
/// path that races the upstream exchange against it.
#[derive(Debug, Default)]
pub struct Verdict {
    pub notify: tokio::sync::Notify,
    abort: Mutex<Option<Abort>>,
}

impl Verdict {
    fn set(&self, abort: Abort) {
        let mut slot = self.abort.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(abort);
        }
        drop(slot);
        self.notify.notify_one();
    }

    pub fn take(&self) -> Option<Abort> {
        self.abort
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// One plugin's place in a body chain.
#[derive(Debug)]
pub struct Stage {
    pub plugin: Arc<Plugin>,
    pub slot: Slot,
    pub id: i32,
    buf: Vec<u8>,
}

impl Stage {
    pub fn new(plugin: Arc<Plugin>, slot: Slot, id: i32) -> Self {
        Self {
            plugin,
            slot,
            id,
            buf: Vec::new(),
        }
    }
}

/// The plugins of one side, and the metrics their failures count in.
#[derive(Debug)]
pub struct Chain {
    pub side: Side,
    pub stages: Vec<Stage>,
    pub metrics: Arc<WasmMetrics>,
}

fn body_of(vm: &mut Vm, side: Side) -> &mut Vec<u8> {
    match side {
        Side::Request => &mut vm.stream().request_body,
        Side::Response => &mut vm.stream().response_body,
    }
}

fn trailers_of(vm: &mut Vm, side: Side) -> &mut Vec<(Vec<u8>, Vec<u8>)> {
    match side {
        Side::Request => &mut vm.stream().request_trailers,
        Side::Response => &mut vm.stream().response_trailers,
    }
}

impl Chain {
    /// Counts a failure and drops the instance; `Err` under FAIL_CLOSE.
    fn failed(&self, i: usize, vm: &mut Option<Vm>, e: &super::vm::Failure) -> Result<(), Abort> {
        let plugin = &self.stages[i].plugin;
        tracing::warn!(plugin = plugin.name(), reason = e.reason.as_str(), error = %e, "wasm plugin failed on a body");
        self.metrics.failed(plugin.name(), e.reason);
        *vm = None;
        match plugin.spec.fail_strategy {
            FailStrategy::FailClose => Err(Abort::Failed),
            FailStrategy::FailOpen => Ok(()),
        }
    }

    /// Feeds `data` to the stages from `from` on; returns what comes out of the last one.
    pub fn feed(&mut self, from: usize, mut data: Vec<u8>, eos: bool) -> Result<Vec<u8>, Abort> {
        for i in from..self.stages.len() {
            let side = self.side;
            let stage = &mut self.stages[i];
            stage.buf.extend_from_slice(&data);
            if stage.buf.len() > MAX_BUFFER {
                tracing::warn!(plugin = stage.plugin.name(), limit = MAX_BUFFER, side = ?side, "wasm plugin held more of a body than allowed");
                return Err(Abort::TooBig);
            }
            let slot = stage.slot.clone();
            let mut guard = lock(&slot);
            let Some(vm) = guard.as_mut() else {
                // Finished or failed open: the bytes pass through.
                data = std::mem::take(&mut self.stages[i].buf);
                continue;
            };
            *body_of(vm, side) = std::mem::take(&mut stage.buf);
            let id = stage.id;
            let result = vm.body(side, id, eos);
            let stage = &mut self.stages[i];
            stage.buf = std::mem::take(body_of(vm, side));
            if let Some(local) = vm.stream().local_response.take() {
                return Err(Abort::Local(local));
            }
            match result {
                Ok(Action::Pause) if !eos => return Ok(Vec::new()),
                Ok(_) => data = std::mem::take(&mut stage.buf),
                Err(e) => {
                    data = std::mem::take(&mut stage.buf);
                    self.failed(i, &mut guard, &e)?;
                }
            }
        }
        Ok(data)
    }

    /// Trailers: flushes every stage's buffer on, then runs the trailers callbacks; returns
    /// the flushed bytes and the (maybe changed) trailers.
    pub fn trailers(&mut self, trailers: HeaderMap) -> Result<(Vec<u8>, HeaderMap), Abort> {
        let mut out = Vec::new();
        for i in 0..self.stages.len() {
            let held = std::mem::take(&mut self.stages[i].buf);
            if i + 1 == self.stages.len() {
                out.extend_from_slice(&held);
            } else if !held.is_empty() {
                out.extend_from_slice(&self.feed(i + 1, held, false)?);
            }
        }
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(trailers.len());
        super::push_headers(&trailers, &mut pairs);
        for i in 0..self.stages.len() {
            let slot = self.stages[i].slot.clone();
            let mut guard = lock(&slot);
            let Some(vm) = guard.as_mut() else { continue };
            *trailers_of(vm, self.side) = std::mem::take(&mut pairs);
            let result = vm.trailers(self.side, self.stages[i].id);
            pairs = std::mem::take(trailers_of(vm, self.side));
            if let Some(local) = vm.stream().local_response.take() {
                return Err(Abort::Local(local));
            }
            if let Err(e) = result {
                self.failed(i, &mut guard, &e)?;
            }
        }
        Ok((out, super::header_map(&pairs)))
    }
}

/// How a wrapped body's error type ends a stream a plugin cut short.
pub trait AbortError: Sized {
    /// `None`: the stream stops yielding instead (the request path answers the request).
    fn abort(what: &str) -> Option<Self>;
}

impl AbortError for crate::client::UpBodyError {
    fn abort(_: &str) -> Option<Self> {
        None
    }
}

impl AbortError for BoxError {
    fn abort(what: &str) -> Option<Self> {
        Some(what.into())
    }
}

/// What ends the plugins' contexts when a response body is done (or dropped).
pub type Finish = Box<dyn FnOnce() + Send + Sync>;

/// A body through a [`Chain`].
pub struct WasmBody<B> {
    inner: B,
    chain: Chain,
    out: VecDeque<Frame<Bytes>>,
    ended: bool,
    aborted: bool,
    verdict: Option<Arc<Verdict>>,
    finish: Option<Finish>,
}

impl<B> std::fmt::Debug for WasmBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmBody")
            .field("side", &self.chain.side)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<B> WasmBody<B> {
    pub fn new(
        inner: B,
        chain: Chain,
        verdict: Option<Arc<Verdict>>,
        finish: Option<Finish>,
    ) -> Self {
        Self {
            inner,
            chain,
            out: VecDeque::new(),
            ended: false,
            aborted: false,
            verdict,
            finish,
        }
    }

    fn end(&mut self) {
        self.ended = true;
        if let Some(finish) = self.finish.take() {
            finish();
        }
    }

    fn push(&mut self, data: Vec<u8>) {
        if !data.is_empty() {
            self.out.push_back(Frame::data(Bytes::from(data)));
        }
    }
}

impl<B> Drop for WasmBody<B> {
    fn drop(&mut self) {
        if let Some(finish) = self.finish.take() {
            finish();
        }
    }
}

impl<B> Body for WasmBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: AbortError,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if this.aborted {
                // The request path answers instead (request side); nothing more to send.
                return Poll::Pending;
            }
            if let Some(frame) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            let step = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let eos = this.inner.is_end_stream();
                        let r = this.chain.feed(0, data.to_vec(), eos);
                        r.map(|d| {
                            this.push(d);
                            if eos {
                                this.end();
                            }
                        })
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => this.chain.trailers(trailers).map(|(d, t)| {
                            this.push(d);
                            this.out.push_back(Frame::trailers(t));
                            this.end();
                        }),
                        // Neither data nor trailers: nothing a plugin sees.
                        Err(_) => Ok(()),
                    },
                },
                Poll::Ready(None) => this.chain.feed(0, Vec::new(), true).map(|d| {
                    this.push(d);
                    this.end();
                }),
            };
            if let Err(abort) = step {
                let what = match &abort {
                    Abort::Local(_) => "a wasm plugin answered the request from its body",
                    Abort::Failed => "a wasm plugin failed on the body",
                    Abort::TooBig => "a wasm plugin buffered more than its limit",
                };
                tracing::debug!(side = ?this.chain.side, "{what}");
                this.aborted = true;
                if let Some(v) = &this.verdict {
                    v.set(abort);
                }
                if let Some(finish) = this.finish.take() {
                    finish();
                }
                if let Some(e) = B::Error::abort(what) {
                    return Poll::Ready(Some(Err(e)));
                }
                return Poll::Pending;
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.out.is_empty()
    }
}

/// A held (pre-read) body: its frames, for a plugin that paused on the head until it saw the
/// body.
pub fn replay<E: 'static>(
    frames: Vec<Frame<Bytes>>,
) -> http_body_util::combinators::BoxBody<Bytes, E> {
    use http_body_util::BodyExt as _;
    let stream = futures_util::stream::iter(frames.into_iter().map(Ok::<_, E>));
    http_body_util::StreamBody::new(stream).boxed()
}

/// Response for an aborted request body.
pub fn abort_response(abort: Abort) -> Response<ProxyBody> {
    match abort {
        Abort::Local(local) => super::local_response(local),
        Abort::Failed => super::failed_response(),
        Abort::TooBig => {
            crate::http::error_response(http::StatusCode::PAYLOAD_TOO_LARGE, "wasm-body-too-large")
        }
    }
}
