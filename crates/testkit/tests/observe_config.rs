//! Observability configured while the mesh runs, across real processes: an Istio `Telemetry`
//! written into a running control plane's config directory turns a proxy's access log on, its
//! trace sampling up and its metrics overrides on without a restart (and removing it restores
//! the proxy's flags); and a
//! workload whose answers start failing after a healthy period is flagged by its proxy's
//! anomaly detector (`trellis_anomaly`) and by `trellis stat`, then cleared when it recovers;
//! and a DestinationRule's `trellis.io/health-check` annotation makes the client proxy probe
//! both (meshed, STRICT mTLS) endpoints and stop sending to the one whose `/healthz` fails,
//! until it passes.

// Test helpers outside #[test] functions fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use trellis_testkit::mesh::{
    ControlPlane, ProxyBuilder, config_dir, scratch_dir, service_yaml, write_config,
};
use trellis_testkit::servers::EchoReply;
use trellis_testkit::tools::{http_get, run_bounded};
use trellis_testkit::{HttpEcho, Mesh, MeshBuilder, Proxy, bin, wait};

const CONVERGE: Duration = Duration::from_secs(30);
const APPLY: Duration = Duration::from_secs(20);

/// A control plane with Service `echo`, the echo's server proxy (with `server_args`) and a
/// client proxy with an outbound port for it, once a request goes through.
fn mesh(echo: &HttpEcho, server_args: &[&str]) -> Mesh {
    let mesh = MeshBuilder::new()
        .service("echo", 8080, echo.addr)
        .server_args("echo", server_args)
        .start();
    mesh.wait_http_route("echo", CONVERGE);
    mesh
}

/// A GET of `/observe` through the client proxy; returns the trace-sampled flag the app saw in
/// `traceparent` (the server proxy's inbound starts the trace: the client has no tracer).
fn sampled(port: SocketAddr) -> Result<bool, String> {
    sampled_at(port, "/observe")
}

/// [`sampled`] for a GET of `path`.
fn sampled_at(port: SocketAddr, path: &str) -> Result<bool, String> {
    let (code, body) = http_get(port, path)?;
    if code != 200 {
        return Err(format!("answered {code}: {body}"));
    }
    let reply: EchoReply = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    let tp = reply
        .headers
        .get("traceparent")
        .ok_or_else(|| format!("no traceparent reached the app: {:?}", reply.headers))?;
    Ok(tp.ends_with("-01"))
}

fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

const TELEMETRY: &str = "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: echo-observed, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  tracing:
  - providers: [{name: otel}]
    randomSamplingPercentage: 100
  accessLogging:
  - providers: [{name: envoy-json}]
  metrics:
  - overrides:
    - match: {metric: REQUEST_DURATION, mode: SERVER}
      disabled: true
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        source_workload: {operation: REMOVE}
";

/// Inbound duration samples, and inbound request-count samples that carry `source_workload`.
fn inbound_shape(server: &Proxy) -> (usize, usize, f64) {
    let m = server.metrics();
    let durations = m
        .matching(
            "trellis_request_duration_seconds_count",
            &[("direction", "inbound")],
        )
        .count();
    let labelled = m
        .matching("trellis_requests_total", &[("direction", "inbound")])
        .filter(|s| s.labels.contains_key("source_workload"))
        .count();
    let total = m.sum("trellis_requests_total", &[("direction", "inbound")]);
    (durations, labelled, total)
}

/// Inbound requests the server proxy has counted (a request is counted when its response
/// ends, just before its access log line, if any, is queued).
fn inbound_total(server: &Proxy) -> f64 {
    inbound_shape(server).2
}

/// Waits until the server proxy has counted `at_least` inbound requests: the requests sent so
/// far have ended there, so an access log line they should not have made would be due now.
fn wait_counted(server: &Proxy, at_least: f64) {
    wait::until(APPLY, || match inbound_total(server) {
        n if n >= at_least => Ok(()),
        n => Err(format!("{n} inbound requests counted, want {at_least}")),
    })
    .unwrap_or_else(|e| panic!("the server proxy did not count the requests: {e}"));
}

