//! Upstream HTTP connections: a pooled HTTP/1.1 client, one multiplexed HTTP/2 connection per
//! endpoint, and one-off HTTP/1.1 connections for upgrades.
//!
//! Pools are keyed by the endpoint's socket address, never by the request's authority, so two
//! endpoints of one service never share a connection. This module sends what it is given; the
//! header and version rules live in [`crate::http`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::transport::{CONNECT_TIMEOUT, connect, connect_within};

/// Why an upstream exchange failed; every kind is a 502 at the edge.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    #[error("request to {addr} failed: {source}")]
    Request {
        addr: SocketAddr,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid request target for {addr}")]
    Uri { addr: SocketAddr },
}

impl UpstreamError {
    /// Whether the request was certainly not sent (no connection): safe to retry anywhere.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Handshake { .. })
    }

    /// Whether an HTTP/2 peer refused the stream before processing it.
    pub fn is_refused_stream(&self) -> bool {
        let Self::Request { source, .. } = self else {
            return false;
        };
        // hyper does not expose the h2 reason; its text is stable ("refused stream before
        // processing any application logic"). Only failed requests pay for this walk.
        let mut err: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = err {
            if e.to_string().contains("refused stream") {
                return true;
            }
            err = e.source();
        }
        false
    }

    /// The `trellis-error` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } | Self::Handshake { .. } => "upstream connect failed",
            Self::Request { .. } => "upstream reset",
            Self::Uri { .. } => "bad request target",
        }
    }
}

/// The body of every request sent upstream: the downstream body as it streams, or a buffered
/// copy when the request may be retried or mirrored.
pub type UpBody = BoxBody<Bytes, hyper::Error>;

/// How long an idle pooled HTTP/1.1 connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A backend's own connection settings (Istio `connectionPool` `connectTimeout` and
/// `idleTimeout`). The default uses the proxy-wide clients; a backend that sets either gets an
/// HTTP/1.1 pool of its own with them, and its HTTP/2 dials use its connect timeout.
///
/// `max_requests_per_connection` retires an HTTP/2 connection after that many requests (the
/// next request dials a new one), and with 1 sends HTTP/1.1 requests with `Connection: close`;
/// other HTTP/1.1 limits are not applied (the pooled client cannot count per connection).
#[derive(Clone, Debug, Default)]
pub struct PoolOptions {
    http1: Option<Client<HttpConnector, UpBody>>,
    connect_timeout: Option<Duration>,
    max_requests_per_connection: Option<u32>,
}

impl PoolOptions {
    pub fn new(
        connect_timeout: Option<Duration>,
        idle_timeout: Option<Duration>,
        max_requests_per_connection: Option<u32>,
    ) -> Self {
        let max_requests_per_connection = max_requests_per_connection.filter(|n| *n > 0);
        if connect_timeout.is_none() && idle_timeout.is_none() {
            return Self {
                max_requests_per_connection,
                ..Self::default()
            };
        }
        Self {
            http1: Some(http1_client(
                connect_timeout.unwrap_or(CONNECT_TIMEOUT),
                idle_timeout.unwrap_or(IDLE_TIMEOUT),
            )),
            connect_timeout,
            max_requests_per_connection,
        }
    }
}

/// One multiplexed HTTP/2 connection and how many requests it has carried.
#[derive(Debug)]
struct Pooled {
    sender: SendRequest<UpBody>,
    used: u32,
}

