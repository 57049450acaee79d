//! Routes on loopback: a hand-made `Destination` with routes is served by an outbound listener
//! and real HTTP backends on 127.0.0.1 answer; every bound is over enough requests to hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::time::Instant;
use trellis_model::matching::{HeaderMatch, HttpMatch, PathMatch, StringMatch};
use trellis_model::route::{
    AbortStatus, Fault, FaultAbort, FaultDelay, HeaderModifier, HttpRoute, Mirror, PathRewrite,
    Percent, Redirect, ResourceRef, Rewrite, RouteAction,
};

use support::routed::{Backend, destination, routed, subset, subset_backend, weighted};

fn route(name: &str, action: RouteAction) -> HttpRoute {
    HttpRoute {
        name: name.into(),
        source: ResourceRef {
            kind: "VirtualService".into(),
            namespace: "default".into(),
            name: "reviews".into(),
        },
        matches: Vec::new(),
        action,
        request_headers: HeaderModifier::default(),
        response_headers: HeaderModifier::default(),
        rewrite: None,
        mirrors: Vec::new(),
        fault: None,
        timeout: None,
        retry: None,
    }
}

#[tokio::test]
async fn ninety_ten_split_over_two_thousand_requests() {
    let (v1, v3) = (Backend::start("v1").await, Backend::start("v3").await);
    let mut dest = destination(&[&v1, &v3]);
    dest.backends = vec![subset_backend("v1", &[&v1]), subset_backend("v3", &[&v3])];
    dest.routes = vec![route(
        "reviews-90-10",
        RouteAction::Forward(vec![weighted(subset("v1"), 90), weighted(subset("v3"), 10)]),
    )];
    let proxy = routed(dest).await;
    let n: u32 = 2_000;
    let mut to_v1: u32 = 0;
    for _ in 0..n {
        let a = proxy.get("/reviews/1").await;
        assert_eq!(a.status, 200);
        if a.body == "v1" {
            to_v1 += 1;
        }
    }
    let share = f64::from(to_v1) / f64::from(n);
    println!("v1 share over {n}: {share:.4}");
    assert!((0.87..=0.93).contains(&share), "v1 share {share}");
    assert_eq!(v1.hits() + v3.hits(), u64::from(n));
}

#[tokio::test]
async fn end_user_jason_goes_to_v2_everyone_else_to_v3() {
    let (v2, v3) = (Backend::start("v2").await, Backend::start("v3").await);
    let mut dest = destination(&[&v2, &v3]);
    dest.backends = vec![subset_backend("v2", &[&v2]), subset_backend("v3", &[&v3])];
    let mut jason = route(
        "jason",
        RouteAction::Forward(vec![weighted(subset("v2"), 100)]),
    );
    jason.matches = vec![HttpMatch {
        headers: vec![HeaderMatch {
            name: "end-user".into(),
            value: Some(StringMatch::Exact("jason".into())),
            invert: false,
        }],
        ..HttpMatch::default()
    }];
    dest.routes = vec![
        jason,
        route(
            "rest",
            RouteAction::Forward(vec![weighted(subset("v3"), 100)]),
        ),
    ];
    let proxy = routed(dest).await;
    for i in 0..200 {
        let user = if i % 2 == 0 { "jason" } else { "alice" };
        let req = proxy
            .request("/reviews/0")
            .header("end-user", user)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let a = proxy.send(req).await;
        let want = if user == "jason" { "v2" } else { "v3" };
        assert_eq!(a.body, want, "request {i} for {user}");
    }
    assert_eq!((v2.hits(), v3.hits()), (100, 100));
}

