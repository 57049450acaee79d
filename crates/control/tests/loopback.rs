//! Both ends of discovery on loopback: the control plane in-process, real proxy discovery
//! clients, real config files. Every wait is bounded by a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trellis_api::discovery as pb;
use trellis_control::ControlPlane;
use trellis_model::Target;
use trellis_proxy::discovery::Resolution;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_end_to_end() {
    let (dir, control) = control_with_reviews().await;
    let (grpc, http) = (control.discovery_addr, control.http_addr);
    assert_eq!(get(http, "/ready").await.map(|r| r.0), Some(200));
    assert_eq!(get(http, "/live").await.map(|r| r.0), Some(200));

    let shutdown = CancellationToken::new();
    let reviews = client(
        grpc,
        workload("reviews-v1", "reviews", "127.0.0.1:20001"),
        &shutdown,
    );
    let product = client(
        grpc,
        workload("productpage-v1", "productpage", "127.0.0.1:20002"),
        &shutdown,
    );
    // Services without endpoints are held back for one expiry after startup; give ratings one.
    let _ratings = client(
        grpc,
        workload("ratings-v1", "ratings", "127.0.0.1:20003"),
        &shutdown,
    );

    // A subscriber sees the registered workload as an endpoint, with its identity.
    let reviews_target: Target = "reviews.default:9080".parse().unwrap();
    let reviews_rx = product.watch(&reviews_target);
    let dest = eventually("reviews endpoint", || async {
        found(&reviews_rx).filter(|d| !d.endpoints.is_empty())
    })
    .await;
    let ep = &dest.endpoints[0];
    assert_eq!(ep.address, "127.0.0.1:20001".parse().unwrap());
    assert_eq!(
        ep.identity.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/bookinfo-reviews")
    );
    assert_eq!(ep.target_port, 9081);
    assert!(ep.meshed);
    let identity = eventually("welcome", || async { reviews.status().identity }).await;
    assert_eq!(
        identity,
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    );

    // An unknown service resolves NotFound, not Pending.
    let nothing = product
        .resolve(&"nope.default:1".parse().unwrap(), DEADLINE)
        .await;
    assert_eq!(nothing, Resolution::NotFound);

    // A new file takes effect live, within a second.
    let ratings_target: Target = "ratings.default:9080".parse().unwrap();
    let ratings_rx = product.watch(&ratings_target);
    assert_eq!(
        product.resolve(&ratings_target, DEADLINE).await,
        Resolution::NotFound
    );
    let written = Instant::now();
    std::fs::write(
        dir.path().join("ratings.yaml"),
        service_yaml("ratings", 9080),
    )
    .unwrap();
    eventually("ratings service", || async { found(&ratings_rx) }).await;
    assert!(
        written.elapsed() < Duration::from_secs(1),
        "took {:?}",
        written.elapsed()
    );

    // The JSON API shows services with endpoints, and workloads with acks and subscriptions.
    let services = eventually("services api", || async {
        get_json(http, "/api/v1/services")
            .await
            .filter(|v| v.as_array().is_some_and(|a| a.len() == 2))
    })
    .await;
    let svc = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "reviews")
        .unwrap();
    assert_eq!(svc["endpoints"][0]["workload"], "reviews-v1");
    assert_eq!(svc["ports"][0]["protocol"], "http");
    let workloads = eventually("workload acks", || async {
        let v = get_json(http, "/api/v1/workloads").await?;
        let p = v
            .as_array()?
            .iter()
            .find(|w| w["name"] == "productpage-v1")?
            .clone();
        (!p["acked_version"].is_null()).then_some(v)
    })
    .await;
    let p = workloads
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "productpage-v1")
        .unwrap();
    assert_eq!(p["connected"], true);
    assert_eq!(p["inbound"], "127.0.0.1:20002");
    let subs: Vec<&str> = p["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(subs.contains(&"reviews.default:9080"), "{subs:?}");

    // A file made invalid keeps its last good version and reports the field.
    std::fs::write(dir.path().join("reviews.yaml"), service_yaml("reviews", 0)).unwrap();
    let row = eventually("invalid status", || async {
        let v = get_json(http, "/api/v1/config").await?;
        v["resources"]
            .as_array()?
            .iter()
            .find(|r| r["status"] == "Invalid")
            .cloned()
    })
    .await;
    assert_eq!(row["name"], "reviews");
    assert!(
        row["message"]
            .as_str()
            .unwrap()
            .contains("spec.ports[0].port: must be 1-65535, got 0")
    );
    assert!(
        found(&reviews_rx).is_some_and(|d| !d.endpoints.is_empty()),
        "last good kept"
    );
    let metrics = get(http, "/metrics").await.unwrap().1;
    assert!(
        metrics.contains("trellis_control_config_resources{status=\"Invalid\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("trellis_control_registered_workloads 3"),
        "{metrics}"
    );

    // Nack path, with a raw client: the control plane records the refusal per proxy.
    nack_is_recorded(grpc, http).await;

    // Fixed again: accepted. (Last good versions live in memory: a restarted control plane
    // would not know the old reviews.yaml.)
    std::fs::write(
        dir.path().join("reviews.yaml"),
        service_yaml("reviews", 9080),
    )
    .unwrap();
    eventually("valid again", || async {
        let v = get_json(http, "/api/v1/config").await?;
        let rows = v["resources"].as_array()?.clone();
        rows.iter().all(|r| r["status"] == "Accepted").then_some(())
    })
    .await;

    // From here on, the reviews endpoint must never disappear from the subscriber's view.
    let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let monitor = {
        let (mut rx, lost) = (reviews_rx.clone(), lost.clone());
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if found(&rx).is_none_or(|d| d.endpoints.is_empty()) {
                    lost.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    };

    // Control plane gone: watches keep their values, clients notice.
    control.stop().await;
    eventually("client disconnected", || async {
        (!product.status().connected).then_some(())
    })
    .await;
    assert!(
        found(&reviews_rx).is_some_and(|d| !d.endpoints.is_empty()),
        "kept while disconnected"
    );

    // Back on the same ports: clients reconnect, re-register and resync.
    let control = ControlPlane::start(config(dir.path(), grpc, http))
        .await
        .unwrap();
    eventually("re-registration", || async {
        let v = get_json(http, "/api/v1/workloads").await?;
        let names: Vec<_> = v
            .as_array()?
            .iter()
            .filter(|w| w["connected"] == true)
            .map(|w| w["name"].clone())
            .collect();
        (names.contains(&"reviews-v1".into()) && names.contains(&"productpage-v1".into()))
            .then_some(())
    })
    .await;
    eventually("resubscribed", || async {
        let v = get_json(http, "/api/v1/workloads").await?;
        let p = v
            .as_array()?
            .iter()
            .find(|w| w["name"] == "productpage-v1")?
            .clone();
        let subs = p["subscriptions"].as_array()?.clone();
        subs.contains(&"reviews.default:9080".into()).then_some(())
    })
    .await;
    eventually("client connected", || async {
        product.status().connected.then_some(())
    })
    .await;
    assert!(found(&reviews_rx).is_some_and(|d| !d.endpoints.is_empty()));

    assert!(
        !lost.load(std::sync::atomic::Ordering::SeqCst),
        "endpoints vanished on restart"
    );
    monitor.abort();
    shutdown.cancel();
    control.stop().await;
}

async fn nack_is_recorded(grpc: SocketAddr, http: SocketAddr) {
    use pb::proxy_message::Kind;
    let mut client = pb::discovery_client::DiscoveryClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let hello = pb::Hello {
        proxy_id: "nacker".into(),
        workload: Some(pb::Workload {
            name: "nacker".into(),
            namespace: "default".into(),
            service_account: "nacker".into(),
            inbound_address: "127.0.0.1:20009".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    tx.send(pb::ProxyMessage {
        kind: Some(Kind::Hello(hello)),
    })
    .unwrap();
    tx.send(subscribe("reviews")).unwrap();
    let mut inbound = client
        .stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut version = None;
    for _ in 0..4 {
        let msg = tokio::time::timeout(DEADLINE, inbound.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(pb::control_message::Kind::Update(u)) = msg.kind {
            version = Some(u.version);
            break;
        }
    }
    let version = version.expect("an update");
    let nack = pb::Nack {
        version,
        error: "test: refused".into(),
    };
    tx.send(pb::ProxyMessage {
        kind: Some(Kind::Nack(nack)),
    })
    .unwrap();
    eventually("nack recorded", || async {
        let v = get_json(http, "/api/v1/workloads").await?;
        let w = v
            .as_array()?
            .iter()
            .find(|w| w["name"] == "nacker")?
            .clone();
        (w["nacks"] == 1 && w["last_nack"] == "test: refused").then_some(())
    })
    .await;
    let metrics = get(http, "/metrics").await.unwrap().1;
    assert!(
        metrics.contains("trellis_control_nacks_total 1"),
        "{metrics}"
    );
    drop(tx);
}
