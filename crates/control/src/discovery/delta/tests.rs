use std::collections::BTreeMap;

use trellis_model::{AppProtocol, ServiceKey};

use super::*;

fn endpoint(i: u16) -> Endpoint {
    Endpoint {
        address: SocketAddr::from(([127, 0, 0, 1], 20000 + i)),
        meshed: true,
        identity: Some("spiffe://cluster.local/ns/default/sa/reviews".into()),
        workload: format!("reviews-{i:03}"),
        labels: BTreeMap::from([("app".to_string(), "reviews".to_string())]),
        target_port: 9080,
        remote: None,
    }
}

fn destination(endpoints: impl IntoIterator<Item = Endpoint>) -> Destination {
    Destination {
        authority: "reviews.default.svc.cluster.local:9080".into(),
        service: ServiceKey::new("default", "reviews"),
        port: 9080,
        protocol: AppProtocol::Http,
        endpoints: endpoints.into_iter().collect(),
        ..Default::default()
    }
}

fn range(r: std::ops::Range<u16>) -> Destination {
    destination(r.map(endpoint))
}

/// The proxy's rule (proto: remove, then insert at each index in order), to check that a
/// delta rebuilds the new list exactly.
fn apply(before: &Destination, changes: &Changes<'_>) -> Vec<Endpoint> {
    let mut list: Vec<Endpoint> = before
        .endpoints
        .iter()
        .filter(|e| !changes.removed.contains(&e.address))
        .cloned()
        .collect();
    for (i, e) in &changes.added {
        list.insert(*i, (*e).clone());
    }
    list
}

fn compiled(d: Destination) -> Arc<Compiled> {
    Arc::new(Compiled::new(Some(d)))
}

#[test]
fn an_endpoint_joining_or_leaving_is_a_delta_that_rebuilds_the_list() {
    let before = range(0..5);
    // Joins in the middle (compile sorts by workload name), leaves from the middle.
    let mut joined = before.clone();
    joined.endpoints.insert(2, endpoint(77));
    let changes = endpoint_changes(&before, &joined).unwrap();
    assert_eq!(changes.removed, []);
    assert_eq!(changes.added, [(2, &joined.endpoints[2])]);
    assert_eq!(apply(&before, &changes), joined.endpoints);

    let mut left = before.clone();
    left.endpoints.remove(3);
    let changes = endpoint_changes(&before, &left).unwrap();
    assert_eq!(changes.removed, [endpoint(3).address]);
    assert!(changes.added.is_empty());
    assert_eq!(apply(&before, &changes), left.endpoints);

    // Several at once, and one whose labels changed: removed and added again.
    let mut mixed = before.clone();
    mixed.endpoints.remove(0);
    mixed.endpoints[1]
        .labels
        .insert("version".into(), "v2".into());
    mixed.endpoints.push(endpoint(9));
    let changes = endpoint_changes(&before, &mixed).unwrap();
    assert_eq!(changes.removed, [endpoint(0).address, endpoint(2).address]);
    assert_eq!(
        changes.added.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [1, 4]
    );
    assert_eq!(apply(&before, &changes), mixed.endpoints);

    // From and to no endpoints.
    let empty = range(0..0);
    assert_eq!(
        apply(&empty, &endpoint_changes(&empty, &before).unwrap()),
        before.endpoints
    );
    assert!(apply(&before, &endpoint_changes(&before, &empty).unwrap()).is_empty());
}

#[test]
fn anything_but_endpoints_or_a_reorder_or_shared_addresses_is_full() {
    let before = range(0..5);
    let mut other = before.clone();
    other.protocol = AppProtocol::Grpc;
    other.endpoints.push(endpoint(9));
    assert_eq!(
        endpoint_changes(&before, &other),
        None,
        "protocol changed too"
    );
    let mut other = before.clone();
    other.authority = "reviews.default.svc.cluster.local:9081".into();
    assert_eq!(endpoint_changes(&before, &other), None);

    let mut reordered = before.clone();
    reordered.endpoints.swap(0, 4);
    assert_eq!(endpoint_changes(&before, &reordered), None);

    // Two remote endpoints behind one gateway share its address: no key to remove by.
    let mut shared = before.clone();
    let mut twin = endpoint(8);
    twin.address = shared.endpoints[0].address;
    shared.endpoints.push(twin);
    assert_eq!(endpoint_changes(&before, &shared), None);
    assert_eq!(endpoint_changes(&shared, &before), None);
}

