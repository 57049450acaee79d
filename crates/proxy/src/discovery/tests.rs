use std::collections::BTreeMap;

use trellis_api::discovery as pb;
use trellis_model::{AppProtocol, ServiceKey};

use super::wire::{destination_from_wire, target_from_wire, target_to_wire, workload_to_wire};
use super::*;

fn wire_destination() -> pb::Destination {
    pb::Destination {
        authority: "reviews.default.svc.cluster.local:9080".into(),
        service_name: "reviews".into(),
        service_namespace: "default".into(),
        port: 9080,
        protocol: "http".into(),
        endpoints: vec![pb::Endpoint {
            address: "127.0.0.1:20001".into(),
            meshed: true,
            identity: "spiffe://cluster.local/ns/default/sa/reviews".into(),
            workload: "reviews-v1".into(),
            labels: [("version".to_string(), "v1".to_string())]
                .into_iter()
                .collect(),
            target_port: 9081,
            remote: None,
        }],
        traffic_json: String::new(),
        traffic_schema: 0,
    }
}

/// A 90/10 split across two subsets, with the subsets' endpoints, as the control plane sends.
fn traffic_json() -> String {
    use trellis_model::route::{
        BackendRef, HeaderModifier, HttpRoute, Mirror, Percent, ResourceRef, RouteAction,
        WeightedBackend,
    };
    let subset = |name: &str| BackendRef {
        service: ServiceKey::new("default", "reviews"),
        port: None,
        subset: Some(name.into()),
    };
    let weighted = |name: &str, weight| WeightedBackend {
        backend: subset(name),
        weight,
        request_headers: HeaderModifier::default(),
        response_headers: HeaderModifier::default(),
    };
    let route = HttpRoute {
        name: "reviews/0".into(),
        source: ResourceRef {
            kind: "VirtualService".into(),
            namespace: "default".into(),
            name: "reviews".into(),
        },
        matches: vec![],
        action: RouteAction::Forward(vec![weighted("v1", 90), weighted("v3", 10)]),
        request_headers: HeaderModifier::default(),
        response_headers: HeaderModifier::default(),
        rewrite: None,
        mirrors: vec![Mirror {
            backend: subset("v3"),
            percent: Percent(5.0),
        }],
        fault: None,
        timeout: None,
        retry: None,
    };
    let backend = |name: &str, port: u16| trellis_model::Backend {
        backend: subset(name),
        authority: "reviews.default.svc.cluster.local:9080".into(),
        endpoints: vec![trellis_model::Endpoint {
            address: format!("127.0.0.1:{port}").parse().unwrap(),
            meshed: true,
            identity: Some("spiffe://cluster.local/ns/default/sa/reviews".into()),
            workload: format!("reviews-{name}"),
            labels: BTreeMap::new(),
            target_port: 9080,
            remote: None,
        }],
        policy: Default::default(),
    };
    serde_json::json!({
        "policy": trellis_model::policy::TrafficPolicy::default(),
        "routes": [route],
        "backends": [backend("v1", 21001), backend("v3", 21003)],
    })
    .to_string()
}

fn with_traffic(json: String) -> pb::Destination {
    pb::Destination {
        traffic_json: json,
        traffic_schema: 1,
        ..wire_destination()
    }
}

#[test]
fn traffic_json_decodes_into_routes_and_backends() {
    let d = destination_from_wire(with_traffic(traffic_json())).unwrap();
    assert_eq!(d.routes.len(), 1);
    assert_eq!(d.backends.len(), 2);
    let route_backends = match &d.routes[0].action {
        trellis_model::route::RouteAction::Forward(bs) => bs.clone(),
        other => panic!("{other:?}"),
    };
    let (eps, _) = d.backend(&route_backends[1].backend).unwrap();
    assert_eq!(eps[0].workload, "reviews-v3");
    // Empty: no traffic config at all, whatever the schema says.
    let plain = destination_from_wire(wire_destination()).unwrap();
    assert!(plain.routes.is_empty() && plain.backends.is_empty());
    // Every key is optional.
    let d = destination_from_wire(with_traffic("{}".into())).unwrap();
    assert_eq!(d.policy, trellis_model::policy::TrafficPolicy::default());
}

