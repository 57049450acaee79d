//! The direct HTTP/1.1 upstream path: a bodiless HTTP/1.1 request to a plaintext endpoint (the
//! common case: a GET to the local application, or through a plaintext hop) is written and its
//! response read by the request's own task, on a pooled connection it holds for the exchange.
//!
//! hyper's client runs a task per connection and hands each request to it, and the response
//! head and body back, through channels: about 7k instructions per request of dispatch,
//! wake-ups and polling on top of the codec itself (docs/benchmarks.md). Here there is no task
//! and no channel: the head is encoded into the connection's buffer and written, the response
//! head parsed ([`super::h1codec`]), and a body that arrived with its head (a short answer) is
//! handed over whole, the connection going back to the pool before the response leaves the
//! proxy. A longer body streams from the connection, which goes back to the pool at the body's
//! end. Requests with a body, upgrades, HTTP/1.0, TLS (origination, mesh mTLS) take hyper's
//! client ([`super::h1pool`]).
//!
//! An idle pooled connection has no task watching it: whether the peer closed it is checked
//! when it is taken (a read that must find nothing: no system call while its socket has not
//! become readable since), and by the idle sweep.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::h1codec::{self, Chunk, ChunkedDecoder, Framing, Head};
use super::h1pool::H1Pool;
use crate::http::BoxError;

/// How much room a read of the head is given; a head and a short body usually fit in one.
const READ_CHUNK: usize = 8 * 1024;
/// How much room a read of a streaming body is given: fewer reads for a large body.
const BODY_READ_CHUNK: usize = 32 * 1024;

/// One plaintext HTTP/1.1 connection to an endpoint, with its read buffer (bytes received and
/// not yet consumed) and its write buffer (the head being sent).
#[derive(Debug)]
pub struct DirectConn {
    io: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
}

/// How an exchange failed, as far as sending it again is concerned.
#[derive(Debug)]
pub enum Failure {
    /// The request did not go out (the write failed): it may be sent on another connection.
    NotSent(io::Error),
    /// The request went out and the connection ended before any byte of an answer: another
    /// connection may take it when it is idempotent.
    NoAnswer(io::Error),
    /// Anything else: the exchange failed.
    Failed(BoxError),
}

impl Failure {
    /// The exchange's failure as the upstream error it is (a 502 at the edge).
    pub fn into_upstream(self, addr: SocketAddr) -> super::UpstreamError {
        let source = match self {
            Self::NotSent(e) | Self::NoAnswer(e) => Box::new(e),
            Self::Failed(e) => e,
        };
        super::UpstreamError::Request { addr, source }
    }
}

impl DirectConn {
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
        }
    }

    /// Whether an idle connection can take a request: the peer has not closed it and sent
    /// nothing unasked. Costs no system call unless its socket became readable while idle.
    pub fn is_usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Writes `req`'s head and reads the response head.
    pub async fn exchange<B>(
        &mut self,
        req: &Request<B>,
        head_request: bool,
    ) -> Result<Head, Failure> {
        h1codec::encode_head(req, &mut self.out);
        self.io
            .write_all(&self.out)
            .await
            .map_err(Failure::NotSent)?;
        let mut received = false;
        loop {
            match h1codec::parse_head(&mut self.buf, head_request) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(e) => return Err(Failure::Failed(Box::new(e))),
            }
            self.buf.reserve(READ_CHUNK);
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) if !received => {
                    return Err(Failure::NoAnswer(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before any response",
                    )));
                }
                Ok(0) => {
                    return Err(Failure::Failed(Box::new(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside the response head",
                    ))));
                }
                Ok(_) => received = true,
                Err(e) if !received => return Err(Failure::NoAnswer(e)),
                Err(e) => return Err(Failure::Failed(Box::new(e))),
            }
        }
    }
}

/// Where a connection goes back once its response's body has ended: its pool and endpoint.
#[derive(Debug)]
struct Home {
    pool: Weak<H1Pool>,
    addr: SocketAddr,
}

impl Home {
    fn take_back(self, conn: DirectConn) {
        if let Some(pool) = self.pool.upgrade() {
            pool.file_direct(self.addr, conn);
        }
    }
}

