//! The direct server path on real sockets: a raw client on loopback writes request bytes to a
//! proxy's inbound listener (plaintext, in front of a hyper app) and reads the answers with
//! the client codec, so what is checked is what a client gets on the wire.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::h1codec::{self, Chunk, ChunkedDecoder};
use crate::{Proxy, ProxyConfig};

const WAIT: Duration = Duration::from_secs(10);

/// What the app saw and did, for the tests to look at.
#[derive(Default)]
struct Seen {
    /// `/slow` requests that reached the app.
    slow_started: AtomicUsize,
    /// Requests whose handling was dropped before it answered (the client went away).
    dropped: AtomicUsize,
    /// Request body bytes received.
    body_bytes: AtomicUsize,
}

struct DropCount(Arc<Seen>, bool);

impl Drop for DropCount {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped.fetch_add(1, SeqCst);
        }
    }
}

/// A hyper HTTP/1.1 app: `/len/N` answers N bytes (a known length), `/stream` three chunks
/// and a trailer (unknown length), `/slow` after 2 s, `/echo` the request body's length,
/// `/none` 204, `/reason` 200 with the reason phrase "Fine Thanks".
async fn app() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let shared = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = shared.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(answer(req, seen).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>, seen: Arc<Seen>) -> Response<AppBody> {
    let path = req.uri().path().to_owned();
    let full = |b: Bytes| Full::new(b).boxed();
    if let Some(n) = path.strip_prefix("/len/") {
        let n: usize = n.parse().unwrap();
        return Response::new(full(Bytes::from(vec![b'x'; n])));
    }
    match path.as_str() {
        "/stream" => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-sum", "3".parse().unwrap());
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                Ok(Frame::data(Bytes::from_static(b"one,"))),
                Ok(Frame::data(Bytes::from_static(b"two,"))),
                Ok(Frame::data(Bytes::from_static(b"three"))),
                Ok(Frame::trailers(trailers)),
            ];
            Response::builder()
                .header("trailer", "x-sum")
                .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
                .unwrap()
        }
        "/slow" => {
            seen.slow_started.fetch_add(1, SeqCst);
            let mut guard = DropCount(seen, false);
            tokio::time::sleep(Duration::from_secs(2)).await;
            guard.1 = true;
            Response::new(full(Bytes::from_static(b"late")))
        }
        "/echo" => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            seen.body_bytes.fetch_add(body.len(), SeqCst);
            Response::new(full(Bytes::from(body.len().to_string())))
        }
        "/reason" => {
            let mut resp = Response::new(full(Bytes::from_static(b"ok")));
            resp.extensions_mut()
                .insert(hyper::ext::ReasonPhrase::from_static(b"Fine Thanks"));
            resp
        }
        "/none" => Response::builder()
            .status(204)
            .body(full(Bytes::new()))
            .unwrap(),
        _ => Response::builder()
            .status(404)
            .body(full(Bytes::new()))
            .unwrap(),
    }
}

/// A proxy whose inbound listener forwards to the app; returns its inbound address.
async fn proxy_in_front_of(app: SocketAddr) -> (Proxy, SocketAddr) {
    let proxy = Proxy::start(ProxyConfig::local(Some(app))).await.unwrap();
    let inbound = proxy.addrs().inbound;
    (proxy, inbound)
}

/// One answer as a client reads it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
    trailers: Option<http::HeaderMap>,
    keep_alive: bool,
}

/// Reads one answer from `conn` (bytes past it stay in `buf`).
async fn read_answer(conn: &mut TcpStream, buf: &mut BytesMut) -> Answer {
    tokio::time::timeout(WAIT, async {
        let head = loop {
            if let Some(head) = h1codec::parse_head(buf, false).unwrap() {
                break head;
            }
            fill(conn, buf).await;
        };
        let mut body = Vec::new();
        let mut trailers = None;
        match head.framing {
            h1codec::Framing::Empty => {}
            h1codec::Framing::Length(n) => {
                while buf.len() < n as usize {
                    fill(conn, buf).await;
                }
                body.extend_from_slice(&buf.split_to(n as usize));
            }
            h1codec::Framing::Chunked => {
                let mut decoder = ChunkedDecoder::default();
                loop {
                    match decoder.decode(buf).unwrap() {
                        Chunk::Data(d) => body.extend_from_slice(&d),
                        Chunk::Trailers(t) => {
                            trailers = Some(t);
                            break;
                        }
                        Chunk::End => break,
                        Chunk::NeedMore => fill(conn, buf).await,
                    }
                }
            }
            h1codec::Framing::Eof => panic!("an answer delimited by the close"),
        }
        let (parts, ()) = head.response.into_parts();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            trailers,
            keep_alive: head.keep_alive,
        }
    })
    .await
    .expect("an answer in time")
}

