//! In-process, loopback tests of a standalone proxy (discovery disabled) against real HTTP/1.1,
//! HTTP/2, upgrade and TCP servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_model::Target;
use trellis_proxy::OutboundPort;
use trellis_proxy::telemetry::scrape::sum;

use support::*;

#[tokio::test]
async fn http1_keep_alive_chunked_and_hop_by_hop() {
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |_| {}).await;
    let mut conn = http1_conn(proxy.addrs().inbound).await;

    for i in 0..3 {
        let req = Request::post("/echo")
            .header("host", "app.test")
            .header("connection", "x-hop")
            .header("x-hop", "drop me")
            .header("x-keep", "kept")
            .body(full(format!("hello {i}")))
            .unwrap();
        let resp = tokio::time::timeout(WAIT, conn.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = resp.headers()["x-seen-headers"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(seen.contains("x-keep") && seen.contains("host"), "{seen}");
        assert!(!seen.contains("x-hop"), "hop-by-hop header leaked: {seen}");
        assert_eq!(resp.headers()["x-seen-version"], "HTTP/1.1");
        assert_eq!(body_string(resp.into_body()).await, format!("hello {i}"));
    }

    // A streamed (chunked) request body is streamed back.
    let chunks: Vec<Result<Frame<Bytes>, hyper::Error>> = (0..5)
        .map(|i| Ok(Frame::data(Bytes::from(format!("chunk{i};")))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
    let req = Request::post("/echo")
        .header("host", "app.test")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(WAIT, conn.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        resp.headers()
            .get("transfer-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("chunked")
    );
    assert_eq!(
        body_string(resp.into_body()).await,
        "chunk0;chunk1;chunk2;chunk3;chunk4;"
    );
    proxy.shutdown_token().cancel();
    proxy.wait().await;
}

#[tokio::test]
async fn http1_expect_continue() {
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |_| {}).await;
    let mut stream = TcpStream::connect(proxy.addrs().inbound).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let interim = read_head(&mut stream).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(b"abcde").await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = [0u8; 5];
    tokio::time::timeout(WAIT, stream.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&body, b"abcde");
}

#[tokio::test]
async fn h2c_multiplexing_and_trailers() {
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |_| {}).await;
    let conn = http2_conn(proxy.addrs().inbound).await;
    let requests = (0..10).map(|i| {
        let mut conn = conn.clone();
        async move {
            let req = Request::post("http://app.test/echo")
                .body(full(format!("stream {i}")))
                .unwrap();
            let resp = conn.send_request(req).await.unwrap();
            assert_eq!(resp.headers()["x-seen-version"], "HTTP/2.0");
            assert_eq!(body_string(resp.into_body()).await, format!("stream {i}"));
        }
    });
    tokio::time::timeout(WAIT, futures_util::future::join_all(requests))
        .await
        .unwrap();

    let mut conn2 = conn.clone();
    let req = Request::get("http://app.test/trailers")
        .body(full(""))
        .unwrap();
    let resp = conn2.send_request(req).await.unwrap();
    let collected = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        collected
            .trailers()
            .map(|t| t["grpc-status"].clone())
            .unwrap(),
        "0"
    );
    assert_eq!(collected.to_bytes(), "data");
}

#[tokio::test]
async fn tagged_h2_reaches_the_app_as_http1() {
    // What a peer proxy sends over the meshed hop: HTTP/2 with trellis-orig-proto.
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |_| {}).await;
    let mut conn = http2_conn(proxy.addrs().inbound).await;
    let req = Request::get("http://app.test/echo")
        .header("trellis-orig-proto", "HTTP/1.1")
        .body(full(""))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, conn.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.headers()["x-seen-version"], "HTTP/1.1");
    let seen = resp.headers()["x-seen-headers"].to_str().unwrap();
    assert!(!seen.contains("trellis-orig-proto"), "{seen}");
    assert!(seen.contains("host"), "HTTP/1.1 needs a Host: {seen}");
}

