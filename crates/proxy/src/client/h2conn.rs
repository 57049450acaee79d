//! HTTP/2 client connections driven with the h2 crate directly, not through hyper's client.
//!
//! hyper's HTTP/2 client hands each request to its connection task over a channel, and that
//! task spawns one more task per request that waits for the response and passes it back over
//! a oneshot: per request, a task allocated and polled, two channels, and two extra wake-ups
//! on the way in and out (callgrind on the client proxy of the mTLS pair, see
//! docs/benchmarks.md). Here the request's own task opens the stream and awaits its response;
//! the connection task only drives the connection. What hyper did is kept: its connection
//! settings (windows, frame size, send buffer, header list size, no server push), a
//! `content-length` when the body's exact length is known, the request body piped with flow
//! control (a task only when the body does not end at once, as hyper does), the stream reset
//! when the request is abandoned while its body still streams, and keep-alive pings.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{UpBody, UpstreamError};
use std::net::SocketAddr;

/// hyper's client defaults, kept so the hop between proxies behaves as before.
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;
/// A ping every this long on an open connection; no pong within [`KEEP_ALIVE_TIMEOUT`] closes it
/// (hyper's `keep_alive_interval(30 s)` with its 20 s timeout, as before).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The sending half of one HTTP/2 connection; cheap to clone per request.
#[derive(Clone, Debug)]
pub struct H2Sender {
    send: h2::client::SendRequest<Bytes>,
    /// Set when the connection task ends: the pool drops the connection at its next lookup.
    closed: Arc<AtomicBool>,
}

impl H2Sender {
    /// Whether the connection has ended (closed by either side, or failed).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Waits until the connection may open one more stream; an error means it has closed
    /// (nothing was sent on it for this request).
    pub async fn ready(&mut self) -> Result<(), h2::Error> {
        std::future::poll_fn(|cx| self.send.poll_ready(cx)).await
    }

    /// Sends `req` (absolute URI, HTTP/2 headers only) on a new stream and waits for the
    /// response head. Call [`ready`](Self::ready) first.
    pub async fn send(
        &mut self,
        addr: SocketAddr,
        req: Request<UpBody>,
    ) -> Result<Response<H2Body>, UpstreamError> {
        let (mut head, body) = req.into_parts();
        // As hyper: a body of known length says so, except an empty one on a method that
        // defines no body (GET, HEAD, ...).
        if let Some(len) = body.size_hint().exact()
            && (len != 0 || has_payload_semantics(&head.method))
            && !head.headers.contains_key(CONTENT_LENGTH)
        {
            head.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        let eos = body.is_end_stream();
        let failed = |e: h2::Error| UpstreamError::Request {
            addr,
            source: Box::new(e),
        };
        let (response, stream) = self
            .send
            .send_request(Request::from_parts(head, ()), eos)
            .map_err(failed)?;
        // Abandoned (this future dropped) before the response head while the body pipe
        // still runs: the guard tells the pipe to stop, and the stream is reset.
        let mut cancel = CancelOnDrop(None);
        if !eos {
            let mut pipe = Box::pin(pipe(body, stream));
            // Most bodies are already whole (a retry buffer, a small upload): sent at once,
            // without a task.
            let done =
                std::future::poll_fn(|cx| Poll::Ready(pipe.as_mut().poll(cx).is_ready())).await;
            if !done {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                cancel.0 = Some(tx);
                tokio::spawn(cancellable(pipe, rx));
            }
        }
        let resp = response.await.map_err(failed)?;
        // The response is in: a body still streaming goes on on its own (a gRPC client
        // stream outlives its response head).
        drop(cancel.0.take());
        let remaining = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        Ok(resp.map(|recv| H2Body {
            recv,
            data_done: false,
            remaining,
        }))
    }
}

/// Opens an HTTP/2 connection over `io` and spawns the task that drives it.
pub async fn handshake<I>(io: I, addr: SocketAddr) -> Result<H2Sender, UpstreamError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::client::Builder::new();
    builder
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false);
    let (send, conn) =
        builder
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| UpstreamError::Handshake {
                addr,
                source: Box::new(e),
            })?;
    let closed = Arc::new(AtomicBool::new(false));
    tokio::spawn(drive(conn, addr, closed.clone()));
    Ok(H2Sender { send, closed })
}

