//! The control round's target: a plain TCP listener that is not the proxy. The attack is aimed
//! at it while the good client still goes through the proxy, so the good client's p99 in that
//! round is what the attack does to it through the machine alone (the attacker threads on the
//! client CPU, the kernel's loopback work, this listener's reads), with the proxy untouched.
//!
//! It treats an attacker roughly as the proxy does, at the least cost and without telling one
//! attack from another: it accepts every connection (up to [`MAX_CONNECTIONS`] open), reads
//! and discards what arrives, and once a connection has sent [`CUT_AFTER`] bytes (about where
//! the proxy's head and header-list limits cut a header bomb) it stops reading it, pins its
//! receive buffer small and holds it for [`HOLD`] before closing it, as the proxy's
//! abusive-peer penalty holds a refused connection (`penalty::refuse`): so a flooding attacker
//! blocks on a full window, then reconnects, instead of writing megabytes into socket buffers
//! at memory speed. It never writes: an HTTP/1 header bomb waits for an answer until the
//! attacker's socket timeout or the close. It runs on one thread pinned to the proxy's CPU in
//! the idle class, so it reads what the proxy would have read there without taking that CPU
//! from the proxy serving the good client.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::thread::JoinHandle;

use anyhow::{Context as _, anyhow};
use serde::Serialize;
use tokio::io::AsyncReadExt as _;

use crate::sched::{self, Policy};

/// Connections open at once, at most; beyond, closed at accept (the slowloris holds 500).
pub const MAX_CONNECTIONS: usize = 2048;
/// Bytes read from one connection before it is held, then closed.
pub const CUT_AFTER: u64 = 64 * 1024;
/// How long a cut connection is held unread before it is closed (the proxy's `penalty::HOLD`).
pub const HOLD: std::time::Duration = std::time::Duration::from_secs(2);
/// `SO_RCVBUF` of a held connection (the proxy's `HELD_RECV_BUFFER`).
const HELD_RECV_BUFFER: usize = 4096;

/// What the listener saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SinkStats {
    pub accepted: u64,
    /// Held then closed after [`CUT_AFTER`] bytes, or closed at accept over
    /// [`MAX_CONNECTIONS`].
    pub cut: u64,
    pub bytes_read: u64,
    /// The listener thread's CPU time, percent of the proxy CPU it ran on.
    pub cpu_percent: f64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    cut: AtomicU64,
    bytes: AtomicU64,
    open: AtomicUsize,
}

/// The running listener; [`Sink::stop`] ends it and closes its connections.
#[derive(Debug)]
pub struct Sink {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<SinkStats>>>,
}

impl Sink {
    /// A listener on 127.0.0.1 served by one thread pinned to `cpu`, in `SCHED_IDLE`.
    pub fn start(cpu: u32) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("control listener")?;
        listener.set_nonblocking(true).context("control listener")?;
        let addr = listener.local_addr().context("control listener")?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("control-sink".into())
            .spawn(move || serve(listener, cpu, stopped))
            .context("control listener thread")?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops accepting, closes every connection, and reports.
    pub fn stop(mut self) -> anyhow::Result<SinkStats> {
        self.finish()
    }

    fn finish(&mut self) -> anyhow::Result<SinkStats> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow!("the control listener panicked"))?,
            None => Ok(SinkStats::default()),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn serve(
    listener: TcpListener,
    cpu: u32,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<SinkStats> {
    sched::pin_this_thread(cpu).with_context(|| format!("control listener: pin to CPU {cpu}"))?;
    sched::lower_this_thread(Policy::Idle, 19).context("control listener: SCHED_IDLE")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("control listener runtime")?;
    let counters = Arc::new(Counters::default());
    let ticks_before = thread_cpu_ticks();
    let started = std::time::Instant::now();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => return Ok::<_, std::io::Error>(()),
                accepted = listener.accept() => {
                    // An accept error (EMFILE, a connection reset before accept) ends only
                    // that connection.
                    let Ok((stream, _)) = accepted else { continue };
                    counters.accepted.fetch_add(1, Relaxed);
                    if counters.open.fetch_add(1, Relaxed) >= MAX_CONNECTIONS {
                        counters.open.fetch_sub(1, Relaxed);
                        counters.cut.fetch_add(1, Relaxed);
                        continue;
                    }
                    tokio::spawn(drain(stream, counters.clone()));
                }
            }
        }
    })
    .context("control listener")?;
    let secs = started.elapsed().as_secs_f64();
    let cpu_percent = match (ticks_before, thread_cpu_ticks()) {
        // USER_HZ ticks, 100 a second: ticks a second are percent.
        (Some(b), Some(a)) if secs > 0.0 => {
            (a.saturating_sub(b) as f64 / secs * 10.0).round() / 10.0
        }
        _ => f64::NAN,
    };
    // Dropping the runtime drops every connection's task, so every socket closes here.
    drop(rt);
    Ok(SinkStats {
        accepted: counters.accepted.load(Relaxed),
        cut: counters.cut.load(Relaxed),
        bytes_read: counters.bytes.load(Relaxed),
        cpu_percent,
    })
}

/// Reads and discards until the peer closes or an error; after [`CUT_AFTER`] bytes, holds the
/// connection unread for [`HOLD`] and closes it.
async fn drain(mut stream: tokio::net::TcpStream, counters: Arc<Counters>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut read = 0u64;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                read += n as u64;
                counters.bytes.fetch_add(n as u64, Relaxed);
                if read >= CUT_AFTER {
                    counters.cut.fetch_add(1, Relaxed);
                    // Best effort, as in the proxy: a failure only lets the window grow.
                    let _ = socket2::SockRef::from(&stream).set_recv_buffer_size(HELD_RECV_BUFFER);
                    tokio::time::sleep(HOLD).await;
                    break;
                }
            }
        }
    }
    counters.open.fetch_sub(1, Relaxed);
}

/// The calling thread's user plus system CPU time, in USER_HZ ticks.
fn thread_cpu_ticks() -> Option<u64> {
    crate::cpu_ticks_at("/proc/thread-self/stat")
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;

    #[test]
    fn it_reads_and_discards_and_holds_then_closes_a_flood() {
        let sink = Sink::start(0).unwrap();
        let mut slow = TcpStream::connect(sink.addr).unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let mut flood = TcpStream::connect(sink.addr).unwrap();
        flood
            .set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        flood.set_read_timeout(Some(HOLD * 5)).unwrap();
        // Written until a write blocks (held: the window is full) or fails (closed), within a
        // bound: a flood is held, not absorbed.
        let chunk = vec![b'x'; 16 * 1024];
        let mut written = 0u64;
        while written < 1024 * CUT_AFTER && flood.write_all(&chunk).is_ok() {
            written += chunk.len() as u64;
        }
        assert!(written >= CUT_AFTER, "blocked at {written} B");
        assert!(written < 1024 * CUT_AFTER, "never held after {written} B");
        // Then closed once the hold ends: EOF or a reset.
        let mut b = [0u8; 1];
        assert!(matches!(flood.read(&mut b), Ok(0) | Err(_)));
        let stats = sink.stop().unwrap();
        assert_eq!(stats.accepted, 2);
        assert_eq!(stats.cut, 1, "{stats:?}");
        assert!(stats.bytes_read >= CUT_AFTER, "{stats:?}");
        // Stopped: the slow connection it held is closed.
        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(matches!(slow.read(&mut b), Ok(0) | Err(_)));
    }
}
