//! Traffic config end to end on loopback: Bookinfo Services, DestinationRules and a
//! VirtualService in a config directory, fake reviews v1/v2/v3 workloads registered by real
//! discovery clients, and a subscriber that receives routes and resolved backends. Every wait
//! is bounded by a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trellis_control::ControlPlane;
use trellis_model::route::RouteAction;
use trellis_model::{Destination, Target};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/tests/fixtures");

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{path}")).unwrap()
}

/// The first route's split as (subset, weight).
fn split(d: &Destination, route: usize) -> Vec<(String, u32)> {
    match d.routes.get(route).map(|r| &r.action) {
        Some(RouteAction::Forward(bs)) => bs
            .iter()
            .map(|b| (b.backend.subset.clone().unwrap_or_default(), b.weight))
            .collect(),
        _ => Vec::new(),
    }
}

/// Workload names behind each subset backend.
fn subsets(d: &Destination) -> BTreeMap<String, Vec<String>> {
    d.backends
        .iter()
        .map(|b| {
            let names = b.endpoints.iter().map(|e| e.workload.clone()).collect();
            (b.backend.subset.clone().unwrap_or_default(), names)
        })
        .collect()
}

fn config_row(rows: &serde_json::Value, file: &str, kind: &str) -> Option<serde_json::Value> {
    rows["resources"]
        .as_array()?
        .iter()
        .find(|r| r["kind"] == kind && r["file"].as_str().is_some_and(|f| f.ends_with(file)))
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_routes_reach_the_proxy_and_follow_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bookinfo.yaml"), fixture("bookinfo.yaml")).unwrap();
    std::fs::write(
        dir.path().join("destination-rule-all.yaml"),
        fixture("networking/destination-rule-all.yaml"),
    )
    .unwrap();
    let vs_path = dir.path().join("reviews-vs.yaml");
    std::fs::write(
        &vs_path,
        fixture("networking/virtual-service-reviews-90-10.yaml"),
    )
    .unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    let control = ControlPlane::start(config(dir.path(), any, any))
        .await
        .unwrap();
    let (grpc, http) = (control.discovery_addr, control.http_addr);

    let shutdown = CancellationToken::new();
    let mut clients = Vec::new();
    for (i, version) in ["v1", "v2", "v3"].into_iter().enumerate() {
        let mut w = workload(
            &format!("reviews-{version}"),
            "reviews",
            &format!("127.0.0.1:{}", 21001 + i),
        );
        w.labels.insert("version".into(), version.into());
        clients.push(client(grpc, w, &shutdown));
    }
    let product = client(
        grpc,
        workload("productpage-v1", "productpage", "127.0.0.1:21010"),
        &shutdown,
    );

    let target: Target = "reviews.default:9080".parse().unwrap();
    let rx = product.watch(&target);
    let complete = |d: &Arc<Destination>| {
        d.endpoints.len() == 3 && subsets(d).values().all(|eps| eps.len() == 1)
    };
    let dest = eventually("reviews with a 90/10 route", || async {
        found(&rx).filter(|d| complete(d) && !d.routes.is_empty())
    })
    .await;
    assert_eq!(dest.routes.len(), 1);
    assert_eq!(
        split(&dest, 0),
        [("v1".to_string(), 90), ("v2".to_string(), 10)],
        "virtual-service-reviews-90-10.yaml splits v1/v2"
    );
    let by_subset = subsets(&dest);
    assert_eq!(by_subset.len(), 2, "{by_subset:?}");
    assert_eq!(by_subset["v1"], ["reviews-v1"]);
    assert_eq!(by_subset["v2"], ["reviews-v2"]);
    let v1 = dest
        .backends
        .iter()
        .find(|b| b.backend.subset.as_deref() == Some("v1"))
        .unwrap();
    assert_eq!(v1.endpoints[0].address, "127.0.0.1:21001".parse().unwrap());

    let rows = eventually("config status", || async {
        get_json(http, "/api/v1/config").await
    })
    .await;
    let vs = config_row(&rows, "reviews-vs.yaml", "VirtualService").unwrap();
    assert_eq!(vs["status"], "Accepted", "{vs}");

    // A broken edit is refused with the field path, and the proxy keeps the 90/10 split.
    let acked_before = product.status().last_acked_version;
    std::fs::write(
        &vs_path,
        fixture("networking/virtual-service-reviews-90-10.yaml")
            .replace("weight: 10", "weight: 120"),
    )
    .unwrap();
    let vs = eventually("invalid status", || async {
        let rows = get_json(http, "/api/v1/config").await?;
        config_row(&rows, "reviews-vs.yaml", "VirtualService").filter(|r| r["status"] == "Invalid")
    })
    .await;
    let msg = vs["message"].as_str().unwrap();
    assert!(
        msg.ends_with(
            "VirtualService default/reviews: spec.http[0].route[1].weight: must be 0-100, got 120"
        ),
        "{msg}"
    );
    assert_eq!(split(&found(&rx).unwrap(), 0)[0], ("v1".to_string(), 90));
    assert_eq!(
        product.status().last_acked_version,
        acked_before,
        "nothing pushed for a refused file"
    );

    // Jason to v2, everyone else to v3: pushed within a second of the write.
    let written = Instant::now();
    std::fs::write(
        &vs_path,
        fixture("networking/virtual-service-reviews-jason-v2-v3.yaml"),
    )
    .unwrap();
    let dest = eventually("jason route", || async {
        found(&rx).filter(|d| d.routes.len() == 2)
    })
    .await;
    let took = written.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(split(&dest, 0), [("v2".to_string(), 100)]);
    assert_eq!(split(&dest, 1), [("v3".to_string(), 100)]);
    let header = &dest.routes[0].matches[0].headers[0];
    assert_eq!(header.name, "end-user");
    let by_subset = subsets(&dest);
    assert_eq!(by_subset["v2"], ["reviews-v2"]);
    assert_eq!(by_subset["v3"], ["reviews-v3"]);
    assert_eq!(by_subset.len(), 2);

    shutdown.cancel();
    control.stop().await;
}
