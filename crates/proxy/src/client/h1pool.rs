//! Pooled HTTP/1.1 connections to upstream endpoints, keyed by socket address.
//!
//! Replaces hyper-util's legacy client on the hot path, which per request rebuilt the URI
//! around a formatted authority, hashed it with SipHash into its pool, and spawned a task
//! to return each connection once its response ended (about a sixth of the proxy's
//! instructions per request). Here a connection stays in its endpoint's list, in place,
//! while in use; a request is handed, under one lock, to the last listed one that hyper
//! reports ready (its previous response has ended), or dials a new one. What the legacy
//! client did for us is kept: origin-form request targets, a Host header when the request
//! has none, TCP_NODELAY and a connect timeout, a request that a reused connection closed
//! before sending is sent again on another, and connections idle for longer than the idle
//! timeout are closed.
//!
//! A bodiless HTTP/1.1 request to a plaintext endpoint does not use hyper's client at all: it
//! takes the direct path ([`super::h1direct`]), whose idle connections this pool also keeps.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use http::header::{HOST, HeaderValue};
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::h1direct::{DirectConn, Failure};
use super::{Alpn, Origination, RespBody, UpBody, UpstreamError, Upstreams, h1codec, h1direct};
use crate::transport::connect_within;
use trellis_identity::tls::MeshAlpn;

/// The most connections kept per endpoint; a connection dialled past it serves its request
/// and closes.
const MAX_PER_ENDPOINT: usize = 1024;

/// What a pooled connection's exchange ends with: the response, or the request back when the
/// connection closed before sending it.
type Sent = Result<Response<Incoming>, TrySendError<Request<UpBody>>>;

/// How many idle direct connections a request tries (each found stale is dropped) before it
/// dials.
const MAX_STALE_TRIES: usize = 4;

/// An idle connection of the direct path and the sweep tick when it was filed.
#[derive(Debug)]
struct Idle {
    conn: DirectConn,
    used: u64,
}

#[derive(Debug)]
struct Conn {
    sender: SendRequest<UpBody>,
    /// The meshed peer's identity its mTLS handshake proved, and the SNI it sent; `None` for
    /// plaintext (or originated TLS, which has a pool of its own). A request is only handed to
    /// a connection that proved the identity it expects.
    peer: Option<Box<str>>,
    sni: Option<Box<str>>,
    /// The sweep tick ([`H1Pool::tick`]) when it was last seen in use (handed a request, or
    /// busy during a sweep). A tick count rather than an `Instant`: filing a connection is on
    /// every request's path, reading the clock is not needed there.
    used: u64,
}

/// Hashes a `SocketAddr` key with a multiply-rotate mix (the Fx hash) instead of SipHash,
/// which cost about 500 instructions per request over the two lookups (checkout and file).
/// The keys are endpoint addresses from config and discovery, or original destinations of
/// the local application: not chosen by a remote peer, so flooding resistance is not needed.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type AddrMap<V> = HashMap<SocketAddr, V, BuildHasherDefault<AddrHasher>>;

/// A meshed hop that stays HTTP/1.1 (`h2UpgradePolicy: DO_NOT_UPGRADE`): its connections are
/// mesh mTLS (ALPN `http/1.1`) proving `peer`, sending `sni` when set.
#[derive(Clone, Copy, Debug)]
pub struct MeshHop<'a> {
    pub upstreams: &'a Upstreams,
    pub peer: &'a str,
    pub sni: Option<&'a str>,
}

impl MeshHop<'_> {
    fn proved_by(mesh: Option<Self>, conn: &Conn) -> bool {
        match mesh {
            None => conn.peer.is_none(),
            Some(m) => conn.peer.as_deref() == Some(m.peer) && conn.sni.as_deref() == m.sni,
        }
    }
}

/// The HTTP/1.1 connections of one pool configuration (connect and idle timeouts, and TLS
/// origination or none).
#[derive(Debug)]
pub struct H1Pool {
    origination: Option<Arc<Origination>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    conns: Mutex<AddrMap<Vec<Conn>>>,
    /// Idle connections of the direct path, most recently used last.
    idle: Mutex<AddrMap<Vec<Idle>>>,
    /// Sweeps so far; advanced by the sweeper every sweep period.
    tick: AtomicU64,
    /// Whether the idle sweeper runs (started on the first dial, inside the runtime).
    sweeping: std::sync::OnceLock<()>,
}

