//! Two meshed `trellis-proxy` processes and a real `trellis-control`: client → client proxy →
//! (meshed hop, HTTP/2) → server proxy → app, driven by real clients (curl, h2load).

// Test helpers outside #[test] functions fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use trellis_testkit::servers::{tcp_roundtrip, websocket_roundtrip};
use trellis_testkit::tools::{self, curl_http};
use trellis_testkit::{HttpEcho, MeshBuilder, TcpEcho};

const CONVERGE: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn curl_http1_and_h2c_through_the_proxy_pair() {
    let echo = HttpEcho::start().unwrap();
    let mesh = MeshBuilder::new().service("echo", 8080, echo.addr).start();
    mesh.wait_http_route("echo", CONVERGE);
    let url = format!("http://{}/pair", mesh.client_port("echo"));

    let h1 = curl_http(&["-H", "x-test: h1", "--data-binary", "0123456789", &url]).unwrap();
    // The hop between the proxies is meshed: the server proxy saw the peer's HTTP/2 (or TLS,
    // once the hop is encrypted) although curl spoke HTTP/1.1 to the client proxy.
    if let Err(e) = mesh.server("echo").metrics().check_meshed_inbound() {
        panic!("the proxy-to-proxy hop is not meshed: {e}");
    }
    assert_eq!(h1.status, 200, "{h1:?}");
    assert_eq!(
        h1.http_version, "1.1",
        "the client's own protocol is kept towards the client"
    );
    let reply = h1.echo();
    assert_eq!(
        (reply.method.as_str(), reply.path.as_str(), reply.body_len),
        ("POST", "/pair", 10)
    );
    assert_eq!(reply.headers.get("x-test").map(String::as_str), Some("h1"));

    let h2 = curl_http(&["--http2-prior-knowledge", "-H", "x-test: h2", &url]).unwrap();
    assert_eq!(h2.status, 200, "{h2:?}");
    assert_eq!(h2.http_version, "2");
    assert_eq!(
        h2.echo().headers.get("x-test").map(String::as_str),
        Some("h2")
    );

    let teapot = curl_http(&[&format!("http://{}/status/503", mesh.client_port("echo"))]).unwrap();
    assert_eq!(teapot.status, 503, "an app's 5xx passes through unchanged");

    // Each proxy counted its side: the client proxy outbound, the server proxy inbound.
    let client = mesh.client.metrics();
    let server = mesh.server("echo").metrics();
    assert!(
        client.sum(
            "trellis_requests_total",
            &[("direction", "outbound"), ("status_code", "200")]
        ) >= 2.0
    );
    assert!(
        server.sum(
            "trellis_requests_total",
            &[("direction", "inbound"), ("status_code", "200")]
        ) >= 2.0
    );
    assert!(
        server.sum(
            "trellis_requests_total",
            &[("direction", "inbound"), ("status_code", "503")]
        ) >= 1.0
    );
}

/// h2load's summary line: `status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx`.
fn h2load_2xx(summary: &str) -> Option<u64> {
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with("status codes:"))?;
    line.split(':')
        .nth(1)?
        .split(',')
        .next()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn h2load_through_the_proxy_pair() {
    let h2load = tools::require("h2load", "nghttp2-client");
    let echo = HttpEcho::start().unwrap();
    let mesh = MeshBuilder::new().service("echo", 8080, echo.addr).start();
    mesh.wait_http_route("echo", CONVERGE);
    let url = format!("http://{}/load", mesh.client_port("echo"));

    for (label, extra) in [("h2c", None), ("http/1.1", Some("--h1"))] {
        let mut cmd = std::process::Command::new(&h2load);
        cmd.args(["-n", "2000", "-c", "4", "-m", "10"]);
        if let Some(flag) = extra {
            cmd.arg(flag);
        }
        cmd.arg(&url);
        let out = tools::run_bounded(&mut cmd, Duration::from_secs(120)).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "h2load {label} failed: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            h2load_2xx(&text),
            Some(2000),
            "h2load {label}: not all 2xx:\n{text}"
        );
    }
    let server = mesh.server("echo").metrics();
    assert!(server.sum("trellis_requests_total", &[("direction", "inbound")]) >= 4000.0);
}

