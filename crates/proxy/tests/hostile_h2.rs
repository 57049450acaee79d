//! HTTP/2 floods against the proxy's inbound listener, on loopback with raw frames: a header
//! block run on in CONTINUATION frames is cut with GOAWAY `ENHANCE_YOUR_CALM` within a few
//! frames (counted as `limit="h2_reset_flood"`, the label of every such GOAWAY); an address that was sent that GOAWAY may then open
//! only `--abusive-peer-connections` connections a second (the rest closed at accept, counted as
//! `limit="abusive_peer"`), while other addresses are served as before. The attacker connects
//! from 127.0.0.2, the well-behaved client from 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{
    WAIT, connect_from, eventually, full, http2_conn, inbound_limit_rejected, start_app,
    start_proxy,
};
use trellis_testkit::attacks::{ATTACKER_SOURCE, h2frame};

/// The frames the proxy sends until it closes, or `stop` says enough (bounded by [`WAIT`]):
/// (type, payload) each.
async fn read_frames(
    r: &mut (impl AsyncReadExt + Unpin),
    stop: impl Fn(&[(u8, Vec<u8>)]) -> bool,
) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            // Closed (FIN or RST), or the deadline.
            _ => return parse_frames(&got),
        }
        if stop(&parse_frames(&got)) {
            return parse_frames(&got);
        }
    }
}

fn parse_frames(got: &[u8]) -> Vec<(u8, Vec<u8>)> {
    h2frame::frames(got)
        .map(|(kind, _, payload)| (kind, payload.to_vec()))
        .collect()
}

/// GOAWAY's error code, if the frames hold one.
fn goaway_code(frames: &[(u8, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .filter(|(kind, _)| *kind == h2frame::GOAWAY)
        .find_map(|(_, payload)| h2frame::goaway_code(payload))
}

/// The preface, SETTINGS, then a HEADERS frame without END_HEADERS followed by `n`
/// CONTINUATION frames of 16 KB of literal headers (4 MB for 256), as the header bomb does.
fn continuation_bomb(n: usize) -> Vec<u8> {
    let mut block = Vec::with_capacity(16 * 1024);
    let mut i = 0u32;
    while block.len() < 16 * 1024 - 128 {
        h2frame::literal(&mut block, format!("x-bomb-{i}").as_bytes(), &[b'b'; 100]);
        i += 1;
    }
    let mut out = h2frame::PREFACE.to_vec();
    h2frame::settings(&mut out);
    h2frame::headers(&mut out, h2frame::END_STREAM, 1, &h2frame::get_block());
    for k in 0..n {
        let flags = if k + 1 == n { h2frame::END_HEADERS } else { 0 };
        h2frame::continuation(&mut out, flags, 1, &block);
    }
    out
}

/// Writes `attack` from `source` and returns what the proxy answered until it closed or sent
/// a response HEADERS. The write runs beside the read: the proxy closes long before it has
/// read a 4 MB bomb.
async fn attack_from(source: IpAddr, addr: SocketAddr, attack: Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let s = connect_from(source, addr).await;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        // Fails once the proxy has closed: expected.
        let _ = tokio::time::timeout(WAIT, w.write_all(&attack)).await;
        w
    });
    let frames = read_frames(&mut r, |f| f.iter().any(|(kind, _)| *kind == 0x1)).await;
    writer.abort();
    frames
}

/// A new connection from `source` that has sent the client preface and SETTINGS.
async fn hello_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let mut s = connect_from(source, addr).await;
    let mut hello = h2frame::PREFACE.to_vec();
    h2frame::settings(&mut hello);
    // A refused connection may be closed before it reads this: the answer says which.
    let _ = s.write_all(&hello).await;
    s
}

/// Asserts that a new connection from `source` is served: the proxy's first frame is its
/// SETTINGS.
async fn assert_served(source: IpAddr, addr: SocketAddr, what: &str) {
    let mut s = hello_from(source, addr).await;
    let mut head = [0u8; 9];
    tokio::time::timeout(WAIT, s.read_exact(&mut head))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(head[3], 0x4, "{what}: the server's SETTINGS first");
}

async fn good_request(addr: SocketAddr) -> u16 {
    let mut h2 = http2_conn(addr).await;
    tokio::time::timeout(
        WAIT,
        h2.send_request(Request::get("http://a/").body(full("")).unwrap()),
    )
    .await
    .unwrap()
    .unwrap()
    .status()
    .as_u16()
}

