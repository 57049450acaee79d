//! The `trellis_tcp_*` metrics carry the connection's peers: an opaque TCP stream through a real
//! client and server `trellis-proxy` pair (mesh mTLS, certificates from a real
//! `trellis-control`) is counted on both proxies under the source and destination workload,
//! identity and `tls="true"`, with the bytes the test sent. The server proxy knows the caller's
//! workload from the TCP metadata exchange (ALPN `trellis-mx/1`); a plaintext caller has none.

// Test helpers outside #[test] functions fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use std::path::Path;
use std::process::Command;

use trellis_testkit::certs::{openssl, shared_root_ca_dirs};
use trellis_testkit::mesh::{config_dir, service_yaml};
use trellis_testkit::metrics::Metrics;
use trellis_testkit::servers::tcp_roundtrip;
use trellis_testkit::tools::{require, run_bounded_with_input};
use trellis_testkit::{ControlPlane, MeshBuilder, ProxyBuilder, TcpEcho, wait};

const CONVERGE: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(10);

/// The five TCP families summed over the series matching `labels`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tcp {
    opened: f64,
    closed: f64,
    received: f64,
    sent: f64,
    durations: f64,
}

fn tcp(m: &Metrics, labels: &[(&str, &str)]) -> Tcp {
    Tcp {
        opened: m.sum("trellis_tcp_connections_opened_total", labels),
        closed: m.sum("trellis_tcp_connections_closed_total", labels),
        received: m.sum("trellis_tcp_received_bytes_total", labels),
        sent: m.sum("trellis_tcp_sent_bytes_total", labels),
        durations: m.sum("trellis_tcp_connection_duration_seconds_count", labels),
    }
}

#[test]
fn opaque_tcp_is_counted_by_workload_identity_and_tls_on_both_proxies() {
    let echo = TcpEcho::start().unwrap();
    let mesh = MeshBuilder::new()
        .service("tcpecho", 9000, echo.addr)
        .start();
    let port = mesh.client_port("tcpecho");
    let server = mesh.server("tcpecho");

    // The first connections may race the server proxy's registration: wait until a small
    // probe echoes, then measure one connection from a baseline.
    wait::until(CONVERGE, || {
        match tcp_roundtrip(port, b"ping".to_vec(), TIMEOUT) {
            Ok(e) if e == b"ping" => Ok(()),
            other => Err(format!("probe: {other:?}")),
        }
    })
    .unwrap();

    let client_labels = [
        ("direction", "outbound"),
        ("source_workload", "client"),
        ("source_namespace", "default"),
        ("destination_workload", "tcpecho-0"),
        ("destination_namespace", "default"),
        ("tls", "true"),
    ];
    // The caller's workload, announced by the client proxy in the TCP metadata exchange.
    let server_labels = [
        ("direction", "inbound"),
        ("source_workload", "client"),
        ("source_namespace", "default"),
        ("destination_workload", "tcpecho-0"),
        ("destination_namespace", "default"),
        ("tls", "true"),
    ];
    // Both sides' connections of the probe must have closed before the baseline.
    let (client_before, server_before) = wait::until(TIMEOUT, || {
        let c = tcp(&mesh.client.metrics(), &client_labels);
        let s = tcp(&server.metrics(), &server_labels);
        if c.opened >= 1.0 && c.opened == c.closed && s.opened >= 1.0 && s.opened == s.closed {
            Ok((c, s))
        } else {
            Err(format!(
                "probe connections still open: client {c:?}, server {s:?}"
            ))
        }
    })
    .unwrap();

    // Not a multiple of the proxy's 64 KiB byte batches, so both the batched and the
    // end-of-stream flushes count.
    let payload: Vec<u8> = (0..300_007u32).map(|i| (i % 251) as u8).collect();
    let echoed = tcp_roundtrip(port, payload.clone(), TIMEOUT).unwrap();
    assert!(echoed == payload, "echo differs from what was sent");
    let n = payload.len() as f64;

    let (client, srv) = wait::until(TIMEOUT, || {
        let c = tcp(&mesh.client.metrics(), &client_labels);
        let s = tcp(&server.metrics(), &server_labels);
        if c.closed == client_before.closed + 1.0 && s.closed == server_before.closed + 1.0 {
            Ok((c, s))
        } else {
            Err(format!(
                "connection not closed on both proxies: client {c:?}, server {s:?}"
            ))
        }
    })
    .unwrap();

    // The client proxy's downstream is the test's plain socket: exactly what was sent and echoed.
    assert_eq!(client.opened - client_before.opened, 1.0, "{client:?}");
    assert_eq!(client.received - client_before.received, n, "{client:?}");
    assert_eq!(client.sent - client_before.sent, n, "{client:?}");
    assert_eq!(
        client.durations - client_before.durations,
        1.0,
        "{client:?}"
    );

    // The server proxy's downstream is the mTLS hop: the payload plus the handshake and record
    // overhead (a few KiB on 300 KB).
    assert_eq!(srv.opened - server_before.opened, 1.0, "{srv:?}");
    for (what, bytes) in [
        ("received", srv.received - server_before.received),
        ("sent", srv.sent - server_before.sent),
    ] {
        assert!(
            bytes >= n && bytes <= n * 1.05 + 16384.0,
            "server proxy {what} {bytes} bytes for a {n}-byte payload"
        );
    }

    // The server side knows the caller by its verified SPIFFE ID.
    let m = server.metrics();
    let ids: Vec<&str> = m
        .matching("trellis_tcp_connections_opened_total", &server_labels)
        .filter(|s| s.value > 0.0)
        .filter_map(|s| s.labels.get("source_identity").map(String::as_str))
        .collect();
    assert!(
        !ids.is_empty()
            && ids
                .iter()
                .all(|id| id.starts_with("spiffe://cluster.local/ns/default/")),
        "source identities on the server proxy: {ids:?}"
    );
    // And no opaque connection of this test fell back to the direction-only series.
    let unlabelled = m.sum(
        "trellis_tcp_connections_opened_total",
        &[("direction", "inbound"), ("tls", "false")],
    );
    assert_eq!(unlabelled, 0.0, "plaintext inbound connections counted");
}