/// The response and its body from a parsed head. A body already read whole (or none) is
/// handed over, and the connection goes back to `pool` at once when it may carry another
/// request; otherwise the body streams from the connection, which goes back at the body's end.
/// `pool` is `None` when the request asked to close.
pub fn respond(
    mut conn: DirectConn,
    head: Head,
    pool: Option<(&Arc<H1Pool>, SocketAddr)>,
) -> Response<DirectBody> {
    let pool = pool.filter(|_| head.keep_alive);
    let streaming = match head.framing {
        Framing::Length(n) if (conn.buf.len() as u64) < n => Some(Streaming::Length(n)),
        Framing::Chunked => Some(Streaming::Chunked(ChunkedDecoder::default())),
        Framing::Eof => Some(Streaming::Eof),
        Framing::Empty | Framing::Length(_) => None,
    };
    let state = match streaming {
        Some(framing) => State::Streaming(Box::new(Stream {
            conn,
            framing,
            home: pool.map(|(pool, addr)| Home {
                pool: Arc::downgrade(pool),
                addr,
            }),
        })),
        None => {
            // `n` fits a usize: it is at most the buffer's length.
            let len = match head.framing {
                Framing::Length(n) => n as usize,
                _ => 0,
            };
            let body = (len > 0).then(|| conn.buf.split_to(len).freeze());
            if let Some((pool, addr)) = pool.filter(|_| conn.buf.is_empty()) {
                pool.file_direct(addr, conn);
            }
            State::Whole(body)
        }
    };
    head.response.map(|()| DirectBody { state })
}

/// A response body from the direct path.
#[derive(Debug)]
pub struct DirectBody {
    state: State,
}

#[derive(Debug)]
enum State {
    /// Read whole with the head (or empty); `None` once given.
    Whole(Option<Bytes>),
    Streaming(Box<Stream>),
    Done,
}

#[derive(Debug)]
struct Stream {
    conn: DirectConn,
    framing: Streaming,
    home: Option<Home>,
}

#[derive(Debug)]
enum Streaming {
    /// Bytes still to come.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// To the connection's close.
    Eof,
}

impl DirectBody {
    /// The body has ended: the connection goes home when it may carry another request and
    /// nothing unasked follows the body.
    fn finish(&mut self) {
        if let State::Streaming(stream) = std::mem::replace(&mut self.state, State::Done) {
            let Stream { conn, home, .. } = *stream;
            if let Some(home) = home.filter(|_| conn.buf.is_empty()) {
                home.take_back(conn);
            }
        }
    }
}

fn closed_early() -> BoxError {
    Box::new(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "upstream closed the connection before the response body ended",
    ))
}

