//! Local rate limiting (Trellis `RateLimitPolicy`) on the inbound side: the first limit whose
//! match a request meets takes one token from its bucket, shared by every caller or kept per
//! client identity; an empty bucket answers 429 with `Retry-After` and `x-ratelimit-*`
//! headers.
//!
//! Each bucket is one `AtomicU64` run as GCRA (the token bucket expressed as a "theoretical
//! arrival time"): a check is a load and a compare-exchange, no lock; the installed limits are
//! swapped whole (`ArcSwap`) when the control plane sends new ones, which starts every bucket
//! full again. Per-identity buckets are a fixed table of [`CLIENT_SLOTS`] per limit, indexed by
//! a hash of the caller (its mesh identity over mTLS, else its IP): memory is bounded whatever
//! the number of callers, and two callers share a bucket only when their hashes collide.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use trellis_model::ratelimit::WorkloadRateLimits;

use crate::http::{ProxyBody, error_response};
use crate::tls::PeerIdentity;

/// Buckets per limit with `perClientIdentity`.
pub const CLIENT_SLOTS: usize = 1024;

const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// One GCRA bucket: the theoretical arrival time of the next request, in nanoseconds since the
/// limits were installed (0: full).
#[derive(Debug, Default)]
struct Gcra(AtomicU64);

/// What a check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed { remaining: u32 },
    Limited { retry_after: Duration },
}

impl Gcra {
    /// Takes a token at `now` (ns) from a bucket with emission interval `t` and burst
    /// tolerance `tau` (both ns).
    fn take(&self, now: u64, t: u64, tau: u64) -> Decision {
        let mut tat = self.0.load(Relaxed);
        loop {
            let start = tat.max(now);
            let ahead = start - now;
            if ahead > tau {
                return Decision::Limited {
                    retry_after: Duration::from_nanos(ahead - tau),
                };
            }
            let next = start.saturating_add(t);
            match self.0.compare_exchange_weak(tat, next, Relaxed, Relaxed) {
                Ok(_) => {
                    let left = (tau + t).saturating_sub(next - now) / t;
                    return Decision::Allowed {
                        remaining: u32::try_from(left).unwrap_or(u32::MAX),
                    };
                }
                Err(current) => tat = current,
            }
        }
    }
}

/// One installed limit with its buckets.
#[derive(Debug)]
struct Limit {
    interval: u64,
    tau: u64,
    buckets: Box<[Gcra]>,
}

#[derive(Debug)]
struct Installed {
    limits: WorkloadRateLimits,
    state: Vec<Limit>,
    epoch: Instant,
}

impl Installed {
    fn new(limits: WorkloadRateLimits) -> Self {
        let state = limits
            .limits
            .iter()
            .map(|spec| {
                let interval = spec.bucket.emission_interval_nanos();
                let slots = if spec.per_client_identity {
                    CLIENT_SLOTS
                } else {
                    1
                };
                Limit {
                    interval,
                    tau: interval.saturating_mul(u64::from(spec.bucket.max_tokens.max(1) - 1)),
                    buckets: (0..slots).map(|_| Gcra::default()).collect(),
                }
            })
            .collect();
        Self {
            limits,
            state,
            epoch: Instant::now(),
        }
    }
}

/// The rate limits in force for this workload's inbound side; one per proxy.
#[derive(Debug)]
pub struct RateLimiter {
    installed: ArcSwap<Installed>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self {
            installed: ArcSwap::from_pointee(Installed::new(WorkloadRateLimits::default())),
        }
    }
}

impl RateLimiter {
    /// Replaces the limits (buckets start full).
    pub fn install(&self, limits: WorkloadRateLimits) {
        self.installed.store(Arc::new(Installed::new(limits)));
    }

    pub fn limits(&self) -> WorkloadRateLimits {
        self.installed.load().limits.clone()
    }

    /// Checks one request from `client` (identity or address); `None` when no limit counts it.
    pub fn decide(&self, method: &str, path: &str, client: &str) -> Option<(Decision, u32)> {
        decide_in(&self.installed.load(), method, path, client)
    }

    /// Checks an inbound request; `Some` is the 429 to answer with.
    pub fn check<B>(
        &self,
        req: &Request<B>,
        peer: Option<SocketAddr>,
    ) -> Option<Response<ProxyBody>> {
        let installed = self.installed.load();
        // Cheap exit while no policy covers the workload (the common case).
        if installed.state.is_empty() {
            return None;
        }
        // Borrowed, and hashed only when the matched limit keeps per-client buckets.
        let client = match req.extensions().get::<PeerIdentity>() {
            Some(id) => Client::Identity(&id.0),
            None => Client::Ip(peer.map(|p| p.ip())),
        };
        let (decision, max) =
            decide_in(&installed, req.method().as_str(), req.uri().path(), client)?;
        let Decision::Limited { retry_after } = decision else {
            return None;
        };
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let mut resp = error_response(StatusCode::TOO_MANY_REQUESTS, "local rate limited");
        let h = resp.headers_mut();
        h.insert(RETRY_AFTER, HeaderValue::from(secs));
        h.insert(LIMIT, HeaderValue::from(max));
        h.insert(REMAINING, HeaderValue::from(0));
        h.insert(RESET, HeaderValue::from(secs));
        Some(resp)
    }
}

/// Who a per-client bucket is kept for: the mesh identity over mTLS, else the peer's IP.
#[derive(Hash)]
enum Client<'a> {
    Identity(&'a str),
    Ip(Option<IpAddr>),
}

