//! Endpoints failing under load: one killed, one that hangs, one that resets connections (each
//! made with the pod's own iptables, so the client sidecar sees real refused, silent and reset
//! connections), and a server sidecar stopped with SIGTERM while requests are in flight.

use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use trellis_testkit::netns::require_root;
use trellis_testkit::{Pod, Proxy, tools, wait};

use crate::fixture::{
    PodMesh, PodMeshSpec, assert_no_failures, figure, inbound_requests, mesh_rate, metric,
};

/// Outlier detection and retries for `echo`, in Istio's own resources. Round robin, so every
/// endpoint keeps being tried and each fault is seen at the load's rate (the default P2C
/// balancer would also steer away from a slow endpoint before ejecting it).
const RESILIENCE: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {connectTimeout: 300ms}
    outlierDetection:
      consecutiveGatewayErrors: 3
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 60s
      maxEjectionPercent: 75
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - timeout: 3s
    retries: {attempts: 2, perTryTimeout: 300ms, retryOn: \"connect-failure,refused-stream,reset,gateway-error\"}
    route:
    - destination: {host: echo}
";
/// The configured outlier interval: an ejection must be counted within it.
const OUTLIER_INTERVAL: Duration = Duration::from_secs(1);
/// The mesh's default retry budget (docs/traffic-config.md): retries may add 20% of requests
/// plus 10 per second.
const BUDGET_RATIO: f64 = 0.2;
const BUDGET_MIN_PER_SEC: f64 = 10.0;

fn iptables(pod: &Pod, rule: &[&str]) {
    let out =
        tools::run_bounded(pod.command("iptables").args(rule), Duration::from_secs(10)).unwrap();
    assert!(out.status.success(), "iptables {rule:?}: {out:?}");
}

/// Applies `fault` and returns how long until the client sidecar counts one more ejection.
fn time_to_ejection(client: &Proxy, fault: impl FnOnce()) -> Duration {
    let before = metric(client, "trellis_outlier_ejections_total");
    let t0 = Instant::now();
    fault();
    wait::until(Duration::from_secs(15), || {
        let now = metric(client, "trellis_outlier_ejections_total");
        if now > before {
            Ok(t0.elapsed())
        } else {
            Err(format!("{now} ejections"))
        }
    })
    .unwrap_or_else(|e| panic!("the failing endpoint was never ejected: {e}"))
}

#[test]
fn chaos_endpoint_killed_hung_and_resetting_under_load() {
    let name = "chaos_endpoint_killed_hung_and_resetting_under_load";
    if !require_root(name) {
        return;
    }
    let mut mesh = PodMesh::start(PodMeshSpec {
        servers: 4,
        config: vec![("resilience.yaml", RESILIENCE.to_string())],
        ..Default::default()
    });
    let rate = mesh_rate();
    let duration = Duration::from_secs(14);
    let before = mesh.server_requests();
    let load = mesh.load(rate, duration);
    mesh.wait_flowing(before, f64::from(rate) / 2.0);
    let requests_before = metric(&mesh.client, "trellis_requests_total");
    let retries_before = metric(&mesh.client, "trellis_retries_total");
    let started = Instant::now();

    // 1. Killed: the sidecar and the app die at once (SIGKILL); connections are refused.
    let killed = {
        let server = &mut mesh.servers[1];
        let client = &mesh.client;
        time_to_ejection(client, || {
            server.proxy.process().kill();
            server.app.kill();
        })
    };
    // The scenario, not a wait: the load runs on for 2 s with one endpoint ejected before the
    // next fault.
    std::thread::sleep(Duration::from_secs(2));
    // 2. Hangs: every packet to the pod is dropped, established connections included.
    let pod = &mesh.servers[2].pod;
    let hung = time_to_ejection(&mesh.client, || {
        iptables(pod, &["-I", "INPUT", "-p", "tcp", "-j", "DROP"]);
    });
    // The scenario again: 2 s with two endpoints ejected.
    std::thread::sleep(Duration::from_secs(2));
    // 3. Resets: every packet to the pod's sidecar is answered with a TCP reset.
    let pod = &mesh.servers[3].pod;
    let reset = time_to_ejection(&mesh.client, || {
        iptables(
            pod,
            &[
                "-I",
                "INPUT",
                "-p",
                "tcp",
                "-j",
                "REJECT",
                "--reject-with",
                "tcp-reset",
            ],
        );
    });
    let faults_done = started.elapsed();
    let report = load.finish().unwrap();

    let requests = metric(&mesh.client, "trellis_requests_total") - requests_before;
    let retries = metric(&mesh.client, "trellis_retries_total") - retries_before;
    let budget = BUDGET_RATIO * requests + BUDGET_MIN_PER_SEC * duration.as_secs_f64();
    figure(
        "endpoint killed, hung, resetting",
        &format!(
            "{rate} rps over 4 endpoints for {} s: ejected after {} ms (killed), {} ms (hung), {} ms (reset), interval {} ms; {retries:.0} retries for {requests:.0} requests (budget {budget:.0}); {}",
            duration.as_secs(),
            killed.as_millis(),
            hung.as_millis(),
            reset.as_millis(),
            OUTLIER_INTERVAL.as_millis(),
            report.summary()
        ),
    );
    for (fault, took) in [("killed", killed), ("hung", hung), ("resetting", reset)] {
        assert!(
            took <= OUTLIER_INTERVAL,
            "the {fault} endpoint was ejected after {took:?}, beyond the configured interval {OUTLIER_INTERVAL:?}"
        );
    }
    assert!(
        retries <= budget,
        "{retries} retries for {requests} requests: beyond the retry budget ({budget})"
    );
    // What the retries could not save: at most 1% of the load, and never more than the
    // requests caught in flight by a fault.
    assert!(
        report.failed() * 100 <= report.sent,
        "{name}: more than 1% failed: {}",
        report.summary()
    );
    assert!(faults_done < duration, "the faults outlasted the load");
}

/// Runs curl in `pod` for a rate-limited download; returns the spawned child.
fn slow_download(pod: &Pod, url: &str) -> std::process::Child {
    pod.command("curl")
        .args([
            "-sS",
            "--max-time",
            "40",
            "--limit-rate",
            "1M",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            url,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn chaos_proxy_sigterm_during_load() {
    let name = "chaos_proxy_sigterm_during_load";
    if !require_root(name) {
        return;
    }
    // A drain long enough for the in-flight downloads (6 MB at 1 MB/s).
    let mut mesh = PodMesh::start(PodMeshSpec {
        servers: 2,
        server_args: vec!["--drain-timeout", "20s"],
        ..Default::default()
    });
    const SIZE: u64 = 6_000_000;
    // In flight on server 0: downloads addressed to its pod, so its sidecar carries them.
    let url = format!(
        "http://{}:{}/bytes/{SIZE}",
        mesh.servers[0].pod.ip(),
        crate::fixture::APP_PORT
    );
    let downloads: Vec<_> = (0..3)
        .map(|_| slow_download(&mesh.client_pod, &url))
        .collect();
    let rate = mesh_rate();
    let duration = Duration::from_secs(10);
    let before = mesh.server_requests();
    let load_started = Instant::now();
    let load = mesh.load(rate, duration);
    mesh.wait_flowing(before, f64::from(rate) / 2.0);

    let pid = Pid::from_raw(mesh.servers[0].proxy.ready.pid as i32).unwrap();
    rustix::process::kill_process(pid, Signal::TERM).unwrap();
    let sigterm_at = Instant::now();
    // The draining sidecar stops taking new requests: from here on the other replica answers
    // them. A short grace lets requests already on their way land. Not a wait for a state
    // (no signal says "the last one landed"): it only moves the start of the measured window,
    // whose expectation is scaled to its length below.
    std::thread::sleep(Duration::from_millis(300));
    let other = &mesh.servers[1].proxy;
    let other_before = inbound_requests(other);
    let window_start = Instant::now();
    let report = load.finish().unwrap();
    // From the snapshot to the load's planned end.
    let window = (load_started + duration).saturating_duration_since(window_start);
    let other_took = inbound_requests(other) - other_before;

    let mut finished = Vec::new();
    for mut d in downloads {
        let status = wait::until(Duration::from_secs(40), || {
            d.try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "downloading".to_string())
        });
        if status.is_err() {
            let _ = d.kill();
        }
        let out = d.wait_with_output().unwrap();
        finished.push((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let drained = sigterm_at.elapsed();
    let exit = mesh.servers[0]
        .proxy
        .process()
        .wait_exit(Duration::from_secs(25));

    assert_no_failures(name, &report, rate, duration);
    for (stdout, stderr) in &finished {
        assert_eq!(
            stdout.trim(),
            format!("200 {SIZE}"),
            "an in-flight download did not complete through the draining sidecar: {stderr}"
        );
    }
    assert!(
        exit.is_some_and(|s| s.success()),
        "the drained sidecar did not exit 0: {exit:?}"
    );
    // New requests went elsewhere: the other replica answered (nearly) all the load sent after
    // the SIGTERM. The window's share is estimated from the rate, so allow 10% for timing.
    let expected = f64::from(rate) * window.as_secs_f64();
    assert!(
        other_took >= 0.9 * expected,
        "the other replica took {other_took} requests after the SIGTERM, expected about {expected:.0}"
    );
    figure(
        "proxy SIGTERM during load",
        &format!(
            "{rate} rps to 2 replicas for {} s, SIGTERM to one with 3 downloads of {SIZE} B in flight: all 3 complete (200, {SIZE} B each) and the draining sidecar exits 0 (all within {:.1} s of the SIGTERM); other replica took {other_took:.0} requests in the {:.1} s after; {}",
            duration.as_secs(),
            drained.as_secs_f64(),
            window.as_secs_f64(),
            report.summary()
        ),
    );
}
