//! The OTLP exporter: a task that drains the span queue in batches (up to [`MAX_BATCH`] spans,
//! or whatever arrived within [`FLUSH_EVERY`]) and sends each batch with
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` over gRPC. A batch the
//! collector does not take within [`EXPORT_TIMEOUT`] is dropped and counted: the proxy never
//! waits on its collector. The conversion to protobuf is a pure function ([`to_request`]).
//!
//! The collector is a watch value ([`Collector`]): `--otlp-endpoint`, or the collector of the
//! tracing provider an Istio Telemetry names for this workload, resolved by the control plane.
//! The client is rebuilt when it changes, before the next batch goes out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status, span, status};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{Span, SpanKind};

pub const MAX_BATCH: usize = 512;
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How spans travel to the collector (`--otlp-protocol`, OpenTelemetry's names).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
pub enum Protocol {
    /// `TraceService/Export` over gRPC (port 4317 by convention).
    #[default]
    #[value(name = "grpc")]
    #[serde(rename = "grpc")]
    Grpc,
    /// `POST <endpoint>/v1/traces` with a protobuf body (port 4318 by convention).
    #[value(name = "http/protobuf")]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Where spans go: an OTLP endpoint and how to speak to it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Collector {
    /// `http://host:port` (gRPC), or the base or full URL for OTLP/HTTP.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: Protocol,
}

/// Who the spans come from (OTLP resource attributes).
#[derive(Clone, Debug, Default)]
pub struct ResourceInfo {
    pub service_name: String,
    pub namespace: String,
}

/// Span outcomes, rendered with the proxy's metrics as `trellis_trace_spans_total{outcome}`.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub exported: AtomicU64,
    /// The collector refused the batch or did not answer in time.
    pub failed: AtomicU64,
    /// The queue was full.
    pub dropped: AtomicU64,
}

impl ExportStats {
    pub fn render(&self, out: &mut String) -> std::fmt::Result {
        use std::fmt::Write as _;
        let name = "trellis_trace_spans_total";
        crate::telemetry::family(out, name, "counter", "Spans by what became of them.")?;
        for (outcome, n) in [
            ("exported", &self.exported),
            ("failed", &self.failed),
            ("dropped", &self.dropped),
        ] {
            writeln!(out, "{name}{{outcome=\"{outcome}\"}} {}", n.load(Relaxed))?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("invalid --otlp-endpoint {0:?}: {1}")]
    Endpoint(String, String),
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_owned())
}

