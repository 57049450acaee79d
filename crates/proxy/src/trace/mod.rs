//! Distributed tracing: per HTTP/gRPC request the proxy continues the caller's trace (W3C or
//! B3, [`context`]) or starts one, makes a server span (inbound) or a client span (outbound),
//! hands the next hop its span as the parent, and queues finished spans for the OTLP exporter
//! ([`export`]).
//!
//! Sampling: an incoming context's sampled flag is obeyed (so a trace is whole or absent); a
//! new trace is sampled with probability `--trace-sampling`. Unsampled requests still carry
//! their context onward and cost no span. Spans go into a bounded queue; when it is full a
//! span is dropped and counted, never waited for. Without a collector (`--otlp-endpoint`, or
//! a tracing provider the control plane resolved for this workload) the tracer is inactive and
//! requests pass untouched. This module must not do network I/O itself (the exporter task
//! does) nor decide anything about routing.
//!
//! The sampling probability, span reporting and the collector can change while the proxy runs
//! (an Istio `Telemetry` delivered by the control plane, [`settings`]): the first two and
//! whether there is a collector at all are atomics read per request; the collector's address
//! goes to the exporter over a watch channel.

pub mod context;
pub mod export;
pub mod settings;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method};
use tokio::sync::mpsc;

use crate::split::next_u64;
use context::{Format, SpanContext, TRACESTATE};
use export::{Collector, ExportStats};
use tokio::sync::watch;

/// Spans waiting for export; past this, spans are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 4096;

/// Client (outbound) or server (inbound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

/// A finished span, as plain data for the exporter.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub trace_state: String,
    pub kind: SpanKind,
    pub name: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub method: Method,
    pub path: String,
    pub authority: String,
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub peer: Option<SocketAddr>,
    pub route: Option<String>,
    /// Why the proxy failed the request (`trellis-error`), when it did.
    pub error: Option<String>,
}

/// A span in progress: begun with the request, finished when the response body ends.
#[derive(Debug)]
pub struct ActiveSpan {
    pub ctx: SpanContext,
    parent: Option<[u8; 8]>,
    trace_state: String,
    kind: SpanKind,
    start_unix_nanos: u64,
    method: Method,
    path: String,
    authority: String,
    peer: Option<SocketAddr>,
}

/// What the response tells a span.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpanEnd<'a> {
    pub status: u16,
    pub grpc_status: Option<u32>,
    /// For client spans: the endpoint that answered (server spans keep the downstream peer).
    pub upstream: Option<SocketAddr>,
    pub route: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// Sampling and the queue to the exporter. One per proxy.
#[derive(Debug)]
pub struct Tracer {
    /// Probability in [0, 1] as a threshold on a uniform u64 draw; `u64::MAX` is "always".
    threshold: AtomicU64,
    /// Off (Istio `disableSpanReporting`): decisions still travel on, no span is made.
    reporting: AtomicBool,
    /// Whether there is a collector: without one, requests pass untouched (no context made).
    active: AtomicBool,
    /// `--otlp-endpoint`: the collector where the control plane names none.
    default_collector: Option<Collector>,
    /// The collector in force, for the exporter.
    collector_tx: watch::Sender<Option<Collector>>,
    tx: mpsc::Sender<Span>,
    pub stats: Arc<ExportStats>,
}

/// A probability as a threshold on a uniform u64 draw; 1.0 (and above) is `u64::MAX`, "always".
fn threshold(sampling: f64) -> u64 {
    let p = if sampling.is_nan() {
        0.0
    } else {
        sampling.clamp(0.0, 1.0)
    };
    if p >= 1.0 {
        u64::MAX
    } else {
        // Below 1.0 the product stays below u64::MAX, so "always" is only ever 1.0.
        ((p * u64::MAX as f64) as u64).min(u64::MAX - 1)
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn new_span_id() -> [u8; 8] {
    // Zero is not a valid id; the xorshift draw is never zero, but keep the rule visible.
    next_u64().max(1).to_be_bytes()
}

fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&next_u64().max(1).to_be_bytes());
    id[8..].copy_from_slice(&next_u64().to_be_bytes());
    id
}

impl Tracer {
    /// An active tracer sampling new traces at `sampling` (clamped to [0, 1]) and the receiver
    /// of its spans (for tests: whoever drains it is the collector).
    pub fn new(sampling: f64, stats: Arc<ExportStats>) -> (Self, mpsc::Receiver<Span>) {
        let (tracer, spans_rx, _) = Self::exporting(sampling, stats, None);
        tracer.active.store(true, Relaxed);
        (tracer, spans_rx)
    }

