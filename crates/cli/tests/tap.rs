//! `trellis tap` and the tap endpoints against a running demo with traffic: rows arrive with
//! the right fields, filters hold, the bounds end the stream, bad input is refused with the
//! parameter named, and one proxy's admin `/tap` streams to `curl -N`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use trellis_cli::{Cli, Command as Sub, tap};

mod support;
use support::Demo;
use support::golden::{golden, mask_value};

/// Runs `trellis tap <args>` in-process; returns (exit code, stdout, stderr).
fn tap(args: &[&str]) -> (u8, String, String) {
    let argv = ["trellis", "tap"].into_iter().chain(args.iter().copied());
    let Sub::Tap(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("not tap");
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = tap::run(&args, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

/// Requests to the demo's entry every 20 ms until stopped (at most 60 s): the traffic to tap.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u32>>,
}

impl Load {
    fn start(entry: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(60);
            let mut ok = 0;
            while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                if get(&entry, "/productpage").contains(" 200 ") {
                    ok += 1;
                }
                // The load's pace, not a wait for a state.
                std::thread::sleep(Duration::from_millis(20));
            }
            ok
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One `GET path` through the demo's entry; returns the status line.
fn get(entry: &str, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(entry) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: productpage\r\nConnection: close\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_string()
}

/// Replaces the value of `key=` up to the next space with `mask`.
fn mask(line: &str, key: &str, mask: &str) -> String {
    mask_value(line, key, &[' '], mask)
}

/// What changes from one run to the next in a `table`/`wide` line: the latency, the duration
/// and the time. Everything else (names, identities, status, bytes) the demo fixes.
fn mask_line(line: &str) -> String {
    let line = mask(line, " latency=", "LATENCY");
    let line = mask(&line, " duration=", "DURATION");
    mask(&line, " time=", "TIME")
}

/// The same for a JSON row, on its text as printed (so the golden keeps the wire's field
/// order): the value after `"key":` up to the next `,` or `}` (these values hold neither).
fn mask_json(line: &str) -> String {
    let mut line = line.to_string();
    for (key, mask) in [
        ("\"time\":", "\"TIME\""),
        ("\"latency_ms\":", "\"LATENCY\""),
        ("\"duration_ms\":", "\"DURATION\""),
    ] {
        line = mask_value(&line, key, &[',', '}'], mask);
    }
    line
}

/// The same for YAML documents: the values of the `time`, `latency_ms` and `duration_ms` keys.
fn mask_yaml(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let masked = match line.split_once(": ") {
            Some(("time", _)) => "time: TIME".to_string(),
            Some(("latency_ms", _)) => "latency_ms: LATENCY".to_string(),
            Some(("duration_ms", _)) => "duration_ms: DURATION".to_string(),
            _ => line.to_string(),
        };
        out.push_str(&masked);
        out.push('\n');
    }
    out
}

/// Full goldens of every output format, for productpage's calls to reviews-v1 (one destination,
/// so the response bytes and identities are fixed; only times and latencies are masked).
#[test]
fn tap_goldens_against_the_demo() {
    let config = tempfile::tempdir().unwrap();
    let demo = Demo::start(config.path());
    let control = demo.control_url();
    let entry = demo.status["entry"].as_str().unwrap().to_string();
    let _load = Load::start(entry);
    let base = [
        "productpage",
        "--control",
        &control,
        "--to",
        "reviews-v1",
        "--direction",
        "outbound",
        "--max-rows",
        "3",
        "--max-seconds",
        "20",
    ];
    for (output, name) in [
        ("table", "demo-table.txt"),
        ("wide", "demo-wide.txt"),
        ("json", "demo-rows.ndjson"),
        ("yaml", "demo-rows.yaml"),
    ] {
        let args: Vec<&str> = base.iter().copied().chain(["-o", output]).collect();
        let (code, out, err) = tap(&args);
        assert_eq!(code, 0, "{output}: {err}");
        assert_eq!(err, "tapping productpage-v1\n", "{output}");
        let masked = match output {
            "json" => out.lines().map(|l| mask_json(l) + "\n").collect(),
            "yaml" => mask_yaml(&out),
            _ => out.lines().map(|l| mask_line(l) + "\n").collect(),
        };
        golden("tap", name, &masked);
    }
}

#[test]
fn tap_the_demo() {
    let config = tempfile::tempdir().unwrap();
    let demo = Demo::start(config.path());
    let control = demo.control_url();
    let entry = demo.status["entry"].as_str().unwrap().to_string();
    let _load = Load::start(entry);

    // JSON: productpage's calls to reviews, with every documented field.
    let started = Instant::now();
    let (code, out, err) = tap(&[
        "productpage",
        "--control",
        &control,
        "--path",
        "/reviews",
        "--max-rows",
        "5",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("tapping productpage-v1"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 5, "the row bound ends the stream: {out}");
    for r in &rows {
        assert_eq!(r["direction"], "outbound", "{r}");
        assert_eq!(r["method"], "GET", "{r}");
        assert_eq!(r["path"], "/reviews/0", "{r}");
        assert_eq!(r["authority"], "reviews:9080", "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["response_class"], "success", "{r}");
        assert_eq!(r["source_workload"], "productpage-v1", "{r}");
        assert_eq!(r["source_namespace"], "default", "{r}");
        assert!(
            r["destination_workload"]
                .as_str()
                .unwrap()
                .starts_with("reviews-v"),
            "{r}"
        );
        assert_eq!(
            r["destination_service"], "reviews.default.svc.cluster.local",
            "{r}"
        );
        assert_eq!(
            r["destination_identity"], "spiffe://cluster.local/ns/default/sa/bookinfo-reviews",
            "{r}"
        );
        assert_eq!(r["tls"], true, "{r}");
        assert!(r["latency_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["response_bytes"].as_u64().unwrap() > 0, "{r}");
        assert!(r["time"].as_str().unwrap().ends_with('Z'), "{r}");
    }
    // The shape (field names) is a contract with the dashboard: golden.
    let keys: Vec<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let golden = std::fs::read_to_string("tests/fixtures/tap/golden/json-fields.txt").unwrap();
    assert_eq!(keys.join("\n") + "\n", golden, "tap row fields");

    // YAML: one document per row, the same fields as JSON.
    let (code, out, err) = tap(&[
        "productpage",
        "--control",
        &control,
        "--path",
        "/reviews",
        "--max-rows",
        "2",
        "-o",
        "yaml",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("---\n"), "{out}");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&out)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2, "{out}");
    for d in &docs {
        let mut fields: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want: Vec<&str> = golden.lines().collect();
        fields.sort_unstable();
        want.sort_unstable();
        assert_eq!(fields, want, "{out}");
        assert_eq!(d["path"], "/reviews/0", "{d}");
        assert_eq!(d["source_workload"], "productpage-v1", "{d}");
    }

    // Table lines, masked where values vary (latency, which reviews version answered).
    let (code, out, err) = tap(&[
        "deploy/productpage",
        "--control",
        &control,
        "--to",
        "reviews",
        "--direction",
        "outbound",
        "--max-rows",
        "3",
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<String> = out
        .lines()
        .map(|l| mask(&mask(l, " latency=", "X"), " dst=", "reviews-vN"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    for l in &lines {
        assert_eq!(
            l,
            "rsp proxy=out src=productpage-v1 dst=reviews-vN tls=true :method=GET \
             :authority=reviews:9080 :path=/reviews/0 :status=200 latency=X"
        );
    }

    // The app name taps every version; inbound rows carry the caller's verified identity.
    let (code, out, err) = tap(&[
        "reviews",
        "--control",
        &control,
        "--direction",
        "inbound",
        "--max-rows",
        "6",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("reviews-v1, reviews-v2, reviews-v3"), "{err}");
    for l in out.lines() {
        let r: Value = serde_json::from_str(l).unwrap();
        assert_eq!(r["direction"], "inbound", "{r}");
        assert_eq!(r["source_workload"], "productpage-v1", "{r}");
        assert_eq!(
            r["source_identity"], "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
            "{r}"
        );
        assert_eq!(r["tls"], true, "{r}");
    }

    // Filters that match nothing: the time bound ends the stream, with no rows.
    let started = Instant::now();
    let (code, out, err) = tap(&[
        "productpage",
        "--control",
        &control,
        "--method",
        "POST",
        "--status",
        "5xx",
        "--max-seconds",
        "2",
    ]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "{took:?}"
    );

    // Bad input: the parameter is named; usage errors exit 64, a missing workload 1.
    let (code, _, err) = tap(&["productpage", "--control", &control, "--status", "6xx"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("status=\"6xx\""), "{err}");
    let (code, _, err) = tap(&["nobody", "--control", &control, "--max-seconds", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no workload \"nobody\""), "{err}");
    let (code, _, err) = tap(&["productpage", "--control", "http://127.0.0.1:1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not reachable"), "{err}");

    // One proxy's admin endpoint, read by curl as it streams (-N: no buffering).
    let admin = demo.status["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["workload"] == "details-v1")
        .unwrap()["admin"]
        .as_str()
        .unwrap()
        .to_string();
    let curl = Command::new("curl")
        .args(["-sSN", "--max-time", "20"])
        .arg(format!(
            "http://{admin}/tap?max_rows=2&direction=inbound&path=/details"
        ))
        .output()
        .expect("curl");
    assert!(curl.status.success(), "{curl:?}");
    let text = String::from_utf8(curl.stdout).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows.iter()
            .all(|r| r["destination_workload"] == "details-v1")
    );
    let bad = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{admin}/tap?max_rows=-1"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&bad.stdout), "400");
    let post = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .arg(format!("http://{admin}/tap"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&post.stdout), "405");
    let metrics = Command::new("curl")
        .arg(format!("http://{admin}/metrics"))
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("trellis_tap_dropped_rows_total "),
        "{metrics}"
    );
    assert!(metrics.contains("trellis_tap_subscribers "), "{metrics}");
}
