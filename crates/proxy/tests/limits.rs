//! The proxy's own limits and load shedding, on loopback with real sockets: raw TCP writes for
//! hostile request heads and HTTP/2 frames, hyper clients for the rest, and a real
//! `trellis-proxy` process for the memory bound. Each test asserts what the client sees (the
//! status, the header, the closed connection) and the metric that counted it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::Request;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{
    WAIT, admin, eventually, full, get_root, http1_conn, http2_conn, start_app, start_proxy,
};
use trellis_testkit::ProxyBuilder;
use trellis_testkit::attacks::h2frame;
use trellis_testkit::load::rss_bytes;

/// The value of one exact series line of the proxy's `/metrics`.
async fn metric(admin_addr: SocketAddr, series: &str) -> u64 {
    let (_, text) = admin(admin_addr, "GET", "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

fn rejected(limit: &str) -> String {
    format!("trellis_limit_rejected_total{{direction=\"inbound\",limit=\"{limit}\"}}")
}

/// Polls a metric until it reaches `want` (connection-level counts land when hyper's
/// connection task ends, just after the client saw the answer).
async fn metric_reaches(admin_addr: SocketAddr, series: &str, want: u64) {
    eventually(&format!("{series} to reach {want}"), || async move {
        metric(admin_addr, series).await >= want
    })
    .await;
}

/// Writes `raw` on a new connection and reads the answer until the proxy closes it (bounded).
async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The proxy may answer and close before it has read everything; a failed write is fine.
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A backend that answers every request after `delay`.
async fn start_slow_app(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(hyper::Response::new(full("slow")))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn connections_over_the_listener_limit_are_closed_at_accept() {
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |c| c.limits.max_connections = Some(2)).await;
    let inbound = proxy.addrs().inbound;
    let admin_addr = proxy.addrs().admin;
    // Two keep-alive connections, each proven open by a request.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = http1_conn(inbound).await;
        assert_eq!(get_root(&mut conn, "a").await.status(), 200);
        held.push(conn);
    }
    // The third is closed before a byte is answered.
    let answer = raw_exchange(inbound, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_eq!(
        answer, "",
        "over the limit the connection is closed unanswered"
    );
    assert_eq!(metric(admin_addr, &rejected("connections")).await, 1);
    // A slot freed is a slot usable again.
    drop(held.pop());
    eventually("the freed slot to serve again", || async move {
        raw_exchange(
            inbound,
            b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        )
        .await
        .starts_with("HTTP/1.1 200")
    })
    .await;
}

/// The default bound (100 header fields) holds although the proxy leaves hyper's own default
/// in place rather than setting it (`limits::server::http1`): 100 fields pass, 101 get 431.
#[tokio::test]
async fn the_default_header_count_is_100() {
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |_| {}).await;
    let inbound = proxy.addrs().inbound;
    let head = |fields: usize| {
        let mut head = String::from("GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n");
        for i in 2..fields {
            head.push_str(&format!("x-h{i}: v\r\n"));
        }
        head.push_str("\r\n");
        head
    };
    let answer = raw_exchange(inbound, head(100).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "100 fields: {answer:?}");
    let answer = raw_exchange(inbound, head(101).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "101 fields: {answer:?}");
}

#[tokio::test]
async fn hostile_request_heads_get_431_and_414() {
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |c| {
        c.limits.max_headers = 10;
        c.limits.max_header_bytes = 4096;
        c.limits.max_uri_bytes = 256;
    })
    .await;
    let inbound = proxy.addrs().inbound;
    let admin_addr = proxy.addrs().admin;

    let mut many = String::from("GET / HTTP/1.1\r\nhost: a\r\n");
    for i in 0..20 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw_exchange(inbound, many.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "too many headers: {answer:?}"
    );

    let big = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "b".repeat(5000)
    );
    let answer = raw_exchange(inbound, big.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "headers too large: {answer:?}"
    );
    metric_reaches(admin_addr, &rejected("headers"), 2).await;

    let long = format!(
        "GET /{} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
        "u".repeat(300)
    );
    let answer = raw_exchange(inbound, long.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 414"), "{answer:?}");
    assert!(
        answer.contains("trellis-error: request target too long"),
        "{answer:?}"
    );
    assert_eq!(metric(admin_addr, &rejected("uri_length")).await, 1);

    // HTTP/2 heads are checked by the proxy itself (hyper bounds only their size there).
    let mut h2 = http2_conn(inbound).await;
    let mut req = Request::get(format!("http://a/{}", "u".repeat(300)));
    for i in 0..20 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let resp = h2.send_request(req.body(full("")).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 414, "the target is checked first");
    let mut req = Request::get("http://a/");
    for i in 0..20 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let resp = h2.send_request(req.body(full("")).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(resp.headers()["trellis-error"], "too many request headers");
    metric_reaches(admin_addr, &rejected("headers"), 3).await;
    // The same connection still serves a well-formed request.
    let ok = h2
        .send_request(Request::get("http://a/").body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn request_bodies_over_the_configured_size_get_413() {
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |c| c.limits.max_request_body_bytes = Some(1024)).await;
    let mut conn = http1_conn(proxy.addrs().inbound).await;
    let post = |n: usize| {
        Request::post("/echo")
            .header("host", "a")
            .body(full(vec![b'x'; n]))
            .unwrap()
    };
    let resp = conn.send_request(post(1024)).await.unwrap();
    assert_eq!(resp.status(), 200, "at the limit is allowed");
    drop(resp);
    let mut conn = http1_conn(proxy.addrs().inbound).await;
    let resp = conn.send_request(post(1025)).await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["trellis-error"], "request body too large");
    assert_eq!(metric(proxy.addrs().admin, &rejected("body_size")).await, 1);
}

#[tokio::test]
async fn a_slow_request_head_is_cut_at_the_header_timeout_while_others_are_served() {
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |c| {
        c.limits.header_read_timeout = Duration::from_millis(300)
    })
    .await;
    let inbound = proxy.addrs().inbound;
    // Slowloris: half a head, then nothing.
    let mut slow = TcpStream::connect(inbound).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nx-dribble: ")
        .await
        .unwrap();
    let started = Instant::now();
    // Meanwhile another client is served at once.
    let answer = raw_exchange(
        inbound,
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, slow.read(&mut buf))
        .await
        .expect("the slow connection is ended")
        .unwrap_or(0);
    let waited = started.elapsed();
    let rest = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || rest.starts_with("HTTP/1.1 408"), "{rest}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    metric_reaches(proxy.addrs().admin, &rejected("header_timeout"), 1).await;
}