#[tokio::test]
async fn fault_delay_and_http_abort() {
    let app = Backend::start("app").await;
    let mut dest = destination(&[&app]);
    let mut delayed = route(
        "delay",
        RouteAction::Forward(vec![weighted(subset("none"), 0)]),
    );
    delayed.action = RouteAction::Forward(vec![weighted(
        trellis_model::route::BackendRef {
            service: support::routed::reviews(),
            port: None,
            subset: None,
        },
        1,
    )]);
    delayed.matches = vec![HttpMatch {
        path: Some(PathMatch::Exact("/delay".into())),
        ..HttpMatch::default()
    }];
    delayed.fault = Some(Fault {
        delay: Some(FaultDelay {
            fixed: Duration::from_millis(300),
            percent: Percent::ALL,
        }),
        abort: None,
    });
    let mut aborted = delayed.clone();
    aborted.name = "abort".into();
    aborted.matches[0].path = Some(PathMatch::Exact("/abort".into()));
    aborted.fault = Some(Fault {
        delay: None,
        abort: Some(FaultAbort {
            status: AbortStatus::Http(503),
            percent: Percent(50.0),
        }),
    });
    dest.routes = vec![delayed, aborted];
    let proxy = routed(dest).await;

    let started = Instant::now();
    let a = proxy.get("/delay").await;
    assert_eq!(a.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let mut aborts = 0;
    let n = 400;
    for _ in 0..n {
        let a = proxy.get("/abort").await;
        if a.status == 503 {
            assert_eq!(a.headers["trellis-error"], "fault abort");
            aborts += 1;
        } else {
            assert_eq!(a.status, 200);
        }
    }
    // 50% of 400: 200 ± 40 is more than four standard deviations.
    assert!((160..=240).contains(&aborts), "aborts {aborts}");
    assert_eq!(
        proxy.metric("trellis_faults_injected_total{direction=\"outbound\",kind=\"abort\"}"),
        aborts
    );
    assert_eq!(
        proxy.metric("trellis_faults_injected_total{direction=\"outbound\",kind=\"delay\"}"),
        1
    );
}

#[tokio::test]
async fn grpc_abort_is_trailers_only() {
    let app = Backend::start("app").await;
    let mut dest = destination(&[&app]);
    let mut r = route("grpc-abort", RouteAction::Forward(vec![]));
    r.fault = Some(Fault {
        delay: None,
        abort: Some(FaultAbort {
            status: AbortStatus::Grpc(14),
            percent: Percent::ALL,
        }),
    });
    dest.routes = vec![r];
    let proxy = routed(dest).await;
    let req = proxy
        .request("/pkg.Svc/Method")
        .method("POST")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = proxy.send(req).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["grpc-status"], "14");
    assert_eq!(a.headers["content-type"], "application/grpc");
    assert_eq!(app.hits(), 0);
}

#[tokio::test]
async fn redirect_direct_response_rewrite_and_header_edits() {
    let app = Backend::start("app").await;
    let mut dest = destination(&[&app]);
    let prefix = |p: &str| {
        vec![HttpMatch {
            path: Some(PathMatch::Prefix(p.into())),
            ..HttpMatch::default()
        }]
    };
    let mut redirect = route(
        "redirect",
        RouteAction::Redirect(Redirect {
            scheme: Some("https".into()),
            host: Some("example.com".into()),
            port: None,
            path: Some(PathRewrite::Prefix("/new".into())),
            status: 301,
        }),
    );
    redirect.matches = prefix("/old");
    let mut direct = route(
        "direct",
        RouteAction::DirectResponse {
            status: 418,
            body: Some("teapot".into()),
        },
    );
    direct.matches = prefix("/teapot");
    let own = trellis_model::route::BackendRef {
        service: support::routed::reviews(),
        port: None,
        subset: None,
    };
    let mut edited = route("edited", RouteAction::Forward(vec![weighted(own, 1)]));
    edited.matches = prefix("/v1");
    edited.rewrite = Some(Rewrite {
        path: Some(PathRewrite::Prefix("/v2".into())),
        authority: Some("ratings:9080".into()),
    });
    edited.request_headers = HeaderModifier {
        set: vec![("x-set".into(), "route".into())],
        add: vec![("x-added".into(), "1".into())],
        remove: vec!["x-drop".into()],
    };
    edited.response_headers = HeaderModifier {
        set: vec![("x-resp".into(), "yes".into())],
        add: Vec::new(),
        remove: vec!["x-backend".into()],
    };
    if let RouteAction::Forward(b) = &mut edited.action {
        b[0].request_headers.set = vec![("x-backend-edit".into(), "backend".into())];
    }
    dest.routes = vec![redirect, direct, edited];
    let proxy = routed(dest).await;

    let a = proxy.get("/old/page?x=1").await;
    assert_eq!(a.status, 301);
    assert_eq!(a.headers["location"], "https://example.com/new/page?x=1");

    let a = proxy.get("/teapot").await;
    assert_eq!((a.status, a.body.as_str()), (418, "teapot"));

    let req = proxy
        .request("/v1/users?id=7")
        .header("x-drop", "secret")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = proxy.send(req).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["x-resp"], "yes");
    assert!(!a.headers.contains_key("x-backend"));
    assert_eq!(app.last_uri(), "/v2/users?id=7");
    let seen = app.last_headers();
    assert_eq!(seen["host"], "ratings:9080");
    assert_eq!(seen["x-set"], "route");
    assert_eq!(seen["x-added"], "1");
    assert_eq!(seen["x-backend-edit"], "backend");
    assert!(!seen.contains_key("x-drop"));
}

