//! Compile with routes, subsets and policies, from the config store's own snapshot: YAML in,
//! Destination out.

use std::collections::BTreeMap;
use std::time::Duration;

use trellis_config::parse_documents;
use trellis_model::policy::{HashKey, LoadBalancer};
use trellis_model::route::RouteAction;

use super::*;
use crate::store::{ConfigIndex, ConfigSnapshot, Status};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/tests/fixtures");

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{path}")).unwrap()
}

fn snapshot(files: &[(&str, &str)]) -> ConfigSnapshot {
    let mut index = ConfigIndex::default();
    for (name, yaml) in files {
        index.apply(name, parse_documents(name, yaml.as_bytes()));
    }
    index.snapshot()
}

fn reviews(version: &str, port: u16) -> Workload {
    Workload {
        name: format!("reviews-{version}"),
        namespace: "default".into(),
        service_account: "bookinfo-reviews".into(),
        labels: [("app", "reviews"), ("version", version)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        inbound_address: format!("127.0.0.1:{port}").parse().unwrap(),
        ports: vec![9080],
        admin_address: None,
    }
}

fn workloads() -> Vec<std::sync::Arc<Workload>> {
    [
        reviews("v1", 21001),
        reviews("v2", 21002),
        reviews("v3", 21003),
    ]
    .map(std::sync::Arc::new)
    .into()
}

fn compile_in(snap: &ConfigSnapshot, target: &str) -> Destination {
    let workloads = workloads();
    let view = MeshView {
        services: &snap.services,
        traffic: &snap.traffic,
        workloads: &workloads,
        trust_domain: "cluster.local",
    };
    compile(view, &target.parse().unwrap()).unwrap()
}

/// The workloads behind each backend of a destination, by subset (or service) name.
fn backend_workloads(dest: &Destination) -> BTreeMap<String, Vec<String>> {
    dest.backends
        .iter()
        .map(|b| {
            let key = b
                .backend
                .subset
                .clone()
                .unwrap_or_else(|| b.backend.service.name.clone());
            let names = b.endpoints.iter().map(|e| e.workload.clone()).collect();
            (key, names)
        })
        .collect()
}

fn split(action: &RouteAction) -> Vec<(String, u32)> {
    match action {
        RouteAction::Forward(bs) => bs
            .iter()
            .map(|b| {
                let name = b
                    .backend
                    .subset
                    .clone()
                    .unwrap_or_else(|| b.backend.service.name.clone());
                (name, b.weight)
            })
            .collect(),
        other => panic!("expected forward, got {other:?}"),
    }
}

fn row<'a>(snap: &'a ConfigSnapshot, kind: &str, name: &str) -> &'a crate::store::ResourceStatus {
    snap.resources
        .iter()
        .find(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        .unwrap()
}

#[test]
fn bookinfo_90_10_resolves_subsets_to_workloads() {
    let snap = snapshot(&[
        ("bookinfo.yaml", &fixture("bookinfo.yaml")),
        ("dr.yaml", &fixture("networking/destination-rule-all.yaml")),
        (
            "vs.yaml",
            &fixture("networking/virtual-service-reviews-90-10.yaml"),
        ),
    ]);
    let dest = compile_in(&snap, "reviews.default:9080");
    assert_eq!(
        dest.endpoints.len(),
        3,
        "the service itself keeps every version"
    );
    assert_eq!(dest.routes.len(), 1);
    assert_eq!(
        split(&dest.routes[0].action),
        [("v1".to_string(), 90), ("v2".to_string(), 10)]
    );
    let by_subset = backend_workloads(&dest);
    assert_eq!(by_subset["v1"], ["reviews-v1"]);
    assert_eq!(by_subset["v2"], ["reviews-v2"]);
    assert_eq!(by_subset.len(), 2);
    for b in &dest.backends {
        assert_eq!(b.authority, "reviews.default.svc.cluster.local:9080");
        assert!(b.endpoints.iter().all(|e| e.target_port == 9080));
    }
    assert_eq!(
        row(&snap, "VirtualService", "reviews").status,
        Status::Accepted
    );
    // A service no route names has no routes and no backends.
    let ratings = compile_in(&snap, "ratings.default:9080");
    assert!(ratings.routes.is_empty() && ratings.backends.is_empty());
}

