//! The push path with many streams, on loopback with raw discovery clients: a registration
//! reaches the subscribers of the services that select it and no others; registrations no
//! Service selects and a route change send nothing they do not change (no Update, no
//! InboundPolicy again). Each stream ACKs as a proxy does.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::sync::mpsc;
use tokio::time::Instant;
use trellis_api::discovery::{self as pb, control_message, proxy_message::Kind};
use trellis_control::ControlPlane;

/// What one stream received: (stream index, message kind, endpoints of an Update).
type Seen = (usize, &'static str, usize);

fn hello(name: &str, app: &str, inbound: &str) -> pb::ProxyMessage {
    pb::ProxyMessage {
        kind: Some(Kind::Hello(pb::Hello {
            proxy_id: name.into(),
            workload: Some(pb::Workload {
                name: name.into(),
                namespace: "default".into(),
                service_account: "sa".into(),
                labels: [("app".to_string(), app.to_string())].into(),
                inbound_address: inbound.into(),
                ports: vec![9081],
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

fn subscribe(service: &str) -> pb::ProxyMessage {
    pb::ProxyMessage {
        kind: Some(Kind::Subscribe(pb::Subscribe {
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::Service(pb::ServiceTarget {
                    name: service.into(),
                    namespace: "default".into(),
                    port: 9080,
                })),
            }),
        })),
    }
}

/// A stream that says `first`, ACKs every Update and reports what it receives to `seen`.
/// Returns the sender, kept open for as long as the stream should live.
async fn stream(
    grpc: SocketAddr,
    index: usize,
    first: Vec<pb::ProxyMessage>,
    seen: mpsc::UnboundedSender<Seen>,
) -> mpsc::UnboundedSender<pb::ProxyMessage> {
    let mut client = pb::discovery_client::DiscoveryClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    for m in first {
        tx.send(m).unwrap();
    }
    let mut inbound = client
        .stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let acks = tx.clone();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = inbound.message().await {
            let (kind, endpoints) = match msg.kind {
                Some(control_message::Kind::Update(u)) => {
                    let _ = acks.send(pb::ProxyMessage {
                        kind: Some(Kind::Ack(pb::Ack { version: u.version })),
                    });
                    ("update", u.destination.map_or(0, |d| d.endpoints.len()))
                }
                Some(control_message::Kind::InboundPolicy(_)) => ("policy", 0),
                Some(control_message::Kind::Welcome(_)) => ("welcome", 0),
                _ => ("other", 0),
            };
            let _ = seen.send((index, kind, endpoints));
        }
    });
    tx
}

/// Collects what arrives until `done` holds (failing at the deadline), then for `quiet` more.
async fn collect(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    quiet: Duration,
    done: impl Fn(&[Seen]) -> bool,
) -> Vec<Seen> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    while !done(&got) {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some(s)) => got.push(s),
            _ => panic!("timed out; seen so far: {got:?}"),
        }
    }
    while let Ok(Some(s)) = tokio::time::timeout(quiet, seen.recv()).await {
        got.push(s);
    }
    got
}

fn count(got: &[Seen], kind: &str, pred: impl Fn(usize) -> bool) -> usize {
    got.iter()
        .filter(|(i, k, _)| *k == kind && pred(*i))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_and_route_changes_reach_only_the_streams_they_change() {
    const PER_SERVICE: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let services = format!(
        "{}---\n{}",
        service_yaml("alpha", 9080),
        service_yaml("beta", 9080)
    );
    std::fs::write(dir.path().join("services.yaml"), services).unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    // These raw streams send no heartbeats: a workload expiry longer than the test keeps
    // alpha-1 and beta-1 registered however slowly a loaded machine runs it (at the common
    // 2 s, they expired mid-test and every subscriber was sent an empty destination).
    let mut settings = config(dir.path(), any, any);
    settings.workload_expiry = Duration::from_secs(60);
    let control = ControlPlane::start(settings).await.unwrap();
    let grpc = control.discovery_addr;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();

    // One endpoint each, so that nothing is held back as empty.
    let mut keep = Vec::new();
    for (i, app) in ["alpha", "beta"].into_iter().enumerate() {
        let name = format!("{app}-1");
        let inbound = format!("127.0.0.1:{}", 21000 + i);
        keep.push(
            stream(
                grpc,
                1000 + i,
                vec![hello(&name, app, &inbound)],
                seen_tx.clone(),
            )
            .await,
        );
    }
    // Streams 0..20 subscribe to alpha, 20..40 to beta; all are clients no Service selects.
    for i in 0..2 * PER_SERVICE {
        let service = if i < PER_SERVICE { "alpha" } else { "beta" };
        let name = format!("client-{i}");
        let inbound = format!("127.0.0.1:{}", 22000 + i);
        let first = vec![hello(&name, "client", &inbound), subscribe(service)];
        keep.push(stream(grpc, i, first, seen_tx.clone()).await);
    }
    let is_alpha = |i: usize| i < PER_SERVICE;
    let is_beta = |i: usize| (PER_SERVICE..2 * PER_SERVICE).contains(&i);
    let got = collect(&mut seen, Duration::from_millis(300), |got| {
        count(got, "update", |i| i < 2 * PER_SERVICE) >= 2 * PER_SERVICE
    })
    .await;
    assert_eq!(count(&got, "update", is_alpha), PER_SERVICE, "{got:?}");
    assert!(
        got.iter().all(|(_, k, n)| *k != "update" || *n == 1),
        "{got:?}"
    );

    // 30 more clients: endpoints change nowhere, so no subscriber hears of it.
    for i in 0..30 {
        let name = format!("late-client-{i}");
        let inbound = format!("127.0.0.1:{}", 23000 + i);
        keep.push(
            stream(
                grpc,
                2000 + i,
                vec![hello(&name, "client", &inbound)],
                seen_tx.clone(),
            )
            .await,
        );
    }
    let got = collect(&mut seen, Duration::from_millis(500), |got| {
        count(got, "welcome", |i| i >= 2000) >= 30
    })
    .await;
    assert_eq!(count(&got, "update", |_| true), 0, "{got:?}");

    // A second alpha endpoint: every alpha subscriber gets it, once; beta's hear nothing.
    keep.push(
        stream(
            grpc,
            3000,
            vec![hello("alpha-2", "alpha", "127.0.0.1:21002")],
            seen_tx.clone(),
        )
        .await,
    );
    let got = collect(&mut seen, Duration::from_millis(500), |got| {
        count(got, "update", is_alpha) >= PER_SERVICE
    })
    .await;
    assert_eq!(count(&got, "update", is_alpha), PER_SERVICE, "{got:?}");
    assert_eq!(count(&got, "update", is_beta), 0, "{got:?}");
    assert!(
        got.iter().all(|(_, k, n)| *k != "update" || *n == 2),
        "{got:?}"
    );

    // A route for beta: beta's subscribers get one Update each; no stream is sent its
    // inbound policy again (the change cannot alter it).
    let route = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: beta\nspec:\n  hosts: [beta]\n  http:\n  - timeout: 3s\n    route:\n    - destination:\n        host: beta\n";
    std::fs::write(dir.path().join("route.yaml"), route).unwrap();
    let got = collect(&mut seen, Duration::from_millis(500), |got| {
        count(got, "update", is_beta) >= PER_SERVICE
    })
    .await;
    assert_eq!(count(&got, "update", is_beta), PER_SERVICE, "{got:?}");
    assert_eq!(count(&got, "update", is_alpha), 0, "{got:?}");
    assert_eq!(count(&got, "policy", |_| true), 0, "{got:?}");
    drop(keep);
    control.stop().await;
}
