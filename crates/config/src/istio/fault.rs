//! Istio `HTTPFaultInjection`: fixed delays and aborts (HTTP or gRPC status) by percentage.

use serde::Deserialize;
use trellis_model::route::{AbortStatus, Fault, FaultAbort, FaultDelay};

use super::Percent;
use crate::kube::FieldError;
use crate::traffic::{duration, percent};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultInjection {
    delay: Option<Delay>,
    abort: Option<Abort>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Delay {
    fixed_delay: Option<String>,
    percentage: Option<Percent>,
    /// Deprecated integer percentage.
    percent: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Abort {
    http_status: Option<i64>,
    grpc_status: Option<String>,
    http2_error: Option<String>,
    percentage: Option<Percent>,
}

fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    (CODES.iter().position(|c| c.eq_ignore_ascii_case(name)))
        .and_then(|i| u32::try_from(i).ok())
        .or_else(|| name.parse().ok().filter(|n| *n <= 16))
}

pub(crate) fn fault(field: &str, f: &FaultInjection) -> Result<Fault, FieldError> {
    // Istio: an unstated percentage injects nothing.
    let pct = |p: &Option<Percent>, legacy: Option<i64>, f: &str| match (p, legacy) {
        (Some(p), _) => percent(&format!("{f}.percentage.value"), p.value),
        (None, Some(n)) => percent(&format!("{f}.percent"), n as f64),
        (None, None) => Ok(trellis_model::route::Percent(0.0)),
    };
    let delay = match &f.delay {
        None => None,
        Some(d) => {
            let df = format!("{field}.delay");
            let fixed = d.fixed_delay.as_ref().ok_or_else(|| {
                FieldError::new(
                    format!("{df}.fixedDelay"),
                    "is required (exponentialDelay is not supported yet)",
                )
            })?;
            Some(FaultDelay {
                fixed: duration(&format!("{df}.fixedDelay"), fixed)?,
                percent: pct(&d.percentage, d.percent, &df)?,
            })
        }
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let af = format!("{field}.abort");
            if a.http2_error.is_some() {
                return Err(not_yet(
                    format!("{af}.http2Error"),
                    "aborting with an HTTP/2 error",
                ));
            }
            let status = match (a.http_status, &a.grpc_status) {
                (Some(s), None) if (200..=599).contains(&s) => AbortStatus::Http(s as u16),
                (Some(s), None) => {
                    return Err(FieldError::new(
                        format!("{af}.httpStatus"),
                        format!("must be 200-599, got {s}"),
                    ));
                }
                (None, Some(g)) => AbortStatus::Grpc(grpc_code(g).ok_or_else(|| {
                    FieldError::new(
                        format!("{af}.grpcStatus"),
                        format!("must be a gRPC status name like UNAVAILABLE, got {g:?}"),
                    )
                })?),
                _ => {
                    return Err(FieldError::new(
                        af,
                        "must set exactly one of httpStatus, grpcStatus",
                    ));
                }
            };
            Some(FaultAbort {
                status,
                percent: pct(&a.percentage, None, &af)?,
            })
        }
    };
    Ok(Fault { delay, abort })
}

fn not_yet(field: impl Into<String>, what: &str) -> FieldError {
    FieldError::new(field, format!("{what} is not supported yet"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_names() {
        assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_code("cancelled"), Some(1));
        assert_eq!(grpc_code("nope"), None);
    }
}