    /// A tracer exporting to `default` until [`Tracer::set_collector`] names another; active
    /// only while there is a collector. Returns the span receiver and the collector in force,
    /// both for the exporter ([`export::run`]).
    pub fn exporting(
        sampling: f64,
        stats: Arc<ExportStats>,
        default: Option<Collector>,
    ) -> (
        Self,
        mpsc::Receiver<Span>,
        watch::Receiver<Option<Collector>>,
    ) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (collector_tx, collector_rx) = watch::channel(default.clone());
        (
            Self {
                threshold: AtomicU64::new(threshold(sampling)),
                reporting: AtomicBool::new(true),
                active: AtomicBool::new(default.is_some()),
                default_collector: default,
                collector_tx,
                tx,
                stats,
            },
            rx,
            collector_rx,
        )
    }

    /// The collector the control plane resolved for this workload; `None`: the flag's.
    pub fn set_collector(&self, collector: Option<Collector>) {
        let in_force = collector.or_else(|| self.default_collector.clone());
        self.active.store(in_force.is_some(), Relaxed);
        self.collector_tx.send_if_modified(|c| {
            let changed = *c != in_force;
            *c = in_force;
            changed
        });
    }

    /// The collector in force.
    pub fn collector(&self) -> Option<Collector> {
        self.collector_tx.borrow().clone()
    }

    /// Whether spans can go anywhere; an inactive tracer leaves requests untouched.
    pub fn active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// Changes the probability of sampling a new trace (clamped to [0, 1]).
    pub fn set_sampling(&self, sampling: f64) {
        self.threshold.store(threshold(sampling), Relaxed);
    }

    /// The probability in force.
    pub fn sampling(&self) -> f64 {
        match self.threshold.load(Relaxed) {
            u64::MAX => 1.0,
            t => t as f64 / u64::MAX as f64,
        }
    }

    /// Turns span reporting on or off; sampling decisions propagate either way.
    pub fn set_reporting(&self, on: bool) {
        self.reporting.store(on, Relaxed);
    }

    pub fn reporting(&self) -> bool {
        self.reporting.load(Relaxed)
    }

    fn sample_new(&self) -> bool {
        match self.threshold.load(Relaxed) {
            u64::MAX => true,
            t => next_u64() < t,
        }
    }

    /// Starts a span for a request and rewrites its trace headers so the next hop sees this
    /// span as its parent. Returns `None` (headers passed on untouched) for an unsampled
    /// request that came with a context; an unsampled new trace gets a context so that the
    /// hops after this one honour the decision.
    pub fn begin(
        &self,
        kind: SpanKind,
        headers: &mut HeaderMap,
        method: &Method,
        path: &str,
        authority: &str,
        peer: Option<SocketAddr>,
    ) -> Option<ActiveSpan> {
        if !self.active.load(Relaxed) {
            return None;
        }
        let (parent, format) = match context::extract(headers) {
            Some((c, _)) if !c.sampled => return None,
            Some((c, f)) => (Some(c), f),
            None => (None, Format::W3c),
        };
        let ctx = SpanContext {
            trace_id: parent.map_or_else(new_trace_id, |p| p.trace_id),
            span_id: new_span_id(),
            sampled: parent.is_some() || self.sample_new(),
        };
        context::inject(headers, &ctx, format);
        if !ctx.sampled || !self.reporting.load(Relaxed) {
            return None;
        }
        Some(ActiveSpan {
            ctx,
            parent: parent.map(|p| p.span_id),
            trace_state: headers
                .get(TRACESTATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            kind,
            start_unix_nanos: unix_nanos(),
            method: method.clone(),
            path: path.to_owned(),
            authority: authority.to_owned(),
            peer,
        })
    }

    /// Finishes a span and queues it; a full queue drops it.
    pub fn end(&self, span: ActiveSpan, end: SpanEnd<'_>) {
        let name = match end.route {
            Some(r) if !r.is_empty() => format!("{} {r}", span.method),
            _ => span.method.to_string(),
        };
        let finished = Span {
            trace_id: span.ctx.trace_id,
            span_id: span.ctx.span_id,
            parent_span_id: span.parent,
            trace_state: span.trace_state,
            kind: span.kind,
            name,
            start_unix_nanos: span.start_unix_nanos,
            end_unix_nanos: unix_nanos(),
            method: span.method,
            path: span.path,
            authority: span.authority,
            status: end.status,
            grpc_status: end.grpc_status,
            peer: match span.kind {
                SpanKind::Client => end.upstream,
                SpanKind::Server => span.peer,
            },
            route: end.route.filter(|r| !r.is_empty()).map(str::to_owned),
            error: end.error.map(str::to_owned),
        };
        if self.tx.try_send(finished).is_err() {
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use context::{B3, TRACEPARENT};
    use http::HeaderValue;

    fn begin(t: &Tracer, h: &mut HeaderMap) -> Option<ActiveSpan> {
        t.begin(SpanKind::Server, h, &Method::GET, "/x", "a:80", None)
    }

    #[test]
    fn continues_a_sampled_parent_and_becomes_the_next_parent() {
        let (t, mut rx) = Tracer::new(0.0, Default::default());
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let span = begin(&t, &mut h).expect("the parent is sampled");
        let (next, _) = context::extract(&h).unwrap();
        assert_eq!(next.trace_id, span.ctx.trace_id);
        assert_eq!(next.span_id, span.ctx.span_id);
        assert_eq!(
            span.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        t.end(
            span,
            SpanEnd {
                status: 200,
                ..Default::default()
            },
        );
        let s = rx.try_recv().unwrap();
        assert_eq!(s.name, "GET");
        assert_eq!(s.status, 200);
    }

    #[test]
    fn obeys_an_unsampled_parent_and_samples_new_traces_by_probability() {
        let (t, _rx) = Tracer::new(1.0, Default::default());
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(tp));
        assert!(begin(&t, &mut h).is_none());
        assert_eq!(h[TRACEPARENT], tp, "passed on untouched");

        let mut fresh = HeaderMap::new();
        assert!(begin(&t, &mut fresh).is_some());
        let (never, _rx) = Tracer::new(0.0, Default::default());
        let mut fresh = HeaderMap::new();
        assert!(begin(&never, &mut fresh).is_none());
        let (c, _) = context::extract(&fresh).expect("the decision travels on");
        assert!(!c.sampled);
    }

    #[test]
    fn continues_b3_and_answers_in_b3() {
        let (t, _rx) = Tracer::new(0.0, Default::default());
        let mut h = HeaderMap::new();
        h.insert(
            B3,
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        let span = begin(&t, &mut h).unwrap();
        assert_eq!(
            context::hex_string(&span.ctx.trace_id),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert!(
            h[B3]
                .to_str()
                .unwrap()
                .starts_with("80f198ee56343ba864fe8b2a57d3eff7-")
        );
    }

    #[test]
    fn sampling_and_reporting_change_at_runtime() {
        let (t, mut rx) = Tracer::new(0.0, Default::default());
        assert!(begin(&t, &mut HeaderMap::new()).is_none());
        t.set_sampling(1.0);
        assert_eq!(t.sampling(), 1.0);
        let span = begin(&t, &mut HeaderMap::new()).expect("always sampled now");
        t.end(span, SpanEnd::default());
        assert!(rx.try_recv().is_ok());
        t.set_reporting(false);
        let mut h = HeaderMap::new();
        assert!(
            begin(&t, &mut h).is_none(),
            "no span while reporting is off"
        );
        let (c, _) = context::extract(&h).expect("the decision still travels on");
        assert!(c.sampled);
        t.set_sampling(0.25);
        assert!((t.sampling() - 0.25).abs() < 1e-9);
    }

    #[test]
    fn the_collector_in_force_follows_config_and_falls_back_to_the_flag() {
        let flag = Collector {
            endpoint: "http://127.0.0.1:4317".into(),
            protocol: export::Protocol::Grpc,
        };
        let provider = Collector {
            endpoint: "http://127.0.0.1:14317".into(),
            protocol: export::Protocol::Grpc,
        };
        let (t, _spans, rx) = Tracer::exporting(1.0, Default::default(), Some(flag.clone()));
        assert!(t.active());
        t.set_collector(Some(provider.clone()));
        assert_eq!(*rx.borrow(), Some(provider));
        t.set_collector(None);
        assert_eq!(*rx.borrow(), Some(flag));

        let (t, _spans, rx) = Tracer::exporting(1.0, Default::default(), None);
        let mut h = HeaderMap::new();
        assert!(begin(&t, &mut h).is_none());
        assert!(h.is_empty(), "no collector: the request passes untouched");
        t.set_collector(Some(Collector {
            endpoint: "http://127.0.0.1:9".into(),
            protocol: export::Protocol::HttpProtobuf,
        }));
        assert!(t.active());
        assert!(rx.borrow().is_some());
        assert!(begin(&t, &mut HeaderMap::new()).is_some());
        t.set_collector(None);
        assert!(!t.active());
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (t, _rx) = Tracer::new(1.0, Default::default());
        for _ in 0..QUEUE_CAPACITY + 3 {
            let span = begin(&t, &mut HeaderMap::new()).unwrap();
            t.end(span, SpanEnd::default());
        }
        assert_eq!(t.stats.dropped.load(Relaxed), 3);
    }
}
