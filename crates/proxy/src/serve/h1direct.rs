//! The direct HTTP/1.1 server path: the connection's own task reads each request head, calls
//! the forwarder, and writes the response, with no dispatcher between them.
//!
//! It serves the common request only ([`h1head::parse_request`]): a bodiless HTTP/1.1 head in
//! origin-form that arrived whole. At the first head it does not serve (a body, an upgrade,
//! `Expect`, HEAD, HTTP/1.0, a malformed or oversized head) or one that arrives in pieces with
//! a wait between them, it hands the connection to hyper's server with the bytes it has read,
//! and hyper serves it from there on: its errors (400, 431), its header-read timeout and the
//! stall watch for slow heads, request bodies and upgrades.
//!
//! What hyper's server did that this path does too: keep-alive until the client or the
//! response says `close`; `Connection: close` and a close after the response once the proxy
//! drains; a `Date` header; `Content-Length` or chunked framing from the body; trailers only
//! to a client that sent `TE: trailers` and only those the response declares; a connection
//! closed (and the request's forwarding dropped) when the client closes while it waits for
//! its response; the header-read timeout while a keep-alive connection waits for its next
//! head. Pipelined heads are served in order.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::Response;
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use super::h1head::{self, BodySize, Framing, HeadLimits, Parsed, RequestHead};
use super::recycle::Recycled;
use crate::forward::HttpForward;
use crate::http::ProxyBody;
use crate::limits::ServerLimits;
use crate::limits::idle::IdleConn;
use crate::transport::HeadTimer;

/// Free space made in the read buffer before a read.
const READ_RESERVE: usize = 8 * 1024;
/// Body data up to this size is copied behind the head (or the chunk line) and written with
/// it; larger data is written on its own, uncopied.
const COALESCE: usize = 16 * 1024;
/// Pipelined bytes read while a response is pending, at most: past this the proxy stops
/// reading until the response is written (hyper's server does not read ahead at all).
const READ_AHEAD: usize = 64 * 1024;

/// How the direct path ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// The connection is done: closed by the client, on error, after `Connection: close`, or
    /// drained.
    Closed,
    /// No head arrived within the header-read timeout while the connection was idle.
    TimedOut,
    /// A head this path does not serve: hyper's server takes the connection, reading the
    /// buffer first.
    HandOff,
}

/// One connection's direct serving: what it needs besides the IO and the read buffer.
pub(super) struct DirectServer<'a> {
    pub forward: &'a HttpForward,
    pub idle: &'a IdleConn,
    pub timer: &'a HeadTimer,
    pub limits: &'a ServerLimits,
    /// Raised when the proxy drains or the connection has idled out.
    pub drained: &'a AtomicBool,
}

impl DirectServer<'_> {
    /// Serves requests from `io` until the connection ends or must go to hyper (then `buf`
    /// holds what was read and not served).
    pub async fn serve<IO>(&self, io: &mut IO, buf: &mut BytesMut) -> Ended
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let limits = HeadLimits {
            max_headers: self.limits.max_headers,
            max_head_bytes: self.limits.max_header_bytes,
        };
        let mut out = Vec::with_capacity(1024);
        loop {
            let head = match self.next_head(io, buf, limits).await {
                Ok(head) => head,
                Err(ended) => return ended,
            };
            let in_flight = self.idle.enter();
            let keep_alive = head.keep_alive;
            let trailers = head.trailers;
            let req = head.request.map(|()| crate::client::empty_up_body());
            // On the heap, as hyper's path keeps it (`super::http1`): the forward's future is
            // large, and the recycled box makes it cheap.
            let forwarding = Recycled::new(|| self.forward.clone().handle_up(req));
            let Some(Ok(resp)) = answered(io, buf, forwarding).await else {
                return Ended::Closed;
            };
            let close = !keep_alive || self.drained.load(Relaxed);
            out.clear();
            // A write error ends the connection like a body cut short.
            let whole = write_response(io, &mut out, resp, trailers, close)
                .await
                .unwrap_or(false);
            drop(in_flight);
            if !whole {
                let _ = io.shutdown().await;
                return Ended::Closed;
            }
        }
    }

    /// The next head: parsed from what was read, or read until it is whole without waiting;
    /// a wait with nothing read is a keep-alive connection's idle time, bounded by the
    /// header-read timeout and ended by a drain.
    async fn next_head<IO>(
        &self,
        io: &mut IO,
        buf: &mut BytesMut,
        limits: HeadLimits,
    ) -> Result<RequestHead, Ended>
    where
        IO: AsyncRead + Unpin,
    {
        let mut sleep = None;
        poll_fn(|cx| {
            loop {
                match h1head::parse_request(buf, limits) {
                    Parsed::Request(head) => return Poll::Ready(Ok(head)),
                    Parsed::HandOff => return Poll::Ready(Err(Ended::HandOff)),
                    Parsed::Partial => {}
                }
                match poll_fill(io, cx, buf) {
                    // A client that closes mid-head gets what hyper gave it: nothing.
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(Ended::Closed)),
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Pending => {}
                }
                // A head that has started and must be waited for is hyper's, with its timer.
                if !buf.is_empty() {
                    return Poll::Ready(Err(Ended::HandOff));
                }
                if self.drained.load(Relaxed) {
                    return Poll::Ready(Err(Ended::Closed));
                }
                let sleep = sleep
                    .get_or_insert_with(|| self.timer.head_sleep(self.limits.header_read_timeout));
                if Pin::new(sleep).poll(cx).is_ready() {
                    return Poll::Ready(Err(Ended::TimedOut));
                }
                return Poll::Pending;
            }
        })
        .await
    }
}

