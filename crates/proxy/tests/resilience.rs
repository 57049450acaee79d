//! Retries, budgets, timeouts, deadlines, balancers, circuit breaking and outlier detection on
//! loopback, against real HTTP backends whose behaviour the tests change while they run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use trellis_model::Destination;
use trellis_model::policy::{ConnectionPool, LoadBalancer, OutlierDetection, RetryBudget};
use trellis_model::route::{
    BackendRef, HeaderModifier, HttpRoute, ResourceRef, RetryOn, RetryPolicy, RouteAction,
};

use support::routed::{Backend, Routed, destination, reviews, routed, weighted};

fn own() -> BackendRef {
    BackendRef {
        service: reviews(),
        port: None,
        subset: None,
    }
}

/// One catch-all route to the service's own endpoints.
fn route_with(retry: Option<RetryPolicy>, timeout: Option<Duration>) -> HttpRoute {
    HttpRoute {
        name: "all".into(),
        source: ResourceRef::default(),
        matches: Vec::new(),
        action: RouteAction::Forward(vec![weighted(own(), 1)]),
        request_headers: HeaderModifier::default(),
        response_headers: HeaderModifier::default(),
        rewrite: None,
        mirrors: Vec::new(),
        fault: None,
        timeout,
        retry,
    }
}

fn retry_on_5xx(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        per_try_timeout: None,
        on: RetryOn {
            server_error: true,
            connect_failure: true,
            ..RetryOn::default()
        },
    }
}

async fn failures(proxy: &Routed, n: u32) -> u32 {
    let mut failed = 0;
    for _ in 0..n {
        if proxy.get("/").await.status != 200 {
            failed += 1;
        }
    }
    failed
}

#[tokio::test]
async fn retries_recover_from_one_failing_endpoint_among_three() {
    let (a, b, bad) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("bad").await,
    );
    bad.status.store(503, Relaxed);
    let mut dest = destination(&[&a, &b, &bad]);
    dest.routes = vec![route_with(Some(retry_on_5xx(2)), None)];
    // Round robin keeps sending the failing endpoint a third of first attempts until it is
    // ejected (peak-EWMA would mostly avoid it on its own). Istio's outlier detection defaults
    // (5 consecutive 5xx, 30 s, 10% but at least one) and the default retry budget.
    dest.policy.load_balancer = LoadBalancer::RoundRobin;
    dest.policy.outlier_detection = Some(OutlierDetection::default());
    let proxy = routed(dest).await;
    let n = 1_000;
    let failed = failures(&proxy, n).await;
    println!(
        "failed {failed}/{n}; bad endpoint saw {}; retries {}",
        bad.hits(),
        proxy.metric("trellis_retries_total{direction=\"outbound\"}")
    );
    assert!(failed * 100 <= n, "{failed} of {n} failed");
    assert!(bad.hits() >= 5, "the bad endpoint was tried until ejected");
    assert_eq!(
        proxy.metric("trellis_outlier_ejections_total{direction=\"outbound\"}"),
        1
    );
    assert!(
        proxy.metric("trellis_retries_total{direction=\"outbound\"}")
            >= bad.hits() - u64::from(failed)
    );
}

#[tokio::test]
async fn the_budget_caps_extra_load_when_every_endpoint_fails() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    for b in &backends {
        b.status.store(503, Relaxed);
    }
    let mut dest = destination(&[&backends[0], &backends[1], &backends[2]]);
    dest.routes = vec![route_with(Some(retry_on_5xx(3)), None)];
    dest.policy.retry_budget = RetryBudget {
        ratio: 0.2,
        min_per_second: 1,
        ttl: Duration::from_secs(10),
    };
    let proxy = routed(dest).await;
    let n = 500;
    assert_eq!(failures(&proxy, n).await, n);
    let seen: u64 = backends.iter().map(Backend::hits).sum();
    // (1 + 0.2) × 500 plus the floor of 1/s × 10 s; without a budget it would be 4 × 500.
    let cap = 600 + 10;
    println!("backends saw {seen} attempts for {n} requests (cap {cap})");
    assert!(seen <= cap, "{seen} attempts");
    assert!(
        seen >= 600,
        "the budget should allow its full ratio: {seen}"
    );
    assert!(proxy.metric("trellis_retry_budget_exhausted_total{direction=\"outbound\"}") > 0);
}

