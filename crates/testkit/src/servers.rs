//! Test servers on loopback: an HTTP echo (HTTP/1.1, h2c and WebSocket on one port) and a TCP
//! echo that honours half-close.
//!
//! Each server runs on its own thread with its own tokio runtime, so tests can be plain
//! synchronous functions that block on external clients (curl, h2load) without starving the
//! server. The `serve_*` functions are the servers themselves; the `trellis-testkit-echo` binary
//! runs the same functions inside a pod's network namespace.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

/// Size of the chunks `/bytes/N` streams.
const CHUNK: usize = 64 * 1024;

/// What an echo server has seen, shared with the test.
#[derive(Debug, Default)]
pub struct EchoStats {
    pub requests: AtomicU64,
    /// Request body bytes received over all requests (HTTP), or bytes echoed (TCP).
    pub bytes: AtomicU64,
    pub connections: AtomicU64,
    pub websocket_messages: AtomicU64,
}

/// The JSON the HTTP echo answers with (for any path but `/status/*` and `/bytes/*`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EchoReply {
    pub method: String,
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`: the version between the last hop and the server.
    pub version: String,
    /// Every request header (names lower-case, repeated values joined with `, `).
    pub headers: BTreeMap<String, String>,
    pub body_len: u64,
}

type Body = BoxBody<Bytes, Infallible>;

/// Serves the HTTP echo on `listener` until `shutdown` is cancelled.
///
/// - `GET /status/CODE` answers with that status.
/// - `GET /bytes/N` streams N bytes of `x`.
/// - A request with `Upgrade: websocket` becomes a WebSocket echo (text and binary).
/// - Anything else: the request body is read to the end in a stream (never buffered, so a
///   100 MiB upload costs no memory) and an [`EchoReply`] is returned.
pub async fn serve_http(listener: TcpListener, stats: Arc<EchoStats>, shutdown: CancellationToken) {
    accept_each(
        listener,
        stats,
        shutdown,
        "http echo",
        |stream, stats| async move {
            let service = hyper::service::service_fn(move |req| handle(req, stats.clone()));
            let builder = auto::Builder::new(TokioExecutor::new());
            // Errors here are the client's doing (reset, bad request); nothing to act on.
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        },
    )
    .await;
}

/// Accepts on `listener` until `shutdown` is cancelled, counting each connection in `stats`
/// and serving it with `serve` on a task of its own; `what` names the server in accept errors.
async fn accept_each<F, Fut>(
    listener: TcpListener,
    stats: Arc<EchoStats>,
    shutdown: CancellationToken,
    what: &str,
    serve: F,
) where
    F: Fn(TcpStream, Arc<EchoStats>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors and the like: back off a little rather than spin.
                    eprintln!("{what}: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(stream, stats.clone()));
    }
}

async fn handle(
    req: Request<Incoming>,
    stats: Arc<EchoStats>,
) -> Result<Response<Body>, Infallible> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    if is_websocket(&req) {
        return Ok(upgrade_websocket(req, stats));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok());
        let status = status.unwrap_or(StatusCode::BAD_REQUEST);
        return Ok(response(
            status,
            "text/plain",
            Bytes::from(format!("status {status}\n")),
        ));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let Ok(n) = n.parse::<u64>() else {
            return Ok(response(
                StatusCode::BAD_REQUEST,
                "text/plain",
                Bytes::from("bad size\n"),
            ));
        };
        return Ok(stream_bytes(n));
    }

    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let mut body = req.into_body();
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_len += data.len() as u64;
                }
            }
            Err(e) => {
                let msg = format!("reading body failed after {body_len} bytes: {e}\n");
                return Ok(response(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    Bytes::from(msg),
                ));
            }
        }
    }
    stats.bytes.fetch_add(body_len, Ordering::Relaxed);
    let reply = EchoReply {
        method,
        path,
        version,
        headers,
        body_len,
    };
    let json = serde_json::to_vec(&reply).unwrap_or_default();
    Ok(response(
        StatusCode::OK,
        "application/json",
        Bytes::from(json),
    ))
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

fn stream_bytes(n: u64) -> Response<Body> {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let full = n / CHUNK as u64;
    let tail = (n % CHUNK as u64) as usize;
    let frames = (0..full)
        .map(move |_| chunk.clone())
        .chain((tail > 0).then(|| Bytes::from(vec![b'x'; tail])))
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let mut resp = Response::new(http_body_util::BodyExt::boxed(body));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(n));
    resp
}

fn is_websocket<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn upgrade_websocket(mut req: Request<Incoming>, stats: Arc<EchoStats>) -> Response<Body> {
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return response(
            StatusCode::BAD_REQUEST,
            "text/plain",
            Bytes::from("no key\n"),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        // Bounded by the client: ends when it closes or the connection drops.
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                stats.websocket_messages.fetch_add(1, Ordering::Relaxed);
                if ws.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(accept) = header::HeaderValue::from_str(&key) {
        h.insert("sec-websocket-accept", accept);
    }
    resp
}

/// Serves the TCP echo on `listener` until `shutdown` is cancelled: every byte read is written
/// back, and when the client half-closes (EOF) the server half-closes its side after the last
/// byte, so the client can read the whole echo and then see EOF.
pub async fn serve_tcp(listener: TcpListener, stats: Arc<EchoStats>, shutdown: CancellationToken) {
    accept_each(
        listener,
        stats,
        shutdown,
        "tcp echo",
        |stream, stats| async move {
            let (mut rd, mut wr) = tokio::io::split(stream);
            if let Ok(n) = tokio::io::copy(&mut rd, &mut wr).await {
                stats.bytes.fetch_add(n, Ordering::Relaxed);
                let _ = wr.shutdown().await;
            }
        },
    )
    .await;
}

/// A server running on its own thread and runtime; stopped when dropped.
#[derive(Debug)]
struct Background {
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    fn start<F, Fut>(
        listener: std::net::TcpListener,
        stats: Arc<EchoStats>,
        serve: F,
    ) -> std::io::Result<Self>
    where
        F: FnOnce(TcpListener, Arc<EchoStats>, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::Builder::new()
            .name("testkit-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, stats, token).await,
                        Err(e) => eprintln!("test server: cannot register listener: {e}"),
                    }
                });
                // Open connections (a stuck client) must not keep the test waiting.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Self {
            shutdown,
            thread: Some(thread),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The HTTP echo ([`serve_http`]) on 127.0.0.1, on its own thread.
#[derive(Debug)]
pub struct HttpEcho {
    pub addr: SocketAddr,
    pub stats: Arc<EchoStats>,
    _server: Background,
}

impl HttpEcho {
    /// Starts on 127.0.0.1 and a free port.
    pub fn start() -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(EchoStats::default());
        let server = Background::start(listener, stats.clone(), serve_http)?;
        Ok(Self {
            addr,
            stats,
            _server: server,
        })
    }

    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }
}

/// The TCP echo ([`serve_tcp`]) on 127.0.0.1, on its own thread.
#[derive(Debug)]
pub struct TcpEcho {
    pub addr: SocketAddr,
    pub stats: Arc<EchoStats>,
    _server: Background,
}

impl TcpEcho {
    pub fn start() -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(EchoStats::default());
        let server = Background::start(listener, stats.clone(), serve_tcp)?;
        Ok(Self {
            addr,
            stats,
            _server: server,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.stats.bytes.load(Ordering::Relaxed)
    }
}

/// Sends `payload` over a plain TCP connection to `addr`, half-closes, and returns everything
/// read until the peer closes. Writing runs on its own thread so a payload larger than the
/// socket buffers cannot deadlock against the echo.
pub fn tcp_roundtrip(
    addr: SocketAddr,
    payload: Vec<u8>,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Read as _, Write as _};
    let stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut writer = stream.try_clone()?;
    let write = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&payload)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut echoed = Vec::new();
    (&stream).read_to_end(&mut echoed)?;
    write
        .join()
        .map_err(|_| std::io::Error::other("writer thread panicked"))??;
    Ok(echoed)
}

/// Opens a WebSocket to `ws://authority/path` over a TCP connection to `connect_to` (a proxy's
/// listener), sends each message as text and returns the echoes, then closes cleanly.
pub fn websocket_roundtrip(
    connect_to: SocketAddr,
    authority: &str,
    messages: &[&str],
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("ws://{authority}/ws");
    let messages: Vec<String> = messages.iter().map(|m| m.to_string()).collect();
    runtime.block_on(async move {
        tokio::time::timeout(timeout, async move {
            let tcp = TcpStream::connect(connect_to)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (mut ws, resp) = tokio_tungstenite::client_async(url.as_str(), tcp)
                .await
                .map_err(|e| format!("websocket handshake: {e}"))?;
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                return Err(format!("handshake answered {}", resp.status()));
            }
            let mut echoed = Vec::new();
            for m in messages {
                ws.send(m.into()).await.map_err(|e| format!("send: {e}"))?;
                let reply = ws
                    .next()
                    .await
                    .ok_or("connection closed before the echo")?
                    .map_err(|e| format!("receive: {e}"))?;
                echoed.push(reply.into_text().map_err(|e| e.to_string())?.to_string());
            }
            ws.close(None).await.map_err(|e| format!("close: {e}"))?;
            Ok(echoed)
        })
        .await
        .map_err(|_| format!("websocket round trip took longer than {timeout:?}"))?
    })
}