#[test]
fn a_plaintext_caller_is_counted_without_a_source_workload() {
    let echo = TcpEcho::start().unwrap();
    let mesh = MeshBuilder::new()
        .service("tcpecho", 9000, echo.addr)
        .start();
    let server = mesh.server("tcpecho");
    // Straight to the server proxy's inbound listener: no client proxy, no mTLS, no exchange.
    let inbound = server.ready.inbound;
    let payload = b"plain caller".to_vec();
    let echoed = tcp_roundtrip(inbound, payload.clone(), TIMEOUT).unwrap();
    assert_eq!(echoed, payload);

    let labels = [("direction", "inbound"), ("tls", "false")];
    let m = wait::until(TIMEOUT, || {
        let m = server.metrics();
        if m.sum("trellis_tcp_connections_closed_total", &labels) >= 1.0 {
            Ok(m)
        } else {
            Err("the plaintext connection is not counted as closed yet".to_string())
        }
    })
    .unwrap();
    let series: Vec<_> = m
        .matching("trellis_tcp_connections_opened_total", &labels)
        .filter(|s| s.value > 0.0)
        .collect();
    assert!(!series.is_empty(), "no inbound plaintext series");
    for s in &series {
        for label in ["source_workload", "source_namespace", "source_identity"] {
            assert_eq!(
                s.labels.get(label).map(String::as_str),
                Some(""),
                "{label} of a plaintext caller: {s:?}"
            );
        }
    }
    assert_eq!(
        m.sum(
            "trellis_tls_handshake_failures_total",
            &[("reason", "metadata_exchange")]
        ),
        0.0
    );
}

