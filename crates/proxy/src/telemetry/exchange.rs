//! Observing one HTTP exchange for the request metrics: begun when the request arrives, ended
//! when the response head is ready, and counted when the response body ends (so a gRPC status
//! in the trailers is known). The forwarder calls [`Telemetry::begin`] and
//! [`Telemetry::end`] and tells where the request went through the [`Upstream`] response
//! extension; nothing here chooses a route or an endpoint.
//!
//! Labels come from what each side knows: outbound, the source is this proxy's workload and
//! the destination the endpoint discovery chose; inbound, the destination is this workload and
//! the source the peer's mTLS identity when there is one, else the informational
//! `trellis-source-workload`/`-namespace` headers the calling proxy adds on meshed hops (this
//! side strips them; authorization never reads them).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Instant;
use trellis_model::Destination;

use super::memo::{SeriesMemo, Sources};
use super::requests::{Peer, RequestLabels, Series};
use super::{Direction, LabelDetail, Metrics};
use crate::accesslog::{self, AccessLog, Entry};
use crate::balance::EndpointState;
use crate::client::{UpBody, UpBodyError};
use crate::http::{BoxError, ProxyBody, TRELLIS_ERROR};
use crate::tls::PeerIdentity;
use crate::trace::{ActiveSpan, SpanEnd, SpanKind, Tracer, context};

/// Added by the outbound proxy on meshed hops, removed by the inbound one: who is calling, for
/// metrics only.
pub const SOURCE_WORKLOAD: HeaderName = HeaderName::from_static("trellis-source-workload");
pub const SOURCE_NAMESPACE: HeaderName = HeaderName::from_static("trellis-source-namespace");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Where a routed request went, put in the response's extensions by the forwarder: the
/// discovered destination, the route's name when one matched, and the endpoint of the attempt
/// that answered. For metrics, access logs and `explain`.
#[derive(Clone, Debug, Default)]
pub struct Upstream {
    pub destination: Option<Arc<Destination>>,
    pub route: Option<Arc<str>>,
    pub endpoint: Option<Arc<EndpointState>>,
    /// The hop to the endpoint went over mesh mTLS.
    pub tls: bool,
}

impl Upstream {
    /// The response's `Upstream`, made on first use.
    pub fn of<B>(resp: &mut Response<B>) -> &mut Upstream {
        resp.extensions_mut().get_or_insert_default::<Upstream>()
    }
}

/// This proxy's workload as label values, fixed at startup.
#[derive(Clone, Debug, Default)]
pub struct LocalWorkload {
    pub workload: String,
    pub namespace: String,
    workload_header: Option<HeaderValue>,
    namespace_header: Option<HeaderValue>,
}

impl LocalWorkload {
    pub fn new(workload: &str, namespace: &str) -> Self {
        Self {
            workload: workload.to_owned(),
            namespace: namespace.to_owned(),
            workload_header: HeaderValue::from_str(workload)
                .ok()
                .filter(|_| !workload.is_empty()),
            namespace_header: HeaderValue::from_str(namespace)
                .ok()
                .filter(|_| !namespace.is_empty()),
        }
    }

    fn peer(&self) -> Peer<'_> {
        Peer {
            workload: &self.workload,
            namespace: &self.namespace,
            identity: "",
        }
    }
}

/// The proxy's telemetry: metrics, traces (with `--otlp-endpoint`) and access logs.
#[derive(Debug)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub local: LocalWorkload,
    pub tracer: Option<Arc<Tracer>>,
    pub access_log: Option<Arc<AccessLog>>,
}

/// What [`Telemetry::begin`] noted about a request, until [`Telemetry::end`].
#[derive(Debug)]
pub struct Exchange {
    started: Instant,
    direction: Direction,
    source_workload: Option<HeaderValue>,
    source_namespace: Option<HeaderValue>,
    request_bytes: Option<Arc<AtomicU64>>,
    /// Inbound over mesh mTLS: the caller's verified SPIFFE identity.
    peer_identity: Option<PeerIdentity>,
    span: Option<ActiveSpan>,
    /// The access log line being filled in, with access logs on.
    log: Option<Box<Entry>>,
    /// The tap row being filled in, while someone taps.
    tap: Option<Box<crate::tap::Pending>>,
    /// The connection's memo of its last series (see [`Exchange::use_memo`]).
    memo: Option<Arc<SeriesMemo>>,
}

