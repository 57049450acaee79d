//! The HTTP/1.1 server codec of the direct downstream path ([`super::h1direct`]), as pure
//! functions over bytes: a request head parsed (RFC 9112 §3, §5), and a response head written
//! with the framing its body needs (§6), as hyper's server writes them. No I/O, so it is
//! fuzzed on its own (`fuzz/src/h1_request.rs`).
//!
//! Only the common request is taken: an HTTP/1.1 head in origin-form with no body, no
//! `Expect` and no upgrade, within the proxy's header limits. Anything else, malformed heads
//! included, is [`Parsed::HandOff`]: hyper's server takes the connection from there on and
//! answers it as it always did (400, 431, `100 Continue`, bodies, upgrades).

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::response::Parts;
use http::{Method, Request, StatusCode, Uri};

use crate::client::h1codec::{Span, content_length, span, tokens};

/// The most request headers parsed here; a head with more goes to hyper, which applies
/// `--max-request-headers` whatever it is.
const MAX_PARSED_HEADERS: usize = 100;

/// A request head taken off the front of the buffer.
#[derive(Debug)]
pub struct RequestHead {
    pub request: Request<()>,
    /// The client did not ask to close (`Connection: close`).
    pub keep_alive: bool,
    /// The client accepts trailers (`TE: trailers`): only then are a chunked response's
    /// trailers written, as hyper does.
    pub trailers: bool,
}

/// What the front of the buffer holds.
// Returned once per head and matched at once: boxing the head would cost an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed {
    /// A whole head this path serves; its bytes have left the buffer.
    Request(RequestHead),
    /// Not a whole head yet.
    Partial,
    /// A head (or bytes) this path does not serve: hand the connection to hyper.
    HandOff,
}

/// The limits a head must be within to be served here (otherwise hyper refuses it).
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub max_headers: usize,
    pub max_head_bytes: usize,
}

/// Parses one request head from the front of `buf`.
pub fn parse_request(buf: &mut BytesMut, limits: HeadLimits) -> Parsed {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_PARSED_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) if len <= limits.max_head_bytes => len,
        Ok(httparse::Status::Partial) if buf.len() < limits.max_head_bytes => {
            return Parsed::Partial;
        }
        // Too large, too many headers, or malformed: hyper says which.
        _ => return Parsed::HandOff,
    };
    if parsed.version != Some(1) || parsed.headers.len() > limits.max_headers {
        return Parsed::HandOff;
    }
    let Some(method) = parsed
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
    else {
        return Parsed::HandOff;
    };
    // HEAD's framing rules and CONNECT's tunnel stay with hyper.
    if method == Method::HEAD || method == Method::CONNECT {
        return Parsed::HandOff;
    }
    let Some(path) = parsed.path.filter(|p| p.starts_with('/')) else {
        return Parsed::HandOff;
    };
    let base = buf.as_ptr() as usize;
    let path_span = span(base, path.as_bytes());
    let mut spans: Vec<Span> = Vec::with_capacity(parsed.headers.len());
    let mut keep_alive = true;
    let mut trailers = false;
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::HandOff;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::HandOff;
                }
                keep_alive &= !token.eq_ignore_ascii_case(b"close");
            }
        } else if name.eq_ignore_ascii_case(b"te") {
            trailers |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
        }
        spans.push(Span {
            name: span(base, name),
            value: span(base, h.value),
        });
    }
    // Nothing below can fail on bytes httparse accepted, except the header and URI rules of
    // the `http` crate, which hyper applies too (and then answers 400).
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path_span)) else {
        return restore(buf, head);
    };
    let mut headers = HeaderMap::with_capacity(spans.len());
    for Span { name, value } in spans {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[name]),
            HeaderValue::from_maybe_shared(head.slice(value)),
        ) else {
            return restore(buf, head);
        };
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Parsed::Request(RequestHead {
        request,
        keep_alive,
        trailers,
    })
}

/// Puts a head that turned out not to be servable back in front of the buffer for hyper.
fn restore(buf: &mut BytesMut, head: Bytes) -> Parsed {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
    Parsed::HandOff
}

/// What is known of a response body's length before it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodySize {
    /// Known to be empty.
    Empty,
    Exact(u64),
    Unknown,
}

/// How the response body goes on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0: none, as for 204 and 304).
    Length(u64),
    /// Chunked; trailers with these names are written if the body has them (none: dropped).
    Chunked { trailers: Vec<HeaderName> },
}

