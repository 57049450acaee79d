//! The proxy's own limits on what downstream clients may make it hold: connections per
//! listener, requests in flight, request heads (header count and size, URI length), HTTP/2
//! streams and reset floods, slow request heads, idle connections, request body size, plus
//! load shedding.
//!
//! Every limit has a safe default and a flag ([`LimitArgs`], validated before any socket is
//! bound), is answered with a clear status (or a closed connection where HTTP has no way to
//! say it) and is counted in `trellis_limit_rejected_total{direction,limit}` ([`LimitMetrics`]).
//! The defaults and where they come from are listed in docs/proxy.md, "Limits and overload".
//!
//! - [`conns`]: the per-listener connection count, checked at accept.
//! - [`admit`]: the per-request checks made before a request is forwarded.
//! - [`body`]: the body-size limit on bodies of unknown length, counted as they stream.
//! - [`idle`]: the idle timeout of a served connection.
//! - [`penalty`]: the source addresses just caught flooding HTTP/2, whose new connections are
//!   rate-limited at accept for a while.
//! - [`server`]: how hyper's server builders are configured from [`ServerLimits`], and what a
//!   connection's error says about which limit ended it.

pub mod admit;
pub mod body;
pub mod conns;
mod flags;
pub mod idle;
pub mod metrics;
pub mod penalty;
pub mod server;

use std::time::Duration;

use serde::Serialize;

pub use admit::Admission;
pub use flags::LimitArgs;
pub use metrics::{Limit, LimitMetrics};

/// Default `--max-connections`, per listener: Envoy's recommended
/// `global_downstream_max_connections` for an edge proxy (it has no built-in default).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 50_000;
/// Default `--max-concurrent-requests`, per direction: a backstop far above what shedding
/// lets through, for when shedding is turned off.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 10_000;
/// Default `--max-request-headers`: hyper's and Envoy's `max_headers_count` (100).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default `--max-request-headers-size`: Envoy's `max_request_headers_kb` (60 KiB), request
/// line included.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 60 * 1024;
/// Default `--max-uri-length`: 8 KiB, the common request-line limit of nginx and Apache.
pub const DEFAULT_MAX_URI_BYTES: usize = 8 * 1024;
/// Default `--h2-max-concurrent-streams`: hyper's default, which the proxy always had. Peer
/// proxies multiplex a whole workload's requests on one connection, so the edge value Envoy
/// recommends for untrusted clients (100) would queue mesh traffic under load; the reset-flood
/// guards below are what stops abuse.
pub const DEFAULT_H2_MAX_STREAMS: u32 = 200;
/// Default `--h2-max-pending-resets`: the h2 crate's rapid-reset guard (CVE-2023-44487).
pub const DEFAULT_H2_MAX_PENDING_RESETS: usize = 20;
/// Default `--h2-max-local-error-resets`: hyper's guard against streams the client makes the
/// server reset (RUSTSEC-2024-0003).
pub const DEFAULT_H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Default `--abusive-peer-penalty`: how long an address that was sent GOAWAY
/// `ENHANCE_YOUR_CALM` stays rate-limited at accept. Long enough to outlast an attacker's
/// reconnect loop many times over, short enough that an address reused by someone else soon
/// is free again.
pub const DEFAULT_ABUSIVE_PEER_PENALTY: Duration = Duration::from_secs(10);
/// Default `--abusive-peer-connections`: connections a second a penalized address may still
/// open. A peer proxy needs one (its HTTP/2 connection is pooled), so a peer that relayed a
/// flood for one of its clients keeps serving the others.
pub const DEFAULT_ABUSIVE_PEER_CONNECTIONS: u32 = 2;
/// Default `--header-read-timeout`: hyper's default, which the proxy always had.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `--idle-timeout`: Envoy's `idle_timeout` (1 h), which Istio's sidecars inherit. A
/// peer proxy's pooled HTTP/2 connection outlives a quiet spell; an HTTP/1 connection also
/// waits at most [`DEFAULT_HEADER_READ_TIMEOUT`] for its next request head.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `--load-shed-in-flight`, per direction: shedding starts here, well before
/// [`DEFAULT_MAX_CONCURRENT_REQUESTS`] (twice Envoy's per-cluster `max_requests` of 1024).
pub const DEFAULT_SHED_IN_FLIGHT: u32 = 2048;
/// Seconds a shed or overloaded client is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: u32 = 1;
/// hyper's smallest allowed HTTP/1 read buffer; the header-size limit cannot go below what the
/// buffer holds in one read, so smaller values are refused at validation.
pub const MIN_HEADER_BYTES: usize = 1024;

/// The validated limits; plain data, shown in `/config_dump`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerLimits {
    /// Open connections per listener; `None`: unlimited.
    pub max_connections: Option<u32>,
    /// Requests in flight per direction; `None`: unlimited.
    pub max_concurrent_requests: Option<u32>,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_resets: usize,
    pub h2_max_local_error_resets: usize,
    #[serde(serialize_with = "millis")]
    pub header_read_timeout: Duration,
    /// Connections with no request in flight for this long are closed; `None`: never.
    #[serde(serialize_with = "millis_or_off")]
    pub idle_timeout: Option<Duration>,
    /// Request bodies larger than this are refused with 413; `None`: no limit.
    pub max_request_body_bytes: Option<u64>,
    /// Requests in flight per direction above which new ones are shed; `None`: no shedding.
    pub load_shed_in_flight: Option<u32>,
    /// How long an address sent GOAWAY `ENHANCE_YOUR_CALM` is rate-limited at accept; `None`:
    /// never.
    #[serde(serialize_with = "millis_or_off")]
    pub abusive_peer_penalty: Option<Duration>,
    /// Connections a second such an address may still open.
    pub abusive_peer_connections: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: Some(DEFAULT_MAX_CONNECTIONS),
            max_concurrent_requests: Some(DEFAULT_MAX_CONCURRENT_REQUESTS),
            max_headers: DEFAULT_MAX_HEADERS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_uri_bytes: DEFAULT_MAX_URI_BYTES,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_STREAMS,
            h2_max_pending_resets: DEFAULT_H2_MAX_PENDING_RESETS,
            h2_max_local_error_resets: DEFAULT_H2_MAX_LOCAL_ERROR_RESETS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_request_body_bytes: None,
            load_shed_in_flight: Some(DEFAULT_SHED_IN_FLIGHT),
            abusive_peer_penalty: Some(DEFAULT_ABUSIVE_PEER_PENALTY),
            abusive_peer_connections: DEFAULT_ABUSIVE_PEER_CONNECTIONS,
        }
    }
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

fn millis_or_off<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => millis(d, s),
        None => s.serialize_str("off"),
    }
}
