#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde_json::{Value, json};
use trellis_config::Resource;
use trellis_model::{Service, ServiceKey};

use super::*;
use crate::compile::test_support::resources;

const YAML: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: trellis
  listeners:
  - {name: web, port: 80, protocol: HTTP, hostname: '*.example.com', allowedRoutes: {namespaces: {from: All}}}
  - {name: internal, port: 8080, protocol: HTTP}
  - name: secure
    port: 443
    protocol: HTTPS
    hostname: secure.example.com
    tls: {certificateRefs: [{name: cert, namespace: certs}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: theirs, namespace: infra}
spec:
  gatewayClassName: someone-else
  listeners: [{name: web, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: good, namespace: shop}
spec:
  parentRefs: [{name: edge, namespace: infra, sectionName: web}, {name: theirs, namespace: infra}]
  hostnames: [shop.example.com]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: wrong-host, namespace: shop}
spec:
  parentRefs: [{name: edge, namespace: infra, sectionName: web}]
  hostnames: [shop.other.test]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: other-namespace, namespace: shop}
spec:
  parentRefs: [{name: edge, namespace: infra, sectionName: internal}]
  rules: [{backendRefs: [{name: missing, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: no-listener, namespace: shop}
spec:
  parentRefs: [{name: edge, namespace: infra, sectionName: nope}]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
";

fn services() -> BTreeMap<ServiceKey, Service> {
    let key = ServiceKey::new("shop", "reviews");
    let svc = Service {
        key: key.clone(),
        ports: Vec::new(),
        selector: BTreeMap::new(),
        cluster_ip: None,
    };
    [(key, svc)].into()
}

fn gateway_resources(yaml: &str) -> Vec<GatewayResource> {
    resources(yaml, |r| match r {
        Resource::Gateway(g) => Some(*g),
        _ => None,
    })
}

fn parent_condition<'a>(report: &'a Report, route: &str, kind: &str) -> &'a Value {
    let parents = report.fields[&format!("HTTPRoute shop/{route}")]["parents"]
        .as_array()
        .unwrap();
    assert_eq!(parents.len(), 1, "one served parent: {parents:?}");
    assert_eq!(parents[0]["controllerName"], CONTROLLER_NAME);
    parents[0]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap()
}

fn listener<'a>(report: &'a Report, name: &str) -> &'a Value {
    report.fields["Gateway infra/edge"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap()
}

fn listener_condition<'a>(l: &'a Value, kind: &str) -> &'a Value {
    l["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap()
}

#[test]
fn routes_get_parent_status_with_the_spec_reasons() {
    let report = report(&gateway_resources(YAML), &services());
    let accepted = parent_condition(&report, "good", "Accepted");
    assert_eq!(
        (&accepted["status"], &accepted["reason"]),
        (&json!("True"), &json!("Accepted"))
    );
    assert_eq!(
        report.fields["HTTPRoute shop/good"]["parents"][0]["parentRef"],
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": "edge", "sectionName": "web"}),
        "the foreign Gateway's parent is left to its controller"
    );
    let c = parent_condition(&report, "wrong-host", "Accepted");
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&json!("False"), &json!("NoMatchingListenerHostname"))
    );
    let c = parent_condition(&report, "other-namespace", "Accepted");
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&json!("False"), &json!("NotAllowedByListeners"))
    );
    let c = parent_condition(&report, "other-namespace", "ResolvedRefs");
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&json!("False"), &json!("BackendNotFound"))
    );
    assert!(c["message"].as_str().unwrap().contains("shop/missing"));
    let c = parent_condition(&report, "no-listener", "Accepted");
    assert_eq!(c["reason"], "NoMatchingParent");
}

#[test]
fn gateways_get_listener_status_and_foreign_ones_are_left_alone() {
    let report = report(&gateway_resources(YAML), &services());
    assert!(report.foreign.contains("Gateway infra/theirs"));
    assert!(!report.fields.contains_key("Gateway infra/theirs"));
    let web = listener(&report, "web");
    assert_eq!(web["attachedRoutes"], 1, "only `good` attaches to web");
    assert_eq!(
        web["supportedKinds"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}, {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}])
    );
    assert_eq!(listener(&report, "internal")["attachedRoutes"], 0);
    let secure = listener(&report, "secure");
    let refs = listener_condition(secure, "ResolvedRefs");
    assert_eq!(
        (&refs["status"], &refs["reason"]),
        (&json!("False"), &json!("RefNotPermitted"))
    );
    assert_eq!(listener_condition(secure, "Programmed")["status"], "False");

    // A ReferenceGrant in the Secret's namespace: the reference is permitted, and the missing
    // Secret is what is left to say.
    let grant = "---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: edge-certs, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]
  to: [{group: '', kind: Secret}]
";
    let report = super::report(&gateway_resources(&format!("{YAML}{grant}")), &services());
    let refs = listener_condition(listener(&report, "secure"), "ResolvedRefs");
    assert_eq!(refs["reason"], "InvalidCertificateRef");
}

#[test]
fn stamp_sets_times_and_generation_on_every_condition() {
    let mut fields =
        report(&gateway_resources(YAML), &services()).fields["Gateway infra/edge"].clone();
    stamp(&mut fields, &json!("2026-01-01T00:00:00Z"), Some(4));
    for l in fields["listeners"].as_array().unwrap() {
        for c in l["conditions"].as_array().unwrap() {
            assert_eq!(c["lastTransitionTime"], "2026-01-01T00:00:00Z");
            assert_eq!(c["observedGeneration"], 4);
        }
    }
}
