//! `--max-request-body-size` for request bodies whose length is not declared (HTTP/1.1
//! chunked, HTTP/2 DATA frames without `content-length`): the body is counted as it streams and
//! cut at the limit. A declared length over the limit is refused before anything is sent
//! ([`super::admit`]); a declared length within it needs no counting (hyper holds the peer to
//! it), so only bodies of unknown length are wrapped.
//!
//! Nothing over the limit reaches the upstream: the frame that would cross it is not forwarded.
//! There the body fails towards the upstream with the proxy's own
//! [`UpBodyError::TooLarge`], which resets the upstream request (the HTTP/1
//! connection is closed, the HTTP/2 stream reset), and the request is counted once as
//! `limit="body_size_streamed"`:
//! - If the response head had not come back yet (the usual case: an upstream reads the body
//!   before it answers), whatever the forwarding made of the reset is replaced by
//!   413 `request body too large` ([`BodyCap::answer`]).
//! - Otherwise (an upstream that answered before reading the body, such as an echo), the
//!   response streaming back fails with the upstream request, so the client sees its response
//!   cut (HTTP/1 connection closed, HTTP/2 stream reset), never one that looks complete.
//!
//! A retry of the request replays at most what was forwarded and then fails the same way.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::Limit;
use crate::client::{UpBody, UpBodyError};
use crate::http::{ProxyBody, error_response};
use crate::telemetry::{Direction, Metrics};

/// Wraps `req`'s body so that at most `max` bytes of it are forwarded, when its length is not
/// known to fit (see the module docs). Without a limit the request is returned as it was.
pub fn cap(
    max: Option<u64>,
    metrics: &Arc<Metrics>,
    direction: Direction,
    req: Request<UpBody>,
) -> (Request<UpBody>, BodyCap) {
    let Some(max) = max.filter(|max| !fits(req.body(), *max)) else {
        return (req, BodyCap(None));
    };
    let tripped = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        CappedBody {
            inner: Some(body),
            seen: 0,
            max,
            tripped: tripped.clone(),
            metrics: metrics.clone(),
            direction,
        }
        .boxed()
    });
    (req, BodyCap(Some(tripped)))
}

/// Whether `body` is known to end within `max` bytes.
fn fits(body: &UpBody, max: u64) -> bool {
    body.is_end_stream() || body.size_hint().upper().is_some_and(|n| n <= max)
}

/// What [`cap`] left with the handler: whether the body was cut.
#[derive(Debug)]
pub struct BodyCap(Option<Arc<AtomicBool>>);

impl BodyCap {
    /// The response for the client: 413 if the body was cut before `resp` came back (it is
    /// then the forwarding's answer to the reset, not the upstream's to the request).
    pub fn answer(&self, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        match &self.0 {
            Some(tripped) if tripped.load(Ordering::Acquire) => {
                error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            }
            _ => resp,
        }
    }
}

/// A request body that forwards at most `max` bytes of data.
struct CappedBody {
    /// The downstream body; handed to [`drain`] at the trip.
    inner: Option<UpBody>,
    seen: u64,
    max: u64,
    tripped: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    direction: Direction,
}

impl CappedBody {
    /// The body's end after the trip, on every poll (a retry polls it again): an error, so
    /// that the upstream request is reset rather than ended as if the body were whole. A
    /// plain enum value: nothing is allocated.
    fn cut(&self) -> Poll<Option<Result<Frame<Bytes>, UpBodyError>>> {
        Poll::Ready(Some(Err(UpBodyError::TooLarge { max: self.max })))
    }
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = UpBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpBodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return this.cut();
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            this.seen = this.seen.saturating_add(data.len() as u64);
            if this.seen > this.max {
                if let Some(rest) = this.inner.take() {
                    drain(rest);
                }
                // Raised before the error leaves, so the handler sees it when the
                // forwarding comes back with the reset.
                this.tripped.store(true, Ordering::Release);
                this.metrics
                    .limits
                    .rejected(this.direction, Limit::BodySizeStreamed);
                return this.cut();
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_some_and(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(SizeHint::default, |b| b.size_hint())
    }
}

/// After the cut, the rest of the downstream body is read and thrown away for a while (at
/// most [`DRAIN_BYTES`] within [`DRAIN_TIME`]) before it is dropped. Dropping it at once
/// makes the downstream connection reset the request while the client is still sending (an
/// HTTP/2 `RST_STREAM`, an HTTP/1 close with unread data), and clients such as curl then lose
/// the 413 that was sent just before; a client that keeps sending past the bound is cut.
fn drain(mut rest: UpBody) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let discard = async {
            let mut read = 0u64;
            while let Some(Ok(frame)) = rest.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > DRAIN_BYTES {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
    });
}

