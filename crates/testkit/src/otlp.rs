//! An in-process OTLP/gRPC trace collector: a tonic `TraceService` on 127.0.0.1 that keeps
//! every span it receives with the `service.name` of the proxy that sent it, for tests that
//! check what the proxies export.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;

/// Spans received, each with the `service.name` of its resource.
#[derive(Clone, Debug, Default)]
pub struct OtlpCollector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

/// A string attribute's value, if it is a string.
pub fn string_value(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// The string attribute `key` of a span.
pub fn span_attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| string_value(a.value.as_ref()))
}

#[tonic::async_trait]
impl TraceService for OtlpCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| string_value(a.value.as_ref()))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl OtlpCollector {
    /// Starts a collector on 127.0.0.1, served by a task of the caller's tokio runtime.
    pub async fn start() -> std::io::Result<(Self, SocketAddr)> {
        let collector = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Ok((collector, addr))
    }

    /// Every span received so far, with its sender's `service.name`.
    pub fn spans(&self) -> Vec<(String, Span)> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The spans of one trace.
    pub fn of_trace(&self, trace_id: &[u8]) -> Vec<(String, Span)> {
        let spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        spans
            .iter()
            .filter(|(_, s)| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// How many spans `service` sent for requests to `path` (the `url.path` attribute).
    pub fn count(&self, service: &str, path: &str) -> usize {
        let spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        spans
            .iter()
            .filter(|(s, span)| {
                s == service && span_attribute(span, "url.path").as_deref() == Some(path)
            })
            .count()
    }

    /// The distinct `service.name`s that sent spans, sorted.
    pub fn services(&self) -> Vec<String> {
        let spans = self.spans.lock().unwrap_or_else(PoisonError::into_inner);
        let mut services: Vec<String> = spans.iter().map(|(s, _)| s.clone()).collect();
        services.sort();
        services.dedup();
        services
    }

    /// Waits, at most `timeout`, until the trace has at least `n` spans, then a further
    /// `settle` for stragglers of the same request; returns the trace's spans, or what it has
    /// at the deadline as the error.
    pub async fn wait_for_trace(
        &self,
        trace_id: &[u8],
        n: usize,
        timeout: Duration,
        settle: Duration,
    ) -> Result<Vec<(String, Span)>, Vec<(String, Span)>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.of_trace(trace_id);
            if spans.len() >= n {
                tokio::time::sleep(settle).await;
                return Ok(self.of_trace(trace_id));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(spans);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