impl Exchange {
    /// Finds the series through the connection's memo: a request labelled like the one before
    /// it on the connection then costs a few pointer comparisons, not a registry lookup.
    /// In place: an `Exchange` is a few hundred bytes, and each move of it is a copy.
    pub fn use_memo(&mut self, memo: Option<Arc<SeriesMemo>>) {
        self.memo = memo;
    }
}

impl Telemetry {
    pub fn new(metrics: Arc<Metrics>, local: LocalWorkload) -> Self {
        Self {
            metrics,
            local,
            tracer: None,
            access_log: None,
        }
    }

    pub fn with_access_log(mut self, log: AccessLog) -> Self {
        self.access_log = Some(Arc::new(log));
        self
    }

    pub fn with_tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = Some(Arc::new(tracer));
        self
    }

    /// Notes the arrival of a request, strips the source headers (read inbound, dropped
    /// outbound so an application cannot claim another workload), starts its span and counts
    /// its body bytes. `peer` is the downstream peer.
    pub fn begin(
        &self,
        direction: Direction,
        req: Request<UpBody>,
        peer: Option<SocketAddr>,
    ) -> (Exchange, Request<UpBody>) {
        let started = Instant::now();
        // The one check the tap costs a request while nobody taps.
        let tapping = self.metrics.tap.is_active();
        let headers = req.headers();
        let mut ex = Exchange {
            started,
            direction,
            source_workload: None,
            source_namespace: None,
            request_bytes: None,
            peer_identity: None,
            span: None,
            log: None,
            tap: None,
            memo: None,
        };
        let has_source = has_source_headers(headers);
        let logging = self.access_log.as_ref().is_some_and(|l| l.enabled());
        if !has_source && !self.tracer.as_ref().is_some_and(|t| t.active()) && !logging && !tapping
        {
            // The common case: nothing to rewrite in the head, so it is not taken apart.
            if self.metrics.detail() == LabelDetail::Minimal {
                return (ex, req);
            }
            if direction == Direction::Inbound {
                ex.peer_identity = req.extensions().get::<PeerIdentity>().cloned();
            }
            let req = count_body(&mut ex, req);
            return (ex, req);
        }
        let (mut parts, body) = req.into_parts();
        if direction == Direction::Inbound {
            ex.peer_identity = parts.extensions.get::<PeerIdentity>().cloned();
        }
        if let Some(tracer) = &self.tracer {
            let kind = match direction {
                Direction::Inbound => SpanKind::Server,
                Direction::Outbound => SpanKind::Client,
            };
            // A cheap clone (shared bytes), so the headers can be rewritten below.
            let host = parts.headers.get(header::HOST).cloned();
            let authority = parts
                .uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| host.as_ref()?.to_str().ok())
                .unwrap_or("");
            ex.span = tracer.begin(
                kind,
                &mut parts.headers,
                &parts.method,
                parts.uri.path(),
                authority,
                peer,
            );
        }
        // Known absent: no lookups (two hashed probes) for a request without them.
        if has_source {
            let workload = parts.headers.remove(&SOURCE_WORKLOAD);
            let namespace = parts.headers.remove(&SOURCE_NAMESPACE);
            if direction == Direction::Inbound {
                ex.source_workload = workload;
                ex.source_namespace = namespace;
            }
        }
        if tapping {
            ex.tap = Some(Box::new(crate::tap::Pending::new(&parts)));
        }
        if logging {
            let trace_id = match &ex.span {
                Some(span) => Some(span.ctx.trace_id),
                None => context::extract(&parts.headers).map(|(c, _)| c.trace_id),
            };
            ex.log = Some(Box::new(Entry {
                start_unix_nanos: accesslog::unix_nanos(),
                direction: Some(direction),
                method: parts.method.to_string(),
                authority: parts
                    .uri
                    .authority()
                    .map(|a| a.as_str())
                    .or_else(|| parts.headers.get(header::HOST)?.to_str().ok())
                    .unwrap_or("")
                    .to_owned(),
                path: parts.uri.path().to_owned(),
                protocol: protocol(parts.version),
                downstream: peer,
                trace_id: trace_id.map(|t| context::hex_string(&t)),
                ..Entry::default()
            }));
        } else if self.metrics.detail() == LabelDetail::Minimal && !tapping {
            return (ex, Request::from_parts(parts, body));
        }
        let req = count_body(&mut ex, Request::from_parts(parts, body));
        (ex, req)
    }

    /// Adds the source headers on a hop to a meshed peer.
    pub fn tag_meshed_hop(&self, headers: &mut HeaderMap) {
        if let Some(w) = &self.local.workload_header {
            headers.insert(SOURCE_WORKLOAD, w.clone());
        }
        if let Some(n) = &self.local.namespace_header {
            headers.insert(SOURCE_NAMESPACE, n.clone());
        }
    }

    /// The response head is ready: records latency now and the count and bytes when its body
    /// ends.
    pub fn end(&self, mut ex: Exchange, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        let elapsed = ex.started.elapsed();
        let status = resp.status().as_u16();
        if ex.direction == Direction::Inbound {
            self.metrics.anomaly.record(status, elapsed);
        }
        // Looked up once: the span, series, log and tap row all read them.
        let up = resp.extensions().get::<Upstream>();
        let error = resp.headers().get(TRELLIS_ERROR);
        // The span ends with the response body (a gRPC status may come in the trailers); what
        // the head says is kept until then.
        let span = match (&self.tracer, ex.span.take()) {
            (Some(tracer), Some(span)) => Some(PendingSpan {
                tracer: tracer.clone(),
                span,
                upstream: up
                    .and_then(|u| u.endpoint.as_deref())
                    .map(|e| e.endpoint().address),
                route: up.and_then(|u| u.route.clone()),
                error: error.cloned(),
            }),
            _ => None,
        };
        let log = match (ex.log.take(), &self.access_log) {
            (Some(mut entry), Some(log)) => {
                let endpoint = up.and_then(|u| u.endpoint.as_deref()).map(|e| e.endpoint());
                entry.status = status;
                entry.reason = error.and_then(|v| v.to_str().ok()).map(str::to_owned);
                entry.upstream = endpoint.map(|e| e.address);
                entry.upstream_workload = endpoint.map(|e| e.workload.clone()).unwrap_or_default();
                entry.route = up.and_then(|u| u.route.as_deref()).unwrap_or("").to_owned();
                Some((entry, log.clone()))
            }
            _ => None,
        };
        let series = if self.metrics.detail() == LabelDetail::Full {
            let lookup = || self.metrics.requests.series(&self.labels(&ex, up));
            let series = match &ex.memo {
                Some(memo) => memo.series(&self.sources(&ex, up), lookup),
                None => lookup(),
            };
            series.observe_latency(elapsed);
            Some(series)
        } else {
            self.metrics.request(ex.direction, status, elapsed);
            None
        };
        let tap = ex.tap.take().map(|pending| {
            let row = pending.answered(&self.labels(&ex, up), status, elapsed, error);
            (row, self.metrics.tap.clone())
        });
        if series.is_none() && log.is_none() && span.is_none() && tap.is_none() {
            return resp;
        }
        // A trailers-only gRPC answer carries its status in the head.
        let grpc = grpc_status(resp.headers());
        resp.map(|inner| {
            Recorded {
                inner,
                series,
                log,
                span,
                tap,
                started: ex.started,
                status,
                grpc,
                response_bytes: 0,
                request_bytes: ex.request_bytes,
                done: false,
            }
            .boxed()
        })
    }

    /// What the request's labels are made of, for the connection's memo.
    fn sources<'a>(&self, ex: &'a Exchange, up: Option<&'a Upstream>) -> Sources<'a> {
        Sources {
            direction: ex.direction,
            upstream: up,
            source_workload: ex.source_workload.as_ref(),
            source_namespace: ex.source_namespace.as_ref(),
            peer_identity: ex.peer_identity.as_ref(),
        }
    }

    /// The request's labels: the metrics' series key and the tap row's parties.
    fn labels<'a>(&'a self, ex: &'a Exchange, up: Option<&'a Upstream>) -> RequestLabels<'a> {
        let route = up.and_then(|u| u.route.as_deref()).unwrap_or("");
        match ex.direction {
            Direction::Outbound => {
                let dest = up.and_then(|u| u.destination.as_deref());
                let endpoint = up.and_then(|u| u.endpoint.as_deref()).map(|e| e.endpoint());
                let namespace = dest.map_or("", |d| d.service.namespace.as_str());
                RequestLabels {
                    direction: ex.direction,
                    source: self.local.peer(),
                    destination: Peer {
                        workload: endpoint.map_or("", |e| e.workload.as_str()),
                        namespace: if endpoint.is_some() { namespace } else { "" },
                        identity: endpoint.and_then(|e| e.identity.as_deref()).unwrap_or(""),
                    },
                    destination_service: dest.map_or("", |d| service_host(&d.authority)),
                    route,
                    tls: up.is_some_and(|u| u.tls),
                }
            }
            Direction::Inbound => RequestLabels {
                direction: ex.direction,
                source: Peer {
                    workload: header_str(ex.source_workload.as_ref()),
                    namespace: match header_str(ex.source_namespace.as_ref()) {
                        "" => ex
                            .peer_identity
                            .as_ref()
                            .and_then(|id| spiffe_namespace(&id.0))
                            .unwrap_or(""),
                        ns => ns,
                    },
                    identity: ex.peer_identity.as_ref().map_or("", |id| &id.0),
                },
                destination: self.local.peer(),
                destination_service: "",
                route,
                tls: ex.peer_identity.is_some(),
            },
        }
    }
}

