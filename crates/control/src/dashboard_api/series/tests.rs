use super::*;

/// A real scrape of the demo's reviews-v2 proxy (request metrics only): inbound from
/// productpage-v1 over mTLS, outbound to ratings.
const REVIEWS_V2: &str = include_str!("../testdata/reviews-v2.metrics");

fn wl(name: &str) -> NodeId {
    NodeId::workload("default", name)
}

fn svc(name: &str) -> NodeId {
    NodeId::service("default", name)
}

fn edge(from: NodeId, to: NodeId) -> SeriesKey {
    SeriesKey::Edge { from, to }
}

#[test]
fn a_real_scrape_gives_edges_nodes_and_routes() {
    let snap = snapshot(REVIEWS_V2);
    let to_ratings = &snap[&edge(wl("reviews-v2"), svc("ratings"))];
    assert!(to_ratings.requests > 0.0);
    assert_eq!(to_ratings.requests, to_ratings.successes);
    assert_eq!(
        to_ratings.tls, to_ratings.requests,
        "the demo's hops are mTLS"
    );
    assert_eq!(
        to_ratings.buckets.last().map(|b| b.1),
        Some(to_ratings.requests),
        "the +Inf bucket counts every request"
    );
    assert!(snap.contains_key(&edge(svc("ratings"), wl("ratings-v1"))));
    assert!(snap.contains_key(&SeriesKey::Node(svc("ratings"))));
    // Inbound: the node itself; no edge (the caller's proxy reports it), as the caller is meshed.
    assert!(snap.contains_key(&SeriesKey::Node(wl("reviews-v2"))));
    assert!(!snap.keys().any(|k| matches!(
        k,
        SeriesKey::Edge {
            from: NodeId::External,
            ..
        }
    )));
    // The demo routes nothing for ratings (route=""): no route series.
    assert!(!snap.keys().any(|k| matches!(k, SeriesKey::Route { .. })));
}

const PRODUCTPAGE: &str = r#"
trellis_requests_total{direction="inbound",source_workload="",source_namespace="",destination_workload="productpage-v1",destination_namespace="default",destination_service="",route="",tls="false",status_code="200",response_class="success"} 9
trellis_requests_total{direction="inbound",source_workload="",source_namespace="",destination_workload="productpage-v1",destination_namespace="default",destination_service="",route="",tls="false",status_code="500",response_class="failure"} 1
trellis_requests_total{direction="outbound",source_workload="productpage-v1",source_namespace="default",destination_workload="reviews-v1",destination_namespace="default",destination_service="reviews.default.svc.cluster.local",route="r",tls="true",status_code="200",response_class="success"} 6
trellis_requests_total{direction="outbound",source_workload="productpage-v1",source_namespace="default",destination_workload="",destination_namespace="default",destination_service="reviews.default.svc.cluster.local",route="r",tls="false",status_code="500",response_class="failure"} 4
trellis_request_duration_seconds_bucket{direction="outbound",source_workload="productpage-v1",source_namespace="default",destination_workload="reviews-v1",destination_namespace="default",destination_service="reviews.default.svc.cluster.local",route="r",tls="true",le="0.01"} 3
trellis_request_duration_seconds_bucket{direction="outbound",source_workload="productpage-v1",source_namespace="default",destination_workload="reviews-v1",destination_namespace="default",destination_service="reviews.default.svc.cluster.local",route="r",tls="true",le="0.1"} 6
trellis_request_duration_seconds_bucket{direction="outbound",source_workload="productpage-v1",source_namespace="default",destination_workload="reviews-v1",destination_namespace="default",destination_service="reviews.default.svc.cluster.local",route="r",tls="true",le="+Inf"} 6
trellis_requests_total{direction="inbound",status_code="200"} 77
"#;