#[test]
fn bad_traffic_is_nacked_and_last_good_kept() {
    let (inner, rx) = tracked();
    inner.apply_update(update(1, Some(with_traffic(traffic_json()))));
    let good = rx.borrow().clone();
    assert!(matches!(&good, Resolution::Found(d) if d.routes.len() == 1));
    let nack_error =
        |d: pb::Destination, version| match inner.apply_update(update(version, Some(d))).kind {
            Some(pb::proxy_message::Kind::Nack(nack)) => {
                assert_eq!(nack.version, version);
                nack.error
            }
            other => panic!("expected a Nack, got {other:?}"),
        };
    let err = nack_error(with_traffic("{\"routes\": [{\"name\": 1}]}".into()), 2);
    assert!(
        err.starts_with("destination.traffic_json: cannot decode: "),
        "{err}"
    );
    let err = nack_error(with_traffic("not json".into()), 3);
    assert!(
        err.starts_with("destination.traffic_json: cannot decode: "),
        "{err}"
    );
    let mut future = with_traffic(traffic_json());
    future.traffic_schema = 2;
    let err = nack_error(future, 4);
    assert_eq!(
        err,
        "destination.traffic_schema: schema 2 is not supported (this proxy reads 1)"
    );
    let out_of_range = traffic_json().replace("\"percent\":5.0", "\"percent\":500.0");
    assert!(out_of_range.contains("500.0"), "{out_of_range}");
    let err = nack_error(with_traffic(out_of_range), 5);
    assert_eq!(
        err,
        "destination.traffic_json.routes[0].mirrors[0].percent: percent must be 0-100, got 500"
    );
    let bad_regex = traffic_json().replace("\"matches\"", "\"x\"").replace(
        "\"name\":\"reviews/0\"",
        "\"name\":\"reviews/0\",\"matches\":[{\"path\":{\"regex\":\"(\"}}]",
    );
    let err = nack_error(with_traffic(bad_regex), 6);
    assert!(err.contains("cannot decode"), "{err}");
    assert_eq!(*rx.borrow(), good, "the last good value stays");
    let status = inner.status().clone();
    assert_eq!((status.nacks, status.last_acked_version), (5, Some(1)));
}

fn target() -> Target {
    "reviews.default:9080".parse().unwrap()
}

fn update(version: u64, destination: Option<pb::Destination>) -> pb::Update {
    pb::Update {
        version,
        target: Some(target_to_wire(&target())),
        destination,
        endpoint_delta: None,
    }
}

#[test]
fn destination_converts() {
    let d = destination_from_wire(wire_destination()).unwrap();
    assert_eq!(d.service, ServiceKey::new("default", "reviews"));
    assert_eq!(d.protocol, AppProtocol::Http);
    let ep = &d.endpoints[0];
    assert_eq!(ep.address, "127.0.0.1:20001".parse().unwrap());
    assert_eq!(
        ep.identity.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/reviews")
    );
    assert_eq!(ep.target_port, 9081);
    assert_eq!(ep.labels.get("version").map(String::as_str), Some("v1"));
}

#[test]
fn invalid_destinations_name_the_field() {
    let mut d = wire_destination();
    d.endpoints[0].address = "nowhere".into();
    let err = destination_from_wire(d).unwrap_err().to_string();
    assert!(
        err.starts_with("destination.endpoints[0].address: "),
        "{err}"
    );
    let mut d = wire_destination();
    d.endpoints[0].target_port = 0;
    assert!(
        destination_from_wire(d)
            .unwrap_err()
            .to_string()
            .contains("target_port")
    );
    let mut d = wire_destination();
    d.endpoints[0].identity = "not-spiffe".into();
    assert!(
        destination_from_wire(d)
            .unwrap_err()
            .to_string()
            .contains("identity")
    );
    let mut d = wire_destination();
    d.port = 70000;
    assert!(destination_from_wire(d).is_err());
    let mut d = wire_destination();
    d.service_name.clear();
    assert!(destination_from_wire(d).is_err());
}

