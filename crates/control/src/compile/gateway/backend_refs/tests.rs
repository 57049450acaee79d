#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use serde_json::json;
use trellis_config::Resource;
use trellis_model::route::{HttpRoute, RouteAction};
use trellis_model::{Service, ServiceKey};

use crate::compile::MeshView;
use crate::compile::gateway::{Compiled, compile_gateway, status};
use crate::compile::test_support::{resources, workload};
use crate::store::Traffic;

use super::*;

/// A Gateway in `infra`, and an HTTPRoute in `shop` with a rule to `other/reviews` alone and
/// a rule split between `shop/local` and `other/reviews`, mirrored to `other/reviews` too.
const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: trellis
  listeners: [{name: web, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: shop}
spec:
  parentRefs: [{name: edge, namespace: infra}]
  rules:
  - matches: [{path: {value: /only}}]
    backendRefs: [{name: reviews, namespace: other, port: 9080}]
  - matches: [{path: {value: /split}}]
    backendRefs:
    - {name: local, port: 80}
    - {name: reviews, namespace: other, port: 9080}
";

fn grant(from_kind: &str, from_ns: &str, to: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: g, namespace: other}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: {from_kind}, namespace: {from_ns}}}]
  to: [{to}]
"
    )
}

fn gateway_resources(yaml: &str) -> Vec<GatewayResource> {
    resources(yaml, |r| match r {
        Resource::Gateway(g) => Some(*g),
        _ => None,
    })
}

fn services() -> BTreeMap<ServiceKey, Service> {
    ["shop/local", "other/reviews"]
        .into_iter()
        .map(|k| {
            let (ns, name) = k.split_once('/').unwrap();
            let key = ServiceKey::new(ns, name);
            let svc = Service {
                key: key.clone(),
                ports: Vec::new(),
                selector: BTreeMap::new(),
                cluster_ip: None,
            };
            (key, svc)
        })
        .collect()
}

fn compile(yaml: &str) -> Compiled {
    let gateways = gateway_resources(yaml);
    let mut w = workload("infra", "edge");
    w.labels.insert(
        crate::compile::gateway::GATEWAY_NAME_LABEL.into(),
        "edge".into(),
    );
    let services = services();
    let traffic = Traffic::default();
    let view = MeshView {
        services: &services,
        traffic: &traffic,
        workloads: &[std::sync::Arc::new(w.clone())],
        trust_domain: "cluster.local",
    };
    compile_gateway(view, &gateways, &w)
}

/// The served rule whose name ends with `/<index>`.
fn rule(out: &Compiled, index: usize) -> HttpRoute {
    let [l] = out.config.listeners.as_slice() else {
        panic!("{:?}", out.config.listeners)
    };
    let [vh] = l.virtual_hosts.as_slice() else {
        panic!("{:?}", l.virtual_hosts)
    };
    vh.destination
        .routes
        .iter()
        .find(|r| r.name == format!("shop/{index}"))
        .unwrap_or_else(|| panic!("no rule {index}: {:?}", vh.destination.routes))
        .clone()
}

/// The Services a rule forwards to, `ns/name`.
fn forwards(r: &HttpRoute) -> Vec<String> {
    match &r.action {
        RouteAction::Forward(bs) => bs
            .iter()
            .map(|w| format!("{}/{}", w.backend.service.namespace, w.backend.service.name))
            .collect(),
        other => panic!("{other:?}"),
    }
}

fn resolved_refs(yaml: &str) -> serde_json::Value {
    let report = status::report(&gateway_resources(yaml), &services());
    report.fields["HTTPRoute shop/shop"]["parents"][0]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ResolvedRefs")
        .unwrap()
        .clone()
}

