//! The counters of the proxy's own limits: `trellis_limit_rejected_total{direction,limit}`,
//! `trellis_load_shed_total{direction}` and `trellis_rate_limited_total{direction}`.
//! Preallocated atomics indexed by small enums, like the rest of [`crate::telemetry`]: a
//! rejection is one relaxed `fetch_add`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::telemetry::{Direction, per_direction, per_direction_and};

/// Which limit turned a connection or request away; the metric's `limit` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `--max-connections`: the connection was closed at accept.
    Connections = 0,
    /// `--max-concurrent-requests`: 503 `trellis-error: overloaded`.
    ConcurrentRequests = 1,
    /// `--max-request-headers` / `--max-request-headers-size`: 431.
    Headers = 2,
    /// `--max-uri-length`: 414.
    UriLength = 3,
    /// `--header-read-timeout`: the head did not arrive in time (408 or close).
    HeaderTimeout = 4,
    /// `--h2-max-pending-resets` / `--h2-max-local-error-resets`: GOAWAY
    /// `ENHANCE_YOUR_CALM`.
    H2ResetFlood = 5,
    /// `--max-request-body-size`, declared by `Content-Length`: 413.
    BodySize = 6,
    /// `--max-request-body-size`, counted while a body of unknown length streamed: 413, or
    /// the request reset when its response had already started ([`super::body`]).
    BodySizeStreamed = 7,
    /// `--idle-timeout`: a connection with no request in flight was closed (HTTP/2: GOAWAY).
    IdleTimeout = 8,
    /// `--abusive-peer-penalty`: a connection from an address just sent GOAWAY
    /// `ENHANCE_YOUR_CALM`, over its allowance, closed at accept ([`super::penalty`]).
    AbusivePeer = 9,
}

impl Limit {
    pub const ALL: [Limit; 10] = [
        Self::Connections,
        Self::ConcurrentRequests,
        Self::Headers,
        Self::UriLength,
        Self::HeaderTimeout,
        Self::H2ResetFlood,
        Self::BodySize,
        Self::BodySizeStreamed,
        Self::IdleTimeout,
        Self::AbusivePeer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::ConcurrentRequests => "concurrent_requests",
            Self::Headers => "headers",
            Self::UriLength => "uri_length",
            Self::HeaderTimeout => "header_timeout",
            Self::H2ResetFlood => "h2_reset_flood",
            Self::BodySize => "body_size",
            Self::BodySizeStreamed => "body_size_streamed",
            Self::IdleTimeout => "idle_timeout",
            Self::AbusivePeer => "abusive_peer",
        }
    }
}

#[derive(Debug, Default)]
struct PerDirection {
    rejected: [AtomicU64; Limit::ALL.len()],
    shed: AtomicU64,
    rate_limited: AtomicU64,
}

/// One per proxy, inside [`crate::telemetry::Metrics`].
#[derive(Debug, Default)]
pub struct LimitMetrics {
    dirs: [PerDirection; 2],
}

impl LimitMetrics {
    pub fn rejected(&self, d: Direction, limit: Limit) {
        self.dirs[d as usize].rejected[limit as usize].fetch_add(1, Relaxed);
    }

    pub fn shed(&self, d: Direction) {
        self.dirs[d as usize].shed.fetch_add(1, Relaxed);
    }

    pub fn rate_limited(&self, d: Direction) {
        self.dirs[d as usize].rate_limited.fetch_add(1, Relaxed);
    }

    /// The count so far (tests and `/stats`-style readers).
    pub fn rejected_count(&self, d: Direction, limit: Limit) -> u64 {
        self.dirs[d as usize].rejected[limit as usize].load(Relaxed)
    }

