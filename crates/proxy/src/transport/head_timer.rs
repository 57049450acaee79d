//! The timer behind hyper's HTTP/1 header-read timeout on server connections, made cheap,
//! spread, and aware of whether a timed-out head had started.
//!
//! - **Cheap.** hyper arms the timeout every time it waits for a request head (30 s by
//!   default): with `TokioTimer` that is a new boxed `tokio::time::Sleep` per request,
//!   registered in the timer wheel on its first poll and removed again when the head has
//!   arrived, about 1.2k instructions per request on a keep-alive connection. [`HeadTimer`]
//!   keeps one tokio sleep per connection instead. Each request's [`HeadSleep`] only remembers
//!   its deadline; the connection's sleep stays registered, and since deadlines only move later,
//!   it fires at most once per timeout period early (a spurious wake of the connection, which
//!   then re-arms it for the current deadline). A head's wait that finds that sleep still
//!   registered to wake this connection's task leaves it be instead of polling it again.
//! - **Spread.** Each connection's deadlines are pushed later by its own share of up to
//!   [`SPREAD_PERCENT`] of the timeout (shares from a low-discrepancy sequence over the
//!   connections, so any run of consecutive connections covers the range evenly). A slowloris
//!   opens its hundreds of connections together; with one deadline they all time out on the
//!   same tick, and their closes and the attacker's reconnects arrive as one burst that
//!   queues ahead of other clients' requests. No head is cut earlier than the configured
//!   timeout.
//! - **Aware.** [`HeadTimer::watch`] wraps the connection's IO to note whether bytes were read
//!   since the proxy last wrote: when the timeout ends the connection, that tells a head that
//!   had started (a slow client, an offence for [`crate::limits::penalty`]) from a keep-alive
//!   connection that sat idle (no offence). One relaxed store per read or write.
//! - **Watching for stalls** ([`HeadTimer::watching`]). A head that a read finds unfinished,
//!   and a read at least [`crate::limits::penalty::stall_after`] later still finds unfinished,
//!   is stalled: counted against its address while it stays so
//!   ([`crate::limits::penalty::AbusivePeers::head_stalled`]; enough of them at once penalize
//!   the address). A stalled head from a penalized address is ended at that read, as if its
//!   header read timeout had passed. hyper polls the head's sleep only when a read leaves the
//!   head unfinished, so a head that arrives whole costs nothing here.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::limits::Admission;
use crate::limits::penalty::{StalledHead, stall_after};

/// The largest share of the timeout a connection's deadlines are pushed later by.
pub const SPREAD_PERCENT: u32 = 15;

/// Connections given a timer so far: the index into the spread's sequence.
static CONNECTIONS: AtomicU32 = AtomicU32::new(0);

/// One connection's timer: give each server connection its own (`HeadTimer::default()`).
#[derive(Clone, Debug)]
pub struct HeadTimer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    armed: Mutex<Armed>,
    /// This connection's share of [`SPREAD_PERCENT`], in 1/2^32.
    spread: u32,
    /// Bytes were read since the last write ([`HeadTimer::watch`]).
    head_started: AtomicBool,
    /// Where stalled heads are counted, if anywhere ([`HeadTimer::watching`]).
    stalls: Option<Stalls>,
}

