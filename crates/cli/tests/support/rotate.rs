//! `trellis identity rotate` in-process, the request whose success proves a rotation broke
//! nothing, and steady traffic of it across a rotation, shared by identity_rotate.rs and identity_rotate_byo.rs.

// Each test binary that includes `support` uses only some of these (or none).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use trellis_cli::{Cli, Command as Sub, identity};

/// Runs `trellis identity rotate <args>` in-process; returns (exit code, stdout, stderr).
pub fn rotate(control: &str, args: &[&str]) -> (u8, String, String) {
    let argv = ["trellis", "identity", "rotate"]
        .into_iter()
        .chain(args.iter().copied())
        .chain(["--control", control, "--timeout", "20s"]);
    let Sub::Identity(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("not identity");
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = identity::run(&args, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

/// One `GET` of productpage's reviews API (productpage calls reviews over mTLS and answers 503
/// when that fails); the status code, or 0 when the connection failed.
pub fn get_reviews(entry: &str) -> u16 {
    let Ok(mut s) = std::net::TcpStream::connect(entry) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let request =
        "GET /api/v1/products/0/reviews HTTP/1.1\r\nHost: productpage\r\nConnection: close\r\n\r\n";
    if s.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Steady `get_reviews` traffic on a thread for the whole of a rotation (at most 40 s), with a
/// count of the requests answered so far, so that each step can wait until traffic has
/// actually flowed across it rather than sleep and hope.
pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<u16>>,
}

impl SteadyLoad {
    pub fn start(entry: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, answered, entry) = (stop.clone(), answered.clone(), entry.to_owned());
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut codes = Vec::new();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(40) {
                    codes.push(get_reviews(&entry));
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                codes
            })
        };
        Self {
            stop,
            answered,
            thread,
        }
    }

    /// Waits (at most 10 s) until `n` more requests have been answered.
    pub fn wait_for_more(&self, n: usize) {
        let target = self.answered.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.answered.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline && !self.thread.is_finished(),
                "the steady load stalled at {} requests",
                self.answered.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the load; the status code of every request sent.
    pub fn finish(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}