#[test]
fn targets_and_workloads_round_trip() {
    for t in ["reviews.default:9080", "10.0.0.1:80", "[::1]:443"] {
        let t: Target = t.parse().unwrap();
        assert_eq!(target_from_wire(Some(target_to_wire(&t))).unwrap(), t);
    }
    let w = Workload {
        name: "a".into(),
        namespace: "b".into(),
        service_account: "c".into(),
        labels: BTreeMap::from([("k".to_string(), "v".to_string())]),
        inbound_address: "127.0.0.1:15006".parse().unwrap(),
        ports: vec![80],
        admin_address: None,
    };
    let wire = workload_to_wire(&w);
    assert_eq!(wire.admin_address, "");
    assert_eq!(wire.ports, [80]);
    assert_eq!(wire.inbound_address, "127.0.0.1:15006");
}

fn tracked() -> (Inner, watch::Receiver<Resolution>) {
    let inner = Inner::new(true, None);
    let (tx, rx) = watch::channel(Resolution::Pending);
    lock(&inner.targets).insert(
        target(),
        TargetEntry {
            tx,
            idle_since: None,
            version: None,
        },
    );
    (inner, rx)
}

fn delta_update(
    version: u64,
    base_version: u64,
    removed: &[&str],
    added: &[(u32, &str)],
) -> pb::Update {
    let placed = |(index, address): &(u32, &str)| pb::PlacedEndpoint {
        index: *index,
        endpoint: Some(pb::Endpoint {
            address: (*address).into(),
            target_port: 9081,
            ..wire_destination().endpoints[0].clone()
        }),
    };
    pb::Update {
        version,
        target: Some(target_to_wire(&target())),
        destination: None,
        endpoint_delta: Some(pb::EndpointDelta {
            base_version,
            removed: removed.iter().map(|a| a.to_string()).collect(),
            added: added.iter().map(placed).collect(),
        }),
    }
}

fn addresses(rx: &watch::Receiver<Resolution>) -> Vec<String> {
    match &*rx.borrow() {
        Resolution::Found(d) => d.endpoints.iter().map(|e| e.address.to_string()).collect(),
        other => panic!("no destination: {other:?}"),
    }
}

fn is_ack(m: &pb::ProxyMessage) -> bool {
    matches!(m.kind, Some(pb::proxy_message::Kind::Ack(_)))
}

fn nack_text(m: pb::ProxyMessage) -> String {
    match m.kind {
        Some(pb::proxy_message::Kind::Nack(n)) => n.error,
        other => panic!("expected a Nack, got {other:?}"),
    }
}

#[test]
fn an_endpoint_delta_is_applied_on_the_version_in_force() {
    let (inner, mut rx) = tracked();
    let mut with_traffic = wire_destination();
    with_traffic.traffic_json = traffic_json();
    with_traffic.traffic_schema = 1;
    assert!(is_ack(&inner.apply_update(update(1, Some(with_traffic)))));
    let routes_before = match &*rx.borrow_and_update() {
        Resolution::Found(d) => d.routes.clone(),
        other => panic!("{other:?}"),
    };
    // Two join (one before, one after the endpoint held), then the first one held leaves.
    let answer = inner.apply_update(delta_update(
        2,
        1,
        &[],
        &[(0, "127.0.0.1:20000"), (2, "127.0.0.1:20002")],
    ));
    assert!(is_ack(&answer), "{answer:?}");
    assert!(rx.has_changed().unwrap(), "receivers wake on a delta");
    assert_eq!(
        addresses(&rx),
        ["127.0.0.1:20000", "127.0.0.1:20001", "127.0.0.1:20002"]
    );
    assert!(is_ack(&inner.apply_update(delta_update(
        3,
        2,
        &["127.0.0.1:20001"],
        &[]
    ))));
    assert_eq!(addresses(&rx), ["127.0.0.1:20000", "127.0.0.1:20002"]);
    // Routes and policy are the ones held, untouched.
    match &*rx.borrow() {
        Resolution::Found(d) => assert_eq!(d.routes, routes_before),
        other => panic!("{other:?}"),
    }
    let status = inner.status().clone();
    assert_eq!(
        (
            status.last_acked_version,
            status.endpoint_deltas,
            status.nacks
        ),
        (Some(3), 2, 0)
    );
}