/// The connection's one tokio sleep, once a head has waited.
#[derive(Debug, Default)]
struct Armed {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The waker `sleep` last registered (its last poll was pending with it, and it has not
    /// been reset since). While it is still registered and not elapsed, a poll with a waker
    /// that wakes the same task has nothing to do: polling the tokio sleep again only
    /// re-registers the same task (about 170 instructions per request on a keep-alive
    /// connection, whose every head waits once).
    registered: Option<Waker>,
}

/// The address a connection's heads are counted against when they stall.
#[derive(Debug)]
struct Stalls {
    admission: Arc<Admission>,
    ip: IpAddr,
    after: Duration,
}

impl Default for HeadTimer {
    /// A timer with the next connection's spread.
    fn default() -> Self {
        Self::with_spread(next_spread())
    }
}

/// The next connection's share of the spread.
fn next_spread() -> u32 {
    // Weyl sequence with the golden ratio (2^32 / phi): consecutive connections' shares fall
    // far apart and fill [0, 1) evenly, with no randomness to seed or test around.
    CONNECTIONS.fetch_add(1, Relaxed).wrapping_mul(0x9E37_79B9)
}

impl HeadTimer {
    /// A timer whose deadlines are pushed later by `spread` / 2^32 of [`SPREAD_PERCENT`] of
    /// the timeout (0: exactly the timeout).
    pub fn with_spread(spread: u32) -> Self {
        Self::new(spread, None)
    }

    /// A timer with the next connection's spread that also counts this connection's stalled
    /// heads against `peer`'s address, under `admission`'s abusive-peer penalty (none without
    /// a peer address or with the penalty off).
    pub fn watching(peer: Option<SocketAddr>, admission: &Arc<Admission>) -> Self {
        let stalls = peer
            .filter(|_| admission.abusive_peers().watches_stalls())
            .map(|p| Stalls {
                admission: admission.clone(),
                ip: p.ip(),
                after: stall_after(admission.limits().header_read_timeout),
            });
        Self::new(next_spread(), stalls)
    }

    fn new(spread: u32, stalls: Option<Stalls>) -> Self {
        Self {
            shared: Arc::new(Shared {
                armed: Mutex::new(Armed::default()),
                spread,
                head_started: AtomicBool::new(false),
                stalls,
            }),
        }
    }

    /// `io`, noting for [`Self::head_started`] whether bytes were read since the last write.
    pub fn watch<T>(&self, io: T) -> HeadIo<T> {
        HeadIo {
            io,
            shared: self.shared.clone(),
        }
    }

    /// Whether the watched connection read bytes since it last wrote: at a header read
    /// timeout, whether a head had started (a server writes only after a whole head).
    pub fn head_started(&self) -> bool {
        self.shared.head_started.load(Relaxed)
    }

    /// The sleep for one head that may take `timeout` from now (with this connection's
    /// spread), unboxed: the direct server path ([`crate::serve`]) polls it itself.
    pub fn head_sleep(&self, timeout: Duration) -> HeadSleep {
        self.sleep_for(self.now() + timeout, timeout)
    }

    fn sleep_for(&self, deadline: Instant, timeout: Duration) -> HeadSleep {
        HeadSleep {
            deadline: tokio::time::Instant::from_std(deadline + self.extra(timeout)),
            shared: self.shared.clone(),
            stall: Stall::Whole,
        }
    }