async fn fill(conn: &mut TcpStream, buf: &mut BytesMut) {
    let n = conn.read_buf(buf).await.unwrap();
    assert!(n > 0, "the proxy closed mid-answer");
}

/// Waits (bounded) until `counter` reaches `n`; whether it did.
async fn reaches(counter: &AtomicUsize, n: usize) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter.load(SeqCst) < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    counter.load(SeqCst) >= n
}

/// Whether the proxy closes `conn` (reads EOF) within the wait.
async fn closes(conn: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(WAIT, conn.read_to_end(&mut rest)).await,
        Ok(Ok(0))
    )
}

#[tokio::test]
async fn pipelined_heads_are_answered_in_order_with_lengths_chunks_and_trailers() {
    let (app, _) = app().await;
    let (_proxy, inbound) = proxy_in_front_of(app).await;
    let mut conn = TcpStream::connect(inbound).await.unwrap();
    // Three heads in one write: the second's body is larger than one write of the proxy.
    conn.write_all(
        b"GET /len/5 HTTP/1.1\r\nhost: app\r\n\r\n\
          GET /len/70000 HTTP/1.1\r\nhost: app\r\n\r\n\
          GET /stream HTTP/1.1\r\nhost: app\r\nte: trailers\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = BytesMut::new();
    let first = read_answer(&mut conn, &mut buf).await;
    assert_eq!((first.status, &first.body[..]), (200, &b"xxxxx"[..]));
    assert_eq!(first.headers["content-length"], "5");
    assert!(first.headers.contains_key("date"), "{:?}", first.headers);
    assert!(first.keep_alive);
    let second = read_answer(&mut conn, &mut buf).await;
    assert_eq!(second.body.len(), 70_000);
    let third = read_answer(&mut conn, &mut buf).await;
    assert_eq!(third.body, b"one,two,three");
    assert_eq!(third.headers["transfer-encoding"], "chunked");
    assert_eq!(
        third.trailers.as_ref().map(|t| t["x-sum"].clone()),
        Some("3".parse().unwrap()),
        "a client that sent TE: trailers gets the declared trailer"
    );
    // Without TE: trailers, the same body comes without them; 204 has no body.
    conn.write_all(
        b"GET /stream HTTP/1.1\r\nhost: app\r\n\r\nGET /none HTTP/1.1\r\nhost: app\r\n\r\n",
    )
    .await
    .unwrap();
    let plain = read_answer(&mut conn, &mut buf).await;
    assert_eq!(
        (plain.body.as_slice(), plain.trailers),
        (&b"one,two,three"[..], None)
    );
    let none = read_answer(&mut conn, &mut buf).await;
    assert_eq!(none.status, 204);
    assert!(!none.headers.contains_key("content-length"));
    assert!(buf.is_empty(), "nothing more was sent: {buf:?}");
}

#[tokio::test]
async fn connection_close_is_answered_then_the_connection_closed() {
    let (app, _) = app().await;
    let (_proxy, inbound) = proxy_in_front_of(app).await;
    let mut conn = TcpStream::connect(inbound).await.unwrap();
    conn.write_all(b"GET /len/3 HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let answer = read_answer(&mut conn, &mut buf).await;
    assert_eq!(answer.body, b"xxx");
    assert_eq!(answer.headers["connection"], "close");
    assert!(!answer.keep_alive);
    assert!(closes(&mut conn).await);
}

#[tokio::test]
async fn hyper_takes_over_at_a_body_an_expect_a_malformed_head_or_a_head_in_pieces() {
    let (app, seen) = app().await;
    let (_proxy, inbound) = proxy_in_front_of(app).await;
    let mut buf = BytesMut::new();

    // A GET on the direct path, then a POST with a body: hyper serves it and what follows.
    let mut conn = TcpStream::connect(inbound).await.unwrap();
    conn.write_all(b"GET /len/1 HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut conn, &mut buf).await.body, b"x");
    conn.write_all(b"POST /echo HTTP/1.1\r\nhost: app\r\ncontent-length: 4\r\n\r\nabcdGET /len/2 HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut conn, &mut buf).await.body, b"4");
    assert_eq!(read_answer(&mut conn, &mut buf).await.body, b"xx");
    assert_eq!(seen.body_bytes.load(SeqCst), 4);

    // Expect: 100-continue gets its interim answer before the body is sent.
    let mut conn = TcpStream::connect(inbound).await.unwrap();
    conn.write_all(
        b"POST /echo HTTP/1.1\r\nhost: app\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(WAIT, conn.read_exact(&mut interim))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    conn.write_all(b"hi").await.unwrap();
    assert_eq!(read_answer(&mut conn, &mut buf).await.body, b"2");

    // A malformed head: hyper's 400.
    let mut conn = TcpStream::connect(inbound).await.unwrap();
    conn.write_all(b"GET /len/1 HTTP/1.1\r\nno colon here\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut conn, &mut buf).await.status, 400);

    // A head written in two pieces with a pause between them.
    let mut conn = TcpStream::connect(inbound).await.unwrap();
    conn.write_all(b"GET /len/6 HTTP/1.1\r\nho").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.write_all(b"st: app\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut conn, &mut buf).await.body, b"xxxxxx");
    assert!(buf.is_empty());
}

#[tokio::test]
async fn a_client_that_closes_while_waiting_cancels_its_request_upstream() {
    let (app, seen) = app().await;
    let (_proxy, inbound) = proxy_in_front_of(app).await;
    let mut conn = TcpStream::connect(inbound).await.unwrap();
    conn.write_all(b"GET /slow HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    assert!(
        reaches(&seen.slow_started, 1).await,
        "the request reached the app"
    );
    drop(conn);
    // The app's handling is dropped when the proxy drops the upstream exchange; a handling
    // that ran to its 2 s answer is not counted, so no clock is needed to tell them apart.
    assert!(
        reaches(&seen.dropped, 1).await,
        "the request was cancelled upstream"
    );
}

#[tokio::test]
async fn a_drain_answers_the_request_in_flight_with_close_and_closes_idle_connections() {
    let (app, seen) = app().await;
    let (proxy, inbound) = proxy_in_front_of(app).await;
    let mut idle = TcpStream::connect(inbound).await.unwrap();
    let mut buf = BytesMut::new();
    idle.write_all(b"GET /len/1 HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut idle, &mut buf).await.body, b"x");
    let mut busy = TcpStream::connect(inbound).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: app\r\n\r\n")
        .await
        .unwrap();
    assert!(reaches(&seen.slow_started, 1).await, "in flight");
    proxy.shutdown_token().cancel();
    assert!(
        closes(&mut idle).await,
        "an idle keep-alive connection is closed"
    );
    let answer = read_answer(&mut busy, &mut buf).await;
    assert_eq!(answer.body, b"late", "the request in flight is finished");
    assert_eq!(answer.headers["connection"], "close");
    assert!(closes(&mut busy).await);
}

#[tokio::test]
async fn an_application_reason_phrase_reaches_the_client() {
    let (app, _) = app().await;
    let (_proxy, inbound) = proxy_in_front_of(app).await;
    let mut conn = TcpStream::connect(inbound).await.unwrap();
    conn.write_all(
        b"GET /reason HTTP/1.1\r\nhost: app\r\n\r\nGET /len/1 HTTP/1.1\r\nhost: app\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = BytesMut::new();
    tokio::time::timeout(WAIT, async {
        while !buf.ends_with(b"x") {
            fill(&mut conn, &mut buf).await;
        }
    })
    .await
    .expect("both answers in time");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200 Fine Thanks\r\n"), "{text}");
    let second = &text[text.find("okHTTP/1.1").expect("two answers") + 2..];
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second}");
}
