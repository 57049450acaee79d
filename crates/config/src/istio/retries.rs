//! Istio retry policies: Envoy `retryOn` tokens, and the conditions Istio retries on when
//! `retries` is given without `retryOn`.
//!
//! A route without `retries` gets no explicit policy (`retry: None`), which the proxy reads as
//! the mesh default: 2 retries on connect-failure and refused-stream, within the retry budget.
//! Istio's own default adds gRPC `unavailable` and `cancelled`; those answers may come after the
//! application did work, so the mesh retries them only when a route asks (write Istio's default
//! out in `retries` to get it exactly).

use trellis_model::route::RetryOn;

use crate::kube::FieldError;

/// Istio's `retryOn` when `retries` omits it: connect-failure, refused-stream, unavailable,
/// cancelled, retriable-status-codes (no codes listed).
pub(crate) fn istio_default_retry_on() -> RetryOn {
    RetryOn {
        connect_failure: true,
        refused_stream: true,
        grpc_codes: vec![1, 14],
        ..RetryOn::default()
    }
}

/// Parses Envoy `retryOn` tokens (comma-separated). Numeric tokens are HTTP statuses, as Istio
/// accepts them.
pub(crate) fn parse_retry_on(field: &str, text: &str) -> Result<RetryOn, FieldError> {
    let mut on = RetryOn::default();
    for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match token {
            "5xx" => on.server_error = true,
            "gateway-error" => on.gateway_error = true,
            "connect-failure" => on.connect_failure = true,
            "refused-stream" => on.refused_stream = true,
            "reset" | "reset-before-request" => on.reset = true,
            "retriable-4xx" => on.statuses.push(409),
            // Codes come from the numeric tokens; Istio lists none by default.
            "retriable-status-codes" => {}
            "cancelled" => on.grpc_codes.push(1),
            "deadline-exceeded" => on.grpc_codes.push(4),
            "resource-exhausted" => on.grpc_codes.push(8),
            "internal" => on.grpc_codes.push(13),
            "unavailable" => on.grpc_codes.push(14),
            n => match n.parse::<u16>() {
                Ok(s) if (100..=599).contains(&s) => on.statuses.push(s),
                _ => {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "unknown retry condition {n:?} (expected 5xx, gateway-error, connect-failure, refused-stream, reset, retriable-4xx, retriable-status-codes, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable, or an HTTP status)"
                        ),
                    ));
                }
            },
        }
    }
    on.statuses.sort_unstable();
    on.statuses.dedup();
    on.grpc_codes.sort_unstable();
    on.grpc_codes.dedup();
    Ok(on)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_tokens() {
        let on = parse_retry_on("f", "5xx, connect-failure,unavailable,503,retriable-4xx").unwrap();
        assert!(on.server_error && on.connect_failure);
        assert_eq!(on.statuses, [409, 503]);
        assert_eq!(on.grpc_codes, [14]);
        let err = parse_retry_on("f", "5xx,bogus").unwrap_err();
        assert!(err.message.contains("\"bogus\""), "{}", err.message);
    }
}