    /// How much later than `timeout` this connection's deadline is.
    fn extra(&self, timeout: Duration) -> Duration {
        let nanos = timeout.as_nanos() * u128::from(SPREAD_PERCENT) / 100;
        let extra = (nanos * u128::from(self.shared.spread)) >> 32;
        Duration::from_nanos(u64::try_from(extra).unwrap_or(u64::MAX))
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    /// Tokio's clock (the one the sleeps run on), as `TokioTimer` does.
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// hyper asks for `now + timeout`; the spread is a share of that timeout.
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let timeout = deadline.saturating_duration_since(self.now());
        Box::pin(self.sleep_for(deadline, timeout))
    }
}

/// Ready once its deadline has passed; woken by the connection's shared sleep.
#[derive(Debug)]
pub struct HeadSleep {
    deadline: tokio::time::Instant,
    shared: Arc<Shared>,
    /// Where this head stands as to stalling (only with [`HeadTimer::watching`]).
    stall: Stall,
}

/// A head's stall, as its sleep's polls saw it: hyper polls the sleep after each read that
/// leaves the head unfinished (and when the sleep wakes it).
#[derive(Debug)]
enum Stall {
    /// No poll found the head started and unfinished yet.
    Whole,
    /// A poll found it unfinished at this time.
    Unfinished(tokio::time::Instant),
    /// Still unfinished [`stall_after`] later: counted against the address while this lives.
    Stalled { _counted: Option<StalledHead> },
}

/// Counts a head as stalled once it has been unfinished long enough; whether it is to be ended
/// now (stalled, and its address penalized).
fn stalled_and_penalized(stall: &mut Stall, stalls: &Stalls) -> bool {
    let now = tokio::time::Instant::now();
    let peers = stalls.admission.abusive_peers();
    match stall {
        Stall::Whole => {
            *stall = Stall::Unfinished(now);
            false
        }
        Stall::Unfinished(since) if now.duration_since(*since) >= stalls.after => {
            *stall = Stall::Stalled {
                _counted: peers.head_stalled(stalls.ip, now.into_std()),
            };
            peers.is_penalized(stalls.ip, now.into_std())
        }
        Stall::Unfinished(_) => false,
        Stall::Stalled { .. } => peers.is_penalized(stalls.ip, now.into_std()),
    }
}

impl Sleep for HeadSleep {}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Only a head that has started (bytes read since the last response) can stall; an idle
        // keep-alive connection's poll stops at the load.
        if let Some(stalls) = &this.shared.stalls
            && this.shared.head_started.load(Relaxed)
            && stalled_and_penalized(&mut this.stall, stalls)
        {
            return Poll::Ready(());
        }
        let ours = this.deadline;
        // Only this connection's task polls it: the lock is never contended, and a panic
        // while holding it cannot leave the sleep half-updated.
        let mut armed = this
            .shared
            .armed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Armed { sleep, registered } = &mut *armed;
        let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(ours)));
        if sleep.deadline() > ours {
            // An earlier deadline than the armed one (not what hyper does, but allowed).
            sleep.as_mut().reset(ours);
            *registered = None;
        }
        // The armed deadline is at or before ours and not reached, and this task is the one
        // it will wake: the wake-up, when it comes, polls this again.
        if !sleep.is_elapsed() && registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *registered = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            if sleep.deadline() >= ours {
                return Poll::Ready(());
            }
            // It fired for an earlier head's deadline: wait for this one.
            sleep.as_mut().reset(ours);
            *registered = None;
        }
    }
}

/// A server connection's IO, watched by its [`HeadTimer`] ([`HeadTimer::watch`]).
#[derive(Debug)]
pub struct HeadIo<T> {
    io: T,
    shared: Arc<Shared>,
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.shared.head_started.store(true, Relaxed);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared.head_started.store(false, Relaxed);
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.shared.head_started.store(false, Relaxed);
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `sleep` once without a task to wake: whether it is ready.
    fn ready(sleep: &mut Pin<Box<dyn Sleep>>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        sleep.as_mut().poll(&mut cx).is_ready()
    }