/// One check against the limits of one snapshot.
fn decide_in(
    installed: &Installed,
    method: &str,
    path: &str,
    client: impl Hash,
) -> Option<(Decision, u32)> {
    let (i, spec) = installed.limits.find(method, path)?;
    let limit = &installed.state[i];
    let slot = if limit.buckets.len() > 1 {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(client);
        (hash % limit.buckets.len() as u64) as usize
    } else {
        0
    };
    let now = u64::try_from(installed.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let decision = limit.buckets[slot].take(now, limit.interval, limit.tau);
    Some((decision, spec.bucket.max_tokens))
}

/// Installs every rate-limit JSON the control plane sends until `stop`; an undecodable one
/// keeps the last good limits.
pub async fn follow(
    mut json_rx: tokio::sync::watch::Receiver<Arc<str>>,
    limiter: Arc<RateLimiter>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let json = json_rx.borrow_and_update().clone();
        match decode(&json) {
            Ok(limits) => {
                tracing::info!(limits = limits.limits.len(), "inbound rate limits");
                limiter.install(limits);
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable rate limits; keeping the last good ones");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = json_rx.changed() => if changed.is_err() { return },
        }
    }
}

/// The wire JSON; empty is "no limits".
pub fn decode(json: &str) -> Result<WorkloadRateLimits, serde_json::Error> {
    if json.trim().is_empty() {
        return Ok(WorkloadRateLimits::default());
    }
    serde_json::from_str(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_model::matching::PathMatch;
    use trellis_model::ratelimit::{RateLimit, TokenBucket};

    fn limits(per_client: bool) -> WorkloadRateLimits {
        WorkloadRateLimits {
            limits: vec![RateLimit {
                policy: "default/p".into(),
                name: "api".into(),
                path: Some(PathMatch::Prefix("/api".into())),
                method: None,
                bucket: TokenBucket {
                    max_tokens: 3,
                    tokens_per_fill: 1,
                    fill_interval_ms: 100,
                },
                per_client_identity: per_client,
            }],
        }
    }

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let g = Gcra::default();
        let (t, tau) = (100, 200);
        for left in [2, 1, 0] {
            assert_eq!(g.take(0, t, tau), Decision::Allowed { remaining: left });
        }
        assert_eq!(
            g.take(0, t, tau),
            Decision::Limited {
                retry_after: Duration::from_nanos(100)
            }
        );
        assert!(matches!(g.take(50, t, tau), Decision::Limited { .. }));
        assert!(matches!(g.take(100, t, tau), Decision::Allowed { .. }));
        assert!(matches!(g.take(100, t, tau), Decision::Limited { .. }));
        // Idle long enough, the bucket is full again (and no fuller).
        for _ in 0..3 {
            assert!(matches!(g.take(10_000, t, tau), Decision::Allowed { .. }));
        }
        assert!(matches!(g.take(10_000, t, tau), Decision::Limited { .. }));
    }

    #[test]
    fn shared_and_per_client_buckets() {
        let shared = RateLimiter::default();
        assert!(shared.decide("GET", "/api", "a").is_none(), "no limits yet");
        shared.install(limits(false));
        for _ in 0..3 {
            assert!(matches!(
                shared.decide("GET", "/api/x", "a"),
                Some((Decision::Allowed { .. }, 3))
            ));
        }
        assert!(matches!(
            shared.decide("GET", "/api/x", "b"),
            Some((Decision::Limited { .. }, 3))
        ));
        assert!(
            shared.decide("GET", "/other", "a").is_none(),
            "unmatched paths are free"
        );

        let per = RateLimiter::default();
        per.install(limits(true));
        for _ in 0..3 {
            assert!(matches!(
                per.decide("GET", "/api", "spiffe://t/ns/a/sa/a"),
                Some((Decision::Allowed { .. }, _))
            ));
        }
        assert!(matches!(
            per.decide("GET", "/api", "spiffe://t/ns/a/sa/a"),
            Some((Decision::Limited { .. }, _))
        ));
        assert!(matches!(
            per.decide("GET", "/api", "spiffe://t/ns/b/sa/b"),
            Some((Decision::Allowed { .. }, _))
        ));
    }

    #[test]
    fn a_limited_request_gets_429_with_headers() {
        let l = RateLimiter::default();
        l.install(limits(false));
        let req = || Request::get("/api").body(()).unwrap();
        for _ in 0..3 {
            assert!(l.check(&req(), None).is_none());
        }
        let resp = l.check(&req(), None).expect("limited");
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(resp.headers()["x-ratelimit-limit"], "3");
        assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
        assert_eq!(resp.headers()["trellis-error"], "local rate limited");
        assert!(decode("{not json").is_err());
        assert_eq!(decode("").unwrap(), WorkloadRateLimits::default());
    }

    #[test]
    fn check_keeps_a_bucket_per_identity_or_address() {
        let l = RateLimiter::default();
        l.install(limits(true));
        let from = |id: Option<&str>| {
            let mut req = Request::get("/api").body(()).unwrap();
            if let Some(id) = id {
                req.extensions_mut().insert(PeerIdentity(Arc::from(id)));
            }
            req
        };
        let a: SocketAddr = "127.0.0.2:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:1000".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(&from(None), Some(a)).is_none());
        }
        assert!(
            l.check(&from(None), Some(a)).is_some(),
            "a's bucket is empty"
        );
        assert!(l.check(&from(None), Some(b)).is_none(), "b has its own");
        let id = Some("spiffe://t/ns/a/sa/a");
        for _ in 0..3 {
            assert!(
                l.check(&from(id), Some(a)).is_none(),
                "an identity has its own"
            );
        }
        assert!(
            l.check(&from(id), Some(b)).is_some(),
            "whatever its address"
        );
    }
}
