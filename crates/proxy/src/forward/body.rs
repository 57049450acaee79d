//! Request bodies that can be sent more than once, and response bodies that hold the request's
//! resources (in-flight count, connection and request slots) until they end.
//!
//! A request may be retried or mirrored only when its body can be replayed: it is empty, or
//! its length is declared (`Content-Length`) and at most [`MAX_REPLAY_BYTES`], in which case it
//! is read whole before the first attempt. A body of unknown length is streamed and never
//! buffered: a bidirectional stream (gRPC) whose client waits for the server before sending
//! more would otherwise deadlock.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::OwnedSemaphorePermit;

use crate::balance::endpoint::InFlight;
use crate::client::UpBody;
use crate::resilience::limits::Slot;

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

pin_project_lite::pin_project! {
    /// A response body that releases [`Held`] when it ends or is dropped.
    #[derive(Debug)]
    pub struct Guarded<B> {
        #[pin]
        inner: B,
        held: Option<Held>,
    }
}

impl<B> Guarded<B> {
    pub fn new(inner: B, held: Held) -> Self {
        Self {
            inner,
            held: Some(held),
        }
    }
}

impl<B: Body> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.held.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
