use super::*;

const BEFORE: &str = r#"# TYPE trellis_requests_total counter
trellis_requests_total{direction="inbound",source_workload="productpage-v1",status_code="200",response_class="success"} 100
trellis_requests_total{direction="inbound",source_workload="productpage-v1",status_code="503",response_class="failure"} 0
trellis_requests_total{direction="outbound",destination_workload="ratings-v1",status_code="200",response_class="success"} 999
trellis_request_duration_seconds_bucket{direction="inbound",source_workload="productpage-v1",le="0.005"} 60
trellis_request_duration_seconds_bucket{direction="inbound",source_workload="productpage-v1",le="0.05"} 100
trellis_request_duration_seconds_bucket{direction="inbound",source_workload="productpage-v1",le="+Inf"} 100
trellis_tcp_connections_opened_total{direction="inbound"} 5
trellis_tcp_connections_closed_total{direction="inbound"} 3
"#;

const AFTER: &str = r#"trellis_requests_total{direction="inbound",source_workload="productpage-v1",status_code="200",response_class="success"} 118
trellis_requests_total{direction="inbound",source_workload="productpage-v1",status_code="503",response_class="failure"} 2
trellis_requests_total{direction="outbound",destination_workload="ratings-v1",status_code="200",response_class="success"} 1999
trellis_request_duration_seconds_bucket{direction="inbound",source_workload="productpage-v1",le="0.005"} 70
trellis_request_duration_seconds_bucket{direction="inbound",source_workload="productpage-v1",le="0.05"} 119
trellis_request_duration_seconds_bucket{direction="inbound",source_workload="productpage-v1",le="+Inf"} 120
trellis_tcp_connections_opened_total{direction="inbound"} 6
trellis_tcp_connections_closed_total{direction="inbound"} 3
trellis_anomaly{kind="success_rate"} 1
trellis_anomaly{kind="latency"} 0
"#;

fn rows() -> Vec<StatRow> {
    let before = Counters::from_metrics(BEFORE);
    let after = Counters::from_metrics(AFTER);
    vec![
        row("default", "reviews-v2", &before, &after, 2.0),
        row("default", "details-v1", &after, &after, 2.0),
    ]
}

#[test]
fn inbound_deltas_only() {
    let r = &rows()[0];
    // 20 inbound requests in 2 s (outbound ignored), 18 of them successful.
    assert_eq!(r.rps, 10.0);
    assert_eq!(r.success, Some(0.9));
    // 10 of 20 under 5 ms: the median is the bucket's upper edge.
    assert!((r.latency_ms_p50.unwrap() - 5.0).abs() < 1e-9);
    // Rank 19 of 20: the 9th of 9 in (5ms, 50ms].
    assert!((r.latency_ms_p95.unwrap() - 50.0).abs() < 1e-9);
    // Rank 19.8 falls in +Inf: the highest finite bound.
    assert!((r.latency_ms_p99.unwrap() - 50.0).abs() < 1e-9);
    assert_eq!(r.tcp_conn, 3);
    assert_eq!(r.anomaly, ["success_rate"]);
    let idle = &rows()[1];
    assert_eq!(
        (idle.success, idle.rps, idle.latency_ms_p50),
        (None, 0.0, None)
    );
}

#[test]
fn counter_reset_counts_from_zero() {
    let before = Counters::from_metrics(AFTER);
    let after = Counters::from_metrics(BEFORE);
    let r = row("default", "x", &before, &after, 1.0);
    assert_eq!(r.rps, 100.0);
}

#[test]
fn interval_bounds() {
    assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
    assert!(parse_interval("10ms").is_err());
    assert!(parse_interval("2m").is_err());
}

fn golden(name: &str, actual: &str) {
    crate::golden::assert_golden("stat", name, actual);
}

#[test]
fn golden_table_and_json() {
    let rows = rows();
    golden(
        "table.txt",
        &render(&rows, false, OutputFormat::Table).unwrap(),
    );
    golden(
        "all-namespaces.txt",
        &render(&rows, true, OutputFormat::Table).unwrap(),
    );
    golden(
        "rows.json",
        &render(&rows, false, OutputFormat::Json).unwrap(),
    );
}
