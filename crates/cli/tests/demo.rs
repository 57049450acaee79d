//! End to end: the built `trellis demo` with the real `trellis-proxy` and `trellis-control`
//! (found next to `trellis` in the target directory: run `cargo build --workspace --bins`
//! first), all on 127.0.0.1 with ports chosen by the kernel.

// clippy's allow-unwrap-in-tests covers #[test] functions only, not this file's helpers; in a
// test a failed unwrap is a failed test, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Only its status-file wait: this test starts the demo with flags of its own.
#[allow(dead_code)]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustix::process::{Pid, Signal, kill_process, kill_process_group};
use serde_json::Value;

/// The demo in its own process group, so that a failing test can kill it and all its children.
struct Demo {
    child: Child,
    log: PathBuf,
}

impl Demo {
    /// `trellis demo --no-load` on kernel-chosen ports, with `--config-dir` when given.
    fn start(config_dir: Option<&Path>, status_file: &Path, log: PathBuf) -> Demo {
        let mut args = vec!["--no-load".as_ref()];
        if let Some(dir) = config_dir {
            args.extend(["--config-dir".as_ref(), dir.as_os_str()]);
        }
        Demo::start_with(&args, status_file, log)
    }

    /// `trellis demo` on kernel-chosen ports with `args`.
    fn start_with(args: &[&std::ffi::OsStr], status_file: &Path, log: PathBuf) -> Demo {
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_trellis"));
        command.args([
            "demo",
            "--entry",
            "127.0.0.1:0",
            "--dashboard",
            "127.0.0.1:0",
        ]);
        let child = command
            .args(args)
            .arg("--status-file")
            .arg(status_file)
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap();
        Demo { child, log }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The status file, once written (60 s at most).
    async fn status(&mut self, status_file: &Path) -> Value {
        // Blocking (a bounded poll), on this worker only: nothing else runs yet.
        tokio::task::block_in_place(|| {
            support::wait_status_file(&mut self.child, status_file, &self.log)
        })
    }

    /// How the demo exited, within `within`.
    async fn exit_within(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return exit;
            }
            assert!(
                Instant::now() < deadline,
                "the demo still runs after {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The control plane's and every proxy's pid, from the status file.
fn child_pids(status: &Value) -> Vec<u32> {
    let mut pids = vec![status["control"]["pid"].as_u64().unwrap()];
    pids.extend(
        status["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["pid"].as_u64().unwrap()),
    );
    pids.into_iter()
        .map(|pid| u32::try_from(pid).unwrap())
        .collect()
}

async fn all_gone(pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    while let Some(pid) = pids.iter().find(|pid| alive(**pid)) {
        assert!(Instant::now() < deadline, "child {pid} outlived the demo");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // On success the group is already gone; on failure this leaves nothing behind.
        let _ = kill_process_group(self.pid(), Signal::KILL);
        let _ = self.child.wait();
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes: it only waits for its parent to reap it.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn get(client: &HttpClient, addr: &str, path: &str, user: Option<&str>) -> (u16, String) {
    let mut request = http::Request::get(format!("http://{addr}{path}"));
    if let Some(user) = user {
        request = request.header("end-user", user);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let exchange = async {
        let response = client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET http://{addr}{path} timed out"))
}

async fn services(client: &HttpClient, http: &str) -> BTreeSet<String> {
    let (status, body) = get(client, http, "/api/v1/services", None).await;
    assert_eq!(status, 200, "{body}");
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    list.iter()
        .map(|s| {
            format!(
                "{}/{}",
                s["namespace"].as_str().unwrap(),
                s["name"].as_str().unwrap()
            )
        })
        .collect()
}

/// Polls `services` until `check` holds, for at most `within`.
async fn services_until(
    client: &HttpClient,
    http: &str,
    within: Duration,
    check: impl Fn(&BTreeSet<String>) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check(&services(client, http).await) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const REVIEWS_V1_SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: reviews-v1
  namespace: default
spec:
  ports:
  - port: 9080
    name: http
  selector:
    app: reviews
    version: v1
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_bookinfo_through_the_mesh_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let config_dir = tmp.path().join("config");
    std::fs::create_dir(&config_dir).unwrap();
    let status_file = tmp.path().join("status.json");
    let mut demo = Demo::start(Some(&config_dir), &status_file, tmp.path().join("demo.log"));

    // The status file appears once a request has crossed the whole mesh.
    let status = demo.status(&status_file).await;

    // The agreed shape.
    let entry = status["entry"].as_str().unwrap().to_string();
    let http = status["control"]["http"].as_str().unwrap().to_string();
    assert_eq!(status["dashboard"], format!("http://{http}/"));
    assert!(
        status["control"]["address"]
            .as_str()
            .unwrap()
            .parse::<SocketAddr>()
            .is_ok()
    );
    // The ingress gateway Bookinfo's own bookinfo-gateway selects.
    let gateways = status["gateways"].as_array().unwrap();
    assert_eq!(gateways.len(), 1, "{gateways:?}");
    assert_eq!(gateways[0]["name"], "trellis-ingressgateway");
    let gateway = gateways[0]["address"].as_str().unwrap().to_string();
    assert!(gateway.parse::<SocketAddr>().unwrap().ip().is_loopback());
    let workloads = status["workloads"].as_array().unwrap();
    let have: BTreeSet<(String, String)> = workloads
        .iter()
        .map(|w| {
            (
                w["name"].as_str().unwrap().into(),
                w["version"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("details", "v1"),
        ("productpage", "v1"),
        ("ratings", "v1"),
        ("reviews", "v1"),
        ("reviews", "v2"),
        ("reviews", "v3"),
    ]
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .into();
    assert_eq!(have, want);
    let pids = child_pids(&status);
    assert_eq!(pids.len(), 7);
    for w in workloads {
        assert_eq!(w["namespace"], "default");
        let sa = format!("bookinfo-{}", w["name"].as_str().unwrap());
        assert_eq!(w["service_account"], sa.as_str());
        assert_eq!(
            w["identity"],
            format!("spiffe://cluster.local/ns/default/sa/{sa}")
        );
        for key in ["app", "inbound", "admin"] {
            let addr: SocketAddr = w[key].as_str().unwrap().parse().unwrap();
            assert!(addr.ip().is_loopback(), "{key} {addr}");
        }
    }
    assert!(pids.iter().all(|pid| alive(*pid)));

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // All three reviews versions answer through the mesh; v2 and v3 reach ratings.
    let mut seen = BTreeSet::new();
    for n in 0..90 {
        let user = (n % 3 == 0).then_some("jason");
        let (code, body) = get(&client, &entry, "/api/v1/products/0/reviews", user).await;
        assert_eq!(code, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        let version = answer["reviews_version"].as_str().unwrap().to_string();
        let ratings = answer["ratings_available"].as_bool().unwrap();
        assert_eq!(answer["id"], 0);
        assert_eq!(answer["reviews"].as_array().unwrap().len(), 2);
        match version.as_str() {
            "v1" => assert!(!ratings, "v1 shows no ratings"),
            "v2" | "v3" => assert!(ratings, "{version} reached ratings: {body}"),
            other => panic!("unknown reviews version {other}"),
        }
        seen.insert(version);
        if seen.len() == 3 && n >= 30 {
            break;
        }
    }
    assert_eq!(seen.len(), 3, "saw only {seen:?}");
    let (code, body) = get(&client, &entry, "/api/v1/products/0", None).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("William Shakespeare"));
    let (code, page) = get(&client, &entry, "/productpage", None).await;
    assert_eq!(code, 200);
    assert!(page.contains("The Comedy of Errors"));

    // Bookinfo through the ingress gateway: the routes the VirtualService binds to it answer,
    // anything else is the gateway's own 404.
    let (code, page) = get(&client, &gateway, "/productpage", None).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("The Comedy of Errors"));
    let (code, body) = get(
        &client,
        &gateway,
        "/api/v1/products/0/reviews",
        Some("jason"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(&client, &gateway, "/not-routed", None).await.0, 404);

    // Every proxy is ready and has metrics.
    for w in workloads {
        let admin = w["admin"].as_str().unwrap();
        assert_eq!(
            get(&client, admin, "/ready", None).await.0,
            200,
            "{admin}/ready"
        );
        let (code, metrics) = get(&client, admin, "/metrics", None).await;
        assert_eq!(code, 200);
        assert!(!metrics.trim().is_empty(), "{admin}/metrics is empty");
    }

    // The dashboard's page.
    let (code, page) = get(&client, &http, "/", None).await;
    assert_eq!(code, 200);
    assert!(page.contains("<html"));
    assert!(page.contains("Trellis"));
    for asset in ["/assets/dashboard.js", "/assets/dashboard.css"] {
        let (code, body) = get(&client, &http, asset, None).await;
        assert_eq!(code, 200, "{asset}");
        assert!(!body.is_empty(), "{asset} is empty");
    }

    // The user's config directory is watched: a Service appears and goes within 2 s.
    assert!(services(&client, &http).await.contains("default/reviews"));
    let file = config_dir.join("reviews-v1.yaml");
    std::fs::write(&file, REVIEWS_V1_SERVICE).unwrap();
    let added = services_until(&client, &http, Duration::from_secs(2), |s| {
        s.contains("default/reviews-v1")
    })
    .await;
    assert!(added, "reviews-v1 did not appear within 2 s");
    std::fs::remove_file(&file).unwrap();
    let removed = services_until(&client, &http, Duration::from_secs(2), |s| {
        !s.contains("default/reviews-v1")
    })
    .await;
    assert!(removed, "reviews-v1 did not go within 2 s");

    // SIGTERM stops the demo and every child within 15 s, with success.
    drop(client);
    let started = Instant::now();
    kill_process(demo.pid(), Signal::TERM).unwrap();
    let exit = demo.exit_within(Duration::from_secs(15)).await;
    assert!(exit.success(), "the demo exited {exit}:\n{}", demo.log());
    all_gone(
        &pids,
        Duration::from_secs(15).saturating_sub(started.elapsed()),
    )
    .await;
    // The gateway stopped with the rest: its listener is gone.
    assert!(
        std::net::TcpStream::connect(&gateway).is_err(),
        "the gateway at {gateway} still accepts after the demo stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_child_stops_the_demo_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let status_file = tmp.path().join("status.json");
    let mut demo = Demo::start(None, &status_file, tmp.path().join("demo.log"));
    let status = demo.status(&status_file).await;
    let pids = child_pids(&status);
    let victim = status["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "reviews" && w["version"] == "v2")
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    let victim = Pid::from_raw(i32::try_from(victim).unwrap()).unwrap();
    kill_process(victim, Signal::KILL).unwrap();

    let exit = demo.exit_within(Duration::from_secs(15)).await;
    assert!(
        !exit.success(),
        "a dead child is a failure:\n{}",
        demo.log()
    );
    let log = demo.log();
    assert!(
        log.contains("trellis-proxy (reviews-v2)") && log.contains("exited"),
        "{log}"
    );
    all_gone(&pids, Duration::from_secs(5)).await;
}

/// The sum of a Prometheus counter's samples in `text`.
fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_routing_and_load_generator() {
    let tmp = tempfile::tempdir().unwrap();
    let status_file = tmp.path().join("status.json");
    let args = ["--load-rps".as_ref(), "50".as_ref()];
    let mut demo = Demo::start_with(&args, &status_file, tmp.path().join("demo.log"));
    let status = demo.status(&status_file).await;
    let pids = child_pids(&status);
    let admin = |name: &str| {
        let w = status["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["workload"] == name);
        w.unwrap()["admin"].as_str().unwrap().to_string()
    };
    let (productpage, ratings) = (admin("productpage-v1"), admin("ratings-v1"));

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // The default sample config routes jason to reviews v2, as in Istio's request-routing task.
    let http = status["control"]["http"].as_str().unwrap();
    let (_, config) = get(&client, http, "/api/v1/config", None).await;
    let config: Value = serde_json::from_str(&config).unwrap();
    let virtual_service = config["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "VirtualService")
        .unwrap_or_else(|| panic!("no VirtualService in the sample: {config}"));
    assert_eq!(virtual_service["status"], "Accepted", "{virtual_service}");
    let entry = status["entry"].as_str().unwrap();
    for _ in 0..6 {
        let (code, body) = get(&client, entry, "/api/v1/products/0/reviews", Some("jason")).await;
        assert_eq!(code, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["reviews_version"], "v2", "jason goes to v2: {body}");
    }

    // Traffic reaches the entry and, through reviews v2 and v3, ratings.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, entry_metrics) = get(&client, &productpage, "/metrics", None).await;
        let (_, ratings_metrics) = get(&client, &ratings, "/metrics", None).await;
        let at_entry = counter_sum(&entry_metrics, "trellis_requests_total");
        let at_ratings = counter_sum(&ratings_metrics, "trellis_requests_total");
        if at_entry >= 20.0 && at_ratings >= 5.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "too little traffic: {at_entry} requests at productpage, {at_ratings} at ratings\n{}",
            demo.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    drop(client);
    kill_process(demo.pid(), Signal::TERM).unwrap();
    let exit = demo.exit_within(Duration::from_secs(15)).await;
    assert!(exit.success(), "the demo exited {exit}:\n{}", demo.log());
    let log = demo.log();
    let summary = log
        .lines()
        .find(|l| l.starts_with("Load: "))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(!summary.starts_with("Load: 0 sent"), "{summary}");
    all_gone(&pids, Duration::from_secs(5)).await;
}

#[test]
fn bad_usage_exits_64() {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["demo", "--load-rps", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--load-rps"));
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["demo", "--entry", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(["demo", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--status-file"));
}

#[test]
fn missing_binaries_are_named() {
    // A copy of `trellis` alone in a directory, with nothing on PATH or TRELLIS_BIN_DIR.
    let dir = tempfile::tempdir().unwrap();
    let trellis = dir.path().join("trellis");
    std::fs::copy(env!("CARGO_BIN_EXE_trellis"), &trellis).unwrap();
    let out = Command::new(&trellis)
        .args([
            "demo",
            "--no-load",
            "--entry",
            "127.0.0.1:0",
            "--dashboard",
            "127.0.0.1:0",
        ])
        .env("PATH", "")
        .env_remove("TRELLIS_BIN_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("trellis-proxy") && stderr.contains("TRELLIS_BIN_DIR"),
        "{stderr}"
    );
}