#[tokio::test]
async fn large_bodies_are_not_retried_small_ones_are() {
    let bad = Backend::start("bad").await;
    bad.status.store(503, Relaxed);
    let mut dest = destination(&[&bad]);
    dest.routes = vec![route_with(Some(retry_on_5xx(1)), None)];
    let proxy = routed(dest).await;
    let post = |len: usize| {
        proxy
            .request("/upload")
            .method("POST")
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .unwrap()
    };
    assert_eq!(proxy.send(post(1024)).await.status, 503);
    assert_eq!(bad.hits(), 2);
    let (_, _, body) = bad.last.lock().unwrap().clone().unwrap();
    assert_eq!(body.len(), 1024, "the retry carried the whole body");
    assert_eq!(proxy.send(post(100 * 1024)).await.status, 503);
    assert_eq!(bad.hits(), 3, "a 100 KiB body is streamed once");
    let (_, _, body) = bad.last.lock().unwrap().clone().unwrap();
    assert_eq!(body.len(), 100 * 1024);
}

#[tokio::test]
async fn connect_failures_are_retried_by_default_on_another_endpoint() {
    let good = Backend::start("good").await;
    let mut dest = destination(&[&good]);
    let mut dead = good.endpoint();
    dead.address = ([127, 0, 0, 1], 1).into();
    dest.endpoints.push(dead);
    // No routes at all: the default policy (connect failures) applies.
    let proxy = routed(dest).await;
    assert_eq!(failures(&proxy, 200).await, 0);
    assert_eq!(good.hits(), 200);
}

#[tokio::test]
async fn route_timeout_answers_504() {
    let slow = Backend::start("slow").await;
    slow.delay_ms.store(2_000, Relaxed);
    let mut dest = destination(&[&slow]);
    dest.routes = vec![route_with(None, Some(Duration::from_millis(200)))];
    let proxy = routed(dest).await;
    let started = Instant::now();
    let a = proxy.get("/").await;
    assert_eq!(a.status, 504);
    assert_eq!(a.headers["trellis-error"], "request timeout");
    assert!(started.elapsed() < Duration::from_millis(1_500));
    assert_eq!(
        proxy.metric("trellis_request_timeouts_total{direction=\"outbound\"}"),
        1
    );
}

#[tokio::test]
async fn per_try_timeout_moves_on_to_a_fast_endpoint() {
    let (slow, fast) = (Backend::start("slow").await, Backend::start("fast").await);
    slow.delay_ms.store(2_000, Relaxed);
    let mut dest = destination(&[&slow, &fast]);
    dest.policy.load_balancer = LoadBalancer::RoundRobin;
    let mut retry = retry_on_5xx(2);
    retry.on.gateway_error = true;
    retry.per_try_timeout = Some(Duration::from_millis(100));
    dest.routes = vec![route_with(Some(retry), Some(Duration::from_secs(1)))];
    let proxy = routed(dest).await;
    for _ in 0..10 {
        let started = Instant::now();
        let a = proxy.get("/").await;
        assert_eq!((a.status, a.body.as_str()), (200, "fast"));
        assert!(started.elapsed() < Duration::from_millis(900));
    }
}

#[tokio::test]
async fn grpc_deadline_is_honoured_and_propagated() {
    let slow = Backend::start("slow").await;
    let mut dest = destination(&[&slow]);
    dest.routes = vec![route_with(None, Some(Duration::from_secs(5)))];
    let proxy = routed(dest).await;
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let grpc = || {
        proxy
            .request("/pkg.Svc/Call")
            .method("POST")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "300m")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // In time: the upstream sees the remaining budget, not more than the caller gave.
    let resp = h2.request(grpc()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let sent = slow.last_headers()["grpc-timeout"]
        .to_str()
        .unwrap()
        .to_string();
    let left = trellis_proxy::resilience::deadline::parse_grpc_timeout(sent.as_bytes()).unwrap();
    assert!(
        left <= Duration::from_millis(300) && left > Duration::from_millis(100),
        "{sent}"
    );
    // Too slow: DEADLINE_EXCEEDED after the caller's 300 ms, not the route's 5 s.
    slow.delay_ms.store(2_000, Relaxed);
    let started = Instant::now();
    let resp = tokio::time::timeout(support::WAIT, h2.request(grpc()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "4");
    assert!(started.elapsed() < Duration::from_millis(1_500));
}

#[tokio::test]
async fn connection_pool_limits_answer_503_at_once() {
    let slow = Backend::start("slow").await;
    slow.delay_ms.store(500, Relaxed);
    let mut dest = destination(&[&slow]);
    dest.policy.connection_pool = ConnectionPool {
        max_requests: Some(1),
        ..ConnectionPool::default()
    };
    let proxy = std::sync::Arc::new(routed(dest).await);
    let first = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.get("/").await.status })
    };
    support::eventually("first request in flight", || async { slow.hits() == 1 }).await;
    let started = Instant::now();
    let a = proxy.get("/").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.headers["trellis-error"], "circuit open: max requests");
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(
        proxy.metric("trellis_circuit_breaker_rejections_total{direction=\"outbound\",reason=\"max_requests\"}"),
        1
    );

    // One connection and no queue: the second concurrent request is turned away as pending.
    let mut dest = destination(&[&slow]);
    dest.policy.connection_pool = ConnectionPool {
        max_connections: Some(1),
        max_pending_requests: Some(0),
        ..ConnectionPool::default()
    };
    proxy.update(dest);
    let before = slow.hits();
    let first = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.get("/").await.status })
    };
    support::eventually("first request in flight", || async {
        slow.hits() == before + 1
    })
    .await;
    let a = proxy.get("/").await;
    assert_eq!(a.status, 503);
    assert_eq!(
        a.headers["trellis-error"],
        "circuit open: max pending requests"
    );
    assert_eq!(first.await.unwrap(), 200);
}