impl H1Pool {
    /// A pool whose connections are plaintext, or TLS by `origination`.
    pub fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        origination: Option<Arc<Origination>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            origination,
            connect_timeout,
            idle_timeout,
            conns: Mutex::new(AddrMap::default()),
            idle: Mutex::new(AddrMap::default()),
            tick: AtomicU64::new(0),
            sweeping: std::sync::OnceLock::new(),
        })
    }

    /// Sends an HTTP/1.1 request to `addr` on a pooled connection, or a new one; over mesh
    /// mTLS when `mesh` says so.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<UpBody>,
        mesh: Option<MeshHop<'_>>,
    ) -> Result<Response<RespBody>, UpstreamError> {
        prepare(addr, &mut req);
        let reusable = !closes(&req);
        if self.origination.is_none() && mesh.is_none() && h1codec::eligible(&req) {
            return self
                .send_direct(addr, req, reusable)
                .await
                .map(|resp| resp.map(RespBody::Direct));
        }
        self.send_hyper(addr, req, reusable, mesh)
            .await
            .map(|resp| resp.map(RespBody::Http1))
    }

    /// The direct path ([`h1direct`]): on an idle connection that is still usable (a stale one
    /// that fails before the request went out, or before any answer to an idempotent request,
    /// is dropped and the next tried), else on a new one.
    async fn send_direct(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<UpBody>,
        reusable: bool,
    ) -> Result<Response<h1direct::DirectBody>, UpstreamError> {
        let head_request = req.method() == Method::HEAD;
        let pool = reusable.then_some((self, addr));
        for _ in 0..MAX_STALE_TRIES {
            let Some(mut conn) = self.checkout_direct(addr) else {
                break;
            };
            match conn.exchange(&req, head_request).await {
                Ok(head) => return Ok(h1direct::respond(conn, head, pool)),
                Err(Failure::NotSent(e)) => {
                    tracing::debug!(%addr, error = %e, "pooled HTTP/1 connection closed; retrying on another");
                }
                Err(Failure::NoAnswer(e)) if h1codec::is_idempotent(req.method()) => {
                    tracing::debug!(%addr, error = %e, "pooled HTTP/1 connection closed without an answer; retrying on another");
                }
                Err(failure) => return Err(failure.into_upstream(addr)),
            }
        }
        // Boxed, as for hyper's connections: a dial is once per connection.
        let stream = Box::pin(self.connect(addr)).await?;
        let mut conn = DirectConn::new(stream);
        match conn.exchange(&req, head_request).await {
            Ok(head) => Ok(h1direct::respond(conn, head, pool)),
            Err(failure) => Err(failure.into_upstream(addr)),
        }
    }

    /// The most recently used idle direct connection to `addr` that is still usable; closed
    /// ones met on the way are dropped.
    fn checkout_direct(&self, addr: SocketAddr) -> Option<DirectConn> {
        let mut map = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = map.get_mut(&addr)?;
        while let Some(idle) = list.pop() {
            if idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Keeps a direct connection whose exchange ended, for the next request to `addr`.
    pub(super) fn file_direct(&self, addr: SocketAddr, conn: DirectConn) {
        let mut map = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = map.entry(addr).or_default();
        if list.len() < MAX_PER_ENDPOINT {
            list.push(Idle {
                conn,
                used: self.tick.load(Ordering::Relaxed),
            });
        }
    }

    /// hyper's client, for what the direct path does not take.
    async fn send_hyper(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<UpBody>,
        reusable: bool,
        mesh: Option<MeshHop<'_>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        loop {
            let sent = match self.try_send_pooled(addr, req, reusable, mesh) {
                Ok(sent) => sent,
                Err(back) => {
                    req = back;
                    break;
                }
            };
            match sent.await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    // The connection closed before the request went out (the peer's
                    // keep-alive timeout raced us): nothing was sent, so another may take it.
                    Some(back) => {
                        tracing::debug!(%addr, error = %e.error(), "pooled HTTP/1 connection closed; retrying on another");
                        req = back;
                    }
                    None => {
                        return Err(UpstreamError::Request {
                            addr,
                            source: Box::new(e.into_error()),
                        });
                    }
                },
            }
        }
        // Boxed: a dial (connect, TLS origination) is once per connection; inline, its state
        // would be in every request's future.
        let mut sender = Box::pin(self.dial(addr, mesh)).await?;
        let sent = sender.send_request(req);
        if reusable {
            self.file(addr, sender, mesh);
        }
        sent.await.map_err(|e| UpstreamError::Request {
            addr,
            source: Box::new(e),
        })
    }

    /// Hands `req` to a ready pooled connection to `addr`, under one lock: the one nearest the
    /// end of its list (closed ones are dropped on the way, busy ones stay). With `reusable`
    /// the connection stays listed where it is, busy until its response ends (hyper then
    /// reports it ready); otherwise it leaves the list and closes after this exchange. Gives
    /// `req` back when no connection is ready.
    ///
    /// Scanning from the end always prefers the same connections while they are ready, so when
    /// load drops, those nearer the front stay unused and the sweeper closes them.
    // The request comes back by value when no connection is ready: boxing it would be an
    // allocation per request to save a move.
    #[allow(clippy::result_large_err)]
    fn try_send_pooled(
        &self,
        addr: SocketAddr,
        req: Request<UpBody>,
        reusable: bool,
        mesh: Option<MeshHop<'_>>,
    ) -> Result<impl Future<Output = Sent> + use<>, Request<UpBody>> {
        let mut map = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(list) = map.get_mut(&addr) else {
            return Err(req);
        };
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let conn = &mut list[i];
            if conn.sender.is_closed() {
                list.swap_remove(i);
            } else if conn.sender.is_ready() && MeshHop::proved_by(mesh, conn) {
                if reusable {
                    conn.used = self.tick.load(Ordering::Relaxed);
                    return Ok(conn.sender.try_send_request(req));
                }
                // Dropped once the request is handed over: hyper finishes this exchange,
                // then closes the connection.
                return Ok(list.swap_remove(i).sender.try_send_request(req));
            }
        }
        Err(req)
    }

    fn file(
        self: &Arc<Self>,
        addr: SocketAddr,
        sender: SendRequest<UpBody>,
        mesh: Option<MeshHop<'_>>,
    ) {
        let mut map = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let list = map.entry(addr).or_default();
        if list.len() < MAX_PER_ENDPOINT {
            list.push(Conn {
                sender,
                peer: mesh.map(|m| Box::from(m.peer)),
                sni: mesh.and_then(|m| m.sni).map(Box::from),
                used: self.tick.load(Ordering::Relaxed),
            });
        }
    }

    async fn dial(
        self: &Arc<Self>,
        addr: SocketAddr,
        mesh: Option<MeshHop<'_>>,
    ) -> Result<SendRequest<UpBody>, UpstreamError> {
        let stream = self.connect(addr).await?;
        match (&self.origination, mesh) {
            (Some(origination), _) => {
                let tls = origination.connect(addr, stream, Alpn::Http1).await?;
                handshake(addr, tls).await
            }
            (None, Some(m)) => {
                let tls = m
                    .upstreams
                    .tls_connect(stream, addr, MeshAlpn::Http1, m.peer, m.sni)
                    .await?;
                handshake(addr, tls).await
            }
            (None, None) => handshake(addr, stream).await,
        }
    }

    /// A TCP connection to `addr` within the connect timeout; starts the idle sweeper on the
    /// first.
    async fn connect(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpStream, UpstreamError> {
        self.sweeping.get_or_init(|| {
            tokio::spawn(sweep(Arc::downgrade(self), self.idle_timeout));
        });
        connect_within(addr, self.connect_timeout)
            .await
            .map_err(|source| UpstreamError::Connect { addr, source })
    }

    /// Advances the tick and closes connections idle for at least `idle_ticks` sweep periods.
    fn sweep_once(&self, idle_ticks: u64) {
        let now = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
        let mut map = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, list| {
            list.retain_mut(|c| {
                if c.sender.is_closed() {
                    return false;
                }
                if !c.sender.is_ready() {
                    // Busy: its idle time starts when this response ends.
                    c.used = now;
                    return true;
                }
                // Last used during tick `c.used`, so idle for more than `now - c.used - 1`
                // whole periods.
                now - c.used <= idle_ticks
            });
            !list.is_empty()
        });
        drop(map);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|_, list| {
            // Filed during tick `used` and idle since; a connection the peer closed goes too.
            list.retain(|i| now - i.used <= idle_ticks && i.conn.is_usable());
            !list.is_empty()
        });
    }
}

