//! Access logs on loopback: a request the proxy failed names why in its log line (a route
//! timeout, a backend without endpoints, a circuit-breaker rejection), and a good one carries the upstream, the route, the
//! bytes and the trace id; labelled request metrics name the destination workload and route.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trellis_model::route::{HeaderModifier, HttpRoute, ResourceRef, RouteAction};
use trellis_proxy::accesslog::{AccessLog, Format};
use trellis_proxy::discovery::{Discovery, Resolution};
use trellis_proxy::route::Dest;
use trellis_proxy::serve::{Ctx, serve};
use trellis_proxy::telemetry::exchange::{LocalWorkload, Telemetry};
use trellis_proxy::telemetry::scrape::sum;
use trellis_proxy::telemetry::{Direction, Metrics};
use trellis_proxy::traffic::TargetTraffic;

use support::routed::{Backend, destination, reviews, weighted};

/// A fresh log file path for one test (removed first, so a rerun starts empty).
fn log_path() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!("trellis-accesslog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.log", N.fetch_add(1, Relaxed)));
    let _ = std::fs::remove_file(&path);
    path
}

fn route(timeout: Option<Duration>) -> HttpRoute {
    HttpRoute {
        name: "reviews-all".into(),
        source: ResourceRef::default(),
        matches: Vec::new(),
        action: RouteAction::Forward(vec![weighted(
            trellis_model::route::BackendRef {
                service: reviews(),
                port: None,
                subset: None,
            },
            1,
        )]),
        request_headers: HeaderModifier::default(),
        response_headers: HeaderModifier::default(),
        rewrite: None,
        mirrors: Vec::new(),
        fault: None,
        timeout,
        retry: None,
    }
}

/// An outbound listener for `dest` whose access log goes to `log`; returns its address and
/// metrics.
async fn logged_proxy(
    dest: trellis_model::Destination,
    log: &std::path::Path,
) -> (std::net::SocketAddr, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let telemetry = Telemetry::new(
        metrics.clone(),
        LocalWorkload::new("productpage-v1", "default"),
    )
    .with_access_log(
        AccessLog::start(Format::Json, Some(log), metrics.access_log_dropped.clone()).unwrap(),
    );
    let ctx = Arc::new(
        Ctx::new(
            metrics.clone(),
            Discovery::disabled(),
            Duration::from_secs(1),
            BTreeSet::new(),
            Vec::new(),
            CancellationToken::new(),
            TaskTracker::new(),
        )
        .with_telemetry(Arc::new(telemetry)),
    );
    let (_tx, rx) = watch::channel(Resolution::Found(Arc::new(dest)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let traffic = Arc::new(TargetTraffic::default());
    tokio::spawn(async move {
        let _keep = _tx;
        while let Ok((stream, _)) = listener.accept().await {
            let dest = Dest::Service {
                resolution_rx: rx.clone(),
                traffic: traffic.clone(),
            };
            tokio::spawn(serve(ctx.clone(), Direction::Outbound, stream, dest, 9080));
        }
    });
    (addr, metrics)
}

/// The log's lines once it has `n` (bounded wait: the writer thread flushes when idle).
async fn lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + support::WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(Instant::now() < deadline, "{} lines: {text}", lines.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> u16 {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req =
        http::Request::get(format!("http://{addr}/reviews/0")).header("host", "reviews:9080");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        support::WAIT,
        client.request(req.body(Full::default()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn a_timed_out_request_names_the_reason() {
    let log = log_path();
    let slow = Backend::start("reviews-v2").await;
    slow.delay_ms.store(2_000, Relaxed);
    let mut dest = destination(&[&slow]);
    dest.routes = vec![route(Some(Duration::from_millis(200)))];
    let (addr, _) = logged_proxy(dest, &log).await;

    assert_eq!(get(addr, &[]).await, 504);
    let line = &lines(&log, 1).await[0];
    assert_eq!(line["response_code"], 504);
    assert_eq!(line["response_flags"], "UT");
    assert_eq!(line["response_code_details"], "request timeout");
    assert_eq!(line["route_name"], "reviews-all");
    assert_eq!(line["direction"], "outbound");
    assert!(line["duration_ms"].as_f64().unwrap() >= 200.0);
}

#[tokio::test]
async fn no_endpoints_and_a_good_answer() {
    let log = log_path();
    let (empty, _) = logged_proxy(destination(&[]), &log).await;
    assert_eq!(get(empty, &[]).await, 503);
    let line = &lines(&log, 1).await[0];
    assert_eq!(line["response_flags"], "UH");
    assert_eq!(line["response_code_details"], "no endpoints");

    let good = Backend::start("reviews-v1").await;
    let mut dest = destination(&[&good]);
    dest.routes = vec![route(None)];
    let (addr, metrics) = logged_proxy(dest, &log).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(get(addr, &[("traceparent", tp)]).await, 200);
    let line = &lines(&log, 2).await[1];
    assert_eq!(line["response_flags"], "-");
    assert_eq!(line["upstream_host"], good.addr.to_string());
    assert_eq!(line["upstream_workload"], "reviews-v1");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["bytes_sent"], "reviews-v1".len());

    let mut text = String::new();
    metrics.render(&mut text);
    let labels = [
        ("direction", "outbound"),
        ("source_workload", "productpage-v1"),
        ("destination_workload", "reviews-v1"),
        ("destination_service", "reviews.default.svc.cluster.local"),
        ("route", "reviews-all"),
        ("status_code", "200"),
        ("response_class", "success"),
    ];
    assert_eq!(sum(&text, "trellis_requests_total", &labels), 1.0, "{text}");
    assert_eq!(
        sum(
            &text,
            "trellis_response_bytes_total",
            &[("destination_workload", "reviews-v1")]
        ),
        "reviews-v1".len() as f64
    );
}

#[tokio::test]
async fn a_circuit_breaker_rejection_names_the_reason() {
    let log = log_path();
    let backend = Backend::start("reviews-v1").await;
    let mut dest = destination(&[&backend]);
    // No request may be in flight: every request is turned away by the breaker.
    dest.policy.connection_pool = trellis_model::policy::ConnectionPool {
        max_requests: Some(0),
        ..Default::default()
    };
    let (addr, _) = logged_proxy(dest, &log).await;
    assert_eq!(get(addr, &[]).await, 503);
    let line = &lines(&log, 1).await[0];
    assert_eq!(line["response_flags"], "UO");
    assert_eq!(line["response_code_details"], "circuit open: max requests");
    assert_eq!(backend.hits(), 0);
}
