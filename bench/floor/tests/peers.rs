//! The benchmark peers as the bench runs them: real processes on loopback. The floor forwards
//! HTTP/1.1 and gRPC (HTTP/2) to its upstream, answers 502 when the upstream is down, and the
//! load clients report what they got.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bench-floor");

/// Child processes, killed when the test ends however it ends, and their scratch directory.
struct Procs(Vec<Child>, PathBuf);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bench-floor-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `bench-floor ARGS --listen 127.0.0.1:0 --ready-file F`; returns the bound address.
fn start(procs: &mut Procs, dir: &Path, name: &str, args: &[&str]) -> String {
    let ready = dir.join(format!("{name}.json"));
    let child = Command::new(BIN)
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    procs.0.push(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            return v["listen"].as_str().unwrap().to_string();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{name}: no ready file within 10 s");
}

fn run_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "bench-floor {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_floor_forwards_http1_keep_alive_to_its_upstream() {
    let dir = scratch("http1");
    let mut procs = Procs(Vec::new(), dir.clone());
    let backend = start(&mut procs, &dir, "backend", &["backend"]);
    let floor = start(
        &mut procs,
        &dir,
        "floor",
        &["forward", "--upstream", &backend],
    );
    // http-load counts a request as ok only for a 200 with the whole 1 KiB body.
    let report = run_json(&[
        "http-load",
        "--target",
        &floor,
        "--requests",
        "300",
        "--conns",
        "3",
    ]);
    assert_eq!(report["ok"], 300, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
}

#[test]
fn the_floor_forwards_grpc_over_http2() {
    let dir = scratch("grpc");
    let mut procs = Procs(Vec::new(), dir.clone());
    let backend = start(&mut procs, &dir, "grpc-backend", &["grpc-server"]);
    let floor = start(
        &mut procs,
        &dir,
        "floor",
        &["forward", "--upstream", &backend],
    );
    let report = run_json(&[
        "grpc-load",
        "--target",
        &floor,
        "--conns",
        "2",
        "--streams",
        "2",
        "--seconds",
        "0.5",
    ]);
    assert!(report["requests"].as_u64().unwrap() > 50, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["p50_ms"].as_f64().unwrap() > 0.0, "{report}");
}

#[test]
fn the_floor_answers_502_when_its_upstream_is_down() {
    let dir = scratch("down");
    let mut procs = Procs(Vec::new(), dir.clone());
    // A port that was just free: nothing listens on it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let floor = start(&mut procs, &dir, "floor", &["forward", "--upstream", &dead]);
    let mut conn = TcpStream::connect(&floor).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
}
