//! The answer to a denied request, as Istio's proxies give it: `403` with the body
//! `RBAC: access denied`, or for gRPC a trailers-only `grpc-status: 7` (PERMISSION_DENIED),
//! since gRPC clients read the status, not the HTTP code.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::http::{ProxyBody, TRELLIS_ERROR};

/// The proxy's own reason on a denial: the access log shows it as response flag `DENIED`.
/// It names no policy: which one decided is for the proxy's log, not for the caller.
pub const DENIED_REASON: &str = "authorization denied";

/// Istio's body (and gRPC message) for a denial.
pub const DENIED_BODY: &str = "RBAC: access denied";

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

pub fn denied(request_headers: &HeaderMap) -> Response<ProxyBody> {
    let grpc = is_grpc(request_headers);
    let body = if grpc {
        Bytes::new()
    } else {
        Bytes::from_static(DENIED_BODY.as_bytes())
    };
    let mut resp = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    if !grpc {
        *resp.status_mut() = StatusCode::FORBIDDEN;
    }
    let headers = resp.headers_mut();
    headers.insert(TRELLIS_ERROR, HeaderValue::from_static(DENIED_REASON));
    if grpc {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from_static("7"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("RBAC: access denied"),
        );
    } else {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp
}
