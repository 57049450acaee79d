//! The discovery API across versions: a control plane of protocol revision N serves proxies
//! of revision N-1. First with a hand-built client that speaks revision 1's message shape (a
//! Hello without `protocol_version`), then with real `trellis-proxy` processes made to speak
//! revision 1 (`TRELLIS_DISCOVERY_PROTOCOL=1`) carrying real traffic through the real
//! `trellis-control` binary. Refusing revisions older than N-1 is the pure
//! `protocol_version::negotiate`'s unit test (no older revision exists to send yet).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::time::Duration;

use common::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trellis_api::discovery::{self as pb, control_message, proxy_message::Kind};
use trellis_testkit::{
    ControlPlane as ControlProcess, HttpEcho, ProxyBuilder, service_yaml as k8s_service,
};

/// What a revision-1 proxy sends: the Hello of before `protocol_version` existed.
fn previous_revision_hello() -> pb::ProxyMessage {
    pb::ProxyMessage {
        kind: Some(Kind::Hello(pb::Hello {
            proxy_id: "old-proxy".into(),
            workload: Some(pb::Workload {
                name: "productpage-old".into(),
                namespace: "default".into(),
                service_account: "bookinfo-productpage".into(),
                inbound_address: "127.0.0.1:20031".into(),
                ports: vec![9080],
                ..Default::default()
            }),
            join_token: String::new(),
            proxy_version: "0.0.9".into(),
            // Revision 1 has no field 5: prost leaves it out of the encoding at 0.
            protocol_version: 0,
            // Nor field 6 (features): an empty list is not encoded.
            features: Vec::new(),
        })),
    }
}

/// The stream's next message, within the deadline.
async fn next(inbound: &mut tonic::Streaming<pb::ControlMessage>) -> pb::ControlMessage {
    tokio::time::timeout(DEADLINE, inbound.message())
        .await
        .expect("an answer in time")
        .expect("no stream error")
        .expect("the stream stays open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_protocol_version_hello_is_welcomed_and_served_updates() {
    let (_dir, control) = control_with_reviews().await;
    let (grpc, http) = (control.discovery_addr, control.http_addr);

    // A current proxy backs the service.
    let stop = CancellationToken::new();
    let _reviews = client(
        grpc,
        workload("reviews-v1", "reviews", "127.0.0.1:20032"),
        &stop,
    );

    let mut raw = pb::discovery_client::DiscoveryClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(previous_revision_hello()).unwrap();
    let mut inbound = raw
        .stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    match next(&mut inbound).await.kind {
        Some(control_message::Kind::Welcome(w)) => {
            assert_eq!(
                w.identity,
                "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
            );
            assert_eq!(w.protocol_version, 1, "spoken at the proxy's revision");
            assert_eq!(w.control_version, env!("CARGO_PKG_VERSION"));
        }
        other => panic!("expected Welcome, got {other:?}"),
    }

    // It subscribes as revision 1 did, and gets the service's endpoint; the first update may
    // come before reviews-v1 registered, so read until one has it.
    tx.send(subscribe("reviews")).unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let endpoints = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no update with an endpoint"
        );
        let Some(control_message::Kind::Update(update)) = next(&mut inbound).await.kind else {
            continue;
        };
        tx.send(pb::ProxyMessage {
            kind: Some(Kind::Ack(pb::Ack {
                version: update.version,
            })),
        })
        .unwrap();
        let endpoints = update.destination.map(|d| d.endpoints).unwrap_or_default();
        if !endpoints.is_empty() {
            break endpoints;
        }
    };
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].workload, "reviews-v1");
    assert_eq!(endpoints[0].address, "127.0.0.1:20032");

    // The JSON API says who speaks what (what `trellis check` reads for version skew).
    let rows = eventually("both workloads listed with their versions", || async {
        let rows = get_json(http, "/api/v1/workloads").await?;
        let rows = rows.as_array()?.clone();
        let acked = rows
            .iter()
            .any(|r| r["name"] == "productpage-old" && r["acked_version"].is_u64());
        (rows.len() == 2 && acked).then_some(rows)
    })
    .await;
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap().clone();
    assert_eq!(row("productpage-old")["protocol_version"], 1);
    assert_eq!(row("productpage-old")["proxy_version"], "0.0.9");
    assert_eq!(
        row("reviews-v1")["protocol_version"],
        trellis_api::DISCOVERY_PROTOCOL
    );
    let (_, metrics) = get(http, "/metrics").await.unwrap();
    assert!(
        metrics.contains(&format!(
            "trellis_control_info{{version=\"{}\",discovery_protocol=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            trellis_api::DISCOVERY_PROTOCOL
        )),
        "{metrics}"
    );

    drop(tx);
    stop.cancel();
    control.stop().await;
}

/// `trellis-proxy` processes speaking the previous protocol revision, both ends of a meshed
/// hop, against the `trellis-control` binary: they register, get their config and carry
/// requests (needs `cargo build --bins`).
#[test]
fn previous_protocol_version_proxies_carry_traffic() {
    const OLD: (&str, &str) = ("TRELLIS_DISCOVERY_PROTOCOL", "1");
    let app = HttpEcho::start().unwrap();
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("reviews.yaml"),
        k8s_service("reviews", "default", 9080, app.addr.port(), "reviews"),
    )
    .unwrap();
    let control = ControlProcess::start(config.path()).unwrap();
    let url = control.url();
    let _server = ProxyBuilder::loopback("reviews-0")
        .label("app", "reviews")
        .control(&url)
        .app(app.addr)
        .env(OLD.0, OLD.1)
        .start()
        .unwrap();
    let target = "reviews.default:9080";
    let client = ProxyBuilder::loopback("client")
        .label("app", "client")
        .control(&url)
        .outbound_port(target)
        .env(OLD.0, OLD.1)
        .start()
        .unwrap();
    let port = client.outbound_port(target);

    // Discovery converges (the server registers while the client subscribes), then every
    // request of a bounded batch goes through.
    trellis_testkit::wait::until(
        Duration::from_secs(20),
        || match trellis_testkit::tools::http_get(port, "/converge") {
            Ok((200, _)) => Ok(()),
            Ok((code, body)) => Err(format!("{code}: {body}")),
            Err(e) => Err(e),
        },
    )
    .unwrap();
    let before = app.requests();
    for i in 0..20 {
        let (code, body) = trellis_testkit::tools::http_get(port, &format!("/old/{i}")).unwrap();
        assert_eq!(code, 200, "{body}");
    }
    assert!(app.requests() >= before + 20);

    // The control plane registered both at revision 1.
    let (code, body) =
        trellis_testkit::tools::http_get(control.ready.http, "/api/v1/workloads").unwrap();
    assert_eq!(code, 200);
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{body}");
    for row in rows {
        assert_eq!(row["protocol_version"], 1, "{row}");
        assert_eq!(row["proxy_version"], env!("CARGO_PKG_VERSION"), "{row}");
        assert!(
            row["acked_version"].is_u64() || row["subscriptions"] == serde_json::json!([]),
            "{row}"
        );
    }
}