#[test]
fn websocket_through_the_proxy_pair() {
    let echo = HttpEcho::start().unwrap();
    let mesh = MeshBuilder::new().service("echo", 8080, echo.addr).start();
    mesh.wait_http_route("echo", CONVERGE);
    let messages = ["hello", "over", "the mesh"];
    let echoed = websocket_roundtrip(
        mesh.client_port("echo"),
        "echo.default:8080",
        &messages,
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(echoed, messages);
    assert_eq!(
        echo.stats
            .websocket_messages
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[test]
fn opaque_tcp_with_half_close_through_the_proxy_pair() {
    let echo = TcpEcho::start().unwrap();
    let mesh = MeshBuilder::new()
        .service("tcpecho", 9000, echo.addr)
        .start();
    let port = mesh.client_port("tcpecho");
    let payload: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 253) as u8).collect();
    // The first connection may race the server proxy's registration; retry until the mesh has
    // converged (bounded), then check the bytes exactly.
    let echoed = trellis_testkit::wait::until(CONVERGE, || {
        tcp_roundtrip(port, payload.clone(), TIMEOUT)
            .map_err(|e| e.to_string())
            .and_then(|e| {
                if e.is_empty() {
                    Err("empty echo".to_string())
                } else {
                    Ok(e)
                }
            })
    })
    .unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echo differs from what was sent");
    let client = mesh.client.metrics();
    assert!(
        client.sum("trellis_tcp_sent_bytes_total", &[("direction", "outbound")])
            >= payload.len() as f64
    );
}

#[test]
fn upload_and_download_100_mib_with_bounded_proxy_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    const RSS_LIMIT: u64 = 40 * 1024 * 1024;
    let echo = HttpEcho::start().unwrap();
    let mesh = MeshBuilder::new().service("echo", 8080, echo.addr).start();
    mesh.wait_http_route("echo", CONVERGE);

    let dir = trellis_testkit::mesh::scratch_dir().unwrap();
    let file = dir.path().join("upload.bin");
    // Sparse: 100 MiB of zeros without writing them; curl still sends every byte.
    std::fs::File::create(&file).unwrap().set_len(SIZE).unwrap();
    let url = format!("http://{}/upload", mesh.client_port("echo"));
    let file_arg = file.display().to_string();
    // -T streams the file (curl does not load it into memory); --max-time well above what 100 MiB
    // over loopback needs even on a slow debug build.
    let reply = curl_http(&["--max-time", "120", "-X", "POST", "-T", &file_arg, &url]).unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.echo().body_len,
        SIZE,
        "the server must receive every byte"
    );

    let h2 = curl_http(&[
        "--max-time",
        "120",
        "--http2-prior-knowledge",
        "-X",
        "POST",
        "-T",
        &file_arg,
        &url,
    ])
    .unwrap();
    assert_eq!(h2.status, 200, "{h2:?}");
    assert_eq!(h2.echo().body_len, SIZE);

    // And the other way: a 100 MiB response, streamed to the client.
    let download_url = format!("http://{}/bytes/{SIZE}", mesh.client_port("echo"));
    let download = tools::curl(&[
        "--max-time",
        "120",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        &download_url,
    ])
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&download.stdout).trim(),
        format!("200 {SIZE}"),
        "{download:?}"
    );

    for proxy in std::iter::once(&mesh.client).chain(mesh.servers.values()) {
        let peak = proxy.peak_rss_bytes().unwrap();
        assert!(
            peak < RSS_LIMIT,
            "proxy {} peaked at {} MiB resident while streaming 100 MiB (limit {} MiB): bodies must stream",
            proxy.name,
            peak / (1024 * 1024),
            RSS_LIMIT / (1024 * 1024)
        );
    }
}
