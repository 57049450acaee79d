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
use trellis_proxy::limits::penalty::{STALLED_HEADS, STRIKES};
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

/// [`STALLED_HEADS`] request heads from one address stalled at once penalize it long before
/// any of them times out, and its stalled heads are then ended at their next byte; another
/// address with a few heads stalled just as long is served, its slow heads included.
#[tokio::test]
async fn a_burst_of_stalled_heads_penalizes_its_address_before_any_times_out() {
    let app = start_app().await;
    // A head stalls when still unfinished 1 s (a quarter of this timeout, at most 1 s) after a
    // read found it so; the timeout itself (8 s) is never reached here.
    let proxy = start_proxy(app.addr, |c| {
        c.limits.header_read_timeout = Duration::from_secs(8);
        c.limits.abusive_peer_penalty = Some(Duration::from_secs(5));
        c.limits.abusive_peer_connections = 1;
    })
    .await;
    let (inbound, admin_addr) = (proxy.addrs().inbound, proxy.addrs().admin);
    let started = std::time::Instant::now();

    // The slowloris: a few more connections than STALLED_HEADS, each with half a head; the
    // slow client on 127.0.0.3: 4 connections doing the same.
    let attack = STALLED_HEADS as usize + 6;
    let mut slow = Vec::new();
    for _ in 0..attack {
        let mut s = connect_from(ATTACKER_SOURCE, inbound).await;
        s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n").await.unwrap();
        slow.push(s);
    }
    let mut also_slow = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from(IDLE_CLIENT, inbound).await;
        s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n").await.unwrap();
        also_slow.push(s);
    }
    // A line more on each, over a second later: every head is now stalled.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for s in slow.iter_mut().chain(also_slow.iter_mut()) {
        // The proxy may already have ended an attacker's connection.
        let _ = s.write_all(b"x-dribble: 1\r\n").await;
    }
    // The STALLED_HEADSth penalized the address, and the stalled heads after it were ended at
    // that line.
    let cut = (attack - STALLED_HEADS as usize + 1) as u64;
    eventually("the heads after the penalty ended", || async move {
        inbound_limit_rejected(admin_addr, "header_timeout").await >= cut
    })
    .await;
    // Penalized: its new connections are refused at accept...
    assert_refused(ATTACKER_SOURCE, inbound).await;
    // ... and its open slow connections are ended at their next byte, unanswered.
    for s in &mut slow {
        let _ = s.write_all(b"x-dribble: 2\r\n").await;
    }
    for (i, s) in slow.iter_mut().enumerate() {
        let a = answer(s).await;
        assert!(a.is_empty(), "slow connection {i} answered {a:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}: before the 8 s header read timeout",
        started.elapsed()
    );
    assert!(inbound_limit_rejected(admin_addr, "header_timeout").await >= attack as u64 - 1);
    // The other address is not penalized: a new connection is served, and so are its slow
    // heads once they finish.
    let a = exchange(IDLE_CLIENT, inbound, GET).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a:?}");
    for s in &mut also_slow {
        s.write_all(b"connection: close\r\n\r\n").await.unwrap();
        let a = answer(s).await;
        assert!(a.starts_with("HTTP/1.1 200"), "{a:?}");
    }
    let a = exchange(GOOD, inbound, GET).await;
    assert!(a.starts_with("HTTP/1.1 200"), "{a:?}");
}

/// A gateway listener's HTTP/1 heads are strikes as the sidecar's are: [`STRIKES`] slow heads
/// from one address penalize it (its next connections are refused at accept, counted as
/// outbound `abusive_peer`, the gateway's direction), while another address is served.
#[tokio::test]
async fn slow_heads_on_a_gateway_listener_penalize_their_address() {
    use std::sync::Arc;
    use trellis_proxy::discovery::Discovery;
    use trellis_proxy::gateway::{self, BoundListeners, GatewayArgs, Mode};
    use trellis_proxy::limits::{Limit, ServerLimits};
    use trellis_proxy::serve::Ctx;
    use trellis_proxy::telemetry::{Direction, Metrics};

    let limits = ServerLimits {
        header_read_timeout: Duration::from_millis(300),
        abusive_peer_penalty: Some(Duration::from_secs(5)),
        abusive_peer_connections: 1,
        ..ServerLimits::default()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let ctx = Arc::new(
        Ctx::new(
            Arc::new(Metrics::new()),
            Discovery::disabled(),
            Duration::from_secs(1),
            Default::default(),
            Vec::new(),
            shutdown.clone(),
            tokio_util::task::TaskTracker::new(),
        )
        .with_limits(limits),
    );
    let settings = GatewayArgs {
        mode: Mode::Gateway,
        gateway_port: vec![(8080, "127.0.0.1:0".parse().unwrap())],
        ..GatewayArgs::default()
    }
    .validate()
    .unwrap();
    let config: Arc<str> = r#"{"listeners":[{"port":8080,"protocol":"HTTP"}]}"#.into();
    let (_config_tx, config_rx) = tokio::sync::watch::channel(config);
    let bound = BoundListeners::default();
    let running = tokio::spawn(gateway::run(
        ctx.clone(),
        config_rx,
        settings,
        bound.clone(),
    ));
    let mut addr = None;
    for _ in 0..250 {
        addr = bound.lock().unwrap().get(&8080).copied();
        if addr.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addr = addr.expect("the gateway listener is bound");
    let rejected = |limit| {
        ctx.metrics
            .limits
            .rejected_count(Direction::Outbound, limit)
    };

    // The slowloris: half a head on STRIKES connections, each closed at the timeout.
    let slow = exchanges(
        STRIKES as usize,
        ATTACKER_SOURCE,
        addr,
        b"GET / HTTP/1.1\r\nhost: a.example.com\r\nx-dribble: ",
    )
    .await;
    assert!(slow.iter().all(|a| a.is_empty()), "{slow:?}");
    for _ in 0..250 {
        if rejected(Limit::HeaderTimeout) >= u64::from(STRIKES) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rejected(Limit::HeaderTimeout), u64::from(STRIKES));
    assert_eq!(
        ctx.admission.abusive_peers().len(),
        1,
        "the address penalized"
    );

    // Refused at accept now; the good client still gets the gateway's answer (no virtual host
    // configured: 404).
    const GET_A: &[u8] = b"GET / HTTP/1.1\r\nhost: a.example.com\r\nconnection: close\r\n\r\n";
    let answers = exchanges(10, ATTACKER_SOURCE, addr, GET_A).await;
    let refused = answers.iter().filter(|a| a.is_empty()).count();
    assert!(refused >= 9, "only {refused} of 10 refused: {answers:?}");
    assert!(rejected(Limit::AbusivePeer) >= 9);
    let a = exchange(GOOD, addr, GET_A).await;
    assert!(a.starts_with("HTTP/1.1 404"), "{a:?}");
    shutdown.cancel();
    running.await.unwrap();
}
