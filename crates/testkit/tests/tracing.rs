//! Distributed tracing through the Bookinfo demo: an in-process OTLP collector (a tonic
//! `TraceService`) receives the proxies' spans; a request through productpage -> reviews ->
//! ratings yields one trace whose client and server spans are parented hop by hop, and an
//! incoming B3 context is continued.
//!
//! Needs the built binaries (`cargo build --workspace --bins`). Everything listens on
//! 127.0.0.1. The demo's proxies get `--otlp-endpoint` and `--trace-sampling` through the
//! environment (`TRELLIS_OTLP_ENDPOINT`, `TRELLIS_TRACE_SAMPLING`), which they inherit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use serde_json::Value;
use trellis_testkit::bins::bin;
use trellis_testkit::otlp::OtlpCollector;
use trellis_testkit::process::ManagedProcess;
use trellis_testkit::tools::http_request;

/// Waits (bounded) until the trace has at least `n` spans, plus a moment for stragglers from
/// the same request (e.g. details).
async fn wait_for(collector: &OtlpCollector, trace_id: &[u8], n: usize) -> Vec<(String, Span)> {
    collector
        .wait_for_trace(
            trace_id,
            n,
            Duration::from_secs(15),
            Duration::from_millis(700),
        )
        .await
        .unwrap_or_else(|spans| panic!("trace has {} spans, wanted {n}: {spans:#?}", spans.len()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn wait_status(demo: &mut ManagedProcess, file: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(bytes) = std::fs::read(file) {
            return serde_json::from_slice(&bytes).unwrap();
        }
        assert!(demo.is_running(), "the demo exited:\n{}", demo.log());
        assert!(Instant::now() < deadline, "no status file:\n{}", demo.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET the reviews API through the entry with `header`; the `reviews_version` answered.
fn get_reviews(entry: SocketAddr, header: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&entry, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/v1/products/0/reviews HTTP/1.0\r\nHost: productpage:9080\r\n{header}\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let (status, body) = trellis_testkit::tools::parse_response(&raw).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["reviews_version"].as_str().unwrap_or("").to_owned()
}

/// The one span of `kind` sent by `service` (a workload name).
fn span_of<'a>(
    spans: &'a [(String, Span)],
    service: &str,
    kind: SpanKind,
    parent: &[u8],
) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|(svc, s)| {
            svc.starts_with(service) && s.kind == kind as i32 && s.parent_span_id == parent
        })
        .map(|(_, s)| s)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind:?} span of {service} with parent {}: {spans:#?}",
        hex(parent)
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_bookinfo_and_b3_is_continued() {
    let (collector, otlp) = OtlpCollector::start().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let status_file = dir.path().join("status.json");
    let mut cmd = Command::new(bin("trellis"));
    cmd.args(["demo", "--no-load", "--entry", "127.0.0.1:0"])
        .args(["--dashboard", "127.0.0.1:0", "--status-file"])
        .arg(&status_file)
        .env("TRELLIS_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("TRELLIS_TRACE_SAMPLING", "1");
    let mut demo = ManagedProcess::spawn("demo", cmd).unwrap();
    let status = wait_status(&mut demo, &status_file);
    let entry: SocketAddr = status["entry"].as_str().unwrap().parse().unwrap();

    // W3C: our client span is the root; find a request that reaches ratings (reviews v2/v3).
    let client_span = [0x11u8; 8];
    let mut trace_id = None;
    for i in 0..40u8 {
        let id = [0xa0, i, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
        let tp = format!("traceparent: 00-{}-{}-01", hex(&id), hex(&client_span));
        if get_reviews(entry, &tp) != "v1" {
            trace_id = Some(id);
            break;
        }
    }
    let trace_id = trace_id.expect("reviews v2 or v3 answered within 40 requests");
    let spans = wait_for(&collector, &trace_id, 5).await;
    let pp_server = span_of(&spans, "productpage", SpanKind::Server, &client_span);
    let pp_client = spans
        .iter()
        .filter(|(svc, s)| {
            svc.starts_with("productpage")
                && s.kind == SpanKind::Client as i32
                && s.parent_span_id == pp_server.span_id
        })
        .map(|(_, s)| s)
        .find(|s| {
            spans
                .iter()
                .any(|(svc, r)| svc.starts_with("reviews") && r.parent_span_id == s.span_id)
        })
        .expect("productpage's client span to reviews");
    let rv_server = span_of(&spans, "reviews", SpanKind::Server, &pp_client.span_id);
    let rv_client = span_of(&spans, "reviews", SpanKind::Client, &rv_server.span_id);
    let rt_server = span_of(&spans, "ratings", SpanKind::Server, &rv_client.span_id);
    for s in [pp_server, pp_client, rv_server, rv_client, rt_server] {
        assert!(s.start_time_unix_nano <= s.end_time_unix_nano);
        let keys: Vec<&str> = s.attributes.iter().map(|a| a.key.as_str()).collect();
        for k in [
            "http.request.method",
            "url.path",
            "http.response.status_code",
        ] {
            assert!(keys.contains(&k), "{k} missing in {keys:?}");
        }
    }
    // Children start within their parents.
    assert!(rv_server.start_time_unix_nano >= pp_client.start_time_unix_nano);
    assert!(rt_server.start_time_unix_nano >= rv_client.start_time_unix_nano);

    // B3 single: the same trace id is continued, the B3 span is the root's parent.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let b3_span = [0xe4, 0x57, 0xb5, 0xa2, 0xe4, 0xd8, 0x6b, 0xd1];
    get_reviews(entry, &format!("b3: {b3_trace}-{}-1", hex(&b3_span)));
    let b3_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&b3_trace[i * 2..i * 2 + 2], 16).unwrap())
        .collect();
    let spans = wait_for(&collector, &b3_id, 3).await;
    let root = span_of(&spans, "productpage", SpanKind::Server, &b3_span);
    assert!(
        spans
            .iter()
            .any(|(svc, s)| svc.starts_with("reviews") && s.kind == SpanKind::Server as i32),
        "reviews continued the B3 trace: {spans:#?}"
    );
    assert_eq!(root.trace_id, b3_id);

    // B3 multi as well.
    let multi_trace = "463ac35c9f6413ad48485a3953bb6124";
    let multi_span = "a2fb4a1d1a96d312";
    get_reviews(
        entry,
        &format!("x-b3-traceid: {multi_trace}\r\nx-b3-spanid: {multi_span}\r\nx-b3-sampled: 1"),
    );
    let multi_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&multi_trace[i * 2..i * 2 + 2], 16).unwrap())
        .collect();
    let spans = wait_for(&collector, &multi_id, 3).await;
    assert!(spans.iter().any(|(svc, _)| svc.starts_with("reviews")));

    let (code, metrics) = http_request(
        status["workloads"][0]["admin"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
        "GET",
        "/metrics",
    )
    .unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("trellis_trace_spans_total{outcome=\"exported\"}"));

    demo.terminate(Duration::from_secs(10));
}
