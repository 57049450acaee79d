//! `trellis top` in a real terminal: tmux runs it full-screen against a demo with traffic; the
//! screen must show Bookinfo's live paths with growing counts, `q` must quit with exit 0, and
//! the terminal must be as before (raw mode off, alternate screen left).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod support;
use support::Demo;

/// tmux on a server of this test's own (`-L`), so no user session is touched.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux is installed (scripts/test.sh installs it)")
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The sum of COUNT over the screen's lines for `path` called by productpage.
fn count_of(screen: &str, path: &str) -> u64 {
    screen
        .lines()
        .filter(|l| l.starts_with("productpage-v1 "))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.get(3) == Some(&path)).then(|| cols.get(4)?.parse::<u64>().ok())?
        })
        .sum()
}

fn get(entry: &str, path: &str) {
    let Ok(mut s) = std::net::TcpStream::connect(entry) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: productpage\r\nConnection: close\r\n\r\n"
    );
    let _ = s.read_to_end(&mut Vec::new());
}

/// Polls `f` every 200 ms for up to `limit`; returns its last answer.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn top_shows_live_paths_in_tmux_and_quits_on_q() {
    let config = tempfile::tempdir().unwrap();
    let demo = Demo::start(config.path());
    let control = demo.control_url();
    let entry = demo.status["entry"].as_str().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(50);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                get(&entry, "/productpage");
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };

    let tmp = tempfile::tempdir().unwrap();
    let exit_file = tmp.path().join("exit");
    let stty_before = tmp.path().join("stty-before");
    let stty_after = tmp.path().join("stty-after");
    let script = format!(
        "stty -g > {before}; echo BEFORE-TOP; {bin} top productpage --control {control}; \
         echo $? > {exit}; stty -g > {after}; sleep 30",
        before = stty_before.display(),
        after = stty_after.display(),
        exit = exit_file.display(),
        bin = env!("CARGO_BIN_EXE_trellis"),
    );
    let tmux = Tmux {
        socket: format!("trellis-top-test-{}", std::process::id()),
    };
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "140",
        "-y",
        "30",
        "sh",
        "-c",
        &script,
    ]);
    assert!(started.status.success(), "{started:?}");

    // Live Bookinfo paths: productpage calling reviews and details.
    let screen = wait_for(Duration::from_secs(20), || {
        let s = tmux.capture();
        (count_of(&s, "/reviews/0") > 0 && count_of(&s, "/details/0") > 0).then_some(s)
    })
    .unwrap_or_else(|| panic!("no live paths on the screen:\n{}", tmux.capture()));
    assert!(
        screen.contains("trellis top productpage (default)"),
        "{screen}"
    );
    for header in [
        "SOURCE",
        "DESTINATION",
        "METHOD",
        "PATH",
        "COUNT",
        "BEST",
        "WORST",
        "LAST",
        "SUCCESS",
    ] {
        assert!(screen.contains(header), "{header}: {screen}");
    }
    assert!(screen.contains("100.00%"), "{screen}");
    assert!(
        !screen.contains("BEFORE-TOP"),
        "top must use the alternate screen: {screen}"
    );
    // Counts grow with the traffic (the view redraws every second).
    let first = count_of(&screen, "/reviews/0");
    let grown = wait_for(Duration::from_secs(10), || {
        let n = count_of(&tmux.capture(), "/reviews/0");
        (n > first).then_some(n)
    });
    assert!(
        grown.is_some(),
        "the count stayed at {first}:\n{}",
        tmux.capture()
    );

    // q quits cleanly and gives the terminal back.
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let code = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&exit_file)
            .ok()
            .filter(|s| !s.is_empty())
    })
    .unwrap_or_else(|| panic!("top did not exit on q:\n{}", tmux.capture()));
    assert_eq!(code.trim(), "0");
    let after = wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&stty_after)
            .ok()
            .filter(|s| !s.is_empty())
    })
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&stty_before).unwrap(),
        after,
        "terminal modes restored"
    );
    let screen = tmux.capture();
    assert!(
        screen.contains("BEFORE-TOP"),
        "the main screen is back: {screen}"
    );
    assert!(!screen.contains("SUCCESS"), "the view is gone: {screen}");

    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(Path::new(&exit_file).exists());
}
