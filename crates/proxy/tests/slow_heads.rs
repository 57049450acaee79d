//! HTTP/1 heads that time out or go over the size limits, repeated from one address, put that
//! address under the abusive-peer penalty (`limits::penalty`: a strike each, penalized at
//! `STRIKES`), while other addresses are served as before and keep-alive connections that
//! merely sat idle are no offence. On loopback with raw sockets: the attacker connects from
//! 127.0.0.2, the good client from 127.0.0.1, the idle keep-alive client from 127.0.0.3.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{WAIT, connect_from, eventually, inbound_limit_rejected, start_app, start_proxy};
use trellis_proxy::limits::penalty::STRIKES;
use trellis_testkit::attacks::ATTACKER_SOURCE;

const GOOD: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const IDLE_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";

/// Reads until the proxy closes (or [`WAIT`]): what it answered.
async fn answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `raw` on a new connection from `source` and returns the answer.
async fn exchange(source: IpAddr, addr: SocketAddr, raw: &'static [u8]) -> String {
    let mut s = connect_from(source, addr).await;
    // A refused or cut connection may be closed before it has read everything.
    let _ = s.write_all(raw).await;
    answer(&mut s).await
}

/// `n` connections from `source` at once, each writing `raw`: their answers.
async fn exchanges(n: usize, source: IpAddr, addr: SocketAddr, raw: &'static [u8]) -> Vec<String> {
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(exchange(source, addr, raw)))
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

/// Asserts that 10 connections from `source` at once are (all but at most one, the rate)
/// refused at accept: closed with no answer to a whole request.
async fn assert_refused(source: IpAddr, addr: SocketAddr) {
    let answers = exchanges(10, source, addr, GET).await;
    let refused = answers.iter().filter(|a| a.is_empty()).count();
    assert!(
        refused >= 9,
        "only {refused} of 10 connections from {source} refused: {answers:?}"
    );
}

#[tokio::test]
async fn repeated_slow_heads_penalize_their_address_and_no_other() {
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |c| {
        c.limits.header_read_timeout = Duration::from_millis(300);
        c.limits.abusive_peer_penalty = Some(Duration::from_secs(5));
        c.limits.abusive_peer_connections = 1;
    })
    .await;
    let (inbound, admin_addr) = (proxy.addrs().inbound, proxy.addrs().admin);

    // Keep-alive connections that sit idle after a request are closed at the same timeout,
    // as many as the attacker's, and are no offence.
    let idle: Vec<_> = (0..STRIKES)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = connect_from(IDLE_CLIENT, inbound).await;
                s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
                    .await
                    .unwrap();
                answer(&mut s).await
            })
        })
        .collect();
    for t in idle {
        let a = t.await.unwrap();
        assert!(a.starts_with("HTTP/1.1 200"), "{a:?}");
    }

    // A slowloris from 127.0.0.2: half a head on STRIKES connections, then nothing. Each is
    // closed at the timeout, unanswered.
    let slow = exchanges(
        STRIKES as usize,
        ATTACKER_SOURCE,
        inbound,
        b"GET / HTTP/1.1\r\nhost: a\r\nx-dribble: ",
    )
    .await;
    assert!(slow.iter().all(|a| a.is_empty()), "{slow:?}");
    eventually("every timeout counted", || async move {
        inbound_limit_rejected(admin_addr, "header_timeout").await >= 2 * u64::from(STRIKES)
    })
    .await;

    // The attacker's address is now penalized: refused at accept (and counted)...
    assert_refused(ATTACKER_SOURCE, inbound).await;
    assert!(inbound_limit_rejected(admin_addr, "abusive_peer").await >= 9);
    // ... while the good client and the idle keep-alive client are served on new connections.
    for source in [GOOD, IDLE_CLIENT, GOOD] {
        let a = exchange(source, inbound, GET).await;
        assert!(a.starts_with("HTTP/1.1 200"), "{source}: {a:?}");
    }
}

#[tokio::test]
async fn repeated_oversized_heads_penalize_their_address() {
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |c| {
        c.limits.max_headers = 10;
        c.limits.abusive_peer_penalty = Some(Duration::from_secs(5));
        c.limits.abusive_peer_connections = 1;
    })
    .await;
    let (inbound, admin_addr) = (proxy.addrs().inbound, proxy.addrs().admin);
    const BOMB: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\
        a: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\nf: 1\r\ng: 1\r\nh: 1\r\ni: 1\r\nj: 1\r\nk: 1\r\n\r\n";
    // One at a time: each answered 431 until the last strike.
    for i in 0..STRIKES {
        let a = exchange(ATTACKER_SOURCE, inbound, BOMB).await;
        assert!(a.starts_with("HTTP/1.1 431"), "head {i}: {a:?}");
    }
    eventually("every 431 counted", || async move {
        inbound_limit_rejected(admin_addr, "headers").await >= u64::from(STRIKES)
    })
    .await;
    assert_refused(ATTACKER_SOURCE, inbound).await;
    let a = exchange(GOOD, inbound, GET).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a:?}");
}
