//! Upstream HTTP connections: a pooled HTTP/1.1 client, one multiplexed HTTP/2 connection per
//! endpoint, and one-off HTTP/1.1 connections for upgrades.
//!
//! Pools are keyed by the endpoint's socket address, never by the request's authority, so two
//! endpoints of one service never share a connection. A meshed endpoint with an identity is
//! dialled over mTLS ([`crate::tls`]) when this proxy holds a certificate and the backend's
//! policy does not disable it; its HTTP/2 connection is pooled apart from a plaintext one. A
//! backend with DestinationRule `tls.mode: SIMPLE` gets TLS originated by this proxy
//! ([`originate`]) on its own HTTP/1.1 pool and its own HTTP/2 connections. This module sends
//! what it is given; the header and version rules live in [`crate::http`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use trellis_identity::tls::{HandshakeError, MeshAlpn};

use crate::tls::MeshIdentity;
use crate::transport::{CONNECT_TIMEOUT, connect, connect_within};

pub mod h1codec;
mod h1direct;
mod h1pool;
pub mod h2_upgrade;
mod h2conn;
mod originate;
use h1pool::{H1Pool, MeshHop};
pub use h2conn::H2Body;
use h2conn::H2Sender;
pub use originate::{Alpn, Origination};

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
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("mTLS with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        source: HandshakeError,
    },
    #[error("TLS origination to {addr} failed: {reason}")]
    Originate { addr: SocketAddr, reason: String },
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
        matches!(
            self,
            Self::Connect { .. }
                | Self::Handshake { .. }
                | Self::Tls { .. }
                | Self::Originate { .. }
        )
    }

    /// Whether an HTTP/2 peer refused the stream before processing it.
    pub fn is_refused_stream(&self) -> bool {
        let Self::Request { source, .. } = self else {
            return false;
        };
        // The HTTP/2 client is h2 itself (client/h2conn.rs), so its reason is typed; the walk
        // also finds an h2 error under another error. Only failed requests pay for it.
        let mut err: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = err {
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                // Only the peer can say it did not process a stream, and only two frames say
                // so: RST_STREAM(REFUSED_STREAM), and a graceful GOAWAY (NO_ERROR), which h2
                // hands only to the streams above its last stream id, the ones the peer did
                // not process (RFC 9113 §6.8, §8.7). A RST_STREAM(NO_ERROR) ends a stream the
                // peer may have acted on, and a reset or GOAWAY made on this side (or a bare
                // reason) says nothing about what the peer did.
                let refused = h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM);
                let graceful = h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR);
                return h2.is_remote() && (refused || graceful);
            }
            err = e.source();
        }
        false
    }

    /// The `trellis-error` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } | Self::Handshake { .. } => "upstream connect failed",
            Self::Tls { .. } => "upstream mTLS failed",
            Self::Originate { .. } => "upstream TLS origination failed",
            Self::Request { .. } => "upstream reset",
            Self::Uri { .. } => "bad request target",
        }
    }
}

/// The body of every request sent upstream: the downstream body as it streams, or a buffered
/// copy when the request may be retried or mirrored.
pub type UpBody = BoxBody<Bytes, UpBodyError>;

/// Why a request body failed on its way upstream. hyper resets the upstream request on any
/// body error (HTTP/1: the connection is closed; HTTP/2: the stream is reset), whatever it is.
#[derive(Debug, thiserror::Error)]
pub enum UpBodyError {
    /// Reading the downstream body failed (the client reset, or sent a malformed body).
    #[error(transparent)]
    Downstream(#[from] hyper::Error),
    /// The proxy cut the body at `--max-request-body-size` ([`crate::limits::body`]).
    #[error("request body over --max-request-body-size ({max} bytes)")]
    TooLarge { max: u64 },
}

/// A downstream request body as an [`UpBody`]: the one box it always had, no other allocation.
pub fn up_body(body: Incoming) -> UpBody {
    use http_body_util::BodyExt;
    body.map_err(UpBodyError::Downstream).boxed()
}

/// An empty request body, for a request that has none (no allocation: the box of a
/// zero-sized body).
pub fn empty_up_body() -> UpBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

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
    http1: Option<Arc<H1Pool>>,
    connect_timeout: Option<Duration>,
    max_requests_per_connection: Option<u32>,
    /// DestinationRule `tls.mode: DISABLE` (or SIMPLE): meshed hops of this backend stay
    /// plaintext (no mesh mTLS).
    pub plaintext: bool,
    /// DestinationRule `tls.mode: SIMPLE`: this proxy opens TLS to every endpoint.
    origination: Option<Arc<Origination>>,
    /// DestinationRule `h2UpgradePolicy`: `Some(false)` (DO_NOT_UPGRADE) keeps HTTP/1.1
    /// requests to meshed endpoints HTTP/1.1 between the proxies (over pooled mTLS
    /// connections) instead of riding the multiplexed HTTP/2 hop; `Some(true)` (UPGRADE)
    /// upgrades them; `None` follows the mesh-wide default ([`h2_upgrade::MeshH2Upgrade`]).
    pub h2_upgrade: Option<bool>,
}