/// Drives the connection until it ends, pinging it every [`KEEP_ALIVE_INTERVAL`]; a peer that
/// does not answer a ping within [`KEEP_ALIVE_TIMEOUT`] has its connection closed.
async fn drive<I>(
    mut conn: h2::client::Connection<I, Bytes>,
    addr: SocketAddr,
    closed: Arc<AtomicBool>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let pings = conn.ping_pong();
    let keep_alive = async move {
        let Some(mut pings) = pings else {
            return std::future::pending::<&'static str>().await;
        };
        loop {
            tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
            if pings.send_ping(h2::Ping::opaque()).is_err() {
                // The connection is ending; its own future says why.
                return std::future::pending().await;
            }
            let pong = std::future::poll_fn(|cx| pings.poll_pong(cx));
            match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, pong).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return std::future::pending().await,
                Err(_) => return "no pong to a keep-alive ping",
            }
        }
    };
    tokio::pin!(keep_alive);
    tokio::select! {
        biased;
        res = &mut conn => {
            if let Err(e) = res {
                tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        }
        why = &mut keep_alive => {
            tracing::debug!(%addr, why, "upstream HTTP/2 connection closed");
        }
    }
    closed.store(true, Ordering::Relaxed);
}

/// Whether a method defines a meaning for a request body (hyper's rule for adding
/// `content-length: 0`).
fn has_payload_semantics(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
    )
}

