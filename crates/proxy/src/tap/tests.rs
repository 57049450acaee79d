use std::sync::Arc;
use std::time::Duration;

use super::filter::{MAX_ROWS_CAP, Query, QueryError, StatusFilter};
use super::*;
use crate::accesslog::rfc3339;

fn row(direction: Direction, method: &str, path: &str, status: u16) -> Row {
    Row {
        direction: Some(direction),
        method: method.into(),
        authority: "reviews:9080".into(),
        path: path.into(),
        status,
        destination_workload: "reviews-v2".into(),
        destination_service: "reviews.default.svc.cluster.local".into(),
        ..Row::default()
    }
}

#[test]
fn nobody_tapping_is_inactive_and_a_subscription_counts_until_dropped() {
    let tap = Arc::new(Tap::new());
    assert!(!tap.is_active());
    let a = tap.subscribe();
    let b = tap.subscribe();
    assert!(tap.is_active());
    drop(a);
    assert!(tap.is_active());
    drop(b);
    assert!(!tap.is_active());
}

#[tokio::test]
async fn a_slow_subscriber_loses_rows_and_they_are_counted() {
    let tap = Arc::new(Tap::new());
    let mut sub = tap.subscribe();
    let extra = 10;
    for i in 0..CHANNEL_CAPACITY + extra {
        tap.publish(row(Direction::Inbound, "GET", &format!("/{i}"), 200));
    }
    let first = sub.recv().await.unwrap();
    // The oldest rows were overwritten; the subscriber resumes at the oldest one kept.
    assert_eq!(first.path, format!("/{extra}"));
    assert_eq!(sub.lagged, extra as u64);
    assert_eq!(tap.dropped(), extra as u64);
    let mut out = String::new();
    tap.render(&mut out);
    assert!(out.contains(&format!("trellis_tap_dropped_rows_total {extra}\n")));
    assert!(out.contains("trellis_tap_subscribers 1\n"));
}

#[test]
fn query_defaults_and_caps() {
    let q = Query::parse("").unwrap();
    assert_eq!(q.max_rows, 100);
    assert_eq!(q.max_seconds, Duration::from_secs(60));
    let q = Query::parse("max_rows=999999&max_seconds=99999").unwrap();
    assert_eq!(q.max_rows, MAX_ROWS_CAP);
    assert_eq!(q.max_seconds, Duration::from_secs(600));
    let q = Query::parse("method=get&path=%2Freviews&status=5xx&direction=outbound&to=reviews")
        .unwrap();
    assert_eq!(q.method.as_deref(), Some("GET"));
    assert_eq!(q.path.as_deref(), Some("/reviews"));
    assert_eq!(q.status, Some(StatusFilter::Class(5)));
    assert_eq!(q.direction, Some(Direction::Outbound));
    assert_eq!(
        Query::parse("status=503").unwrap().status,
        Some(StatusFilter::Code(503))
    );
}

#[test]
fn bad_queries_name_the_parameter() {
    assert_eq!(
        Query::parse("methd=GET").unwrap_err(),
        QueryError::Unknown("methd".into())
    );
    for (q, name) in [
        ("max_rows=0", "max_rows"),
        ("max_seconds=soon", "max_seconds"),
        ("status=6xx", "status"),
        ("status=42", "status"),
        ("direction=sideways", "direction"),
    ] {
        let e = Query::parse(q).unwrap_err().to_string();
        assert!(e.starts_with(name), "{q}: {e}");
    }
    assert!(matches!(
        Query::parse("path=%zz"),
        Err(QueryError::Encoding(_))
    ));
}

#[test]
fn filters_match_what_they_say() {
    let get = row(Direction::Outbound, "GET", "/reviews/0", 200);
    let post = row(Direction::Inbound, "POST", "/ratings/0", 503);
    let m = |q: &str, r: &Row| Query::parse(q).unwrap().matches(r);
    assert!(m("", &get));
    assert!(m("method=GET", &get) && !m("method=GET", &post));
    assert!(m("path=/reviews", &get) && !m("path=/reviews", &post));
    assert!(m("status=2xx", &get) && !m("status=2xx", &post));
    assert!(m("status=503", &post) && !m("status=500", &post));
    assert!(m("direction=inbound", &post) && !m("direction=inbound", &get));
    assert!(m("authority=reviews", &get) && m("authority=reviews:9080", &get));
    assert!(!m("authority=ratings", &get));
    assert!(m("to=reviews", &get) && m("to=reviews-v2", &get) && !m("to=ratings", &get));
    // Every filter must hold.
    assert!(!m("method=GET&status=5xx", &get));
}

#[test]
fn rows_serialize_with_the_documented_fields() {
    let mut r = row(Direction::Outbound, "GET", "/reviews/0", 200);
    r.finished(Some(14), 3, 120, Duration::from_micros(2500));
    assert_eq!(r.response_class, "failure");
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["direction"], "outbound");
    assert_eq!(v["grpc_status"], 14);
    assert_eq!(v["duration_ms"], 2.5);
    assert_eq!(v["response_bytes"], 120);
    for field in [
        "time",
        "method",
        "authority",
        "path",
        "status",
        "latency_ms",
        "request_bytes",
        "source_workload",
        "source_namespace",
        "source_identity",
        "destination_workload",
        "destination_namespace",
        "destination_identity",
        "destination_service",
        "tls",
        "route",
        "error",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
}

#[test]
fn rfc3339_dates() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    // 2024-02-29T12:34:56.789Z, a leap day.
    assert_eq!(
        rfc3339(1_709_210_096_789_000_000),
        "2024-02-29T12:34:56.789Z"
    );
}

/// The hook in telemetry: a tapped exchange becomes a row when its response body ends, with the
/// parties, status and bytes, even with the cheapest metric labels.
#[tokio::test]
async fn a_finished_exchange_is_published_while_tapped() {
    use crate::telemetry::exchange::{LocalWorkload, Telemetry};
    use crate::telemetry::{LabelDetail, Metrics};
    use http_body_util::{BodyExt, Empty, Full};

    let metrics = Arc::new(Metrics::with_detail(LabelDetail::Minimal));
    let t = Telemetry::new(metrics.clone(), LocalWorkload::new("reviews-v1", "default"));
    let exchange = |path: &'static str| {
        let req = http::Request::get(format!("http://reviews:9080{path}"))
            .header("trellis-source-workload", "productpage-v1")
            .header("trellis-source-namespace", "default")
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap();
        let (ex, _req) = t.begin(Direction::Inbound, req, None);
        let mut resp = http::Response::new(
            Full::new(bytes::Bytes::from_static(b"hello"))
                .map_err(|never| match never {})
                .boxed(),
        );
        *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        t.end(ex, resp)
    };

    let mut sub = metrics.tap.subscribe();
    let resp = exchange("/reviews/0");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
    let row = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.path, "/reviews/0");
    assert_eq!(row.authority, "reviews:9080");
    assert_eq!(row.method, "GET");
    assert_eq!(row.direction, Some(Direction::Inbound));
    assert_eq!((row.status, row.response_class), (503, "failure"));
    assert_eq!(row.response_bytes, 5);
    assert_eq!(row.source_workload, "productpage-v1");
    assert_eq!(row.source_namespace, "default");
    assert_eq!(row.destination_workload, "reviews-v1");
    assert!(!row.tls);
    assert!(row.duration_ms >= row.latency_ms);
}