/// A mesh client leaf for `spiffe://cluster.local/ns/default/sa/<sa>` signed by the issuer in
/// `ca` (a `--ca-dir`): `<sa>.pem` and `<sa>.key` in `dir`.
fn client_leaf(dir: &Path, ca: &Path, sa: &str) {
    let ext = format!(
        "subjectAltName=URI:spiffe://cluster.local/ns/default/sa/{sa}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth,serverAuth\n"
    );
    std::fs::write(dir.join("leaf.ext"), ext).unwrap();
    let (key, csr, pem) = (
        format!("{sa}.key"),
        format!("{sa}.csr"),
        format!("{sa}.pem"),
    );
    let subject = format!("/CN={sa}");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &subject,
        ],
    )
    .unwrap();
    let (ca_pem, ca_key) = (ca.join("issuer.pem"), ca.join("issuer-key.pem"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            ca_pem.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
        ],
    )
    .unwrap();
}

#[test]
fn the_server_proxy_reads_the_callers_metadata_header_and_closes_on_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = shared_root_ca_dirs(dir.path(), &["c1"]).unwrap().remove(0);
    client_leaf(dir.path(), &ca, "rogue");
    let echo = TcpEcho::start().unwrap();
    let config = config_dir(&[(
        "tcpecho.yaml",
        service_yaml("tcpecho", "default", 9000, echo.addr.port(), "tcpecho"),
    )])
    .unwrap();
    let control = ControlPlane::start_with(
        config.path(),
        "127.0.0.1:0".parse().unwrap(),
        None,
        &["--ca-dir", ca.to_str().unwrap()],
    )
    .unwrap();
    let server = ProxyBuilder::loopback("tcpecho-0")
        .label("app", "tcpecho")
        .control(&control.url())
        .app(echo.addr)
        .start()
        .unwrap();
    let inbound = server.ready.inbound.to_string();
    // A mesh client as openssl: the mesh marker and `trellis-mx/1`, this test's leaf and issuer.
    let send = |input: &[u8]| {
        let mut cmd = Command::new(require("openssl", "openssl"));
        cmd.current_dir(dir.path()).args([
            "s_client",
            "-connect",
            &inbound,
            "-quiet",
            "-no_ign_eof",
            "-alpn",
            "trellis-mx/1,trellis-mesh",
            "-cert",
            "rogue.pem",
            "-key",
            "rogue.key",
        ]);
        cmd.arg("-cert_chain").arg(ca.join("issuer.pem"));
        run_bounded_with_input(&mut cmd, input, TIMEOUT).unwrap()
    };
    let failures = |m: &Metrics| {
        m.sum(
            "trellis_tls_handshake_failures_total",
            &[("direction", "inbound"), ("reason", "metadata_exchange")],
        )
    };

    // The proxy gets its certificate from the control plane shortly after it starts: retry
    // until a handshake completes and a bad header (version 'g') is counted.
    wait::until(CONVERGE, || {
        send(b"garbage, not a header");
        match failures(&server.metrics()) {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("metadata_exchange failures: {n}")),
        }
    })
    .unwrap();
    let before = failures(&server.metrics());

    // A good header: version 1, a 19-byte body, workload "rogue-v1", namespace "default".
    let mut frame = vec![1, 0, 19, 1, 8];
    frame.extend_from_slice(b"rogue-v1");
    frame.extend_from_slice(&[2, 7]);
    frame.extend_from_slice(b"default");
    frame.extend_from_slice(b"ping");
    send(&frame);
    let labels = [
        ("direction", "inbound"),
        ("source_workload", "rogue-v1"),
        ("source_namespace", "default"),
        (
            "source_identity",
            "spiffe://cluster.local/ns/default/sa/rogue",
        ),
        ("destination_workload", "tcpecho-0"),
        ("tls", "true"),
    ];
    wait::until(TIMEOUT, || {
        let m = server.metrics();
        let n = m.sum("trellis_tcp_connections_opened_total", &labels);
        if n == 1.0 {
            Ok(())
        } else {
            Err(format!("series of the announced caller opened {n}"))
        }
    })
    .unwrap();
    assert_eq!(
        failures(&server.metrics()),
        before,
        "a good header counted as failed"
    );
}
