//! The ingress gateway (`trellis-proxy --mode gateway`) as real processes: a control plane
//! reading Istio `Gateway`/Gateway API `Gateway` YAML, a gateway proxy whose listeners come
//! from it, and meshed backends behind sidecars. Driven by curl (`--resolve` for SNI) with
//! certificates openssl makes per test, and `openssl s_server` as a TLS backend for
//! passthrough. Every port is a free one; the Gateways' own ports are remapped with
//! `--gateway-port`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use trellis_testkit::certs;
use trellis_testkit::mesh::config_dir;
use trellis_testkit::tools::{self, curl_http, free_port};
use trellis_testkit::{
    ControlPlane, HttpEcho, ManagedProcess, Proxy, ProxyBuilder, service_yaml, wait,
};

const CONVERGE: Duration = Duration::from_secs(30);

fn fixture(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/tests/fixtures")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A meshed backend: the echo app behind a sidecar that registers `app: <app>`.
fn backend(control: &ControlPlane, app: &str, echo: SocketAddr, port: u16) -> Proxy {
    ProxyBuilder::loopback(&format!("{app}-v1"))
        .label("app", app)
        .control(&control.url())
        .app(echo)
        .app_port(port)
        .start()
        .unwrap()
}

/// The gateway workload, with `labels`, each Gateway port remapped to a free local one.
fn gateway(control: &ControlPlane, labels: &[(&str, &str)], ports: &[(u16, u16)]) -> Proxy {
    let mut b = ProxyBuilder::loopback("ingressgateway")
        .control(&control.url())
        .arg("--mode")
        .arg("gateway");
    for (k, v) in labels {
        b = b.label(k, v);
    }
    for (gw, local) in ports {
        b = b
            .arg("--gateway-port")
            .arg(format!("{gw}=127.0.0.1:{local}"));
    }
    b.start().unwrap()
}

/// Retries `f` until it returns `Ok`, for at most `CONVERGE`; panics naming `what`.
fn eventually<T>(what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    wait::until(CONVERGE, f).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn get_200(url: &str, extra: &[&str]) -> Result<tools::CurlReply, String> {
    let mut args: Vec<&str> = extra.to_vec();
    args.push(url);
    let r = curl_http(&args)?;
    if r.status == 200 {
        Ok(r)
    } else {
        Err(format!("status {}: {}", r.status, r.body))
    }
}

fn productpage_through_gateway(config: &str, labels: &[(&str, &str)], gateway_port: u16) {
    let dir = config_dir(&[
        ("gateway.yaml", config.to_string()),
        (
            "productpage.yaml",
            service_yaml("productpage", "default", 9080, 9080, "productpage"),
        ),
    ])
    .unwrap();
    let control = ControlPlane::start(dir.path()).unwrap();
    let echo = HttpEcho::start().unwrap();
    let productpage = backend(&control, "productpage", echo.addr, 9080);
    let port = free_port();
    let _gw = gateway(&control, labels, &[(gateway_port, port)]);
    let url = format!("http://127.0.0.1:{port}/productpage");
    let reply = eventually("GET /productpage through the gateway", || {
        get_200(&url, &[])
    });
    assert_eq!(reply.echo().path, "/productpage");
    // Only the bound routes are exposed: anything else is the gateway's 404.
    let other = curl_http(&[&format!("http://127.0.0.1:{port}/admin")]).unwrap();
    assert_eq!(other.status, 404, "{other:?}");
    // The hop from the gateway into the mesh is mTLS to productpage's sidecar.
    if let Err(e) = productpage.metrics().check_meshed_inbound() {
        panic!("gateway -> productpage hop is not meshed: {e}");
    }
    assert!(echo.requests() >= 1);
}

#[test]
fn istio_gateway_bookinfo_gateway_yaml_reaches_productpage() {
    productpage_through_gateway(
        &fixture("networking/bookinfo-gateway.yaml"),
        &[
            ("istio", "ingressgateway"),
            ("app", "trellis-ingressgateway"),
        ],
        8080,
    );
}

#[test]
fn gateway_api_bookinfo_gateway_yaml_reaches_productpage() {
    productpage_through_gateway(
        &fixture("gateway-api/bookinfo-gateway.yaml"),
        &[("gateway.networking.k8s.io/gateway-name", "bookinfo-gateway")],
        80,
    );
}

/// A self-signed certificate and key for `host` (PEM files in `dir`).
fn cert(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    certs::self_signed(dir, host).unwrap_or_else(|e| panic!("{e}"))
}

fn tls_secret(name: &str, cert: &Path, key: &Path) -> String {
    let indent = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert),
        indent(key)
    )
}

const GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-a, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, credentialName: cert-a}
  - port: {number: 443, name: https-b, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: SIMPLE, credentialName: cert-b}
  - port: {number: 443, name: tls-c, protocol: TLS}
    hosts: [c.example.com]
    tls: {mode: PASSTHROUGH}
  - port: {number: 443, name: https-d, protocol: HTTPS}
    hosts: [d.example.com]
    tls: {mode: SIMPLE, credentialName: missing}
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [a.example.com, b.example.com]
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [a.example.com]
  gateways: [edge]
  http:
  - route:
    - destination: {host: svc-a, port: {number: 8080}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b}
spec:
  hosts: [b.example.com]
  gateways: [edge]
  http:
  - route:
    - destination: {host: svc-b, port: {number: 8080}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: c}
spec:
  hosts: [c.example.com]
  gateways: [edge]
  tls:
  - match:
    - sniHosts: [c.example.com]
    route:
    - destination: {host: svc-c, port: {number: 8443}}
";

#[test]
fn gateway_https_sni_two_hosts_passthrough_redirect_and_unknown_credential() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, ka) = cert(certs.path(), "a.example.com");
    let (cb, kb) = cert(certs.path(), "b.example.com");
    let (cc, kc) = cert(certs.path(), "c.example.com");
    let dir = config_dir(&[
        ("gateway.yaml", GATEWAY.to_string()),
        ("cert-a.yaml", tls_secret("cert-a", &ca, &ka)),
        ("cert-b.yaml", tls_secret("cert-b", &cb, &kb)),
        (
            "services.yaml",
            [
                service_yaml("svc-a", "default", 8080, 8080, "svc-a"),
                service_yaml("svc-b", "default", 8080, 8080, "svc-b"),
                service_yaml("svc-c", "default", 8443, 8443, "svc-c"),
            ]
            .join("---\n"),
        ),
    ])
    .unwrap();
    let mut control = ControlPlane::start(dir.path()).unwrap();
    let (echo_a, echo_b) = (HttpEcho::start().unwrap(), HttpEcho::start().unwrap());
    let _a = backend(&control, "svc-a", echo_a.addr, 8080);
    let _b = backend(&control, "svc-b", echo_b.addr, 8080);
    // The passthrough backend terminates TLS itself with c.example.com's certificate.
    let s_port = free_port();
    let mut s_server = Command::new(tools::require("openssl", "openssl"));
    s_server.args([
        "s_server",
        "-accept",
        &format!("127.0.0.1:{s_port}"),
        "-cert",
        cc.to_str().unwrap(),
        "-key",
        kc.to_str().unwrap(),
        "-www",
        "-quiet",
    ]);
    let _s_server = ManagedProcess::spawn("openssl-s_server", s_server).unwrap();
    let _c = backend(
        &control,
        "svc-c",
        format!("127.0.0.1:{s_port}").parse().unwrap(),
        8443,
    );
    let (https, http) = (free_port(), free_port());
    let _gw = gateway(
        &control,
        &[("istio", "ingressgateway")],
        &[(443, https), (80, http)],
    );
    let resolve = |host: &str, port: u16| format!("{host}:{port}:127.0.0.1");

    // Each host gets its own certificate (curl verifies it against that host's alone) and
    // its own backend.
    for (host, pem, echo) in [
        ("a.example.com", &ca, &echo_a),
        ("b.example.com", &cb, &echo_b),
    ] {
        let before = echo.requests();
        let r = eventually(&format!("https://{host} through the gateway"), || {
            get_200(
                &format!("https://{host}:{https}/hello"),
                &[
                    "--resolve",
                    &resolve(host, https),
                    "--cacert",
                    pem.to_str().unwrap(),
                ],
            )
        });
        assert_eq!(r.echo().path, "/hello");
        assert_eq!(
            echo.requests(),
            before + 1,
            "{host} reached its own backend"
        );
    }
    // b's name with a's certificate as the only trusted root: the handshake is b's cert.
    let wrong = curl_http(&[
        "--resolve",
        &resolve("b.example.com", https),
        "--cacert",
        ca.to_str().unwrap(),
        &format!("https://b.example.com:{https}/"),
    ]);
    assert!(
        wrong.is_err(),
        "b.example.com must not be served a's certificate: {wrong:?}"
    );

    // TLS passthrough: the backend's own certificate reaches curl untouched.
    let page = eventually("passthrough to c.example.com", || {
        get_200(
            &format!("https://c.example.com:{https}/"),
            &[
                "--resolve",
                &resolve("c.example.com", https),
                "--cacert",
                cc.to_str().unwrap(),
            ],
        )
    });
    assert!(page.body.contains("s_server"), "{}", page.body);

    // httpsRedirect: plain HTTP gets a 301 to the same host and path over https.
    let out = tools::curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "--resolve",
        &resolve("a.example.com", http),
        &format!("http://a.example.com:{http}/path?q=1"),
    ])
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "301 https://a.example.com/path?q=1"
    );

    // A credentialName no Secret answers: that server is left out, named precisely, and the
    // others keep working (above).
    let log = control.process().log();
    assert!(
        log.contains("spec.servers[3].tls.credentialName: Secret \\\"missing\\\" not found")
            || log.contains("spec.servers[3].tls.credentialName: Secret \"missing\" not found"),
        "the control plane names the missing Secret: {log}"
    );
    let d = curl_http(&[
        "--resolve",
        &resolve("d.example.com", https),
        "-k",
        &format!("https://d.example.com:{https}/"),
    ]);
    assert!(d.is_err(), "d.example.com has no certificate: {d:?}");
}

