//! ServiceEntry hosts through the config store's own snapshot: YAML in, Destination out.

use std::net::SocketAddr;
use std::time::Duration;

use trellis_config::parse_documents;
use trellis_model::route::RouteAction;
use trellis_model::{Target, Workload};

use crate::compile::{MeshView, compile};
use crate::store::{ConfigIndex, ConfigSnapshot, Status};

fn snapshot(yaml: &str) -> ConfigSnapshot {
    let mut index = ConfigIndex::default();
    index.apply("se.yaml", parse_documents("se.yaml", yaml.as_bytes()));
    index.snapshot()
}

fn at(snap: &ConfigSnapshot, target: Target) -> Option<trellis_model::Destination> {
    let workloads: Vec<std::sync::Arc<Workload>> = Vec::new();
    let view = MeshView {
        services: &snap.services,
        traffic: &snap.traffic,
        workloads: &workloads,
        trust_domain: "cluster.local",
    };
    compile(view, &target)
}

fn addr(s: &str) -> Target {
    Target::Address(s.parse::<SocketAddr>().unwrap())
}

const STATIC: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.external.test]
  addresses: [198.18.9.0/24]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}
  - {number: 443, name: https, protocol: HTTPS}
  endpoints:
  - {address: 198.18.0.5, labels: {version: v1}}
  - {address: 198.18.0.6, ports: {http: 9090}, labels: {version: v2}}
";

#[test]
fn static_endpoints_by_address_and_by_name() {
    let snap = snapshot(STATIC);
    assert!(
        snap.resources.iter().all(|r| r.status == Status::Accepted),
        "{:?}",
        snap.resources
    );
    // A virtual address from spec.addresses, on a declared port.
    let dest = at(&snap, addr("198.18.9.200:80")).unwrap();
    assert_eq!(dest.authority, "api.external.test:80");
    let eps: Vec<String> = dest
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(eps, ["198.18.0.5:8080", "198.18.0.6:9090"]);
    assert!(
        dest.endpoints
            .iter()
            .all(|e| !e.meshed && e.identity.is_none())
    );
    // An endpoint's own IP belongs to the entry too; an undeclared port does not.
    assert!(at(&snap, addr("198.18.0.5:443")).is_some());
    assert!(at(&snap, addr("198.18.0.5:22")).is_none());
    assert!(at(&snap, addr("198.18.10.1:80")).is_none());
}

#[test]
fn dns_uses_the_answers_and_round_robin_takes_one() {
    let yaml = "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [www.example.test]
  resolution: DNS
  ports: [{number: 443, name: https, protocol: TLS}]
";
    let mut snap = snapshot(yaml);
    assert_eq!(
        snap.traffic.service_entries.dns_names(),
        ["www.example.test"]
    );
    // Before an answer: known (so REGISTRY_ONLY allows it by name) but without endpoints.
    let unanswered = at(
        &snap,
        Target::Service {
            service: trellis_model::ServiceKey::external("www.example.test"),
            port: 443,
        },
    )
    .unwrap();
    assert!(unanswered.endpoints.is_empty());
    snap.traffic.service_entries.dns.insert(
        "www.example.test".into(),
        vec!["198.18.0.7".parse().unwrap(), "198.18.0.8".parse().unwrap()],
    );
    let dest = at(&snap, addr("198.18.0.8:443")).unwrap();
    assert_eq!(dest.endpoints.len(), 2);
    assert_eq!(dest.endpoints[0].address.to_string(), "198.18.0.7:443");

    let rr = yaml.replace("resolution: DNS", "resolution: DNS_ROUND_ROBIN");
    let mut snap = snapshot(&rr);
    snap.traffic.service_entries.dns.insert(
        "www.example.test".into(),
        vec!["198.18.0.7".parse().unwrap(), "198.18.0.8".parse().unwrap()],
    );
    assert_eq!(
        at(&snap, addr("198.18.0.7:443")).unwrap().endpoints.len(),
        1
    );
}

#[test]
fn none_forwards_to_the_original_destination() {
    let snap = snapshot(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [db.external.test]
  addresses: [198.18.4.0/24]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
",
    );
    let dest = at(&snap, addr("198.18.4.9:5432")).unwrap();
    let eps: Vec<String> = dest
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(eps, ["198.18.4.9:5432"]);
}

#[test]
fn routes_and_tls_origination_apply_to_the_host() {
    let yaml = format!(
        "{STATIC}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ext}}
spec:
  hosts: [api.external.test]
  http:
  - timeout: 250ms
    route:
    - destination: {{host: api.external.test, subset: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ext}}
spec:
  host: api.external.test
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: /etc/ca.pem, sni: api.external.test}}
  subsets:
  - {{name: v2, labels: {{version: v2}}}}
"
    );
    let snap = snapshot(&yaml);
    assert!(
        snap.resources.iter().all(|r| r.status == Status::Accepted),
        "{:?}",
        snap.resources
    );
    let dest = at(&snap, addr("198.18.9.1:80")).unwrap();
    let tls = dest.policy.tls_origination.as_ref().unwrap();
    assert_eq!(tls.sni.as_deref(), Some("api.external.test"));
    assert_eq!(dest.routes[0].timeout, Some(Duration::from_millis(250)));
    let RouteAction::Forward(backends) = &dest.routes[0].action else {
        panic!("{:?}", dest.routes[0].action);
    };
    let (eps, policy) = dest.backend(&backends[0].backend).unwrap();
    let eps: Vec<String> = eps.iter().map(|e| e.address.to_string()).collect();
    assert_eq!(eps, ["198.18.0.6:9090"]);
    assert!(policy.tls_origination.is_some());
}

#[test]
fn a_kubernetes_service_keeps_its_name() {
    let yaml = "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews-vm}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 198.18.0.9}]
";
    let snap = snapshot(yaml);
    assert!(snap.traffic.service_entries.by_key.is_empty());
    let svc = &snap.services[&trellis_model::ServiceKey::new("default", "reviews")];
    assert!(!svc.selector.is_empty());
}
