//! The proxy's metrics registry and its Prometheus text rendering.
//!
//! The series here are preallocated atomics indexed by small enums (direction, status code,
//! detection outcome); the labelled request and TCP series are interned once per label set
//! ([`requests`], [`tcp`]). Either way recording is a relaxed `fetch_add` with no allocation, lock or label
//! formatting on the hot path, and cardinality is bounded by construction. Metric names and
//! labels are a contract (dashboards, `trellis stat`): extend, do not rename. This module must
//! not know about sockets or HTTP beyond a status code number.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::resilience::limits::Rejection;

pub mod exchange;
pub mod memo;
pub mod requests;
pub mod scrape;
pub mod tcp;
mod text;

use requests::RequestRegistry;
pub(crate) use text::{Buckets, escape, family, histogram, labelled, sample};

/// Which side of the workload traffic flows on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound = 0,
    Outbound = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// A counter family with one sample per direction, `value` giving each.
pub(crate) fn per_direction(
    out: &mut String,
    name: &str,
    help: &str,
    value: impl Fn(Direction) -> u64,
) -> std::fmt::Result {
    family(out, name, "counter", help)?;
    for d in Direction::ALL {
        labelled(out, name, &[("direction", d.as_str())], value(d))?;
    }
    Ok(())
}

/// A counter family with one sample per direction and per value of a second label `label`
/// (`values`, in that order, named by `as_str`), `count` giving each.
pub(crate) fn per_direction_and<V: Copy>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: &[V],
    as_str: impl Fn(V) -> &'static str,
    count: impl Fn(Direction, V) -> u64,
) -> std::fmt::Result {
    family(out, name, "counter", help)?;
    for d in Direction::ALL {
        for &v in values {
            labelled(
                out,
                name,
                &[("direction", d.as_str()), (label, as_str(v))],
                count(d, v),
            )?;
        }
    }
    Ok(())
}

/// The result of protocol detection on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectOutcome {
    Http1 = 0,
    Http2 = 1,
    Tls = 2,
    Opaque = 3,
    Timeout = 4,
    OpaquePort = 5,
    Empty = 6,
}

impl DetectOutcome {
    pub const ALL: [DetectOutcome; 7] = [
        Self::Http1,
        Self::Http2,
        Self::Tls,
        Self::Opaque,
        Self::Timeout,
        Self::OpaquePort,
        Self::Empty,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Tls => "tls",
            Self::Opaque => "opaque",
            Self::Timeout => "timeout",
            Self::OpaquePort => "opaque_port",
            Self::Empty => "empty",
        }
    }
}

/// Upper bounds of the request duration buckets, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the TCP connection duration buckets, in seconds: connections live from
/// milliseconds (a request) to hours (a stream), so the buckets are wider than the requests'.
pub const CONNECTION_BUCKETS: [f64; 10] = [
    0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
];

/// Per-bucket (not cumulative) connection durations; the last slot is `+Inf`.
#[derive(Debug)]
struct ConnectionDurations {
    buckets: [AtomicU64; CONNECTION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl ConnectionDurations {
    fn new() -> Self {
        Self {
            buckets: counters(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = CONNECTION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(CONNECTION_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// What a scrape renders; the count is the buckets' total.
    fn buckets(&self) -> Buckets<'_> {
        Buckets {
            bounds: &CONNECTION_BUCKETS,
            counts: &self.buckets,
            sum_nanos: &self.sum_nanos,
            count: None,
        }
    }
}

/// Status codes are three digits (`http::StatusCode` guarantees 100..=999).
const STATUS_SLOTS: usize = 1000;

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// A fixed-bucket histogram; the sum is kept in nanoseconds so it can be an integer atomic.
#[derive(Debug)]
struct Histogram {
    /// Per-bucket (not cumulative) counts; the last slot is `+Inf`.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: counters(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// What a scrape renders.
    fn buckets(&self) -> Buckets<'_> {
        Buckets {
            bounds: &DURATION_BUCKETS,
            counts: &self.buckets,
            sum_nanos: &self.sum_nanos,
            count: Some(&self.count),
        }
    }
}

#[derive(Debug)]
struct PerDirection {
    requests: [AtomicU64; STATUS_SLOTS],
    duration: Histogram,
    detections: [AtomicU64; DetectOutcome::ALL.len()],
    traffic: TrafficCounters,
}

impl PerDirection {
    fn new() -> Self {
        Self {
            requests: counters(),
            duration: Histogram::new(),
            detections: counters(),
            traffic: TrafficCounters::default(),
        }
    }
}

/// What an injected fault did: the `kind` label of `trellis_faults_injected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Delay = 0,
    Abort = 1,
}

impl FaultKind {
    pub const ALL: [FaultKind; 2] = [Self::Delay, Self::Abort];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delay => "delay",
            Self::Abort => "abort",
        }
    }
}

/// The traffic-management counters of one direction.
#[derive(Debug, Default)]
struct TrafficCounters {
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    timeouts: AtomicU64,
    ejections: AtomicU64,
    mirrored: AtomicU64,
    breaker: [AtomicU64; Rejection::ALL.len()],
    faults: [AtomicU64; FaultKind::ALL.len()],
}

/// Which labels request metrics carry (`--metrics-labels`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LabelDetail {
    /// Workload, namespace, identity, service, route, tls, status, gRPC status and class.
    #[default]
    Full,
    /// `direction` and `status_code` only: the cheapest setting, and the baseline the
    /// benchmark compares `Full` against.
    Minimal,
}

