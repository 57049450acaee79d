//! Active health checks (the `trellis.io/health-check` annotation, carried in a backend's
//! `TrafficPolicy::health_check`): each endpoint of the backend gets an HTTP/1.1 `GET path`
//! every `interval` (jittered by ±10% so many proxies do not probe in step); a 2xx or 3xx
//! answer within `timeout` passes. After `unhealthy_threshold` failures in a row the endpoint
//! is taken out of the balancer ([`EndpointState::is_available`]); after `healthy_threshold`
//! passes in a row it is back. New endpoints start healthy, so a config push never empties a
//! backend before its first probe; when every endpoint is unhealthy the balancer still picks
//! one (its panic mode).
//!
//! A probe to a meshed endpoint goes to the peer proxy's inbound listener with the
//! `trellis-target-port` header, so it reaches the application as a kubelet probe would; over
//! mesh mTLS (ALPN `http/1.1`, the peer must prove the endpoint's identity) when this proxy has
//! a certificate and the backend's policy does not disable mTLS, as its requests do, so a STRICT
//! peer accepts it.
//!
//! One task per backend with a health check, holding only a weak reference to its
//! [`Checker`]: when the plans using the backend are gone, the task clears the flags it set
//! and ends. Bounded: one round probes at most [`MAX_PER_ROUND`] endpoints, concurrently, each
//! within `timeout`. Counted in `trellis_health_check_total{result}`,
//! `trellis_health_check_unhealthy_endpoints` and, per checked endpoint,
//! `trellis_health_check_endpoint_healthy{backend,endpoint}` (process-wide, rendered by the
//! admin server; the endpoints are discovery's, so the series are bounded by the mesh).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use trellis_identity::tls::MeshAlpn;
use trellis_model::policy::HealthCheck;

use crate::balance::EndpointState;
use crate::http::TARGET_PORT;
use crate::telemetry::{family, sample};
use crate::tls::MeshIdentity;

/// The proxy's mesh identity, for probes over mTLS. One proxy per process; set at startup.
static IDENTITY: OnceLock<Arc<MeshIdentity>> = OnceLock::new();

/// Lets probes to meshed endpoints use `identity` (the proxy's, as its requests do).
pub fn use_identity(identity: Arc<MeshIdentity>) {
    let _ = IDENTITY.set(identity);
}

/// Endpoints probed per round at most; a larger backend is probed in part (the first ones).
pub const MAX_PER_ROUND: usize = 256;

static SUCCESSES: AtomicU64 = AtomicU64::new(0);
static FAILURES: AtomicU64 = AtomicU64::new(0);
static UNHEALTHY: AtomicI64 = AtomicI64::new(0);

/// Live checkers, for the per-endpoint gauge; dead entries are pruned when rendering.
static CHECKERS: std::sync::Mutex<Vec<Weak<Checker>>> = std::sync::Mutex::new(Vec::new());

fn checkers() -> std::sync::MutexGuard<'static, Vec<Weak<Checker>>> {
    // A list of weak pointers cannot be left torn by a panic.
    CHECKERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The health metrics, in Prometheus text format.
pub fn render(out: &mut String) {
    let _ = family(
        out,
        "trellis_health_check_total",
        "counter",
        "Active health-check probes by result.",
    );
    for (result, n) in [("success", &SUCCESSES), ("failure", &FAILURES)] {
        let _ = writeln!(
            out,
            "trellis_health_check_total{{result=\"{result}\"}} {}",
            n.load(Relaxed)
        );
    }
    let name = "trellis_health_check_unhealthy_endpoints";
    let help = "Endpoints active health checks have taken out of their balancer.";
    let _ = family(out, name, "gauge", help);
    let _ = sample(out, name, "", UNHEALTHY.load(Relaxed).max(0));
    let live: Vec<Arc<Checker>> = {
        let mut list = checkers();
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    };
    let _ = family(
        out,
        "trellis_health_check_endpoint_healthy",
        "gauge",
        "1 while an actively checked endpoint is in its balancer, 0 while health checks keep it out.",
    );
    for c in live {
        for e in c.endpoints.load().iter().take(MAX_PER_ROUND) {
            let _ = writeln!(
                out,
                "trellis_health_check_endpoint_healthy{{backend=\"{}\",endpoint=\"{}\"}} {}",
                c.host,
                e.addr(),
                u8::from(!e.is_unhealthy())
            );
        }
    }
}

