//! Start-up's file pages leave a real trellis-proxy's resident set once it is ready
//! (src/resident.rs), and the proxy still serves afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The proxy process, killed when the test ends however it ends.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A standalone proxy (no control plane: ready once bound) and its admin address.
fn start(dir: &Path, name: &str, release: bool) -> (Proxy, String) {
    let ready = dir.join(format!("{name}.json"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trellis-proxy"));
    cmd.args(["--inbound", "127.0.0.1:0", "--outbound", "none"])
        .args(["--admin", "127.0.0.1:0", "--threads", "1", "--ready-file"])
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if !release {
        cmd.env("TRELLIS_PROXY_RELEASE_STARTUP_PAGES", "off");
    }
    let proxy = Proxy(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
        {
            return (proxy, json["admin"].as_str().unwrap().to_string());
        }
        assert!(Instant::now() < deadline, "{name}: no ready file in 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A field of /proc/<pid>/status, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn admin_ready(admin: &str) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn start_up_file_pages_are_released_once_ready() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, _) = start(dir.path(), "kept", false);
    let (released, admin) = start(dir.path(), "released", true);
    // Readiness, then the release's 0.5 s settle time, with margin for a busy machine.
    std::thread::sleep(Duration::from_millis(1500));
    let kept_file = status_kib(kept.0.id(), "RssFile");
    let released_file = status_kib(released.0.id(), "RssFile");
    // A debug build's start-up maps many MiB of code; after the release only what the idle
    // proxy has run since stays.
    assert!(
        released_file + 2048 < kept_file,
        "file-backed RSS: released {released_file} KiB, kept {kept_file} KiB"
    );
    // The peak still records start-up; the release took the RSS well below it.
    let pid = released.0.id();
    assert!(
        status_kib(pid, "VmRSS") + 2048 < status_kib(pid, "VmHWM"),
        "the released proxy's RSS is not below its start-up peak"
    );
    // Code faults back in: the proxy still answers.
    let answer = admin_ready(&admin);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
