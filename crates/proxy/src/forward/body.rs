//! Request bodies that can be sent more than once, and response bodies that hold the request's
//! resources (in-flight count, connection and request slots) until they end.
//!
//! A request that may be retried streams its body through a [`Replay`], which keeps a copy of
//! up to [`MAX_REPLAY_BYTES`] while the first attempt sends it. A request with mirrors needs
//! the whole body before the copies go out, so it is read first, but only when it is empty or
//! its declared length (`Content-Length`) is within the same limit; waiting for a body of
//! unknown length could deadlock a bidirectional stream whose client waits for the server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tokio::sync::OwnedSemaphorePermit;

use super::replay::Replay;
use crate::balance::endpoint::InFlight;
use crate::client::{UpBody, UpBodyError};
use crate::http::BoxError;
use crate::resilience::limits::Slot;
use crate::telemetry::{Direction, Metrics};

/// The largest request body kept for a retry or a mirror.
pub const MAX_REPLAY_BYTES: u64 = 64 * 1024;

/// A request body ready for one or more attempts.
#[derive(Debug)]
pub enum ReqBody {
    Empty,
    /// Read whole first (a request with mirrors).
    Buffered(Bytes),
    /// Streamed, with a copy kept for retries.
    Replay(Replay),
    /// Sent once; later attempts get `None`.
    Stream(Option<UpBody>),
}

impl ReqBody {
    /// Chooses how to carry `body`: see the module docs.
    pub async fn prepare(body: UpBody, retries: bool, mirrors: bool) -> Result<Self, UpBodyError> {
        if body.is_end_stream() {
            return Ok(Self::Empty);
        }
        let small = body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= MAX_REPLAY_BYTES);
        if mirrors && small {
            return Ok(Self::Buffered(body.collect().await?.to_bytes()));
        }
        if retries {
            return Ok(Self::Replay(Replay::new(body)));
        }
        Ok(Self::Stream(Some(body)))
    }

    /// Whether another attempt can send the whole body.
    pub fn replayable(&self) -> bool {
        match self {
            Self::Empty | Self::Buffered(_) => true,
            Self::Replay(r) => r.can_replay(),
            Self::Stream(_) => false,
        }
    }

    /// The whole body, when it is known before any attempt (what mirrors can copy).
    pub fn known(&self) -> Option<Bytes> {
        match self {
            Self::Empty => Some(Bytes::new()),
            Self::Buffered(b) => Some(b.clone()),
            Self::Replay(_) | Self::Stream(_) => None,
        }
    }

    /// The body for the next attempt; `None` when it cannot be sent (again).
    pub fn for_attempt(&mut self) -> Option<UpBody> {
        match self {
            Self::Empty => Some(crate::client::empty_up_body()),
            Self::Buffered(b) => Some(Full::new(b.clone()).map_err(|never| match never {}).boxed()),
            Self::Replay(r) => r.can_replay().then(|| r.attempt().boxed()),
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
