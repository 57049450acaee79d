//! The meshed hop, end to end on loopback: an outbound connection whose destination resolves
//! to a meshed endpoint (a second proxy's inbound) is carried over HTTP/2 with
//! `trellis-orig-proto`, and reaches an HTTP/1-only application as HTTP/1.1, on the port named
//! by `trellis-target-port`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trellis_model::{AppProtocol, Destination, Endpoint, ServiceKey};

use crate::discovery::{Discovery, Resolution};
use crate::route::Dest;
use crate::serve::{Ctx, serve};
use crate::telemetry::scrape::sum;
use crate::telemetry::{Direction, Metrics};
use crate::{Proxy, ProxyConfig};

const WAIT: Duration = Duration::from_secs(10);

/// An HTTP/1.1-only app that reports the version and header names it saw.
async fn http1_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let seen = format!(
                        "{:?} {}",
                        req.version(),
                        req.headers()
                            .keys()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn meshed(endpoint: SocketAddr, target_port: u16) -> Resolution {
    Resolution::Found(Arc::new(Destination {
        authority: "reviews.default.svc.cluster.local:9080".into(),
        service: ServiceKey::new("default", "reviews"),
        port: 9080,
        protocol: AppProtocol::Unknown,
        endpoints: vec![Endpoint {
            address: endpoint,
            meshed: true,
            identity: None,
            workload: "reviews".into(),
            labels: Default::default(),
            target_port,
            remote: None,
        }],
        ..Destination::default()
    }))
}

#[tokio::test]
async fn http1_rides_the_meshed_http2_hop() {
    let app = http1_app().await;
    // The peer has no --app: only the target port the outbound side names leads to the app.
    let mut peer_config = ProxyConfig::local(None);
    peer_config.app_ports = vec![app.port()];
    let peer = Proxy::start(peer_config).await.unwrap();
    let peer_inbound = peer.addrs().inbound;

    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Ctx::new(
        metrics.clone(),
        Discovery::disabled(),
        Duration::from_secs(1),
        Default::default(),
        Vec::new(),
        CancellationToken::new(),
        TaskTracker::new(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outbound = listener.local_addr().unwrap();
    let dest = Dest::Address {
        orig: "127.0.0.1:9".parse().unwrap(),
        resolution_rx: tokio::sync::watch::channel(meshed(peer_inbound, app.port())).1,
        traffic: ctx.traffic(&trellis_model::Target::Address(peer_inbound)),
        outbound: None,
    };
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve(ctx, Direction::Outbound, stream, dest, 9080).await;
    });

    let stream = TcpStream::connect(outbound).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("/reviews/1")
            .header("host", "reviews.default:9080")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(WAIT, sender.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let seen = resp.into_body().collect().await.unwrap().to_bytes();
        let seen = String::from_utf8_lossy(&seen);
        assert!(seen.starts_with("HTTP/1.1 "), "{seen}");
        assert!(seen.contains("host"), "{seen}");
        assert!(!seen.contains("trellis-orig-proto"), "{seen}");
        assert!(!seen.contains("trellis-target-port"), "{seen}");
    }

    // The peer saw one HTTP/2 connection (multiplexed hop), not one per request.
    let rendered = admin_metrics(peer.addrs().admin).await;
    assert!(
        rendered.contains(
            "trellis_protocol_detections_total{direction=\"inbound\",outcome=\"http2\"} 1"
        ),
        "{rendered}"
    );
    let ok = |d| [("direction", d), ("status_code", "200")];
    assert_eq!(
        sum(&rendered, "trellis_requests_total", &ok("inbound")),
        3.0,
        "{rendered}"
    );
    let mut own = String::new();
    metrics.render(&mut own);
    assert_eq!(
        sum(&own, "trellis_requests_total", &ok("outbound")),
        3.0,
        "{own}"
    );

    // The peer restarts on the same address: the pooled HTTP/2 connection is dead, and the
    // next request dials a new one instead of failing.
    peer.shutdown_token().cancel();
    tokio::time::timeout(WAIT, peer.wait()).await.unwrap();
    let mut peer_config = ProxyConfig::local(None);
    peer_config.inbound = peer_inbound;
    peer_config.app_ports = vec![app.port()];
    let _peer = Proxy::start(peer_config).await.unwrap();
    let req = Request::get("/again")
        .header("host", "reviews.default:9080")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

async fn admin_metrics(admin: SocketAddr) -> String {
    let stream = TcpStream::connect(admin).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/metrics")
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

/// The request future is allocated once per request (hyper moves the service's future, so
/// `serve_http1`/`serve_http2` box it) and copied on the way: its size is a cost per request.
/// Dialling and upgrades, once per connection or rare, are boxed inside it so the common
/// path does not carry their state; this was about 15.5 KiB before (a debug build; release is
/// smaller), 8.7 KiB after.
#[test]
fn the_request_future_stays_small() {
    fn future_size<A, F>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    let handle =
        future_size(|(f, r): (crate::forward::HttpForward, Request<Incoming>)| f.handle(r));
    assert!(
        handle <= 10 * 1024,
        "HttpForward::handle's future is {handle} bytes"
    );
}