#[tokio::test]
async fn an_http2_rapid_reset_flood_gets_goaway_and_others_are_still_served() {
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |c| c.limits.h2_max_pending_resets = 20).await;
    let inbound = proxy.addrs().inbound;
    // CVE-2023-44487 in one write: 500 streams each opened (HEADERS, END_STREAM) and at once
    // cancelled (RST_STREAM CANCEL), before the server can accept any of them.
    let flood = h2frame::rapid_reset_burst(500);
    let mut s = TcpStream::connect(inbound).await.unwrap();
    let _ = s.write_all(&flood).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
    // The (last) GOAWAY's error code.
    let goaway = h2frame::frames(&got)
        .filter(|(kind, ..)| *kind == h2frame::GOAWAY)
        .filter_map(|(.., payload)| h2frame::goaway_code(payload))
        .last();
    assert_eq!(
        goaway,
        Some(11),
        "GOAWAY ENHANCE_YOUR_CALM, got {} bytes",
        got.len()
    );
    metric_reaches(proxy.addrs().admin, &rejected("h2_reset_flood"), 1).await;
    let mut h2 = http2_conn(inbound).await;
    let ok = h2
        .send_request(Request::get("http://a/").body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "a well-behaved client is still served");
}

#[tokio::test]
async fn http2_streams_per_connection_are_capped_by_settings() {
    let app = start_slow_app(Duration::from_millis(300)).await;
    let proxy = start_proxy(app, |c| c.limits.h2_max_concurrent_streams = 4).await;
    let mut h2 = http2_conn(proxy.addrs().inbound).await;
    // A first request, so the client has the server's SETTINGS before it opens many streams
    // (before them, streams over the limit are refused with REFUSED_STREAM).
    let req = Request::get("http://a/").body(full("")).unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);
    // hyper's client honours the advertised limit: 12 requests run at most 4 at a time, so
    // they take at least three rounds of the backend's 300 ms.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let mut h2 = h2.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get("http://a/").body(full("")).unwrap();
            h2.send_request(req).await.map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(
            tokio::time::timeout(WAIT, t)
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
            200
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(850),
        "streams were not capped: {took:?}"
    );
    let req = Request::get("http://a/").body(full("")).unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);
}