#[test]
fn an_endpoint_delta_that_does_not_fit_is_nacked_and_the_value_kept() {
    let (inner, rx) = tracked();
    // Nothing held yet.
    let text = nack_text(inner.apply_update(delta_update(1, 0, &[], &[(0, "127.0.0.1:1")])));
    assert!(
        text.contains("base_version: 0 is not the version in force"),
        "{text}"
    );
    inner.apply_update(update(2, Some(wire_destination())));
    // Based on another version (say one this proxy Nacked).
    let text = nack_text(inner.apply_update(delta_update(3, 1, &[], &[(0, "127.0.0.1:1")])));
    assert_eq!(
        text,
        "endpoint_delta.base_version: 1 is not the version in force for the target (2)"
    );
    // Removing an endpoint not held.
    let text = nack_text(inner.apply_update(delta_update(4, 2, &["127.0.0.1:9"], &[])));
    assert!(
        text.contains("removed[0]: 127.0.0.1:9 is not an endpoint"),
        "{text}"
    );
    // A bad endpoint is refused as in a whole destination.
    let text = nack_text(inner.apply_update(delta_update(5, 2, &[], &[(0, "nope")])));
    assert!(
        text.starts_with("endpoint_delta.added[0].endpoint.address"),
        "{text}"
    );
    // Both a destination and a delta.
    let mut both = delta_update(6, 2, &[], &[]);
    both.destination = Some(wire_destination());
    assert!(nack_text(inner.apply_update(both)).contains("both set"));
    assert_eq!(addresses(&rx), ["127.0.0.1:20001"]);
    // A failed delta does not move the version in force: one on version 2 still applies.
    assert!(is_ack(&inner.apply_update(delta_update(
        7,
        2,
        &["127.0.0.1:20001"],
        &[]
    ))));
    assert!(addresses(&rx).is_empty());
    // After a reconnect versions restart: nothing is a base until a whole update arrives.
    inner.forget_versions();
    let text = nack_text(inner.apply_update(delta_update(7, 7, &[], &[])));
    assert!(text.contains("(none)"), "{text}");
    let status = inner.status().clone();
    assert_eq!((status.nacks, status.endpoint_deltas), (6, 1));
}

#[test]
fn valid_update_is_published_and_acked() {
    let (inner, rx) = tracked();
    let answer = inner.apply_update(update(1, Some(wire_destination())));
    assert!(matches!(
        answer.kind,
        Some(pb::proxy_message::Kind::Ack(pb::Ack { version: 1 }))
    ));
    assert!(matches!(&*rx.borrow(), Resolution::Found(d) if d.endpoints.len() == 1));
    let answer = inner.apply_update(update(2, None));
    assert!(matches!(answer.kind, Some(pb::proxy_message::Kind::Ack(_))));
    assert_eq!(*rx.borrow(), Resolution::NotFound);
    assert_eq!(inner.status().last_acked_version, Some(2));
}

