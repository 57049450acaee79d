//! `--abusive-peer-penalty`: a source address caught abusing the proxy may open only
//! `--abusive-peer-connections` connections a second for the penalty's length; the others are
//! closed at accept, before protocol detection, TLS or an HTTP/2 handshake, and counted as
//! `limit="abusive_peer"`.
//!
//! Two kinds of offence put an address under penalty:
//! - at once, a connection the proxy ended with GOAWAY `ENHANCE_YOUR_CALM` (an HTTP/2 reset
//!   flood or a CONTINUATION flood): no client library sends those by accident;
//! - after [`STRIKES`] within [`STRIKE_WINDOW`], an HTTP/1 request head that timed out once it
//!   had started (a slowloris) or that went over the head size limits (431, 414) ([`strike`]
//!   of [`AbusivePeers`]): one such head is what a client on a bad link or with an oversized
//!   cookie can send, hundreds of them are an attack. A keep-alive connection closed idle (no
//!   byte of a next head) is not an offence;
//! - at once, [`STALLED_HEADS`] HTTP/1 request heads from one address stalled at the same time
//!   ([`head_stalled`] of [`AbusivePeers`]): a head is stalled when it was still unfinished at
//!   one read and again [`stall_after`] later (a slowloris dribbling a line a second). A
//!   slowloris opens its hundreds of connections together, and waiting for [`STRIKES`] of their
//!   heads to time out let it hold them all for the whole header read timeout (30 s by
//!   default); counted while they stall, it is caught at its first dribbled line. Once its
//!   address is penalized, each of its stalled heads is ended at its next byte
//!   ([`crate::transport::HeadTimer`]) instead of at the timeout, so the connections it
//!   already has stop costing a read a second each.
//!
//! Why: each of those attacks is cut by a limit, and the attacker reconnects at once, hundreds
//! of times a second (or, for a slowloris, hundreds of connections in one burst), and every
//! reconnect costs the proxy a task, detection, a handshake and the bytes it must read (HPACK
//! state is connection-wide, so h2 decodes a header block it will refuse). Closing at accept
//! costs an `accept` and a `close`. The penalty limits the rate instead of refusing outright, so
//! a peer proxy that relayed one misbehaving client (many clients share its address) still gets
//! a connection through, and one pooled HTTP/2 connection carries all its requests.
//!
//! A refused connection is not closed at once but held, unread and deregistered from the
//! runtime, for [`HOLD`] (at most [`MAX_HELD`] at a time, and at most a [`HELD_FD_SHARE`]th of the
//! process's file-descriptor limit, [`held_bound`]; beyond that, closed at once): closed at
//! once, a flooding client only reconnects faster (measured: an attacker whose connections were
//! closed at accept came back 5,000 times a second, where it had made 750 a second when each
//! was served to its GOAWAY), while one whose writes block on a held connection waits.
//!
//! Both tables are bounded ([`MAX_PEERS`]): when one is full of live entries a new offender is
//! not counted (its connections are still cut by the limits themselves), so an attacker with
//! many addresses cannot grow the proxy's memory through it.
//!
//! [`strike`]: AbusivePeers::strike
//! [`head_stalled`]: AbusivePeers::head_stalled

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Addresses under penalty at once, at most (about 64 B each).
pub const MAX_PEERS: usize = 4096;
/// The window the connection rate is counted in.
const WINDOW: Duration = Duration::from_secs(1);
/// How long a refused connection is held before it is closed.
pub const HOLD: Duration = Duration::from_secs(2);
/// Refused connections held at once, at most (each an fd and its socket buffers).
pub const MAX_HELD: usize = 64;
/// Held connections may take at most this fraction (one in `HELD_FD_SHARE`) of the process's
/// file-descriptor limit: a proxy started with a small `RLIMIT_NOFILE` (256 on macOS and in
/// some containers) would otherwise give a quarter of its descriptors to an attacker, and
/// refuse good clients with `EMFILE` while it holds them.
pub const HELD_FD_SHARE: u64 = 16;

