//! `--idle-timeout`: a downstream HTTP connection with no request in flight for longer than the
//! timeout is closed, HTTP/1 at once and HTTP/2 with GOAWAY (Envoy's `idle_timeout`: "the
//! period in which there are no active requests or streams"; TCP-level activity does not
//! count). A request is in flight from its head until its response body has ended, so a slow
//! upstream or a long download keeps its connection; a client that holds a connection open and
//! sends nothing, or dribbles a request head that never completes, does not.
//!
//! The cost per request is an atomic add when it starts and one when its response ends (plus
//! the reference count of the connection's counter). Each
//! connection gets a sweep task that looks at its count four times per timeout and, after four
//! looks in a row that saw the same idle state, cancels the connection's own shutdown token (a
//! child of the proxy's): the connection then shuts down gracefully as in a drain, and
//! [`IdleConn`] counts `limit="idle_timeout"` when it ends. A connection is therefore closed
//! between one and one and a quarter timeouts after its last response ended.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::Limit;
use crate::telemetry::{Direction, Metrics};

/// How long an HTTP/2 connection closed for idleness may take to finish its graceful GOAWAY
/// (a client has to answer the PING that comes with the first one) before it is dropped;
/// Envoy's default `drain_timeout`.
pub const IDLE_DRAIN: Duration = Duration::from_secs(5);

/// Looks per timeout: the close comes at most a quarter of the timeout late.
const LOOKS: u32 = 4;

/// One request in flight, in the low half of [`Counts::word`]; each request also bumps the
/// high half (a generation), so that a request that came and went between two looks is seen.
const ONE_REQUEST: u64 = 1 | (1 << 32);

#[derive(Debug, Default)]
struct Counts {
    word: AtomicU64,
    /// Set by the sweep when it closed the connection.
    fired: AtomicBool,
}

/// One served connection's idle watch: created when the connection is served, dropped when it
/// ends (which stops the sweep and counts an idle close).
#[derive(Debug)]
pub struct IdleConn {
    counts: Option<Arc<Counts>>,
    token: CancellationToken,
    sweep: Option<AbortHandle>,
    metrics: Arc<Metrics>,
    direction: Direction,
}

impl IdleConn {
    /// Starts watching a connection; `timeout: None` watches nothing (`--idle-timeout off`),
    /// and the connection's token is then `shutdown` itself.
    pub fn start(
        timeout: Option<Duration>,
        shutdown: &CancellationToken,
        metrics: &Arc<Metrics>,
        direction: Direction,
    ) -> Self {
        let mut conn = Self {
            counts: None,
            token: shutdown.clone(),
            sweep: None,
            metrics: metrics.clone(),
            direction,
        };
        let Some(timeout) = timeout else {
            return conn;
        };
        let counts = Arc::new(Counts::default());
        conn.token = shutdown.child_token();
        let task = tokio::spawn(sweep(counts.clone(), timeout, conn.token.clone()));
        conn.sweep = Some(task.abort_handle());
        conn.counts = Some(counts);
        conn
    }

    /// Cancelled when the proxy drains or the connection has been idle too long: serve the
    /// connection until this, then shut it down gracefully.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether the connection is being closed for idleness (rather than for a drain).
    pub fn fired(&self) -> bool {
        self.counts.as_ref().is_some_and(|c| c.fired.load(Relaxed))
    }

    /// Counts one request in flight until the returned guard is dropped (`None` when nothing
    /// is watched): for a request served without [`Self::service`].
    pub fn enter(&self) -> Option<InFlight> {
        self.counts.as_ref().map(InFlight::enter)
    }

    /// `handle` as a hyper service whose requests count as in flight until their response
    /// bodies end.
    pub fn service<F, Fut, B, E>(&self, handle: F) -> TrackIdle<F>
    where
        F: Fn(Request<hyper::body::Incoming>) -> Fut,
        Fut: Future<Output = Result<Response<B>, E>>,
    {
        TrackIdle {
            handle,
            counts: self.counts.clone(),
        }
    }

    /// Runs an HTTP/1 connection's serving to its end, or until it has been found idle before
    /// its first request: then it is dropped, closing the socket. hyper's graceful shutdown
    /// closes a keep-alive connection waiting for its next request, but not one whose first
    /// request head is still arriving (a slow client); such a connection has no response
    /// that could still be in hyper's write buffer, so nothing is lost.
    pub async fn serve_http1<F, E>(&self, serving: F) -> Result<(), E>
    where
        F: Future<Output = Result<(), E>>,
    {
        let Some(counts) = &self.counts else {
            return serving.await;
        };
        let mut serving = std::pin::pin!(serving);
        std::future::poll_fn(|cx| {
            // Zero: no request was ever in flight (not even one that came after the sweep).
            if counts.fired.load(Relaxed) && counts.word.load(Relaxed) == 0 {
                return Poll::Ready(Ok(()));
            }
            serving.as_mut().poll(cx)
        })
        .await
    }