#[tokio::test]
async fn an_http2_continuation_flood_gets_goaway_within_a_few_frames() {
    let app = start_app().await;
    // No penalty: this test is about the one connection.
    let proxy = start_proxy(app.addr, |c| c.limits.abusive_peer_penalty = None).await;
    let (inbound, admin_addr) = (proxy.addrs().inbound, proxy.addrs().admin);
    let started = Instant::now();
    let frames = attack_from(ATTACKER_SOURCE, inbound, continuation_bomb(256)).await;
    assert_eq!(
        goaway_code(&frames),
        Some(11),
        "GOAWAY ENHANCE_YOUR_CALM after a 4 MB header block; frames: {:?}",
        frames.iter().map(|f| f.0).collect::<Vec<_>>()
    );
    // The connection ended long before 4 MB could be decoded (it is cut within ~100 KB).
    assert!(started.elapsed() < WAIT, "the proxy kept reading the bomb");
    eventually("the GOAWAY counted", || async move {
        inbound_limit_rejected(admin_addr, "h2_reset_flood").await >= 1
    })
    .await;
    // A header block within the size limit (2 frames, 32 KB) on a fresh connection is no
    // flood: it is answered (431, from the header-count limit), not GOAWAY'd.
    let frames = attack_from(ATTACKER_SOURCE, inbound, continuation_bomb(2)).await;
    assert_eq!(goaway_code(&frames), None, "32 KB of headers is no flood");
    assert!(
        frames.iter().any(|(kind, _)| *kind == 0x1),
        "a response to the 32 KB header block"
    );
    assert_eq!(good_request(inbound).await, 200);
}

#[tokio::test]
async fn an_address_sent_enhance_your_calm_is_rate_limited_at_accept() {
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |c| {
        c.limits.abusive_peer_penalty = Some(Duration::from_secs(3));
        c.limits.abusive_peer_connections = 1;
    })
    .await;
    let (inbound, admin_addr) = (proxy.addrs().inbound, proxy.addrs().admin);
    assert_eq!(good_request(inbound).await, 200);
    let frames = attack_from(ATTACKER_SOURCE, inbound, h2frame::rapid_reset_burst(500)).await;
    // The penalty started before this (when the proxy ended the connection).
    let offended = tokio::time::Instant::now();
    assert_eq!(
        goaway_code(&frames),
        Some(11),
        "rapid reset: GOAWAY ENHANCE_YOUR_CALM"
    );
    eventually("limit=h2_reset_flood counted", || async move {
        inbound_limit_rejected(admin_addr, "h2_reset_flood").await >= 1
    })
    .await;

    // Now 10 connections at once from the attacker's address within the penalty's first
    // second: its allowance (1 a second, already used by the offending connection) refuses
    // them all at accept: held unread, then closed without a byte, not even the server's
    // SETTINGS.
    let attempts: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = hello_from(ATTACKER_SOURCE, inbound).await;
                read_frames(&mut s, |f| !f.is_empty()).await.is_empty()
            })
        })
        .collect();
    let mut closed_silently = 0;
    for a in attempts {
        closed_silently += usize::from(a.await.unwrap());
    }
    assert!(
        closed_silently >= 9,
        "only {closed_silently} of 10 connections from the penalized address refused at accept"
    );
    assert!(inbound_limit_rejected(admin_addr, "abusive_peer").await >= 9);
    // Other addresses are served as before, on new connections too.
    assert_eq!(good_request(inbound).await, 200);

    // After the penalty (3 s from the offence), the address is served again.
    tokio::time::sleep_until(offended + Duration::from_millis(3200)).await;
    assert_served(ATTACKER_SOURCE, inbound, "after the penalty").await;
}

#[tokio::test]
async fn without_the_penalty_an_offender_reconnects_freely() {
    let app = start_app().await;
    let proxy = start_proxy(app.addr, |c| c.limits.abusive_peer_penalty = None).await;
    let (inbound, admin_addr) = (proxy.addrs().inbound, proxy.addrs().admin);
    let frames = attack_from(ATTACKER_SOURCE, inbound, h2frame::rapid_reset_burst(500)).await;
    assert_eq!(goaway_code(&frames), Some(11));
    for i in 0..5 {
        assert_served(ATTACKER_SOURCE, inbound, &format!("reconnect {i}")).await;
    }
    assert_eq!(inbound_limit_rejected(admin_addr, "abusive_peer").await, 0);
}
