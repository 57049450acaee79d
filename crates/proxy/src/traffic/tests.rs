use std::sync::Arc;
use std::time::Duration;

use trellis_model::policy::{OutlierDetection, RetryBudget, TrafficPolicy};
use trellis_model::route::{BackendRef, HeaderModifier, ResourceRef, TcpRoute, WeightedBackend};
use trellis_model::{AppProtocol, Backend, Destination, Endpoint, ServiceKey};

use super::*;

fn ep(port: u16) -> Endpoint {
    Endpoint {
        address: ([127, 0, 0, 1], port).into(),
        meshed: false,
        identity: None,
        workload: format!("w{port}"),
        labels: Default::default(),
        target_port: port,
        remote: None,
    }
}

fn subset(name: &str) -> BackendRef {
    BackendRef {
        service: ServiceKey::new("default", "db"),
        port: None,
        subset: Some(name.into()),
    }
}

fn dest(policy: TrafficPolicy) -> Destination {
    Destination {
        authority: "db.default.svc.cluster.local:5432".into(),
        service: ServiceKey::new("default", "db"),
        port: 5432,
        protocol: AppProtocol::Tcp,
        endpoints: vec![ep(1), ep(2), ep(3)],
        policy,
        backends: vec![
            Backend {
                backend: subset("primary"),
                authority: "db primary".into(),
                endpoints: vec![ep(1)],
                policy: TrafficPolicy::default(),
            },
            Backend {
                backend: subset("replica"),
                authority: "db replica".into(),
                endpoints: vec![ep(2), ep(3)],
                policy: TrafficPolicy::default(),
            },
        ],
        ..Destination::default()
    }
}

fn weighted(backend: BackendRef, weight: u32) -> WeightedBackend {
    WeightedBackend {
        backend,
        weight,
        request_headers: HeaderModifier::default(),
        response_headers: HeaderModifier::default(),
    }
}

#[test]
fn tcp_routes_split_per_connection() {
    let mut d = dest(TrafficPolicy::default());
    d.tcp_routes = vec![TcpRoute {
        name: "db-split".into(),
        source: ResourceRef::default(),
        port: Some(5432),
        sni_hosts: Vec::new(),
        backends: vec![
            weighted(subset("primary"), 80),
            weighted(subset("replica"), 20),
        ],
    }];
    let plan = Plan::build(Arc::new(d), None);
    let n = 10_000;
    let primary = (0..n)
        .filter(|_| plan.tcp_backend(5432).unwrap().backend == subset("primary"))
        .count();
    let share = primary as f64 / n as f64;
    assert!((0.78..=0.82).contains(&share), "primary share {share}");
    // Another port has no TCP route: the service's own endpoints.
    assert_eq!(
        plan.tcp_backend(9999).unwrap().balancer.endpoints().len(),
        3
    );
}

#[test]
fn an_address_in_several_backends_has_one_live_state() {
    let mut d = dest(TrafficPolicy::default());
    d.tcp_routes = vec![TcpRoute {
        name: "split".into(),
        source: ResourceRef::default(),
        port: None,
        sni_hosts: Vec::new(),
        backends: vec![
            weighted(subset("primary"), 1),
            weighted(subset("replica"), 1),
        ],
    }];
    let plan = Plan::build(Arc::new(d), None);
    let own = &plan.own.balancer.endpoints()[0];
    let primary = &plan.tcp_routes[0][0].as_ref().unwrap().balancer.endpoints()[0];
    assert_eq!(own.addr(), primary.addr());
    let _busy = primary.start();
    assert_eq!(own.in_flight(), 1);
}

#[test]
fn unknown_backends_resolve_to_none() {
    let mut d = dest(TrafficPolicy::default());
    d.tcp_routes = vec![TcpRoute {
        name: "gone".into(),
        source: ResourceRef::default(),
        port: None,
        sni_hosts: Vec::new(),
        backends: vec![weighted(subset("missing"), 1)],
    }];
    let plan = Plan::build(Arc::new(d), None);
    assert!(plan.tcp_backend(5432).is_none());
}

#[test]
fn budgets_survive_updates_while_their_config_is_unchanged() {
    let traffic = TargetTraffic::default();
    let policy = TrafficPolicy {
        retry_budget: RetryBudget {
            ratio: 0.0,
            min_per_second: 1,
            ttl: Duration::from_secs(2),
        },
        ..TrafficPolicy::default()
    };
    let first = traffic.plan(&Arc::new(dest(policy.clone())));
    assert!(first.own.try_retry());
    assert!(first.own.try_retry());
    assert!(!first.own.try_retry());
    let second = traffic.plan(&Arc::new(dest(policy.clone())));
    assert!(!second.own.try_retry(), "the spent budget carried over");
    let mut changed = policy;
    changed.retry_budget.min_per_second = 5;
    let third = traffic.plan(&Arc::new(dest(changed)));
    assert!(third.own.try_retry(), "a new budget config starts afresh");
}

#[tokio::test(start_paused = true)]
async fn ejection_timeline() {
    let config = OutlierDetection {
        consecutive_5xx: Some(2),
        consecutive_gateway_errors: None,
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(10),
        max_ejection_percent: 50,
    };
    let policy = TrafficPolicy {
        outlier_detection: Some(config),
        ..TrafficPolicy::default()
    };
    let plan = Plan::build(Arc::new(dest(policy)), None);
    let own = &plan.own;
    let eps = own.balancer.endpoints();
    // Two 5xx in a row eject endpoint 0 (50% of 3 allows one).
    assert!(!own.record(&eps[0], Outcome::ServerError));
    assert!(own.record(&eps[0], Outcome::GatewayError));
    assert!(eps[0].is_ejected());
    // A second failing endpoint is not ejected: the cap holds.
    own.record(&eps[1], Outcome::ServerError);
    assert!(!own.record(&eps[1], Outcome::ServerError));
    assert!(!eps[1].is_ejected());
    // Still out just before its 10 s are up, back at the first sweep after.
    tokio::time::advance(Duration::from_millis(9_900)).await;
    own.sweep();
    assert!(eps[0].is_ejected());
    tokio::time::advance(Duration::from_millis(200)).await;
    own.sweep();
    assert!(eps[0].is_ejected(), "sweeps run once per interval");
    tokio::time::advance(Duration::from_secs(1)).await;
    own.sweep();
    assert!(!eps[0].is_ejected());
    // Failing again: ejected for twice as long.
    own.record(&eps[0], Outcome::ServerError);
    assert!(own.record(&eps[0], Outcome::ServerError));
    tokio::time::advance(Duration::from_secs(15)).await;
    own.sweep();
    assert!(eps[0].is_ejected());
    tokio::time::advance(Duration::from_secs(6)).await;
    own.sweep();
    assert!(!eps[0].is_ejected());
}
