use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use trellis_config::multicluster::Link;
use trellis_model::{Service, ServiceKey, ServicePort, TargetPort, Workload};

use super::*;
use crate::compile::MeshView;
use crate::store::Traffic;

fn link(cluster: &str, gateway: &str) -> Link {
    Link {
        cluster: cluster.into(),
        control_plane: "http://127.0.0.1:1".into(),
        gateway: gateway.parse().unwrap(),
        refresh: Duration::from_secs(5),
    }
}

fn echo() -> Service {
    Service {
        key: ServiceKey::new("default", "echo"),
        ports: vec![ServicePort {
            name: None,
            port: 8080,
            target_port: TargetPort::Number(9000),
            protocol: Default::default(),
        }],
        selector: BTreeMap::from([("app".to_string(), "echo".to_string())]),
        cluster_ip: None,
    }
}

fn workload(name: &str, sa: &str, addr: &str) -> std::sync::Arc<Workload> {
    std::sync::Arc::new(Workload {
        name: name.into(),
        namespace: "default".into(),
        service_account: sa.into(),
        labels: BTreeMap::from([("app".to_string(), "echo".to_string())]),
        inbound_address: addr.parse().unwrap(),
        ports: vec![9000],
        admin_address: None,
    })
}

const ECHO_ID: &str = "spiffe://cluster.local/ns/default/sa/echo";

/// `default/echo` exported with its port 8080 (to 9000) and `ready` endpoints proving `identity`.
fn echo_exports(ready: usize, identity: Option<&str>) -> Exports {
    Exports {
        services: vec![ExportedService {
            namespace: "default".into(),
            name: "echo".into(),
            ports: vec![ExportedPort {
                port: 8080,
                target_port: 9000,
                ready_endpoints: ready,
                identity: identity.map(Into::into),
            }],
        }],
    }
}

/// `default/echo` as the only service of the mesh.
fn echo_services() -> BTreeMap<ServiceKey, Service> {
    BTreeMap::from([(echo().key, echo())])
}

/// The view compile and exports read, in trust domain `cluster.local`.
fn view<'a>(
    services: &'a BTreeMap<ServiceKey, Service>,
    traffic: &'a Traffic,
    workloads: &'a [std::sync::Arc<Workload>],
) -> MeshView<'a> {
    MeshView {
        services,
        traffic,
        workloads,
        trust_domain: "cluster.local",
    }
}

#[test]
fn exports_count_ready_meshed_endpoints_of_exported_services_only() {
    let services = echo_services();
    let traffic = Traffic::default();
    let workloads = [
        workload("echo-2", "echo", "10.0.0.2:15006"),
        workload("echo-1", "echo", "10.0.0.1:15006"),
    ];
    let view = view(&services, &traffic, &workloads);
    let exported = [
        ServiceKey::new("default", "echo"),
        ServiceKey::new("default", "missing"),
    ];
    let got = exports::exports(view, &exported);
    assert_eq!(got, echo_exports(2, Some(ECHO_ID)));
    assert_eq!(exports::exports(view, &[]), Exports::default());
}

#[test]
fn remote_endpoints_point_at_each_clusters_gateway_with_the_sni() {
    let answer = |ready| echo_exports(ready, Some(ECHO_ID));
    let (west, east, north) = (
        link("west", "198.18.2.1:15443"),
        link("east", "198.18.1.1:15443"),
        link("north", "198.18.3.1:15443"),
    );
    let (a, b, none) = (answer(2), answer(1), answer(0));
    let remote = RemoteServices::from_exports([(&west, &a), (&east, &b), (&north, &none)]);
    let key = ServiceKey::new("default", "echo");
    let eps = endpoints(&remote, &key, 8080);
    let gateways: Vec<SocketAddr> = eps.iter().map(|e| e.address).collect();
    assert_eq!(
        gateways,
        [
            "198.18.1.1:15443".parse::<SocketAddr>().unwrap(),
            "198.18.2.1:15443".parse().unwrap()
        ],
        "sorted by cluster; a cluster without ready endpoints adds none"
    );
    let e = &eps[0];
    assert!(e.meshed && e.target_port == 9000);
    assert_eq!(e.identity.as_deref(), Some(ECHO_ID));
    let r = e.remote.as_ref().unwrap();
    assert_eq!(r.cluster, "east");
    assert_eq!(r.sni, "outbound_.8080_._.echo.default.svc.cluster.local");
    assert!(endpoints(&remote, &key, 9999).is_empty());
    assert!(endpoints(&remote, &ServiceKey::new("default", "other"), 8080).is_empty());
}

