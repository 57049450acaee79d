//! Mesh mTLS on loopback with the real binaries: a `trellis-control` whose CA issues the
//! certificates, a client proxy and a server proxy. Proves that the hop really is mTLS, that
//! a server with the wrong SPIFFE ID is refused by the client, that join tokens gate
//! certificates, and that leaf renewal and a full trust-anchor rotation under steady load lose
//! no request.

// Test helpers outside #[test] functions fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use trellis_testkit::fixture::target;
use trellis_testkit::mesh::{config_dir, service_yaml};
use trellis_testkit::{ControlPlane, HttpEcho, Proxy, ProxyBuilder, tools, wait};

const CONVERGE: Duration = Duration::from_secs(30);
const LOOPBACK_ANY: &str = "127.0.0.1:0";

/// A DestinationRule that retires each proxy-to-proxy connection after 20 requests, so that a
/// steady load keeps making new mTLS handshakes with whatever certificates are current.
const SHORT_CONNECTIONS: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: echo, namespace: default}\nspec:\n  host: echo\n  trafficPolicy:\n    connectionPool:\n      http: {maxRequestsPerConnection: 20}\n";

struct Pair {
    client: Proxy,
    server: Proxy,
    control: ControlPlane,
    config: tempfile::TempDir,
    _echo: HttpEcho,
}

fn start_pair(control_args: &[&str], extra_config: &[(&str, &str)]) -> Pair {
    start_pair_with(control_args, extra_config, &[])
}

fn start_pair_with(
    control_args: &[&str],
    extra_config: &[(&str, &str)],
    server_args: &[&str],
) -> Pair {
    let echo = HttpEcho::start().unwrap();
    let mut files = vec![(
        "echo.yaml".to_string(),
        service_yaml("echo", "default", 8080, echo.addr.port(), "echo"),
    )];
    files.extend(
        extra_config
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_string())),
    );
    let config = config_dir(&files).unwrap();
    let control = ControlPlane::start_with(
        config.path(),
        LOOPBACK_ANY.parse().unwrap(),
        None,
        control_args,
    )
    .unwrap();
    let url = control.url();
    let server = server_args
        .iter()
        .fold(ProxyBuilder::loopback("echo-0"), |b, a| b.arg(a))
        .label("app", "echo")
        .service_account("echo")
        .control(&url)
        .app(echo.addr)
        .start()
        .unwrap();
    let client = ProxyBuilder::loopback("client")
        .label("app", "client")
        .service_account("client")
        .control(&url)
        .outbound_port(&target("echo", 8080))
        .start()
        .unwrap();
    for p in [&server, &client] {
        p.wait_ready(CONVERGE).unwrap();
    }
    Pair {
        client,
        server,
        control,
        config,
        _echo: echo,
    }
}

fn client_addr(pair: &Pair) -> SocketAddr {
    pair.client.outbound_port(&target("echo", 8080))
}

fn wait_routed(pair: &Pair) {
    let addr = client_addr(pair);
    wait::until(CONVERGE, || match tools::http_get(addr, "/converge") {
        Ok((200, _)) => Ok(()),
        Ok((code, body)) => Err(format!("answered {code}: {body}")),
        Err(e) => Err(e),
    })
    .unwrap();
}

fn metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    proxy.metrics().sum(name, labels)
}

/// A field of the proxy's `/config_dump` `identity` object.
fn identity_field(proxy: &Proxy, field: &str) -> serde_json::Value {
    let (_, dump) = proxy.admin_get("/config_dump").unwrap();
    let json: serde_json::Value = serde_json::from_str(&dump).unwrap();
    json["identity"][field].clone()
}