impl http_body::Body for DirectBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let stream = match &mut this.state {
                State::Whole(data) => {
                    let data = data.take();
                    this.state = State::Done;
                    return Poll::Ready(data.map(|d| Ok(Frame::data(d))));
                }
                State::Done => return Poll::Ready(None),
                State::Streaming(stream) => stream,
            };
            let buf = &mut stream.conn.buf;
            match &mut stream.framing {
                Streaming::Length(left) if !buf.is_empty() => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    *left -= take as u64;
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Streaming::Chunked(decoder) => match decoder.decode(buf) {
                    Ok(Chunk::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Chunk::Trailers(trailers)) => {
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Chunk::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Chunk::NeedMore) => {}
                    Err(e) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                },
                Streaming::Eof if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Streaming::Length(_) | Streaming::Eof => {}
            }
            // Nothing buffered to give: read more.
            buf.reserve(BODY_READ_CHUNK);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut stream.conn.io), cx, buf);
            match ready!(read) {
                Ok(0) => {
                    let eof_delimited = matches!(stream.framing, Streaming::Eof);
                    this.state = State::Done;
                    return Poll::Ready(if eof_delimited {
                        None
                    } else {
                        Some(Err(closed_early()))
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Whole(data) => data.is_none(),
            State::Done => true,
            State::Streaming(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Whole(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            State::Done => SizeHint::with_exact(0),
            State::Streaming(stream) => match stream.framing {
                Streaming::Length(left) => SizeHint::with_exact(left),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::{RespBody, UpBody, h1pool::H1Pool};
    use super::*;

    /// What a scripted server sends for the `n`th request (from 0) on a connection: the
    /// pieces written one after another (how they split into reads is the kernel's; the
    /// codec's tests cover every split), and whether it then closes.
    type Script = fn(&str, usize) -> (Vec<Vec<u8>>, bool);

    /// A raw server on loopback that reads request heads (bodiless) and answers by `script`;
    /// counts the connections it accepted.
    async fn scripted(script: Script) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    let mut n = 0;
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            let (pieces, close) = script(&head, n);
                            n += 1;
                            for piece in pieces {
                                if s.write_all(&piece).await.is_err() {
                                    return;
                                }
                            }
                            if close {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => buf.extend_from_slice(&chunk[..read]),
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn request(method: http::Method) -> Request<UpBody> {
        Request::builder()
            .method(method)
            .uri("/")
            .body(crate::client::empty_up_body())
            .unwrap()
    }

    fn pool() -> Arc<H1Pool> {
        H1Pool::new(Duration::from_secs(1), Duration::from_secs(60), None)
    }

    /// Sends `method /` and collects the body and trailers; checks it took the direct path.
    async fn exchange(
        pool: &Arc<H1Pool>,
        addr: SocketAddr,
        method: http::Method,
    ) -> Result<(u16, Vec<u8>, Option<http::HeaderMap>), String> {
        let resp = pool
            .send(addr, request(method), None)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        assert!(
            matches!(resp.body(), RespBody::Direct(_)),
            "the direct path"
        );
        let collected = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let trailers = collected.trailers().cloned();
        Ok((status, collected.to_bytes().to_vec(), trailers))
    }

    #[tokio::test]
    async fn a_body_longer_than_a_read_streams_and_its_connection_is_reused_after_it() {
        const LEN: usize = 200_000;
        let (addr, accepted) = scripted(|_, _| {
            let body = vec![b'x'; LEN];
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n").into_bytes();
            (
                vec![head, body[..70_000].to_vec(), body[70_000..].to_vec()],
                false,
            )
        })
        .await;
        let pool = pool();
        for _ in 0..2 {
            let (status, body, _) = exchange(&pool, addr, http::Method::GET).await.unwrap();
            assert_eq!((status, body.len()), (200, LEN));
            assert!(body.iter().all(|b| *b == b'x'));
        }
        assert_eq!(accepted.load(SeqCst), 1, "one keep-alive connection");
    }

    #[tokio::test]
    async fn chunked_bodies_and_trailers_pass_and_the_connection_is_reused() {
        let (addr, accepted) = scripted(|_, _| {
            (
                vec![
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel".to_vec(),
                    b"lo\r\n6;ext=1\r\n world\r\n0\r\ngrpc-status: 0\r\n".to_vec(),
                    b"\r\n".to_vec(),
                ],
                false,
            )
        })
        .await;
        let pool = pool();
        for _ in 0..2 {
            let (status, body, trailers) = exchange(&pool, addr, http::Method::GET).await.unwrap();
            assert_eq!((status, body.as_slice()), (200, &b"hello world"[..]));
            assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
        }
        assert_eq!(accepted.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_to_the_close_is_read_whole_and_its_connection_not_reused() {
        let (addr, accepted) = scripted(|_, _| {
            (
                vec![
                    b"HTTP/1.1 200 OK\r\n\r\nuntil".to_vec(),
                    b" the end".to_vec(),
                ],
                true,
            )
        })
        .await;
        let pool = pool();
        for _ in 0..2 {
            let (_, body, _) = exchange(&pool, addr, http::Method::GET).await.unwrap();
            assert_eq!(body, b"until the end");
        }
        assert_eq!(accepted.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn a_head_answer_has_no_body_and_the_connection_goes_on() {
        let (addr, accepted) = scripted(|head, _| {
            let answer = if head.starts_with("HEAD") {
                "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"
            } else {
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            };
            (vec![answer.as_bytes().to_vec()], false)
        })
        .await;
        let pool = pool();
        let (_, body, _) = exchange(&pool, addr, http::Method::HEAD).await.unwrap();
        assert!(body.is_empty());
        let (_, body, _) = exchange(&pool, addr, http::Method::GET).await.unwrap();
        assert_eq!(body, b"ok");
        assert_eq!(accepted.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unanswered_request_on_a_reused_connection_is_sent_again_only_when_idempotent() {
        // Each connection answers its first request and drops the second unanswered (as a
        // server whose keep-alive timeout fired just as the request arrived).
        let (addr, accepted) = scripted(|_, n| {
            if n == 0 {
                (
                    vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()],
                    false,
                )
            } else {
                (vec![], true)
            }
        })
        .await;
        let pool = pool();
        assert_eq!(
            exchange(&pool, addr, http::Method::GET).await.unwrap().1,
            b"ok"
        );
        // The pooled connection takes the GET and closes; the GET is sent again on a new one.
        assert_eq!(
            exchange(&pool, addr, http::Method::GET).await.unwrap().1,
            b"ok"
        );
        assert_eq!(accepted.load(SeqCst), 2);
        // A POST may have been acted on: the failure is the answer.
        let err = pool
            .send(addr, request(http::Method::POST), None)
            .await
            .unwrap_err();
        assert!(!err.is_connect(), "{err}");
        assert!(
            err.to_string().contains("closed before any response"),
            "{err}"
        );
        assert_eq!(accepted.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn a_malformed_answer_and_a_body_cut_short_are_errors() {
        let (addr, _) = scripted(|head, _| {
            let answer: &[u8] = if head.contains("GET") {
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"
            } else {
                b"HTTP/1.1 OK\r\n\r\n"
            };
            (vec![answer.to_vec()], true)
        })
        .await;
        let pool = pool();
        let cut = exchange(&pool, addr, http::Method::GET).await.unwrap_err();
        assert!(cut.contains("before the response body ended"), "{cut}");
        let malformed = exchange(&pool, addr, http::Method::DELETE)
            .await
            .unwrap_err();
        assert!(malformed.contains("malformed response head"), "{malformed}");
    }
}