#[tokio::test]
async fn all_zero_weights_fail_with_500() {
    let app = Backend::start("app").await;
    let mut dest = destination(&[&app]);
    dest.routes = vec![route(
        "none",
        RouteAction::Forward(vec![weighted(subset("v1"), 0)]),
    )];
    let proxy = routed(dest).await;
    let a = proxy.get("/").await;
    assert_eq!(a.status, 500);
    assert_eq!(a.headers["trellis-error"], "no backends");
}

#[tokio::test]
async fn mirrors_get_copies_and_a_slow_mirror_does_not_slow_the_primary() {
    let (app, shadow) = (Backend::start("app").await, Backend::start("shadow").await);
    shadow.delay_ms.store(2_000, Relaxed);
    let mut dest = destination(&[&app]);
    dest.backends = vec![subset_backend("shadow", &[&shadow])];
    let own = trellis_model::route::BackendRef {
        service: support::routed::reviews(),
        port: None,
        subset: None,
    };
    let mut r = route("mirrored", RouteAction::Forward(vec![weighted(own, 1)]));
    r.mirrors = vec![Mirror {
        backend: subset("shadow"),
        percent: Percent::ALL,
    }];
    dest.routes = vec![r];
    let proxy = routed(dest).await;
    let started = Instant::now();
    for _ in 0..20 {
        let req = proxy
            .request("/post")
            .method("POST")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        assert_eq!(proxy.send(req).await.status, 200);
    }
    // The primary answers at once although every copy takes 2 s.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    support::eventually("mirror copies", || async { shadow.hits() == 20 }).await;
    let seen = shadow.last.lock().unwrap().clone().unwrap();
    assert_eq!(seen.1["host"], "reviews-shadow:9080");
    assert_eq!(&seen.2[..], b"payload");
    assert_eq!(
        proxy.metric("trellis_mirrored_requests_total{direction=\"outbound\"}"),
        20
    );

    // A mirror that cannot be reached does not fail the primary either.
    let mut dest = destination(&[&app]);
    let mut gone = subset_backend("shadow", &[]);
    gone.endpoints = vec![support::routed::Backend::endpoint(&app)];
    gone.endpoints[0].address = ([127, 0, 0, 1], 1).into();
    dest.backends = vec![gone];
    let mut r = route("mirrored", RouteAction::Forward(vec![]));
    r.action = RouteAction::Forward(vec![weighted(
        trellis_model::route::BackendRef {
            service: support::routed::reviews(),
            port: None,
            subset: None,
        },
        1,
    )]);
    r.mirrors = vec![Mirror {
        backend: subset("shadow"),
        percent: Percent::ALL,
    }];
    dest.routes = vec![r];
    proxy.update(dest);
    for _ in 0..20 {
        assert_eq!(proxy.get("/").await.status, 200);
    }
}

#[tokio::test]
async fn a_route_change_applies_to_the_next_request() {
    let (v1, v2) = (Backend::start("v1").await, Backend::start("v2").await);
    let mut dest = destination(&[&v1, &v2]);
    dest.backends = vec![subset_backend("v1", &[&v1]), subset_backend("v2", &[&v2])];
    dest.routes = vec![route(
        "all-v1",
        RouteAction::Forward(vec![weighted(subset("v1"), 1)]),
    )];
    let proxy = routed(dest.clone()).await;
    assert_eq!(proxy.get("/").await.body, "v1");
    dest.routes = vec![route(
        "all-v2",
        RouteAction::Forward(vec![weighted(subset("v2"), 1)]),
    )];
    proxy.update(dest);
    for _ in 0..10 {
        assert_eq!(proxy.get("/").await.body, "v2");
    }
}

#[tokio::test]
async fn mirrors_in_flight_are_bounded() {
    let (app, shadow) = (Backend::start("app").await, Backend::start("shadow").await);
    shadow.delay_ms.store(3_000, Relaxed);
    let mut dest = destination(&[&app]);
    dest.backends = vec![subset_backend("shadow", &[&shadow])];
    let mut r = route(
        "mirrored",
        RouteAction::Forward(vec![weighted(
            trellis_model::route::BackendRef {
                service: support::routed::reviews(),
                port: None,
                subset: None,
            },
            1,
        )]),
    );
    r.mirrors = vec![Mirror {
        backend: subset("shadow"),
        percent: Percent::ALL,
    }];
    dest.routes = vec![r];
    let proxy = routed(dest).await;
    let limit = trellis_proxy::serve::MAX_MIRRORS_IN_FLIGHT as u64;
    for _ in 0..limit + 50 {
        assert_eq!(proxy.get("/").await.status, 200);
    }
    // Every copy takes 3 s, so none has finished: exactly the limit went out.
    assert_eq!(
        proxy.metric("trellis_mirrored_requests_total{direction=\"outbound\"}"),
        limit
    );
    assert_eq!(app.hits(), limit + 50);
}