fn control_post(control: &ControlPlane, path: &str, body: &str) -> (u16, String) {
    let out = tools::curl(&[
        "-s",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data",
        body,
        &format!("http://{}{path}", control.ready.http),
    ])
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or_default();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Steady load through the client proxy: `h2load` for `secs`, 2 clients at 100 requests/s
/// each (so at least 1,000 requests in 6 s).
fn start_load(pair: &Pair, secs: u32) -> Child {
    let h2load = tools::require("h2load", "nghttp2-client");
    Command::new(h2load)
        .args([
            "-D",
            &secs.to_string(),
            "-c",
            "2",
            "-m",
            "1",
            "--rps",
            "100",
        ])
        .arg(format!("http://{}/load", client_addr(pair)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for h2load and returns (requests done, 2xx), asserting nothing failed.
fn finish_load(mut child: Child, secs: u32) -> (u64, u64) {
    let status = wait::until(Duration::from_secs(u64::from(secs) + 30), || {
        child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "h2load still running".to_string())
    });
    if status.is_err() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let requests = text
        .lines()
        .find(|l| l.trim_start().starts_with("requests:"))
        .unwrap_or_else(|| panic!("no h2load summary: {text}"));
    // requests: 1200 total, 1200 started, 1200 done, 1200 succeeded, 0 failed, 0 errored, 0 timeout
    let field = |name: &str| -> u64 {
        requests
            .split(',')
            .find(|p| p.trim_end().ends_with(name))
            .and_then(|p| p.split_whitespace().find_map(|w| w.parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in {requests}"))
    };
    let status_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("status codes:"))
        .unwrap_or_default();
    let ok: u64 = status_line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert_eq!(field("failed"), 0, "{text}");
    assert_eq!(field("errored"), 0, "{text}");
    assert_eq!(field("timeout"), 0, "{text}");
    let done = field("done");
    assert_eq!(ok, done, "every request must answer 2xx: {text}");
    (done, ok)
}

#[test]
fn the_hop_between_proxies_is_mutual_tls() {
    let pair = start_pair(&[], &[]);
    wait_routed(&pair);
    let (code, body) = tools::http_get(client_addr(&pair), "/hello").unwrap();
    assert_eq!(code, 200, "{body}");
    // Both sides counted a completed mTLS handshake; nothing failed.
    assert!(
        metric(
            &pair.server,
            "trellis_tls_handshakes_total",
            &[("direction", "inbound")]
        ) >= 1.0
    );
    assert!(
        metric(
            &pair.client,
            "trellis_tls_handshakes_total",
            &[("direction", "outbound")]
        ) >= 1.0
    );
    assert_eq!(
        metric(&pair.client, "trellis_tls_handshake_failures_total", &[]),
        0.0
    );
    // Each proxy holds a certificate for its own SPIFFE ID, valid about 24 h.
    assert_eq!(
        identity_field(&pair.server, "identity"),
        "spiffe://cluster.local/ns/default/sa/echo"
    );
    let expiry = metric(
        &pair.client,
        "trellis_identity_cert_expiry_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (expiry - now - 86_400.0).abs() < 600.0,
        "expiry {expiry}, now {now}"
    );
    // The control plane counted its issuances.
    let out = tools::curl(&["-s", &format!("http://{}/metrics", pair.control.ready.http)]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("trellis_control_certificates_issued_total{result=\"issued\"} 2"),
        "{text}"
    );
}

#[test]
fn a_server_with_the_wrong_spiffe_id_is_refused_by_the_client() {
    let echo = HttpEcho::start().unwrap();
    let config = config_dir(&[(
        "echo.yaml",
        service_yaml("echo", "default", 8080, echo.addr.port(), "echo"),
    )])
    .unwrap();
    let control = ControlPlane::start(config.path()).unwrap();
    let url = control.url();
    // The impostor holds a real certificate of the mesh, for another identity.
    let impostor = ProxyBuilder::loopback("impostor-0")
        .service_account("impostor")
        .control(&url)
        .app(echo.addr)
        .start()
        .unwrap();
    impostor.wait_ready(CONVERGE).unwrap();
    // echo-0 registers as service account `echo` but advertises the impostor's inbound: the
    // endpoint discovery hands out says "expect echo" at an address where "impostor" answers.
    let echo_proxy = ProxyBuilder::loopback("echo-0")
        .label("app", "echo")
        .service_account("echo")
        .control(&url)
        .app(echo.addr)
        .advertise(impostor.ready.inbound)
        .start()
        .unwrap();
    let client = ProxyBuilder::loopback("client")
        .service_account("client")
        .control(&url)
        .outbound_port(&target("echo", 8080))
        .start()
        .unwrap();
    for p in [&echo_proxy, &client] {
        p.wait_ready(CONVERGE).unwrap();
    }
    let addr = client.outbound_port(&target("echo", 8080));
    let refused = wait::until(CONVERGE, || {
        let failures = metric(
            &client,
            "trellis_tls_handshake_failures_total",
            &[("direction", "outbound"), ("reason", "identity_mismatch")],
        );
        let (code, _) = tools::http_get(addr, "/who")?;
        if failures >= 1.0 && code == 502 {
            Ok(())
        } else {
            Err(format!("answered {code}, {failures} identity mismatches"))
        }
    });
    refused.unwrap();
    // The request never reached the app through the impostor.
    assert_eq!(echo.requests(), 0);
}

#[test]
fn join_tokens_gate_certificates() {
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret");
    std::fs::write(&secret, "a-control-plane-secret").unwrap();
    let secret_arg = secret.to_string_lossy().into_owned();
    let echo = HttpEcho::start().unwrap();
    let config = config_dir(&[(
        "echo.yaml",
        service_yaml("echo", "default", 8080, echo.addr.port(), "echo"),
    )])
    .unwrap();
    let control = ControlPlane::start_with(
        config.path(),
        LOOPBACK_ANY.parse().unwrap(),
        None,
        &["--require-join-token", "--join-token-secret", &secret_arg],
    )
    .unwrap();
    let url = control.url();
    // A token for echo, and one for another identity.
    let (code, body) = control_post(
        &control,
        "/api/v1/identity/join-tokens",
        r#"{"namespace":"default","service_account":"echo"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = token["token"].as_str().unwrap().to_string();

    let without = ProxyBuilder::loopback("no-token")
        .service_account("echo")
        .control(&url)
        .app(echo.addr)
        .start();
    // Without a token the proxy never becomes ready (no certificate, so no ready file), and the
    // CA counted the refusals.
    assert!(
        without.is_err(),
        "a proxy without a join token became ready"
    );
    let out = tools::curl(&["-s", &format!("http://{}/metrics", control.ready.http)]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("trellis_control_certificates_issued_total{result=\"refused\"} 0"),
        "{text}"
    );
    // (A token for another identity, forged or expired tokens: refused by the CA; see the unit
    // tests of trellis_control::ca, which call the same code without a 30 s ready timeout.)
    // The right token works.
    let good = ProxyBuilder::loopback("echo-0")
        .service_account("echo")
        .control(&url)
        .app(echo.addr)
        .arg("--join-token")
        .arg(&token)
        .start()
        .unwrap();
    good.wait_ready(CONVERGE).unwrap();
    let out = tools::curl(&["-s", &format!("http://{}/metrics", control.ready.http)]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("trellis_control_certificates_issued_total{result=\"issued\"} 1"),
        "{text}"
    );
}

#[test]
fn leaf_renewal_under_load_loses_no_request() {
    let pair = start_pair(&["--cert-ttl", "4s"], &[("dr.yaml", SHORT_CONNECTIONS)]);
    wait_routed(&pair);
    let renewals_before = identity_field(&pair.server, "renewals").as_u64().unwrap();
    let load = start_load(&pair, 8);
    let (done, _) = finish_load(load, 8);
    assert!(done >= 1000, "only {done} requests");
    // Leaves lived 4 s and were renewed at 40-50% of that: several times during the load.
    for proxy in [&pair.server, &pair.client] {
        let renewals = identity_field(proxy, "renewals").as_u64().unwrap();
        assert!(renewals >= renewals_before + 3, "only {renewals} renewals");
    }
    // New connections kept being made (and so handshakes with renewed leaves).
    assert!(
        metric(
            &pair.server,
            "trellis_tls_handshakes_total",
            &[("direction", "inbound")]
        ) >= 20.0
    );
    assert_eq!(
        metric(&pair.client, "trellis_tls_handshake_failures_total", &[]),
        0.0
    );
}

#[test]
fn trust_anchor_rotation_under_load_loses_no_request() {
    let pair = start_pair(&[], &[("dr.yaml", SHORT_CONNECTIONS)]);
    wait_routed(&pair);
    let inbound = || {
        metric(
            &pair.server,
            "trellis_requests_total",
            &[("direction", "inbound")],
        )
    };
    let before_load = inbound();
    let load = start_load(&pair, 12);
    let proxies = [&pair.server, &pair.client];
    let wait_all = |field: &str, want: u64| {
        wait::until(CONVERGE, || {
            for p in proxies {
                let got = identity_field(p, field).as_u64().unwrap_or(0);
                if got != want {
                    return Err(format!("{field} is {got}, want {want}"));
                }
            }
            Ok(())
        })
        .unwrap();
    };
    // The load is flowing before the first step.
    wait::until(CONVERGE, || match inbound() - before_load {
        n if n >= 50.0 => Ok(()),
        n => Err(format!("{n} load requests answered so far")),
    })
    .unwrap();
    // 1. A new anchor joins the bundle; every proxy must hold both before anything is issued
    //    from it.
    let (code, body) = control_post(&pair.control, "/api/v1/identity/rotate/prepare", "{}");
    assert_eq!(code, 200, "{body}");
    wait_all("trust_anchors", 2);
    // 2. The new issuer signs; every proxy renews at once.
    let (code, body) = control_post(&pair.control, "/api/v1/identity/rotate/activate", "{}");
    assert_eq!(code, 200, "{body}");
    wait_all("issuer_generation", 2);
    // New leaves meet old ones under load: connections handshaken with the renewed leaves
    // carry load while those made before still drain.
    let handshakes = || {
        metric(
            &pair.server,
            "trellis_tls_handshakes_total",
            &[("direction", "inbound")],
        )
    };
    let (handshakes_at, inbound_at) = (handshakes(), inbound());
    // Bounded well inside the 12 s load: ~5 handshakes and 100 requests a second.
    wait::until(Duration::from_secs(6), || {
        let (new_handshakes, served) = (handshakes() - handshakes_at, inbound() - inbound_at);
        (new_handshakes >= 5.0 && served >= 100.0)
            .then_some(())
            .ok_or(format!(
                "{new_handshakes} handshakes and {served} requests since the new issuer"
            ))
    })
    .unwrap();
    // 3. The old anchor is retired.
    let (code, body) = control_post(&pair.control, "/api/v1/identity/rotate/retire", "{}");
    assert_eq!(code, 200, "{body}");
    wait_all("trust_anchors", 1);
    let (done, _) = finish_load(load, 12);
    assert!(done >= 1000, "only {done} requests");
    // After the rotation, fresh connections still handshake: the new anchor alone suffices.
    let before = metric(
        &pair.server,
        "trellis_tls_handshakes_total",
        &[("direction", "inbound")],
    );
    for i in 0..30 {
        let (code, body) = tools::http_get(client_addr(&pair), &format!("/after/{i}")).unwrap();
        assert_eq!(code, 200, "{body}");
    }
    let after = metric(
        &pair.server,
        "trellis_tls_handshakes_total",
        &[("direction", "inbound")],
    );
    assert!(after > before, "no new handshake after the rotation");
    assert_eq!(
        metric(&pair.client, "trellis_tls_handshake_failures_total", &[]),
        0.0
    );
}

#[test]
fn destination_rule_tls_disable_keeps_the_hop_plaintext() {
    let disable = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: echo, namespace: default}\nspec:\n  host: echo\n  trafficPolicy:\n    tls: {mode: DISABLE}\n";
    let pair = start_pair(&[], &[("dr.yaml", disable)]);
    wait_routed(&pair);
    let (code, body) = tools::http_get(client_addr(&pair), "/plain").unwrap();
    assert_eq!(code, 200, "{body}");
    // Still the meshed HTTP/2 hop, but no TLS on it.
    assert_eq!(
        metric(
            &pair.server,
            "trellis_tls_handshakes_total",
            &[("direction", "inbound")]
        ),
        0.0
    );
    assert!(
        metric(
            &pair.server,
            "trellis_protocol_detections_total",
            &[("direction", "inbound"), ("outcome", "http2")]
        ) >= 1.0
    );
}

/// The protocol each inbound request whose path starts with `prefix` reached the server proxy
/// with, from its JSON access log.
fn arrived_as(log: &std::path::Path, prefix: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["direction"] == "inbound")
        .filter(|v| v["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
        .map(|v| v["protocol"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// One HTTP/1.1 GET through the client proxy. curl, since tools::http_get sends HTTP/1.0,
/// which stays HTTP/1.0 and whose connection closes after it.
fn get_http11(pair: &Pair, path: &str) -> Result<tools::CurlReply, String> {
    let url = format!("http://{}{path}", client_addr(pair));
    tools::curl_http(&["--http1.1", "-sS", &url])
}

/// Sends GETs under `prefix` until one reaches the server proxy as `protocol` (a config change
/// is live once the client proxy has it).
fn wait_arriving_as(pair: &Pair, log: &std::path::Path, prefix: &str, protocol: &str) {
    let mut sent = 0;
    wait::until(CONVERGE, || {
        sent += 1;
        let reply = get_http11(pair, &format!("{prefix}{sent}"))?;
        if reply.status != 200 {
            return Err(format!("answered {}: {}", reply.status, reply.body));
        }
        let seen = arrived_as(log, prefix);
        seen.iter()
            .any(|p| p == protocol)
            .then_some(())
            .ok_or(format!("still {seen:?}"))
    })
    .unwrap();
}

/// A pair whose server proxy writes a JSON access log, and the log's path.
fn start_logged_pair(config: &[(&str, &str)]) -> (Pair, tempfile::TempDir, std::path::PathBuf) {
    let scratch = trellis_testkit::mesh::scratch_dir().unwrap();
    let log = scratch.path().join("server-access.log");
    let log_arg = log.display().to_string();
    let pair = start_pair_with(
        &[],
        config,
        &["--access-log", "json", "--access-log-path", &log_arg],
    );
    wait_routed(&pair);
    (pair, scratch, log)
}

/// `h2UpgradePolicy: DO_NOT_UPGRADE` (Istio's default): HTTP/1.1 from the application stays
/// HTTP/1.1 between the proxies, still mTLS, on connections the client proxy keeps and reuses;
/// removing the rule brings back the multiplexed HTTP/2 hop, without a restart.
#[test]
fn do_not_upgrade_keeps_http1_between_the_proxies_over_pooled_mtls() {
    let keep = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: echo, namespace: default}\nspec:\n  host: echo\n  trafficPolicy:\n    connectionPool:\n      http: {h2UpgradePolicy: DO_NOT_UPGRADE}\n";
    let (pair, _scratch, log) = start_logged_pair(&[("dr.yaml", keep)]);
    let from_client = [
        ("direction", "inbound"),
        ("tls", "true"),
        (
            "source_identity",
            "spiffe://cluster.local/ns/default/sa/client",
        ),
    ];
    assert_eq!(get_http11(&pair, "/first").unwrap().status, 200);
    let handshakes_before = metric(
        &pair.server,
        "trellis_tls_handshakes_total",
        &[("direction", "inbound")],
    );
    let mtls_before = metric(&pair.server, "trellis_requests_total", &from_client);
    assert!(handshakes_before >= 1.0, "the hop is mTLS");
    for i in 0..20 {
        let reply = get_http11(&pair, &format!("/keep/{i}")).unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    wait::until(CONVERGE, || {
        let n = arrived_as(&log, "/keep/").len();
        (n == 20).then_some(()).ok_or(format!("{n} of 20 logged"))
    })
    .unwrap();
    let kept = arrived_as(&log, "/keep/");
    assert!(kept.iter().all(|p| p == "HTTP/1.1"), "{kept:?}");
    // Over mTLS, from the client's identity, on the connection already open: sequential
    // requests reuse one pooled connection, so no handshake more.
    assert_eq!(
        metric(&pair.server, "trellis_requests_total", &from_client) - mtls_before,
        20.0
    );
    assert_eq!(
        metric(
            &pair.server,
            "trellis_tls_handshakes_total",
            &[("direction", "inbound")]
        ),
        handshakes_before
    );
    // Without the rule, the mesh default again: HTTP/1.1 rides the HTTP/2 hop.
    std::fs::remove_file(pair.config.path().join("dr.yaml")).unwrap();
    wait_arriving_as(&pair, &log, "/default/", "HTTP/2");
}

/// The mesh-wide default from Istio's MeshConfig (the ConfigMap `istio` in the root namespace):
/// `h2UpgradePolicy: DO_NOT_UPGRADE` keeps HTTP/1.1 between the proxies for every destination;
/// a DestinationRule's `UPGRADE` overrides it for its host, and removing that rule brings the
/// mesh default back, all without a restart.
#[test]
fn mesh_config_h2_upgrade_policy_is_the_default_a_destination_rule_overrides() {
    let mesh = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: trellis-system}\ndata:\n  mesh: |-\n    h2UpgradePolicy: DO_NOT_UPGRADE\n";
    let (pair, _scratch, log) = start_logged_pair(&[("mesh.yaml", mesh)]);
    wait::until(CONVERGE, || {
        let (_, dump) = pair.client.admin_get("/config_dump")?;
        let dump: serde_json::Value = serde_json::from_str(&dump).map_err(|e| e.to_string())?;
        let policy = &dump["mesh_defaults"]["h2_upgrade_policy"];
        (policy == "DO_NOT_UPGRADE")
            .then_some(())
            .ok_or(format!("{policy}"))
    })
    .unwrap();
    for i in 0..5 {
        assert_eq!(
            get_http11(&pair, &format!("/mesh/{i}")).unwrap().status,
            200
        );
    }
    wait::until(CONVERGE, || {
        let n = arrived_as(&log, "/mesh/").len();
        (n == 5).then_some(()).ok_or(format!("{n} of 5 logged"))
    })
    .unwrap();
    let kept = arrived_as(&log, "/mesh/");
    assert!(kept.iter().all(|p| p == "HTTP/1.1"), "{kept:?}");
    let upgrade = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: echo, namespace: default}\nspec:\n  host: echo\n  trafficPolicy:\n    connectionPool:\n      http: {h2UpgradePolicy: UPGRADE}\n";
    std::fs::write(pair.config.path().join("dr.yaml"), upgrade).unwrap();
    wait_arriving_as(&pair, &log, "/override/", "HTTP/2");
    std::fs::remove_file(pair.config.path().join("dr.yaml")).unwrap();
    wait_arriving_as(&pair, &log, "/again/", "HTTP/1.1");
}

#[test]
fn a_proxy_that_cannot_renew_keeps_serving_until_expiry_and_says_so() {
    // 10 s leaves: renewal is due after 4-5 s, so the "renewal failing" window (until expiry)
    // is wide enough for a loaded machine to observe.
    let mut pair = start_pair(&["--cert-ttl", "10s"], &[]);
    wait_routed(&pair);
    // No CA any more: renewals fail.
    pair.control.process().terminate(Duration::from_secs(5));
    let warned = wait::until(Duration::from_secs(12), || {
        let (code, body) = pair.client.admin_get("/ready")?;
        if code == 200 && body.contains("certificate renewal failing") {
            Ok(body)
        } else {
            Err(format!("{code} {body}"))
        }
    });
    let warned = warned.unwrap();
    assert!(warned.contains("expires in"), "{warned}");
    // Still serving with the current certificate (the pooled mTLS connection and new ones).
    let (code, body) = tools::http_get(client_addr(&pair), "/still").unwrap();
    assert_eq!(code, 200, "{body}");
    // Once it expired, the proxy is no longer ready.
    wait::until(Duration::from_secs(15), || {
        let (code, body) = pair.client.admin_get("/ready")?;
        if code == 503 && body.contains("expired") {
            Ok(())
        } else {
            Err(format!("{code} {body}"))
        }
    })
    .unwrap();
}

#[test]
fn strict_refuses_a_raw_plaintext_connection_to_the_inbound() {
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec:\n  mtls: {mode: STRICT}\n";
    let pair = start_pair(&[], &[("pa.yaml", strict)]);
    wait::until(CONVERGE, || {
        let (_, dump) = pair.server.admin_get("/config_dump")?;
        dump.contains("\"STRICT\"")
            .then_some(())
            .ok_or_else(|| "no STRICT policy yet".to_string())
    })
    .unwrap();
    // The meshed client gets through (mTLS).
    wait_routed(&pair);
    // Plaintext HTTP straight to the server proxy's inbound: closed without an answer.
    let inbound = pair.server.ready.inbound;
    match tools::http_get(inbound, "/plaintext") {
        Ok((code, body)) => panic!("STRICT answered plaintext with {code}: {body}"),
        Err(e) => eprintln!("plaintext refused as expected: {e}"),
    }
    assert!(
        metric(
            &pair.server,
            "trellis_tls_handshake_failures_total",
            &[("direction", "inbound"), ("reason", "plaintext_refused")]
        ) >= 1.0
    );
    let (code, body) = tools::http_get(client_addr(&pair), "/meshed").unwrap();
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_restarted_control_plane_with_a_new_ca_is_followed_at_once() {
    let mut pair = start_pair(&[], &[("dr.yaml", SHORT_CONNECTIONS)]);
    wait_routed(&pair);
    let discovery = pair.control.ready.discovery;
    let before: Vec<u64> = [&pair.server, &pair.client]
        .iter()
        .map(|p| identity_field(p, "renewals").as_u64().unwrap())
        .collect();
    // A new process generates a new CA: nothing the proxies hold chains to it.
    pair.control.process().terminate(Duration::from_secs(5));
    pair.control = ControlPlane::start_with(pair.config.path(), discovery, None, &[]).unwrap();
    // Each proxy sees a bundle sharing no root with its own and renews at once (not at
    // half-life, 12 h away).
    wait::until(CONVERGE, || {
        for (p, n) in [&pair.server, &pair.client].iter().zip(&before) {
            let now = identity_field(p, "renewals").as_u64().unwrap_or(0);
            if now <= *n {
                return Err(format!("{} has not renewed ({now})", p.name));
            }
        }
        Ok(())
    })
    .unwrap();
    // New connections (one per 20 requests) handshake with the new CA's leaves.
    for i in 0..50 {
        let (code, body) = tools::http_get(client_addr(&pair), &format!("/after/{i}")).unwrap();
        assert_eq!(code, 200, "{body}");
    }
}

/// A STRICT PeerAuthentication annotated `trellis.io/dry-run: "true"` lets plaintext in and
/// counts it in `trellis_mtls_dry_run_plaintext_total`; meshed traffic is not counted. (The
/// same policy enforced refuses it: `strict_refuses_a_raw_plaintext_connection_to_the_inbound`.)
#[test]
fn dry_run_strict_lets_plaintext_in_and_counts_it() {
    let strict = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default, annotations: {\"trellis.io/dry-run\": \"true\"}}\nspec:\n  mtls: {mode: STRICT}\n";
    let pair = start_pair(&[], &[("pa.yaml", strict)]);
    wait::until(CONVERGE, || {
        let (_, dump) = pair.server.admin_get("/config_dump")?;
        let dump: serde_json::Value = serde_json::from_str(&dump).map_err(|e| e.to_string())?;
        (dump["inbound_policy"]["dry_run"]["mode"] == "STRICT"
            && dump["inbound_policy"]["mode"] == "PERMISSIVE")
            .then_some(())
            .ok_or_else(|| "no dry-run STRICT policy yet".to_string())
    })
    .unwrap();
    wait_routed(&pair);
    let counted = |pair: &Pair| metric(&pair.server, "trellis_mtls_dry_run_plaintext_total", &[]);
    let before = counted(&pair);
    for _ in 0..3 {
        let (code, body) = tools::http_get(client_addr(&pair), "/meshed").unwrap();
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(counted(&pair), before, "meshed mTLS is not counted");
    let inbound = pair.server.ready.inbound;
    for _ in 0..3 {
        let (code, body) = tools::http_get(inbound, "/plaintext").unwrap();
        assert_eq!(code, 200, "dry-run STRICT must let plaintext in: {body}");
    }
    assert_eq!(counted(&pair), before + 3.0);
    assert_eq!(
        metric(
            &pair.server,
            "trellis_tls_handshake_failures_total",
            &[("direction", "inbound"), ("reason", "plaintext_refused")]
        ),
        0.0
    );
}