/// Runs the request's forwarding to its response, reading ahead meanwhile to see the client
/// close: then the forwarding is dropped (as hyper's server drops its service future) and
/// `None` returned. Bytes read ahead (pipelined heads) stay in `buf`.
async fn answered<IO, F>(io: &mut IO, buf: &mut BytesMut, mut forwarding: F) -> Option<F::Output>
where
    IO: AsyncRead + Unpin,
    F: Future + Unpin,
{
    poll_fn(|cx| {
        if let Poll::Ready(out) = Pin::new(&mut forwarding).poll(cx) {
            return Poll::Ready(Some(out));
        }
        while buf.len() < READ_AHEAD {
            match poll_fill(io, cx, buf) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

/// Reads what the client sent behind what `buf` holds, making room first.
fn poll_fill<IO: AsyncRead + Unpin>(
    io: &mut IO,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_RESERVE / 2 {
        buf.reserve(READ_RESERVE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Writes `resp` (head and body); whether it was written whole with the connection still
/// usable for the next request.
async fn write_response<IO>(
    io: &mut IO,
    out: &mut Vec<u8>,
    resp: Response<ProxyBody>,
    trailers_accepted: bool,
    close: bool,
) -> std::io::Result<bool>
where
    IO: AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let size = if body.is_end_stream() {
        BodySize::Empty
    } else {
        body.size_hint()
            .exact()
            .map_or(BodySize::Unknown, BodySize::Exact)
    };
    let reason = parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| r.as_bytes());
    let (framing, close) =
        h1head::encode_response(&parts, reason, size, trailers_accepted, close, out);
    let whole = match framing {
        Framing::Length(0) => true,
        Framing::Length(n) => write_length(io, out, &mut body, n).await?,
        Framing::Chunked { trailers } => write_chunked(io, out, &mut body, &trailers).await?,
    };
    flush(io, out).await?;
    Ok(whole && !close)
}

/// A body of `Content-Length` bytes: whole only if the body had exactly that many.
async fn write_length<IO>(
    io: &mut IO,
    out: &mut Vec<u8>,
    body: &mut ProxyBody,
    length: u64,
) -> std::io::Result<bool>
where
    IO: AsyncWrite + Unpin,
{
    let mut left = length;
    loop {
        let Some(frame) = next_frame(io, out, body).await? else {
            return Ok(left == 0);
        };
        let Ok(data) = frame.into_data() else {
            // Trailers have no place in a body framed by its length: dropped, as hyper does.
            continue;
        };
        let Some(rest) = left.checked_sub(data.len() as u64) else {
            // More than announced: hyper fails the connection the same way.
            return Ok(false);
        };
        left = rest;
        put(io, out, data).await?;
        if left == 0 && body.is_end_stream() {
            return Ok(true);
        }
    }
}

/// A chunked body, ended by the last chunk (with the allowed trailers, if any came).
async fn write_chunked<IO>(
    io: &mut IO,
    out: &mut Vec<u8>,
    body: &mut ProxyBody,
    allowed: &[http::HeaderName],
) -> std::io::Result<bool>
where
    IO: AsyncWrite + Unpin,
{
    loop {
        let Some(frame) = next_frame(io, out, body).await? else {
            h1head::last_chunk(out, None, allowed);
            return Ok(true);
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => {
                h1head::chunk_head(out, data.len());
                put(io, out, data).await?;
                out.extend_from_slice(b"\r\n");
            }
            Err(frame) => {
                h1head::last_chunk(out, frame.trailers_ref(), allowed);
                return Ok(true);
            }
        }
        if body.is_end_stream() {
            h1head::last_chunk(out, None, allowed);
            return Ok(true);
        }
    }
}

/// The body's next frame; when it is not ready at once, what is buffered is written first.
/// `Ok(None)` at the end; a body error is an `Err` (the connection cannot go on).
async fn next_frame<IO>(
    io: &mut IO,
    out: &mut Vec<u8>,
    body: &mut ProxyBody,
) -> std::io::Result<Option<http_body::Frame<Bytes>>>
where
    IO: AsyncWrite + Unpin,
{
    let polled = match body.frame().now_or_never() {
        Some(polled) => polled,
        None => {
            flush(io, out).await?;
            body.frame().await
        }
    };
    match polled {
        None => Ok(None),
        Some(Ok(frame)) => Ok(Some(frame)),
        Some(Err(e)) => Err(std::io::Error::other(e)),
    }
}

/// Adds `data` to what goes out: copied behind the buffered bytes when small, else written
/// after them as it is.
async fn put<IO>(io: &mut IO, out: &mut Vec<u8>, data: Bytes) -> std::io::Result<()>
where
    IO: AsyncWrite + Unpin,
{
    if data.len() <= COALESCE {
        out.extend_from_slice(&data);
        return Ok(());
    }
    flush(io, out).await?;
    io.write_all(&data).await
}

/// Writes what is buffered and flushes the IO (a TLS stream holds records until flushed).
async fn flush<IO>(io: &mut IO, out: &mut Vec<u8>) -> std::io::Result<()>
where
    IO: AsyncWrite + Unpin,
{
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.flush().await
}

#[cfg(test)]
mod tests;
