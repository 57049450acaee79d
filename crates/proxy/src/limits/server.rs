//! hyper's server connection settings from [`ServerLimits`], and which limit (if any) a
//! server connection's error says ended it.
//!
//! HTTP/1: hyper answers a head with too many or too large headers with 431 and a request
//! target over its own 64 KiB bound with 414 (the configurable target limit is
//! [`super::admit`]'s), and closes a connection whose head does not arrive within the header
//! read timeout (which also bounds keep-alive idle time). HTTP/2: the stream limit and the
//! header list size are advertised in SETTINGS; a client that resets streams faster than they
//! are served, or makes the server reset too many, gets GOAWAY `ENHANCE_YOUR_CALM`.

use std::error::Error as _;

use hyper::server::conn::{http1, http2};

use super::{Limit, ServerLimits};

/// Applies the HTTP/1 limits.
pub fn http1(builder: &mut http1::Builder, limits: &ServerLimits) {
    builder
        .max_headers(limits.max_headers)
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
    // h2's GOAWAY for a reset flood, found by its text: the h2 crate is not a dependency of
    // the proxy (hyper wraps it), and its Display is stable ("connection error detected:
    // detected excessive load generating behavior").
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if text.starts_with("connection error detected") && text.contains("excessive load") {
            return Some(Limit::H2ResetFlood);
        }
        source = s.source();
    }
    None
}