#[test]
fn gateway_listener_conflict_is_refused_and_the_last_good_config_stays() {
    let dir = config_dir(&[
        ("gateway.yaml", fixture("networking/bookinfo-gateway.yaml")),
        (
            "productpage.yaml",
            service_yaml("productpage", "default", 9080, 9080, "productpage"),
        ),
    ])
    .unwrap();
    let control = ControlPlane::start(dir.path()).unwrap();
    let echo = HttpEcho::start().unwrap();
    let _pp = backend(&control, "productpage", echo.addr, 9080);
    let port = free_port();
    let _gw = gateway(&control, &[("istio", "ingressgateway")], &[(8080, port)]);
    let url = format!("http://127.0.0.1:{port}/productpage");
    eventually("GET /productpage", || get_200(&url, &[]));

    // The same file, edited: a second server on 8080 with another protocol.
    let broken = fixture("networking/bookinfo-gateway.yaml").replacen(
        "    hosts:\n    - \"*\"\n",
        "    hosts:\n    - \"*\"\n  - port:\n      number: 8080\n      name: tls\n      protocol: TLS\n    hosts: [\"*\"]\n    tls: {mode: PASSTHROUGH}\n",
        1,
    );
    assert_ne!(broken, fixture("networking/bookinfo-gateway.yaml"));
    std::fs::write(dir.path().join("gateway.yaml"), broken).unwrap();
    let api = format!("{}/api/v1/config", control.ready.http);
    let message = eventually("the Gateway reported Invalid", || {
        let (_, body) = tools::http_get(control.ready.http, "/api/v1/config")?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let rows = v
            .as_array()
            .cloned()
            .or_else(|| v["resources"].as_array().cloned())
            .unwrap_or_default();
        rows.iter()
            .find(|r| r["kind"] == "Gateway" && r["status"] == "Invalid")
            .map(|r| r["message"].as_str().unwrap_or_default().to_string())
            .ok_or_else(|| format!("{api}: {body}"))
    });
    assert!(
        message.contains("gateway.yaml: Gateway default/bookinfo-gateway: spec.servers[1].port.protocol: port 8080 is already declared"),
        "{message}"
    );
    // The file's last good version stays in force: the page is still served.
    for _ in 0..10 {
        get_200(&url, &[]).unwrap();
    }
}