#[tokio::test]
async fn load_is_shed_with_503_and_retry_after_before_it_piles_up() {
    let app = start_slow_app(Duration::from_millis(500)).await;
    let proxy = start_proxy(app, |c| c.limits.load_shed_in_flight = Some(8)).await;
    let inbound = proxy.addrs().inbound;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        tasks.push(tokio::spawn(async move {
            let mut conn = http1_conn(inbound).await;
            let resp = get_root(&mut conn, "a").await;
            let retry_after = resp.headers().get("retry-after").cloned();
            let error = resp.headers().get("trellis-error").cloned();
            (resp.status().as_u16(), retry_after, error)
        }));
    }
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        // None hangs: every client has its answer within the bound.
        let (status, retry_after, error) = tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        match status {
            200 => ok += 1,
            503 => {
                shed += 1;
                assert_eq!(retry_after.unwrap(), "1");
                assert_eq!(error.unwrap(), "load shed");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // At most 8 in flight at once; 40 arrive within the backend's 500 ms.
    assert!((8..=16).contains(&ok), "{ok} served");
    assert_eq!(ok + shed, 40);
    let series = "trellis_load_shed_total{direction=\"inbound\"}";
    assert_eq!(metric(proxy.addrs().admin, series).await, shed);
}

/// A real `trellis-proxy` in front of a backend that takes 500 ms, hit by 4,000 requests from
/// 400 connections: shedding keeps what it holds to its threshold, so its memory stays bounded
/// and every client gets an answer (most of them an immediate 503).
#[tokio::test]
async fn a_real_proxy_sheds_a_flood_to_a_hung_backend_with_bounded_memory() {
    let app = start_slow_app(Duration::from_millis(500)).await;
    // Started (and waited for) the way every cross-process test starts one; stopped on drop.
    let proxy = tokio::task::spawn_blocking(move || {
        ProxyBuilder::loopback("shed")
            .app(app)
            .arg("--load-shed-in-flight")
            .arg("64")
            .arg("--log-level")
            .arg("warn")
            .start()
            .unwrap()
    })
    .await
    .unwrap();
    let (inbound, admin_addr, pid) = (proxy.ready.inbound, proxy.ready.admin, proxy.ready.pid);
    let rss_kib = move || rss_bytes(pid).unwrap() / 1024;
    let before = rss_kib();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..400 {
        tasks.push(tokio::spawn(async move {
            let mut conn = http1_conn(inbound).await;
            let mut statuses = Vec::new();
            for _ in 0..10 {
                statuses.push(get_root(&mut conn, "a").await.status().as_u16());
            }
            statuses
        }));
    }
    // Sampled every 20 ms while the flood runs.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampled = peak.clone();
    let sampler = tokio::spawn(async move {
        for _ in 0..1500 {
            sampled.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (mut ok, mut shed) = (0u64, 0u64);
    for t in tasks {
        for s in t.await.unwrap() {
            match s {
                200 => ok += 1,
                503 => shed += 1,
                other => panic!("unexpected status {other}"),
            }
        }
    }
    sampler.abort();
    let peak = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(rss_kib());
    let took = started.elapsed();
    assert_eq!(ok + shed, 4000);
    // At most 64 of the 400 connections are ever served at once; the rest are shed at once.
    assert!(shed >= 2000, "only {shed} shed");
    assert!(ok >= 64, "only {ok} served");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "RSS grew {grown} KiB (from {before} KiB)"
    );
    let series = "trellis_load_shed_total{direction=\"inbound\"}";
    assert_eq!(metric(admin_addr, series).await, shed);
}

/// A backend that reads each request body to its end, notes the most it received of any one
/// request (also when the body failed half way), then answers 200 with the count.
async fn start_counting_app() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    let most = std::sync::Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = most.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let mut body = req.into_body();
                        let mut got = 0u64;
                        while let Some(frame) = body.frame().await {
                            let Ok(frame) = frame else { break };
                            got += frame.data_ref().map_or(0, |d| d.len() as u64);
                            seen.fetch_max(got, Ordering::Relaxed);
                        }
                        Ok::<_, Infallible>(hyper::Response::new(full(got.to_string())))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, most)
}

/// `curl ARGS -w '%{http_code} %{size_download}'`, off the runtime (curl blocks): the status,
/// the bytes of body received, and whether curl itself succeeded.
async fn curl_upload(args: Vec<String>) -> (u16, u64, bool) {
    tokio::task::spawn_blocking(move || {
        let mut all: Vec<&str> = vec!["-o", "/dev/null", "-w", "%{http_code} %{size_download}"];
        all.extend(args.iter().map(String::as_str));
        let out = trellis_testkit::tools::curl(&all).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut fields = text.split_whitespace();
        let status = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let size = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, size, out.status.success())
    })
    .await
    .unwrap()
}