impl PoolOptions {
    pub fn new(
        connect_timeout: Option<Duration>,
        idle_timeout: Option<Duration>,
        max_requests_per_connection: Option<u32>,
        origination: Option<Arc<Origination>>,
    ) -> Self {
        let max_requests_per_connection = max_requests_per_connection.filter(|n| *n > 0);
        if connect_timeout.is_none() && idle_timeout.is_none() && origination.is_none() {
            return Self {
                max_requests_per_connection,
                ..Self::default()
            };
        }
        Self {
            // Originated TLS connections never go into the shared pool (mesh mTLS ones do,
            // marked with the identity they proved).
            http1: Some(H1Pool::new(
                connect_timeout.unwrap_or(CONNECT_TIMEOUT),
                idle_timeout.unwrap_or(IDLE_TIMEOUT),
                origination.clone(),
            )),
            connect_timeout,
            max_requests_per_connection,
            plaintext: false,
            origination,
            h2_upgrade: None,
        }
    }

    /// The backend's TLS origination, if its policy asks for one.
    pub fn origination(&self) -> Option<&Arc<Origination>> {
        self.origination.as_ref()
    }
}

/// What kind of HTTP/2 connection an endpoint's pooled one is: connections of different kinds
/// to one address are never shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Plain,
    Mtls,
    Originated,
}

impl Kind {
    /// The kind of connection `opts` and the endpoint's mTLS `peer` ask for: originated TLS
    /// wins over mesh mTLS.
    fn of(peer: Option<&str>, opts: &PoolOptions) -> Self {
        match (peer, opts.origination.is_some()) {
            (_, true) => Self::Originated,
            (Some(_), false) => Self::Mtls,
            (None, false) => Self::Plain,
        }
    }
}

/// One multiplexed HTTP/2 connection and how many requests it has carried.
#[derive(Debug)]
struct Pooled {
    sender: H2Sender,
    used: u32,
    /// The SNI it was opened with: connections through one east-west gateway (one address)
    /// to different services must not be shared, since the gateway routed each by its SNI.
    sni: Option<Box<str>>,
}

/// An HTTP/2 pool slot: the endpoint, the connection's kind and a hash of its SNI (0 without),
/// so that a lookup allocates nothing; a hit is checked against the SNI itself.
type PoolKey = (SocketAddr, Kind, u64);

fn pool_key(addr: SocketAddr, kind: Kind, sni: Option<&str>) -> PoolKey {
    use std::hash::{Hash, Hasher};
    let hash = sni.map_or(0, |name| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        h.finish() | 1
    });
    (addr, kind, hash)
}

