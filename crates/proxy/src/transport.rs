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

use crate::telemetry::tcp::{TcpSeries, TcpSlot, TcpTag};
use crate::telemetry::{Direction, Metrics};

mod head_timer;
pub use head_timer::HeadTimer;
pub mod mx;

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

/// Bytes a connection accumulates per direction before adding them to its series: reads and
/// writes touch only plain fields, and a long-lived stream still shows its traffic while open.
const FLUSH_BYTES: u64 = 64 * 1024;

pin_project_lite::pin_project! {
    /// Counts bytes read from and written to a downstream connection, and the connection's
    /// close, into the TCP series its [`TcpTag`] attaches once the peer is known (the series
    /// with `direction` only when it never is). Bytes are summed per connection and added to
    /// the series every [`FLUSH_BYTES`], at end of stream (EOF read, write shutdown) and at
    /// close, so the data path has no atomic or lock per read or write.
    #[derive(Debug)]
    pub struct CountingIo<I> {
        #[pin]
        inner: I,
        tag: TcpTag,
        opened: std::time::Instant,
        received: u64,
        sent: u64,
    }

    impl<I> PinnedDrop for CountingIo<I> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let mut unlabelled = false;
            let series = this.tag.slot.get_or_init(|| {
                unlabelled = true;
                this.tag.metrics.tcp.unlabelled(this.tag.direction).clone()
            });
            if unlabelled {
                series.opened();
            }
            series.received(*this.received);
            series.sent(*this.sent);
            series.closed(this.opened.elapsed());
        }
    }
}

impl<I> CountingIo<I> {
    /// Starts counting a connection accepted in `direction`; it is counted as opened when
    /// labelled through [`Self::tag`] (or at close), and as closed when the wrapper drops.
    pub fn new(inner: I, metrics: Arc<Metrics>, direction: Direction) -> Self {
        Self {
            inner,
            tag: TcpTag {
                slot: TcpSlot::default(),
                metrics,
                direction,
            },
            opened: std::time::Instant::now(),
            received: 0,
            sent: 0,
        }
    }

    /// The handle that attaches this connection's labels once its peer is known.
    pub fn tag(&self) -> TcpTag {
        self.tag.clone()
    }

    pub fn get_ref(&self) -> &I {
        &self.inner
    }
}

/// Adds `pending` bytes to the connection's series, if it has one yet (until then they wait).
fn flush(tag: &TcpTag, pending: &mut u64, add: fn(&TcpSeries, u64)) {
    if *pending > 0
        && let Some(series) = tag.slot.get()
    {
        add(series, *pending);
        *pending = 0;
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
        *this.received += n as u64;
        // A ready read of nothing into room for something is the peer's EOF.
        let eof = n == 0 && buf.remaining() > 0 && matches!(res, Poll::Ready(Ok(())));
        if *this.received >= FLUSH_BYTES || eof {
            flush(this.tag, this.received, TcpSeries::received);
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
            *this.sent += n as u64;
            if *this.sent >= FLUSH_BYTES {
                flush(this.tag, this.sent, TcpSeries::sent);
            }
        }
        res
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let res = this.inner.poll_shutdown(cx);
        if res.is_ready() {
            flush(this.tag, this.sent, TcpSeries::sent);
        }
        res
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            *this.sent += n as u64;
            if *this.sent >= FLUSH_BYTES {
                flush(this.tag, this.sent, TcpSeries::sent);
            }
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
        // Never labelled: counted by direction only, opened at close.
        assert!(s.contains("trellis_tcp_connections_opened_total{direction=\"inbound\"} 1"));
        assert!(s.contains("trellis_tcp_received_bytes_total{direction=\"inbound\"} 3"));
        assert!(s.contains("trellis_tcp_sent_bytes_total{direction=\"inbound\"} 5"));
        assert!(s.contains("trellis_tcp_connections_closed_total{direction=\"inbound\"} 1"));
    }

    #[tokio::test]
    async fn counting_io_flushes_into_its_labels_at_eof_and_in_batches() {
        let metrics = Arc::new(Metrics::new());
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut io = CountingIo::new(b, metrics.clone(), Direction::Outbound);
        let local = crate::telemetry::exchange::LocalWorkload::new("client", "ns");
        io.tag().outbound(&local, None, false);
        let labels = "direction=\"outbound\",source_workload=\"client\",source_namespace=\"ns\",source_identity=\"\",destination_workload=\"\",destination_namespace=\"\",destination_identity=\"\",tls=\"false\"";
        let render = || {
            let mut s = String::new();
            metrics.render(&mut s);
            s
        };
        // Past the batch size, bytes show while the connection is open.
        let big = vec![7u8; FLUSH_BYTES as usize + 1];
        io.write_all(&big).await.unwrap();
        let n = big.len();
        assert!(render().contains(&format!("trellis_tcp_sent_bytes_total{{{labels}}} {n}")));
        // A small read shows at EOF.
        a.write_all(b"abc").await.unwrap();
        drop(a);
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        let s = render();
        assert!(
            s.contains(&format!("trellis_tcp_received_bytes_total{{{labels}}} 3")),
            "{s}"
        );
        assert!(s.contains(&format!(
            "trellis_tcp_connections_opened_total{{{labels}}} 1"
        )));
        assert!(s.contains(&format!(
            "trellis_tcp_connections_closed_total{{{labels}}} 0"
        )));
        drop(io);
        let s = render();
        assert!(s.contains(&format!(
            "trellis_tcp_connections_closed_total{{{labels}}} 1"
        )));
        assert!(s.contains("trellis_tcp_connections_opened_total{direction=\"outbound\"} 0"));
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
