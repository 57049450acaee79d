//! A real Prometheus (Debian's `prometheus`) scrapes the Bookinfo demo's proxies, and PromQL over
//! its HTTP API agrees with what the test sent: the request rate and success rate of `reviews`
//! (inbound at reviews' proxies) within 5%, and a p99 latency consistent with a delay injected
//! on `ratings` by a VirtualService.
//!
//! Needs the built binaries (`cargo build --workspace --bins`) and `prometheus` on PATH
//! (`scripts/test.sh` installs it). Everything listens on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use trellis_testkit::bins::bin;
use trellis_testkit::metrics::Metrics;
use trellis_testkit::process::ManagedProcess;
use trellis_testkit::tools::{free_port, http_get, require};

/// The delay the VirtualService puts on every call to ratings.
const DELAY: Duration = Duration::from_millis(300);
/// The steady load: requests per second to the entry, and for how long.
const RPS: u64 = 20;
const LOAD: Duration = Duration::from_secs(20);

const RATINGS_DELAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings-delay
  namespace: default
spec:
  hosts: [ratings]
  http:
  - name: delayed
    fault:
      delay:
        fixedDelay: 300ms
        percentage: {value: 100}
    route:
    - destination: {host: ratings}
"#;

/// A route for details, written during the test to change what productpage's proxy is sent.
const DETAILS_ROUTE: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: details-route
  namespace: default
spec:
  hosts: [details]
  http:
  - name: all
    timeout: 5s
    route:
    - destination: {host: details}