/// All upstream clients of one proxy; shared by every listener.
#[derive(Debug)]
pub struct Upstreams {
    http1: Arc<H1Pool>,
    /// Keyed by endpoint, the connection's kind and its SNI.
    http2: Mutex<HashMap<PoolKey, Pooled>>,
    identity: Arc<MeshIdentity>,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstreams {
    pub fn new() -> Self {
        Self::with_identity(Arc::new(MeshIdentity::disabled()))
    }

    /// Upstream clients that dial meshed peers over mTLS with `identity`'s certificate.
    pub fn with_identity(identity: Arc<MeshIdentity>) -> Self {
        Self {
            http1: H1Pool::new(CONNECT_TIMEOUT, IDLE_TIMEOUT, None),
            http2: Mutex::new(HashMap::new()),
            identity,
        }
    }

    /// The identity a hop must prove, when this hop goes over mTLS: a meshed peer with an
    /// identity, a certificate in hand, and no DISABLE policy.
    fn mtls_peer<'a>(&self, peer: Option<&'a str>, opts: &PoolOptions) -> Option<&'a str> {
        peer.filter(|_| !opts.plaintext && self.identity.is_certified())
    }

    /// Sends an HTTP/1.1 request to `addr` over a pooled connection (the pool is keyed by
    /// the endpoint, while the Host header keeps the application's authority).
    ///
    /// `peer` is the SPIFFE ID a meshed endpoint must prove (a meshed hop that stays HTTP/1.1,
    /// see [`PoolOptions::h2_upgrade`]); with it the connection is mTLS, sending `sni`.
    pub async fn send_http1(
        &self,
        addr: SocketAddr,
        mut req: Request<UpBody>,
        opts: &PoolOptions,
        peer: Option<&str>,
        sni: Option<&str>,
    ) -> Result<Response<RespBody>, UpstreamError> {
        if opts.max_requests_per_connection == Some(1) {
            req.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        let mesh = self.mtls_peer(peer, opts).map(|peer| MeshHop {
            upstreams: self,
            peer,
            sni,
        });
        opts.http1
            .as_ref()
            .unwrap_or(&self.http1)
            .send(addr, req, mesh)
            .await
    }

    /// Sends an HTTP/2 request (absolute URI) to `addr`, over the endpoint's one multiplexed
    /// connection, dialling it first if there is none or it has closed.
    ///
    /// `peer` is the SPIFFE ID a meshed endpoint must prove; with it the connection is mTLS.
    /// `sni` is sent in that handshake (a remote cluster's endpoint, see docs/multicluster.md).
    pub async fn send_http2(
        &self,
        addr: SocketAddr,
        req: Request<UpBody>,
        opts: &PoolOptions,
        peer: Option<&str>,
        sni: Option<&str>,
    ) -> Result<Response<H2Body>, UpstreamError> {
        let connect_timeout = opts.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
        let max = opts.max_requests_per_connection;
        let peer = self.mtls_peer(peer, opts);
        let sni = sni.filter(|_| peer.is_some());
        let key = pool_key(addr, Kind::of(peer, opts), sni);
        let dial = Dial {
            addr,
            connect_timeout,
            max,
            peer,
            sni,
        };
        let mut sender = match self.cached_http2(key, max, sni) {
            Some(mut cached) => match cached.ready().await {
                Ok(()) => cached,
                // The pooled connection died while idle (peer restarted, GOAWAY). Nothing was
                // sent on it, so dialling again is safe.
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "pooled HTTP/2 connection unusable; redialling");
                    self.forget_http2(key);
                    Box::pin(self.dial_http2(dial, opts)).await?
                }
            },
            // Boxed: dialling (connect, the mTLS handshake) happens once per connection, and
            // inline its state (about 7 KiB) would be in every request's future, which the
            // server moves and copies per request.
            None => Box::pin(self.dial_http2(dial, opts)).await?,
        };
        // A connection that is not ready has closed (a GOAWAY, a drain) before this request
        // went out on it: nothing was sent, so the attempt fails as a connect failure does.
        if let Err(e) = sender.ready().await {
            self.forget_http2(key);
            return Err(UpstreamError::Handshake {
                addr,
                source: Box::new(e),
            });
        }
        // h2 takes the request even when the stream cannot open (the connection failed
        // since `ready`); then nothing was sent, and the error says so to the retry policy
        // (a GOAWAY or a refused stream is retryable, see `is_refused_stream`).
        sender.send(addr, req).await
    }

    /// The endpoint's pooled connection, counting one more request on it; a connection that
    /// reaches `max` requests leaves the pool (it closes once its streams are done).
    fn cached_http2(&self, addr: PoolKey, max: Option<u32>, sni: Option<&str>) -> Option<H2Sender> {
        // A poisoned lock only means another task panicked mid-insert; the map is still valid.
        let mut map = self.http2.lock().unwrap_or_else(|p| p.into_inner());
        let pooled = map.get_mut(&addr)?;
        if pooled.sni.as_deref() != sni {
            // Another name with the same hash: not this connection (the dial replaces it).
            return None;
        }
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

    fn forget_http2(&self, addr: PoolKey) {
        let mut map = self.http2.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&addr);
    }

    async fn dial_http2(
        &self,
        dial: Dial<'_>,
        opts: &PoolOptions,
    ) -> Result<H2Sender, UpstreamError> {
        let Dial {
            addr,
            connect_timeout,
            max,
            peer,
            sni,
        } = dial;
        let stream = connect_within(addr, connect_timeout)
            .await
            .map_err(|source| UpstreamError::Connect { addr, source })?;
        let sender = match (peer, &opts.origination) {
            (_, Some(origination)) => {
                let tls = origination.connect(addr, stream, Alpn::H2).await?;
                h2conn::handshake(tls, addr).await?
            }
            (Some(peer), None) => {
                let tls = self
                    .tls_connect(stream, addr, MeshAlpn::H2, peer, sni)
                    .await?;
                h2conn::handshake(tls, addr).await?
            }
            (None, None) => h2conn::handshake(stream, addr).await?,
        };
        // Two tasks may dial at once; the later one wins the slot and the other connection
        // closes when its last request is done. Rare, and cheaper than a lock across an await.
        if max != Some(1) {
            let mut map = self.http2.lock().unwrap_or_else(|p| p.into_inner());
            map.insert(
                pool_key(addr, Kind::of(peer, opts), sni),
                Pooled {
                    sender: sender.clone(),
                    used: 1,
                    sni: sni.map(Box::from),
                },
            );
        }
        Ok(sender)
    }

    /// The client handshake with a meshed peer that must prove `peer`, sending `sni` when
    /// the peer is behind another cluster's east-west gateway.
    pub async fn tls_connect<I>(
        &self,
        io: I,
        addr: SocketAddr,
        alpn: MeshAlpn,
        peer: &str,
        sni: Option<&str>,
    ) -> Result<trellis_identity::tls::ClientStream<I>, UpstreamError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match self.identity.connect_with_sni(io, alpn, peer, sni).await {
            Some(Ok(tls)) => Ok(tls),
            Some(Err(source)) => Err(UpstreamError::Tls { addr, source }),
            // Certificates are replaced, never removed: only a caller that skipped
            // `mtls_peer` gets here.
            None => Err(UpstreamError::Tls {
                addr,
                source: HandshakeError::NoIdentity,
            }),
        }
    }

    /// Whether opaque TCP to a meshed peer proving `peer` goes over mTLS (see `mtls_peer`).
    pub fn mtls_for<'a>(&self, peer: Option<&'a str>, plaintext: bool) -> Option<&'a str> {
        peer.filter(|_| !plaintext && self.identity.is_certified())
    }

    /// Sends an upgrade request on a fresh HTTP/1.1 connection that supports the switch; the
    /// connection is then owned by the upgraded stream, so it never returns to a pool. A
    /// meshed `peer` gets mTLS with ALPN `http/1.1`.
    pub async fn send_upgrade(
        &self,
        addr: SocketAddr,
        req: Request<UpBody>,
        peer: Option<&str>,
        sni: Option<&str>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let stream = connect(addr)
            .await
            .map_err(|source| UpstreamError::Connect { addr, source })?;
        let mut sender = match self.mtls_peer(peer, &PoolOptions::default()) {
            Some(peer) => {
                let tls = self
                    .tls_connect(stream, addr, MeshAlpn::Http1, peer, sni)
                    .await?;
                h1_upgrade_handshake(tls, addr).await?
            }
            None => h1_upgrade_handshake(stream, addr).await?,
        };
        sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Request {
                addr,
                source: Box::new(e),
            })
    }
}

