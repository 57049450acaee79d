//! The dashboard in a real browser: Debian's headless Chromium, driven over WebDriver by
//! `chromedriver` (started on a free port; the client is the few HTTP calls in
//! `dashboard_browser/webdriver.rs`), against
//! the built `trellis demo --no-load` with the real `trellis-proxy` and `trellis-control` (run
//! `cargo build --workspace --bins` first) and load this test sends to the Bookinfo entry.
//!
//! What a user sees is read back from the page: the graph's nodes and the labels on its edges
//! (their `data-*` attributes carry the numbers the label prints), the details panel, the tap
//! table. With `TRELLIS_UPDATE_SCREENSHOTS=1` the tests also save PNGs to `docs/img/`.
//!
//! Needs `chromium` and `chromium-driver` (scripts/test.sh installs them);
//! `TRELLIS_SKIP_BROWSER=1` skips these tests on a machine without them.

// clippy's allow-unwrap-in-tests covers #[test] functions only, not this file's helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
#[path = "dashboard_browser/webdriver.rs"]
mod webdriver;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Demo;
use webdriver::{Browser, Group, free_port, http};

const BOOKINFO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/tests/fixtures");

fn skip() -> bool {
    if std::env::var_os("TRELLIS_SKIP_BROWSER").is_some_and(|v| v == "1") {
        eprintln!("TRELLIS_SKIP_BROWSER=1: skipping the browser test");
        return true;
    }
    false
}

fn bookinfo(file: &str) -> PathBuf {
    Path::new(BOOKINFO).join(file)
}

// ---------------------------------------------------------------------------------------------
// What the page shows

/// The graph as drawn: nodes (id, failing) and edge labels (id, numbers, padlock, failing).
const READ_GRAPH: &str = r#"
const nodes = [...document.querySelectorAll('#graph-svg g.node')].map((n) => ({
  id: n.dataset.id, failing: n.dataset.failing === 'true', label: n.getAttribute('aria-label') }));
const edges = [...document.querySelectorAll('#graph-svg g.edge-label')].map((e) => ({
  id: e.dataset.id, rps: Number(e.dataset.rps), success: Number(e.dataset.success),
  requests: Number(e.dataset.requests), failing: e.dataset.failing === 'true',
  padlock: !!e.querySelector('.padlock'), text: e.textContent }));
const paths = document.querySelectorAll('#graph-svg path.edge').length;
const red = document.querySelectorAll('#graph-svg path.edge.failing').length;
return { nodes, edges, paths, red };
"#;

fn edge<'a>(graph: &'a Value, id: &str) -> Option<&'a Value> {
    graph["edges"].as_array()?.iter().find(|e| e["id"] == id)
}

fn rps(graph: &Value, id: &str) -> f64 {
    edge(graph, id)
        .and_then(|e| e["rps"].as_f64())
        .unwrap_or(0.0)
}

const PRODUCTPAGE_TO_REVIEWS: &str = "workload/default/productpage-v1->service/default/reviews";

fn reviews_to(version: &str) -> String {
    format!("service/default/reviews->workload/default/reviews-{version}")
}

// ---------------------------------------------------------------------------------------------
// Load: a few threads asking the entry for a product's reviews until stopped.

struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// About `threads` × 8 requests a second; every other one as `end-user: jason` when `jason`.
    fn start(entry: SocketAddr, threads: usize, jason: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, sent) = (stop.clone(), sent.clone());
                std::thread::spawn(move || {
                    // Bounded: the tests stop the load within a couple of minutes.
                    for i in 0..20_000u64 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let headers: &[(&str, &str)] = if jason && i % 2 == 0 {
                            &[("end-user", "jason")]
                        } else {
                            &[]
                        };
                        // Every third request is the product page, which calls details too.
                        let path = if i % 3 == 2 {
                            "/productpage"
                        } else {
                            "/api/v1/products/0/reviews"
                        };
                        let _ =
                            std::panic::catch_unwind(|| http(entry, "GET", path, headers, None));
                        sent.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(125));
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            threads,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn entry(demo: &Demo) -> SocketAddr {
    demo.status["entry"].as_str().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------

/// The graph shows every Bookinfo service and workload with the edges between them, the numbers
/// on the reviews edge move while load runs, a keyboard user can open a workload's charts and
/// proxies, the tap table fills, and the page loads in under a second.
#[test]
fn graph_shows_bookinfo_and_moves_with_load() {
    if skip() {
        return;
    }
    let config = tempfile::tempdir().unwrap();
    let demo = Demo::start(config.path());
    let browser = Browser::start();

    let started = Instant::now();
    browser.goto(&format!("{}/", demo.control_url()));
    let load_ms = browser
        .run(
            "const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd;",
            json!([]),
        )
        .as_f64()
        .unwrap();
    assert!(
        load_ms > 0.0 && load_ms < 1000.0,
        "the page loaded in {load_ms} ms"
    );
    // The first graph is drawn from the first API answers, within a second of the load too.
    browser.wait_for("the first graph", Duration::from_secs(3), READ_GRAPH, |g| {
        g["nodes"].as_array().is_some_and(|n| !n.is_empty())
    });
    eprintln!(
        "page loaded in {load_ms:.0} ms; graph drawn {:?} after navigation began",
        started.elapsed()
    );

    let load = Load::start(entry(&demo), 3, false);
    let services = ["details", "productpage", "ratings", "reviews"];
    let workloads = [
        "details-v1",
        "productpage-v1",
        "ratings-v1",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
    ];
    let mut expected_edges: Vec<String> = vec![
        "external->workload/default/productpage-v1".into(),
        PRODUCTPAGE_TO_REVIEWS.into(),
        "workload/default/productpage-v1->service/default/details".into(),
        "service/default/details->workload/default/details-v1".into(),
        "workload/default/reviews-v2->service/default/ratings".into(),
        "workload/default/reviews-v3->service/default/ratings".into(),
        "service/default/ratings->workload/default/ratings-v1".into(),
    ];
    expected_edges.extend(["v1", "v2", "v3"].map(reviews_to));
    let graph = browser.wait_for(
        "every Bookinfo node and edge with traffic",
        Duration::from_secs(30),
        READ_GRAPH,
        |g| {
            let has_node =
                |id: String| g["nodes"].as_array().unwrap().iter().any(|n| n["id"] == id);
            services
                .iter()
                .all(|s| has_node(format!("service/default/{s}")))
                && workloads
                    .iter()
                    .all(|w| has_node(format!("workload/default/{w}")))
                && expected_edges.iter().all(|e| rps(g, e) > 0.0)
        },
    );
    for id in &expected_edges {
        let e = edge(&graph, id).unwrap();
        // Every hop inside the mesh is mutual TLS; the callers outside are not.
        assert_eq!(
            e["padlock"],
            json!(!id.starts_with("external")),
            "{id}: {e}"
        );
        assert_eq!(e["failing"], json!(false), "{id}: {e}");
        assert!(e["text"].as_str().unwrap().contains("rps"), "{e}");
    }
    assert_eq!(graph["red"], json!(0));

    // The numbers on the reviews edge move while load runs (requests in the window grow as the
    // window fills, then rates change scrape by scrape).
    let first = edge(&graph, PRODUCTPAGE_TO_REVIEWS).unwrap().clone();
    let moved = browser.wait_for(
        "the reviews edge's numbers to change",
        Duration::from_secs(15),
        READ_GRAPH,
        |g| {
            edge(g, PRODUCTPAGE_TO_REVIEWS)
                .is_some_and(|e| e["requests"] != first["requests"] && e["text"] != first["text"])
        },
    );
    let now = edge(&moved, PRODUCTPAGE_TO_REVIEWS).unwrap();
    eprintln!("reviews edge: {} then {}", first["text"], now["text"]);
    let sent = load.sent.load(Ordering::Relaxed);
    assert!(sent > 0);
    let r = now["rps"].as_f64().unwrap();
    assert!(
        (1.0..100.0).contains(&r),
        "the reviews edge's rate {r} is about the load's (~24 rps)"
    );
    browser.screenshot("dashboard-graph.png");

    // Keyboard only: Tab to productpage-v1's node, Enter opens its charts and proxies.
    let mut focused = Value::Null;
    for _ in 0..40 {
        browser.keys(&["\u{E004}"]);
        focused = browser.run("return document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.id || null : null;", json!([]));
        if focused == "workload/default/productpage-v1" {
            break;
        }
    }
    assert_eq!(
        focused, "workload/default/productpage-v1",
        "Tab reaches the graph's nodes"
    );
    browser.keys(&["\u{E007}"]);
    let details = browser.wait_for(
        "productpage-v1's charts and proxy",
        Duration::from_secs(10),
        r#"return { title: document.getElementById('details-name').textContent,
                    charts: [...document.querySelectorAll('#charts svg[data-chart]')].map((c) => [c.dataset.chart, Number(c.dataset.points), c.getAttribute('aria-label')]),
                    proxies: [...document.querySelectorAll('#proxies-body tr')].map((r) => r.textContent) };"#,
        |d| {
            d["title"].as_str().is_some_and(|t| t.contains("productpage-v1"))
                && d["charts"].as_array().is_some_and(|c| c.len() == 3 && c.iter().all(|c| c[1].as_f64() >= Some(1.0)))
                && d["proxies"].as_array().is_some_and(|p| p.len() == 1 && p[0].as_str().unwrap().contains("current"))
        },
    );
    eprintln!("details: {details}");

    // The live tap: the form was filled in from the selected node (productpage-v1); tap reviews.
    browser.run(
        "const f = document.getElementById('tap-form'); f.workload.value = 'reviews'; \
         document.getElementById('tap-start').click(); return null;",
        json!([]),
    );
    let rows = browser.wait_for(
        "tap rows",
        Duration::from_secs(15),
        "return [...document.querySelectorAll('#tap-body tr')].map((r) => [...r.cells].map((c) => c.textContent));",
        |rows| {
            rows.as_array()
                .is_some_and(|r| r.len() >= 3 && r[0].as_array().is_some_and(|c| c.len() == 9))
        },
    );
    for row in rows.as_array().unwrap() {
        let cells: Vec<&str> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        // Method, path, status and the reviews proxies on one end of each request.
        assert_eq!(cells[1], "GET", "{cells:?}");
        assert!(
            cells[3].starts_with("/reviews/") || cells[3].starts_with("/ratings/"),
            "{cells:?}"
        );
        assert_eq!(cells[4], "200", "{cells:?}");
        assert!(
            cells[6].starts_with("reviews-") || cells[7].starts_with("reviews-"),
            "{cells:?}"
        );
        assert_eq!(
            cells[8], "mTLS",
            "every hop of the reviews proxies is meshed: {cells:?}"
        );
    }
    browser.run(
        "document.getElementById('tap-stop').click(); return null;",
        json!([]),
    );
    browser.run(
        "document.getElementById('tap').scrollIntoView(); return null;",
        json!([]),
    );
    browser.screenshot("dashboard-tap.png");

    // Dark: the system's colour scheme switches the page's colours.
    browser.cdp(
        "Emulation.setEmulatedMedia",
        json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
    );
    browser.run("window.scrollTo(0, 0); return null;", json!([]));
    let background = browser.run(
        "return getComputedStyle(document.body).backgroundColor;",
        json!([]),
    );
    assert_eq!(background, "rgb(13, 17, 23)", "dark background");
    browser.screenshot("dashboard-dark.png");
    drop(load);
}

/// A 90/10 split applied to the demo's watched config shows on the reviews edges within a minute,
/// and a fault abort on ratings turns its edges and the service red.
#[test]
fn split_and_failing_service_show_on_the_graph() {
    if skip() {
        return;
    }
    let config = tempfile::tempdir().unwrap();
    std::fs::copy(
        bookinfo("networking/destination-rule-all.yaml"),
        config.path().join("destination-rule-all.yaml"),
    )
    .unwrap();
    let demo = Demo::start(config.path());
    let browser = Browser::start();
    // A 10 s window (the page's selector, set from its address) so changes show sooner.
    browser.goto(&format!("{}/?window=10", demo.control_url()));
    let _load = Load::start(entry(&demo), 3, true);
    browser.wait_for(
        "traffic on the reviews edges",
        Duration::from_secs(30),
        READ_GRAPH,
        |g| {
            ["v1", "v2", "v3"]
                .iter()
                .all(|v| rps(g, &reviews_to(v)) > 0.0)
        },
    );

    // Written beside, then renamed: the control plane never reads half a file.
    let apply = |from: &str, name: &str| {
        let staged = config.path().join(format!("{name}.staged"));
        std::fs::copy(bookinfo(from), &staged).unwrap();
        std::fs::rename(&staged, config.path().join(name)).unwrap();
    };
    apply(
        "networking/virtual-service-reviews-90-10.yaml",
        "reviews.yaml",
    );
    let applied = Instant::now();
    let split = browser.wait_for(
        "the 90/10 split on the reviews edges",
        Duration::from_secs(60),
        READ_GRAPH,
        |g| {
            let (v1, v2, v3) = (
                rps(g, &reviews_to("v1")),
                rps(g, &reviews_to("v2")),
                rps(g, &reviews_to("v3")),
            );
            let total = v1 + v2 + v3;
            total > 0.0
                && (0.8..=0.97).contains(&(v1 / total))
                && (0.03..=0.2).contains(&(v2 / total))
                && v3 == 0.0
        },
    );
    eprintln!(
        "90/10 shown {:?} after the change: v1 {:.1} rps, v2 {:.1} rps",
        applied.elapsed(),
        rps(&split, &reviews_to("v1")),
        rps(&split, &reviews_to("v2"))
    );
    browser.screenshot("dashboard-split.png");

    // Istio's sample abort: ratings answers 500 to jason (every other request here).
    apply(
        "networking/virtual-service-ratings-test-abort.yaml",
        "ratings.yaml",
    );
    let red = browser.wait_for(
        "ratings to turn red",
        Duration::from_secs(45),
        READ_GRAPH,
        |g| {
            let failing_edge = edge(g, "workload/default/reviews-v2->service/default/ratings")
                .is_some_and(|e| e["failing"] == true);
            let failing_node = g["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["id"] == "service/default/ratings" && n["failing"] == true);
            // Red as soon as the window's success rate drops under 95%; then, once the
            // window holds only faulted traffic, about half of reviews-v2's calls fail.
            let half = edge(g, "workload/default/reviews-v2->service/default/ratings")
                .and_then(|e| e["success"].as_f64())
                .is_some_and(|s| (0.2..0.8).contains(&s));
            failing_edge && failing_node && half && g["red"].as_u64() >= Some(1)
        },
    );
    let e = edge(&red, "workload/default/reviews-v2->service/default/ratings").unwrap();
    eprintln!("ratings red: {}", e["text"]);
    // The workload behind ratings is fine: the fault is the callers' proxies' doing.
    let ratings_v1 = red["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "workload/default/ratings-v1")
        .unwrap();
    assert_eq!(ratings_v1["failing"], json!(false), "{ratings_v1}");
    browser.screenshot("dashboard-failing.png");
}

/// `TRELLIS_PROMETHEUS_URL`: the control plane takes the dashboard's numbers from a real
/// Prometheus (Debian's `prometheus`) scraping the proxies, not from the proxies themselves:
/// no numbers while that Prometheus is down, numbers once it scrapes.
#[test]
fn graph_numbers_can_come_from_prometheus() {
    let Some(prometheus) = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        panic!("prometheus is not installed: run scripts/test.sh or apt-get install prometheus");
    };
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let prom_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let prom_url = format!("http://{prom_addr}");
    let demo = Demo::start_with_env(&config, &[("TRELLIS_PROMETHEUS_URL", &prom_url)]);
    let status = &demo.status;
    let control: SocketAddr = status["control"]["http"].as_str().unwrap().parse().unwrap();
    let entry: SocketAddr = status["entry"].as_str().unwrap().parse().unwrap();
    let _load = Load::start(entry, 3, false);
    let graph = || -> Value {
        let (code, body) = http(control, "GET", "/api/v1/graph?window=10", &[], None);
        assert_eq!(code, 200);
        serde_json::from_slice(&body).unwrap()
    };
    let reviews_rps = |g: &Value| {
        g["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == PRODUCTPAGE_TO_REVIEWS)
            .and_then(|e| e["stats"]["rps"].as_f64())
            .unwrap_or(0.0)
    };

    // Load runs, but nothing answers at the Prometheus address: no numbers (the proxies, which
    // would have them, are not what is read).
    std::thread::sleep(Duration::from_secs(6));
    let g = graph();
    assert!(g["updated_at_ms"].is_u64(), "rounds run: {g}");
    assert_eq!(reviews_rps(&g), 0.0, "{g}");

    let mut targets = String::new();
    for w in status["workloads"].as_array().unwrap() {
        targets.push_str(&format!("          - '{}'\n", w["admin"].as_str().unwrap()));
    }
    let prom_config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: trellis\n    \
             static_configs:\n      - targets:\n{targets}"
        ),
    )
    .unwrap();
    let prom = Command::new(prometheus)
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let _prom = Group(prom);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let g = graph();
        let r = reviews_rps(&g);
        if r > 1.0 {
            eprintln!("from Prometheus: productpage -> reviews {r:.1} rps");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no numbers from Prometheus after 40 s: {g}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
