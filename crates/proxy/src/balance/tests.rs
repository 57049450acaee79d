use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use trellis_model::Endpoint;
use trellis_model::policy::{HashAlgorithm, HashKey, LoadBalancer, OutlierDetection};

use super::*;

fn ep(port: u16) -> Arc<EndpointState> {
    Arc::new(EndpointState::new(Endpoint {
        address: ([127, 0, 0, 1], port).into(),
        meshed: false,
        identity: None,
        workload: format!("w{port}"),
        labels: Default::default(),
        target_port: port,
        remote: None,
    }))
}

fn eject(e: &EndpointState) {
    e.with_outlier(|o| o.eject(Instant::now(), &OutlierDetection::default()));
}

/// One request a millisecond for two seconds against a 1 ms and a 10 ms endpoint; returns the
/// slow endpoint's share.
async fn simulate(lb: LoadBalancer) -> f64 {
    let (fast, slow) = (ep(1), ep(2));
    let service = |e: &EndpointState| {
        if e.addr().port() == 1 {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(10)
        }
    };
    let b = Balancer::new(&lb, vec![fast.clone(), slow.clone()]);
    let mut pending: Vec<(Instant, endpoint::InFlight)> = Vec::new();
    let mut to_slow = 0;
    let n = 2_000;
    for _ in 0..n {
        let now = Instant::now();
        pending.retain(|(done, guard)| {
            if *done <= now {
                guard.observe();
                false
            } else {
                true
            }
        });
        let chosen = b.pick(None, None).unwrap().clone();
        if chosen.addr().port() == 2 {
            to_slow += 1;
        }
        pending.push((now + service(&chosen), chosen.start()));
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    f64::from(to_slow) / f64::from(n)
}

#[tokio::test(start_paused = true)]
async fn p2c_sends_measurably_less_to_a_slow_endpoint_than_round_robin() {
    let rr = simulate(LoadBalancer::RoundRobin).await;
    let ewma = simulate(LoadBalancer::PeakEwma).await;
    let least = simulate(LoadBalancer::LeastRequest).await;
    println!("slow share: round robin {rr:.3}, peak EWMA {ewma:.3}, least request {least:.3}");
    assert!((rr - 0.5).abs() < 0.01, "round robin {rr}");
    assert!(ewma < 0.1, "peak EWMA {ewma}");
    assert!(least < 0.3, "least request {least}");
}

#[tokio::test(start_paused = true)]
async fn every_kind_skips_ejected_and_excluded_endpoints() {
    let kinds = [
        LoadBalancer::PeakEwma,
        LoadBalancer::LeastRequest,
        LoadBalancer::RoundRobin,
        LoadBalancer::Random,
        LoadBalancer::ConsistentHash {
            key: HashKey::Header("x-user".into()),
            algorithm: HashAlgorithm::Ring,
        },
        LoadBalancer::ConsistentHash {
            key: HashKey::SourceIp,
            algorithm: HashAlgorithm::Maglev,
        },
    ];
    for lb in kinds {
        let eps = vec![ep(1), ep(2), ep(3)];
        eject(&eps[0]);
        let b = Balancer::new(&lb, eps.clone());
        let excluded = eps[1].addr();
        for k in 0..200u64 {
            let key = Some(hash::hash_key(&k.to_be_bytes()));
            let picked = b.pick(key, Some(excluded)).unwrap();
            assert_eq!(picked.addr().port(), 3, "{lb:?}");
        }
        // Only excluded and ejected endpoints left: the exclusion gives way first.
        eject(&eps[2]);
        assert_eq!(
            b.pick(None, Some(excluded)).unwrap().addr().port(),
            2,
            "{lb:?}"
        );
        // Everything ejected: panic mode, anything rather than nothing.
        eject(&eps[1]);
        assert!(b.pick(None, None).is_some(), "{lb:?}");
    }
    assert!(
        Balancer::new(&LoadBalancer::PeakEwma, Vec::new())
            .pick(None, None)
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn consistent_hash_keeps_a_key_on_one_endpoint_while_the_set_is_stable() {
    for algorithm in [HashAlgorithm::Ring, HashAlgorithm::Maglev] {
        let lb = LoadBalancer::ConsistentHash {
            key: HashKey::Header("x-user".into()),
            algorithm,
        };
        let eps: Vec<_> = (1..=5).map(ep).collect();
        let b = Balancer::new(&lb, eps.clone());
        let rebuilt = Balancer::new(&lb, eps.clone());
        let mut homes = std::collections::HashSet::new();
        for k in 0..500u64 {
            let key = Some(hash::hash_key(&k.to_be_bytes()));
            let home = b.pick(key, None).unwrap().addr();
            homes.insert(home);
            for _ in 0..5 {
                assert_eq!(b.pick(key, None).unwrap().addr(), home);
            }
            assert_eq!(rebuilt.pick(key, None).unwrap().addr(), home);
        }
        assert_eq!(homes.len(), 5, "every endpoint is some key's home");
        // In-flight work on the home does not move the key.
        let key = Some(hash::hash_key(b"jason"));
        let home = b.pick(key, None).unwrap().clone();
        let _busy: Vec<_> = (0..10).map(|_| home.start()).collect();
        assert_eq!(b.pick(key, None).unwrap().addr(), home.addr());
    }
}

#[test]
fn round_robin_cycles() {
    let eps = vec![ep(1), ep(2), ep(3)];
    let b = Balancer::new(&LoadBalancer::RoundRobin, eps);
    let ports: Vec<u16> = (0..6)
        .map(|_| b.pick(None, None).unwrap().addr().port())
        .collect();
    assert_eq!(ports, vec![1, 2, 3, 1, 2, 3]);
}

fn remote_ep(port: u16, cluster: &str) -> Arc<EndpointState> {
    Arc::new(EndpointState::new(Endpoint {
        address: ([127, 0, 0, 2], port).into(),
        meshed: true,
        identity: None,
        workload: format!("{cluster}/east-west"),
        labels: Default::default(),
        target_port: port,
        remote: Some(trellis_model::RemoteCluster {
            cluster: cluster.into(),
            sni: "outbound_.80_._.echo.default.svc.cluster.local".into(),
        }),
    }))
}

/// Local endpoints take every request while one is available; the remote one takes them when
/// none is (ejected, or the one a retry excludes), and traffic returns when a local endpoint
/// is back.
#[tokio::test(start_paused = true)]
async fn multicluster_failover_prefers_local_endpoints() {
    for lb in [
        LoadBalancer::PeakEwma,
        LoadBalancer::LeastRequest,
        LoadBalancer::RoundRobin,
        LoadBalancer::Random,
    ] {
        let (a, b, remote) = (ep(1), ep(2), remote_ep(3, "east"));
        let bal = Balancer::new(&lb, vec![remote.clone(), a.clone(), b.clone()]);
        let picks = |exclude: Option<SocketAddr>| {
            (0..200)
                .filter(|_| !bal.pick(None, exclude).unwrap().is_local())
                .count()
        };
        assert_eq!(picks(None), 0, "{lb:?}: all local while local is healthy");
        eject(&a);
        assert_eq!(picks(None), 0, "{lb:?}: one local endpoint left");
        assert_eq!(
            picks(Some(b.addr())),
            200,
            "{lb:?}: a retry off the last local endpoint crosses over"
        );
        eject(&b);
        assert_eq!(picks(None), 200, "{lb:?}: failed over");
        let back = Instant::now() + Duration::from_secs(3600);
        a.with_outlier(|o| o.readmit_if_due(back));
        assert!(a.is_available(), "{lb:?}: re-admitted");
        assert_eq!(picks(None), 0, "{lb:?}: back to local");
    }
    // Only remote endpoints (none here): they are used as any others.
    let only = Balancer::new(&LoadBalancer::RoundRobin, vec![remote_ep(4, "east")]);
    assert!(only.pick(None, None).is_some());
}
