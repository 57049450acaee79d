//! A request body that can be sent again (Linkerd's `ReplayBody`): the first attempt streams
//! the downstream body as it arrives while a copy of up to [`MAX_REPLAY_BYTES`] is kept; a
//! retry replays the copy and then goes on reading the downstream body where the previous
//! attempt stopped. Past the limit the copy is dropped and the request can no longer be
//! retried. Nothing waits for the whole body before the first attempt, so streams (gRPC,
//! chunked uploads) are never held back.
//!
//! A retry is possible when the body was read to its end within the limit, or when no attempt
//! holds the rest of it (a connect failure never touched it; a finished attempt gave it back).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::body::MAX_REPLAY_BYTES;
use crate::client::{UpBody, UpBodyError};

#[derive(Debug)]
struct State {
    /// The rest of the downstream body, when no attempt is reading it.
    rest: Option<UpBody>,
    /// Everything read so far, while within the limit.
    chunks: Vec<Bytes>,
    len: u64,
    trailers: Option<HeaderMap>,
    /// The downstream body has ended.
    complete: bool,
    /// More than the limit was read: the copy is gone.
    overflow: bool,
    hint: SizeHint,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // Critical sections only move values in and out; a panic cannot leave them torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The shared body of one request's attempts.
#[derive(Clone, Debug)]
pub struct Replay {
    state: Arc<Mutex<State>>,
}

impl Replay {
    pub fn new(body: UpBody) -> Self {
        let hint = body.size_hint();
        Self {
            state: Arc::new(Mutex::new(State {
                rest: Some(body),
                chunks: Vec::new(),
                len: 0,
                trailers: None,
                complete: false,
                overflow: false,
                hint,
            })),
        }
    }

    /// Whether another attempt can send the whole body.
    pub fn can_replay(&self) -> bool {
        let s = lock(&self.state);
        !s.overflow && (s.complete || s.rest.is_some())
    }

    /// The body for the next attempt.
    pub fn attempt(&self) -> ReplayBody {
        ReplayBody {
            state: self.state.clone(),
            next_chunk: 0,
            rest: None,
            trailers_sent: false,
        }
    }
}

/// One attempt's view of the body: the copy first, then the downstream body.
#[derive(Debug)]
pub struct ReplayBody {
    state: Arc<Mutex<State>>,
    next_chunk: usize,
    /// The downstream body while this attempt reads it.
    rest: Option<UpBody>,
    trailers_sent: bool,
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        if let Some(rest) = self.rest.take() {
            lock(&self.state).rest = Some(rest);
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = UpBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpBodyError>>> {
        let this = &mut *self;
        {
            let mut s = lock(&this.state);
            if !s.overflow && this.next_chunk < s.chunks.len() {
                let chunk = s.chunks[this.next_chunk].clone();
                this.next_chunk += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if s.complete {
                if !this.trailers_sent
                    && let Some(t) = &s.trailers
                {
                    this.trailers_sent = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
                }
                return Poll::Ready(None);
            }
            if this.rest.is_none() {
                this.rest = s.rest.take();
            }
        }
        // Another attempt still holds the rest: this one cannot go on. `can_replay` keeps
        // retries from getting here; end the body rather than send a wrong one.
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *rest).poll_frame(cx);
        // HTTP/2 knows the body ended with its last DATA frame (END_STREAM on it). Saying so
        // now lets the upstream connection put END_STREAM on this frame; otherwise it sends
        // the frame without it and an empty one after, and a peer that sees an empty DATA
        // frame without END_STREAM per request calls it a flood after a hundred (h2's
        // GOAWAY ENHANCE_YOUR_CALM), failing every stream on the connection.
        let ended = matches!(polled, Poll::Ready(Some(Ok(_)))) && rest.is_end_stream();
        let mut s = lock(&this.state);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                s.complete |= ended;
                if let Some(data) = frame.data_ref() {
                    s.len += data.len() as u64;
                    if s.len > MAX_REPLAY_BYTES {
                        s.overflow = true;
                        s.chunks = Vec::new();
                    } else if !s.overflow {
                        s.chunks.push(data.clone());
                        this.next_chunk = s.chunks.len();
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    s.complete = true;
                    this.trailers_sent = true;
                }
            }
            Poll::Ready(None) => s.complete = true,
            // An error ends this attempt; the body cannot be replayed past it.
            Poll::Ready(Some(Err(_))) => s.overflow = true,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.state);
        s.complete
            && (s.overflow || self.next_chunk >= s.chunks.len())
            && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.state).hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    fn streamed(chunks: &[&'static [u8]], trailers: bool) -> UpBody {
        let mut frames: Vec<Result<Frame<Bytes>, UpBodyError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("x-checksum", http::HeaderValue::from_static("abc"));
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    async fn read(body: ReplayBody) -> (Bytes, Option<HeaderMap>) {
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    #[tokio::test]
    async fn a_read_body_replays_with_its_trailers() {
        let replay = Replay::new(streamed(&[b"hel", b"lo"], true));
        let (first, t1) = read(replay.attempt()).await;
        assert_eq!(&first[..], b"hello");
        assert!(replay.can_replay());
        let (second, t2) = read(replay.attempt()).await;
        assert_eq!(&second[..], b"hello");
        assert_eq!(t1, t2);
        assert_eq!(t2.unwrap()["x-checksum"], "abc");
    }

    #[tokio::test]
    async fn an_untouched_body_goes_to_the_next_attempt() {
        let replay = Replay::new(streamed(&[b"abc"], false));
        drop(replay.attempt()); // a connect failure: never polled
        assert!(replay.can_replay());
        assert_eq!(&read(replay.attempt()).await.0[..], b"abc");
    }

    #[tokio::test]
    async fn a_partly_read_body_is_replayed_then_continued() {
        let replay = Replay::new(streamed(&[b"one-", b"two-", b"three"], false));
        let mut first = replay.attempt();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap(), &b"one-"[..]);
        assert!(
            !replay.can_replay(),
            "the first attempt still holds the rest"
        );
        drop(first);
        assert!(replay.can_replay());
        assert_eq!(&read(replay.attempt()).await.0[..], b"one-two-three");
    }

    #[tokio::test]
    async fn the_end_is_known_with_the_last_frame() {
        let replay = Replay::new(
            Full::new(Bytes::from_static(b"msg"))
                .map_err(|n| match n {})
                .boxed(),
        );
        let mut first = replay.attempt();
        assert!(!first.is_end_stream());
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap(), &b"msg"[..]);
        assert!(
            first.is_end_stream(),
            "the upstream must be able to end the stream with this frame"
        );
        drop(first);
        assert!(replay.can_replay());
        let mut second = replay.attempt();
        assert_eq!(
            second.frame().await.unwrap().unwrap().data_ref().unwrap(),
            &b"msg"[..]
        );
        assert!(second.is_end_stream());
    }

    #[tokio::test]
    async fn past_the_limit_there_is_no_replay() {
        let big = vec![b'x'; MAX_REPLAY_BYTES as usize + 1];
        let replay = Replay::new(Full::new(Bytes::from(big)).map_err(|n| match n {}).boxed());
        let (first, _) = read(replay.attempt()).await;
        assert_eq!(first.len() as u64, MAX_REPLAY_BYTES + 1);
        assert!(!replay.can_replay());
    }
}