/// Consecutive results of one endpoint and whether this checker took it out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streak {
    fails: u32,
    passes: u32,
    pub unhealthy: bool,
}

impl Streak {
    /// Records a probe; returns the new state when it flips.
    pub fn record(&mut self, ok: bool, config: &HealthCheck) -> Option<bool> {
        if ok {
            self.fails = 0;
            self.passes = self.passes.saturating_add(1);
            if self.unhealthy && self.passes >= config.healthy_threshold.max(1) {
                self.unhealthy = false;
                return Some(false);
            }
        } else {
            self.passes = 0;
            self.fails = self.fails.saturating_add(1);
            if !self.unhealthy && self.fails >= config.unhealthy_threshold.max(1) {
                self.unhealthy = true;
                return Some(true);
            }
        }
        None
    }
}

/// The health checking of one backend.
#[derive(Debug)]
pub struct Checker {
    config: HealthCheck,
    /// The Host header of probes: the backend's authority.
    host: String,
    /// The backend's policy disables mesh mTLS (DestinationRule `tls.mode: DISABLE`).
    plaintext: bool,
    endpoints: ArcSwap<Vec<Arc<EndpointState>>>,
}

impl Checker {
    /// Starts checking `endpoints`; without a tokio runtime (a plan built in a plain unit
    /// test) nothing is probed.
    pub fn start(
        config: HealthCheck,
        authority: &str,
        plaintext: bool,
        endpoints: Vec<Arc<EndpointState>>,
    ) -> Arc<Self> {
        // "reviews.default.svc.cluster.local:9080 (v1)" → the authority without the subset.
        let host = authority.split(' ').next().unwrap_or_default().to_owned();
        let checker = Arc::new(Self {
            config,
            host,
            plaintext,
            endpoints: ArcSwap::from_pointee(endpoints),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(run(Arc::downgrade(&checker)));
        }
        checkers().push(Arc::downgrade(&checker));
        checker
    }

    pub fn config(&self) -> &HealthCheck {
        &self.config
    }

    /// Whether this checker probes as a backend with `config` and `plaintext` wants.
    pub fn fits(&self, config: &HealthCheck, plaintext: bool) -> bool {
        self.config == *config && self.plaintext == plaintext
    }

    /// A new endpoint set (a destination update); health state stays with each address.
    pub fn set_endpoints(&self, endpoints: Vec<Arc<EndpointState>>) {
        self.endpoints.store(Arc::new(endpoints));
    }
}

/// `interval` ±10%.
fn jittered(interval: Duration) -> Duration {
    let unit = crate::split::next_u64() as f64 / u64::MAX as f64;
    interval.mul_f64(0.9 + 0.2 * unit)
}

async fn run(checker: Weak<Checker>) {
    let mut streaks: HashMap<SocketAddr, (Arc<EndpointState>, Streak)> = HashMap::new();
    while let Some(interval) = checker.upgrade().map(|c| c.config.interval) {
        tokio::time::sleep(jittered(interval)).await;
        let Some(c) = checker.upgrade() else {
            break;
        };
        let endpoints = c.endpoints.load_full();
        let config = c.config.clone();
        let host = c.host.clone();
        let plaintext = c.plaintext;
        drop(c);
        // Endpoints that left the backend: forget them (and give back the flag we set).
        streaks.retain(|addr, (state, streak)| {
            let kept = endpoints.iter().any(|e| e.addr() == *addr);
            if !kept && streak.unhealthy {
                state.set_unhealthy(false);
                UNHEALTHY.fetch_sub(1, Relaxed);
            }
            kept
        });
        let mut probes = JoinSet::new();
        for e in endpoints.iter().take(MAX_PER_ROUND) {
            let e = e.clone();
            let (path, host, timeout) = (config.path.clone(), host.clone(), config.timeout);
            probes.spawn(async move {
                let ok = probe(&e, &host, &path, timeout, plaintext).await;
                (e, ok)
            });
        }
        while let Some(joined) = probes.join_next().await {
            let Ok((e, ok)) = joined else { continue };
            if ok { &SUCCESSES } else { &FAILURES }.fetch_add(1, Relaxed);
            let (_, streak) = streaks
                .entry(e.addr())
                .or_insert_with(|| (e.clone(), Streak::default()));
            match streak.record(ok, &config) {
                Some(true) => {
                    UNHEALTHY.fetch_add(1, Relaxed);
                    tracing::warn!(backend = %host, endpoint = %e.addr(), path = %config.path, "health check failed: endpoint taken out of the balancer");
                }
                Some(false) => {
                    UNHEALTHY.fetch_sub(1, Relaxed);
                    tracing::info!(backend = %host, endpoint = %e.addr(), "health check passed: endpoint back in the balancer");
                }
                None => {}
            }
            // Stored every round, not only on a flip: another checker of the same address (an
            // old config's, ending) may have cleared it.
            e.set_unhealthy(streak.unhealthy);
        }
    }
    for (state, streak) in streaks.values() {
        if streak.unhealthy {
            state.set_unhealthy(false);
            UNHEALTHY.fetch_sub(1, Relaxed);
        }
    }
}

/// One probe: `GET path` with `Host: host`, a fresh connection, answered 2xx/3xx in time.
async fn probe(
    e: &EndpointState,
    host: &str,
    path: &str,
    timeout: Duration,
    plaintext: bool,
) -> bool {
    let endpoint = e.endpoint();
    // mTLS exactly when a request would use it: a meshed peer with an identity, a certificate
    // in hand, and no DISABLE policy.
    let mtls = IDENTITY.get().filter(|id| !plaintext && id.is_certified());
    let attempt = async {
        let stream = TcpStream::connect(endpoint.address).await.ok()?;
        match (endpoint.meshed, endpoint.identity.as_deref(), mtls) {
            (true, Some(peer), Some(identity)) => {
                let tls = identity
                    .connect(stream, MeshAlpn::Http1, peer)
                    .await?
                    .ok()?;
                get(tls, endpoint, host, path, timeout).await
            }
            _ => get(stream, endpoint, host, path, timeout).await,
        }
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// The probe's request on an established connection.
async fn get<IO>(
    io: IO,
    endpoint: &trellis_model::Endpoint,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Option<bool>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
                .await
                .ok()?;
        // Bounded like the probe: a peer that never closes cannot keep the task.
        tokio::spawn(tokio::time::timeout(timeout, conn));
        let mut req = Request::get(path)
            .header(header::HOST, host)
            .header(header::USER_AGENT, "trellis-health-check")
            .header(header::CONNECTION, "close")
            .body(Empty::new())
            .ok()?;
        if endpoint.meshed {
            req.headers_mut()
                .insert(TARGET_PORT, HeaderValue::from(endpoint.target_port));
        }
        let resp = sender.send_request(req).await.ok()?;
        Some((200..400).contains(&resp.status().as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HealthCheck {
        HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(100),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }

    #[test]
    fn thresholds_and_streaks() {
        let c = config();
        let mut s = Streak::default();
        // (probe result, expected flip)
        let table = [
            (false, None),
            (false, None),
            (true, None), // a pass resets the failure streak
            (false, None),
            (false, None),
            (false, Some(true)), // third failure in a row: out
            (false, None),
            (true, None),
            (false, None), // a failure resets the pass streak
            (true, None),
            (true, Some(false)), // second pass in a row: back
            (true, None),
        ];
        for (i, (ok, flip)) in table.into_iter().enumerate() {
            assert_eq!(s.record(ok, &c), flip, "probe {i}");
        }
        assert!(!s.unhealthy);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
    }
}
