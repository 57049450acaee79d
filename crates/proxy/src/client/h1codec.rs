//! The HTTP/1.1 client codec of the direct upstream path ([`super::h1direct`]), as pure
//! functions over bytes: the request head written, the response head parsed (RFC 9112 §4-5)
//! with the body framing it announces (§6.3), and the chunked body decoded (§7.1). No I/O, so
//! it is fuzzed on its own (`fuzz/src/h1_response.rs`).
//!
//! Only what the direct path sends is encoded: bodiless HTTP/1.1 requests in origin-form (the
//! pool's `prepare` made the target and `Host`); anything else goes through hyper.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};

/// The most response headers accepted, as hyper's default.
pub const MAX_HEADERS: usize = 100;
/// The most bytes a response head (or a chunked body's trailers) may take, as hyper's client
/// reads at most (8 KiB plus 4 KiB per header).
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * MAX_HEADERS;
/// The longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// What the codec refuses, naming the rule.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head over {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid response header {0}")]
    Header(&'static str),
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnexpectedUpgrade,
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
}

/// Methods after which a request may be sent again when a reused connection closed before
/// any answer (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether `req` can take the direct path: HTTP/1.1, not CONNECT, and a body known to be
/// empty (a body, an upgrade or HTTP/1.0 goes through hyper's client).
pub fn eligible<B: http_body::Body>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.method() != Method::CONNECT
        && req.body().is_end_stream()
}