/// The OTLP form of one span, with the HTTP semantic-convention attributes.
fn to_proto(sp: Span) -> opentelemetry_proto::tonic::trace::v1::Span {
    let mut attributes = vec![
        kv("http.request.method", s(sp.method.as_str())),
        kv("url.path", s(&sp.path)),
        kv(
            "http.response.status_code",
            any_value::Value::IntValue(i64::from(sp.status)),
        ),
    ];
    let (host, port) = match sp.authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<i64>().ok()),
        _ => (sp.authority.as_str(), None),
    };
    if !host.is_empty() {
        attributes.push(kv("server.address", s(host)));
    }
    if let Some(port) = port {
        attributes.push(kv("server.port", any_value::Value::IntValue(port)));
    }
    if let Some(peer) = sp.peer {
        attributes.push(kv("network.peer.address", s(&peer.ip().to_string())));
        attributes.push(kv(
            "network.peer.port",
            any_value::Value::IntValue(i64::from(peer.port())),
        ));
    }
    if let Some(code) = sp.grpc_status {
        attributes.push(kv(
            "rpc.grpc.status_code",
            any_value::Value::IntValue(i64::from(code)),
        ));
    }
    if let Some(route) = &sp.route {
        attributes.push(kv("http.route", s(route)));
    }
    if let Some(error) = &sp.error {
        attributes.push(kv("error.type", s(error)));
    }
    // Semantic conventions: 5xx is an error on both sides; 4xx only on the client side.
    let failed = sp.status >= 500
        || (sp.kind == SpanKind::Client && sp.status >= 400)
        || sp.grpc_status.is_some_and(|c| c != 0)
        || sp.error.is_some();
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: sp.trace_id.to_vec(),
        span_id: sp.span_id.to_vec(),
        trace_state: sp.trace_state,
        parent_span_id: sp.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        name: sp.name,
        kind: match sp.kind {
            SpanKind::Server => span::SpanKind::Server as i32,
            SpanKind::Client => span::SpanKind::Client as i32,
        },
        start_time_unix_nano: sp.start_unix_nanos,
        end_time_unix_nano: sp.end_unix_nanos,
        attributes,
        status: failed.then(|| Status {
            code: status::StatusCode::Error as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One export request for a batch of spans.
pub fn to_request(resource: &ResourceInfo, spans: Vec<Span>) -> ExportTraceServiceRequest {
    let mut attributes = vec![
        kv("service.name", s(&resource.service_name)),
        kv("telemetry.sdk.name", s("trellis-proxy")),
    ];
    if !resource.namespace.is_empty() {
        attributes.push(kv("k8s.namespace.name", s(&resource.namespace)));
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "trellis-proxy".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: spans.into_iter().map(to_proto).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Checks the endpoint before any socket is bound (`--otlp-endpoint`).
pub fn validate_endpoint(url: &str) -> Result<(), ExportError> {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .map(drop)
        .map_err(|e| ExportError::Endpoint(url.to_owned(), e.to_string()))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ExportError::Endpoint(
            url.to_owned(),
            "expected http://host:port".into(),
        ));
    }
    Ok(())
}

/// The OTLP/HTTP URL: the endpoint as given when it names a path, else `<endpoint>/v1/traces`
/// (the spec's rule for a signal-less base URL).
pub fn http_traces_url(endpoint: &str) -> String {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    match rest.split_once('/') {
        Some((_, path)) if !path.is_empty() => endpoint.to_owned(),
        _ => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
    }
}

/// One client for either protocol.
// One value per proxy, made once and never moved on a hot path: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
enum Client {
    Grpc(TraceServiceClient<tonic::transport::Channel>),
    Http {
        client: hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            http_body_util::Full<bytes::Bytes>,
        >,
        uri: http::Uri,
    },
}

impl Client {
    async fn export(&mut self, request: ExportTraceServiceRequest) -> Result<(), String> {
        match self {
            Self::Grpc(c) => c.export(request).await.map(drop).map_err(|s| s.to_string()),
            Self::Http { client, uri } => {
                let body = prost::Message::encode_to_vec(&request);
                let req = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .map_err(|e| e.to_string())?;
                let resp = client.request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status();
                // Read the answer so the connection can be reused.
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("collector answered {status}"))
                }
            }
        }
    }
}

/// A client for `collector`; `None` (logged) when its endpoint is not a URL.
fn client_for(collector: &Collector) -> Option<Client> {
    let endpoint = &collector.endpoint;
    match collector.protocol {
        Protocol::Grpc => match tonic::transport::Endpoint::from_shared(endpoint.clone()) {
            Ok(e) => Some(Client::Grpc(TraceServiceClient::new(
                e.connect_timeout(EXPORT_TIMEOUT).connect_lazy(),
            ))),
            Err(e) => {
                tracing::error!(%endpoint, error = %e, "invalid OTLP endpoint; spans are dropped");
                None
            }
        },
        Protocol::HttpProtobuf => match http_traces_url(endpoint).parse::<http::Uri>() {
            Ok(uri) => Some(Client::Http {
                client: hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http(),
                uri,
            }),
            Err(e) => {
                tracing::error!(%endpoint, error = %e, "invalid OTLP endpoint; spans are dropped");
                None
            }
        },
    }
}

/// Makes the proxy's tracer and spawns its exporter: `default` is `--otlp-endpoint`; with a
/// control plane (`follow_control`) there is a tracer even without it, inactive until a
/// Telemetry's provider names a collector. `None`: no tracing at all.
pub fn spawn(
    default: Option<Collector>,
    follow_control: bool,
    sampling: f64,
    resource: ResourceInfo,
    stats: Arc<ExportStats>,
    stop: CancellationToken,
) -> Option<super::Tracer> {
    if default.is_none() && !follow_control {
        return None;
    }
    let (tracer, spans_rx, collector_rx) =
        super::Tracer::exporting(sampling, stats.clone(), default);
    tokio::spawn(run(collector_rx, resource, spans_rx, stats, stop));
    Some(tracer)
}