#[tokio::test]
async fn outlier_detection_ejects_then_readmits() {
    let (a, b, bad) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("bad").await,
    );
    bad.status.store(500, Relaxed);
    let mut dest = destination(&[&a, &b, &bad]);
    dest.policy.load_balancer = LoadBalancer::RoundRobin;
    dest.policy.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: Some(3),
        consecutive_gateway_errors: None,
        interval: Duration::from_millis(50),
        base_ejection_time: Duration::from_millis(1_500),
        max_ejection_percent: 10,
    });
    dest.routes = vec![route_with(Some(retry_on_5xx(0)), None)];
    let proxy = routed(dest).await;
    // Round robin: the bad endpoint fails three times within the first nine requests.
    for _ in 0..9 {
        proxy.get("/").await;
    }
    assert_eq!(bad.hits(), 3);
    assert_eq!(
        proxy.metric("trellis_outlier_ejections_total{direction=\"outbound\"}"),
        1
    );
    let ejected_at = Instant::now();
    assert_eq!(
        failures(&proxy, 100).await,
        0,
        "no request reaches the ejected endpoint"
    );
    assert_eq!(bad.hits(), 3);
    // Healthy again: back in rotation once the ejection time is up.
    bad.status.store(200, Relaxed);
    support::eventually("re-admission", || async {
        proxy.get("/").await;
        bad.hits() > 3
    })
    .await;
    assert!(ejected_at.elapsed() >= Duration::from_millis(1_400));
}

/// Sends `n` requests from `workers` concurrent clients; returns the slow endpoint's share.
async fn slow_share(lb: LoadBalancer) -> f64 {
    let (fast, slow) = (Backend::start("fast").await, Backend::start("slow").await);
    slow.delay_ms.store(20, Relaxed);
    let mut dest: Destination = destination(&[&fast, &slow]);
    dest.policy.load_balancer = lb;
    let proxy = std::sync::Arc::new(routed(dest).await);
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    assert_eq!(proxy.get("/").await.status, 200);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    slow.hits() as f64 / (slow.hits() + fast.hits()) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_and_ewma_send_less_to_a_slow_endpoint_than_round_robin() {
    let rr = slow_share(LoadBalancer::RoundRobin).await;
    let lr = slow_share(LoadBalancer::LeastRequest).await;
    let ewma = slow_share(LoadBalancer::PeakEwma).await;
    println!(
        "slow endpoint share: round robin {rr:.3}, least request {lr:.3}, peak EWMA {ewma:.3}"
    );
    assert!((0.45..=0.55).contains(&rr), "round robin {rr}");
    assert!(lr < rr - 0.15, "least request {lr} vs round robin {rr}");
    assert!(ewma < rr - 0.25, "peak EWMA {ewma} vs round robin {rr}");
}

#[tokio::test]
async fn a_backend_connect_timeout_applies() {
    // A listener that never accepts, with its queue full: further connects hang (SYNs dropped).
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let probe = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::net::TcpStream::connect(addr),
    )
    .await;
    if probe.is_ok() {
        println!("the kernel accepted past a full backlog; nothing to measure here");
        return;
    }
    let app = Backend::start("app").await;
    let mut dest = destination(&[&app]);
    dest.endpoints[0].address = addr;
    dest.policy.connection_pool.connect_timeout = Some(Duration::from_millis(200));
    let proxy = routed(dest).await;
    let started = Instant::now();
    let a = proxy.get("/").await;
    assert_eq!(a.status, 502);
    assert_eq!(a.headers["trellis-error"], "upstream connect failed");
    // Three attempts (the default retries connect failures) of 200 ms, not of 3 s.
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn grpc_codes_are_retried_when_listed() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    // Both answer UNAVAILABLE; only the listed code is retried.
    a.grpc_status.store(14, Relaxed);
    b.grpc_status.store(14, Relaxed);
    let mut dest = destination(&[&a, &b]);
    let retry = RetryPolicy {
        attempts: 1,
        per_try_timeout: None,
        on: RetryOn {
            grpc_codes: vec![14],
            ..RetryOn::default()
        },
    };
    dest.routes = vec![route_with(Some(retry), None)];
    let proxy = routed(dest).await;
    let a1 = proxy.get("/pkg.Svc/Call").await;
    assert_eq!(a1.headers["grpc-status"], "14");
    assert_eq!(a.hits() + b.hits(), 2);
    assert_eq!(a.hits(), 1, "the retry went to the other endpoint");
    a.grpc_status.store(13, Relaxed);
    b.grpc_status.store(13, Relaxed);
    proxy.get("/pkg.Svc/Call").await;
    assert_eq!(a.hits() + b.hits(), 3, "INTERNAL is not listed");
}