    /// Runs a connection that was shut down gracefully to its end; one shut down for idleness
    /// gets at most [`IDLE_DRAIN`] (a drain has the proxy's own drain timeout).
    pub async fn finish<C, T, E>(&self, conn: Pin<&mut C>) -> Result<(), E>
    where
        C: Future<Output = Result<T, E>>,
    {
        if !self.fired() {
            return conn.await.map(drop);
        }
        match tokio::time::timeout(IDLE_DRAIN, conn).await {
            Ok(res) => res.map(drop),
            // Dropping the connection closes it.
            Err(_) => Ok(()),
        }
    }
}

impl Drop for IdleConn {
    fn drop(&mut self) {
        if let Some(sweep) = self.sweep.take() {
            sweep.abort();
        }
        if self.fired() {
            self.metrics
                .limits
                .rejected(self.direction, Limit::IdleTimeout);
        }
    }
}

/// Cancels `token` once the connection has had no request in flight for `timeout`; runs
/// until then or until the connection ends (its [`IdleConn`] aborts it).
async fn sweep(counts: Arc<Counts>, timeout: Duration, token: CancellationToken) {
    let period = (timeout / LOOKS).max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // A late look must not be followed by a burst of catch-up looks.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = counts.word.load(Relaxed);
    let mut quiet = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            // The proxy is draining: the connection is shutting down anyway.
            _ = token.cancelled() => return,
        }
        let now = counts.word.load(Relaxed);
        // Unchanged and nothing in flight: idle since before the previous look.
        quiet = if now == last && now as u32 == 0 {
            quiet + 1
        } else {
            0
        };
        last = now;
        if quiet >= LOOKS {
            counts.fired.store(true, Relaxed);
            token.cancel();
            return;
        }
    }
}

/// A request in flight; leaves the count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Counts>);

impl InFlight {
    fn enter(counts: &Arc<Counts>) -> Self {
        counts.word.fetch_add(ONE_REQUEST, Relaxed);
        Self(counts.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Only the low half: the generation stays bumped.
        self.0.word.fetch_sub(1, Relaxed);
    }
}

/// A connection's service: counts each request in flight until its response body ends.
#[derive(Debug, Clone)]
pub struct TrackIdle<F> {
    handle: F,
    counts: Option<Arc<Counts>>,
}

impl<F, Fut, B, E> hyper::service::Service<Request<hyper::body::Incoming>> for TrackIdle<F>
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut,
    Fut: Future<Output = Result<Response<B>, E>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = E;
    type Future = Tracked<Fut>;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        let in_flight = self.counts.as_ref().map(InFlight::enter);
        Tracked {
            inner: (self.handle)(req),
            in_flight,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's handling, counted in flight; its response body carries the count on.
    pub struct Tracked<Fut> {
        #[pin]
        inner: Fut,
        in_flight: Option<InFlight>,
    }
}

impl<Fut, B, E> Future for Tracked<Fut>
where
    Fut: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = std::task::ready!(this.inner.poll(cx))?;
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(resp.map(|inner| TrackedBody { inner, in_flight })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it ends or is dropped.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.in_flight.take();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(timeout: Duration) -> (IdleConn, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let conn = IdleConn::start(
            Some(timeout),
            &CancellationToken::new(),
            &metrics,
            Direction::Inbound,
        );
        (conn, metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_cut_after_the_timeout() {
        let (conn, metrics) = watch(Duration::from_secs(8));
        tokio::time::sleep(Duration::from_millis(7900)).await;
        assert!(!conn.token().is_cancelled(), "not before the timeout");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            conn.token().is_cancelled(),
            "within a quarter timeout after it"
        );
        assert!(conn.fired());
        drop(conn);
        assert_eq!(
            metrics
                .limits
                .rejected_count(Direction::Inbound, Limit::IdleTimeout),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_and_frequent_requests_keep_it() {
        let (conn, metrics) = watch(Duration::from_secs(8));
        let counts = conn.counts.clone().unwrap();
        // One long request: in flight across many timeouts.
        let long = InFlight::enter(&counts);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!conn.token().is_cancelled());
        drop(long);
        // Short requests more often than the timeout, each between two looks.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(InFlight::enter(&counts));
        }
        assert!(!conn.token().is_cancelled());
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(conn.token().is_cancelled(), "idle at last");
        drop(conn);
        assert_eq!(
            metrics
                .limits
                .rejected_count(Direction::Inbound, Limit::IdleTimeout),
            1
        );
    }

    #[tokio::test]
    async fn off_watches_nothing_and_a_drain_is_not_counted() {
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let off = IdleConn::start(None, &shutdown, &metrics, Direction::Outbound);
        let on = IdleConn::start(
            Some(Duration::from_secs(60)),
            &shutdown,
            &metrics,
            Direction::Outbound,
        );
        shutdown.cancel();
        assert!(off.token().is_cancelled() && on.token().is_cancelled());
        drop((off, on));
        assert_eq!(
            metrics
                .limits
                .rejected_count(Direction::Outbound, Limit::IdleTimeout),
            0
        );
    }
}