/// Where and how one HTTP/2 connection is dialled.
#[derive(Clone, Copy, Debug)]
struct Dial<'a> {
    addr: SocketAddr,
    connect_timeout: Duration,
    max: Option<u32>,
    peer: Option<&'a str>,
    sni: Option<&'a str>,
}

async fn h1_upgrade_handshake<I>(
    io: I,
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<UpBody>, UpstreamError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|source| UpstreamError::Handshake {
            addr,
            source: Box::new(source),
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream upgrade connection ended");
        }
    });
    Ok(sender)
}

/// An upstream response's body: hyper's for HTTP/1.1, h2's stream for HTTP/2.
#[derive(Debug)]
pub enum RespBody {
    Http1(Incoming),
    /// From the direct HTTP/1.1 path ([`h1direct`]).
    Direct(h1direct::DirectBody),
    Http2(H2Body),
}

impl http_body::Body for RespBody {
    type Data = Bytes;
    type Error = crate::http::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        // Both are Unpin.
        match self.get_mut() {
            Self::Http1(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
            Self::Direct(b) => std::pin::Pin::new(b).poll_frame(cx),
            Self::Http2(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Http1(b) => b.is_end_stream(),
            Self::Direct(b) => b.is_end_stream(),
            Self::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Http1(b) => b.size_hint(),
            Self::Direct(b) => b.size_hint(),
            Self::Http2(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use trellis_testkit::attacks::h2frame;

    use super::{UpstreamError, h2conn};

    fn request_error(source: Box<dyn std::error::Error + Send + Sync>) -> UpstreamError {
        UpstreamError::Request {
            addr: "127.0.0.1:1".parse().expect("an address"),
            source,
        }
    }

    #[test]
    fn bare_reasons_and_io_errors_are_not_refusals() {
        // Made on this side, not received from the peer: they say nothing of what it processed.
        let refused = request_error(Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM)));
        assert!(!refused.is_refused_stream());
        let no_error = request_error(Box::new(h2::Error::from(h2::Reason::NO_ERROR)));
        assert!(!no_error.is_refused_stream());
        let protocol = request_error(Box::new(h2::Error::from(h2::Reason::PROTOCOL_ERROR)));
        assert!(!protocol.is_refused_stream());
        let reset = request_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(!reset.is_refused_stream());
    }

    /// Frames the peer reads from one client at most (the client sends about five).
    const MAX_FRAMES: usize = 64;

    /// What the loopback HTTP/2 peer sends when a request's HEADERS arrive.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        /// GOAWAY with this last stream id and error code.
        GoAway {
            last_stream_id: u32,
            code: h2::Reason,
        },
        /// RST_STREAM on the request's stream with this error code.
        Reset(h2::Reason),
    }

    /// An HTTP/2 peer on loopback for one connection, written frame by frame: h2's server
    /// cannot send a GOAWAY whose last stream id is below a stream it has read. It answers a
    /// request's HEADERS with `answer`, then, with `hang_up`, closes the connection; without,
    /// keeps reading until the client closes, so the client fails on the frame alone.
    async fn peer(answer: Answer, hang_up: bool) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut preface = [0u8; 24];
            if s.read_exact(&mut preface).await.is_err() || preface[..] != *h2frame::PREFACE {
                return;
            }
            let mut settings = Vec::new();
            h2frame::settings(&mut settings);
            if s.write_all(&settings).await.is_err() {
                return;
            }
            let mut head = [0u8; 9];
            for _ in 0..MAX_FRAMES {
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]);
                let mut payload = vec![0u8; len as usize];
                if s.read_exact(&mut payload).await.is_err() {
                    return;
                }
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let mut reply = Vec::new();
                match (head[3], answer) {
                    (h2frame::SETTINGS, _) if head[4] & h2frame::ACK == 0 => {
                        h2frame::settings_ack(&mut reply)
                    }
                    (
                        h2frame::HEADERS,
                        Answer::GoAway {
                            last_stream_id,
                            code,
                        },
                    ) => h2frame::goaway(&mut reply, last_stream_id, code.into()),
                    (h2frame::HEADERS, Answer::Reset(code)) => {
                        h2frame::reset(&mut reply, stream, code.into())
                    }
                    _ => continue,
                }
                if s.write_all(&reply).await.is_err() || (head[3] == h2frame::HEADERS && hang_up) {
                    return;
                }
            }
        });
        addr
    }

    /// A GET sent to `addr` on the proxy's own HTTP/2 client (client/h2conn.rs), as a forward
    /// attempt sends it; the error it fails with is what the retry policy classifies.
    async fn failed_get(addr: SocketAddr) -> UpstreamError {
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut sender = h2conn::handshake(tcp, addr).await.unwrap();
            sender.ready().await.unwrap();
            let body = super::empty_up_body();
            let req = http::Request::get(format!("http://{addr}/"))
                .body(body)
                .unwrap();
            match sender.send(addr, req).await {
                Ok(resp) => panic!("the peer answered {}", resp.status()),
                Err(e) => e,
            }
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .expect("the request failed within 5 s")
    }

    #[tokio::test]
    async fn a_graceful_goaway_below_the_request_is_a_refusal() {
        let addr = peer(
            Answer::GoAway {
                last_stream_id: 0,
                code: h2::Reason::NO_ERROR,
            },
            false,
        )
        .await;
        let e = failed_get(addr).await;
        assert!(e.is_refused_stream(), "{e}");
        assert!(!e.is_connect(), "{e}");
    }

    #[tokio::test]
    async fn a_refused_stream_is_a_refusal() {
        let addr = peer(Answer::Reset(h2::Reason::REFUSED_STREAM), false).await;
        let e = failed_get(addr).await;
        assert!(e.is_refused_stream(), "{e}");
        assert!(!e.is_connect(), "{e}");
    }

    #[tokio::test]
    async fn a_stream_reset_with_no_error_is_not_a_refusal() {
        // The peer may have acted on the request before it stopped the stream.
        let addr = peer(Answer::Reset(h2::Reason::NO_ERROR), false).await;
        let e = failed_get(addr).await;
        assert!(!e.is_refused_stream(), "{e}");
        assert!(!e.is_connect(), "{e}");
    }

    #[tokio::test]
    async fn a_graceful_goaway_over_the_request_then_a_hang_up_is_not_a_refusal() {
        // The GOAWAY's last stream id covers the request: the peer may have processed it.
        let addr = peer(
            Answer::GoAway {
                last_stream_id: 1,
                code: h2::Reason::NO_ERROR,
            },
            true,
        )
        .await;
        let e = failed_get(addr).await;
        assert!(!e.is_refused_stream(), "{e}");
        assert!(!e.is_connect(), "{e}");
    }
}