/// How many refused connections may be held at once, given the soft `RLIMIT_NOFILE` (`None`
/// when it is unlimited or could not be read): [`MAX_HELD`], or a [`HELD_FD_SHARE`]th of the
/// limit when that is less (0 for a limit under [`HELD_FD_SHARE`]: then none is held).
fn held_bound(nofile_soft: Option<u64>) -> usize {
    match nofile_soft {
        Some(limit) => usize::try_from(limit / HELD_FD_SHARE)
            .unwrap_or(usize::MAX)
            .min(MAX_HELD),
        None => MAX_HELD,
    }
}

/// The soft `RLIMIT_NOFILE`, read once per process (the proxy neither raises nor lowers it);
/// `None` when unlimited or unreadable.
fn nofile_soft_limit() -> Option<u64> {
    static LIMIT: std::sync::LazyLock<Option<u64>> = std::sync::LazyLock::new(read_nofile_soft);
    *LIMIT
}

#[allow(unsafe_code)]
fn read_nofile_soft() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives for the call.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}
/// `SO_RCVBUF` of a held connection (the kernel doubles it).
const HELD_RECV_BUFFER: usize = 4096;
/// Weak offences (a slow or oversized request head) from one address within
/// [`STRIKE_WINDOW`] that put it under penalty. A browser opens at most 6 connections to a
/// host, and a client whose link stalls loses at most those at once; a slowloris holds
/// hundreds.
pub const STRIKES: u32 = 8;
/// The window [`STRIKES`] are counted in: a slowloris' connections time out together, a
/// client on a bad link now and then.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// HTTP/1 request heads from one address stalled at once ([`AbusivePeers::head_stalled`])
/// that penalize it. Far above what one client has in flight (a browser opens at most 6
/// connections to a host; a peer proxy multiplexes on one HTTP/2 connection), far below the
/// hundreds a slowloris holds.
pub const STALLED_HEADS: u32 = 64;
/// The longest a head may stay unfinished between two reads before it counts as stalled.
const MAX_STALL_AFTER: Duration = Duration::from_secs(1);

/// How long an HTTP/1 head may stay unfinished, from the first read that found it unfinished,
/// before a later read that still finds it so counts it as stalled: a quarter of the header read
/// timeout, at most [`MAX_STALL_AFTER`] (a legitimate head arrives in one or a few segments
/// within a round trip; a slowloris dribbles a line a second).
pub fn stall_after(header_read_timeout: Duration) -> Duration {
    (header_read_timeout / 4).min(MAX_STALL_AFTER)
}

/// Stalled heads per address ([`AbusivePeers::head_stalled`]); shared with each
/// [`StalledHead`], which takes itself off when dropped.
type StalledTable = Arc<Mutex<HashMap<IpAddr, u32>>>;

/// One stalled head, counted against its address until dropped (when the head completes or
/// its connection ends).
#[derive(Debug)]
pub struct StalledHead {
    ip: IpAddr,
    table: StalledTable,
}

impl Drop for StalledHead {
    fn drop(&mut self) {
        let mut table = lock(&self.table);
        if let Some(n) = table.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.remove(&self.ip);
            }
        }
    }
}

/// Weak offences of one address, counted from `since`.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    since: Instant,
    count: u32,
}

#[derive(Debug, Clone, Copy)]
struct Penalty {
    until: Instant,
    window_start: Instant,
    admitted: u32,
}