    /// Polls `sleep` once with this task's waker.
    async fn poll_once(sleep: &mut Pin<Box<dyn Sleep>>) -> Poll<()> {
        std::future::poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx))).await
    }

    /// The second head's wait finds the connection's sleep registered by this task for the
    /// first head's deadline and leaves it be; the wake-up at that deadline re-arms it, and
    /// the second head still times out at its own deadline, not earlier and not never.
    #[tokio::test(start_paused = true)]
    async fn a_head_waiting_on_a_sleep_this_task_registered_ends_at_its_own_deadline() {
        let timer = HeadTimer::with_spread(0);
        let start = tokio::time::Instant::now();
        let mut first = timer.sleep(Duration::from_secs(30));
        assert!(poll_once(&mut first).await.is_pending());
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(first);
        let mut second = timer.sleep(Duration::from_secs(30));
        assert!(poll_once(&mut second).await.is_pending());
        assert!(poll_once(&mut second).await.is_pending());
        second.await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(40) && waited < Duration::from_millis(40_010),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_sleep_fires_at_its_own_deadline_on_one_shared_timer() {
        let timer = HeadTimer::with_spread(0);
        let mut first = timer.sleep(Duration::from_secs(30));
        assert!(!ready(&mut first));
        tokio::time::advance(Duration::from_secs(10)).await;
        // The first head arrived; the next one gets a later deadline (t = 40 s).
        drop(first);
        let mut second = timer.sleep(Duration::from_secs(30));
        assert!(!ready(&mut second));
        // At t = 30 s the shared sleep fires for the old deadline: not yet this one's.
        tokio::time::advance(Duration::from_secs(21)).await;
        assert!(!ready(&mut second));
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(!ready(&mut second), "t = 39 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(ready(&mut second), "t = 40 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_sleep_wakes_its_task_at_the_deadline() {
        let timer = HeadTimer::with_spread(0);
        let started = tokio::time::Instant::now();
        // Re-armed once: the first deadline passes while the second sleep waits.
        let first = timer.sleep(Duration::from_secs(5));
        drop(tokio::time::timeout(Duration::from_secs(1), first).await);
        timer.sleep(Duration::from_secs(5)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(6));
        // An earlier deadline than the armed one is honoured too.
        let mut later = timer.sleep(Duration::from_secs(60));
        assert!(!ready(&mut later));
        drop(later);
        let now = tokio::time::Instant::now();
        timer.sleep(Duration::from_secs(2)).await;
        assert_eq!(now.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_a_spread_times_out_later_by_its_share() {
        // Half of the largest spread: 7.5 % of 20 s, 1.5 s later.
        let timer = HeadTimer::with_spread(1 << 31);
        let started = tokio::time::Instant::now();
        timer.sleep(Duration::from_secs(20)).await;
        assert_eq!(started.elapsed(), Duration::from_millis(21_500));
    }

    #[test]
    fn connections_opened_together_get_deadlines_spread_evenly() {
        // 500 consecutive connections (a slowloris' burst), wherever the sequence stands: in
        // each tenth of the spread between 40 and 60 of them, none beyond it.
        for start in [0u32, 12_345, u32::MAX - 200] {
            let mut buckets = [0u32; 10];
            for n in 0..500u32 {
                let timer = HeadTimer::with_spread(start.wrapping_add(n).wrapping_mul(0x9E37_79B9));
                let extra = timer.extra(Duration::from_secs(2));
                assert!(extra < Duration::from_millis(300), "{extra:?}");
                buckets[(extra.as_micros() / 30_000) as usize] += 1;
            }
            assert!(
                buckets.iter().all(|&b| (40..=60).contains(&b)),
                "{buckets:?}"
            );
        }
    }

    /// Serves one HTTP/1 connection on loopback with hyper, this timer and `timeout` as the
    /// header read timeout; the receiver says how it ended: (by the header read timeout,
    /// whether a head had started).
    async fn serve_one(
        timeout: Duration,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Receiver<(bool, bool)>,
    ) {
        serve_one_watched(timeout, None).await
    }

    /// [`serve_one`], with the timer watching for stalled heads under `admission` if given.
    async fn serve_one_watched(
        timeout: Duration,
        admission: Option<Arc<Admission>>,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Receiver<(bool, bool)>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(String::from("ok")))
            });
            let timer = match &admission {
                Some(a) => HeadTimer::watching(Some(peer), a),
                None => HeadTimer::default(),
            };
            let res = hyper::server::conn::http1::Builder::new()
                .timer(timer.clone())
                .header_read_timeout(timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(timer.watch(stream)), svc)
                .await;
            let _ = ended_tx.send((res.is_err_and(|e| e.is_timeout()), timer.head_started()));
        });
        (addr, ended_rx)
    }

    /// A real hyper HTTP/1 server connection on loopback with this timer and a 300 ms
    /// header-read timeout: keep-alive requests inside the timeout are answered, then a
    /// request head that stops halfway ends the connection at the timeout.
    #[tokio::test]
    async fn hyper_closes_a_connection_whose_head_stalls() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, ended_rx) = serve_one(Duration::from_millis(300)).await;
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = vec![0u8; 1024];
        // Three requests, 200 ms apart: each head arrives within its own 300 ms, though the
        // connection is older than that.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client
                .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
                .await
                .unwrap();
            let n = client.read(&mut buf).await.unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]);
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.ends_with("ok"), "{answer}");
        }
        client.write_all(b"GET / HTTP/1.1\r\nho").await.unwrap();
        let started = std::time::Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the server closes the stalled connection")
            .unwrap_or(0);
        let waited = started.elapsed();
        // hyper may answer 408 before closing; either way nothing more is served.
        let rest = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || rest.starts_with("HTTP/1.1 408"), "{rest}");
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        let (timed_out, head_started) = ended_rx.await.unwrap();
        assert!(timed_out, "ended by the header read timeout");
        assert!(head_started, "half a head had arrived");
    }

    /// A keep-alive connection that sits idle after its response also ends at the header
    /// read timeout, with no head started: not a slow client.
    #[tokio::test]
    async fn an_idle_keep_alive_connection_times_out_with_no_head_started() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, ended_rx) = serve_one(Duration::from_millis(200)).await;
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        let (timed_out, head_started) = tokio::time::timeout(Duration::from_secs(5), ended_rx)
            .await
            .expect("the idle connection is closed")
            .unwrap();
        assert!(timed_out, "ended by the header read timeout");
        assert!(!head_started, "idle, no head begun");
    }

    /// Limits with a 2 s header read timeout (a head stalls after 500 ms) and the penalty on.
    fn watched_admission() -> Arc<Admission> {
        Arc::new(Admission::new(crate::limits::ServerLimits {
            header_read_timeout: Duration::from_secs(2),
            abusive_peer_penalty: Some(Duration::from_secs(10)),
            ..Default::default()
        }))
    }

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A head still unfinished at a read 500 ms after one that found it so counts as stalled
    /// against its address, and stops counting once it completes; the connection is served.
    #[tokio::test]
    async fn a_dribbled_head_counts_as_stalled_until_it_completes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let admission = watched_admission();
        let (addr, _ended) =
            serve_one_watched(Duration::from_secs(2), Some(admission.clone())).await;
        let peers = admission.abusive_peers();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        client.write_all(b"x-a: 1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            peers.stalled_heads(LOOPBACK),
            0,
            "unfinished 250 ms: not yet"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.write_all(b"x-b: 1\r\n").await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while peers.stalled_heads(LOOPBACK) == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            peers.stalled_heads(LOOPBACK),
            1,
            "unfinished 550 ms: stalled"
        );
        assert!(
            !peers.is_penalized(LOOPBACK, std::time::Instant::now()),
            "one is no offence"
        );
        client.write_all(b"host: a\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = client.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        assert_eq!(peers.stalled_heads(LOOPBACK), 0, "the head completed");
    }

    /// Once its address is penalized, a stalled head is ended at its next byte, as by the
    /// header read timeout (2 s here) but long before it.
    #[tokio::test]
    async fn a_stalled_head_of_a_penalized_address_is_ended_at_its_next_byte() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let admission = watched_admission();
        let (addr, ended) =
            serve_one_watched(Duration::from_secs(2), Some(admission.clone())).await;
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        admission
            .abusive_peers()
            .offended(LOOPBACK, std::time::Instant::now());
        tokio::time::sleep(Duration::from_millis(600)).await;
        client.write_all(b"x-a: 1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the connection is ended")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed unanswered");
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(1500),
            "{waited:?}: not at its byte"
        );
        let (timed_out, head_started) = ended.await.unwrap();
        assert!(timed_out && head_started, "ended as a slow head (a strike)");
        assert_eq!(admission.abusive_peers().stalled_heads(LOOPBACK), 0);
    }
}