fn http1_client(
    connect_timeout: Duration,
    idle_timeout: Duration,
) -> Client<HttpConnector, UpBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// All upstream clients of one proxy; shared by every listener.
#[derive(Debug)]
pub struct Upstreams {
    http1: Client<HttpConnector, UpBody>,
    http2: Mutex<HashMap<SocketAddr, Pooled>>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstreams {
    pub fn new() -> Self {
        Self {
            http1: http1_client(CONNECT_TIMEOUT, IDLE_TIMEOUT),
            http2: Mutex::new(HashMap::new()),
        }
    }

    /// Sends an HTTP/1.1 request (Host already set) to `addr` over a pooled connection.
    pub async fn send_http1(
        &self,
        addr: SocketAddr,
        mut req: Request<UpBody>,
        opts: &PoolOptions,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // The legacy client dials the URI's authority; pointing it at the endpoint makes the
        // endpoint the pool key while the Host header keeps the application's authority.
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri = Uri::builder()
            .scheme("http")
            .authority(addr.to_string())
            .path_and_query(path)
            .build()
            .map_err(|_| UpstreamError::Uri { addr })?;
        *req.uri_mut() = uri;
        if opts.max_requests_per_connection == Some(1) {
            req.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        let client = opts.http1.as_ref().unwrap_or(&self.http1);
        client.request(req).await.map_err(|e| {
            if e.is_connect() {
                UpstreamError::Connect {
                    addr,
                    source: std::io::Error::other(e),
                }
            } else {
                UpstreamError::Request {
                    addr,
                    source: Box::new(e),
                }
            }
        })
    }

    /// Sends an HTTP/2 request (absolute URI) to `addr`, over the endpoint's one multiplexed
    /// connection, dialling it first if there is none or it has closed.
    pub async fn send_http2(
        &self,
        addr: SocketAddr,
        req: Request<UpBody>,
        opts: &PoolOptions,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let connect_timeout = opts.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
        let max = opts.max_requests_per_connection;
        let mut sender = match self.cached_http2(addr, max) {
            Some(mut cached) => match cached.ready().await {
                Ok(()) => cached,
                // The pooled connection died while idle (peer restarted, GOAWAY). Nothing was
                // sent on it, so dialling again is safe.
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "pooled HTTP/2 connection unusable; redialling");
                    self.forget_http2(addr);
                    self.dial_http2(addr, connect_timeout, max).await?
                }
            },
            None => self.dial_http2(addr, connect_timeout, max).await?,
        };
        sender.ready().await.map_err(|e| UpstreamError::Request {
            addr,
            source: Box::new(e),
        })?;
        sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Request {
                addr,
                source: Box::new(e),
            })
    }

    /// The endpoint's pooled connection, counting one more request on it; a connection that
    /// reaches `max` requests leaves the pool (it closes once its streams are done).
    fn cached_http2(&self, addr: SocketAddr, max: Option<u32>) -> Option<SendRequest<UpBody>> {
        // A poisoned lock only means another task panicked mid-insert; the map is still valid.
        let mut map = self.http2.lock().unwrap_or_else(|p| p.into_inner());
        let pooled = map.get_mut(&addr)?;
        if pooled.sender.is_closed() {
            map.remove(&addr);
            return None;
        }
        pooled.used = pooled.used.saturating_add(1);
        let sender = pooled.sender.clone();
        if max.is_some_and(|max| pooled.used >= max) {
            map.remove(&addr);
        }
        Some(sender)
    }

    fn forget_http2(&self, addr: SocketAddr) {
        let mut map = self.http2.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&addr);
    }

    async fn dial_http2(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        max: Option<u32>,
    ) -> Result<SendRequest<UpBody>, UpstreamError> {
        let stream = connect_within(addr, connect_timeout)
            .await
            .map_err(|source| UpstreamError::Connect { addr, source })?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        // Two tasks may dial at once; the later one wins the slot and the other connection
        // closes when its last request is done. Rare, and cheaper than a lock across an await.
        if max != Some(1) {
            let mut map = self.http2.lock().unwrap_or_else(|p| p.into_inner());
            map.insert(
                addr,
                Pooled {
                    sender: sender.clone(),
                    used: 1,
                },
            );
        }
        Ok(sender)
    }

    /// Sends an upgrade request on a fresh HTTP/1.1 connection that supports the switch; the
    /// connection is then owned by the upgraded stream, so it never returns to a pool.
    pub async fn send_upgrade(
        &self,
        addr: SocketAddr,
        req: Request<UpBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let stream = connect(addr)
            .await
            .map_err(|source| UpstreamError::Connect { addr, source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream upgrade connection ended");
            }
        });
        sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Request {
                addr,
                source: Box::new(e),
            })
    }
}
