use std::collections::BTreeMap;

use trellis_model::AppProtocol;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn workload(name: &str, ns: &str, app: &str, inbound: &str, ports: &[u16]) -> Workload {
    Workload {
        name: name.into(),
        namespace: ns.into(),
        service_account: format!("sa-{app}"),
        labels: labels(&[("app", app), ("version", "v1")]),
        inbound_address: inbound.parse().unwrap(),
        ports: ports.to_vec(),
        admin_address: None,
    }
}

fn service(name: &str, target_port: TargetPort, cluster_ip: Option<&str>) -> Service {
    Service {
        key: ServiceKey::new("default", name),
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 9080,
            target_port,
            protocol: AppProtocol::Http,
        }],
        selector: labels(&[("app", name)]),
        cluster_ip: cluster_ip.map(|ip| ip.parse().unwrap()),
    }
}

fn services(list: Vec<Service>) -> BTreeMap<ServiceKey, Service> {
    list.into_iter().map(|s| (s.key.clone(), s)).collect()
}

fn fixture() -> (BTreeMap<ServiceKey, Service>, Vec<std::sync::Arc<Workload>>) {
    let svcs = services(vec![
        service("reviews", TargetPort::Number(9081), None),
        service(
            "ratings",
            TargetPort::Named("http".into()),
            Some("10.96.0.9"),
        ),
    ]);
    let workloads = vec![
        workload(
            "reviews-v2",
            "default",
            "reviews",
            "127.0.0.1:20002",
            &[9081],
        ),
        workload(
            "reviews-v1",
            "default",
            "reviews",
            "127.0.0.1:20001",
            &[9081],
        ),
        workload(
            "reviews-other-ns",
            "prod",
            "reviews",
            "127.0.0.1:20009",
            &[9081],
        ),
        workload(
            "ratings-v1",
            "default",
            "ratings",
            "127.0.0.2:20003",
            &[9080],
        ),
    ];
    (
        svcs,
        workloads.into_iter().map(std::sync::Arc::new).collect(),
    )
}

fn run(target: &str) -> Option<Destination> {
    let (svcs, workloads) = fixture();
    let view = MeshView {
        services: &svcs,
        traffic: &crate::store::Traffic::default(),
        workloads: &workloads,
        trust_domain: "cluster.local",
    };
    compile(view, &target.parse().unwrap())
}

#[test]
fn service_target_selects_same_namespace_workloads() {
    let dest = run("reviews.default:9080").unwrap();
    assert_eq!(dest.authority, "reviews.default.svc.cluster.local:9080");
    assert_eq!(dest.protocol, AppProtocol::Http);
    let names: Vec<_> = dest.endpoints.iter().map(|e| e.workload.as_str()).collect();
    assert_eq!(
        names,
        ["reviews-v1", "reviews-v2"],
        "sorted, other namespace excluded"
    );
    let ep = &dest.endpoints[0];
    assert_eq!(ep.address, "127.0.0.1:20001".parse().unwrap());
    assert!(ep.meshed);
    assert_eq!(
        ep.identity.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/sa-reviews")
    );
    assert_eq!(ep.target_port, 9081);
}

#[test]
fn named_target_port_falls_back_to_service_port() {
    let dest = run("ratings.default:9080").unwrap();
    assert_eq!(dest.endpoints.len(), 1);
    assert_eq!(dest.endpoints[0].target_port, 9080);
}

#[test]
fn unknown_service_or_port_is_none() {
    assert_eq!(run("reviews.default:1"), None);
    assert_eq!(run("nope.default:9080"), None);
    assert_eq!(run("reviews.prod:9080"), None);
}

#[test]
fn service_without_matching_workloads_has_no_endpoints() {
    let svcs = services(vec![service("details", TargetPort::Number(9080), None)]);
    let view = MeshView {
        services: &svcs,
        traffic: &crate::store::Traffic::default(),
        workloads: &[],
        trust_domain: "td",
    };
    let dest = compile(view, &"details.default:9080".parse().unwrap()).unwrap();
    assert!(dest.endpoints.is_empty());
}

#[test]
fn address_target_cluster_ip() {
    let dest = run("10.96.0.9:9080").unwrap();
    assert_eq!(dest.service, ServiceKey::new("default", "ratings"));
    assert_eq!(dest.endpoints.len(), 1);
    assert_eq!(run("10.96.0.9:81"), None, "cluster IP with another port");
}

#[test]
fn address_target_workload_ip_and_port() {
    let dest = run("127.0.0.2:9080").unwrap();
    assert_eq!(dest.authority, "127.0.0.2:9080");
    assert_eq!(
        dest.service,
        ServiceKey::new("default", "ratings"),
        "named after its service"
    );
    assert_eq!(dest.endpoints.len(), 1);
    assert_eq!(
        dest.endpoints[0].address,
        "127.0.0.2:20003".parse().unwrap()
    );
    assert_eq!(dest.endpoints[0].target_port, 9080);
    // Shared IP: the port decides, and the first workload by namespace/name wins.
    let dest = run("127.0.0.1:9081").unwrap();
    assert_eq!(dest.endpoints[0].workload, "reviews-v1");
    assert_eq!(dest.service, ServiceKey::new("default", "reviews"));
    assert_eq!(run("127.0.0.2:1234"), None);
    assert_eq!(run("192.0.2.1:80"), None);
}

#[test]
fn unchanged_input_compiles_equal() {
    let a = run("reviews.default:9080");
    let b = run("reviews.default:9080");
    assert_eq!(a, b);
}
