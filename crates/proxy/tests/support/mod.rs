//! Loopback test servers and clients for the proxy's in-process integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use trellis_proxy::{Proxy, ProxyConfig};

pub mod routed;

/// Upper bound for any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// An application server speaking HTTP/1.1 and HTTP/2 (prior knowledge) on loopback.
///
/// - `/echo`: streams the request body back; `x-seen-version`, `x-seen-headers` describe the
///   request as the app saw it.
/// - `/slow`: reports on `slow_started`, then answers after 700 ms.
/// - `/trailers`: a body followed by `grpc-status: 0` trailers.
pub struct App {
    pub addr: SocketAddr,
    pub slow_started: mpsc::UnboundedReceiver<()>,
}

pub async fn start_app() -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let tx = Arc::new(tx);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, tx.clone()));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    App {
        addr,
        slow_started: rx,
    }
}

async fn handle(
    req: Request<Incoming>,
    slow: Arc<mpsc::UnboundedSender<()>>,
) -> Result<Response<Body>, Infallible> {
    let version = format!("{:?}", req.version());
    let names: Vec<String> = req
        .headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .collect();
    let mut resp = match req.uri().path() {
        "/echo" => Response::new(req.into_body().boxed()),
        "/slow" => {
            let _ = slow.send(());
            tokio::time::sleep(Duration::from_millis(700)).await;
            Response::new(full("slow done"))
        }
        "/trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let frames = vec![
                Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"data"))),
                Ok(Frame::trailers(trailers)),
            ];
            Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        }
        _ => Response::new(full("ok")),
    };
    resp.headers_mut()
        .insert("x-seen-version", HeaderValue::from_str(&version).unwrap());
    resp.headers_mut().insert(
        "x-seen-headers",
        HeaderValue::from_str(&names.join(",")).unwrap(),
    );
    Ok(resp)
}

/// A TCP server that reads until EOF, answers `echo:` + what it read, then closes.
pub async fn start_half_close_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if stream.read_to_end(&mut buf).await.is_ok() {
                    let _ = stream.write_all(b"echo:").await;
                    let _ = stream.write_all(&buf).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    addr
}

/// A raw HTTP/1.1 server that accepts `Upgrade: echo` with 101 and then echoes bytes.
pub async fn start_upgrade_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                let lower = head.to_ascii_lowercase();
                if !lower.contains("upgrade: echo") || !lower.contains("connection: upgrade") {
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
                    .await;
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Reads an HTTP head (through the blank line), one byte at a time so nothing after it is lost.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match tokio::time::timeout(WAIT, stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Starts a standalone proxy whose inbound forwards to `app`; `tweak` adjusts the config.
pub async fn start_proxy(app: SocketAddr, tweak: impl FnOnce(&mut ProxyConfig)) -> Proxy {
    let mut config = ProxyConfig::local(Some(app));
    config.drain_timeout = Duration::from_secs(5);
    tweak(&mut config);
    Proxy::start(config).await.unwrap()
}

/// An HTTP/1.1 client connection (one TCP connection, so keep-alive is observable).
pub async fn http1_conn(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// An HTTP/2 prior-knowledge client connection.
pub async fn http2_conn(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// `GET /` with `host` on an HTTP/1.1 connection; the answer must come within [`WAIT`].
pub async fn get_root(
    conn: &mut hyper::client::conn::http1::SendRequest<Body>,
    host: &str,
) -> Response<Incoming> {
    let req = Request::get("/")
        .header("host", host)
        .body(full(""))
        .unwrap();
    tokio::time::timeout(WAIT, conn.send_request(req))
        .await
        .unwrap()
        .unwrap()
}

pub async fn body_string(body: Incoming) -> String {
    let bytes = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A plain GET to the admin server.
pub async fn admin(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut sender = http1_conn(addr).await;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(full(""))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    (status, body_string(resp.into_body()).await)
}

/// Polls `check` every 20 ms until it holds, failing after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A server-first TCP server: sends a banner on connect, then echoes one line.
pub async fn start_banner_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = stream.write_all(b"220 banner\r\n").await;
                let mut buf = [0u8; 64];
                if let Ok(n) = stream.read(&mut buf).await {
                    let _ = stream.write_all(&buf[..n]).await;
                }
            });
        }
    });
    addr
}

/// `trellis_limit_rejected_total{direction="inbound",limit=<limit>}` from the admin server's
/// `/metrics`; panics with the page when the series is missing.
pub async fn inbound_limit_rejected(admin_addr: SocketAddr, limit: &str) -> u64 {
    let series = format!("trellis_limit_rejected_total{{direction=\"inbound\",limit=\"{limit}\"}}");
    let (_, text) = admin(admin_addr, "GET", "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

/// A connection from `source` (a loopback address other than 127.0.0.1 plays another peer)
/// to `addr`.
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .unwrap()
        .unwrap()
}
