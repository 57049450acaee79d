//! A real Python grpcio client and server (raw bytes, generic handlers) with the proxy pair
//! between them: unary and server-streaming calls, trailers, and a non-OK status.

// Test helpers outside #[test] functions fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use trellis_testkit::{ManagedProcess, MeshBuilder, tools};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/grpc_echo.py");

struct GrpcServer {
    addr: std::net::SocketAddr,
    _process: ManagedProcess,
    _dir: tempfile::TempDir,
}

fn start_server(python: &PathBuf) -> GrpcServer {
    let dir = trellis_testkit::mesh::scratch_dir().unwrap();
    let ready = dir.path().join("grpc.json");
    let mut cmd = Command::new(python);
    cmd.arg(SCRIPT)
        .args(["serve", "--port", "0", "--ready-file"])
        .arg(&ready);
    let mut process = ManagedProcess::spawn("grpc server", cmd).unwrap();
    let value: Value = process
        .wait_ready_file(&ready, Duration::from_secs(30))
        .unwrap();
    let addr = value["addr"].as_str().unwrap().parse().unwrap();
    GrpcServer {
        addr,
        _process: process,
        _dir: dir,
    }
}

fn call(python: &PathBuf, target: std::net::SocketAddr, case: &str) -> Value {
    let mut cmd = Command::new(python);
    cmd.arg(SCRIPT).args([
        "call",
        "--target",
        &target.to_string(),
        "--authority",
        "grpc.default:9090",
        case,
    ]);
    let out = tools::run_bounded(&mut cmd, Duration::from_secs(30)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpc client {case} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("client printed no JSON ({e}): {stdout}"))
}

#[test]
fn grpc_unary_streaming_and_status_through_the_proxy_pair() {
    let python = tools::python_with_grpc();
    let server = start_server(&python);
    let mesh = MeshBuilder::new()
        .service("grpc", 9090, server.addr)
        .start();
    let port = mesh.client_port("grpc");

    // Converge: the first call may race the server proxy's registration.
    trellis_testkit::wait::until(Duration::from_secs(30), || {
        let v = call(&python, port, "unary");
        if v["code"] == "OK" {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })
    .unwrap();

    let unary = call(&python, port, "unary");
    assert_eq!(unary["code"], "OK", "{unary}");
    assert_eq!(unary["echo_ok"], true, "{unary}");
    assert_eq!(
        unary["trailers"]["x-echo-trailer"], "done",
        "trailers must pass through: {unary}"
    );

    let stream = call(&python, port, "stream");
    assert_eq!(stream["code"], "OK", "{stream}");
    let messages: Vec<&str> = stream["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        messages,
        ["0:hello", "1:hello", "2:hello", "3:hello", "4:hello"]
    );
    assert_eq!(stream["trailers"]["x-echo-count"], "5", "{stream}");

    let fail = call(&python, port, "fail");
    assert_eq!(
        fail["code"], "NOT_FOUND",
        "a non-OK grpc-status must pass through: {fail}"
    );
    assert_eq!(fail["details"], "no such thing", "{fail}");
    assert_eq!(fail["trailers"]["x-echo-why"], "asked", "{fail}");
}

#[test]
fn grpc_large_unary_through_the_proxy_pair() {
    let python = tools::python_with_grpc();
    let server = start_server(&python);
    let mesh = MeshBuilder::new()
        .service("grpc", 9090, server.addr)
        .start();
    let port = mesh.client_port("grpc");
    let mut cmd = Command::new(&python);
    cmd.arg(SCRIPT).args([
        "call",
        "--target",
        &port.to_string(),
        "--size",
        "3000000",
        "unary",
    ]);
    let value = trellis_testkit::wait::until(Duration::from_secs(30), || {
        let out = tools::run_bounded(&mut cmd, Duration::from_secs(30))?;
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        if v["code"] == "OK" {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .unwrap();
    assert_eq!(
        value["echo_ok"], true,
        "3 MB (several HTTP/2 frames and windows) must arrive intact: {value}"
    );
    assert_eq!(value["len"], 3_000_000);
}

/// A tonic client (the benchmark's gRPC load tool, `bench-floor grpc-load`) through the pair,
/// thousands of calls on two connections, all succeed. Its requests end with an empty DATA
/// frame carrying END_STREAM after the message (grpcio's do not); the retry body once turned
/// that into an empty DATA frame without END_STREAM per request, and after a hundred the
/// server proxy's h2 closed the connection as a flood (7 % of calls failed).
#[test]
fn grpc_tonic_client_calls_through_the_proxy_pair_all_succeed() {
    let dir = trellis_testkit::mesh::scratch_dir().unwrap();
    let ready = dir.path().join("grpc-server.json");
    let mut cmd = Command::new(trellis_testkit::bins::bin("bench-floor"));
    cmd.args(["grpc-server", "--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready);
    let mut server = ManagedProcess::spawn("bench-floor grpc-server", cmd).unwrap();
    let value: Value = server
        .wait_ready_file(&ready, Duration::from_secs(30))
        .unwrap();
    let addr = value["listen"].as_str().unwrap().parse().unwrap();
    let mesh = MeshBuilder::new().service("grpc", 9090, addr).start();
    let port = mesh.client_port("grpc");
    let load = |seconds: &str| -> Value {
        let mut cmd = Command::new(trellis_testkit::bins::bin("bench-floor"));
        cmd.args(["grpc-load", "--target", &port.to_string()])
            .args(["--conns", "2", "--streams", "4", "--seconds", seconds]);
        let out = tools::run_bounded(&mut cmd, Duration::from_secs(40)).unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("grpc-load printed no JSON ({e}): {out:?}"))
    };
    // Converge: the first calls may race the server proxy's registration.
    trellis_testkit::wait::until(Duration::from_secs(30), || {
        let v = load("1");
        (v["errors"] == 0).then_some(()).ok_or(v.to_string())
    })
    .unwrap();
    let v = load("4");
    assert!(v["requests"].as_u64().unwrap() > 400, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
}