/// The addresses under penalty; one per proxy, in [`super::Admission`].
#[derive(Debug, Default)]
pub struct AbusivePeers {
    /// `None`: no penalty (`--abusive-peer-penalty off`).
    penalty: Option<Duration>,
    per_second: u32,
    /// Entries in `peers`, so the accept path skips the lock while nobody is penalized.
    len: AtomicUsize,
    peers: Mutex<HashMap<IpAddr, Penalty>>,
    /// Addresses with weak offences not (yet) enough for a penalty ([`Self::strike`]); apart
    /// from `peers`, so that accepts skip the lock while only strikes are counted.
    strikes: Mutex<HashMap<IpAddr, Strikes>>,
    /// Refused connections being held ([`Self::refuse`]).
    held: Arc<AtomicUsize>,
    /// The most that may be held at once ([`held_bound`]).
    max_held: usize,
    /// Heads stalled now, per address ([`Self::head_stalled`]); an address leaves it when its
    /// last stalled head does, so it holds only addresses with a head stalled now.
    stalled: StalledTable,
}

impl AbusivePeers {
    pub fn new(penalty: Option<Duration>, per_second: u32) -> Self {
        Self {
            penalty,
            per_second,
            len: AtomicUsize::new(0),
            peers: Mutex::default(),
            strikes: Mutex::default(),
            held: Arc::default(),
            max_held: held_bound(nofile_soft_limit()),
            stalled: Arc::default(),
        }
    }

    /// With at most `max_held` refused connections held at once, in place of the bound taken
    /// from the file-descriptor limit.
    #[cfg(test)]
    fn with_max_held(mut self, max_held: usize) -> Self {
        self.max_held = max_held;
        self
    }

    /// The most refused connections held at once ([`held_bound`]).
    #[cfg(test)]
    fn max_held(&self) -> usize {
        self.max_held
    }

    /// Whether stalled heads are watched at all: not with `--abusive-peer-penalty off`.
    pub fn watches_stalls(&self) -> bool {
        self.penalty.is_some()
    }

    /// An HTTP/1 head from `ip` found stalled at `now` ([`stall_after`]): counted against the
    /// address while the returned guard lives. The [`STALLED_HEADS`]th at once penalizes the
    /// address ([`Self::offended`]), and each one after that renews the penalty. `None` when
    /// the penalty is off or the table is full of other addresses ([`MAX_PEERS`]).
    pub fn head_stalled(&self, ip: IpAddr, now: Instant) -> Option<StalledHead> {
        self.penalty?;
        let mut table = lock(&self.stalled);
        if table.len() >= MAX_PEERS && !table.contains_key(&ip) {
            tracing::debug!(%ip, "stalled-head table full; not counted");
            return None;
        }
        let n = table.entry(ip).or_insert(0);
        *n += 1;
        let n = *n;
        drop(table);
        if n >= STALLED_HEADS {
            if n == STALLED_HEADS {
                tracing::debug!(%ip, "{n} request heads stalled at once; penalized");
            }
            self.offended(ip, now);
        }
        Some(StalledHead {
            ip,
            table: self.stalled.clone(),
        })
    }

    /// Heads from `ip` stalled now.
    pub fn stalled_heads(&self, ip: IpAddr) -> u32 {
        lock(&self.stalled).get(&ip).copied().unwrap_or(0)
    }

    /// Whether `ip` is under penalty at `now`. One atomic load while nobody is.
    pub fn is_penalized(&self, ip: IpAddr, now: Instant) -> bool {
        !self.is_empty() && self.lock().get(&ip).is_some_and(|p| p.until > now)
    }