    pub fn render(&self, out: &mut String) -> std::fmt::Result {
        per_direction_and(
            out,
            "trellis_limit_rejected_total",
            "Connections and requests refused by one of the proxy's own limits.",
            "limit",
            &Limit::ALL,
            Limit::as_str,
            |d, l| self.rejected_count(d, l),
        )?;
        type Field = fn(&PerDirection) -> &AtomicU64;
        let simple: [(&str, &str, Field); 2] = [
            (
                "trellis_load_shed_total",
                "Requests answered 503 with Retry-After because too many were in flight.",
                |p| &p.shed,
            ),
            (
                "trellis_rate_limited_total",
                "Requests answered 429 by a RateLimitPolicy.",
                |p| &p.rate_limited,
            ),
        ];
        for (name, help, field) in simple {
            per_direction(out, name, help, |d| {
                field(&self.dirs[d as usize]).load(Relaxed)
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole rendering, byte for byte (what scrapers and `trellis stat` read): every limit
    /// for both directions, zeros included.
    #[test]
    fn renders_every_limit_for_both_directions() {
        let m = LimitMetrics::default();
        m.rejected(Direction::Inbound, Limit::Headers);
        m.shed(Direction::Outbound);
        m.rate_limited(Direction::Inbound);
        let mut s = String::new();
        m.render(&mut s).unwrap();
        let want = [
            "# HELP trellis_limit_rejected_total Connections and requests refused by one of the proxy's own limits.\n",
            "# TYPE trellis_limit_rejected_total counter\n",
            "trellis_limit_rejected_total{direction=\"inbound\",limit=\"connections\"} 0\n",
            "trellis_limit_rejected_total{direction=\"inbound\",limit=\"concurrent_requests\"} 0\n",
            "trellis_limit_rejected_total{direction=\"inbound\",limit=\"headers\"} 1\n",
            "trellis_limit_rejected_total{direction=\"inbound\",limit=\"uri_length\"} 0\n",
            "trellis_limit_rejected_total{direction=\"inbound\",limit=\"header_timeout\"} 0\n",
            "trellis_limit_rejected_total{direction=\"inbound\",limit=\"h2_reset_flood\"} 0\n",
            "trellis_limit_rejected_total{direction=\"inbound\",limit=\"body_size\"} 0\n",
            "trellis_limit_rejected_total{direction=\"inbound\",limit=\"body_size_streamed\"} 0\n",
            "trellis_limit_rejected_total{direction=\"inbound\",limit=\"idle_timeout\"} 0\n",
            "trellis_limit_rejected_total{direction=\"inbound\",limit=\"abusive_peer\"} 0\n",
            "trellis_limit_rejected_total{direction=\"outbound\",limit=\"connections\"} 0\n",
            "trellis_limit_rejected_total{direction=\"outbound\",limit=\"concurrent_requests\"} 0\n",
            "trellis_limit_rejected_total{direction=\"outbound\",limit=\"headers\"} 0\n",
            "trellis_limit_rejected_total{direction=\"outbound\",limit=\"uri_length\"} 0\n",
            "trellis_limit_rejected_total{direction=\"outbound\",limit=\"header_timeout\"} 0\n",
            "trellis_limit_rejected_total{direction=\"outbound\",limit=\"h2_reset_flood\"} 0\n",
            "trellis_limit_rejected_total{direction=\"outbound\",limit=\"body_size\"} 0\n",
            "trellis_limit_rejected_total{direction=\"outbound\",limit=\"body_size_streamed\"} 0\n",
            "trellis_limit_rejected_total{direction=\"outbound\",limit=\"idle_timeout\"} 0\n",
            "trellis_limit_rejected_total{direction=\"outbound\",limit=\"abusive_peer\"} 0\n",
            "# HELP trellis_load_shed_total Requests answered 503 with Retry-After because too many were in flight.\n",
            "# TYPE trellis_load_shed_total counter\n",
            "trellis_load_shed_total{direction=\"inbound\"} 0\n",
            "trellis_load_shed_total{direction=\"outbound\"} 1\n",
            "# HELP trellis_rate_limited_total Requests answered 429 by a RateLimitPolicy.\n",
            "# TYPE trellis_rate_limited_total counter\n",
            "trellis_rate_limited_total{direction=\"inbound\"} 1\n",
            "trellis_rate_limited_total{direction=\"outbound\"} 0\n",
        ];
        assert_eq!(s, want.concat());
    }
}
