//! `trellis check` against the running demo: healthy, `--proxy` lists every proxy, JSON, and a
//! broken config file turns the config check into `×` with exit 1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use trellis_cli::{Cli, Command as Sub, check, proxyconfig, stat};

mod support;
use support::Demo;
use support::golden::{columns, golden, mask_ports};

/// Runs `trellis check <args>` in-process; returns (exit code, stdout).
fn run(args: &[&str]) -> (u8, String) {
    let argv = ["trellis", "check"].into_iter().chain(args.iter().copied());
    let Sub::Check(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("not check");
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = check::run(&args, &mut out, &mut err);
    (code, String::from_utf8(out).unwrap())
}

/// Runs `trellis proxy-config <args>` in-process; returns (exit code, stdout).
fn proxy_config(args: &[&str]) -> (u8, String) {
    let argv = ["trellis", "proxy-config"]
        .into_iter()
        .chain(args.iter().copied());
    let Sub::ProxyConfig(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("not proxy-config");
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = proxyconfig::run(&args, &mut out, &mut err);
    (code, String::from_utf8(out).unwrap())
}

/// Runs `trellis stat <args>` in-process; returns (exit code, stdout).
fn stat(args: &[&str]) -> (u8, String) {
    let argv = ["trellis", "stat"].into_iter().chain(args.iter().copied());
    let Sub::Stat(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("not stat");
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = stat::run(&args, &mut out, &mut err);
    (code, String::from_utf8(out).unwrap())
}

/// One `GET path` through the demo's entry over HTTP/1.1; returns the status line.
fn get(entry: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(entry).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: productpage\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or_default().to_string()
}

/// A table with its ports masked and every run of column padding made the three spaces that
/// separate kubectl's columns: column widths follow the masked values (a port's digits, a
/// rate's), so the golden holds the cells and their order, not the widths (the unit goldens from
/// recorded output check the alignment).
fn mask_table(table: &str) -> String {
    let mut out = String::new();
    for line in mask_ports(table).lines() {
        out.push_str(&columns(line));
        out.push('\n');
    }
    out
}

/// A `stat` table with every measured cell masked: the header, the names and the column count
/// are what a run of the demo fixes; rates and latencies are not.
fn mask_stat_table(table: &str) -> String {
    let mut lines = table.lines();
    let mut out = mask_table(lines.next().unwrap_or_default());
    for line in lines {
        let mut cells = line.split_whitespace();
        let name = cells.next().unwrap_or_default();
        let masked: Vec<&str> = std::iter::once(name).chain(cells.map(|_| "*")).collect();
        out.push_str(&masked.join("   "));
        out.push('\n');
    }
    out
}

/// `stat` JSON rows with every value but the namespace and name masked (the field names and
/// the rows are the contract; the numbers are live).
fn mask_stat_json(rows: &Value) -> String {
    let mut rows = rows.clone();
    for row in rows.as_array_mut().unwrap() {
        for (key, value) in row.as_object_mut().unwrap() {
            if key != "namespace" && key != "name" {
                *value = Value::String("*".into());
            }
        }
    }
    serde_json::to_string_pretty(&rows).unwrap() + "\n"
}

#[test]
fn check_the_demo_then_a_broken_file() {
    let config = tempfile::tempdir().unwrap();
    std::fs::copy(
        "../config/tests/fixtures/networking/virtual-service-reviews-jason-v2-v3.yaml",
        config.path().join("reviews.yaml"),
    )
    .unwrap();
    std::fs::copy(
        "../config/tests/fixtures/networking/destination-rule-all.yaml",
        config.path().join("rules.yaml"),
    )
    .unwrap();
    let demo = Demo::start(config.path());
    let status = &demo.status;
    let control = demo.control_url();

    // Every proxy connects and ACKs shortly after the demo reports ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (code, text) = loop {
        let (code, text) = run(&["--control", &control, "--proxy"]);
        if code == 0 || Instant::now() > deadline {
            break (code, text);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 0, "{text}");
    assert!(
        text.starts_with("trellis-control\n---------------\n√ control plane is reachable\n"),
        "{text}"
    );
    assert!(text.contains("√ config has no invalid resources"), "{text}");
    assert!(
        text.contains("√ every proxy has ACKed its configuration"),
        "{text}"
    );
    assert!(
        text.contains("√ proxy certificates are not near expiry"),
        "{text}"
    );
    let proxies = text
        .lines()
        .filter(|l| l.starts_with("√ proxy ") && l.contains("(admin "))
        .count();
    // Bookinfo's six sidecars and the ingress gateway.
    assert_eq!(proxies, 7, "{text}");
    assert!(text.ends_with("Status check results are √\n"), "{text}");
    golden("check", "demo-proxy.txt", &mask_ports(&text));
    let (code, json_text) = run(&["--control", &control, "--proxy", "-o", "json"]);
    assert_eq!(code, 0);
    let json: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(json["success"], true);
    assert_eq!(json["categories"][1]["categoryName"], "trellis-config");
    golden("check", "demo-proxy.json", &mask_ports(&json_text));
    // Plain `check` (no --proxy): the four sections, every line `√`.
    let (code, text) = run(&["--control", &control]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(
            "\ntrellis-version\n---------------\n√ control plane and CLI versions match\n"
        ),
        "{text}"
    );
    assert!(
        !text.contains("(admin "),
        "per-proxy lines need --proxy: {text}"
    );
    golden("check", "demo.txt", &mask_ports(&text));
    let (code, plain_json) = run(&["--control", &control, "-o", "json"]);
    assert_eq!(code, 0, "{plain_json}");
    let plain: Value = serde_json::from_str(&plain_json).unwrap();
    assert_eq!(plain["success"], true);
    assert_eq!(
        plain["categories"].as_array().unwrap().len(),
        4,
        "{plain:#}"
    );
    golden("check", "demo.json", &mask_ports(&plain_json));
    // `-o yaml`, as kubectl: the same document.
    let (code, yaml) = run(&["--control", &control, "--proxy", "-o", "yaml"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_yaml::from_str::<Value>(&yaml).unwrap(),
        json,
        "{yaml}"
    );

    // proxy-config by workload name: productpage's proxy holds the jason route.
    let (code, json) = proxy_config(&[
        "productpage-v1",
        "routes",
        "--control",
        &control,
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{json}");
    let json: Value = serde_json::from_str(&json).unwrap();
    let routes = json["routes"].as_array().unwrap();
    assert!(
        routes
            .iter()
            .any(|r| r["resource"] == "VirtualService default/reviews"
                && r["action"].as_str().unwrap().contains("subset v2 100%")),
        "{json:#}"
    );
    let (code, table) = proxy_config(&["productpage-v1.default", "--control", &control]);
    assert_eq!(code, 0);
    assert!(table.starts_with("LISTENERS\nNAME "), "{table}");
    assert!(table.contains("\nENDPOINTS\n"), "{table}");
    golden("proxyconfig", "demo-all.txt", &mask_table(&table));
    let (code, wide) = proxy_config(&["productpage-v1", "--control", &control, "-o", "wide"]);
    assert_eq!(code, 0);
    golden("proxyconfig", "demo-all-wide.txt", &mask_table(&wide));
    let (code, all_json) = proxy_config(&["productpage-v1", "--control", &control, "-o", "json"]);
    assert_eq!(code, 0);
    golden("proxyconfig", "demo-all.json", &mask_ports(&all_json));
    let (code, yaml) = proxy_config(&["productpage-v1", "--control", &control, "-o", "yaml"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_yaml::from_str::<Value>(&yaml).unwrap(),
        serde_json::from_str::<Value>(&all_json).unwrap()
    );
    assert_eq!(proxy_config(&["nobody", "--control", &control]).0, 64);
    // kubectl's `-n`: the same as `WORKLOAD.NS`.
    let (code, routes) = proxy_config(&[
        "productpage-v1",
        "-n",
        "default",
        "routes",
        "--control",
        &control,
    ]);
    assert_eq!(code, 0, "{routes}");
    assert!(
        routes.contains("VirtualService default/reviews"),
        "{routes}"
    );
    assert_eq!(
        proxy_config(&["productpage-v1", "-n", "shop", "--control", &control]).0,
        64
    );
    assert_eq!(
        proxy_config(&[
            "productpage-v1.default",
            "-n",
            "shop",
            "--control",
            &control
        ])
        .0,
        64
    );

    // stat while requests flow: productpage served them all, successfully.
    let entry = status["entry"].as_str().unwrap().to_string();
    let sender = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_millis(1500);
        let mut sent = 0;
        while Instant::now() < until {
            assert!(get(&entry, "/api/v1/products/0/reviews").contains(" 200 "));
            sent += 1;
        }
        sent
    });
    let (code, json) = stat(&[
        "deploy",
        "--control",
        &control,
        "--interval",
        "1s",
        "-o",
        "json",
    ]);
    assert!(sender.join().unwrap() > 0);
    assert_eq!(code, 0, "{json}");
    let rows: Value = serde_json::from_str(&json).unwrap();
    // Bookinfo's six workloads and the ingress gateway.
    assert_eq!(rows.as_array().unwrap().len(), 7, "{rows:#}");
    let productpage = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "productpage-v1")
        .unwrap();
    assert!(
        productpage["rps"].as_f64().unwrap() > 0.0,
        "{productpage:#}"
    );
    assert_eq!(productpage["success"], 1.0, "{productpage:#}");
    assert!(
        productpage["latency_ms_p99"].as_f64().unwrap() > 0.0,
        "{productpage:#}"
    );
    golden("stat", "demo-rows.json", &mask_stat_json(&rows));
    let (code, table) = stat(&["-A", "--control", &control, "--interval", "100ms"]);
    assert_eq!(code, 0);
    assert!(table.starts_with("NAMESPACE   NAME "), "{table}");
    let (code, table) = stat(&["--control", &control, "--interval", "100ms"]);
    assert_eq!(code, 0);
    golden("stat", "demo-table.txt", &mask_stat_table(&table));
    let (code, yaml) = stat(&["--control", &control, "--interval", "100ms", "-o", "yaml"]);
    assert_eq!(code, 0);
    let yaml: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(mask_stat_json(&yaml), mask_stat_json(&rows));

    // A broken file: the control plane refuses it and check says so, with exit 1.
    std::fs::copy(
        "tests/fixtures/validate/broken/field-error.yaml",
        config.path().join("broken.yaml"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (code, text) = loop {
        let (code, text) = run(&["--control", &control]);
        if code != 0 || Instant::now() > deadline {
            break (code, text);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("× config has no invalid resources\n"),
        "{text}"
    );
    assert!(text.contains("spec.http[0].timeout"), "{text}");
    // The file and the resource are named once (the control plane's message names them already).
    let line = text
        .lines()
        .find(|l| l.contains("spec.http[0].timeout"))
        .unwrap();
    assert_eq!(line.matches("broken.yaml").count(), 1, "{line}");
    assert!(text.contains("hint: fix the files"), "{text}");
    assert!(text.ends_with("Status check results are ×\n"), "{text}");

    // Nothing listening: × reachable, the rest skipped.
    let (code, text) = run(&["--control", "http://127.0.0.1:9"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("× control plane is reachable"), "{text}");
    golden("check", "unreachable.txt", &text);
    let (code, json_text) = run(&["--control", "http://127.0.0.1:9", "-o", "json"]);
    assert_eq!(code, 1, "{json_text}");
    golden("check", "unreachable.json", &json_text);
    assert_eq!(run(&["--control", "nowhere"]).0, 64);
}

/// `--proxy` on a cluster runs the cluster checks (here: an unreadable kubeconfig, `×` and exit
/// 1; the data-plane section itself is tested in k8s_check.rs); `-n` needs `--proxy` there.
#[test]
fn kubernetes_proxy_runs_the_cluster_checks() {
    let run = |extra: &[&str]| {
        let argv = [
            "trellis",
            "check",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ]
        .into_iter()
        .chain(extra.iter().copied());
        let Sub::Check(args) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not check");
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = check::run(&args, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    };
    let (code, out, err) = run(&["--proxy", "-n", "shop"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(!err.contains("not implemented"), "{err}");
    assert!(out.contains("× can initialize the client"), "{out}");
    let (code, _, err) = run(&["-n", "shop"]);
    assert_eq!(code, 64);
    assert!(err.contains("-n/--namespace applies to `--proxy`"), "{err}");
}