/// Writes a response head for a request (not HEAD or CONNECT) as hyper's server does: the
/// status line with the canonical reason (or `reason`), the headers as they are, then the
/// framing (`Content-Length` from the body's size, else `Transfer-Encoding: chunked`), and
/// `Date` when absent. `close` adds `Connection: close`. Returns the framing and whether the
/// connection must close after this response (also when the response says so).
pub fn encode_response(
    parts: &Parts,
    reason: Option<&[u8]>,
    size: BodySize,
    trailers_accepted: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let status = parts.status;
    // The proxy never answers with 1xx here (hyper's client consumes them); hyper's server
    // refuses one the same way.
    let (status, headers, size) = if status.is_informational() {
        (StatusCode::INTERNAL_SERVER_ERROR, None, BodySize::Empty)
    } else {
        (status, Some(&parts.headers), size)
    };
    let mut close = close || headers.is_none();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    match reason {
        Some(reason) if headers.is_some() => out.extend_from_slice(reason),
        _ => out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    let can_have_body = !matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let mut framing = None;
    let mut wrote_date = false;
    let mut wrote_close = false;
    let mut trailer_names = Vec::new();
    for (name, value) in headers.into_iter().flatten() {
        match *name {
            header::CONTENT_LENGTH => {
                // The first valid one frames the body; a known-empty body drops it (for 304
                // and 204 too), as hyper does, and gets `content-length: 0` below if it may.
                if framing.is_some() || size == BodySize::Empty {
                    continue;
                }
                match content_length(value.as_bytes()) {
                    Ok(n) if status != StatusCode::NO_CONTENT => framing = Some(Framing::Length(n)),
                    _ => continue,
                }
            }
            header::TRANSFER_ENCODING => {
                if !can_have_body || framing.is_some() {
                    continue;
                }
                framing = Some(Framing::Chunked {
                    trailers: Vec::new(),
                });
                out.extend_from_slice(b"transfer-encoding: ");
                out.extend_from_slice(value.as_bytes());
                let ends_chunked = tokens(value.as_bytes())
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
                out.extend_from_slice(if ends_chunked {
                    b"\r\n"
                } else {
                    b", chunked\r\n"
                });
                continue;
            }
            header::CONNECTION => {
                let says_close = tokens(value.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close"));
                close |= says_close;
                wrote_close |= says_close;
            }
            header::DATE => wrote_date = true,
            header::TRAILER => {
                if !can_have_body {
                    continue;
                }
                trailer_names.extend(
                    tokens(value.as_bytes()).filter_map(|n| HeaderName::from_bytes(n).ok()),
                );
            }
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = match framing {
        _ if !can_have_body => {
            if status == StatusCode::NOT_MODIFIED
                && let BodySize::Exact(n) = size
                && !parts.headers.contains_key(header::CONTENT_LENGTH)
            {
                write_length(out, n);
            }
            Framing::Length(0)
        }
        Some(Framing::Chunked { .. }) => Framing::Chunked {
            trailers: allowed_trailers(trailers_accepted, trailer_names),
        },
        Some(framing) => framing,
        None => match size {
            BodySize::Empty => {
                write_length(out, 0);
                Framing::Length(0)
            }
            BodySize::Exact(n) => {
                write_length(out, n);
                Framing::Length(n)
            }
            BodySize::Unknown => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked {
                    trailers: allowed_trailers(trailers_accepted, trailer_names),
                }
            }
        },
    };
    if close && !wrote_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        extend_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, close)
}

fn allowed_trailers(accepted: bool, declared: Vec<HeaderName>) -> Vec<HeaderName> {
    if accepted { declared } else { Vec::new() }
}

fn write_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes one chunk's size line.
pub fn chunk_head(out: &mut Vec<u8>, len: usize) {
    use std::io::Write as _;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{len:x}\r\n");
}

/// The last chunk, with the trailers among `fields` that `allowed` names (RFC 9112 §7.1.2).
pub fn last_chunk(out: &mut Vec<u8>, fields: Option<&HeaderMap>, allowed: &[HeaderName]) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in fields.into_iter().flatten() {
        if allowed.contains(name) && may_trail(name) {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Fields that must not be sent as trailers (RFC 9110 §6.5.1: framing, routing, controls).
fn may_trail(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TE
            | header::TRAILER
            | header::TRANSFER_ENCODING
    )
}

/// Appends the current time as an HTTP date (RFC 9110 §5.6.7), formatted once a second per
/// thread, as hyper caches it.
fn extend_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests;