#[test]
fn without_a_grant_the_other_namespace_takes_no_traffic_and_status_says_ref_not_permitted() {
    let out = compile(ROUTE);
    // Every backend refused: no backend at all, which the proxy answers 500.
    assert_eq!(forwards(&rule(&out, 0)), Vec::<String>::new());
    // Some refused: the refused one keeps its weight on a Service that cannot exist.
    assert_eq!(
        forwards(&rule(&out, 1)),
        ["shop/local", "other/reviews.ref-not-permitted"]
    );
    let [problem] = out.problems.as_slice() else {
        panic!("{:?}", out.problems)
    };
    assert_eq!(
        problem,
        "HTTPRoute shop/shop: backendRef Service other/reviews is in another namespace and no ReferenceGrant there allows HTTPRoute from namespace \"shop\" (RefNotPermitted); requests routed to it fail"
    );
    let c = resolved_refs(ROUTE);
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&json!("False"), &json!("RefNotPermitted"))
    );
    assert!(
        c["message"].as_str().unwrap().contains("other/reviews"),
        "{c}"
    );
}

#[test]
fn a_grant_for_routes_of_that_namespace_lets_the_backend_serve() {
    for to in [
        "{group: '', kind: Service}",
        "{group: '', kind: Service, name: reviews}",
    ] {
        let yaml = format!("{ROUTE}{}", grant("HTTPRoute", "shop", to));
        let out = compile(&yaml);
        assert!(out.problems.is_empty(), "{to}: {:?}", out.problems);
        assert_eq!(forwards(&rule(&out, 0)), ["other/reviews"], "{to}");
        assert_eq!(
            forwards(&rule(&out, 1)),
            ["shop/local", "other/reviews"],
            "{to}"
        );
        let c = resolved_refs(&yaml);
        assert_eq!(
            (&c["status"], &c["reason"]),
            (&json!("True"), &json!("ResolvedRefs")),
            "{to}"
        );
    }
}

#[test]
fn a_grant_for_another_kind_name_or_namespace_does_not() {
    for (kind, ns, to) in [
        ("GRPCRoute", "shop", "{group: '', kind: Service}"),
        ("Gateway", "shop", "{group: '', kind: Service}"),
        ("HTTPRoute", "elsewhere", "{group: '', kind: Service}"),
        (
            "HTTPRoute",
            "shop",
            "{group: '', kind: Service, name: ratings}",
        ),
        ("HTTPRoute", "shop", "{group: '', kind: Secret}"),
    ] {
        let yaml = format!("{ROUTE}{}", grant(kind, ns, to));
        let out = compile(&yaml);
        assert_eq!(
            forwards(&rule(&out, 0)),
            Vec::<String>::new(),
            "{kind} {ns} {to}"
        );
        assert_eq!(
            out.problems.len(),
            1,
            "{kind} {ns} {to}: {:?}",
            out.problems
        );
        assert_eq!(resolved_refs(&yaml)["reason"], "RefNotPermitted");
    }
    // A grant in the route's own namespace is not one in the backend's.
    let yaml = format!(
        "{ROUTE}{}",
        grant("HTTPRoute", "shop", "{group: '', kind: Service}")
    )
    .replace(
        "metadata: {name: g, namespace: other}",
        "metadata: {name: g, namespace: shop}",
    );
    assert_eq!(forwards(&rule(&compile(&yaml), 0)), Vec::<String>::new());
}

#[test]
fn grants_checks_groups_too() {
    let g = |from_group: &str, to_group: &str| ReferenceGrant {
        source: trellis_model::route::ResourceRef {
            kind: "ReferenceGrant".into(),
            namespace: "other".into(),
            name: "g".into(),
        },
        from: vec![(from_group.into(), "HTTPRoute".into(), "shop".into())],
        to: vec![(to_group.into(), "Service".into(), None)],
    };
    let reviews = ServiceKey::new("other", "reviews");
    assert!(grants(
        &g("gateway.networking.k8s.io", ""),
        "HTTPRoute",
        "shop",
        &reviews
    ));
    assert!(!grants(
        &g("example.com", ""),
        "HTTPRoute",
        "shop",
        &reviews
    ));
    assert!(!grants(
        &g("gateway.networking.k8s.io", "apps"),
        "HTTPRoute",
        "shop",
        &reviews
    ));
    assert!(!grants(
        &g("gateway.networking.k8s.io", ""),
        "HTTPRoute",
        "shop",
        &ServiceKey::new("shop", "reviews")
    ));
}