#[test]
fn invalid_update_is_nacked_and_last_good_kept() {
    let (inner, rx) = tracked();
    inner.apply_update(update(1, Some(wire_destination())));
    let good = rx.borrow().clone();
    let mut bad = wire_destination();
    bad.endpoints[0].address = "999.1.1.1:1".into();
    let answer = inner.apply_update(update(2, Some(bad)));
    match answer.kind {
        Some(pb::proxy_message::Kind::Nack(nack)) => {
            assert_eq!(nack.version, 2);
            assert!(
                nack.error.contains("destination.endpoints[0].address"),
                "{}",
                nack.error
            );
        }
        other => panic!("expected a Nack, got {other:?}"),
    }
    assert_eq!(*rx.borrow(), good);
    let status = inner.status().clone();
    assert_eq!((status.nacks, status.last_acked_version), (1, Some(1)));
    // An update without a target is refused too.
    let answer = inner.apply_update(pb::Update {
        version: 3,
        target: None,
        destination: None,
        endpoint_delta: None,
    });
    assert!(matches!(
        answer.kind,
        Some(pb::proxy_message::Kind::Nack(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn idle_targets_are_swept() {
    let (inner, rx) = tracked();
    let now = Instant::now();
    assert!(inner.sweep_idle(now).is_empty());
    drop(rx);
    assert!(inner.sweep_idle(now).is_empty(), "idle period starts now");
    assert!(inner.sweep_idle(now + IDLE_TIMEOUT / 2).is_empty());
    assert_eq!(inner.sweep_idle(now + IDLE_TIMEOUT), vec![target()]);
    assert!(inner.live_targets().is_empty());
}

#[tokio::test]
async fn disabled_resolves_not_found_at_once() {
    let d = Discovery::disabled();
    assert_eq!(
        d.resolve(&target(), Duration::from_secs(60)).await,
        Resolution::NotFound
    );
    assert!(!d.status().enabled);
}

#[tokio::test(start_paused = true)]
async fn resolve_times_out_pending_without_control_plane() {
    let shutdown = CancellationToken::new();
    let config = DiscoveryConfig {
        control: "http://127.0.0.1:1".into(),
        workload: Workload {
            name: "a".into(),
            namespace: "default".into(),
            service_account: "default".into(),
            labels: BTreeMap::new(),
            inbound_address: "127.0.0.1:15006".parse().unwrap(),
            ports: vec![],
            admin_address: None,
        },
        proxy_id: "p".into(),
        join_token: None,
    };
    let d = Discovery::spawn(config, shutdown.clone());
    assert_eq!(
        d.resolve(&target(), Duration::from_millis(200)).await,
        Resolution::Pending
    );
    assert!(!d.status().connected);
    assert_eq!(d.dump()["targets"][0]["state"], "pending");
    shutdown.cancel();
}

#[tokio::test]
async fn watch_subscribes_once_per_target_and_shares_the_channel() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let d = Discovery {
        inner: Arc::new(Inner::new(true, Some(tx))),
    };
    let a = d.watch(&target());
    let b = d.watch(&target());
    assert_eq!(rx.try_recv().ok(), Some(target()));
    assert!(
        rx.try_recv().is_err(),
        "second watch reuses the subscription"
    );
    assert_eq!(*a.borrow(), Resolution::Pending);
    d.inner.publish(&target(), Resolution::NotFound, Some(1));
    assert_eq!(*b.borrow(), Resolution::NotFound);
    assert_eq!(d.dump()["targets"][0]["state"], "not_found");
}

#[test]
fn control_address_may_omit_the_scheme() {
    assert_eq!(
        super::client::control_uri("127.0.0.1:15010"),
        "http://127.0.0.1:15010"
    );
    assert_eq!(
        super::client::control_uri("http://127.0.0.1:1"),
        "http://127.0.0.1:1"
    );
}

#[test]
fn text_channels_wake_receivers_only_on_a_change() {
    let tx = super::text_channel();
    let mut rx = tx.subscribe();
    // The control plane resends every field when one changes: equal text must not wake.
    super::replace_if_changed(&tx, "");
    assert!(!rx.has_changed().unwrap());
    super::replace_if_changed(&tx, r#"{"limits":[]}"#);
    assert!(rx.has_changed().unwrap());
    assert_eq!(&**rx.borrow_and_update(), r#"{"limits":[]}"#);
    super::replace_if_changed(&tx, r#"{"limits":[]}"#);
    assert!(!rx.has_changed().unwrap());
}
