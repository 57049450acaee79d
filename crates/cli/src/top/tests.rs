use super::*;
use crate::golden::assert_golden;

fn row(src: &str, dst: &str, path: &str, status: u16, ms: f64) -> TapRow {
    TapRow {
        direction: "outbound".into(),
        method: "GET".into(),
        path: path.into(),
        status,
        latency_ms: ms,
        source_workload: src.into(),
        destination_workload: dst.into(),
        ..TapRow::default()
    }
}

fn sample() -> Table {
    let mut t = Table::default();
    for (i, ms) in [3.0, 1.5, 12.0, 2.25].into_iter().enumerate() {
        let status = if i == 2 { 503 } else { 200 };
        t.record(&row(
            "productpage-v1",
            "reviews-v2",
            "/reviews/0",
            status,
            ms,
        ));
    }
    t.record(&row("productpage-v1", "details-v1", "/details/0", 200, 0.8));
    t.record(&row("productpage-v1", "details-v1", "/details/0", 200, 1.1));
    t.record(&row("", "productpage-v1", "/productpage", 200, 1250.0));
    t
}

#[test]
fn counts_best_worst_last_and_success() {
    let t = sample();
    let top = t.sorted();
    assert_eq!(t.total, 7);
    let reviews = top[0];
    assert_eq!(
        (reviews.path.as_str(), reviews.count, reviews.successes),
        ("/reviews/0", 4, 3)
    );
    assert_eq!(
        (reviews.best_ms, reviews.worst_ms, reviews.last_ms),
        (1.5, 12.0, 2.25)
    );
    assert_eq!(top[1].path, "/details/0");
    assert_eq!(top[2].source, "-");
}

#[test]
fn screen_golden() {
    let lines = sample().render(
        "trellis top productpage (default): 7 requests",
        "q: quit",
        100,
        10,
    );
    assert_eq!(lines.len(), 10);
    assert_golden("top", "screen.txt", &(lines.join("\n") + "\n"));
}

#[test]
fn a_small_screen_keeps_the_busiest_lines_and_the_status() {
    let lines = sample().render("title", "status", 20, 6);
    assert_eq!(lines.len(), 6);
    assert!(lines[3].starts_with("productpage-v1"), "{lines:?}");
    assert_eq!(lines[5], "status");
    assert!(lines.iter().all(|l| l.chars().count() <= 20));
}
