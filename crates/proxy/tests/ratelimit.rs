//! Local rate limiting (Trellis RateLimitPolicy) end to end with the real binaries: a
//! `trellis-control` reading the policy from its config directory, a server proxy in front of
//! the HTTP echo enforcing it, and two client proxies with different identities calling it over
//! mesh mTLS. Over a fixed time at a rate far above the limit, each identity is let through
//! about burst + rate x time requests (its own bucket), the rest get 429 with `Retry-After`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use trellis_testkit::fixture::target;
use trellis_testkit::mesh::{config_dir, service_yaml};
use trellis_testkit::{ControlPlane, HttpEcho, ProxyBuilder, wait};

const CONVERGE: Duration = Duration::from_secs(20);
/// The limit: 10 per second, a burst of 5, per calling identity, on `/limited` only.
const RATE: f64 = 10.0;
const BURST: f64 = 5.0;
const POLICY: &str = "apiVersion: trellis.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: echo-limit, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  limits:
  - name: limited
    match: {path: {prefix: /limited}}
    requestsPerUnit: 10
    unit: second
    burst: 5
    perClientIdentity: true
";

/// One request on a new connection: the status and the lowercase head.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: echo\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    (status, head)
}

/// Sends requests back to back for `span`: (allowed, limited, the elapsed time).
fn hammer(addr: SocketAddr, span: Duration) -> (u32, u32, Duration) {
    let started = Instant::now();
    let (mut ok, mut limited) = (0, 0);
    // Bounded by time and by count.
    for _ in 0..100_000 {
        if started.elapsed() >= span {
            break;
        }
        match get(addr, "/limited") {
            (200, _) => ok += 1,
            (429, head) => {
                limited += 1;
                assert!(head.contains("retry-after: "), "{head}");
                assert!(head.contains("x-ratelimit-limit: 5"), "{head}");
                assert!(head.contains("trellis-error: local rate limited"), "{head}");
            }
            (status, head) => panic!("unexpected {status}: {head}"),
        }
    }
    (ok, limited, started.elapsed())
}

#[test]
fn rate_limit_policy_is_enforced_per_client_identity() {
    let echo = HttpEcho::start().unwrap();
    let config = config_dir(&[
        (
            "echo.yaml",
            service_yaml("echo", "default", 8080, echo.addr.port(), "echo"),
        ),
        ("limit.yaml", POLICY.to_string()),
    ])
    .unwrap();
    let control = ControlPlane::start(config.path()).unwrap();
    let server = ProxyBuilder::loopback("echo-0")
        .label("app", "echo")
        .service_account("echo")
        .control(&control.url())
        .app(echo.addr)
        .start()
        .unwrap();
    let clients: Vec<_> = ["a", "b"]
        .iter()
        .map(|sa| {
            ProxyBuilder::loopback(&format!("client-{sa}"))
                .label("app", "client")
                .service_account(sa)
                .control(&control.url())
                .outbound_port(&target("echo", 8080))
                .start()
                .unwrap()
        })
        .collect();
    for p in std::iter::once(&server).chain(&clients) {
        p.wait_ready(CONVERGE).unwrap();
    }
    let a = clients[0].outbound_port(&target("echo", 8080));
    let b = clients[1].outbound_port(&target("echo", 8080));
    let mut limited_total = 0;

    // The policy arrives from discovery: wait until client a is limited (bursts of 10, faster
    // than the bucket refills).
    wait::until(CONVERGE, || {
        let limited = (0..10).filter(|_| get(a, "/limited").0 == 429).count();
        limited_total += u32::try_from(limited).unwrap();
        if limited > 0 {
            Ok(())
        } else {
            Err("not limited yet".to_string())
        }
    })
    .unwrap();
    // Unmatched paths are never limited.
    for _ in 0..20 {
        assert_eq!(get(a, "/free").0, 200);
    }
    // Let a's bucket fill again (5 tokens at 10/s), then both identities hammer at once. A
    // pause by design: the bucket refills with time, and probing it would spend its tokens.
    std::thread::sleep(Duration::from_millis(700));
    let span = Duration::from_secs(2);
    let runs: Vec<_> = [a, b]
        .into_iter()
        .map(|addr| std::thread::spawn(move || hammer(addr, span)))
        .collect();
    for (who, run) in ["a", "b"].iter().zip(runs) {
        let (ok, limited, took) = run.join().unwrap();
        limited_total += limited;
        let expected = BURST + RATE * took.as_secs_f64();
        // Each identity gets its own full allowance: a shared bucket would give each about
        // half of it.
        assert!(
            f64::from(ok) >= expected * 0.8 && f64::from(ok) <= expected + 2.0,
            "{who}: {ok} allowed in {took:?}, expected about {expected:.0}"
        );
        assert!(
            limited > 10 * ok,
            "{who}: only {limited} limited against {ok} allowed"
        );
    }
    // The server proxy counted every 429 it answered.
    let counted = server
        .metrics()
        .sum("trellis_rate_limited_total", &[("direction", "inbound")]);
    assert!(
        counted >= f64::from(limited_total),
        "{counted} counted, {limited_total} seen"
    );
}