"#;

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// One PromQL instant query at `at` (unix seconds); the value of the first (summed) result.
fn query(prom: SocketAddr, promql: &str, at: f64) -> Option<f64> {
    let path = format!("/api/v1/query?query={}&time={at:.3}", encode(promql));
    let (status, body) = http_get(prom, &path).ok()?;
    assert_eq!(status, 200, "{promql}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let result = v["data"]["result"].as_array()?.first()?.clone();
    result["value"][1].as_str()?.parse().ok()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn wait_status(demo: &mut ManagedProcess, file: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(bytes) = std::fs::read(file) {
            return serde_json::from_slice(&bytes).unwrap();
        }
        assert!(demo.is_running(), "the demo exited:\n{}", demo.log());
        assert!(
            Instant::now() < deadline,
            "no status file after 60 s:\n{}",
            demo.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_what_the_test_sent() {
    let prometheus = require("prometheus", "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir(&config_dir).unwrap();
    std::fs::write(config_dir.join("ratings-delay.yaml"), RATINGS_DELAY).unwrap();
    let status_file = dir.path().join("status.json");

    let mut demo_cmd = Command::new(bin("trellis"));
    demo_cmd
        .args(["demo", "--no-load", "--entry", "127.0.0.1:0"])
        .args(["--dashboard", "127.0.0.1:0", "--config-dir"])
        .arg(&config_dir)
        .arg("--status-file")
        .arg(&status_file);
    let mut demo = ManagedProcess::spawn("demo", demo_cmd).unwrap();
    let status = wait_status(&mut demo, &status_file);
    let entry: SocketAddr = status["entry"].as_str().unwrap().parse().unwrap();

    // Prometheus scrapes every proxy's admin port each second.
    let mut targets = String::new();
    for w in status["workloads"].as_array().unwrap() {
        targets.push_str(&format!(
            "  - targets: ['{}']\n    labels: {{workload: '{}'}}\n",
            w["admin"].as_str().unwrap(),
            w["workload"].as_str().unwrap()
        ));
    }
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n\
             - job_name: trellis-proxies\n  static_configs:\n{targets}"
        ),
    )
    .unwrap();
    let prom_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut prom_cmd = Command::new(prometheus);
    prom_cmd
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .arg("--storage.tsdb.retention.time=1h");
    let mut prom = ManagedProcess::spawn("prometheus", prom_cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(http_get(prom_addr, "/-/ready"), Ok((200, _))) {
        assert!(prom.is_running(), "prometheus exited:\n{}", prom.log());
        assert!(
            Instant::now() < deadline,
            "prometheus not ready:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The delay is config the control plane pushes: wait until a request shows it (v2 and v3
    // call ratings; v1 does not, so look for one slow answer among a few).
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let url: hyper::Uri = format!("http://{entry}/api/v1/products/0/reviews")
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let started = Instant::now();
        let resp = client.get(url.clone()).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        if started.elapsed() >= DELAY {
            break;
        }
        assert!(Instant::now() < deadline, "the ratings delay never applied");
    }

    // The steady load: RPS requests a second, each on its own task (slow answers overlap).
    let sent = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let load_started = now();
    let mut ticker = tokio::time::interval(Duration::from_millis(1000 / RPS));
    let mut tasks = Vec::new();
    for _ in 0..RPS * LOAD.as_secs() {
        ticker.tick().await;
        let (client, url, sent, ok) = (client.clone(), url.clone(), sent.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            sent.fetch_add(1, Ordering::Relaxed);
            if let Ok(Ok(resp)) =
                tokio::time::timeout(Duration::from_secs(10), client.get(url)).await
            {
                let good = resp.status() == 200;
                if resp.into_body().collect().await.is_ok() && good {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let load_ended = now();
    let sent = sent.load(Ordering::Relaxed) as f64;
    let ok = ok.load(Ordering::Relaxed) as f64;
    let sent_rate = sent / (load_ended - load_started);
    let sent_success = ok / sent;

    // Evaluate inside the load, a few scrapes before its end, over most of it.
    let at = load_ended - 3.0;
    let window = "12s";
    let reviews = r#"direction="inbound",destination_workload=~"reviews-v.*""#;
    let rate_q = format!("sum(rate(trellis_requests_total{{{reviews}}}[{window}]))");
    let success_q = format!(
        "sum(rate(trellis_requests_total{{{reviews},response_class=\"success\"}}[{window}])) / {rate_q}"
    );
    let p99_q = format!(
        "histogram_quantile(0.99, sum by (le) (rate(trellis_request_duration_seconds_bucket{{{reviews}}}[{window}])))"
    );
    let from_product = format!(
        "sum(rate(trellis_requests_total{{{reviews},source_workload=\"productpage-v1\",source_namespace=\"default\"}}[{window}]))"
    );
    // Meshed hops are mTLS: the caller's identity is the verified SPIFFE ID.
    let over_mtls = format!(
        "sum(rate(trellis_requests_total{{{reviews},tls=\"true\",source_identity=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\"}}[{window}]))"
    );
    // Scrapes up to `at` must have landed: poll until the rate is there (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let rate = loop {
        if let Some(r) = query(prom_addr, &rate_q, at)
            && now() > at + 3.0
        {
            break r;
        }
        assert!(Instant::now() < deadline, "no rate from prometheus");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let success = query(prom_addr, &success_q, at).unwrap();
    let p99 = query(prom_addr, &p99_q, at).unwrap();
    let labelled = query(prom_addr, &from_product, at).unwrap();
    let mtls = query(prom_addr, &over_mtls, at).unwrap_or(0.0);
    eprintln!(
        "sent {sent} at {sent_rate:.2}/s, {:.1}% ok; prometheus: rate {rate:.2}/s, success {:.1}%, p99 {p99:.3}s",
        sent_success * 100.0,
        success * 100.0
    );
    assert!(
        (rate - sent_rate).abs() / sent_rate <= 0.05,
        "rate {rate} vs sent {sent_rate}"
    );
    assert!(
        (success - sent_success).abs() <= 0.05,
        "success {success} vs sent {sent_success}"
    );
    assert!(
        (labelled - rate).abs() / rate <= 0.01,
        "every reviews request is labelled as from productpage: {labelled} of {rate}"
    );
    assert!(
        (mtls - rate).abs() / rate <= 0.01,
        "every reviews request arrived over mTLS from productpage's identity: {mtls} of {rate}"
    );
    // The delay lands in the (0.25, 0.5] bucket: p99 interpolates inside it.
    assert!(
        p99 >= DELAY.as_secs_f64() * 0.8 && p99 <= 0.5,
        "p99 {p99} s is not consistent with a {DELAY:?} delay"
    );

    // A config change reaches the proxies and their ACKs are timed by the control plane.
    let control: SocketAddr = status["control"]["http"].as_str().unwrap().parse().unwrap();
    let propagated = || {
        let (_, text) = http_get(control, "/metrics").unwrap();
        Metrics::parse(&text).sum("trellis_control_propagation_seconds_count", &[])
    };
    let before = propagated();
    std::fs::write(config_dir.join("details-route.yaml"), DETAILS_ROUTE).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while propagated() <= before {
        assert!(
            Instant::now() < deadline,
            "no ACK timed after a config change:\n{}",
            demo.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    prom.terminate(Duration::from_secs(5));
    demo.terminate(Duration::from_secs(10));
}