#[test]
fn jason_goes_to_v2_everyone_else_to_v3() {
    let snap = snapshot(&[
        ("bookinfo.yaml", &fixture("bookinfo.yaml")),
        ("dr.yaml", &fixture("networking/destination-rule-all.yaml")),
        (
            "vs.yaml",
            &fixture("networking/virtual-service-reviews-jason-v2-v3.yaml"),
        ),
    ]);
    let dest = compile_in(&snap, "reviews.default:9080");
    let headers = {
        let mut h = http::HeaderMap::new();
        h.insert("end-user", "jason".parse().unwrap());
        h
    };
    let none = http::HeaderMap::new();
    let labels = BTreeMap::new();
    let view = |headers| trellis_model::matching::RequestView {
        method: "GET",
        path: "/reviews/0",
        query: None,
        authority: "reviews:9080",
        headers,
        port: 9080,
        source_labels: &labels,
        source_namespace: "default",
    };
    let pick = |h| {
        let (_, route) = trellis_model::route::select_route(&dest.routes, &view(h)).unwrap();
        split(&route.action)[0].0.clone()
    };
    assert_eq!(pick(&headers), "v2");
    assert_eq!(pick(&none), "v3");
    assert_eq!(backend_workloads(&dest)["v2"], ["reviews-v2"]);
    assert_eq!(backend_workloads(&dest)["v3"], ["reviews-v3"]);
}

#[test]
fn unknown_subset_resolves_to_no_endpoints_and_says_why() {
    let snap = snapshot(&[
        ("bookinfo.yaml", &fixture("bookinfo.yaml")),
        (
            "dr.yaml",
            &fixture("networking/destination-rule-reviews.yaml"),
        ),
        (
            "vs.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v9}\n",
        ),
    ]);
    let dest = compile_in(&snap, "reviews.default:9080");
    assert_eq!(dest.backends.len(), 1);
    assert!(dest.backends[0].endpoints.is_empty());
    let vs = row(&snap, "VirtualService", "reviews");
    assert_eq!(vs.status, Status::Accepted);
    let msg = vs.message.as_deref().unwrap();
    assert!(
        msg.contains("subset \"v9\" of default/reviews is not defined by any DestinationRule"),
        "{msg}"
    );
}

#[test]
fn policies_merge_top_port_and_subset_levels() {
    let yaml = fixture("traffic/istio-full.yaml");
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec:\n  selector: {app: reviews}\n  ports: [{name: http, port: 9080}, {name: https, port: 9443}]\n";
    let snap = snapshot(&[("svc.yaml", svc), ("full.yaml", &yaml)]);
    let dest = compile_in(&snap, "reviews.shop:9080");
    assert_eq!(dest.policy.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(dest.policy.connection_pool.max_connections, Some(100));
    let v3 = dest
        .backends
        .iter()
        .find(|b| b.backend.subset.as_deref() == Some("v3"))
        .unwrap();
    assert!(matches!(
        &v3.policy.load_balancer,
        LoadBalancer::ConsistentHash { key: HashKey::Header(h), .. } if h == "x-user"
    ));
    // Subset outlier detection replaces the top level's as a whole (Istio's merge).
    let od = v3.policy.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_gateway_errors, Some(2));
    assert_eq!(od.consecutive_5xx, None);
    assert_eq!(od.base_ejection_time, Duration::from_secs(30));
    // Untouched fields come from the top level.
    assert_eq!(v3.policy.connection_pool.max_connections, Some(100));
    // Port level: 9443 balances at random; the subset without its own balancer keeps it.
    let https = compile_in(&snap, "reviews.shop:9443");
    assert_eq!(https.policy.load_balancer, LoadBalancer::Random);
    let v1 = https
        .backends
        .iter()
        .find(|b| b.backend.subset.as_deref() == Some("v1"));
    assert_eq!(v1.unwrap().policy.load_balancer, LoadBalancer::Random);
    // The route's mirror to an undefined subset is resolved, empty, and reported.
    let shadow = dest
        .backends
        .iter()
        .find(|b| b.backend.subset.as_deref() == Some("shadow"))
        .unwrap();
    assert!(shadow.endpoints.is_empty());
    let msg = row(&snap, "VirtualService", "reviews")
        .message
        .clone()
        .unwrap();
    assert!(msg.contains("subset \"shadow\""), "{msg}");
    // Bound to shop-gateway as well as the mesh: the gateway gets its routes (compile::gateway).
    assert!(!msg.contains("shop-gateway"), "{msg}");
}

const HTTPROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: NAME}
spec:
  parentRefs: [{group: \"\", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [MATCH]
    backendRefs: [{name: BACKEND, port: 9080}]
";

fn httproute(name: &str, matches: &str, backend: &str) -> String {
    HTTPROUTE
        .replace("NAME", name)
        .replace("MATCH", matches)
        .replace("BACKEND", backend)
}

#[test]
fn gateway_api_wins_over_virtual_service_and_routes_merge_by_specificity() {
    let platform = fixture("bookinfo.yaml");
    let versions = fixture("bookinfo-versions.yaml");
    let a = httproute(
        "a-prefix",
        "{path: {type: PathPrefix, value: /api}}",
        "reviews-v1",
    );
    let b = httproute(
        "b-exact",
        "{path: {type: Exact, value: /api/x}}",
        "reviews-v2",
    );
    let c = httproute(
        "c-longer",
        "{path: {type: PathPrefix, value: /api/longer}}",
        "reviews-v3",
    );
    let snap = snapshot(&[
        ("bookinfo.yaml", &platform),
        ("versions.yaml", &versions),
        ("a.yaml", &a),
        ("b.yaml", &b),
        ("c.yaml", &c),
        (
            "vs.yaml",
            &fixture("networking/virtual-service-reviews-v3.yaml"),
        ),
    ]);
    let dest = compile_in(&snap, "reviews.default:9080");
    let names: Vec<&str> = dest.routes.iter().map(|r| r.name.as_str()).collect();
    // Then each route's no-route catch-all (404 for what no rule matches), after every rule.
    assert_eq!(
        names,
        [
            "b-exact/0",
            "c-longer/0",
            "a-prefix/0",
            "a-prefix/no-route",
            "b-exact/no-route",
            "c-longer/no-route"
        ]
    );
    let vs = row(&snap, "VirtualService", "reviews");
    assert_eq!(vs.status, Status::Conflicted);
    assert!(
        vs.message
            .as_deref()
            .unwrap()
            .contains("HTTPRoute takes precedence over VirtualService"),
        "{:?}",
        vs.message
    );
    assert_eq!(backend_workloads(&dest)["reviews-v3"], ["reviews-v3"]);
}

#[test]
fn two_virtual_services_for_one_host_first_by_name_wins() {
    let vs = |name: &str, subset: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: {subset}}}\n"
        )
    };
    let snap = snapshot(&[
        ("bookinfo.yaml", &fixture("bookinfo.yaml")),
        ("dr.yaml", &fixture("networking/destination-rule-all.yaml")),
        ("x.yaml", &vs("reviews-b", "v2")),
        ("y.yaml", &vs("reviews-a", "v1")),
    ]);
    let dest = compile_in(&snap, "reviews.default:9080");
    assert_eq!(split(&dest.routes[0].action)[0].0, "v1");
    let loser = row(&snap, "VirtualService", "reviews-b");
    assert_eq!(loser.status, Status::Conflicted);
    assert!(
        loser
            .message
            .as_deref()
            .unwrap()
            .contains("VirtualService default/reviews-a")
    );
}

#[test]
fn service_profile_routes_forward_to_the_traffic_split() {
    let snap = snapshot(&[
        ("bookinfo.yaml", &fixture("bookinfo.yaml")),
        ("versions.yaml", &fixture("bookinfo-versions.yaml")),
        ("linkerd.yaml", &fixture("traffic/linkerd.yaml")),
    ]);
    let dest = compile_in(&snap, "reviews.default:9080");
    let names: Vec<&str> = dest.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "reviews.default.svc.cluster.local/GET /reviews/{id}",
            "reviews.default.svc.cluster.local/POST or PUT /reviews",
            "reviews-split"
        ]
    );
    for r in &dest.routes {
        assert_eq!(
            split(&r.action),
            [
                ("reviews-v1".to_string(), 900),
                ("reviews-v3".to_string(), 100)
            ]
        );
    }
    assert_eq!(dest.routes[0].timeout, Some(Duration::from_millis(300)));
    assert_eq!(dest.policy.retry_budget.ratio, 0.2);
    assert_eq!(dest.tcp_routes.len(), 1);
    let by = backend_workloads(&dest);
    assert_eq!(by["reviews-v1"], ["reviews-v1"]);
    assert_eq!(by["reviews-v3"], ["reviews-v3"]);
}