/// A file of `n` bytes for curl to upload.
fn upload_file(dir: &tempfile::TempDir, n: usize) -> String {
    let path = dir.path().join(format!("body-{n}"));
    std::fs::write(&path, vec![b'x'; n]).unwrap();
    format!("@{}", path.display())
}

/// Bodies without Content-Length (HTTP/1.1 chunked, HTTP/2 DATA frames) are counted as they
/// stream: within the limit they pass whole; over it the upstream gets no more than the limit
/// and curl gets 413, counted as `body_size_streamed`.
#[tokio::test]
async fn streamed_request_bodies_over_the_limit_get_413_and_the_upstream_no_more() {
    const LIMIT: u64 = 64 * 1024;
    let (app, most) = start_counting_app().await;
    let proxy = start_proxy(app, |c| c.limits.max_request_body_bytes = Some(LIMIT)).await;
    let url = format!("http://{}/upload", proxy.addrs().inbound);
    let dir = tempfile::tempdir().unwrap();
    let (small, big) = (upload_file(&dir, 60 * 1024), upload_file(&dir, 1 << 20));
    let chunked = |file: &str, h2: bool| {
        let mut args: Vec<String> = ["-H", "Transfer-Encoding: chunked", "--data-binary", file]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if h2 {
            // h2c: curl sends the file as DATA frames with no content-length.
            args.push("--http2-prior-knowledge".into());
        }
        args.push(url.clone());
        args
    };
    for h2 in [false, true] {
        let (status, _, ok) = curl_upload(chunked(&small, h2)).await;
        assert_eq!((status, ok), (200, true), "h2={h2}: within the limit");
        let (status, _, _) = curl_upload(chunked(&big, h2)).await;
        assert_eq!(status, 413, "h2={h2}: 1 MiB against a 64 KiB limit");
    }
    let upstream_got = most.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "limits figure: streamed body: 1 MiB chunked and h2c uploads against a {LIMIT} B limit answered 413; the upstream received at most {upstream_got} B of one body"
    );
    assert!(
        upstream_got <= LIMIT,
        "the upstream received {upstream_got} bytes of one body"
    );
    assert_eq!(
        metric(proxy.addrs().admin, &rejected("body_size_streamed")).await,
        2
    );
    assert_eq!(metric(proxy.addrs().admin, &rejected("body_size")).await, 0);
}