#[tokio::test]
async fn upgrade_tunnels_bytes_after_101() {
    let upstream = start_upgrade_echo().await;
    let proxy = start_proxy(upstream, |_| {}).await;
    let mut stream = TcpStream::connect(proxy.addrs().inbound).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    for msg in [&b"ping"[..], b"\x00binary\xff"] {
        stream.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, stream.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test]
async fn opaque_tcp_with_half_close() {
    let upstream = start_half_close_echo().await;
    let proxy = start_proxy(upstream, |_| {}).await;
    let mut stream = TcpStream::connect(proxy.addrs().inbound).await.unwrap();
    stream.write_all(b"\x00\x01 not http").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"echo:\x00\x01 not http");

    // Declared opaque: detection is skipped, even for bytes that look like HTTP.
    let proxy2 = start_proxy(upstream, |c| {
        c.opaque_ports.insert(upstream.port());
    })
    .await;
    let mut stream = TcpStream::connect(proxy2.addrs().inbound).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"echo:GET / HTTP/1.1\r\n\r\n");
    let (_, metrics) = admin(proxy2.addrs().admin, "GET", "/metrics").await;
    assert!(
        metrics.contains(
            "trellis_protocol_detections_total{direction=\"inbound\",outcome=\"opaque_port\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn proxy_made_errors_are_tagged() {
    // Nothing listens on the app address: 502.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let target: Target = "reviews.default:9080".parse().unwrap();
    let proxy = start_proxy(dead, |c| {
        c.outbound_ports.push(OutboundPort {
            listen: "127.0.0.1:0".parse().unwrap(),
            target,
        });
    })
    .await;
    let mut conn = http1_conn(proxy.addrs().inbound).await;
    let resp = conn
        .send_request(
            Request::get("/")
                .header("host", "x")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["trellis-error"], "upstream connect failed");

    // A service target discovery knows nothing about: 503.
    let port = proxy.addrs().outbound_ports["reviews.default:9080"];
    let mut conn = http1_conn(port).await;
    let resp = conn
        .send_request(
            Request::get("/")
                .header("host", "reviews")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["trellis-error"], "no destination");
}

#[tokio::test]
async fn explicit_outbound_to_an_address_passes_through() {
    let app = start_app().await;
    let target = Target::Address(app.addr);
    let proxy = start_proxy(app.addr, |c| {
        c.outbound_ports.push(OutboundPort {
            listen: "127.0.0.1:0".parse().unwrap(),
            target,
        });
    })
    .await;
    let port = proxy.addrs().outbound_ports[&app.addr.to_string()];
    let mut conn = http1_conn(port).await;
    let resp = conn
        .send_request(
            Request::post("/echo")
                .header("host", "x")
                .body(full("out"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_string(resp.into_body()).await, "out");
    let (_, metrics) = admin(proxy.addrs().admin, "GET", "/metrics").await;
    assert_eq!(
        sum(
            &metrics,
            "trellis_requests_total",
            &[("direction", "outbound"), ("status_code", "200")]
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn admin_endpoints() {
    let app = start_app().await;
    let dir = std::env::temp_dir().join(format!("trellis-proxy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ready_file = dir.join("ready.json");
    let rf = ready_file.clone();
    let proxy = start_proxy(app.addr, move |c| c.ready_file = Some(rf)).await;
    let admin_addr = proxy.addrs().admin;

    assert_eq!(admin(admin_addr, "GET", "/live").await.0, 200);
    assert_eq!(admin(admin_addr, "GET", "/ready").await.0, 200);

    let mut conn = http1_conn(proxy.addrs().inbound).await;
    let resp = conn
        .send_request(
            Request::get("/")
                .header("host", "x")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, metrics) = admin(admin_addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "# TYPE trellis_requests_total counter",
        "trellis_protocol_detections_total{direction=\"inbound\",outcome=\"http1\"} 1",
        "trellis_proxy_info{version=",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    let inbound = [("direction", "inbound")];
    let ok = [("direction", "inbound"), ("status_code", "200")];
    // Labelled when served as HTTP: plaintext, so tls="false".
    let plain = [("direction", "inbound"), ("tls", "false")];
    assert_eq!(
        sum(&metrics, "trellis_tcp_connections_opened_total", &plain),
        1.0
    );
    assert_eq!(sum(&metrics, "trellis_requests_total", &ok), 1.0);
    assert_eq!(
        sum(&metrics, "trellis_request_duration_seconds_count", &inbound),
        1.0
    );

    let (status, dump) = admin(admin_addr, "GET", "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["proxy"]["listeners"]["inbound"],
        proxy.addrs().inbound.to_string()
    );
    assert_eq!(dump["proxy"]["config"]["app"], app.addr.to_string());
    assert_eq!(dump["discovery"]["status"]["enabled"], false);

    eventually("the ready file", || {
        let path = ready_file.clone();
        async move { path.exists() }
    })
    .await;
    let ready: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ready_file).unwrap()).unwrap();
    assert_eq!(ready["pid"], std::process::id());
    assert_eq!(ready["admin"], admin_addr.to_string());
    assert_eq!(ready["outbound"], serde_json::Value::Null);

    assert_eq!(admin(admin_addr, "GET", "/shutdown").await.0, 405);
    assert_eq!(admin(admin_addr, "GET", "/nope").await.0, 404);
    assert_eq!(admin(admin_addr, "POST", "/shutdown").await.0, 200);
    let (status, body) = admin(admin_addr, "GET", "/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    tokio::time::timeout(WAIT, proxy.wait()).await.unwrap();
    assert!(!ready_file.exists(), "the ready file is removed at exit");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn graceful_drain_finishes_in_flight_requests() {
    let mut app = start_app().await;
    let proxy = start_proxy(app.addr, |c| c.drain_timeout = Duration::from_secs(5)).await;
    let inbound = proxy.addrs().inbound;
    let admin_addr = proxy.addrs().admin;

    let mut conn = http1_conn(inbound).await;
    let in_flight = tokio::spawn(async move {
        let resp = conn
            .send_request(
                Request::get("/slow")
                    .header("host", "x")
                    .body(full(""))
                    .unwrap(),
            )
            .await
            .unwrap();
        (resp.status().as_u16(), body_string(resp.into_body()).await)
    });
    tokio::time::timeout(WAIT, app.slow_started.recv())
        .await
        .unwrap()
        .unwrap();

    assert_eq!(admin(admin_addr, "POST", "/shutdown").await.0, 200);
    let waiting = tokio::spawn(proxy.wait());
    eventually("new connections to be refused", || async move {
        TcpStream::connect(inbound).await.is_err()
    })
    .await;

    let (status, body) = tokio::time::timeout(WAIT, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "slow done"));
    tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
}

#[tokio::test]
async fn port_conflicts_name_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut config = trellis_proxy::ProxyConfig::local(None);
    config.admin = addr;
    let err = trellis_proxy::Proxy::start(config).await.unwrap_err();
    assert_eq!(err.exit_code(), 1);
    let msg = err.to_string();
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("--admin"),
        "{msg}"
    );
}

#[tokio::test]
async fn server_first_protocols_work_after_the_detect_timeout() {
    let upstream = start_banner_server().await;
    let proxy = start_proxy(upstream, |c| c.detect_timeout = Duration::from_millis(100)).await;
    let mut stream = TcpStream::connect(proxy.addrs().inbound).await.unwrap();
    let mut banner = [0u8; 12];
    tokio::time::timeout(WAIT, stream.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner, b"220 banner\r\n");
    stream.write_all(b"HELO x\r\n").await.unwrap();
    let mut echo = [0u8; 8];
    tokio::time::timeout(WAIT, stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"HELO x\r\n");
    let (_, metrics) = admin(proxy.addrs().admin, "GET", "/metrics").await;
    assert!(
        metrics.contains(
            "trellis_protocol_detections_total{direction=\"inbound\",outcome=\"timeout\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn connections_without_a_destination_are_refused() {
    // Transparent outbound without a redirect: no original destination, so the proxy closes.
    let mut config = trellis_proxy::ProxyConfig::local(None);
    config.outbound = Some("127.0.0.1:0".parse().unwrap());
    let proxy = trellis_proxy::Proxy::start(config).await.unwrap();
    let mut stream = TcpStream::connect(proxy.addrs().outbound.unwrap())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(read.is_err() || buf.is_empty(), "{read:?} {buf:?}");

    // Inbound with neither an original destination nor --app: HTTP gets a 503.
    let mut conn = http1_conn(proxy.addrs().inbound).await;
    let req = Request::get("/")
        .header("host", "x")
        .body(full(""))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, conn.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["trellis-error"], "no application");
}
