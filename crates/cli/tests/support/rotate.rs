//! `trellis identity rotate` in-process, and the request whose success proves a rotation broke
//! nothing, shared by identity_rotate.rs and identity_rotate_byo.rs.

// Each test binary that includes `support` uses only some of these (or none).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::time::Duration;

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