#[tokio::test]
async fn tcp_routes_split_connections_by_weight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (primary, replica) = (
        support::routed::tcp_named("primary").await,
        support::routed::tcp_named("replica").await,
    );
    let app = Backend::start("unused").await;
    let mut dest = destination(&[&app]);
    let mut p = subset_backend("primary", &[&app]);
    p.endpoints[0].address = primary;
    let mut r = subset_backend("replica", &[&app]);
    r.endpoints[0].address = replica;
    dest.backends = vec![p, r];
    dest.tcp_routes = vec![trellis_model::route::TcpRoute {
        name: "db".into(),
        source: ResourceRef::default(),
        port: Some(9080),
        sni_hosts: Vec::new(),
        backends: vec![
            weighted(subset("primary"), 80),
            weighted(subset("replica"), 20),
        ],
    }];
    let proxy = routed(dest).await;
    let n = 500;
    let mut to_primary = 0;
    for _ in 0..n {
        let mut conn = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        // Not HTTP: detection classifies the connection as opaque at once.
        conn.write_all(b"\x00ping").await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(support::WAIT, conn.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        match answer.as_str() {
            "primary" => to_primary += 1,
            "replica" => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let share = f64::from(to_primary) / f64::from(n);
    println!("primary share over {n} connections: {share:.3}");
    // 80% of 500 connections: ±6% is 3.4 standard deviations.
    assert!((0.74..=0.86).contains(&share), "primary share {share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_routes_change_under_load() {
    let (v1, v2) = (Backend::start("v1").await, Backend::start("v2").await);
    let mut dest = destination(&[&v1, &v2]);
    dest.backends = vec![subset_backend("v1", &[&v1]), subset_backend("v2", &[&v2])];
    let to = |s: &str| {
        vec![route(
            "all",
            RouteAction::Forward(vec![weighted(subset(s), 1)]),
        )]
    };
    dest.routes = to("v1");
    let proxy = std::sync::Arc::new(routed(dest.clone()).await);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (proxy, stop) = (proxy.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, 0u32);
                while !stop.load(Relaxed) && ok + failed < 20_000 {
                    if proxy.get("/").await.status == 200 {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for i in 0..20 {
        dest.routes = to(if i % 2 == 0 { "v2" } else { "v1" });
        proxy.update(dest.clone());
        let want = if i % 2 == 0 { "v2" } else { "v1" };
        // The next request after the update already follows it.
        assert_eq!(proxy.get("/").await.body, want);
        // Pacing only: lets the workers send traffic between changes.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.await.unwrap();
        ok += o;
        failed += f;
    }
    println!("{ok} requests succeeded, {failed} failed across 20 route changes");
    assert_eq!(failed, 0);
    assert!(ok > 100);
}

#[tokio::test]
async fn a_keep_alive_connection_follows_route_changes() {
    let (v1, v2) = (Backend::start("v1").await, Backend::start("v2").await);
    let mut dest = destination(&[&v1, &v2]);
    dest.backends = vec![subset_backend("v1", &[&v1]), subset_backend("v2", &[&v2])];
    let to = |s: &str| {
        vec![route(
            "all",
            RouteAction::Forward(vec![weighted(subset(s), 1)]),
        )]
    };
    for transparent in [false, true] {
        dest.routes = to("v1");
        let proxy = if transparent {
            support::routed::routed_transparent(dest.clone()).await
        } else {
            routed(dest.clone()).await
        };
        let mut conn = support::http1_conn(proxy.addr).await;
        let mut ask = async || {
            let req = http::Request::builder()
                .uri("/")
                .header("host", "reviews:9080")
                .body(support::full(""))
                .unwrap();
            let resp = conn.send_request(req).await.unwrap();
            support::body_string(resp.into_body()).await
        };
        assert_eq!(ask().await, "v1");
        dest.routes = to("v2");
        proxy.update(dest.clone());
        assert_eq!(ask().await, "v2", "transparent {transparent}");
    }
}
