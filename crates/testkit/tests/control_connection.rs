//! A proxy's connection to the control plane, with the real binaries on loopback: discovery,
//! Certify and the trust-bundle stream share one TCP connection (the control plane serves its
//! CA on the discovery port), and still one after the control plane restarts. For the control
//! plane that is one connection per proxy, not two; for the proxy, no second TCP and HTTP/2
//! handshake between its Welcome and its certificate.
//!
//! The connections are read from /proc: the proxy's socket inodes (`/proc/PID/fd`) that are
//! established to the discovery address in `/proc/PID/net/tcp`.

// Test helpers outside #[test] functions fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use trellis_testkit::mesh::config_dir;
use trellis_testkit::{ControlPlane, Proxy, ProxyBuilder, tools, wait};

const CONVERGE: Duration = Duration::from_secs(30);
const LOOPBACK_ANY: &str = "127.0.0.1:0";

/// The socket inodes process `pid` holds open.
fn socket_inodes(pid: u32) -> Result<HashSet<u64>, String> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    Ok(entries
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect())
}

/// `0100007F:3A98` (`/proc/net/tcp`: the IPv4 address as a little-endian word, the port big
/// endian) as an address.
fn proc_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::new(IpAddr::from(ip.to_le_bytes()), port))
}

/// How many TCP connections process `pid` has established to `remote` (IPv4).
fn connections_to(pid: u32, remote: SocketAddr) -> Result<usize, String> {
    let inodes = socket_inodes(pid)?;
    let path = format!("/proc/{pid}/net/tcp");
    let table = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    Ok(table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            f.len() > 9
                && f[3] == "01"
                && proc_addr(f[2]) == Some(remote)
                && f[9].parse().is_ok_and(|i: u64| inodes.contains(&i))
        })
        .count())
}

/// Checks, several times over `span`, that the proxy holds exactly one connection to the
/// discovery port (a second one would show up within milliseconds of the certificate).
fn holds_one_connection_over(proxy: &Proxy, discovery: SocketAddr, span: Duration) {
    let until = Instant::now() + span;
    // Bounded: ends at `until`, one check per 100 ms.
    loop {
        let n = connections_to(proxy.ready.pid, discovery).unwrap();
        assert_eq!(
            n, 1,
            "connections from the proxy to the control plane at {discovery}"
        );
        if Instant::now() >= until {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn identity_field(proxy: &Proxy, field: &str) -> serde_json::Value {
    let (_, dump) = proxy.admin_get("/config_dump").unwrap();
    let json: serde_json::Value = serde_json::from_str(&dump).unwrap();
    json["identity"][field].clone()
}

fn control_post(control: &ControlPlane, path: &str) -> (u16, String) {
    tools::http_request(control.ready.http, "POST", path).unwrap()
}

#[test]
fn discovery_certify_and_the_bundle_stream_share_one_connection() {
    let config = config_dir::<&str, &str>(&[]).unwrap();
    let mut control =
        ControlPlane::start_with(config.path(), LOOPBACK_ANY.parse().unwrap(), None, &[]).unwrap();
    let discovery = control.ready.discovery;
    let proxy = ProxyBuilder::loopback("web")
        .service_account("web")
        .control(&control.url())
        .start()
        .unwrap();
    proxy.wait_ready(CONVERGE).unwrap();
    assert_eq!(
        identity_field(&proxy, "identity"),
        "spiffe://cluster.local/ns/default/sa/web"
    );
    holds_one_connection_over(&proxy, discovery, Duration::from_secs(1));

    // The bundle stream is live on that connection: a rotation's new root reaches the proxy.
    let (code, body) = control_post(&control, "/api/v1/identity/rotate/prepare");
    assert_eq!(code, 200, "{body}");
    wait::until(CONVERGE, || {
        match identity_field(&proxy, "trust_anchors").as_u64() {
            Some(2) => Ok(()),
            other => Err(format!("trust anchors: {other:?}")),
        }
    })
    .unwrap();
    holds_one_connection_over(&proxy, discovery, Duration::from_millis(300));

    // A restarted control plane (a new CA) at the same address: the proxy re-registers,
    // renews, and its requests follow discovery to the new connection; the old one is gone.
    let renewals = identity_field(&proxy, "renewals").as_u64().unwrap();
    control.process().terminate(Duration::from_secs(5));
    let control = ControlPlane::start_with(config.path(), discovery, None, &[]).unwrap();
    wait::until(CONVERGE, || {
        let now = identity_field(&proxy, "renewals").as_u64().unwrap_or(0);
        (now > renewals)
            .then_some(())
            .ok_or_else(|| format!("not renewed yet ({now})"))
    })
    .unwrap();
    wait::until(CONVERGE, || {
        match connections_to(proxy.ready.pid, discovery)? {
            1 => Ok(()),
            n => Err(format!("{n} connections to the control plane")),
        }
    })
    .unwrap();
    holds_one_connection_over(&proxy, discovery, Duration::from_millis(500));
    proxy.wait_ready(CONVERGE).unwrap();
    drop(control);
}

#[test]
fn proc_addresses_parse() {
    assert_eq!(
        proc_addr("0100007F:3A98"),
        Some("127.0.0.1:15000".parse().unwrap())
    );
    assert_eq!(proc_addr("nonsense"), None);
}
