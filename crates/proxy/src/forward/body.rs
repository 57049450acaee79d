//! Request bodies that can be sent more than once, and response bodies that hold the request's
//! resources (in-flight count, connection and request slots) until they end.
//!
//! A request may be retried or mirrored only when its body can be replayed: it is empty, or
//! its length is declared (`Content-Length`) and at most [`MAX_REPLAY_BYTES`], in which case it
//! is read whole before the first attempt. A body of unknown length is streamed and never
//! buffered: a bidirectional stream (gRPC) whose client waits for the server before sending
//! more would otherwise deadlock.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::OwnedSemaphorePermit;

use crate::balance::endpoint::InFlight;
use crate::client::UpBody;
use crate::http::BoxError;
use crate::resilience::limits::Slot;
use crate::telemetry::{Direction, Metrics};

/// The largest request body kept for a retry or a mirror.
pub const MAX_REPLAY_BYTES: u64 = 64 * 1024;

/// A request body ready for one or more attempts.
#[derive(Debug)]
pub enum ReqBody {
    Empty,
    Buffered(Bytes),
    /// Sent once; later attempts get `None`.
    Stream(Option<UpBody>),
}

impl ReqBody {
    /// Reads a replayable body whole when `replay` is wanted; streams anything else.
    pub async fn prepare(body: UpBody, replay: bool) -> Result<Self, hyper::Error> {
        if body.is_end_stream() {
            return Ok(Self::Empty);
        }
        let small = body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= MAX_REPLAY_BYTES);
        if !(replay && small) {
            return Ok(Self::Stream(Some(body)));
        }
        Ok(Self::Buffered(body.collect().await?.to_bytes()))
    }

    pub fn replayable(&self) -> bool {
        !matches!(self, Self::Stream(_))
    }

    /// The body for the next attempt; `None` once a streamed body has been sent.
    pub fn for_attempt(&mut self) -> Option<UpBody> {
        match self {
            Self::Empty => Some(Empty::new().map_err(|never| match never {}).boxed()),
            Self::Buffered(b) => Some(Full::new(b.clone()).map_err(|never| match never {}).boxed()),
            Self::Stream(s) => s.take(),
        }
    }
}

/// What a response holds on to until its body ends.
#[derive(Debug, Default)]
pub struct Held {
    pub in_flight: Option<InFlight>,
    pub connection: Option<OwnedSemaphorePermit>,
    pub request: Option<Slot>,
}

/// The request timeout still running while the response body streams (Envoy's route timeout
/// lasts until the response is complete).
#[derive(Debug)]
pub struct BodyDeadline {
    pub sleep: Pin<Box<tokio::time::Sleep>>,
    /// gRPC: end the stream with `grpc-status: 4` trailers; otherwise fail it (the connection
    /// or stream is reset, so a truncated body is never taken for a whole one).
    pub grpc: bool,
    /// Where the expiry is counted (`trellis_request_timeouts_total`).
    pub metrics: Arc<Metrics>,
    pub direction: Direction,
}

/// The request timeout ran out while the response body was streaming.
#[derive(Debug, thiserror::Error)]
#[error("request timeout while streaming the response body")]
pub struct BodyTimeout;

pin_project_lite::pin_project! {
    /// A response body that releases [`Held`] when it ends or is dropped, and ends at the
    /// request's deadline if it has one.
    #[derive(Debug)]
    pub struct Guarded<B> {
        #[pin]
        inner: B,
        held: Option<Held>,
        deadline: Option<BodyDeadline>,
        done: bool,
    }
}

impl<B> Guarded<B> {
    pub fn new(inner: B, held: Held, deadline: Option<BodyDeadline>) -> Self {
        Self {
            inner,
            held: Some(held),
            deadline,
            done: false,
        }
    }
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if let Some(d) = this.deadline.as_mut()
            && d.sleep.as_mut().poll(cx).is_ready()
        {
            this.held.take();
            *this.done = true;
            let Some(d) = this.deadline.take() else {
                return Poll::Ready(None);
            };
            d.metrics.request_timeout(d.direction);
            if d.grpc {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from(4u32));
                trailers.insert(
                    "grpc-message",
                    http::HeaderValue::from_static("deadline exceeded"),
                );
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.held.take();
            this.deadline.take();
        }
        polled.map(|f| f.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
