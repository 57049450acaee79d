//! hyper's server connection settings from [`ServerLimits`], and which limit (if any) a
//! server connection's error says ended it.
//!
//! HTTP/1: hyper answers a head with too many or too large headers with 431 and a request
//! target over its own 64 KiB bound with 414 (the configurable target limit is
//! [`super::admit`]'s), and closes a connection whose head does not arrive within the header
//! read timeout (which also bounds keep-alive idle time). HTTP/2: the stream limit and the
//! header list size are advertised in SETTINGS; a client that resets streams faster than they
//! are served, or makes the server reset too many, gets GOAWAY `ENHANCE_YOUR_CALM`, and so does
//! one whose header block runs on in CONTINUATION frames past what the header list size needs
//! (h2 allows `max(5, 1.25 x list size / 16 KiB)` of them: 5 at the default 60 KiB, so the
//! connection ends within about 100 KB of a bomb). A connection ended that way marks its peer's
//! address for [`super::penalty`]; so, as a strike, does an HTTP/1 head that timed out after it
//! had started or went over the size limits (both in [`connection_ended`]).
//!
//! On a header read timeout hyper answers nothing: the connection is closed without a `408`
//! (hyper writes one only for heads it could parse), which is also the cheapest answer to a
//! slowloris.

use std::error::Error as _;
use std::net::IpAddr;

use hyper::server::conn::{http1, http2};

use super::{Admission, Limit, LimitMetrics, ServerLimits};
use crate::telemetry::Direction;

/// hyper's own bound on HTTP/1 header count when none is set (its `DEFAULT_MAX_HEADERS`, not
/// exported): a head with more gets 431 either way.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Applies the HTTP/1 limits.
pub fn http1(builder: &mut http1::Builder, limits: &ServerLimits) {
    // An explicit `max_headers` makes hyper allocate and fill two header arrays of that size for
    // every request head (~1.7k instructions, 4-5 % of a plaintext hop); left unset it parses
    // into arrays on the stack with the same bound. So set it only when it differs.
    if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        builder.max_headers(limits.max_headers);
    }
    builder
        .max_header_size(limits.max_header_bytes)
        .header_read_timeout(limits.header_read_timeout);
}

/// Applies the HTTP/2 limits.
pub fn http2<E>(builder: &mut http2::Builder<E>, limits: &ServerLimits) {
    builder
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_resets)
        .max_local_error_reset_streams(limits.h2_max_local_error_resets)
        // Validated to fit a u32 (`LimitArgs::validate`).
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
}

/// Counts a server connection from `peer` that one of the limits ended with `e`, and holds it
/// against the peer's address: GOAWAY `ENHANCE_YOUR_CALM` penalizes it at once; an HTTP/1 head
/// over the size limits, or one that timed out after it had started (`head_started`:
/// [`crate::transport::HeadTimer::head_started`]; false for HTTP/2, and for a keep-alive
/// connection closed idle), is a strike ([`super::penalty::AbusivePeers::strike`]).
pub fn connection_ended(
    e: &hyper::Error,
    direction: Direction,
    peer: Option<IpAddr>,
    head_started: bool,
    admission: &Admission,
    metrics: &LimitMetrics,
) {
    if let Some(limit) = classify(e) {
        limit_ended(limit, direction, peer, head_started, admission, metrics);
    }
}

/// [`connection_ended`] for a connection the proxy itself ended by `limit` (the direct
/// HTTP/1.1 server's header-read timeout): counted, and held against the peer the same way.
pub fn limit_ended(
    limit: Limit,
    direction: Direction,
    peer: Option<IpAddr>,
    head_started: bool,
    admission: &Admission,
    metrics: &LimitMetrics,
) {
    metrics.rejected(direction, limit);
    let Some(ip) = peer else {
        return;
    };
    let now = std::time::Instant::now();
    match offence(limit, head_started) {
        Some(Offence::Calm) => {
            admission.abusive_peers().offended(ip, now);
            tracing::debug!(%ip, limit = limit.as_str(), "peer sent GOAWAY ENHANCE_YOUR_CALM; penalized");
        }
        // The guard counts the strike; only the one that penalizes is logged.
        Some(Offence::Strike) if admission.abusive_peers().strike(ip, now) => {
            tracing::debug!(%ip, limit = limit.as_str(), "slow or oversized request heads; penalized");
        }
        Some(Offence::Strike) | None => {}
    }
}

/// What a connection ended by `limit` says about its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Offence {
    /// Penalized at once.
    Calm,
    /// Counted towards a penalty.
    Strike,
}

fn offence(limit: Limit, head_started: bool) -> Option<Offence> {
    match limit {
        Limit::H2ResetFlood => Some(Offence::Calm),
        Limit::Headers | Limit::UriLength => Some(Offence::Strike),
        Limit::HeaderTimeout if head_started => Some(Offence::Strike),
        _ => None,
    }
}

/// The limit that ended a server connection with `e`, if one did.
pub fn classify(e: &hyper::Error) -> Option<Limit> {
    if e.is_timeout() {
        return Some(Limit::HeaderTimeout);
    }
    if e.is_parse_too_large() {
        // hyper's own request-target bound and the header limits share one error kind.
        return Some(if e.to_string().contains("URI") {
            Limit::UriLength
        } else {
            Limit::Headers
        });
    }
    calmed(e).then_some(Limit::H2ResetFlood)
}

/// Whether `e` is h2's GOAWAY `ENHANCE_YOUR_CALM`, found by its text: the h2 crate is not a
/// dependency of the proxy (hyper wraps it), and its Display is stable ("connection error
/// detected: detected excessive load generating behavior"). h2 drops the GOAWAY's debug data
/// from the error it returns, so a reset flood and a CONTINUATION flood look alike here: both
/// are counted as `h2_reset_flood`.
fn calmed(e: &hyper::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if is_calm_text(&s.to_string()) {
            return true;
        }
        source = s.source();
    }
    false
}

fn is_calm_text(text: &str) -> bool {
    text.starts_with("connection error detected") && text.contains("excessive load")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2_goaway_texts() {
        assert!(is_calm_text(
            "connection error detected: detected excessive load generating behavior"
        ));
        assert!(
            !is_calm_text("connection error received: detected excessive load generating behavior"),
            "the client's GOAWAY is not the proxy's limit"
        );
        assert!(!is_calm_text("connection error detected: protocol error"));
    }

    #[test]
    fn which_endings_are_offences() {
        assert_eq!(offence(Limit::H2ResetFlood, false), Some(Offence::Calm));
        assert_eq!(offence(Limit::Headers, false), Some(Offence::Strike));
        assert_eq!(offence(Limit::UriLength, false), Some(Offence::Strike));
        assert_eq!(offence(Limit::HeaderTimeout, true), Some(Offence::Strike));
        assert_eq!(
            offence(Limit::HeaderTimeout, false),
            None,
            "a keep-alive connection closed idle"
        );
        assert_eq!(offence(Limit::IdleTimeout, true), None);
        assert_eq!(offence(Limit::Connections, true), None);
    }
}