/// How much of a cut body is read and thrown away at most ([`drain`]).
const DRAIN_BYTES: u64 = 1 << 20;
/// How long a cut body is read and thrown away at most ([`drain`]).
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn chunks(n: usize, size: usize) -> UpBody {
        let frames = (0..n).map(move |_| Ok(Frame::data(Bytes::from(vec![b'x'; size]))));
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    /// Forwards by reading the whole body, as an upstream that answers after it would.
    async fn read_all(req: Request<UpBody>) -> (Response<ProxyBody>, u64) {
        let mut body = req.into_body();
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => got += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => return (error_response(StatusCode::BAD_GATEWAY, "reset"), got),
            }
        }
        (
            Response::new(
                http_body_util::Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed(),
            ),
            got,
        )
    }

    /// Sends `n` chunks of 100 bytes with a limit of 1000; returns the status and how much
    /// the upstream read.
    async fn send(metrics: &Arc<Metrics>, n: usize) -> (u16, u64) {
        let forwarded = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = forwarded.clone();
        let req = Request::new(chunks(n, 100));
        let (req, cap) = cap(Some(1000), metrics, Direction::Inbound, req);
        let (resp, got) = read_all(req).await;
        seen.store(got, Ordering::Relaxed);
        (
            cap.answer(resp).status().as_u16(),
            forwarded.load(Ordering::Relaxed),
        )
    }

    /// The cut is the proxy's own error, the same on every poll (a retry polls again).
    #[tokio::test]
    async fn the_cut_says_why_on_every_poll() {
        let metrics = Arc::new(Metrics::default());
        let (req, _cap) = cap(
            Some(150),
            &metrics,
            Direction::Outbound,
            Request::new(chunks(3, 100)),
        );
        let mut body = req.into_body();
        assert!(
            matches!(body.frame().await, Some(Ok(_))),
            "within the limit"
        );
        for _ in 0..2 {
            match body.frame().await {
                Some(Err(UpBodyError::TooLarge { max: 150 })) => {}
                other => panic!("expected the cut, got {other:?}"),
            }
        }
        assert_eq!(
            metrics
                .limits
                .rejected_count(Direction::Outbound, Limit::BodySizeStreamed),
            1,
            "counted once"
        );
    }

    #[tokio::test]
    async fn bodies_of_unknown_length_are_cut_at_the_limit() {
        let metrics = Arc::new(Metrics::default());
        assert_eq!(send(&metrics, 10).await, (200, 1000), "at the limit");
        let (status, forwarded) = send(&metrics, 11).await;
        assert_eq!(status, 413, "one chunk over");
        assert_eq!(forwarded, 1000, "the chunk over the limit is not forwarded");
        assert_eq!(
            metrics
                .limits
                .rejected_count(Direction::Inbound, Limit::BodySizeStreamed),
            1
        );
        // No limit: the whole body goes through.
        let (req, none) = cap(
            None,
            &metrics,
            Direction::Inbound,
            Request::new(chunks(20, 100)),
        );
        let (resp, got) = read_all(req).await;
        assert_eq!((none.answer(resp).status().as_u16(), got), (200, 2000));
        // A declared length within the limit is not wrapped (hyper holds the peer to it).
        let known = Request::new(
            http_body_util::Full::new(Bytes::from(vec![0; 500]))
                .map_err(|never| match never {})
                .boxed(),
        );
        let (req, fits) = cap(Some(1000), &metrics, Direction::Inbound, known);
        assert!(fits.0.is_none() && req.body().size_hint().exact() == Some(500));
    }
}
