//! The binary's exit codes: 64 for a bad flag (before anything is bound), 1 for a port conflict.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

fn proxy(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis-proxy"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_64_naming_the_flag() {
    for (args, flag) in [
        (&["--detect-timeout", "soon"][..], "--detect-timeout"),
        (
            &["run", "--outbound-port", "127.0.0.1:0=nope"][..],
            "--outbound-port",
        ),
        (&["--control", "http://127.0.0.1:1"][..], "--workload"),
        (&["--log-level", "=="][..], "--log-level"),
    ] {
        let (code, stderr) = proxy(args);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn a_taken_port_exits_1_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = proxy(&[
        "--inbound",
        "127.0.0.1:0",
        "--outbound",
        "none",
        "--admin",
        &addr,
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("--admin"),
        "{stderr}"
    );
}
