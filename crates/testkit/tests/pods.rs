//! Pods as network namespaces: real interception with the iptables rules `trellis-proxy init`
//! writes, real `SO_ORIGINAL_DST`, unmodified clients. Needs root; see
//! `trellis_testkit::netns::require_root`.

// Test helpers outside #[test] functions fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use trellis_testkit::netns::{PROXY_UID, require_root};
use trellis_testkit::servers::EchoReply;
use trellis_testkit::{Node, Pod, Proxy, ProxyBuilder, wait};

/// curl's output with `-w '\n%{http_code}'`, split.
fn curl_in(pod: &Pod, uid: Option<u32>, url: &str) -> (u16, String) {
    let out = pod.curl(uid, &["-w", "\n%{http_code}", url]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {url} in {} failed ({}): {} {text}",
        pod.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = text.rsplit_once('\n').unwrap_or_default();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn counter(proxy: &Proxy, name: &str, direction: &str) -> f64 {
    proxy.metrics().sum(name, &[("direction", direction)])
}

/// Pod A (a client) and pod B (the echo app), each with iptables from `trellis-proxy init` and
/// a proxy running as the exempt uid, on the default ports.
struct TwoPods {
    a_proxy: Proxy,
    b_proxy: Proxy,
    _app: trellis_testkit::ManagedProcess,
    b: Pod,
    a: Pod,
    _node: Node,
}

fn two_pods() -> TwoPods {
    let node = Node::new().unwrap();
    let a = node.pod().unwrap();
    let b = node.pod().unwrap();
    let (app, ready) = b.start_echo(Some(8080), Some(9000)).unwrap();
    assert_eq!(ready.http.map(|h| h.port()), Some(8080));
    a.init_iptables(&[]).unwrap();
    b.init_iptables(&[]).unwrap();
    let a_proxy = ProxyBuilder::new("pod-a")
        .in_pod(&a, PROXY_UID)
        .start()
        .unwrap();
    let b_proxy = ProxyBuilder::new("pod-b")
        .in_pod(&b, PROXY_UID)
        .start()
        .unwrap();
    for p in [&a_proxy, &b_proxy] {
        p.wait_ready(Duration::from_secs(15)).unwrap();
    }
    TwoPods {
        a_proxy,
        b_proxy,
        _app: app,
        b,
        a,
        _node: node,
    }
}

#[test]
fn unmodified_curl_passes_transparently_through_both_sidecars() {
    if !require_root("unmodified_curl_passes_transparently_through_both_sidecars") {
        return;
    }
    let pods = two_pods();
    let url = format!("http://{}:8080/across-pods", pods.b.ip());
    let (code, body) = curl_in(&pods.a, None, &url);
    assert_eq!(code, 200, "{body}");
    let reply: EchoReply = serde_json::from_str(&body).unwrap();
    assert_eq!(reply.path, "/across-pods");
    // The app sees the Host the client used: the proxies are invisible to it.
    assert_eq!(
        reply.headers.get("host").map(String::as_str),
        Some(format!("{}:8080", pods.b.ip()).as_str())
    );

    assert!(
        counter(&pods.a_proxy, "trellis_requests_total", "outbound") >= 1.0,
        "pod A's proxy did not count the request as outbound: was it intercepted?"
    );
    assert!(
        counter(&pods.b_proxy, "trellis_requests_total", "inbound") >= 1.0,
        "pod B's proxy did not count the request as inbound: was it intercepted?"
    );
    assert_eq!(
        counter(&pods.a_proxy, "trellis_requests_total", "inbound"),
        0.0
    );
}

#[test]
fn opaque_tcp_passes_through_both_sidecars() {
    if !require_root("opaque_tcp_passes_through_both_sidecars") {
        return;
    }
    let pods = two_pods();
    // bash's /dev/tcp: an unmodified client that knows nothing of HTTP. bash cannot half-close
    // a socket, so it reads the echoed line with a bounded timeout instead (the half-close
    // itself is covered on loopback in standalone.rs and mesh_traffic.rs).
    let script = format!(
        "exec 3<>/dev/tcp/{}/9000; printf 'opaque-bytes\\n' >&3; read -t 5 line <&3; echo \"$line\"",
        pods.b.ip()
    );
    let out = trellis_testkit::tools::run_bounded(
        pods.a.command("bash").args(["-c", &script]),
        Duration::from_secs(15),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "opaque-bytes",
        "{out:?}"
    );
    assert!(
        counter(
            &pods.a_proxy,
            "trellis_tcp_connections_opened_total",
            "outbound"
        ) >= 1.0
    );
    assert!(
        counter(
            &pods.b_proxy,
            "trellis_tcp_connections_opened_total",
            "inbound"
        ) >= 1.0
    );
}

#[test]
fn the_proxys_own_traffic_is_not_looped() {
    if !require_root("the_proxys_own_traffic_is_not_looped") {
        return;
    }
    let pods = two_pods();
    let url = format!("http://{}:8080/as-proxy-uid", pods.b.ip());
    let opened = |p: &Proxy, d: &str| counter(p, "trellis_tcp_connections_opened_total", d);

    // A client running as the proxy's uid is exempt in pod A (that exemption is what keeps the
    // proxy's upstream connections from coming back to it), so it reaches pod B directly.
    let a_before = opened(&pods.a_proxy, "outbound");
    let b_before = counter(&pods.b_proxy, "trellis_requests_total", "inbound");
    let (code, body) = curl_in(&pods.a, Some(PROXY_UID), &url);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        opened(&pods.a_proxy, "outbound"),
        a_before,
        "the proxy uid's traffic was captured in pod A"
    );
    assert!(
        counter(&pods.b_proxy, "trellis_requests_total", "inbound") > b_before,
        "pod B must still intercept it"
    );

    // One request from an ordinary uid opens exactly one outbound connection in pod A's proxy:
    // a loop would open more (or never answer).
    let a_before = opened(&pods.a_proxy, "outbound");
    let (code, body) = curl_in(&pods.a, None, &url);
    assert_eq!(code, 200, "{body}");
    let a_after = wait::until(Duration::from_secs(5), || {
        let v = opened(&pods.a_proxy, "outbound");
        if v > a_before {
            Ok(v)
        } else {
            Err(format!("still {v}"))
        }
    })
    .unwrap();
    assert_eq!(
        a_after - a_before,
        1.0,
        "one request must be one outbound connection, not a loop"
    );
}

#[test]
fn an_apps_localhost_traffic_is_not_captured() {
    if !require_root("an_apps_localhost_traffic_is_not_captured") {
        return;
    }
    let pods = two_pods();
    // In pod B the app listens on all addresses; calling it on localhost and on the pod's own IP
    // never leaves the pod, so neither direction of B's proxy may see it.
    for url in [
        "http://127.0.0.1:8080/local".to_string(),
        format!("http://{}:8080/self", pods.b.ip()),
    ] {
        let (code, body) = curl_in(&pods.b, None, &url);
        assert_eq!(code, 200, "{url}: {body}");
    }
    assert_eq!(
        counter(
            &pods.b_proxy,
            "trellis_tcp_connections_opened_total",
            "outbound"
        ),
        0.0
    );
    assert_eq!(
        counter(
            &pods.b_proxy,
            "trellis_tcp_connections_opened_total",
            "inbound"
        ),
        0.0
    );
}

#[test]
fn init_is_idempotent_and_dry_run_touches_nothing() {
    if !require_root("init_is_idempotent_and_dry_run_touches_nothing") {
        return;
    }
    let node = Node::new().unwrap();
    let pod = node.pod().unwrap();

    let printed = pod.init_iptables(&["--dry-run"]).unwrap();
    assert!(
        printed.starts_with("*nat\n") && printed.trim_end().ends_with("COMMIT"),
        "{printed}"
    );
    assert!(
        !pod.nat_rules().unwrap().contains("TRELLIS"),
        "--dry-run must not apply anything"
    );

    pod.init_iptables(&[]).unwrap();
    let once = pod.nat_rules().unwrap();
    pod.init_iptables(&["--exclude-inbound-ports", "22"])
        .unwrap();
    let twice = pod.nat_rules().unwrap();
    let count = |rules: &str, line: &str| rules.lines().filter(|l| *l == line).count();
    for rules in [&once, &twice] {
        assert_eq!(
            count(rules, "-A PREROUTING -p tcp -j TRELLIS_INBOUND"),
            1,
            "{rules}"
        );
        assert_eq!(
            count(rules, "-A OUTPUT -p tcp -j TRELLIS_OUTPUT"),
            1,
            "{rules}"
        );
        assert_eq!(rules.matches("REDIRECT --to-ports").count(), 2, "{rules}");
    }
    assert!(!once.contains("--dport 22 "), "{once}");
    assert!(
        twice.contains("--dport 22 -j RETURN"),
        "a second run must replace the rules: {twice}"
    );
}

#[test]
fn pods_with_a_control_plane_mesh_captured_traffic() {
    if !require_root("pods_with_a_control_plane_mesh_captured_traffic") {
        return;
    }
    use trellis_testkit::ControlPlane;
    use trellis_testkit::mesh::{config_dir, service_yaml_with_cluster_ip};

    // A Service with a virtual IP that no interface has: only a proxy that asked the control
    // plane can turn it into pod B.
    let vip: std::net::IpAddr = "198.18.0.200".parse().unwrap();
    let node = Node::new().unwrap();
    let config = config_dir(&[(
        "b.yaml",
        service_yaml_with_cluster_ip("b", "default", vip, 80, 8080, "b"),
    )])
    .unwrap();
    let discovery = std::net::SocketAddr::new(node.ip().into(), 15010);
    let control = ControlPlane::start_in(config.path(), discovery, Some(node.name())).unwrap();
    let url = control.url();

    let a = node.pod().unwrap();
    let b = node.pod().unwrap();
    let (_app, _) = b.start_echo(Some(8080), None).unwrap();
    a.init_iptables(&[]).unwrap();
    b.init_iptables(&[]).unwrap();
    let b_proxy = ProxyBuilder::new("b-0")
        .label("app", "b")
        .control(&url)
        .advertise(std::net::SocketAddr::new(b.ip().into(), 15006))
        .app_port(8080)
        .in_pod(&b, PROXY_UID)
        .start()
        .unwrap();
    let a_proxy = ProxyBuilder::new("a-0")
        .label("app", "a")
        .control(&url)
        .in_pod(&a, PROXY_UID)
        .start()
        .unwrap();
    for p in [&a_proxy, &b_proxy] {
        p.wait_ready(Duration::from_secs(15)).unwrap();
    }

    // Discovery is eventually consistent (B registers while A subscribes): poll, bounded.
    let vip_url = format!("http://{vip}/via-vip");
    let body = wait::until(Duration::from_secs(30), || {
        let out = a.curl(None, &["-f", &vip_url])?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    })
    .unwrap_or_else(|e| panic!("curl to the Service's cluster IP never succeeded: {e}"));
    let reply: EchoReply = serde_json::from_str(&body).unwrap();
    assert_eq!(reply.path, "/via-vip");

    // And straight to pod B's IP and app port: resolved to B's workload, meshed as well.
    let (code, body) = curl_in(&a, None, &format!("http://{}:8080/via-pod-ip", b.ip()));
    assert_eq!(code, 200, "{body}");

    // Detection counts connections, and both requests may share one pooled connection.
    let b_metrics = b_proxy.metrics();
    if let Err(e) = b_metrics.check_meshed_inbound() {
        panic!("pod B's proxy received traffic that did not come over the meshed hop: {e}");
    }
    assert!(
        b_metrics.sum(
            "trellis_requests_total",
            &[("direction", "inbound"), ("status_code", "200")]
        ) >= 2.0
    );
    assert!(counter(&a_proxy, "trellis_requests_total", "outbound") >= 2.0);
}

#[test]
fn init_without_privilege_fails_with_iptables_own_message() {
    if !require_root("init_without_privilege_fails_with_iptables_own_message") {
        return;
    }
    let node = Node::new().unwrap();
    let pod = node.pod().unwrap();
    let mut init = pod.command_as(PROXY_UID, trellis_testkit::bin("trellis-proxy"));
    init.arg("init");
    let out = trellis_testkit::tools::run_bounded(&mut init, Duration::from_secs(15)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "init as an unprivileged uid must fail"
    );
    assert!(
        stderr.contains("iptables"),
        "the error must name the failing tool: {stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("permission denied") || stderr.contains("must be root"),
        "the error must carry iptables' own reason: {stderr}"
    );
    assert!(!pod.nat_rules().unwrap().contains("TRELLIS"));
}

#[test]
fn grpc_between_pods_passes_transparently_through_both_sidecars() {
    if !require_root("grpc_between_pods_passes_transparently_through_both_sidecars") {
        return;
    }
    const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/grpc_echo.py");
    let python = trellis_testkit::tools::python_with_grpc();
    let pods = two_pods();
    let scratch = trellis_testkit::mesh::scratch_dir().unwrap();
    let ready = scratch.path().join("grpc.json");
    let mut serve = pods.b.command(&python);
    serve
        .arg(SCRIPT)
        .args([
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "9090",
            "--ready-file",
        ])
        .arg(&ready);
    let mut server = trellis_testkit::ManagedProcess::spawn("grpc server in pod B", serve).unwrap();
    let _: serde_json::Value = server
        .wait_ready_file(&ready, Duration::from_secs(30))
        .unwrap();

    let target = format!("{}:9090", pods.b.ip());
    let call = |case: &str| -> serde_json::Value {
        let mut c = pods.a.command(&python);
        c.arg(SCRIPT).args(["call", "--target", &target, case]);
        let out = trellis_testkit::tools::run_bounded(&mut c, Duration::from_secs(30)).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{case}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim()).unwrap()
    };
    let stream = call("stream");
    assert_eq!(stream["code"], "OK", "{stream}");
    assert_eq!(
        stream["messages"].as_array().map(Vec::len),
        Some(5),
        "{stream}"
    );
    assert_eq!(stream["trailers"]["x-echo-count"], "5", "{stream}");
    let fail = call("fail");
    assert_eq!(fail["code"], "NOT_FOUND", "{fail}");
    assert_eq!(fail["trailers"]["x-echo-why"], "asked", "{fail}");

    let a = pods.a_proxy.metrics();
    assert!(
        a.sum(
            "trellis_protocol_detections_total",
            &[("direction", "outbound"), ("outcome", "http2")]
        ) >= 1.0,
        "pod A's proxy must have intercepted the gRPC connection and detected HTTP/2"
    );
    assert!(counter(&pods.b_proxy, "trellis_requests_total", "inbound") >= 2.0);
}