#[test]
fn a_telemetry_resource_turns_on_access_logs_and_sampling_without_a_restart() {
    let echo = HttpEcho::start().unwrap();
    let scratch = scratch_dir().unwrap();
    let log = scratch.path().join("access.log");
    // A collector nobody listens on: spans fail to export, which this test does not look at.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let collector = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let log_arg = log.display().to_string();
    let mesh = mesh(
        &echo,
        &[
            "--access-log-path",
            &log_arg,
            "--otlp-endpoint",
            &collector,
            "--trace-sampling",
            "0",
        ],
    );
    let (config, server, port) = (
        mesh.config.path(),
        mesh.server("echo"),
        mesh.client_port("echo"),
    );
    let pid = server.ready.pid;

    // The flags are in force: no sampling, no access log.
    let counted = inbound_total(server);
    for _ in 0..10 {
        assert!(!sampled(port).unwrap(), "sampled at --trace-sampling 0");
    }
    wait_counted(server, counted + 10.0);
    assert!(
        log_lines(&log).is_empty(),
        "an access log while --access-log off"
    );
    let (durations, labelled, _) = inbound_shape(server);
    assert!(durations > 0 && labelled > 0, "the full metrics before");

    write_config(config, "telemetry.yaml", TELEMETRY).unwrap();
    let started = Instant::now();
    wait::until(APPLY, || {
        if !sampled(port)? {
            return Err("not sampled yet".into());
        }
        let lines = log_lines(&log);
        match lines.last() {
            Some(l) if l["direction"] == "inbound" => Ok(()),
            other => Err(format!("access log: {other:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("the Telemetry did not reach the proxy: {e}"));
    eprintln!("applied within {:?}", started.elapsed());
    for _ in 0..10 {
        assert!(sampled(port).unwrap(), "100% sampling in force");
    }
    let lines = log_lines(&log);
    let last = lines.last().unwrap();
    assert_eq!(last["path"], "/observe");
    assert_eq!(last["response_code"], 200);
    assert_eq!(last["response_flags"], "-");
    assert_eq!(last["trace_id"].as_str().map(str::len), Some(32), "{last}");
    assert_eq!(server.ready.pid, pid, "same process");
    // Metrics overrides: no inbound duration histogram, request counts without the source
    // workload (summed, so no request is lost from the total).
    let (durations, labelled, total) = inbound_shape(server);
    assert_eq!((durations, labelled), (0, 0), "overrides not applied");
    assert!(total >= 21.0, "inbound requests counted: {total}");

    // Removing the Telemetry gives the flags back.
    std::fs::remove_file(config.join("telemetry.yaml")).unwrap();
    wait::until(APPLY, || match sampled(port)? {
        false => Ok(()),
        true => Err("still sampled".into()),
    })
    .unwrap_or_else(|e| panic!("removing the Telemetry did not restore the flags: {e}"));
    // Requests to a path of their own, so a line a request of the switch-over wrote late is
    // not mistaken for one of theirs.
    const OFF: &str = "/observe-off";
    let counted = inbound_total(server);
    for _ in 0..5 {
        assert!(!sampled_at(port, OFF).unwrap());
    }
    wait_counted(server, counted + 5.0);
    let logged: Vec<_> = log_lines(&log)
        .into_iter()
        .filter(|l| l["path"] == OFF)
        .collect();
    assert!(logged.is_empty(), "access log off again: {logged:?}");
    let (durations, labelled, _) = inbound_shape(server);
    assert!(durations > 0 && labelled > 0, "the full metrics after");
}

fn anomaly(server: &Proxy, kind: &str) -> f64 {
    server.metrics().sum("trellis_anomaly", &[("kind", kind)])
}

/// Sends requests for `for_` at about 100 per second; every `fail_every`-th (if any) to a path
/// the echo answers 503.
fn traffic(port: SocketAddr, for_: Duration, fail_every: Option<u32>) {
    let end = Instant::now() + for_;
    let mut i = 0u32;
    while Instant::now() < end {
        let path = match fail_every {
            Some(n) if i.is_multiple_of(n) => "/status/503",
            _ => "/ok",
        };
        let _ = http_get(port, path);
        i = i.wrapping_add(1);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `trellis stat -o json` rows by workload name.
fn stat(control: &ControlPlane) -> Vec<serde_json::Value> {
    let out = run_bounded(
        Command::new(bin("trellis")).args([
            "stat",
            "--control",
            &format!("http://{}", control.ready.http),
            "--interval",
            "500ms",
            "-o",
            "json",
        ]),
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "trellis stat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_workload_failing_after_a_healthy_period_is_flagged_then_cleared() {
    let echo = HttpEcho::start().unwrap();
    let mesh = mesh(
        &echo,
        &["--anomaly-window", "1s", "--anomaly-baseline", "30s"],
    );
    let (control, server, port) = (&mesh.control, mesh.server("echo"), mesh.client_port("echo"));

    // Healthy: enough windows to pass the detector's warm-up (3 windows of >= 20 requests).
    traffic(port, Duration::from_secs(5), None);
    assert_eq!(anomaly(server, "success_rate"), 0.0);
    assert_eq!(anomaly(server, "latency"), 0.0);

    // The app starts failing one request in two.
    let started = Instant::now();
    let flagged = wait::until(APPLY, || {
        traffic(port, Duration::from_millis(500), Some(2));
        let v = anomaly(server, "success_rate");
        if v == 1.0 {
            Ok(())
        } else {
            Err(format!("trellis_anomaly{{kind=\"success_rate\"}} {v}"))
        }
    });
    flagged.unwrap_or_else(|e| panic!("the failing workload was not flagged: {e}"));
    eprintln!("flagged after {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "flagged only after {:?} with 1 s windows",
        started.elapsed()
    );

    // `trellis stat` shows it on the workload's row (the gauge holds while the app fails).
    let feed = std::thread::spawn(move || traffic(port, Duration::from_secs(3), Some(2)));
    let rows = stat(control);
    feed.join().unwrap();
    let row = rows
        .iter()
        .find(|r| r["name"] == "echo-0")
        .unwrap_or_else(|| panic!("no echo-0 row: {rows:?}"));
    assert_eq!(row["anomaly"], serde_json::json!(["success_rate"]), "{row}");
    let client_row = rows.iter().find(|r| r["name"] == "client").unwrap();
    assert_eq!(client_row["anomaly"], serde_json::json!([]), "{client_row}");

    // Healthy again: the flag clears.
    wait::until(APPLY, || {
        traffic(port, Duration::from_millis(500), None);
        let v = anomaly(server, "success_rate");
        if v == 0.0 {
            Ok(())
        } else {
            Err(format!("still {v}"))
        }
    })
    .unwrap_or_else(|e| panic!("the recovered workload stayed flagged: {e}"));
}

/// A minimal HTTP/1.1 app on `addr` (one thread per connection, `Connection: close`): `/healthz`
/// answers 200 or 503 as `healthy` says; anything else 200, counted in `served`.
struct HealthApp {
    addr: SocketAddr,
    healthy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    served: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Added before answering anything but `/healthz`, in milliseconds.
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl HealthApp {
    fn start(addr: SocketAddr) -> std::io::Result<Self> {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering::Relaxed;
        let listener = std::net::TcpListener::bind(addr)?;
        let app = HealthApp {
            addr: listener.local_addr()?,
            healthy: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            served: std::sync::Arc::default(),
            delay_ms: std::sync::Arc::default(),
        };
        let (healthy, served, delay) = (
            app.healthy.clone(),
            app.served.clone(),
            app.delay_ms.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (healthy, served, delay) = (healthy.clone(), served.clone(), delay.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut reader = BufReader::new(&stream);
                    let mut first = String::new();
                    if reader.read_line(&mut first).is_err() {
                        return;
                    }
                    // Skip the rest of the head (requests here have no body).
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let path = first.split(' ').nth(1).unwrap_or("/");
                    let status = if path == "/healthz" {
                        if healthy.load(Relaxed) {
                            "200 OK"
                        } else {
                            "503 Service Unavailable"
                        }
                    } else {
                        served.fetch_add(1, Relaxed);
                        std::thread::sleep(Duration::from_millis(delay.load(Relaxed)));
                        "200 OK"
                    };
                    let _ = write!(
                        &stream,
                        "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    );
                });
            }
        });
        Ok(app)
    }

    fn served(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_healthy(&self, on: bool) {
        self.healthy.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

const HEALTH_RULE: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: web
  namespace: default
  annotations:
    trellis.io/health-check: '{"path": "/healthz", "interval": "200ms", "timeout": "100ms", "unhealthyThreshold": 2, "healthyThreshold": 2}'
spec:
  host: web
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
"#;

const STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
";

/// `n` GETs through `port`; panics unless every one answers 200.
fn all_ok(port: SocketAddr, n: usize) {
    for i in 0..n {
        match http_get(port, "/work") {
            Ok((200, _)) => {}
            other => panic!("request {i}: {other:?}"),
        }
    }
}

#[test]
fn a_destination_rule_health_check_takes_a_failing_endpoint_out_and_back() {
    // Two apps on one port (127.0.0.1 and 127.0.0.2), so one Service targetPort fits both.
    let a = HealthApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let b = HealthApp::start(SocketAddr::from(([127, 0, 0, 2], a.addr.port())))
        .unwrap_or_else(|e| panic!("127.0.0.2:{}: {e}", a.addr.port()));
    let config = config_dir(&[
        (
            "web.yaml",
            service_yaml("web", "default", 8080, a.addr.port(), "web"),
        ),
        ("web-rule.yaml", HEALTH_RULE.to_string()),
        // STRICT: the server proxies refuse plaintext, so the probes must use mesh mTLS.
        ("strict.yaml", STRICT.to_string()),
    ])
    .unwrap();
    let control = ControlPlane::start(config.path()).unwrap();
    let _servers: Vec<Proxy> = [("web-a", a.addr), ("web-b", b.addr)]
        .into_iter()
        .map(|(name, app)| {
            ProxyBuilder::loopback(name)
                .label("app", "web")
                .control(&control.url())
                .app(app)
                .start()
                .unwrap()
        })
        .collect();
    let client = ProxyBuilder::loopback("client")
        .label("app", "client")
        .control(&control.url())
        .outbound_port("web.default:8080")
        .start()
        .unwrap();
    let port = client.outbound_port("web.default:8080");
    // Both endpoints registered and serving.
    wait::until(CONVERGE, || {
        let _ = http_get(port, "/converge");
        if a.served() > 0 && b.served() > 0 {
            Ok(())
        } else {
            Err(format!("served a={} b={}", a.served(), b.served()))
        }
    })
    .unwrap_or_else(|e| panic!("both endpoints never served: {e}"));

    // b's /healthz fails; its proxy and app still answer everything else, so only the health
    // check can take it out. Bound: 2 probes at 200 ms (+10% jitter) + 100 ms timeout.
    b.set_healthy(false);
    let failed_at = Instant::now();
    wait::until(APPLY, || {
        let before = b.served();
        all_ok(port, 10);
        if b.served() == before {
            Ok(())
        } else {
            Err("b still gets traffic".into())
        }
    })
    .unwrap_or_else(|e| panic!("the failing endpoint stayed in: {e}"));
    let took = failed_at.elapsed();
    assert!(took < Duration::from_secs(3), "out only after {took:?}");
    let b_before = b.served();
    all_ok(port, 40);
    assert_eq!(
        b.served(),
        b_before,
        "traffic reached the unhealthy endpoint"
    );
    let m = client.metrics();
    assert!(m.sum("trellis_health_check_total", &[("result", "failure")]) >= 2.0);
    assert_eq!(m.sum("trellis_health_check_unhealthy_endpoints", &[]), 1.0);

    // Healthy again: back in within 2 probes.
    b.set_healthy(true);
    wait::until(APPLY, || {
        let before = b.served();
        all_ok(port, 10);
        if b.served() > before {
            Ok(())
        } else {
            Err("b gets no traffic yet".into())
        }
    })
    .unwrap_or_else(|e| panic!("the recovered endpoint never came back: {e}"));
    assert_eq!(
        client
            .metrics()
            .sum("trellis_health_check_unhealthy_endpoints", &[]),
        0.0
    );
}

#[test]
fn a_workload_slowing_down_is_flagged_for_latency() {
    let app = HealthApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let mesh = MeshBuilder::new()
        .service("slow", 8080, app.addr)
        .server_args(
            "slow",
            ["--anomaly-window", "1s", "--anomaly-baseline", "30s"],
        )
        .start();
    mesh.wait_http_route("slow", CONVERGE);
    let (server, port) = (mesh.server("slow"), mesh.client_port("slow"));

    // Four callers in parallel keep every 1 s window above the detector's 20 requests even once
    // each request takes 40 ms.
    let load = |for_: Duration| {
        let senders: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || traffic(port, for_, None)))
            .collect();
        for s in senders {
            s.join().unwrap();
        }
    };
    load(Duration::from_secs(5));
    assert_eq!(anomaly(server, "latency"), 0.0);

    // A delay fault in the app: every answer 40 ms late, no failures.
    app.delay_ms.store(40, std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    wait::until(APPLY, || {
        load(Duration::from_millis(500));
        let v = anomaly(server, "latency");
        if v == 1.0 {
            Ok(())
        } else {
            Err(format!("trellis_anomaly{{kind=\"latency\"}} {v}"))
        }
    })
    .unwrap_or_else(|e| panic!("the slow workload was not flagged: {e}"));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "flagged only after {:?}",
        started.elapsed()
    );
    assert_eq!(anomaly(server, "success_rate"), 0.0, "slow is not failing");
}