/// The registry: one per proxy, shared by `Arc`.
#[derive(Debug)]
pub struct Metrics {
    dirs: [PerDirection; 2],
    version: &'static str,
    detail: LabelDetail,
    /// The labelled request series (with [`LabelDetail::Full`]).
    pub requests: RequestRegistry,
    /// The `trellis_tcp_*` series, labelled per connection once its peer is known.
    pub tcp: tcp::TcpRegistry,
    /// What became of trace spans (all zero without a tracer).
    pub spans: Arc<crate::trace::export::ExportStats>,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: Arc<AtomicU64>,
    /// Live request streams for `GET /tap` (see [`crate::tap`]).
    pub tap: Arc<crate::tap::Tap>,
    /// Inbound authorization: the policies in force and the `trellis_authz_*` counters (here
    /// because every connection and the admin server already hold the metrics).
    pub authz: Arc<crate::authz::Authz>,
    /// Proxy-Wasm plugins: the set in force and their metrics (see [`crate::wasm`]).
    pub wasm: Arc<crate::wasm::Wasm>,
    /// Inbound success rate and latency against their baseline (see [`crate::anomaly`]).
    pub anomaly: Arc<crate::anomaly::Anomaly>,
    /// Istio Telemetry metrics overrides, applied to the exposition (see
    /// [`crate::metric_overrides`]).
    pub overrides: Arc<crate::metric_overrides::Overrides>,
    /// The proxy's own limits, load shedding and rate limiting (see [`crate::limits`]).
    pub limits: crate::limits::LimitMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_detail(LabelDetail::Full)
    }

    pub fn with_detail(detail: LabelDetail) -> Self {
        Self {
            dirs: [PerDirection::new(), PerDirection::new()],
            version: env!("CARGO_PKG_VERSION"),
            detail,
            requests: RequestRegistry::new(),
            tcp: tcp::TcpRegistry::new(detail),
            spans: Arc::default(),
            access_log_dropped: Arc::default(),
            tap: Arc::default(),
            authz: Arc::default(),
            wasm: Arc::default(),
            anomaly: Arc::default(),
            overrides: Arc::default(),
            limits: Default::default(),
        }
    }

    pub fn detail(&self) -> LabelDetail {
        self.detail
    }

    fn dir(&self, d: Direction) -> &PerDirection {
        &self.dirs[d as usize]
    }

    /// One HTTP request finished with `status` after `elapsed` (to response headers).
    pub fn request(&self, d: Direction, status: u16, elapsed: Duration) {
        let slot = usize::from(status).min(STATUS_SLOTS - 1);
        self.dir(d).requests[slot].fetch_add(1, Relaxed);
        self.dir(d).duration.observe(elapsed);
    }

    pub fn detection(&self, d: Direction, outcome: DetectOutcome) {
        self.dir(d).detections[outcome as usize].fetch_add(1, Relaxed);
    }

    pub fn retry(&self, d: Direction) {
        self.dir(d).traffic.retries.fetch_add(1, Relaxed);
    }

    pub fn retry_budget_exhausted(&self, d: Direction) {
        self.dir(d).traffic.budget_exhausted.fetch_add(1, Relaxed);
    }

    pub fn request_timeout(&self, d: Direction) {
        self.dir(d).traffic.timeouts.fetch_add(1, Relaxed);
    }

    pub fn outlier_ejection(&self, d: Direction) {
        self.dir(d).traffic.ejections.fetch_add(1, Relaxed);
    }

    pub fn mirrored(&self, d: Direction) {
        self.dir(d).traffic.mirrored.fetch_add(1, Relaxed);
    }

    pub fn circuit_breaker(&self, d: Direction, why: Rejection) {
        self.dir(d).traffic.breaker[why as usize].fetch_add(1, Relaxed);
    }

    pub fn fault(&self, d: Direction, kind: FaultKind) {
        self.dir(d).traffic.faults[kind as usize].fetch_add(1, Relaxed);
    }

    /// Appends the Prometheus text exposition of every series to `out`. Later telemetry adds
    /// its own families by appending after this.
    pub fn render(&self, out: &mut String) {
        // `write!` into a String cannot fail; the results are ignored on purpose.
        let _ = self.render_inner(out);
    }

    fn render_inner(&self, out: &mut String) -> std::fmt::Result {
        family(
            out,
            "trellis_proxy_info",
            "gauge",
            "Proxy build information.",
        )?;
        labelled(out, "trellis_proxy_info", &[("version", self.version)], 1)?;

        match self.detail {
            LabelDetail::Full => self.requests.render(out)?,
            LabelDetail::Minimal => self.render_minimal_requests(out)?,
        }

        self.tcp.render(out)?;

        per_direction_and(
            out,
            "trellis_protocol_detections_total",
            "Protocol detection results per connection.",
            "outcome",
            &DetectOutcome::ALL,
            DetectOutcome::as_str,
            |d, o| self.dir(d).detections[o as usize].load(Relaxed),
        )?;
        self.render_traffic(out)?;
        self.limits.render(out)?;
        self.spans.render(out)?;
        let name = "trellis_access_log_dropped_total";
        let help = "Access log lines dropped because the writer fell behind.";
        family(out, name, "counter", help)?;
        sample(out, name, "", self.access_log_dropped.load(Relaxed))
    }

    /// The request families with `direction` and `status_code` only.
    fn render_minimal_requests(&self, out: &mut String) -> std::fmt::Result {
        family(
            out,
            "trellis_requests_total",
            "counter",
            "HTTP requests proxied, by response status.",
        )?;
        for d in Direction::ALL {
            for (code, c) in self.dir(d).requests.iter().enumerate() {
                let n = c.load(Relaxed);
                if n > 0 {
                    let code = code.to_string();
                    let labels = [("direction", d.as_str()), ("status_code", code.as_str())];
                    labelled(out, "trellis_requests_total", &labels, n)?;
                }
            }
        }

        let name = "trellis_request_duration_seconds";
        let help = "Time from request to response headers.";
        family(out, name, "histogram", help)?;
        for d in Direction::ALL {
            let labels = format!("direction=\"{}\"", d.as_str());
            histogram(out, name, &labels, &self.dir(d).duration.buckets())?;
        }

        Ok(())
    }

    fn render_traffic(&self, out: &mut String) -> std::fmt::Result {
        type Field = fn(&TrafficCounters) -> &AtomicU64;
        let simple: [(&str, &str, Field); 5] = [
            ("trellis_retries_total", "Retries made.", |t| &t.retries),
            (
                "trellis_retry_budget_exhausted_total",
                "Retries not made because the backend's retry budget was spent.",
                |t| &t.budget_exhausted,
            ),
            (
                "trellis_request_timeouts_total",
                "Requests that ran out of their route timeout or gRPC deadline.",
                |t| &t.timeouts,
            ),
            (
                "trellis_outlier_ejections_total",
                "Endpoints ejected by outlier detection.",
                |t| &t.ejections,
            ),
            (
                "trellis_mirrored_requests_total",
                "Request copies sent to mirror backends.",
                |t| &t.mirrored,
            ),
        ];
        for (name, help, field) in simple {
            per_direction(out, name, help, |d| {
                field(&self.dir(d).traffic).load(Relaxed)
            })?;
        }
        per_direction_and(
            out,
            "trellis_circuit_breaker_rejections_total",
            "Requests or retries refused by a connection-pool limit.",
            "reason",
            &Rejection::ALL,
            Rejection::as_str,
            |d, r| self.dir(d).traffic.breaker[r as usize].load(Relaxed),
        )?;
        per_direction_and(
            out,
            "trellis_faults_injected_total",
            "Faults injected by routes.",
            "kind",
            &FaultKind::ALL,
            FaultKind::as_str,
            |d, k| self.dir(d).traffic.faults[k as usize].load(Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(m: &Metrics) -> String {
        let mut s = String::new();
        m.render(&mut s);
        s
    }

    #[test]
    fn renders_counters_with_help_and_type() {
        let m = Metrics::with_detail(LabelDetail::Minimal);
        m.request(Direction::Inbound, 200, Duration::from_millis(3));
        m.request(Direction::Inbound, 200, Duration::from_millis(3));
        m.request(Direction::Outbound, 503, Duration::from_secs(20));
        let conn = m.tcp.unlabelled(Direction::Outbound);
        conn.opened();
        conn.received(10);
        m.detection(Direction::Inbound, DetectOutcome::OpaquePort);
        conn.closed(Duration::from_secs(2));
        let s = rendered(&m);
        assert!(s.contains(
            "trellis_tcp_connection_duration_seconds_bucket{direction=\"outbound\",le=\"1\"} 0"
        ));
        assert!(s.contains(
            "trellis_tcp_connection_duration_seconds_bucket{direction=\"outbound\",le=\"10\"} 1"
        ));
        assert!(
            s.contains("trellis_tcp_connection_duration_seconds_count{direction=\"outbound\"} 1")
        );
        assert!(s.contains("# TYPE trellis_requests_total counter"));
        assert!(s.contains("trellis_requests_total{direction=\"inbound\",status_code=\"200\"} 2"));
        assert!(s.contains("trellis_requests_total{direction=\"outbound\",status_code=\"503\"} 1"));
        assert!(!s.contains("status_code=\"404\""));
        assert!(s.contains("trellis_tcp_connections_opened_total{direction=\"outbound\"} 1"));
        assert!(s.contains("trellis_tcp_received_bytes_total{direction=\"outbound\"} 10"));
        assert!(s.contains(
            "trellis_protocol_detections_total{direction=\"inbound\",outcome=\"opaque_port\"} 1"
        ));
        assert!(s.contains("trellis_proxy_info{version=\""));
    }

    #[test]
    fn renders_traffic_counters() {
        let m = Metrics::new();
        m.retry(Direction::Outbound);
        m.retry(Direction::Outbound);
        m.fault(Direction::Outbound, FaultKind::Abort);
        m.circuit_breaker(Direction::Outbound, Rejection::MaxPending);
        let s = rendered(&m);
        assert!(s.contains("trellis_retries_total{direction=\"outbound\"} 2"));
        assert!(s.contains("trellis_retry_budget_exhausted_total{direction=\"outbound\"} 0"));
        assert!(
            s.contains("trellis_faults_injected_total{direction=\"outbound\",kind=\"abort\"} 1")
        );
        assert!(s.contains(
            "trellis_circuit_breaker_rejections_total{direction=\"outbound\",reason=\"max_pending_requests\"} 1"
        ));
        assert!(s.contains("trellis_mirrored_requests_total{direction=\"inbound\"} 0"));
    }

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::with_detail(LabelDetail::Minimal);
        m.request(Direction::Inbound, 200, Duration::from_micros(300));
        m.request(Direction::Inbound, 200, Duration::from_millis(7));
        m.request(Direction::Inbound, 200, Duration::from_secs(11));
        let s = rendered(&m);
        assert!(s.contains(
            "trellis_request_duration_seconds_bucket{direction=\"inbound\",le=\"0.0005\"} 1"
        ));
        assert!(s.contains(
            "trellis_request_duration_seconds_bucket{direction=\"inbound\",le=\"0.01\"} 2"
        ));
        assert!(s.contains(
            "trellis_request_duration_seconds_bucket{direction=\"inbound\",le=\"10\"} 2"
        ));
        assert!(s.contains(
            "trellis_request_duration_seconds_bucket{direction=\"inbound\",le=\"+Inf\"} 3"
        ));
        assert!(s.contains("trellis_request_duration_seconds_count{direction=\"inbound\"} 3"));
    }
}
