//! Endpoint deltas from the control plane's side, on a raw discovery stream that negotiates
//! them: Welcome says so, an endpoint joining is sent as a delta on the last version, and a
//! Nacked delta is answered with the whole destination. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use common::*;
use tokio_util::sync::CancellationToken;
use trellis_api::discovery as pb;

type Inbound = tonic::Streaming<pb::ControlMessage>;

/// The next Update on the stream (other messages skipped), within the deadline.
async fn next_update(inbound: &mut Inbound) -> pb::Update {
    for _ in 0..16 {
        let msg = tokio::time::timeout(DEADLINE, inbound.message())
            .await
            .expect("a message within the deadline")
            .unwrap()
            .expect("the stream stays open");
        if let Some(pb::control_message::Kind::Update(u)) = msg.kind {
            return u;
        }
    }
    panic!("no Update among 16 messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_endpoint_is_a_delta_and_a_nacked_delta_is_resent_whole() {
    use pb::proxy_message::Kind;
    let (_dir, control) = control_with_reviews().await;
    let (grpc, http) = (control.discovery_addr, control.http_addr);
    let shutdown = CancellationToken::new();
    let _v1 = client(
        grpc,
        workload("reviews-v1", "reviews", "127.0.0.1:20101"),
        &shutdown,
    );

    let mut raw = pb::discovery_client::DiscoveryClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let send = |kind| tx.send(pb::ProxyMessage { kind: Some(kind) }).unwrap();
    send(Kind::Hello(pb::Hello {
        proxy_id: "delta-taker".into(),
        workload: Some(pb::Workload {
            name: "delta-taker".into(),
            namespace: "default".into(),
            service_account: "delta-taker".into(),
            inbound_address: "127.0.0.1:20109".into(),
            ..Default::default()
        }),
        protocol_version: trellis_api::DISCOVERY_PROTOCOL,
        features: vec![pb::Feature::EndpointDelta as i32],
        ..Default::default()
    }));
    let mut inbound = raw
        .stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let welcome = tokio::time::timeout(DEADLINE, inbound.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(pb::control_message::Kind::Welcome(welcome)) = welcome.kind else {
        panic!("expected Welcome first, got {welcome:?}");
    };
    assert_eq!(welcome.features, [pb::Feature::EndpointDelta as i32]);

    let target = pb::Target {
        kind: Some(pb::target::Kind::Service(pb::ServiceTarget {
            name: "reviews".into(),
            namespace: "default".into(),
            port: 9080,
        })),
    };
    send(Kind::Subscribe(pb::Subscribe {
        target: Some(target),
    }));
    // The first value is whole; wait for the one with reviews-v1 in it.
    let mut first = next_update(&mut inbound).await;
    while first
        .destination
        .as_ref()
        .is_none_or(|d| d.endpoints.is_empty())
    {
        first = next_update(&mut inbound).await;
    }
    assert!(first.endpoint_delta.is_none());
    send(Kind::Ack(pb::Ack {
        version: first.version,
    }));

    // reviews-v2 joins: a delta on the version just sent, with only the new endpoint.
    let _v2 = client(
        grpc,
        workload("reviews-v2", "reviews", "127.0.0.1:20102"),
        &shutdown,
    );
    let joined = next_update(&mut inbound).await;
    assert!(joined.destination.is_none(), "{joined:?}");
    let delta = joined.endpoint_delta.expect("an endpoint delta");
    assert_eq!(delta.base_version, first.version);
    assert!(delta.removed.is_empty());
    assert_eq!(delta.added.len(), 1);
    assert_eq!(delta.added[0].index, 1, "sorted after reviews-v1");
    let added = delta.added[0].endpoint.as_ref().unwrap();
    assert_eq!(
        (added.address.as_str(), added.workload.as_str()),
        ("127.0.0.1:20102", "reviews-v2")
    );

    // Refused: the control plane sends the whole destination, both endpoints.
    send(Kind::Nack(pb::Nack {
        version: joined.version,
        error: "test: cannot apply".into(),
    }));
    let whole = next_update(&mut inbound).await;
    assert!(whole.endpoint_delta.is_none());
    assert!(whole.version > joined.version);
    let endpoints: Vec<String> = whole
        .destination
        .expect("the whole destination")
        .endpoints
        .into_iter()
        .map(|e| e.address)
        .collect();
    assert_eq!(endpoints, ["127.0.0.1:20101", "127.0.0.1:20102"]);

    let metrics = get(http, "/metrics").await.unwrap().1;
    assert!(
        metrics.contains("trellis_control_endpoint_deltas_total 1\n"),
        "{metrics}"
    );
    shutdown.cancel();
    control.stop().await;
}
