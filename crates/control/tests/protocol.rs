//! The discovery server's protocol rules and workload expiry, on loopback with raw clients.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trellis_api::discovery::{self as pb, proxy_message::Kind};
use trellis_control::{ControlConfig, ControlPlane};
use trellis_proxy::discovery::Resolution;

async fn start(dir: &std::path::Path, expiry: Duration) -> ControlPlane {
    let any = "127.0.0.1:0".parse().unwrap();
    let config = ControlConfig {
        workload_expiry: expiry,
        ..config(dir, any, any)
    };
    ControlPlane::start(config).await.unwrap()
}

/// Opens a raw stream, sends `first`, and returns the stream's first answer or error status.
async fn first_answer(
    grpc: SocketAddr,
    first: pb::ProxyMessage,
) -> Result<pb::ControlMessage, tonic::Status> {
    let mut client = pb::discovery_client::DiscoveryClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(first).unwrap();
    let mut inbound = client
        .stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    let msg = tokio::time::timeout(DEADLINE, inbound.message())
        .await
        .expect("an answer")?;
    drop(tx);
    msg.ok_or_else(|| tonic::Status::unknown("stream ended"))
}

fn hello(workload: pb::Workload) -> pb::ProxyMessage {
    pb::ProxyMessage {
        kind: Some(Kind::Hello(pb::Hello {
            proxy_id: "raw".into(),
            workload: Some(workload),
            ..Default::default()
        })),
    }
}

fn wire_workload() -> pb::Workload {
    pb::Workload {
        name: "raw".into(),
        namespace: "default".into(),
        service_account: "raw".into(),
        inbound_address: "127.0.0.1:20010".into(),
        ports: vec![9081],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_end_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let control = start(dir.path(), Duration::from_secs(2)).await;
    let grpc = control.discovery_addr;

    let subscribe_first = pb::ProxyMessage {
        kind: Some(Kind::Heartbeat(pb::Heartbeat {})),
    };
    let status = first_answer(grpc, subscribe_first).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");

    let mut bad = wire_workload();
    bad.inbound_address = "not-an-address".into();
    let status = first_answer(grpc, hello(bad)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("inbound_address"), "{status}");

    let mut bad = wire_workload();
    bad.service_account = "Upper".into();
    let status = first_answer(grpc, hello(bad)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let welcome = first_answer(grpc, hello(wire_workload())).await.unwrap();
    match welcome.kind {
        Some(pb::control_message::Kind::Welcome(w)) => {
            assert_eq!(w.identity, "spiffe://cluster.local/ns/default/sa/raw");
            assert_eq!(w.heartbeat_interval_ms, 100);
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    control.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_workload_expires_and_leaves_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reviews.yaml"),
        service_yaml("reviews", 9080),
    )
    .unwrap();
    let control = start(dir.path(), Duration::from_millis(500)).await;
    let (grpc, http) = (control.discovery_addr, control.http_addr);

    let (stay, leave) = (CancellationToken::new(), CancellationToken::new());
    let _v1 = client(
        grpc,
        workload("reviews-v1", "reviews", "127.0.0.1:20001"),
        &stay,
    );
    let _v2 = client(
        grpc,
        workload("reviews-v2", "reviews", "127.0.0.1:20002"),
        &leave,
    );
    let watcher = client(
        grpc,
        workload("productpage", "productpage", "127.0.0.1:20003"),
        &stay,
    );
    let rx = watcher.watch(&"reviews.default:9080".parse().unwrap());
    let count = |rx: &tokio::sync::watch::Receiver<Resolution>| match &*rx.borrow() {
        Resolution::Found(d) => Some(d.endpoints.len()),
        _ => None,
    };
    eventually("two endpoints", || async {
        (count(&rx) == Some(2)).then_some(())
    })
    .await;

    // reviews-v2's proxy stops: its stream closes, it shows disconnected, then expires.
    leave.cancel();
    eventually("v2 disconnected", || async {
        let v = get_json(http, "/api/v1/workloads").await?;
        let w = v
            .as_array()?
            .iter()
            .find(|w| w["name"] == "reviews-v2")?
            .clone();
        (w["connected"] == false).then_some(())
    })
    .await;
    eventually("one endpoint", || async {
        (count(&rx) == Some(1)).then_some(())
    })
    .await;
    let v = get_json(http, "/api/v1/workloads").await.unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|w| w["name"] != "reviews-v2")
    );
    // Heartbeats keep the others registered well past the expiry.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(count(&rx), Some(1));
    let metrics = get(http, "/metrics").await.unwrap().1;
    assert!(
        metrics.contains("trellis_control_registered_workloads 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trellis_control_connected_proxies 2"),
        "{metrics}"
    );

    stay.cancel();
    control.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_services_are_held_back_for_the_registration_grace() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ratings.yaml"),
        service_yaml("ratings", 9080),
    )
    .unwrap();
    let target = "ratings.default:9080".parse().unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    let shutdown = CancellationToken::new();

    // Within the grace, a service with no endpoints is not answered yet: subscribers wait.
    let held = ControlConfig {
        registration_grace: Some(Duration::from_secs(30)),
        ..config(dir.path(), any, any)
    };
    let control = ControlPlane::start(held).await.unwrap();
    let c = client(
        control.discovery_addr,
        workload("a", "a", "127.0.0.1:20001"),
        &shutdown,
    );
    let nothing = c
        .resolve(&"nope.default:1".parse().unwrap(), DEADLINE)
        .await;
    assert_eq!(
        nothing,
        Resolution::NotFound,
        "unknown services are answered at once"
    );
    assert_eq!(
        c.resolve(&target, Duration::from_millis(300)).await,
        Resolution::Pending
    );
    control.stop().await;

    // With no grace, the empty destination is sent at once.
    let immediate = ControlConfig {
        registration_grace: Some(Duration::ZERO),
        ..config(dir.path(), any, any)
    };
    let control = ControlPlane::start(immediate).await.unwrap();
    let c = client(
        control.discovery_addr,
        workload("b", "b", "127.0.0.1:20002"),
        &shutdown,
    );
    match c.resolve(&target, DEADLINE).await {
        Resolution::Found(d) => assert!(d.endpoints.is_empty()),
        other => panic!("expected an empty destination, got {other:?}"),
    }
    shutdown.cancel();
    control.stop().await;
}