#[tokio::test]
async fn consistent_hash_keeps_users_and_sessions_on_one_endpoint() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let mut dest = destination(&[&backends[0], &backends[1], &backends[2]]);
    dest.policy.load_balancer = LoadBalancer::ConsistentHash {
        key: trellis_model::policy::HashKey::Header("x-user".into()),
        algorithm: trellis_model::policy::HashAlgorithm::Ring,
    };
    let proxy = routed(dest.clone()).await;
    let mut homes = std::collections::HashSet::new();
    for user in 0..30 {
        let mut home = None;
        for _ in 0..10 {
            let req = proxy
                .request("/")
                .header("x-user", format!("user-{user}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let body = proxy.send(req).await.body;
            assert_eq!(
                home.get_or_insert_with(|| body.clone()),
                &body,
                "user {user}"
            );
        }
        homes.extend(home);
    }
    assert!(homes.len() >= 2, "30 users all on one endpoint: {homes:?}");

    // A cookie with a TTL: the proxy makes one for a client without it, then keeps to it.
    dest.policy.load_balancer = LoadBalancer::ConsistentHash {
        key: trellis_model::policy::HashKey::Cookie {
            name: "session".into(),
            ttl: Some(Duration::from_secs(60)),
            path: Some("/".into()),
        },
        algorithm: trellis_model::policy::HashAlgorithm::Maglev,
    };
    proxy.update(dest);
    let first = proxy.get("/").await;
    let set_cookie = first.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set_cookie.starts_with("session=") && set_cookie.contains("Max-Age=60"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let req = proxy
            .request("/")
            .header("cookie", format!("theme=dark; {cookie}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let a = proxy.send(req).await;
        assert!(!a.headers.contains_key("set-cookie"));
        seen.insert(a.body);
    }
    assert_eq!(seen.len(), 1, "one session, one endpoint: {seen:?}");
}

#[tokio::test]
async fn the_route_timeout_also_bounds_a_streaming_body() {
    use tokio::io::AsyncWriteExt;
    // Answers headers and a first chunk at once, the rest only after 3 s.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                support::read_head(&mut stream).await;
                let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
                let _ = stream.write_all(head.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                let _ = stream.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    let app = Backend::start("unused").await;
    let mut dest = destination(&[&app]);
    dest.endpoints[0].address = addr;
    dest.routes = vec![route_with(None, Some(Duration::from_millis(300)))];
    let proxy = routed(dest).await;
    let started = Instant::now();
    let resp = proxy
        .client
        .request(proxy.request("/").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "headers came in time");
    let body = tokio::time::timeout(
        support::WAIT,
        http_body_util::BodyExt::collect(resp.into_body()),
    )
    .await
    .unwrap();
    assert!(body.is_err(), "the body is cut, not passed off as complete");
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        proxy.metric("trellis_request_timeouts_total{direction=\"outbound\"}"),
        1
    );
}

#[tokio::test]
async fn max_requests_per_connection_retires_connections() {
    let app = Backend::start("app").await;
    let mut dest = destination(&[&app]);
    let proxy = routed(dest.clone()).await;
    for _ in 0..5 {
        assert_eq!(proxy.get("/").await.status, 200);
    }
    assert_eq!(app.connections.load(Relaxed), 1, "keep-alive by default");

    // HTTP/1.1 with a limit of one: the pooled connection carries one more request and
    // closes, then every request has a connection of its own.
    dest.policy.connection_pool.max_requests_per_connection = Some(1);
    proxy.update(dest.clone());
    for _ in 0..5 {
        assert_eq!(proxy.get("/").await.status, 200);
    }
    assert_eq!(app.connections.load(Relaxed), 5);

    // The multiplexed HTTP/2 hop with a limit of three: a new connection every third request.
    let h2 = Backend::start("h2").await;
    let mut dest = destination(&[&h2]);
    dest.endpoints[0].meshed = true;
    dest.policy.connection_pool.max_requests_per_connection = Some(3);
    proxy.update(dest);
    for _ in 0..9 {
        assert_eq!(proxy.get("/").await.status, 200);
    }
    assert_eq!(h2.connections.load(Relaxed), 3);
}

#[tokio::test]
async fn bodies_of_unknown_length_stream_and_are_still_retried() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let bad = Backend::start("bad").await;
    bad.status.store(503, Relaxed);
    let mut dest = destination(&[&bad]);
    dest.routes = vec![route_with(Some(retry_on_5xx(1)), None)];
    let proxy = routed(dest).await;
    type Chunks = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
    >;
    let chunked = || -> Chunks {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = ["one-", "two-", "three"]
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    };
    for http2 in [false, true] {
        let client: Client<_, Chunks> = Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build_http();
        let before = bad.hits();
        let req = proxy
            .request("/upload")
            .method("POST")
            .body(chunked())
            .unwrap();
        let resp = tokio::time::timeout(support::WAIT, client.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(bad.hits(), before + 2, "http2 {http2}: retried");
        let (_, headers, body) = bad.last.lock().unwrap().clone().unwrap();
        assert_eq!(
            &body[..],
            b"one-two-three",
            "http2 {http2}: the retry replayed the body"
        );
        assert!(!headers.contains_key("content-length"));
    }
}

#[tokio::test]
async fn refused_streams_are_retried_by_default() {
    // An HTTP/2 peer that refuses every stream before processing it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refusing = listener.local_addr().unwrap();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = refused.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    counter.fetch_add(1, Relaxed);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    let good = Backend::start("good").await;
    let mut dest = destination(&[&good]);
    let mut bad = good.endpoint();
    bad.address = refusing;
    dest.endpoints.insert(0, bad);
    for e in &mut dest.endpoints {
        e.meshed = true; // the HTTP/2 hop
    }
    dest.policy.load_balancer = LoadBalancer::RoundRobin;
    let proxy = routed(dest).await;
    assert_eq!(failures(&proxy, 20).await, 0);
    assert!(refused.load(Relaxed) >= 5, "the refusing peer was tried");
    assert_eq!(good.hits(), 20);
}

#[tokio::test]
async fn resets_are_retried_only_when_asked() {
    // Reads the request, then closes without an answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resetting = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                support::read_head(&mut stream).await;
            });
        }
    });
    let good = Backend::start("good").await;
    let mut dest = destination(&[&good]);
    let mut bad = good.endpoint();
    bad.address = resetting;
    dest.endpoints.insert(0, bad);
    dest.policy.load_balancer = LoadBalancer::RoundRobin;
    // The default policy does not retry a reset: the request may have reached the app.
    let proxy = routed(dest.clone()).await;
    let answers: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(proxy.get("/").await.status);
        }
        v
    };
    assert_eq!(
        answers.iter().filter(|s| **s == 502).count(),
        2,
        "{answers:?}"
    );
    // With `reset` listed, every request succeeds.
    dest.routes = vec![route_with(
        Some(RetryPolicy {
            attempts: 1,
            per_try_timeout: None,
            on: RetryOn {
                reset: true,
                ..RetryOn::default()
            },
        }),
        None,
    )];
    proxy.update(dest);
    assert_eq!(failures(&proxy, 10).await, 0);
}

#[tokio::test]
async fn a_retry_never_waits_for_the_connection_its_answer_holds() {
    let bad = Backend::start("bad").await;
    bad.status.store(503, Relaxed);
    let mut dest = destination(&[&bad]);
    dest.policy.connection_pool.max_connections = Some(1);
    dest.routes = vec![route_with(
        Some(retry_on_5xx(2)),
        Some(Duration::from_secs(3)),
    )];
    let proxy = routed(dest).await;
    let started = Instant::now();
    let a = proxy.get("/").await;
    // The 503 comes back at once instead of a 504 after the retry waited for itself.
    assert_eq!(a.status, 503);
    assert!(started.elapsed() < Duration::from_secs(1));
}