/// An upstream that answers before it has read the body (an echo) has started the response
/// when the limit is crossed: the response is cut, never completed, and the upstream still
/// gets no more than the limit.
#[tokio::test]
async fn a_streamed_body_over_the_limit_cuts_a_response_that_already_started() {
    const LIMIT: u64 = 64 * 1024;
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |c| c.limits.max_request_body_bytes = Some(LIMIT)).await;
    let url = format!("http://{}/echo", proxy.addrs().inbound);
    let dir = tempfile::tempdir().unwrap();
    let big = upload_file(&dir, 1 << 20);
    for h2 in [false, true] {
        let mut args: Vec<String> = vec![
            "-H".into(),
            "Transfer-Encoding: chunked".into(),
            "--data-binary".into(),
            big.clone(),
        ];
        if h2 {
            args.push("--http2-prior-knowledge".into());
        }
        args.push(url.clone());
        let (status, echoed, ok) = curl_upload(args).await;
        // Either the cut came before the echo's head (413), or the echo is cut short.
        assert!(
            status == 413 || (!ok && echoed <= LIMIT),
            "h2={h2}: status {status}, {echoed} bytes echoed, curl ok: {ok}"
        );
    }
    metric_reaches(proxy.addrs().admin, &rejected("body_size_streamed"), 2).await;
}

/// Reads from `s` until the proxy closes it (or [`WAIT`] passes); returns what was read and
/// how long it took.
async fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
    (got, started.elapsed())
}

