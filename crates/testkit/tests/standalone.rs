//! One `trellis-proxy` without a control plane, between real clients and the test servers on
//! loopback: the least machinery that exercises the proxy's listeners, protocol detection and
//! forwarding as a user would run them.

// Test helpers outside #[test] functions fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use trellis_testkit::servers::{tcp_roundtrip, websocket_roundtrip};
use trellis_testkit::tools::{curl_http, http_request};
use trellis_testkit::{HttpEcho, ProxyBuilder, TcpEcho};

const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn http1_and_h2c_through_an_explicit_outbound_port() {
    let echo = HttpEcho::start().unwrap();
    let target = echo.addr.to_string();
    let proxy = ProxyBuilder::loopback("solo")
        .outbound_port(&target)
        .start()
        .unwrap();
    let url = format!("http://{}/hello?x=1", proxy.outbound_port(&target));

    let h1 = curl_http(&["-H", "x-test: one", &url]).unwrap();
    assert_eq!(h1.status, 200, "{h1:?}");
    assert_eq!(h1.http_version, "1.1");
    let reply = h1.echo();
    assert_eq!(reply.method, "GET");
    assert_eq!(reply.path, "/hello");
    assert_eq!(reply.headers.get("x-test").map(String::as_str), Some("one"));

    let h2 = curl_http(&[
        "--http2-prior-knowledge",
        "-H",
        "x-test: two",
        "--data-binary",
        "abcdef",
        &url,
    ])
    .unwrap();
    assert_eq!(h2.status, 200, "{h2:?}");
    assert_eq!(h2.http_version, "2", "the client side must stay HTTP/2");
    let reply = h2.echo();
    assert_eq!(reply.method, "POST");
    assert_eq!(reply.body_len, 6);
    assert_eq!(reply.headers.get("x-test").map(String::as_str), Some("two"));

    // A status from the app passes through unchanged, on both protocols.
    let status_url = format!("http://{}/status/418", proxy.outbound_port(&target));
    assert_eq!(curl_http(&[&status_url]).unwrap().status, 418);
    assert_eq!(
        curl_http(&["--http2-prior-knowledge", &status_url])
            .unwrap()
            .status,
        418
    );

    let m = proxy.metrics();
    let outbound = m.sum("trellis_requests_total", &[("direction", "outbound")]);
    assert!(
        outbound >= 4.0,
        "expected the 4 requests counted as outbound, got {outbound}"
    );
    assert!(
        m.sum(
            "trellis_requests_total",
            &[("direction", "outbound"), ("status_code", "418")]
        ) >= 2.0,
        "418s not counted"
    );
    assert!(
        m.has("trellis_request_duration_seconds_bucket")
            || m.has("trellis_request_duration_seconds_count")
    );
}

#[test]
fn inbound_forwards_to_the_app() {
    let echo = HttpEcho::start().unwrap();
    let proxy = ProxyBuilder::loopback("solo-in")
        .app(echo.addr)
        .start()
        .unwrap();
    let url = format!("http://{}/inbound", proxy.ready.inbound);
    let h1 = curl_http(&[&url]).unwrap();
    assert_eq!(h1.status, 200, "{h1:?}");
    assert_eq!(h1.echo().path, "/inbound");
    let h2 = curl_http(&["--http2-prior-knowledge", &url]).unwrap();
    assert_eq!(h2.status, 200, "{h2:?}");
    assert_eq!(h2.http_version, "2");
    let m = proxy.metrics();
    assert!(
        m.sum("trellis_requests_total", &[("direction", "inbound")]) >= 2.0,
        "{m:?}"
    );
}

#[test]
fn opaque_tcp_with_half_close_through_an_explicit_port() {
    let echo = TcpEcho::start().unwrap();
    let target = echo.addr.to_string();
    let proxy = ProxyBuilder::loopback("solo-tcp")
        .outbound_port(&target)
        .start()
        .unwrap();
    let port = proxy.outbound_port(&target);
    // Not HTTP, TLS or an HTTP/2 preface, so detection must fall back to opaque TCP; larger than
    // socket buffers, so a proxy that does not forward the half-close would hang (then time out).
    let payload: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
    let echoed = tcp_roundtrip(port, payload.clone(), TIMEOUT).unwrap();
    assert_eq!(echoed.len(), payload.len());
    assert!(echoed == payload, "echo differs from what was sent");

    // A client that sends nothing and half-closes at once still gets a clean EOF.
    assert!(tcp_roundtrip(port, Vec::new(), TIMEOUT).unwrap().is_empty());

    let m = proxy.metrics();
    assert!(
        m.sum(
            "trellis_tcp_connections_opened_total",
            &[("direction", "outbound")]
        ) >= 2.0
    );
    assert!(
        m.sum(
            "trellis_tcp_received_bytes_total",
            &[("direction", "outbound")]
        ) >= payload.len() as f64
    );
    assert!(
        m.sum(
            "trellis_protocol_detections_total",
            &[("direction", "outbound")]
        ) >= 1.0
    );
}

