//! Route filters as pure functions over `http` types: header edits, path and authority
//! rewrites, redirect `Location`s, and the responses the proxy makes for fault aborts, direct
//! responses and redirects. The order they run in (Envoy's) is the forwarding code's business:
//! fault → direct response → redirect → rewrite → request headers (route, then backend) →
//! mirrors; response headers on the way back.
//!
//! No I/O here.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
pub use trellis_model::rewrite::{redirect_location, rewrite_path, shadow_authority};
use trellis_model::route::HeaderModifier;

use crate::http::{ProxyBody, TRELLIS_ERROR};

/// A [`HeaderModifier`] parsed once (per destination update) into HTTP types, so applying it
/// per request parses nothing; names or values that are not valid HTTP are dropped here.
#[derive(Clone, Debug, Default)]
pub struct HeaderEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    pub fn compile(m: &HeaderModifier) -> Self {
        let pairs = |list: &[(String, String)]| {
            list.iter()
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect()
        };
        Self {
            set: pairs(&m.set),
            add: pairs(&m.add),
            remove: m
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    /// Applies set, then add, then remove.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

/// Applies a [`HeaderModifier`] once; the hot path compiles it into [`HeaderEdits`] per plan.
pub fn apply_headers(m: &HeaderModifier, headers: &mut HeaderMap) {
    HeaderEdits::compile(m).apply(headers);
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A response the route itself makes (direct response, redirect, HTTP abort).
pub fn made_response(
    status: u16,
    body: Option<&str>,
    reason: Option<&'static str>,
) -> Response<ProxyBody> {
    let mut resp = Response::new(full(
        body.map(|b| Bytes::copy_from_slice(b.as_bytes()))
            .unwrap_or_default(),
    ));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if body.is_some() {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    if let Some(reason) = reason {
        resp.headers_mut()
            .insert(TRELLIS_ERROR, HeaderValue::from_static(reason));
    }
    resp
}

/// A gRPC trailers-only answer: HTTP 200 with `grpc-status` (and `grpc-message`) in the head.
pub fn grpc_response(
    code: u32,
    message: &'static str,
    reason: &'static str,
) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    h.insert("grpc-message", HeaderValue::from_static(message));
    h.insert(TRELLIS_ERROR, HeaderValue::from_static(reason));
    resp
}

/// Whether a request is gRPC (`content-type: application/grpc[+proto|...]`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_edits_set_add_remove() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        let m = HeaderModifier {
            set: vec![("x-a".into(), "new".into())],
            add: vec![("x-b".into(), "1".into()), ("x-b".into(), "2".into())],
            remove: vec!["x-gone".into()],
        };
        let mut compiled = h.clone();
        apply_headers(&m, &mut h);
        assert_eq!(h["x-a"], "new");
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert!(!h.contains_key("x-gone"));
        HeaderEdits::compile(&m).apply(&mut compiled);
        assert_eq!(compiled, h);
    }

    #[test]
    fn made_responses() {
        let r = grpc_response(4, "deadline exceeded", "request timeout");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "4");
        let d = made_response(418, Some("teapot"), None);
        assert_eq!(d.status(), 418);
        assert!(!d.headers().contains_key(TRELLIS_ERROR));
    }
}
