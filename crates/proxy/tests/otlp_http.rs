//! OTLP over HTTP/protobuf: a proxy with `--otlp-protocol http/protobuf` POSTs its spans to
//! `<endpoint>/v1/traces` as `ExportTraceServiceRequest` protobuf; a server span for an inbound
//! request arrives with its semantic-convention attributes and the caller's trace id, and a
//! span ends with its response body (a gRPC status from the trailers is on it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use trellis_proxy::trace::export::Protocol;

use support::*;

#[tokio::test]
async fn spans_are_posted_as_protobuf() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, String, ExportTraceServiceRequest)>();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let ct = req
                            .headers()
                            .get("content-type")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let decoded: ExportTraceServiceRequest =
                            prost::Message::decode(body).unwrap();
                        tx.send((path, ct, decoded)).unwrap();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let app = start_app().await;
    let proxy = start_proxy(app.addr, |c| {
        c.otlp_endpoint = Some(format!("http://{collector}"));
        c.otlp_protocol = Protocol::HttpProtobuf;
        c.trace_sampling = 1.0;
    })
    .await;
    let mut conn = http1_conn(proxy.addrs().inbound).await;
    let resp = conn
        .send_request(
            Request::get("/hello")
                .header("host", "web:8080")
                .header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    body_string(resp.into_body()).await;

    let deadline = Instant::now() + WAIT;
    let (path, content_type, req) = loop {
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(got)) => break got,
            _ => assert!(Instant::now() < deadline, "no OTLP/HTTP export"),
        }
    };
    assert_eq!(path, "/v1/traces");
    assert_eq!(content_type, "application/x-protobuf");
    let span = &req.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(
        span.trace_id,
        vec![
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, 0x36
        ]
    );
    assert_eq!(
        span.parent_span_id,
        vec![0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
    );
    let attr = |k: &str| {
        span.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
    };
    assert!(attr("http.request.method").is_some());
    assert!(attr("url.path").is_some());
    assert!(attr("server.address").is_some());

    // A span ends with its response body: a gRPC status sent in the trailers is on it.
    let mut h2 = http2_conn(proxy.addrs().inbound).await;
    let resp = h2
        .send_request(
            Request::get("http://app.test/trailers")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some((_, _, req))) =
            tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            let found = req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .any(|s| s.attributes.iter().any(|a| a.key == "rpc.grpc.status_code"));
            if found {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no span with the trailers' gRPC status"
        );
    }
}
