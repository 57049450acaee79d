//! `trellis dashboard` against a running demo: prints the URL the demo's status file names,
//! which serves the dashboard page; opens it with `xdg-open` unless `--show url`; exits 1 with a
//! clear message when the control plane is not there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod support;
use support::Demo;
use support::golden::{golden, mask_ports};

fn trellis(args: &[&str], path_env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trellis"));
    cmd.arg("dashboard").args(args);
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    cmd.output().unwrap()
}

/// `GET /` on `addr`: the status line and the body.
fn get_root(addr: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

#[test]
fn dashboard_prints_and_opens_the_url() {
    let config = tempfile::tempdir().unwrap();
    let demo = Demo::start(config.path());
    let control = demo.control_url();
    let want = demo.status["dashboard"].as_str().unwrap().to_string();

    // --show url: the URL only, and it serves the dashboard.
    let out = trellis(&["--control", &control, "--show", "url"], None);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, format!("{want}\n"));
    golden("dashboard", "url.txt", &mask_ports(&stdout));
    let http = demo.status["control"]["http"].as_str().unwrap();
    let (status, body) = get_root(http);
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        body.contains("<html") || body.contains("<!doctype html"),
        "{body}"
    );

    // The default opens it: xdg-open (a stand-in on PATH that records its argument) gets the URL.
    let bin = tempfile::tempdir().unwrap();
    let record = bin.path().join("opened");
    let fake = bin.path().join("xdg-open");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$1\" > {}\n", record.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = trellis(&["--control-plane", http], Some(&path));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{want}\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let opened = loop {
        if let Ok(s) = std::fs::read_to_string(&record)
            && !s.is_empty()
        {
            break s;
        }
        assert!(Instant::now() < deadline, "xdg-open was not run");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(opened.trim(), want);

    // No browser opener at all: still the URL, exit 0, and a hint on stderr.
    let out = trellis(
        &["--control", &control],
        Some(bin.path().join("none").to_str().unwrap()),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{want}\n"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("open the URL above"),
        "{out:?}"
    );
}

#[test]
fn dashboard_without_a_control_plane_exits_1() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = trellis(
        &[
            "--control",
            &format!("http://127.0.0.1:{port}"),
            "--show",
            "url",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(&format!(
            "the control plane at http://127.0.0.1:{port} is not reachable"
        )),
        "{err}"
    );
    golden("dashboard", "unreachable.txt", &mask_ports(&err));
    let out = trellis(&["--control", "not-an-address"], None);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}