    /// Closes a refused connection: after [`HOLD`], unread, while fewer than
    /// `max_held` ([`held_bound`]) are held; at once otherwise. Call inside the runtime.
    pub fn refuse(&self, stream: tokio::net::TcpStream) {
        if self.held.fetch_add(1, Relaxed) >= self.max_held {
            self.held.fetch_sub(1, Relaxed);
            return;
        }
        // The kernel would otherwise keep growing the receive buffer of a socket nobody reads
        // (loopback autotuning goes to tcp_rmem's max, 32 MiB here): with the buffer pinned
        // small, the client can write little more than the window already advertised
        // (measured: under 1 MiB) before it blocks. Best effort: a failure only loses the bound.
        let _ = socket2::SockRef::from(&stream).set_recv_buffer_size(HELD_RECV_BUFFER);
        // Deregistered: what the client writes meanwhile wakes nothing in the proxy.
        let Ok(stream) = stream.into_std() else {
            self.held.fetch_sub(1, Relaxed);
            return;
        };
        let held = self.held.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HOLD).await;
            drop(stream);
            held.fetch_sub(1, Relaxed);
        });
    }

    /// Refused connections held open now.
    pub fn held(&self) -> usize {
        self.held.load(Relaxed)
    }

    /// A weak offence by `ip` at `now`: an HTTP/1 request head that timed out after it had
    /// started, or that went over the head size limits. The [`STRIKES`]th within
    /// [`STRIKE_WINDOW`] penalizes the address ([`Self::offended`]); each one after that, while
    /// the penalty lasts, restarts it. Returns whether this strike penalized it.
    pub fn strike(&self, ip: IpAddr, now: Instant) -> bool {
        if self.penalty.is_none() {
            return false;
        }
        let mut strikes = lock(&self.strikes);
        if strikes.len() >= MAX_PEERS && !strikes.contains_key(&ip) {
            strikes.retain(|_, s| now.duration_since(s.since) < STRIKE_WINDOW);
            if strikes.len() >= MAX_PEERS {
                tracing::debug!(%ip, "abusive-peer strike table full; not counted");
                return false;
            }
        }
        let s = strikes.entry(ip).or_insert(Strikes {
            since: now,
            count: 0,
        });
        if now.duration_since(s.since) >= STRIKE_WINDOW {
            *s = Strikes {
                since: now,
                count: 0,
            };
        }
        s.count += 1;
        if s.count < STRIKES {
            return false;
        }
        // Forgotten here: the penalty table holds it now, and a strike while it lasts
        // starts counting again (so a slowloris that goes on keeps its penalty).
        strikes.remove(&ip);
        drop(strikes);
        self.offended(ip, now);
        true
    }

    /// `ip` was just sent GOAWAY `ENHANCE_YOUR_CALM` (or reached [`STRIKES`]): penalized from
    /// `now` (again, if it already was).
    pub fn offended(&self, ip: IpAddr, now: Instant) {
        let Some(penalty) = self.penalty else {
            return;
        };
        let mut peers = self.lock();
        if peers.len() >= MAX_PEERS && !peers.contains_key(&ip) {
            peers.retain(|_, p| p.until > now);
            if peers.len() >= MAX_PEERS {
                tracing::debug!(%ip, "abusive-peer table full; not penalized");
                return;
            }
        }
        let until = now + penalty;
        peers
            .entry(ip)
            .and_modify(|p| p.until = until)
            .or_insert(Penalty {
                until,
                window_start: now,
                // The connection that offended counts against this second's allowance.
                admitted: 1,
            });
        self.len.store(peers.len(), Relaxed);
    }

    /// Whether a connection from `ip`, accepted now, may be served. One atomic load while
    /// nobody is penalized.
    pub fn admit(&self, ip: IpAddr) -> bool {
        self.is_empty() || self.admit_at(ip, Instant::now())
    }

    /// [`Self::admit`] at `now`.
    pub fn admit_at(&self, ip: IpAddr, now: Instant) -> bool {
        let mut peers = self.lock();
        let Some(p) = peers.get_mut(&ip) else {
            return true;
        };
        if p.until <= now {
            peers.remove(&ip);
            self.len.store(peers.len(), Relaxed);
            return true;
        }
        if now.duration_since(p.window_start) >= WINDOW {
            p.window_start = now;
            p.admitted = 0;
        }
        if p.admitted < self.per_second {
            p.admitted += 1;
            true
        } else {
            false
        }
    }

    /// Addresses under penalty (expired ones linger until their next connection or a full
    /// table).
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Penalty>> {
        lock(&self.peers)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves a consistent map (every update is one insert or
    // field write), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn an_offender_gets_its_rate_for_the_penalty_then_is_free() {
        let peers = AbusivePeers::new(Some(Duration::from_secs(10)), 2);
        let t0 = Instant::now();
        assert!(peers.admit_at(ip(2), t0), "nobody penalized yet");
        peers.offended(ip(2), t0);
        // The offending connection used one of this second's two.
        assert!(peers.admit_at(ip(2), t0));
        assert!(!peers.admit_at(ip(2), t0 + Duration::from_millis(500)));
        assert!(
            peers.admit_at(ip(1), t0),
            "other addresses are not affected"
        );
        // A new second, two more.
        let t1 = t0 + Duration::from_millis(1000);
        assert!(peers.admit_at(ip(2), t1));
        assert!(peers.admit_at(ip(2), t1));
        assert!(!peers.admit_at(ip(2), t1));
        // After the penalty, free and forgotten.
        assert!(peers.admit_at(ip(2), t0 + Duration::from_secs(10)));
        assert!(peers.is_empty());
    }

    #[test]
    fn a_new_offence_extends_the_penalty() {
        let peers = AbusivePeers::new(Some(Duration::from_secs(2)), 1);
        let t0 = Instant::now();
        peers.offended(ip(2), t0);
        peers.offended(ip(2), t0 + Duration::from_millis(1500));
        let t = t0 + Duration::from_millis(2500);
        assert!(peers.admit_at(ip(2), t));
        assert!(!peers.admit_at(ip(2), t), "still penalized at 1 a second");
    }

    #[test]
    fn off_never_penalizes() {
        let peers = AbusivePeers::new(None, 1);
        let t0 = Instant::now();
        peers.offended(ip(2), t0);
        assert!((0..10).all(|_| peers.admit_at(ip(2), t0)));
        assert!(peers.is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let peers = AbusivePeers::new(Some(Duration::from_secs(5)), 1);
        let t0 = Instant::now();
        for i in 0..MAX_PEERS as u32 + 10 {
            peers.offended(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), t0);
        }
        assert_eq!(peers.len(), MAX_PEERS);
        // Once the first penalties have expired, a new offender finds room.
        let later = t0 + Duration::from_secs(6);
        peers.offended(ip(9), later);
        assert_eq!(peers.len(), 1);
        assert!(
            !peers.admit_at(ip(9), later),
            "penalized: its offence used this second's one"
        );
    }

    #[tokio::test]
    async fn refused_connections_are_held_then_closed_and_bounded() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The bound as it is at the usual limits (1,024 and up), whatever this test runs under.
        let peers = AbusivePeers::new(Some(Duration::from_secs(10)), 1).with_max_held(MAX_HELD);
        let mut clients = Vec::new();
        for _ in 0..MAX_HELD + 2 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (server, _) = listener.accept().await.unwrap();
            peers.refuse(server);
        }
        assert_eq!(peers.held(), MAX_HELD, "the rest closed at once");
        let started = Instant::now();
        // A held connection takes little before the client's writes block. (The client's own
        // send buffer, the attacker's memory, is pinned small so it does not count.)
        socket2::SockRef::from(&clients[1])
            .set_send_buffer_size(4096)
            .unwrap();
        let mut absorbed = 0usize;
        let chunk = vec![0u8; 64 * 1024];
        while absorbed < 64 << 20 {
            match clients[1].try_write(&chunk) {
                Ok(n) => absorbed += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Give loopback a moment to move what was sent; blocked twice is blocked.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    match clients[1].try_write(&chunk) {
                        Ok(n) => absorbed += n,
                        Err(_) => break,
                    }
                }
                Err(e) => panic!("write to a held connection: {e}"),
            }
        }
        assert!(
            absorbed < 1 << 20,
            "a held connection absorbed {absorbed} B"
        );
        let mut buf = [0u8; 1];
        // Over the bound: closed at once.
        let n = tokio::time::timeout(HOLD / 2, clients[MAX_HELD + 1].read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        // Held: nothing to read until the hold ends, then EOF.
        let n = tokio::time::timeout(HOLD * 3, clients[0].read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        assert!(started.elapsed() >= HOLD - Duration::from_millis(300));
        // The count drops just after the close the client saw: polled, with a deadline.
        let deadline = Instant::now() + Duration::from_secs(2);
        while peers.held() != 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(peers.held(), 0, "every held connection released");
    }

    #[test]
    fn the_held_bound_is_a_share_of_the_fd_limit() {
        assert_eq!(held_bound(None), MAX_HELD, "unlimited");
        assert_eq!(held_bound(Some(1_048_576)), MAX_HELD);
        assert_eq!(held_bound(Some(1024)), MAX_HELD);
        assert_eq!(held_bound(Some(256)), 16, "macOS' default");
        assert_eq!(held_bound(Some(100)), 6);
        assert_eq!(held_bound(Some(15)), 0, "too few fds to spare any");
        // What this process runs under: read once, and within both bounds.
        let here = AbusivePeers::new(Some(Duration::from_secs(1)), 1).max_held();
        assert!(here <= MAX_HELD);
        if let Some(limit) = nofile_soft_limit() {
            assert!(here as u64 <= limit / HELD_FD_SHARE, "{here} of {limit}");
        }
    }

    #[tokio::test]
    async fn a_small_fd_limit_holds_fewer_and_closes_the_rest_at_once() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // As under `ulimit -n 64`: 4 held at most.
        let peers =
            AbusivePeers::new(Some(Duration::from_secs(10)), 1).with_max_held(held_bound(Some(64)));
        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (server, _) = listener.accept().await.unwrap();
            peers.refuse(server);
        }
        assert_eq!(peers.held(), 4);
        let mut buf = [0u8; 1];
        for c in &mut clients[4..] {
            let n = tokio::time::timeout(HOLD / 2, c.read(&mut buf))
                .await
                .expect("closed at once, not held")
                .unwrap();
            assert_eq!(n, 0);
        }
        let held = tokio::time::timeout(HOLD / 4, clients[0].read(&mut buf)).await;
        assert!(held.is_err(), "the first four are held: {held:?}");
    }

    #[test]
    fn slow_or_oversized_heads_penalize_after_enough_strikes() {
        let peers = AbusivePeers::new(Some(Duration::from_secs(10)), 2);
        let t0 = Instant::now();
        for i in 1..STRIKES {
            assert!(
                !peers.strike(ip(2), t0),
                "strike {i} alone does not penalize"
            );
            assert!(peers.admit_at(ip(2), t0));
        }
        // A good client on another address is never counted with the attacker.
        assert!(!peers.strike(ip(1), t0));
        assert!(peers.strike(ip(2), t0), "the last strike penalizes");
        assert_eq!(peers.len(), 1);
        let t1 = t0 + Duration::from_secs(1);
        assert!(peers.admit_at(ip(2), t1));
        assert!(peers.admit_at(ip(2), t1));
        assert!(!peers.admit_at(ip(2), t1), "held to its rate");
        assert!(peers.admit_at(ip(1), t1), "the other address is free");
        // Strikes while penalized count again towards renewing the penalty.
        let t9 = t0 + Duration::from_secs(9);
        for _ in 0..STRIKES {
            peers.strike(ip(2), t9);
        }
        let t15 = t0 + Duration::from_secs(15);
        assert!(peers.admit_at(ip(2), t15));
        assert!(peers.admit_at(ip(2), t15));
        assert!(
            !peers.admit_at(ip(2), t15),
            "renewed at t = 9 s: still penalized"
        );
    }

    #[test]
    fn strikes_spread_over_more_than_the_window_do_not_penalize() {
        let peers = AbusivePeers::new(Some(Duration::from_secs(10)), 1);
        let t0 = Instant::now();
        // One slow head every two seconds (a client on a bad link): never STRIKES in a window.
        for i in 0..3 * STRIKES {
            let at = t0 + Duration::from_secs(2) * i;
            assert!(!peers.strike(ip(2), at), "strike {i}");
        }
        assert!(peers.is_empty());
        assert!(peers.admit_at(ip(2), t0 + Duration::from_secs(100)));
    }

    #[test]
    fn strikes_off_and_bounded() {
        let off = AbusivePeers::new(None, 1);
        let t0 = Instant::now();
        assert!((0..2 * STRIKES).all(|_| !off.strike(ip(2), t0)));
        assert!(off.is_empty());
        let peers = AbusivePeers::new(Some(Duration::from_secs(10)), 1);
        for i in 0..MAX_PEERS as u32 + 10 {
            peers.strike(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), t0);
        }
        assert_eq!(lock(&peers.strikes).len(), MAX_PEERS);
        // Once the first strikes are out of their window, room again.
        let later = t0 + STRIKE_WINDOW;
        peers.strike(ip(9), later);
        assert_eq!(lock(&peers.strikes).len(), 1);
    }

    #[test]
    fn many_heads_stalled_at_once_penalize_their_address() {
        let peers = AbusivePeers::new(Some(Duration::from_secs(10)), 1);
        let t0 = Instant::now();
        // A client with a few slow heads (a bad link): counted, never penalized.
        let few: Vec<_> = (0..6).map(|_| peers.head_stalled(ip(1), t0)).collect();
        assert!(few.iter().all(Option::is_some));
        assert_eq!(peers.stalled_heads(ip(1)), 6);
        let mut slowloris = Vec::new();
        for i in 1..STALLED_HEADS {
            slowloris.push(peers.head_stalled(ip(2), t0));
            assert!(!peers.is_penalized(ip(2), t0), "{i} stalled heads");
        }
        slowloris.push(peers.head_stalled(ip(2), t0));
        assert!(
            peers.is_penalized(ip(2), t0),
            "the {STALLED_HEADS}th penalizes"
        );
        assert!(
            !peers.admit_at(ip(2), t0),
            "its connections refused at accept"
        );
        assert!(!peers.is_penalized(ip(1), t0), "the other address is not");
        assert!(peers.admit_at(ip(1), t0));
        // Heads that complete (or whose connections end) stop counting.
        drop(few);
        assert_eq!(peers.stalled_heads(ip(1)), 0);
        assert_eq!(
            lock(&peers.stalled).len(),
            1,
            "emptied addresses leave the table"
        );
        slowloris.truncate(10);
        assert_eq!(peers.stalled_heads(ip(2)), 10);
        // The penalty runs its course from the last stalled head that renewed it.
        assert!(!peers.is_penalized(ip(2), t0 + Duration::from_secs(10)));
    }

    #[test]
    fn stalled_heads_off_and_bounded() {
        let off = AbusivePeers::new(None, 1);
        let t0 = Instant::now();
        assert!(!off.watches_stalls());
        assert!(off.head_stalled(ip(2), t0).is_none());
        let peers = AbusivePeers::new(Some(Duration::from_secs(10)), 1);
        let held: Vec<_> = (0..MAX_PEERS as u32)
            .map(|i| peers.head_stalled(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), t0))
            .collect();
        assert!(held.iter().all(Option::is_some));
        assert!(peers.head_stalled(ip(9), t0).is_none(), "full: not counted");
        assert!(
            peers
                .head_stalled(IpAddr::from([10, 0, 0, 0]), t0)
                .is_some(),
            "an address already in it still is"
        );
        drop(held);
        assert!(peers.head_stalled(ip(9), t0).is_some(), "room again");
    }

    #[test]
    fn a_head_stalls_after_a_quarter_of_the_timeout_or_a_second() {
        assert_eq!(
            stall_after(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(stall_after(Duration::from_secs(30)), Duration::from_secs(1));
    }
}