/// Writes `req`'s head to `out`: `METHOD target HTTP/1.1`, the headers as they are, and
/// `Content-Length: 0` for a method that defines a meaning for content (POST, PUT, PATCH,
/// ...) when the request has none, as a body-less request from hyper gets. The request's
/// body is empty ([`eligible`]).
pub fn encode_head<B>(req: &Request<B>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_length = false;
    for (name, value) in req.headers() {
        has_length |= name == http::header::CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let content_means_something = !matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    );
    if content_means_something && !has_length {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response's body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body: a HEAD request's answer, 204, 304, or `Content-Length: 0`.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding` ending in chunked.
    Chunked,
    /// Until the connection closes (no length, or a transfer coding other than chunked last).
    Eof,
}

/// A parsed response head: the response (its body to be filled), how its body is framed, and
/// whether the connection may carry another request after it.
#[derive(Debug)]
pub struct Head {
    pub response: Response<()>,
    pub framing: Framing,
    pub keep_alive: bool,
}

/// Parses one response head from the front of `buf`. `Ok(None)`: incomplete, read more (an
/// interim 1xx head other than 101 is consumed and skipped, as hyper's client does). On
/// success the head's bytes leave `buf`; the header values share them.
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, CodecError> {
    loop {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            // Refused by its size whether it arrived whole or in pieces.
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => {
                return Err(CodecError::HeadTooLarge);
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(CodecError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(CodecError::Head(e)),
        };
        let code = parsed.code.unwrap_or(0);
        if code == 101 {
            return Err(CodecError::UnexpectedUpgrade);
        }
        if (100..200).contains(&code) {
            buf.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| CodecError::Header(":status"))?;
        // A reason other than the status's own is kept, as hyper's client keeps it, for the
        // HTTP/1.1 server side to write back (HTTP/2 has none to carry).
        let reason = parsed
            .reason
            .filter(|r| Some(*r) != status.canonical_reason())
            .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok());
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Offsets into the head, taken before the bytes move into a shared `Bytes`.
        let base = buf.as_ptr() as usize;
        // A vector, not an array of MAX_HEADERS: zeroing that one cost more than the parse.
        let mut spans: Vec<Span> = Vec::with_capacity(parsed.headers.len());
        let mut length: Option<u64> = None;
        let mut transfer_encoding = false;
        let mut chunked = false;
        let mut close = false;
        let mut keep_alive_token = false;
        for h in parsed.headers.iter() {
            let name = h.name.as_bytes();
            spans.push(Span {
                name: span(base, name),
                value: span(base, h.value),
            });
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = content_length(h.value)?;
                if length.is_some_and(|l| l != n) {
                    return Err(CodecError::ContentLength);
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // Only the last coding decides; chunked anywhere else is not final.
                chunked = tokens(h.value)
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
                transfer_encoding = true;
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in tokens(h.value) {
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
        }
        // Transfer-Encoding overrides Content-Length (§6.3 point 3), whose header is then
        // dropped: it does not describe the body passed on.
        let drop_length = transfer_encoding && length.is_some();
        let framing = if head_request
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Framing::Empty
        } else {
            match (transfer_encoding, length) {
                (true, _) if chunked => Framing::Chunked,
                (true, _) | (false, None) => Framing::Eof,
                (false, Some(0)) => Framing::Empty,
                (false, Some(n)) => Framing::Length(n),
            }
        };
        // HTTP/1.1 persists unless told to close; HTTP/1.0 only when told to keep alive.
        let persistent = !close && (version == Version::HTTP_11 || keep_alive_token);
        let keep_alive = persistent && framing != Framing::Eof;
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(spans.len());
        for span in spans {
            if drop_length && head[span.name.clone()].eq_ignore_ascii_case(b"content-length") {
                continue;
            }
            let name =
                HeaderName::from_bytes(&head[span.name]).map_err(|_| CodecError::Header("name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(span.value))
                .map_err(|_| CodecError::Header("value"))?;
            headers.append(name, value);
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        if let Some(reason) = reason {
            response.extensions_mut().insert(reason);
        }
        return Ok(Some(Head {
            response,
            framing,
            keep_alive,
        }));
    }
}

/// Where a header's name and value are in the head's bytes (also the server codec's,
/// `serve::h1head`).
pub(crate) struct Span {
    pub name: std::ops::Range<usize>,
    pub value: std::ops::Range<usize>,
}

/// Where `part`, a slice of the buffer starting at address `base`, lies in it.
pub(crate) fn span(base: usize, part: &[u8]) -> std::ops::Range<usize> {
    let start = part.as_ptr() as usize - base;
    start..start + part.len()
}

/// The comma-separated tokens of a header value, trimmed (RFC 9110 §5.6.1).
pub(crate) fn tokens(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// A `Content-Length` value: digits, or a list of one repeated value.
pub(crate) fn content_length(value: &[u8]) -> Result<u64, CodecError> {
    // A list of one repeated value is allowed (RFC 9110 §8.6); anything else is not.
    let mut found: Option<u64> = None;
    for part in value.split(|b| *b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(CodecError::ContentLength);
        }
        let n = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(CodecError::ContentLength);
        }
        found = Some(n);
    }
    found.ok_or(CodecError::ContentLength)
}

/// Where a chunked body's decoding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, up to the empty line.
    Trailers,
    Done,
}

/// What one decoding step gives.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    /// Body bytes.
    Data(Bytes),
    /// The trailer fields (only when there are some); the body has ended.
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// More input is needed.
    NeedMore,
}

/// Decodes a chunked body (RFC 9112 §7.1) from a buffer the caller fills.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: ChunkState::Size,
        }
    }
}

impl ChunkedDecoder {
    /// One step over `buf`, consuming what it decodes. Call again while it gives data.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, CodecError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    // Looked for only where a line within the limit could end, so a longer one
                    // is refused whether it arrived whole or in pieces.
                    let end = find_crlf(&buf[..buf.len().min(MAX_CHUNK_LINE + 2)]);
                    let Some(end) = end else {
                        if buf.len() >= MAX_CHUNK_LINE + 2 {
                            return Err(CodecError::Chunked("chunk-size line too long"));
                        }
                        return Ok(Chunk::NeedMore);
                    };
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Chunk::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Chunk::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Chunk::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(CodecError::Chunked("no CRLF after chunk data"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = ChunkState::Done;
                        return Ok(Chunk::End);
                    }
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    return match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete((len, _))) if len > MAX_HEAD_BYTES => {
                            Err(CodecError::Chunked("trailers too large"))
                        }
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for f in fields.iter() {
                                let name = HeaderName::from_bytes(f.name.as_bytes())
                                    .map_err(|_| CodecError::Chunked("trailer name"))?;
                                let value = HeaderValue::from_bytes(f.value)
                                    .map_err(|_| CodecError::Chunked("trailer value"))?;
                                trailers.append(name, value);
                            }
                            buf.advance(len);
                            self.state = ChunkState::Done;
                            Ok(Chunk::Trailers(trailers))
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                            Err(CodecError::Chunked("trailers too large"))
                        }
                        Ok(httparse::Status::Partial) => Ok(Chunk::NeedMore),
                        Err(_) => Err(CodecError::Chunked("malformed trailers")),
                    };
                }
                ChunkState::Done => return Ok(Chunk::End),
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// The size of a chunk-size line (`1*HEXDIG [ chunk-ext ]`, whitespace tolerated before the
/// extensions as hyper does).
fn chunk_size(line: &[u8]) -> Result<u64, CodecError> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() {
        return Err(CodecError::Chunked("no chunk size"));
    }
    if digits.len() > 15 {
        return Err(CodecError::Chunked("chunk size too large"));
    }
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(CodecError::Chunked("invalid chunk size"));
    }
    Ok(digits.iter().fold(0u64, |n, d| {
        n * 16 + u64::from((*d as char).to_digit(16).unwrap_or(0))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &str, head_request: bool) -> Result<Option<Head>, CodecError> {
        parse_head(&mut BytesMut::from(bytes), head_request)
    }

    #[test]
    fn encodes_an_origin_form_head_and_a_zero_length_for_post() {
        let req = Request::get("/a?b=1")
            .header("host", "svc")
            .header("x-one", "1")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        encode_head(&req, &mut out);
        assert_eq!(out, b"GET /a?b=1 HTTP/1.1\r\nhost: svc\r\nx-one: 1\r\n\r\n");
        let post = Request::post("/").body(()).unwrap();
        encode_head(&post, &mut out);
        assert_eq!(out, b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        let with = Request::post("/")
            .header("content-length", "0")
            .body(())
            .unwrap();
        encode_head(&with, &mut out);
        assert_eq!(out, b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        let empty_target = Request::get(http::Uri::default()).body(()).unwrap();
        encode_head(&empty_target, &mut out);
        assert!(out.starts_with(b"GET / HTTP/1.1\r\n"), "{out:?}");
    }

    #[test]
    fn only_bodiless_http11_requests_are_eligible() {
        use http_body_util::{Empty, Full};
        assert!(eligible(
            &Request::get("/").body(Empty::<Bytes>::new()).unwrap()
        ));
        assert!(!eligible(
            &Request::post("/")
                .body(Full::new(Bytes::from("x")))
                .unwrap()
        ));
        let mut old = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
        *old.version_mut() = Version::HTTP_10;
        assert!(!eligible(&old));
        let connect = Request::connect("h:1").body(Empty::<Bytes>::new()).unwrap();
        assert!(!eligible(&connect));
    }

    #[test]
    fn a_head_with_a_length_shares_its_bytes_and_leaves_the_body() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\nhello",
        );
        let h = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.response.status(), 200);
        assert_eq!(h.response.headers()["server"], "x");
        assert_eq!(h.response.headers().get_all("set-cookie").iter().count(), 2);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: &[(&str, bool, Framing, bool)] = &[
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Framing::Chunked,
                true,
            ),
            // Transfer-Encoding wins over Content-Length.
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Framing::Chunked,
                true,
            ),
            // chunked not last: read to the close.
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                false,
                Framing::Eof,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Framing::Eof, false),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                true,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
                false,
                Framing::Length(2),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
                false,
                Framing::Length(2),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n",
                false,
                Framing::Length(2),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n",
                false,
                Framing::Length(7),
                true,
            ),
        ];
        for (text, head_request, framing, keep_alive) in cases {
            let h = head(text, *head_request).unwrap().unwrap();
            assert_eq!((h.framing, h.keep_alive), (*framing, *keep_alive), "{text}");
        }
        let both = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nX: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = both.response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["transfer-encoding", "x"], "Content-Length dropped");
    }

    #[test]
    fn only_a_reason_other_than_the_status_own_is_kept() {
        let reason = |text: &str| {
            let h = head(text, false).unwrap().unwrap();
            h.response
                .extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        };
        assert_eq!(reason("HTTP/1.1 200 OK\r\n\r\n"), None);
        assert_eq!(reason("HTTP/1.1 404 Not Found\r\n\r\n"), None);
        assert_eq!(
            reason("HTTP/1.1 200 Fine Thanks\r\n\r\n").as_deref(),
            Some("Fine Thanks")
        );
        assert_eq!(reason("HTTP/1.1 200 \r\n\r\n").as_deref(), Some(""));
    }

    #[test]
    fn interim_answers_are_skipped_and_bad_heads_refused() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        );
        let h = parse_head(&mut buf, false).unwrap().unwrap();
        assert_eq!(h.response.status(), 200);
        assert!(buf.is_empty());
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok(None)
        ));
        assert_eq!(
            head("HTTP/1.1 101 Switching Protocols\r\n\r\n", false).unwrap_err(),
            CodecError::UnexpectedUpgrade
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert_eq!(
                head(bad, false).unwrap_err(),
                CodecError::ContentLength,
                "{bad}"
            );
        }
        assert!(matches!(
            head("HTTP/1.1 2000 OK\r\n\r\n", false),
            Err(CodecError::Head(_))
        ));
        assert!(matches!(
            head("NOPE\r\n\r\n", false),
            Err(CodecError::Head(_))
        ));
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD_BYTES + 1));
        assert_eq!(head(&huge, false).unwrap_err(), CodecError::HeadTooLarge);
    }

    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), CodecError> {
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut body = Vec::new();
        loop {
            match dec.decode(&mut buf)? {
                Chunk::Data(d) => body.extend_from_slice(&d),
                Chunk::Trailers(t) => return Ok((body, Some(t))),
                Chunk::End => return Ok((body, None)),
                Chunk::NeedMore => {
                    if fed == input.len() {
                        return Err(CodecError::Chunked("truncated"));
                    }
                    let next = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let input =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 9\r\n\r\n";
        for step in [1, 2, 3, 7, 64] {
            let (body, trailers) = decode_all(input, step).unwrap();
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert_eq!(trailers.unwrap()["x-sum"], "9");
        }
        let (body, trailers) = decode_all(b"3\r\nabc\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!((body.as_slice(), trailers), (&b"abc"[..], None));
        for bad in [
            &b"x\r\n"[..],
            b"3\r\nabcXY",
            b"3 z\r\n",
            b"1111111111111111\r\n",
        ] {
            assert!(
                matches!(decode_all(bad, 64), Err(CodecError::Chunked(r)) if r != "truncated"),
                "{bad:?}"
            );
        }
    }
}