#[test]
fn failures_the_caller_made_count_on_the_service_not_a_workload() {
    let snap = snapshot(PRODUCTPAGE);
    let to_reviews = &snap[&edge(wl("productpage-v1"), svc("reviews"))];
    assert_eq!(
        (to_reviews.requests, to_reviews.successes, to_reviews.tls),
        (10.0, 6.0, 6.0)
    );
    let to_v1 = &snap[&edge(svc("reviews"), wl("reviews-v1"))];
    assert_eq!((to_v1.requests, to_v1.successes), (6.0, 6.0));
    let from_outside = &snap[&edge(NodeId::External, wl("productpage-v1"))];
    assert_eq!((from_outside.requests, from_outside.successes), (10.0, 9.0));
    let route = &snap[&SeriesKey::Route {
        namespace: "default".into(),
        service: "reviews".into(),
        route: "r".into(),
    }];
    assert_eq!(route.requests, 10.0);
    // A minimal-labels line (no workload) counts toward nothing.
    assert_eq!(snap[&SeriesKey::Node(wl("productpage-v1"))].requests, 10.0);
}

fn scaled(text: &str, factor: f64) -> String {
    text.lines()
        .map(|l| match l.rsplit_once(' ') {
            Some((head, v)) if !l.starts_with('#') => {
                let v: f64 = v.parse().unwrap_or(0.0);
                format!("{head} {}", v * factor)
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn deltas_windows_and_series() {
    let before = snapshot(PRODUCTPAGE);
    let after = snapshot(&scaled(PRODUCTPAGE, 3.0));
    let d = delta(&before, &after);
    let key = edge(wl("productpage-v1"), svc("reviews"));
    assert_eq!(d[&key].requests, 20.0);
    // A restarted proxy (counters went down) counts from zero.
    let d = delta(&after, &before);
    assert_eq!(d[&key].requests, 10.0);

    let mut history = History::default();
    let t0 = 1_000_000;
    for i in 0..10u64 {
        history.push(t0 + i * 2000, 2.0, [delta(&before, &after)]);
    }
    let (covered, stats) = history.window(10.0);
    assert_eq!(covered, 10.0, "five 2 s ticks in a 10 s window");
    let s = &stats[&key];
    assert_eq!(s.requests, 100.0);
    assert!((s.rps - 10.0).abs() < 1e-9);
    assert!((s.success_rate.unwrap() - 0.6).abs() < 1e-9);
    assert!((s.tls_share.unwrap() - 0.6).abs() < 1e-9);
    // 12 of 12 bucketed requests were under 0.1 s; half under 0.01 s.
    let p50 = s.p50_ms.unwrap();
    assert!((p50 - 10.0).abs() < 1e-6, "{p50}");
    assert!(s.p99_ms.unwrap() <= 100.0);

    let points = history.series(&key, 10_000);
    assert_eq!(points.iter().map(|p| p.stats.requests).sum::<f64>(), 200.0);
    assert!(points.windows(2).all(|w| w[0].t < w[1].t));
    let other = SeriesKey::Node(svc("nothing"));
    assert!(
        history
            .series(&other, 10_000)
            .iter()
            .all(|p| p.stats.rps == 0.0)
    );
}

#[test]
fn the_ring_and_the_series_count_are_bounded() {
    let mut history = History::default();
    let snap = snapshot(PRODUCTPAGE);
    for i in 0..(HISTORY_TICKS as u64 + 50) {
        history.push(i * 2000, 2.0, [snap.clone()]);
    }
    assert_eq!(history.len(), HISTORY_TICKS);

    let many: Snapshot = (0..MAX_SERIES + 10)
        .map(|i| (SeriesKey::Node(wl(&format!("w{i}"))), Counts::default()))
        .collect();
    history.push(u64::MAX / 2, 2.0, [many]);
    assert_eq!(history.dropped_series, 10);
    let (_, stats) = history.window(1.0);
    assert_eq!(stats.len(), MAX_SERIES);
}

#[test]
fn garbage_is_ignored() {
    let text = "trellis_requests_total{direction=\"outbound\" 5\ntrellis_request_duration_seconds_bucket{direction=\"inbound\",destination_workload=\"a\",le=\"x\"} 3\n\u{0}\u{ffff}";
    assert!(snapshot(text).is_empty());
    assert!(History::default().window(30.0).1.is_empty());
}

#[test]
fn anomaly_gauges() {
    let text = "# TYPE trellis_anomaly gauge\ntrellis_anomaly{kind=\"success_rate\"} 0\ntrellis_anomaly{kind=\"latency\"} 1\n";
    assert_eq!(anomalies(text), ["latency"]);
    assert!(anomalies(REVIEWS_V2).is_empty());
}