#[test]
fn compile_puts_remote_endpoints_after_local_ones() {
    let services = echo_services();
    let mut traffic = Traffic::default();
    let exports = echo_exports(1, Some(ECHO_ID));
    let east = link("east", "198.18.1.1:15443");
    traffic.remote = RemoteServices::from_exports([(&east, &exports)]);
    let workloads = [workload("echo-1", "echo", "10.0.0.1:15006")];
    let view = view(&services, &traffic, &workloads);
    let target = "echo.default:8080".parse().unwrap();
    let dest = crate::compile::compile(view, &target).unwrap();
    let clusters: Vec<Option<&str>> = dest
        .endpoints
        .iter()
        .map(|e| e.remote.as_ref().map(|r| r.cluster.as_str()))
        .collect();
    assert_eq!(clusters, [None, Some("east")]);
    // What this cluster exports never includes what it learnt from its links.
    let exported = exports::exports(view, &[ServiceKey::new("default", "echo")]);
    assert_eq!(exported.services[0].ports[0].ready_endpoints, 1);
}

#[test]
fn failover_gets_outlier_detection_unless_the_policy_sets_its_own() {
    use trellis_model::policy::{OutlierDetection, TrafficPolicy};
    let east = link("east", "198.18.1.1:15443");
    let exported = echo_exports(1, None);
    let remote = endpoints(
        &RemoteServices::from_exports([(&east, &exported)]),
        &ServiceKey::new("default", "echo"),
        8080,
    );
    let mut local = remote.clone();
    local[0].remote = None;
    let mixed = [local.clone(), remote.clone()].concat();

    let mut policy = TrafficPolicy::default();
    failover_policy(&mut policy, &mixed);
    assert_eq!(policy.outlier_detection, Some(OutlierDetection::default()));

    for only in [&local, &remote] {
        let mut policy = TrafficPolicy::default();
        failover_policy(&mut policy, only);
        assert_eq!(
            policy.outlier_detection, None,
            "nothing to fail over between"
        );
    }

    let own = OutlierDetection {
        consecutive_5xx: Some(1),
        ..OutlierDetection::default()
    };
    let mut policy = TrafficPolicy {
        outlier_detection: Some(own.clone()),
        ..TrafficPolicy::default()
    };
    failover_policy(&mut policy, &mixed);
    assert_eq!(policy.outlier_detection, Some(own));
}

/// The link adapter against a real HTTP server: the exports reach the snapshot, stay while the
/// remote fails (last good answer), and go with the Link.
#[tokio::test]
async fn linked_exports_join_the_snapshot_and_the_last_good_answer_stays() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::response::IntoResponse;
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use crate::store::ConfigSnapshot;

    let exports = echo_exports(2, Some(ECHO_ID));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let remote_http = listener.local_addr().unwrap();
    let served = exports.clone();
    // Once `down`, the remote answers 503 and counts each refused fetch, so the test can wait
    // for failed refreshes themselves rather than for time to pass.
    let down = Arc::new(AtomicBool::new(false));
    let (refused_tx, mut refused) = watch::channel(0usize);
    let refused_tx = Arc::new(refused_tx);
    let is_down = down.clone();
    let app = axum::Router::new().route(
        link::EXPORTS_PATH,
        axum::routing::get(move || {
            let (served, is_down, refused_tx) =
                (served.clone(), is_down.clone(), refused_tx.clone());
            async move {
                if is_down.load(Ordering::SeqCst) {
                    refused_tx.send_modify(|n| *n += 1);
                    axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response()
                } else {
                    axum::Json(served).into_response()
                }
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut with_link = ConfigSnapshot::default();
    with_link.multicluster.links.insert(
        "east".into(),
        Link {
            cluster: "east".into(),
            control_plane: format!("http://{remote_http}"),
            gateway: "127.0.0.1:15443".parse().unwrap(),
            refresh: Duration::from_millis(100),
        },
    );
    let (tx, rx) = watch::channel(Arc::new(with_link.clone()));
    let shutdown = CancellationToken::new();
    let mut out = link::spawn(rx, shutdown.clone());
    let key = ServiceKey::new("default", "echo");
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        out.wait_for(|s| s.traffic.remote.by_service.contains_key(&key)),
    )
    .await
    .expect("the exports within 10 s")
    .unwrap()
    .clone();
    assert_eq!(got.traffic.remote.by_service[&key][0].cluster, "east");
    assert_eq!(
        got.traffic.remote.by_service[&key][0].ports,
        exports.services[0].ports
    );

    // The remote fails: several refreshes fail, the last good answer stays. The adapter
    // fetches one link at a time and publishes before its next fetch, so once the remote has
    // refused a third fetch, the first two failures have been through the snapshot.
    down.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), refused.wait_for(|n| *n >= 3))
        .await
        .expect("three failed refreshes within 10 s")
        .unwrap();
    assert!(
        out.borrow().traffic.remote.by_service.contains_key(&key),
        "kept while the remote is down"
    );

    // The Link removed: its endpoints go.
    tx.send_replace(Arc::new(ConfigSnapshot::default()));
    tokio::time::timeout(
        Duration::from_secs(10),
        out.wait_for(|s| s.traffic.remote.by_service.is_empty()),
    )
    .await
    .expect("gone within 10 s")
    .unwrap();
    shutdown.cancel();
    server.abort();
}
