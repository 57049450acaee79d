//! Local rate limits (Trellis `RateLimitPolicy`, trellis.io/v1alpha1) as one workload's inbound
//! proxy enforces them: a list of limits, the first whose match a request meets applies, each
//! a token bucket, shared by all callers or kept per client identity.
//!
//! The control plane resolves the policies covering a workload into [`WorkloadRateLimits`] and
//! sends it as JSON on the discovery stream (`InboundPolicy.rate_limits_json`).

use serde::{Deserialize, Serialize};

use crate::matching::PathMatch;

/// Every limit covering one workload, in the order they are tried.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadRateLimits {
    #[serde(default)]
    pub limits: Vec<RateLimit>,
}

/// One limit: which requests it counts and how many it lets through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    /// The policy it came from, `namespace/name`.
    pub policy: String,
    /// The limit's name within its policy (`limits[].name`, or its index).
    pub name: String,
    /// Only requests whose path matches; `None`: every path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Only requests of this (uppercase) method; `None`: every method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub bucket: TokenBucket,
    /// One bucket per calling identity (the peer's SPIFFE ID over mesh mTLS, else its IP)
    /// instead of one shared by all callers.
    #[serde(default)]
    pub per_client_identity: bool,
}

/// A token bucket: holds at most `max_tokens`, gains `tokens_per_fill` every `fill_interval_ms`
/// (continuously, not in steps); each request takes one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval_ms: u64,
}

impl TokenBucket {
    /// Nanoseconds between two tokens (at least 1).
    pub fn emission_interval_nanos(&self) -> u64 {
        let interval = u128::from(self.fill_interval_ms) * 1_000_000;
        let per = u128::from(self.tokens_per_fill.max(1));
        u64::try_from(interval / per).unwrap_or(u64::MAX).max(1)
    }

    /// The sustained rate, requests per second (for display).
    pub fn per_second(&self) -> f64 {
        1e9 / self.emission_interval_nanos() as f64
    }
}

impl RateLimit {
    /// Whether a request with `method` and `path` is counted by this limit.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self.path.as_ref().is_none_or(|p| p.matches(path))
    }
}

impl WorkloadRateLimits {
    /// The first limit that counts this request.
    pub fn find(&self, method: &str, path: &str) -> Option<(usize, &RateLimit)> {
        self.limits
            .iter()
            .enumerate()
            .find(|(_, l)| l.matches(method, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(path: Option<PathMatch>, method: Option<&str>) -> RateLimit {
        RateLimit {
            policy: "default/p".into(),
            name: "l".into(),
            path,
            method: method.map(str::to_string),
            bucket: TokenBucket {
                max_tokens: 10,
                tokens_per_fill: 10,
                fill_interval_ms: 1000,
            },
            per_client_identity: false,
        }
    }

    #[test]
    fn first_matching_limit_applies() {
        let limits = WorkloadRateLimits {
            limits: vec![
                limit(Some(PathMatch::Prefix("/api".into())), Some("POST")),
                limit(None, None),
            ],
        };
        assert_eq!(limits.find("POST", "/api/x").map(|(i, _)| i), Some(0));
        assert_eq!(limits.find("GET", "/api/x").map(|(i, _)| i), Some(1));
        assert_eq!(WorkloadRateLimits::default().find("GET", "/"), None);
    }

    #[test]
    fn emission_interval() {
        let b = TokenBucket {
            max_tokens: 5,
            tokens_per_fill: 10,
            fill_interval_ms: 1000,
        };
        assert_eq!(b.emission_interval_nanos(), 100_000_000);
        assert!((b.per_second() - 10.0).abs() < 1e-9);
    }
}