/// Drains `rx` until `stop` (then flushes what is queued, once) and exports the batches to the
/// collector in force (`collector_rx`). Spans that find no collector are counted as failed.
pub async fn run(
    mut collector_rx: watch::Receiver<Option<Collector>>,
    resource: ResourceInfo,
    mut rx: mpsc::Receiver<Span>,
    stats: Arc<ExportStats>,
    stop: CancellationToken,
) {
    let mut collector = collector_rx.borrow_and_update().clone();
    let mut client = collector.as_ref().and_then(client_for);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let stopping = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n == 0,
            _ = stop.cancelled() => true,
        };
        if !stopping && batch.len() < MAX_BATCH {
            // Let a batch fill for a moment, bounded, so a busy proxy sends few requests.
            let _ = tokio::time::timeout(FLUSH_EVERY, async {
                while batch.len() < MAX_BATCH {
                    let want = MAX_BATCH - batch.len();
                    if rx.recv_many(&mut batch, want).await == 0 {
                        break;
                    }
                }
            })
            .await;
        }
        if stopping {
            while let Ok(s) = rx.try_recv() {
                batch.push(s);
                if batch.len() >= MAX_BATCH {
                    break;
                }
            }
        }
        if collector_rx.has_changed().unwrap_or(false) {
            collector = collector_rx.borrow_and_update().clone();
            client = collector.as_ref().and_then(client_for);
            tracing::info!(collector = ?collector.as_ref().map(|c| &c.endpoint), "OTLP collector changed");
        }
        let endpoint = collector.as_ref().map_or("", |c| c.endpoint.as_str());
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let Some(client) = client.as_mut() else {
                // Spans begun just before the collector went away (or an unusable endpoint).
                stats.failed.fetch_add(n, Relaxed);
                batch.clear();
                if stopping {
                    return;
                }
                continue;
            };
            let request = to_request(&resource, std::mem::take(&mut batch));
            match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
                Ok(Ok(_)) => {
                    stats.exported.fetch_add(n, Relaxed);
                }
                Ok(Err(error)) => {
                    stats.failed.fetch_add(n, Relaxed);
                    tracing::debug!(%endpoint, %error, spans = n, "OTLP export failed");
                }
                Err(_) => {
                    stats.failed.fetch_add(n, Relaxed);
                    tracing::debug!(%endpoint, spans = n, "OTLP export timed out");
                }
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_become_otlp_with_semantic_attributes() {
        let span = Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            trace_state: String::new(),
            kind: SpanKind::Client,
            name: "GET".into(),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            method: http::Method::GET,
            path: "/reviews/0".into(),
            authority: "reviews:9080".into(),
            status: 503,
            grpc_status: None,
            peer: Some("127.0.0.1:4000".parse().unwrap()),
            route: None,
            error: Some("no endpoints".into()),
        };
        let req = to_request(
            &ResourceInfo {
                service_name: "productpage-v1".into(),
                namespace: "default".into(),
            },
            vec![span],
        );
        let p = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(p.kind, span::SpanKind::Client as i32);
        assert_eq!(p.parent_span_id, vec![3; 8]);
        let keys: Vec<&str> = p.attributes.iter().map(|a| a.key.as_str()).collect();
        for k in [
            "http.request.method",
            "url.path",
            "http.response.status_code",
            "server.address",
            "server.port",
            "network.peer.address",
            "error.type",
        ] {
            assert!(keys.contains(&k), "{k} in {keys:?}");
        }
        assert_eq!(
            p.status.as_ref().map(|s| s.code),
            Some(status::StatusCode::Error as i32)
        );
    }

    #[test]
    fn http_url_gets_the_signal_path() {
        assert_eq!(
            http_traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://c:4318/custom/traces"),
            "http://c:4318/custom/traces"
        );
    }

    #[test]
    fn endpoints_are_validated() {
        assert!(validate_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(validate_endpoint("127.0.0.1:4317").is_err());
    }
}