/// Counts the request's body bytes, for metrics and access logs alike; a request without a
/// body (most GETs) needs no counter.
fn count_body(ex: &mut Exchange, req: Request<UpBody>) -> Request<UpBody> {
    if req.body().is_end_stream() {
        return req;
    }
    let tally = Arc::new(AtomicU64::new(0));
    ex.request_bytes = Some(tally.clone());
    req.map(|inner| Counted { inner, tally }.boxed())
}

/// Whether the request carries either source header. One pass over the names instead of two
/// hashed lookups: a request has few headers, the standard ones differ from these at the first
/// comparison and other custom ones mostly by length.
fn has_source_headers(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| *name == SOURCE_WORKLOAD || *name == SOURCE_NAMESPACE)
}

/// `reviews.default.svc.cluster.local:9080` → `reviews.default.svc.cluster.local`.
fn service_host(authority: &str) -> &str {
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

/// `spiffe://td/ns/<namespace>/sa/<sa>` → the namespace.
fn spiffe_namespace(id: &str) -> Option<&str> {
    let path = id.strip_prefix("spiffe://")?.split_once('/')?.1;
    path.strip_prefix("ns/")?.split('/').next()
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn header_str(v: Option<&HeaderValue>) -> &str {
    v.and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Every answer's head is checked and few carry the field: a scan of the names (a head has
/// few) rules it out before the hashed lookup, which cost about 200 instructions per request
/// (callgrind).
fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    if !headers.keys().any(|name| *name == GRPC_STATUS) {
        return None;
    }
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
}

/// A request body that adds its data bytes to a tally.
struct Counted {
    inner: UpBody,
    tally: Arc<AtomicU64>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = UpBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpBodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.tally.fetch_add(data.len() as u64, Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A span waiting for the end of its response body.
struct PendingSpan {
    tracer: Arc<Tracer>,
    span: ActiveSpan,
    upstream: Option<SocketAddr>,
    route: Option<Arc<str>>,
    error: Option<HeaderValue>,
}

/// A response body that counts the exchange in its series, and writes its access log line,
/// when it ends (or is dropped).
struct Recorded {
    inner: ProxyBody,
    series: Option<Arc<Series>>,
    log: Option<(Box<Entry>, Arc<AccessLog>)>,
    span: Option<PendingSpan>,
    tap: Option<(Box<crate::tap::Row>, Arc<crate::tap::Tap>)>,
    started: Instant,
    status: u16,
    grpc: Option<u32>,
    response_bytes: u64,
    request_bytes: Option<Arc<AtomicU64>>,
    done: bool,
}

impl Recorded {
    fn finish(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let req = self.request_bytes.as_ref().map_or(0, |t| t.load(Relaxed));
        if let Some(series) = &self.series {
            series.finish(self.status, self.grpc, req, self.response_bytes);
        }
        if let Some(p) = self.span.take() {
            p.tracer.end(
                p.span,
                SpanEnd {
                    status: self.status,
                    grpc_status: self.grpc,
                    upstream: p.upstream,
                    route: p.route.as_deref(),
                    error: p.error.as_ref().and_then(|v| v.to_str().ok()),
                },
            );
        }
        if let Some((mut row, tap)) = self.tap.take() {
            row.finished(self.grpc, req, self.response_bytes, self.started.elapsed());
            tap.publish(*row);
        }
        if let Some((mut entry, log)) = self.log.take() {
            entry.grpc_status = self.grpc;
            entry.bytes_received = req;
            entry.bytes_sent = self.response_bytes;
            entry.duration = self.started.elapsed();
            log.log(&entry);
        }
    }
}

impl Body for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.response_bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(code) = grpc_status(trailers)
                {
                    self.grpc = Some(code);
                }
                // Counted as soon as the last frame is out, so a client that has read the
                // whole answer finds it in `/metrics`.
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.finish();
    }
}

impl std::fmt::Debug for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorded")
            .field("status", &self.status)
            .finish()
    }
}

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted").finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_from_a_spiffe_id() {
        assert_eq!(
            spiffe_namespace("spiffe://cluster.local/ns/default/sa/bookinfo-reviews"),
            Some("default")
        );
        assert_eq!(spiffe_namespace("spiffe://cluster.local/other"), None);
    }

    fn empty_request(headers: &[(&str, &str)]) -> Request<UpBody> {
        let mut b = Request::get("/reviews/0");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
    }

    fn empty_response(status: u16) -> Response<ProxyBody> {
        let mut r = Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        );
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r
    }

    #[tokio::test]
    async fn inbound_reads_and_strips_the_source_headers() {
        let metrics = Arc::new(Metrics::new());
        let t = Telemetry::new(metrics.clone(), LocalWorkload::new("reviews-v1", "default"));
        let req = empty_request(&[
            ("trellis-source-workload", "productpage-v1"),
            ("trellis-source-namespace", "shop"),
        ]);
        let (ex, req) = t.begin(Direction::Inbound, req, None);
        assert!(!req.headers().contains_key(SOURCE_WORKLOAD));
        assert!(!req.headers().contains_key(SOURCE_NAMESPACE));
        let resp = t.end(ex, empty_response(503));
        drop(resp);
        let mut out = String::new();
        metrics.render(&mut out);
        let want = [
            ("direction", "inbound"),
            ("source_workload", "productpage-v1"),
            ("source_namespace", "shop"),
            ("destination_workload", "reviews-v1"),
            ("status_code", "503"),
            ("response_class", "failure"),
        ];
        assert_eq!(
            super::super::scrape::sum(&out, "trellis_requests_total", &want),
            1.0,
            "{out}"
        );
    }

    #[tokio::test]
    async fn outbound_drops_what_the_app_claims_and_tags_meshed_hops() {
        let t = Telemetry::new(
            Arc::new(Metrics::new()),
            LocalWorkload::new("productpage-v1", "default"),
        );
        let req = empty_request(&[("trellis-source-workload", "someone-else")]);
        let (_ex, req) = t.begin(Direction::Outbound, req, None);
        assert!(!req.headers().contains_key(SOURCE_WORKLOAD));
        let mut headers = HeaderMap::new();
        t.tag_meshed_hop(&mut headers);
        assert_eq!(headers[SOURCE_WORKLOAD], "productpage-v1");
        assert_eq!(headers[SOURCE_NAMESPACE], "default");
    }

    #[tokio::test]
    async fn either_source_header_alone_is_stripped_at_every_detail() {
        for detail in [LabelDetail::Minimal, LabelDetail::Full] {
            let t = Telemetry::new(
                Arc::new(Metrics::with_detail(detail)),
                LocalWorkload::new("reviews-v1", "default"),
            );
            // Repeated, and next to other custom headers of other lengths.
            let req = empty_request(&[
                ("x-request-id", "1"),
                ("trellis-source-namespace", "shop"),
                ("trellis-source-namespace", "other"),
                ("trellis-source-workloads", "not-ours"),
            ]);
            let (ex, req) = t.begin(Direction::Inbound, req, None);
            assert!(!req.headers().contains_key(SOURCE_NAMESPACE), "{detail:?}");
            assert_eq!(req.headers()["trellis-source-workloads"], "not-ours");
            assert_eq!(req.headers()["x-request-id"], "1");
            assert_eq!(
                ex.source_namespace.as_ref().map(|v| v.as_bytes()),
                Some(&b"shop"[..]),
                "{detail:?}"
            );
            assert!(ex.source_workload.is_none());
            let req = empty_request(&[("trellis-source-workload", "someone-else")]);
            let (_ex, req) = t.begin(Direction::Outbound, req, None);
            assert!(!req.headers().contains_key(SOURCE_WORKLOAD), "{detail:?}");
        }
    }

    #[test]
    fn service_host_drops_the_port() {
        assert_eq!(
            service_host("reviews.default.svc.cluster.local:9080"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(service_host("x"), "x");
    }
}
