//! Every metric the Grafana dashboards in `grafana/` query is exposed by a live proxy or the
//! control plane of the Bookinfo demo (after one request crossed it), except the few named in
//! [`CONDITIONAL`] with the reason they may be absent.
//!
//! Needs the built binaries (`cargo build --workspace --bins`); everything on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_testkit::bins::bin;
use trellis_testkit::process::ManagedProcess;
use trellis_testkit::tools::http_get;

/// Metrics a dashboard may use that a fresh demo does not necessarily expose, and why.
const CONDITIONAL: &[(&str, &str)] = &[(
    "trellis_control_certificates_issued_total",
    "exposed by the control plane's CA (identity work) once it issues certificates",
)];

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../grafana");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path, v));
        }
    }
    assert!(
        out.len() >= 3,
        "mesh, workload and control-plane dashboards"
    );
    out
}

/// `trellis_*` names in a PromQL expression.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("trellis_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        into.insert(expr[start..end].to_owned());
        i = end;
    }
}

fn exposed_names(text: &str, into: &mut BTreeSet<String>) {
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        into.insert(line[..end].to_owned());
    }
}

#[test]
fn every_dashboard_metric_exists() {
    let mut wanted = BTreeSet::new();
    for (path, d) in dashboards() {
        let panels = d["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{}", path.display());
        for p in panels {
            for t in p["targets"].as_array().unwrap() {
                metric_names(t["expr"].as_str().unwrap(), &mut wanted);
            }
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let status_file = dir.path().join("status.json");
    let mut cmd = Command::new(bin("trellis"));
    cmd.args(["demo", "--no-load", "--entry", "127.0.0.1:0"])
        .args(["--dashboard", "127.0.0.1:0", "--status-file"])
        .arg(&status_file);
    let mut demo = ManagedProcess::spawn("demo", cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status: Value = loop {
        if let Ok(bytes) = std::fs::read(&status_file) {
            break serde_json::from_slice(&bytes).unwrap();
        }
        assert!(demo.is_running(), "the demo exited:\n{}", demo.log());
        assert!(Instant::now() < deadline, "no status file:\n{}", demo.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let entry: SocketAddr = status["entry"].as_str().unwrap().parse().unwrap();
    let (code, _) = http_get(entry, "/api/v1/products/0/reviews").unwrap();
    assert_eq!(code, 200);
    // The request is counted when its response body ends; the answer is in by now.

    let mut exposed = BTreeSet::new();
    for w in status["workloads"].as_array().unwrap() {
        let admin: SocketAddr = w["admin"].as_str().unwrap().parse().unwrap();
        let (code, text) = http_get(admin, "/metrics").unwrap();
        assert_eq!(code, 200);
        exposed_names(&text, &mut exposed);
    }
    let control: SocketAddr = status["control"]["http"].as_str().unwrap().parse().unwrap();
    let (code, text) = http_get(control, "/metrics").unwrap();
    assert_eq!(code, 200);
    exposed_names(&text, &mut exposed);

    let missing: Vec<&String> = wanted
        .iter()
        .filter(|m| !exposed.contains(*m))
        .filter(|m| !CONDITIONAL.iter().any(|(c, _)| c == m))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboards query metrics nothing exposes: {missing:?}\nexposed: {exposed:?}"
    );
    demo.terminate(Duration::from_secs(10));
}
