//! Mesh mTLS between pods (network namespaces with the iptables rules of `trellis-proxy init`)
//! under Istio PeerAuthentication: with STRICT, plaintext (curl) and TLS without a mesh client
//! certificate (`openssl s_client`) cannot reach the app while the meshed client can; with
//! PERMISSIVE both can, and the metrics label the plaintext request `tls="false"`. Needs root.

// Test helpers outside #[test] functions fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use trellis_testkit::mesh::{config_dir, service_yaml_with_cluster_ip};
use trellis_testkit::netns::{PROXY_UID, require_root};
use trellis_testkit::{ControlPlane, Pod, Proxy, ProxyBuilder, wait};

const CONVERGE: Duration = Duration::from_secs(30);

fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: default\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

/// `curl` from `pod` (as `uid`, so the proxy uid bypasses pod A's own sidecar): the HTTP code,
/// or 0 when the connection failed.
fn curl_code(pod: &Pod, uid: Option<u32>, url: &str) -> u16 {
    let out = pod
        .curl(uid, &["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// `openssl s_client` from `pod` as the proxy uid (no sidecar on the way out) without a client
/// certificate, offering `alpn`: whether a TLS session was established and an HTTP answer came
/// back.
fn s_client_gets_http(pod: &Pod, target: SocketAddr, alpn: Option<&str>) -> bool {
    let mut cmd = pod.command_as(PROXY_UID, "openssl");
    cmd.args(["s_client", "-connect", &target.to_string(), "-quiet"]);
    if let Some(alpn) = alpn {
        cmd.args(["-alpn", alpn]);
    }
    cmd.stdin(Stdio::piped());
    // `-quiet` implies -ign_eof: send one request on stdin and read what comes back.
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
    }
    let out = wait::until(Duration::from_secs(10), || {
        child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "running".to_string())
    });
    if out.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let mut stdout = String::new();
    if let Some(mut s) = child.stdout.take() {
        use std::io::Read;
        let _ = s.read_to_string(&mut stdout);
    }
    stdout.contains("HTTP/1.1")
}

fn tls_handshakes(proxy: &Proxy, direction: &str) -> f64 {
    proxy
        .metrics()
        .sum("trellis_tls_handshakes_total", &[("direction", direction)])
}

#[test]
fn strict_refuses_plaintext_and_foreign_tls_permissive_allows_both() {
    if !require_root("strict_refuses_plaintext_and_foreign_tls_permissive_allows_both") {
        return;
    }
    let openssl = trellis_testkit::tools::which("openssl");
    let vip: std::net::IpAddr = "198.18.0.201".parse().unwrap();
    let node = trellis_testkit::Node::new().unwrap();
    let config = config_dir(&[
        (
            "b.yaml",
            service_yaml_with_cluster_ip("b", "default", vip, 80, 8080, "b"),
        ),
        ("pa.yaml", peer_authentication("STRICT")),
    ])
    .unwrap();
    let discovery = SocketAddr::new(node.ip().into(), 15010);
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
        .advertise(SocketAddr::new(b.ip().into(), 15006))
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
    // B has its certificate and its STRICT policy.
    wait::until(CONVERGE, || {
        let (_, dump) = b_proxy.admin_get("/config_dump")?;
        dump.contains("\"STRICT\"")
            .then_some(())
            .ok_or_else(|| "B has no STRICT policy yet".to_string())
    })
    .unwrap();

    // The meshed client (curl in pod A, captured by A's sidecar) reaches B over mTLS.
    let vip_url = format!("http://{vip}/meshed");
    wait::until(CONVERGE, || match curl_code(&a, None, &vip_url) {
        200 => Ok(()),
        code => Err(format!("meshed curl got {code}")),
    })
    .unwrap();
    assert!(tls_handshakes(&b_proxy, "inbound") >= 1.0);
    assert!(tls_handshakes(&a_proxy, "outbound") >= 1.0);

    // Plaintext straight to B's app port (the proxy uid skips A's sidecar; B's iptables still
    // send it to B's proxy): refused.
    let direct = format!("http://{}:8080/plaintext", b.ip());
    assert_eq!(
        curl_code(&a, Some(PROXY_UID), &direct),
        0,
        "STRICT let plaintext through"
    );
    let refused = b_proxy.metrics().sum(
        "trellis_tls_handshake_failures_total",
        &[("direction", "inbound"), ("reason", "plaintext_refused")],
    );
    assert!(refused >= 1.0, "the refusal was not counted");
    // TLS without a mesh client certificate: neither the app's own kind of TLS (no mesh ALPN)
    // nor a ClientHello that claims to be the mesh gets through.
    let b_app = SocketAddr::new(b.ip().into(), 8080);
    if openssl.is_some() {
        assert!(!s_client_gets_http(&a, b_app, None));
        assert!(!s_client_gets_http(&a, b_app, Some("h2,trellis-mesh")));
    } else {
        eprintln!("openssl not installed (Debian package openssl): s_client part skipped");
    }
    // The meshed client still works.
    assert_eq!(curl_code(&a, None, &vip_url), 200);

    // PERMISSIVE: plaintext gets through too, and is labelled tls="false".
    std::fs::write(
        config.path().join("pa.yaml"),
        peer_authentication("PERMISSIVE"),
    )
    .unwrap();
    wait::until(CONVERGE, || match curl_code(&a, Some(PROXY_UID), &direct) {
        200 => Ok(()),
        code => Err(format!("plaintext curl got {code}")),
    })
    .unwrap();
    assert_eq!(curl_code(&a, None, &vip_url), 200);
    let m = b_proxy.metrics();
    assert!(
        m.sum(
            "trellis_requests_total",
            &[("direction", "inbound"), ("tls", "false")]
        ) >= 1.0,
        "the plaintext request is not labelled tls=\"false\""
    );
    assert!(
        m.sum(
            "trellis_requests_total",
            &[("direction", "inbound"), ("tls", "true")]
        ) >= 1.0,
        "the meshed requests are not labelled tls=\"true\""
    );
}