#[test]
fn a_delta_only_when_it_is_smaller_than_the_destination() {
    let before = compiled(range(0..50));
    let mut joined = range(0..50);
    joined.endpoints.push(endpoint(50));
    let joined = compiled(joined);
    let Plan::Delta(delta) = plan(&before, &joined) else {
        panic!("one endpoint joining 50 must be a delta");
    };
    assert_eq!((delta.removed.len(), delta.added.len()), (0, 1));
    assert_eq!(delta.added[0].index, 50);
    let full = joined.wire().unwrap().encoded_len();
    assert!(
        delta.encoded_len() * 10 < full,
        "delta {} bytes against {full}",
        delta.encoded_len()
    );

    // Every endpoint replaced: removing 50 and adding 50 is bigger than sending 50.
    let replaced = compiled(range(100..150));
    assert_eq!(plan(&before, &replaced), Plan::Full);
    // Nothing there before or after.
    let nothing = Arc::new(Compiled::new(None));
    assert_eq!(plan(&nothing, &joined), Plan::Full);
    assert_eq!(plan(&before, &nothing), Plan::Full);
}

#[test]
fn a_pair_is_planned_once_for_every_stream() {
    let (a, b) = (compiled(range(0..20)), compiled(range(0..21)));
    let first = shared_plan(&a, &b);
    let second = shared_plan(&a, &b);
    assert!(Arc::ptr_eq(&first, &second));
    assert!(matches!(*first, Plan::Delta(_)));
    // The reverse pair is another plan.
    assert!(!Arc::ptr_eq(&first, &shared_plan(&b, &a)));
}

#[test]
fn a_stream_sends_deltas_only_when_negotiated_and_resends_a_nacked_one_whole() {
    let metrics = Metrics::default();
    let target: Target = "reviews.default:9080".parse().unwrap();
    let v1 = compiled(range(0..10));
    let v2 = compiled(range(0..11));
    let v3 = compiled(range(1..11));

    // A proxy that did not ask gets whole destinations.
    let mut old = StreamDeltas::default();
    assert!(old.features().is_empty());
    old.update(1, &target, None, &v1, &metrics);
    let u = old.update(2, &target, Some(&v1), &v2, &metrics);
    assert!(u.endpoint_delta.is_none() && u.destination.is_some());

    let mut s = StreamDeltas::default();
    s.enable(true);
    assert_eq!(s.features(), [pb::Feature::EndpointDelta as i32]);
    // The first value for a target is always whole.
    let u = s.update(3, &target, None, &v1, &metrics);
    assert!(u.destination.is_some() && u.endpoint_delta.is_none());
    let u = s.update(4, &target, Some(&v1), &v2, &metrics);
    assert!(u.destination.is_none());
    let delta = u.endpoint_delta.unwrap();
    assert_eq!((delta.base_version, delta.added.len()), (3, 1));
    let u = s.update(5, &target, Some(&v2), &v3, &metrics);
    let delta = u.endpoint_delta.unwrap();
    assert_eq!(delta.base_version, 4, "based on the delta before");
    assert_eq!(delta.removed, ["127.0.0.1:20000"]);
    assert!(
        metrics
            .render(&Default::default(), 0)
            .contains("trellis_control_endpoint_deltas_total 2\n")
    );

    // A Nacked delta names its target, once; a Nacked whole destination names none.
    assert_eq!(s.nacked(4), Some(target.clone()));
    assert_eq!(s.nacked(4), None);
    assert_eq!(s.nacked(3), None);
    // Unsubscribed: the next value is whole again, and its Nacks are forgotten.
    s.forget(&target);
    assert_eq!(s.nacked(5), None);
    let u = s.update(6, &target, Some(&v3), &v2, &metrics);
    assert!(u.endpoint_delta.is_none() && u.destination.is_some());
}
