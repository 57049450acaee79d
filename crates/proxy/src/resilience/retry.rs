//! When an attempt is retried.
//!
//! A route's `RetryPolicy` says how many retries and on what. A route without one (and a
//! destination without routes) gets [`default_policy`]: two retries on connect failure and
//! refused stream only. Both mean the request never reached the application, so the retry is
//! safe for any method; Istio's default also retries 503 and gRPC UNAVAILABLE, which may repeat
//! work the application did, so Trellis leaves those to explicit config. The retry budget
//! (on by default) caps the extra load in every case.

use std::sync::LazyLock;

use trellis_model::route::{RetryOn, RetryPolicy};

/// [`default_policy`], built once.
pub static DEFAULT_POLICY: LazyLock<RetryPolicy> = LazyLock::new(default_policy);

/// Retries on connect failure and refused stream, at most two.
pub fn default_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        on: RetryOn {
            connect_failure: true,
            refused_stream: true,
            ..RetryOn::default()
        },
    }
}

/// How an attempt failed without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptError {
    /// No connection (refused, timed out, handshake failed): the request was not sent.
    Connect,
    /// The TLS this proxy originates (DestinationRule `tls.mode: SIMPLE`) failed: bad roots,
    /// an unverified certificate or a wrong name. Not sent, so retried as a connect failure.
    TlsOrigination,
    /// HTTP/2 REFUSED_STREAM: the peer did not process the request.
    RefusedStream,
    /// The exchange broke after the request was sent.
    Reset,
    /// The per-try timeout ran out.
    PerTryTimeout,
}

/// Whether a failed attempt is retried under `on`.
pub fn retries_error(on: &RetryOn, error: AttemptError) -> bool {
    match error {
        AttemptError::Connect | AttemptError::TlsOrigination => {
            on.connect_failure || on.gateway_error || on.server_error
        }
        AttemptError::RefusedStream => on.refused_stream || on.reset,
        AttemptError::Reset => on.reset,
        // Envoy retries a per-try timeout under the 5xx and gateway-error conditions.
        AttemptError::PerTryTimeout => on.gateway_error || on.server_error || on.reset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_retries_only_what_never_reached_the_app() {
        let p = default_policy();
        assert_eq!(p.attempts, 2);
        assert!(retries_error(&p.on, AttemptError::Connect));
        assert!(retries_error(&p.on, AttemptError::TlsOrigination));
        assert!(retries_error(&p.on, AttemptError::RefusedStream));
        assert!(!retries_error(&p.on, AttemptError::Reset));
        assert!(!retries_error(&p.on, AttemptError::PerTryTimeout));
        assert!(!p.on.retries_response(503, None));
    }

    #[test]
    fn conditions_map_like_envoy() {
        let gw = RetryOn {
            gateway_error: true,
            ..RetryOn::default()
        };
        assert!(retries_error(&gw, AttemptError::Connect));
        assert!(retries_error(&gw, AttemptError::PerTryTimeout));
        assert!(!retries_error(&gw, AttemptError::Reset));
        let reset = RetryOn {
            reset: true,
            ..RetryOn::default()
        };
        assert!(retries_error(&reset, AttemptError::Reset));
        assert!(retries_error(&reset, AttemptError::RefusedStream));
    }
}
