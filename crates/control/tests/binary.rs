//! The `trellis-control` binary's contract: exit codes, the ready file, graceful stop.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_trellis-control");
const DEADLINE: Duration = Duration::from_secs(20);

fn wait(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("trellis-control did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_exit_64() {
    let (code, stderr) = run(&["--config-dir", "/nonexistent/trellis-config"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("/nonexistent/trellis-config"), "{stderr}");
    let (code, stderr) = run(&["--poll-interval", "fast"]);
    assert_eq!(code, 64, "{stderr}");
    let (code, stderr) = run(&["--trust-domain", "Not Valid"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--trust-domain"), "{stderr}");
    let (code, _) = run(&["--no-such-flag"]);
    assert_eq!(code, 64);
    let (code, stdout) = run(&["--help"]);
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn ready_file_then_graceful_stop_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let mut child = Command::new(BIN)
        .args(["--config-dir", config.to_str().unwrap()])
        .args([
            "--discovery",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let info: serde_json::Value = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            break serde_json::from_str(&text).expect("complete JSON: written by rename");
        }
        if start.elapsed() > DEADLINE || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("no ready file");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(info["pid"], child.id());
    let http: std::net::SocketAddr = info["http"].as_str().unwrap().parse().unwrap();
    let discovery: std::net::SocketAddr = info["discovery"].as_str().unwrap().parse().unwrap();
    assert_ne!(http.port(), 0);
    assert_ne!(discovery.port(), 0);
    assert!(std::net::TcpStream::connect(discovery).is_ok());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(wait(&mut child).code(), Some(0));
}