#[test]
fn websocket_through_an_explicit_port() {
    let echo = HttpEcho::start().unwrap();
    let target = echo.addr.to_string();
    let proxy = ProxyBuilder::loopback("solo-ws")
        .outbound_port(&target)
        .start()
        .unwrap();
    let echoed = websocket_roundtrip(
        proxy.outbound_port(&target),
        &target,
        &["one", "two", "three"],
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(echoed, ["one", "two", "three"]);
}

#[test]
fn admin_endpoints_and_sigterm() {
    let mut proxy = ProxyBuilder::loopback("solo-admin").start().unwrap();
    proxy.wait_ready(TIMEOUT).unwrap();
    assert_eq!(proxy.admin_get("/live").unwrap().0, 200);
    let (code, dump) = proxy.admin_get("/config_dump").unwrap();
    assert_eq!(code, 200);
    assert!(
        serde_json::from_str::<serde_json::Value>(&dump).is_ok(),
        "config_dump is not JSON: {dump}"
    );
    let status = proxy
        .process()
        .terminate(Duration::from_secs(10))
        .expect("the proxy did not exit after SIGTERM");
    assert!(
        status.success(),
        "SIGTERM must drain and exit 0, got {status}"
    );
}

#[test]
fn admin_shutdown_stops_the_proxy() {
    let mut proxy = ProxyBuilder::loopback("solo-shutdown").start().unwrap();
    let (code, body) = http_request(proxy.ready.admin, "POST", "/shutdown").unwrap();
    assert!(
        (200..300).contains(&code),
        "POST /shutdown answered {code}: {body}"
    );
    let status = proxy
        .process()
        .wait_exit(Duration::from_secs(10))
        .expect("still running after /shutdown");
    assert!(status.success(), "{status}");
}

#[test]
fn sigterm_lets_an_in_flight_download_finish() {
    // Far more than loopback socket buffers (a few MiB) can hold, so the proxy itself must still
    // be forwarding when SIGTERM arrives.
    const SIZE: u64 = 32 * 1024 * 1024;
    let echo = HttpEcho::start().unwrap();
    let target = echo.addr.to_string();
    let mut proxy = ProxyBuilder::loopback("solo-drain")
        .outbound_port(&target)
        .arg("--drain-timeout")
        .arg("20s")
        .start()
        .unwrap();
    let url = format!("http://{}/bytes/{SIZE}", proxy.outbound_port(&target));
    // Rate-limited (8 MB/s) so the download is still running, for about 4 s, when SIGTERM
    // arrives.
    let mut curl = std::process::Command::new(trellis_testkit::tools::require("curl", "curl"));
    curl.args([
        "-sS",
        "--max-time",
        "30",
        "--limit-rate",
        "8M",
        "-o",
        "/dev/null",
    ]);
    curl.args(["-w", "%{http_code} %{size_download}", &url]);
    let mut download = trellis_testkit::ManagedProcess::spawn("curl download", curl).unwrap();
    trellis_testkit::wait::until(TIMEOUT, || match echo.requests() {
        0 => Err("download not started".to_string()),
        _ => Ok(()),
    })
    .unwrap();

    let signalled = std::time::Instant::now();
    let status = proxy.process().terminate(Duration::from_secs(25));
    let drained_for = signalled.elapsed();
    let status = status.expect("proxy did not exit");
    assert!(status.success(), "draining proxy exited with {status}");
    let curl_status = download.wait_exit(Duration::from_secs(30));
    let log = download.log();
    assert!(
        curl_status.is_some_and(|s| s.success()),
        "the in-flight download was cut by the drain: {log}"
    );
    assert_eq!(
        log.trim(),
        format!("200 {SIZE}"),
        "the whole body must arrive"
    );
    assert!(
        drained_for >= Duration::from_millis(500),
        "the proxy exited {drained_for:?} after SIGTERM: it cannot have waited for the download"
    );
}