#[test]
fn unchanged_config_compiles_to_an_equal_destination() {
    let files = [
        ("bookinfo.yaml", fixture("bookinfo.yaml")),
        ("dr.yaml", fixture("networking/destination-rule-all.yaml")),
        (
            "vs.yaml",
            fixture("networking/virtual-service-reviews-90-10.yaml"),
        ),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let one = compile_in(&snapshot(&refs), "reviews.default:9080");
    let two = compile_in(&snapshot(&refs), "reviews.default:9080");
    assert_eq!(one, two);
}

#[test]
fn gateway_api_and_traffic_split_give_the_same_90_10() {
    let platform = fixture("bookinfo.yaml");
    let versions = fixture("bookinfo-versions.yaml");
    let ts = "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: reviews}\nspec:\n  service: reviews\n  backends:\n  - {service: reviews-v1, weight: 90}\n  - {service: reviews-v2, weight: 10}\n";
    for (name, yaml) in [
        ("httproute", fixture("gateway-api/route-reviews-90-10.yaml")),
        ("trafficsplit", ts.to_string()),
    ] {
        let snap = snapshot(&[
            ("bookinfo.yaml", &platform),
            ("versions.yaml", &versions),
            ("route.yaml", &yaml),
        ]);
        let dest = compile_in(&snap, "reviews.default:9080");
        let shares: Vec<(String, u32)> = split(&dest.routes[0].action);
        let total: u32 = shares.iter().map(|s| s.1).sum();
        let percent: Vec<(String, u32)> = shares
            .iter()
            .map(|(n, w)| (n.clone(), w * 100 / total))
            .collect();
        assert_eq!(
            percent,
            [
                ("reviews-v1".to_string(), 90),
                ("reviews-v2".to_string(), 10)
            ],
            "{name}"
        );
        let by = backend_workloads(&dest);
        assert_eq!(by["reviews-v1"], ["reviews-v1"], "{name}");
        assert_eq!(by["reviews-v2"], ["reviews-v2"], "{name}");
    }
}

#[test]
fn second_destination_rule_for_a_host_is_conflicted() {
    let dr = |name: &str, lb: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}}}\nspec:\n  host: reviews\n  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}\n"
        )
    };
    let snap = snapshot(&[
        ("bookinfo.yaml", &fixture("bookinfo.yaml")),
        ("a.yaml", &dr("reviews-rr", "ROUND_ROBIN")),
        ("b.yaml", &dr("reviews-random", "RANDOM")),
    ]);
    // Neither is dated: first by namespace/name wins.
    let dest = compile_in(&snap, "reviews.default:9080");
    assert_eq!(dest.policy.load_balancer, LoadBalancer::Random);
    let loser = row(&snap, "DestinationRule", "reviews-rr");
    assert_eq!(loser.status, Status::Conflicted);
    assert!(
        loser
            .message
            .as_deref()
            .unwrap()
            .contains("DestinationRule default/reviews-random"),
        "{:?}",
        loser.message
    );
    // A dated rule is older than an undated one (files have no creation time).
    let dated = dr("reviews-rr", "ROUND_ROBIN").replace(
        "metadata: {name: reviews-rr}",
        "metadata: {name: reviews-rr, creationTimestamp: \"2024-01-01T00:00:00Z\"}",
    );
    let snap = snapshot(&[
        ("bookinfo.yaml", &fixture("bookinfo.yaml")),
        ("a.yaml", &dated),
        ("b.yaml", &dr("reviews-random", "RANDOM")),
    ]);
    let dest = compile_in(&snap, "reviews.default:9080");
    assert_eq!(dest.policy.load_balancer, LoadBalancer::RoundRobin);
}
