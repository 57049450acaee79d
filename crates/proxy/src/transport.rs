//! Sockets: binding listeners, reading the original destination of redirected connections, the
//! IO wrappers every accepted connection goes through (replay of detected bytes, byte
//! accounting), the opaque TCP splice, and the per-connection timer hyper's HTTP/1 server uses
//! for its header-read timeout ([`HeadTimer`]).
//!
//! This module knows nothing of HTTP or discovery.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::telemetry::{Direction, Metrics};

mod head_timer;
pub use head_timer::HeadTimer;

/// How long an upstream TCP connect may take before the attempt fails (502).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A listener could not be bound; `flag` names the option that asked for it.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({flag}): {source}")]
pub struct BindError {
    pub flag: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

pub async fn bind(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { flag, addr, source })
}

/// Connects to an upstream with [`CONNECT_TIMEOUT`] and Nagle off (proxied traffic is already
/// framed by the application).
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    connect_within(addr, CONNECT_TIMEOUT).await
}

/// [`connect`] with a given timeout (a backend's `connect_timeout`).
pub async fn connect_within(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out"),
            )
        })??;
    // Nagle only delays proxied writes; failing to disable it is harmless.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The destination a connection had before iptables redirected it to `listener`, or `None` when
/// there was no redirect (the kernel then reports the listener's own address, or an error when
/// conntrack does not know the connection).
pub fn original_dst(stream: &TcpStream, listener: SocketAddr) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let orig = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let orig = orig.ok()?.as_socket()?;
    (orig != local && orig != listener).then_some(orig)
}

/// Whether `addr` is one of the proxy's own listeners: connecting there would loop.
pub fn is_own_listener(addr: SocketAddr, listeners: &[SocketAddr]) -> bool {
    listeners.iter().any(|l| {
        *l == addr
            || (l.port() == addr.port()
                && l.ip().is_unspecified()
                && (addr.ip().is_loopback() || addr.ip().is_unspecified()))
    })
}

pin_project_lite::pin_project! {
    /// Replays the bytes protocol detection consumed, then reads from the inner stream.
    #[derive(Debug)]
    pub struct PrefixedIo<I> {
        prefix: BytesMut,
        #[pin]
        inner: I,
    }
}

impl<I> PrefixedIo<I> {
    pub fn new(prefix: BytesMut, inner: I) -> Self {
        Self { prefix, inner }
    }
}

impl<I: AsyncRead> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

pin_project_lite::pin_project! {
    /// Counts bytes read from and written to a downstream connection, and the connection's
    /// close, into the metrics of its direction.
    #[derive(Debug)]
    pub struct CountingIo<I> {
        #[pin]
        inner: I,
        metrics: Arc<Metrics>,
        direction: Direction,
        opened: std::time::Instant,
    }

    impl<I> PinnedDrop for CountingIo<I> {
        fn drop(this: Pin<&mut Self>) {
            this.metrics.tcp_closed(this.direction);
            this.metrics
                .tcp_connection_duration(this.direction, this.opened.elapsed());
        }
    }
}

impl<I> CountingIo<I> {
    /// Records the connection as opened; dropping the wrapper records it as closed.
    pub fn new(inner: I, metrics: Arc<Metrics>, direction: Direction) -> Self {
        metrics.tcp_opened(direction);
        Self {
            inner,
            metrics,
            direction,
            opened: std::time::Instant::now(),
        }
    }

    pub fn get_ref(&self) -> &I {
        &self.inner
    }
}

impl<I: AsyncRead> AsyncRead for CountingIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.inner.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        // Pending polls are frequent; skip the atomic when nothing was read.
        if n > 0 {
            this.metrics.tcp_received(*this.direction, n);
        }
        res
    }
}

impl<I: AsyncWrite> AsyncWrite for CountingIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.metrics.tcp_sent(*this.direction, n);
        }
        res
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            this.metrics.tcp_sent(*this.direction, n);
        }
        res
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Copies both ways until both sides are done; each side's EOF is passed on as a write shutdown
/// (half-close), so request/response protocols that close their sending side still work.
pub async fn splice<D, U>(downstream: &mut D, mut upstream: U) -> io::Result<(u64, u64)>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional(downstream, &mut upstream).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefixed_io_replays_then_reads() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut io = PrefixedIo::new(BytesMut::from(&b"hello"[..]), b);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn counting_io_counts() {
        let metrics = Arc::new(Metrics::new());
        let (mut a, b) = tokio::io::duplex(64);
        let mut io = CountingIo::new(b, metrics.clone(), Direction::Inbound);
        a.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        io.read_exact(&mut buf).await.unwrap();
        io.write_all(b"hello").await.unwrap();
        drop(io);
        let mut s = String::new();
        metrics.render(&mut s);
        assert!(s.contains("trellis_tcp_received_bytes_total{direction=\"inbound\"} 3"));
        assert!(s.contains("trellis_tcp_sent_bytes_total{direction=\"inbound\"} 5"));
        assert!(s.contains("trellis_tcp_connections_closed_total{direction=\"inbound\"} 1"));
    }

    #[test]
    fn own_listeners_are_loops() {
        let listeners: Vec<SocketAddr> = vec![
            "0.0.0.0:15006".parse().unwrap(),
            "127.0.0.1:15001".parse().unwrap(),
        ];
        assert!(is_own_listener(
            "127.0.0.1:15006".parse().unwrap(),
            &listeners
        ));
        assert!(is_own_listener(
            "127.0.0.1:15001".parse().unwrap(),
            &listeners
        ));
        assert!(!is_own_listener(
            "10.0.0.1:15001".parse().unwrap(),
            &listeners
        ));
        assert!(!is_own_listener(
            "127.0.0.1:8080".parse().unwrap(),
            &listeners
        ));
    }
}