/// HTTP/1.1: a connection that sends nothing, and a keep-alive connection after its request,
/// are closed once idle for the idle timeout (not before); a connection whose request takes
/// longer than the timeout, and one that sends requests more often, are kept.
#[tokio::test]
async fn idle_http1_connections_are_closed_and_busy_ones_kept() {
    const IDLE: Duration = Duration::from_millis(400);
    let app = start_slow_app(Duration::from_millis(900)).await;
    let proxy = start_proxy(app, |c| c.limits.idle_timeout = Some(IDLE)).await;
    let inbound = proxy.addrs().inbound;

    // A slow client: half a request head, then nothing (the header timeout is 30 s).
    let mut silent = TcpStream::connect(inbound).await.unwrap();
    silent
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n")
        .await
        .unwrap();
    let mut after_one = TcpStream::connect(inbound).await.unwrap();
    after_one
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    // A request whose answer takes 900 ms, twice the timeout, on a kept connection.
    let mut busy = http1_conn(inbound).await;
    let (silent, (answer, after_one), slow) = tokio::join!(
        async move { read_until_closed(&mut silent).await },
        async move { read_until_closed(&mut after_one).await },
        async move {
            let first = get_root(&mut busy, "a").await.status();
            // At once again on the same connection: it was not cut while in flight.
            let second = get_root(&mut busy, "a").await.status();
            (first, second)
        }
    );
    assert_eq!(slow, (http::StatusCode::OK, http::StatusCode::OK));
    let (got, waited) = silent;
    let got = String::from_utf8_lossy(&got);
    assert!(got.is_empty(), "nothing is answered: {got}");
    assert!(
        // Well before the 30 s header timeout; the slack is for a loaded machine.
        waited >= IDLE && waited < Duration::from_secs(3),
        "the silent connection closed after {waited:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Idle from the end of its response (900 ms in).
    assert!(
        after_one >= IDLE + Duration::from_millis(900) && after_one < Duration::from_secs(5),
        "the keep-alive connection closed {after_one:?} after its request"
    );
    eprintln!(
        "limits figure: HTTP/1 idle timeout {IDLE:?}: half a head then nothing closed after {waited:?}; a keep-alive connection closed {after_one:?} after its request (response at 900 ms); a 900 ms request and the next kept"
    );
    metric_reaches(proxy.addrs().admin, &rejected("idle_timeout"), 2).await;

    // Requests every 150 ms keep one connection for 1.5 s, almost four timeouts.
    let quick = start_app().await;
    let proxy = start_proxy(quick.addr, |c| c.limits.idle_timeout = Some(IDLE)).await;
    let mut conn = http1_conn(proxy.addrs().inbound).await;
    for _ in 0..10 {
        assert_eq!(get_root(&mut conn, "a").await.status(), 200);
        // Not a wait for a state: the gap between requests, shorter than the idle timeout,
        // is the behaviour under test.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(
        metric(proxy.addrs().admin, &rejected("idle_timeout")).await,
        0
    );
}

/// HTTP/2: a connection with no stream open for the idle timeout gets GOAWAY (NO_ERROR) and is
/// closed once the client has answered the PING that comes with it; a connection whose one
/// stream lasts twice the timeout is kept and serves the next request.
#[tokio::test]
async fn idle_http2_connections_get_goaway_and_busy_ones_are_kept() {
    const IDLE: Duration = Duration::from_millis(400);
    let app = start_slow_app(Duration::from_millis(900)).await;
    let proxy = start_proxy(app, |c| c.limits.idle_timeout = Some(IDLE)).await;
    let inbound = proxy.addrs().inbound;

    let idle = async move {
        let mut s = TcpStream::connect(inbound).await.unwrap();
        let mut hello = h2frame::PREFACE.to_vec();
        h2frame::settings(&mut hello);
        s.write_all(&hello).await.unwrap();
        let started = Instant::now();
        let (mut buf, mut goaway, mut at) = (Vec::new(), None, 0);
        // Frames as they come, bounded by WAIT: PINGs are answered so the graceful GOAWAY
        // can complete; the loop ends when the proxy closes the connection.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => break,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some((kind, flags, payload, taken)) = h2frame::split(&buf[at..]) {
                if kind == h2frame::GOAWAY
                    && goaway.is_none()
                    && let Some(code) = h2frame::goaway_code(payload)
                {
                    goaway = Some((code, started.elapsed()));
                }
                if kind == h2frame::PING && flags & h2frame::ACK == 0 {
                    let mut ack = Vec::new();
                    h2frame::ping_ack(&mut ack, payload);
                    let _ = s.write_all(&ack).await;
                }
                at += taken;
            }
        }
        (goaway, started.elapsed())
    };
    let busy = async move {
        let mut h2 = http2_conn(inbound).await;
        let req = || Request::get("http://a/").body(full("")).unwrap();
        let first = h2.send_request(req()).await.unwrap().status();
        let second = h2.send_request(req()).await.unwrap().status();
        (first, second)
    };
    let ((goaway, closed), busy) = tokio::join!(idle, busy);
    assert_eq!(busy, (http::StatusCode::OK, http::StatusCode::OK));
    let (code, at) = goaway.expect("a GOAWAY before the close");
    assert_eq!(code, 0, "GOAWAY NO_ERROR");
    eprintln!(
        "limits figure: HTTP/2 idle timeout {IDLE:?}: GOAWAY NO_ERROR after {at:?}, closed after {closed:?}; a 900 ms stream and the next kept"
    );
    assert!(
        at >= IDLE && at < Duration::from_secs(3),
        "GOAWAY after {at:?}"
    );
    assert!(closed < Duration::from_secs(4), "closed after {closed:?}");
    metric_reaches(proxy.addrs().admin, &rejected("idle_timeout"), 1).await;
}