/// Sweeps `pool` every half idle timeout until it is dropped. Dropping a `SendRequest`
/// closes its idle connection: one idle for at least the idle timeout (and less than that
/// plus two periods).
/// The HTTP/1.1 client handshake over `io`; its connection task runs until the peer closes.
async fn handshake<I>(addr: SocketAddr, io: I) -> Result<SendRequest<UpBody>, UpstreamError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| UpstreamError::Connect {
            addr,
            source: std::io::Error::other(e),
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream HTTP/1 connection ended");
        }
    });
    Ok(sender)
}

async fn sweep(pool: Weak<H1Pool>, idle_timeout: Duration) {
    let period = (idle_timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(30));
    let idle_ticks = idle_timeout.as_nanos().div_ceil(period.as_nanos()) as u64;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep_once(idle_ticks);
    }
}

/// Whether the request asks for its connection to close after it.
fn closes(req: &Request<UpBody>) -> bool {
    req.headers()
        .get(http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
}

/// The request target and Host header an HTTP/1.1 origin server expects, as the legacy client
/// made them: origin-form (authority-form for CONNECT), and `Host: <addr>` when none is set.
fn prepare(addr: SocketAddr, req: &mut Request<UpBody>) {
    if !req.headers().contains_key(HOST) {
        let host = if addr.port() == 80 {
            match addr {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            }
        } else {
            addr.to_string()
        };
        if let Ok(v) = HeaderValue::from_str(&host) {
            req.headers_mut().insert(HOST, v);
        }
    }
    if req.method() == Method::CONNECT {
        if let Ok(uri) = Uri::try_from(addr.to_string()) {
            *req.uri_mut() = uri;
        }
        return;
    }
    let uri = req.uri();
    if uri.scheme().is_some() || uri.authority().is_some() {
        let origin = match uri.path_and_query() {
            Some(p) if p.as_str() != "/" => {
                let mut parts = http::uri::Parts::default();
                parts.path_and_query = Some(p.clone());
                Uri::from_parts(parts).unwrap_or_default()
            }
            _ => Uri::default(),
        };
        *req.uri_mut() = origin;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn req(uri: &str) -> Request<UpBody> {
        Request::get(uri)
            .body(crate::client::empty_up_body())
            .unwrap()
    }

    #[test]
    fn targets_are_origin_form_with_a_host() {
        let addr: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        let mut r = req("http://web.default:80/a?b=1");
        prepare(addr, &mut r);
        assert_eq!(r.uri(), "/a?b=1");
        assert_eq!(r.headers()[HOST], "10.0.0.7:8080");

        let mut r = req("/x");
        r.headers_mut()
            .insert(HOST, HeaderValue::from_static("app"));
        prepare(addr, &mut r);
        assert_eq!(r.uri(), "/x");
        assert_eq!(r.headers()[HOST], "app");

        let mut r = req("http://[::1]:80");
        prepare("[::1]:80".parse().unwrap(), &mut r);
        assert_eq!(r.uri(), "/");
        assert_eq!(r.headers()[HOST], "[::1]");
    }

    /// A raw HTTP/1.1 server on loopback.
    struct Server {
        addr: SocketAddr,
        /// Connections accepted.
        accepted: Arc<std::sync::atomic::AtomicUsize>,
        /// Connections it saw closed by the peer.
        eofs: Arc<std::sync::atomic::AtomicUsize>,
        /// Notified (one stored permit) each time a connection is seen closed by the peer.
        closed: Arc<tokio::sync::Notify>,
    }

    /// A [`Server`] answering `ok` to each request; with `close_after` it closes each
    /// connection after one answer without saying so (a keep-alive timeout).
    async fn server(close_after: bool) -> Server {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let eofs = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(tokio::sync::Notify::new());
        let (a, e, c) = (accepted.clone(), eofs.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                a.fetch_add(1, SeqCst);
                let (e, c) = (e.clone(), c.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                // Counted before the wake-up, so a woken test reads it.
                                e.fetch_add(1, SeqCst);
                                c.notify_one();
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(answer).await.is_err() || close_after {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Server {
            addr,
            accepted,
            eofs,
            closed,
        }
    }

    async fn get(pool: &Arc<H1Pool>, addr: SocketAddr) -> String {
        let resp = pool
            .send(addr, req("/"), None)
            .await
            .expect("request answered");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection_and_idle_ones_close() {
        use std::sync::atomic::Ordering::SeqCst;
        let Server {
            addr,
            accepted,
            eofs,
            closed,
        } = server(false).await;
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_millis(200), None);
        for _ in 0..5 {
            assert_eq!(get(&pool, addr).await, "ok");
        }
        assert_eq!(accepted.load(SeqCst), 1, "one keep-alive connection");
        // The sweeper closes it once idle for longer than the idle timeout.
        tokio::time::timeout(Duration::from_secs(5), closed.notified())
            .await
            .expect("the idle connection closed within 5 s");
        assert_eq!(eofs.load(SeqCst), 1, "idle connection closed by the pool");
        assert_eq!(get(&pool, addr).await, "ok");
        assert_eq!(accepted.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_peer_closed_is_replaced() {
        use std::sync::atomic::Ordering::SeqCst;
        let Server { addr, accepted, .. } = server(true).await;
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_secs(60), None);
        for _ in 0..5 {
            assert_eq!(get(&pool, addr).await, "ok");
        }
        assert_eq!(accepted.load(SeqCst), 5);
    }

    #[tokio::test]
    async fn a_request_asking_to_close_uses_a_pooled_connection_and_takes_it_out() {
        use std::sync::atomic::Ordering::SeqCst;
        let Server {
            addr,
            accepted,
            eofs,
            closed,
        } = server(false).await;
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_secs(60), None);
        assert_eq!(get(&pool, addr).await, "ok");
        let mut close = req("/");
        close
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        let resp = pool
            .send(addr, close, None)
            .await
            .expect("request answered");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        assert_eq!(accepted.load(SeqCst), 1, "the pooled connection carried it");
        tokio::time::timeout(Duration::from_secs(5), closed.notified())
            .await
            .expect("the connection closed within 5 s of its exchange");
        assert_eq!(eofs.load(SeqCst), 1, "closed after its exchange");
        assert_eq!(get(&pool, addr).await, "ok");
        assert_eq!(accepted.load(SeqCst), 2, "not used again");
    }

    #[tokio::test]
    async fn a_connection_serves_only_requests_expecting_the_identity_it_proved() {
        let Server { addr, .. } = server(false).await;
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_secs(60), None);
        let upstreams = Upstreams::new();
        let hop = |peer| MeshHop {
            upstreams: &upstreams,
            peer,
            sni: None,
        };
        // Filed as having proved `a`; dialled in plaintext here, since the matching is what
        // is under test (the mTLS dial is the same as upgrades', tests/mtls.rs covers both).
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut sender = handshake(addr, stream).await.unwrap();
        sender.ready().await.unwrap();
        let a = "spiffe://t/ns/x/sa/a";
        pool.file(addr, sender, Some(hop(a)));
        let refused = |mesh| pool.try_send_pooled(addr, req("/"), true, mesh).is_err();
        assert!(refused(None), "a plaintext request");
        assert!(
            refused(Some(hop("spiffe://t/ns/x/sa/b"))),
            "another identity"
        );
        let other_sni = MeshHop {
            sni: Some("a.other-cluster.example"),
            ..hop(a)
        };
        assert!(refused(Some(other_sni)), "another SNI");
        let Ok(sent) = pool.try_send_pooled(addr, req("/"), true, Some(hop(a))) else {
            panic!("the connection that proved `a` was not handed the request");
        };
        let resp = sent.await.expect("answered");
        assert_eq!(resp.status(), 200);
    }

    #[tokio::test]
    async fn concurrent_requests_get_their_own_connections() {
        use std::sync::atomic::Ordering::SeqCst;
        let Server { addr, accepted, .. } = server(false).await;
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_secs(60), None);
        let answers = futures_util::future::join_all((0..4).map(|_| get(&pool, addr))).await;
        assert!(answers.iter().all(|a| a == "ok"));
        let opened = accepted.load(SeqCst);
        assert!((1..=4).contains(&opened), "{opened}");
        for _ in 0..4 {
            assert_eq!(get(&pool, addr).await, "ok");
        }
        assert_eq!(accepted.load(SeqCst), opened, "later requests reuse them");
    }

    #[tokio::test]
    async fn connect_failure_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_secs(60), None);
        let err = pool.send(addr, req("/"), None).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
    }

    #[test]
    fn connection_close_is_recognised() {
        let mut r = req("/");
        assert!(!closes(&r));
        r.headers_mut().insert(
            http::header::CONNECTION,
            HeaderValue::from_static("keep-alive, Close"),
        );
        assert!(closes(&r));
    }
}
