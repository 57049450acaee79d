//! A routed outbound listener fed by a hand-made `Destination` (no control plane), and
//! scriptable backends that report who answered.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trellis_model::route::{BackendRef, HeaderModifier, WeightedBackend};
use trellis_model::{AppProtocol, Backend as ModelBackend, Destination, Endpoint, ServiceKey};
use trellis_proxy::discovery::{Discovery, Resolution};
use trellis_proxy::route::Dest;
use trellis_proxy::serve::{Ctx, Source, serve};
use trellis_proxy::telemetry::{Direction, Metrics};
use trellis_proxy::traffic::TargetTraffic;

/// A backend server (HTTP/1.1 and HTTP/2) whose answers a test can change while it runs.
#[derive(Clone)]
pub struct Backend {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub hits: Arc<AtomicU64>,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    /// Status to answer with.
    pub status: Arc<AtomicU16>,
    /// Delay before answering, in milliseconds.
    pub delay_ms: Arc<AtomicU64>,
    /// A `grpc-status` to put in the answer's head (trailers-only style); 0: none.
    pub grpc_status: Arc<AtomicU16>,
    /// The last request's head and body as the backend saw them.
    pub last: Arc<Mutex<Option<(String, HeaderMap, Bytes)>>>,
}

impl Backend {
    pub async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let b = Backend {
            addr: listener.local_addr().unwrap(),
            name,
            hits: Arc::default(),
            connections: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            delay_ms: Arc::default(),
            grpc_status: Arc::default(),
            last: Arc::default(),
        };
        let server = b.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                server.connections.fetch_add(1, Relaxed);
                let b = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| b.clone().handle(req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        b
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        self.hits.fetch_add(1, Relaxed);
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        *self.last.lock().unwrap() = Some((parts.uri.to_string(), parts.headers, body));
        let delay = self.delay_ms.load(Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let mut resp = Response::new(Full::new(Bytes::from(self.name)));
        *resp.status_mut() = http::StatusCode::from_u16(self.status.load(Relaxed)).unwrap();
        resp.headers_mut()
            .insert("x-backend", HeaderValue::from_static(self.name));
        let grpc = self.grpc_status.load(Relaxed);
        if grpc > 0 {
            resp.headers_mut()
                .insert("grpc-status", HeaderValue::from(grpc));
        }
        Ok(resp)
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Relaxed)
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            address: self.addr,
            meshed: false,
            identity: None,
            workload: self.name.into(),
            labels: Default::default(),
            target_port: self.addr.port(),
            remote: None,
        }
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.last
            .lock()
            .unwrap()
            .as_ref()
            .map(|l| l.1.clone())
            .unwrap_or_default()
    }

    pub fn last_uri(&self) -> String {
        self.last
            .lock()
            .unwrap()
            .as_ref()
            .map(|l| l.0.clone())
            .unwrap_or_default()
    }
}

pub fn reviews() -> ServiceKey {
    ServiceKey::new("default", "reviews")
}

pub fn subset(name: &str) -> BackendRef {
    BackendRef {
        service: reviews(),
        port: None,
        subset: Some(name.into()),
    }
}

pub fn weighted(backend: BackendRef, weight: u32) -> WeightedBackend {
    WeightedBackend {
        backend,
        weight,
        request_headers: HeaderModifier::default(),
        response_headers: HeaderModifier::default(),
    }
}

/// A destination `reviews.default:9080` whose own endpoints are `own`.
pub fn destination(own: &[&Backend]) -> Destination {
    Destination {
        authority: "reviews.default.svc.cluster.local:9080".into(),
        service: reviews(),
        port: 9080,
        protocol: AppProtocol::Http,
        endpoints: own.iter().map(|b| b.endpoint()).collect(),
        ..Destination::default()
    }
}

/// A subset backend of `reviews` served by `servers`.
pub fn subset_backend(name: &str, servers: &[&Backend]) -> ModelBackend {
    ModelBackend {
        backend: subset(name),
        authority: format!("reviews.default.svc.cluster.local:9080 ({name})"),
        endpoints: servers.iter().map(|b| b.endpoint()).collect(),
        policy: Default::default(),
    }
}

/// An outbound listener whose every connection goes to one destination, as an explicit
/// `--outbound-port` to a service would, with the destination under the test's control.
pub struct Routed {
    pub addr: SocketAddr,
    pub dest_tx: watch::Sender<Resolution>,
    pub metrics: Arc<Metrics>,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

pub async fn routed(dest: Destination) -> Routed {
    routed_as(dest, false).await
}

/// [`routed`], with every connection handled as a transparent one to an address discovery
/// knows (`Dest::Address`).
pub async fn routed_transparent(dest: Destination) -> Routed {
    routed_as(dest, true).await
}

async fn routed_as(dest: Destination, transparent: bool) -> Routed {
    let (dest_tx, resolution_rx) = watch::channel(Resolution::Found(Arc::new(dest)));
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(
        Ctx::new(
            metrics.clone(),
            Discovery::disabled(),
            Duration::from_secs(1),
            BTreeSet::new(),
            Vec::new(),
            CancellationToken::new(),
            TaskTracker::new(),
        )
        .with_source(Source {
            namespace: "default".into(),
            labels: [("app".to_string(), "productpage".to_string())].into(),
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let traffic = Arc::new(TargetTraffic::default());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let dest = if transparent {
                Dest::Address {
                    orig: ([127, 0, 0, 1], 9).into(),
                    resolution_rx: resolution_rx.clone(),
                    traffic: traffic.clone(),
                    outbound: None,
                }
            } else {
                Dest::Service {
                    resolution_rx: resolution_rx.clone(),
                    traffic: traffic.clone(),
                }
            };
            tokio::spawn(serve(ctx.clone(), Direction::Outbound, stream, dest, 9080));
        }
    });
    let client = Client::builder(TokioExecutor::new()).build_http();
    Routed {
        addr,
        dest_tx,
        metrics,
        client,
    }
}

/// One request's answer: status, headers and body.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Routed {
    pub fn update(&self, dest: Destination) {
        self.dest_tx.send_replace(Resolution::Found(Arc::new(dest)));
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Answer {
        let resp = tokio::time::timeout(super::WAIT, self.client.request(req))
            .await
            .expect("answer in time")
            .expect("response");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(super::WAIT, resp.into_body().collect())
            .await
            .expect("body in time")
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub fn request(&self, path: &str) -> http::request::Builder {
        Request::builder()
            .uri(format!("http://{}{path}", self.addr))
            .header("host", "reviews:9080")
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.request(path).body(Full::new(Bytes::new())).unwrap())
            .await
    }

    pub fn metrics(&self) -> String {
        let mut s = String::new();
        self.metrics.render(&mut s);
        s
    }

    /// The value of one rendered series, 0 when absent.
    pub fn metric(&self, series: &str) -> u64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A TCP server that answers every connection with `name` once it has read a byte, then closes.
pub async fn tcp_named(name: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                if stream.read(&mut byte).await.is_ok() {
                    let _ = stream.write_all(name.as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    addr
}