/// Sends on its channel when dropped while still holding it: the request was abandoned before
/// its response head.
struct CancelOnDrop(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Runs a body pipe until it ends or `cancel` says the request was abandoned before its
/// response; then the pipe, and with it the stream's last handle, is dropped, and h2 resets
/// the stream (CANCEL). A sender dropped without a word (the response arrived) leaves the
/// pipe running to its end.
async fn cancellable(
    mut pipe: Pin<Box<impl Future<Output = ()>>>,
    cancel: tokio::sync::oneshot::Receiver<()>,
) {
    tokio::select! {
        biased;
        () = pipe.as_mut() => return,
        res = cancel => if res.is_ok() {
            tracing::debug!("request abandoned while its body streamed; resetting the upstream stream");
            return;
        },
    }
    pipe.await
}

/// Sends `body` on `stream` with HTTP/2 flow control, as hyper's `PipeToSendStream` does:
/// waits for the peer's window before each chunk, sends the last chunk with END_STREAM (or an
/// empty DATA frame with it, or the trailers), and resets the stream if the body fails or the
/// peer resets it.
async fn pipe(mut body: UpBody, mut stream: h2::SendStream<Bytes>) {
    let mut buffered: Option<(Bytes, bool)> = None;
    std::future::poll_fn(move |cx| {
        loop {
            if let Poll::Ready(reason) = stream.poll_reset(cx) {
                tracing::debug!(?reason, "upstream HTTP/2 stream reset while sending its body");
                return Poll::Ready(());
            }
            if buffered.is_some() {
                while stream.capacity() == 0 {
                    match ready!(stream.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(_)) | None => return Poll::Ready(()),
                    }
                }
                let Some((data, eos)) = buffered.take() else {
                    continue;
                };
                if stream.send_data(data, eos).is_err() || eos {
                    return Poll::Ready(());
                }
                continue;
            }
            match ready!(Pin::new(&mut body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let eos = body.is_end_stream();
                        if !data.has_remaining() {
                            if stream.send_data(Bytes::new(), eos).is_err() || eos {
                                return Poll::Ready(());
                            }
                            continue;
                        }
                        // A minimal claim on the window, never the whole chunk (see hyper
                        // #4003: a claim held while waiting can starve other streams).
                        stream.reserve_capacity(1);
                        buffered = Some((data.copy_to_bytes(data.remaining()), eos));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            stream.reserve_capacity(0);
                            let _ = stream.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "request body failed; resetting the upstream stream");
                    stream.send_reset(h2::Reason::INTERNAL_ERROR);
                    return Poll::Ready(());
                }
                None => {
                    let _ = stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    })
    .await
}

/// A response body read from an HTTP/2 stream, returning flow-control capacity as it is read.
#[derive(Debug)]
pub struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
    /// What the response's `content-length` says is left, for the size hint.
    remaining: Option<u64>,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = this.remaining.as_mut() {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(ended_or_failed(e)),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(ended_or_failed(e)),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

/// As hyper: a stream the peer reset with NO_ERROR or CANCEL ends the body without failing it
/// (a server may stop reading a request once it has answered).
fn ended_or_failed(e: h2::Error) -> Option<Result<Frame<Bytes>, h2::Error>> {
    match e.reason() {
        Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL) => None,
        _ => Some(Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    /// A hyper HTTP/2 server on loopback that echoes the request body and ends every answer
    /// with an `x-echoed` trailer; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("x-echoed", HeaderValue::from(body.len()));
                            let frames = vec![
                                Ok::<_, hyper::Error>(Frame::data(body)),
                                Ok(Frame::trailers(trailers)),
                            ];
                            Ok::<_, hyper::Error>(Response::new(StreamBody::new(
                                futures_util::stream::iter(frames),
                            )))
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    }

    async fn connect(addr: SocketAddr) -> H2Sender {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        handshake(tcp, addr).await.unwrap()
    }

    fn request(addr: SocketAddr, body: UpBody) -> Request<UpBody> {
        Request::post(format!("http://{addr}/echo"))
            .version(http::Version::HTTP_2)
            .body(body)
            .unwrap()
    }

    async fn exchange(sender: &mut H2Sender, addr: SocketAddr, body: UpBody) -> (Bytes, String) {
        sender.ready().await.unwrap();
        let resp = sender.send(addr, request(addr, body)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let trailer = collected
            .trailers()
            .and_then(|t| t.get("x-echoed"))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (collected.to_bytes(), trailer)
    }

    #[tokio::test]
    async fn whole_and_streamed_bodies_round_trip_with_trailers_on_one_connection() {
        let addr = echo_server().await;
        let mut sender = connect(addr).await;
        // A whole body: sent without a pipe task.
        let whole = Full::new(Bytes::from_static(b"hello"))
            .map_err(|never| match never {})
            .boxed();
        assert_eq!(
            exchange(&mut sender, addr, whole).await,
            (Bytes::from_static(b"hello"), "5".to_owned())
        );
        // A body that arrives later, in chunks of unknown total length: piped by a task.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, UpBodyErr>>(4);
        let streamed = StreamBody::new(tokio_stream_from(rx)).boxed();
        let feed = tokio::spawn(async move {
            for chunk in [&b"ab"[..], b"cd", b"ef"] {
                tokio::time::sleep(Duration::from_millis(5)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(chunk))))
                    .await
                    .unwrap();
            }
        });
        assert_eq!(
            exchange(&mut sender, addr, streamed).await,
            (Bytes::from_static(b"abcdef"), "6".to_owned())
        );
        feed.await.unwrap();
        // Many at once on the same connection.
        let answers = futures_util::future::join_all((0..20).map(|i| {
            let mut s = sender.clone();
            async move {
                let body = Full::new(Bytes::from(vec![b'x'; i]))
                    .map_err(|never| match never {})
                    .boxed();
                exchange(&mut s, addr, body).await.1
            }
        }))
        .await;
        assert_eq!(answers, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
        assert!(!sender.is_closed());
    }

    type UpBodyErr = super::super::UpBodyError;

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn a_closed_connection_is_seen_closed_and_refuses_new_streams() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            // The HTTP/2 handshake, then the connection is dropped.
            let mut conn = h2::server::handshake(s).await.unwrap();
            let _ = tokio::time::timeout(Duration::from_millis(50), conn.accept()).await;
        });
        let mut sender = connect(addr).await;
        server.await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !sender.is_closed() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(sender.is_closed(), "the pool sees the connection closed");
        let refused = match sender.ready().await {
            Err(_) => true,
            Ok(()) => sender
                .send(addr, request(addr, UpBody::default()))
                .await
                .is_err(),
        };
        assert!(refused, "no request goes out on a closed connection");
    }
}
