//! Active health checks on loopback: two real backends behind a routed outbound listener whose
//! destination policy carries a health check; when one backend's `/healthz` starts failing,
//! traffic stops reaching it within the checker's bound (unhealthy_threshold probes at the
//! jittered interval, plus a timeout), while every request still succeeds on the other; when
//! its `/healthz` passes again, it gets traffic again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use trellis_model::policy::{HealthCheck, LoadBalancer, TrafficPolicy};
use trellis_model::{AppProtocol, Destination, Endpoint};

use support::routed::{reviews, routed};

/// A backend whose `/healthz` a test can fail while everything else keeps answering 200.
#[derive(Clone)]
struct Backend {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    /// Requests other than `/healthz`.
    served: Arc<AtomicU64>,
    probes: Arc<AtomicU64>,
}

impl Backend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = Backend {
            addr: listener.local_addr().unwrap(),
            healthy: Arc::new(AtomicBool::new(true)),
            served: Arc::default(),
            probes: Arc::default(),
        };
        let server = b.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let b = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let b = b.clone();
                        async move {
                            let status = if req.uri().path() == "/healthz" {
                                b.probes.fetch_add(1, Relaxed);
                                if b.healthy.load(Relaxed) { 200 } else { 503 }
                            } else {
                                b.served.fetch_add(1, Relaxed);
                                200
                            };
                            let mut resp = Response::new(Full::new(Bytes::from("ok")));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        b
    }

    fn endpoint(&self, name: &str) -> Endpoint {
        Endpoint {
            address: self.addr,
            meshed: false,
            identity: None,
            workload: name.into(),
            labels: Default::default(),
            target_port: self.addr.port(),
            remote: None,
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Relaxed)
    }
}

const INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(50);
const UNHEALTHY: u32 = 2;
const HEALTHY: u32 = 2;

fn request(proxy: SocketAddr) -> Request<Full<Bytes>> {
    Request::get(format!("http://{proxy}/reviews/0"))
        .header("host", "reviews:9080")
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn a_failing_endpoint_leaves_the_balancer_and_comes_back() {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let dest = Destination {
        authority: "reviews.default.svc.cluster.local:9080".into(),
        service: reviews(),
        port: 9080,
        protocol: AppProtocol::Http,
        endpoints: vec![a.endpoint("reviews-a"), b.endpoint("reviews-b")],
        policy: TrafficPolicy {
            load_balancer: LoadBalancer::RoundRobin,
            health_check: Some(HealthCheck {
                path: "/healthz".into(),
                interval: INTERVAL,
                timeout: TIMEOUT,
                unhealthy_threshold: UNHEALTHY,
                healthy_threshold: HEALTHY,
            }),
            ..TrafficPolicy::default()
        },
        ..Destination::default()
    };
    let r = routed(dest).await;

    // Both healthy: round robin reaches both.
    for _ in 0..20 {
        assert_eq!(r.send(request(r.addr)).await.status, 200);
    }
    assert!(
        a.served() >= 5 && b.served() >= 5,
        "{} {}",
        a.served(),
        b.served()
    );
    support::eventually("both backends probed", || async {
        a.probes.load(Relaxed) > 0 && b.probes.load(Relaxed) > 0
    })
    .await;

    // b's /healthz fails: within UNHEALTHY probes (+10% jitter, + the timeout) it is out.
    b.healthy.store(false, Relaxed);
    let failed_at = Instant::now();
    let bound = INTERVAL.mul_f64(1.1 * f64::from(UNHEALTHY + 1)) + TIMEOUT;
    support::eventually("b taken out", || async {
        let before = b.served();
        for _ in 0..10 {
            assert_eq!(r.send(request(r.addr)).await.status, 200);
        }
        b.served() == before
    })
    .await;
    let took = failed_at.elapsed();
    // The check above sends 10 requests per try; allow it 1.5 s more on a busy machine.
    assert!(
        took < bound + Duration::from_millis(1500),
        "out after {took:?}, bound {bound:?}"
    );
    // Out means out: the next 50 requests all go to a (and all succeed).
    let (a0, b0) = (a.served(), b.served());
    for _ in 0..50 {
        assert_eq!(r.send(request(r.addr)).await.status, 200);
    }
    assert_eq!(b.served(), b0, "traffic reached the unhealthy endpoint");
    assert_eq!(a.served(), a0 + 50);
    let mut text = String::new();
    trellis_proxy::resilience::health::render(&mut text);
    assert!(
        text.contains("trellis_health_check_unhealthy_endpoints 1"),
        "{text}"
    );
    let backend = "reviews.default.svc.cluster.local:9080";
    assert!(
        text.contains(&format!(
            "trellis_health_check_endpoint_healthy{{backend=\"{backend}\",endpoint=\"{}\"}} 0",
            b.addr
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "trellis_health_check_endpoint_healthy{{backend=\"{backend}\",endpoint=\"{}\"}} 1",
            a.addr
        )),
        "{text}"
    );
    assert!(
        !text.contains("trellis_health_check_total{result=\"failure\"} 0"),
        "{text}"
    );

    // b passes again: after HEALTHY probes it gets traffic again.
    b.healthy.store(true, Relaxed);
    support::eventually("b back", || async {
        let before = b.served();
        for _ in 0..10 {
            assert_eq!(r.send(request(r.addr)).await.status, 200);
        }
        b.served() > before
    })
    .await;
    let mut text = String::new();
    trellis_proxy::resilience::health::render(&mut text);
    assert!(
        text.contains("trellis_health_check_unhealthy_endpoints 0"),
        "{text}"
    );
}
