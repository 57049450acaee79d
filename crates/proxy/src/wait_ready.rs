//! `trellis-proxy wait-ready`: blocks until the proxy's admin `/ready` answers 200, or fails
//! after a deadline. The injector runs it as the proxy container's postStart hook on clusters
//! without native sidecars, so the kubelet starts the app only once its proxy can carry traffic.
//!
//! Deliberately synchronous and dependency-free (a blocking socket and one HTTP/1.0 request):
//! it runs before anything else in the pod and must not need the proxy's runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::args::parse_duration;

/// Options of `trellis-proxy wait-ready`.
#[derive(Clone, Debug, clap::Args)]
pub struct WaitReadyArgs {
    /// The proxy's admin address.
    #[arg(long, default_value = "127.0.0.1:15020")]
    pub admin: SocketAddr,
    /// Give up (exit 1) after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The longest pause between probes. The first pauses are shorter (5 ms, doubling up to
    /// this), so that a proxy ready in a few milliseconds does not hold the app back for a
    /// whole interval.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("the proxy at {admin} was not ready after {timeout:?} (last: {last})")]
pub struct NotReady {
    admin: SocketAddr,
    timeout: Duration,
    last: String,
}

/// The first pause between probes; each next one doubles, up to `--interval`.
const FIRST_PAUSE: Duration = Duration::from_millis(5);

/// Probes `/ready` until it answers 200 or the timeout passes.
pub fn run(args: &WaitReadyArgs) -> Result<(), NotReady> {
    let deadline = Instant::now() + args.timeout;
    let mut pause = FIRST_PAUSE.min(args.interval);
    loop {
        let last = match probe(args.admin, args.interval.max(Duration::from_millis(100))) {
            Ok(200) => return Ok(()),
            Ok(status) => format!("/ready answered {status}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() + pause >= deadline {
            return Err(NotReady {
                admin: args.admin,
                timeout: args.timeout,
                last,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(args.interval);
    }
}

/// One `GET /ready`; returns the status code.
fn probe(admin: SocketAddr, io_timeout: Duration) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&admin, io_timeout)?;
    stream.set_read_timeout(Some(io_timeout))?;
    stream.set_write_timeout(Some(io_timeout))?;
    stream.write_all(b"GET /ready HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    // The status line fits in the first bytes; the body does not matter.
    let mut head = [0u8; 32];
    let mut filled = 0;
    while filled < head.len() {
        match stream.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    parse_status(&head[..filled])
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
}

/// The status code of an `HTTP/1.x NNN ...` status line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0"), None);
        assert_eq!(parse_status(b"HTTP/1.1 2"), None);
    }

    /// Serves `statuses` to successive connections on a loopback listener.
    fn admin_answering(statuses: Vec<u16>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for status in statuses {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                let mut buf = [0u8; 256];
                let _ = conn.read(&mut buf);
                let _ = write!(conn, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            }
        });
        addr
    }

    #[test]
    fn waits_until_ready() {
        let admin = admin_answering(vec![503, 503, 200]);
        let args = WaitReadyArgs {
            admin,
            timeout: Duration::from_secs(10),
            interval: Duration::from_millis(10),
        };
        run(&args).unwrap();
    }

    #[test]
    fn a_proxy_ready_at_once_is_seen_long_before_an_interval() {
        let admin = admin_answering(vec![503, 503, 200]);
        let args = WaitReadyArgs {
            admin,
            timeout: Duration::from_secs(50),
            interval: Duration::from_secs(20),
        };
        let started = Instant::now();
        run(&args).unwrap();
        // Two pauses of 5 and 10 ms; a fixed interval would have taken 40 s.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn gives_up_after_the_timeout() {
        let admin = admin_answering(vec![503; 100]);
        let args = WaitReadyArgs {
            admin,
            timeout: Duration::from_millis(300),
            interval: Duration::from_millis(20),
        };
        let err = run(&args).unwrap_err();
        assert!(err.to_string().contains("/ready answered 503"), "{err}");
    }
}
