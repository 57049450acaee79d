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
use trellis_model::route::{HeaderModifier, PathRewrite, Redirect};

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

/// The new path for `path` (no query): a full replacement, or the matched `prefix` replaced.
/// A prefix rewrite without a matched prefix replaces nothing.
pub fn rewrite_path(path: &str, rewrite: &PathRewrite, matched_prefix: Option<&str>) -> String {
    match rewrite {
        PathRewrite::Full(p) => p.clone(),
        PathRewrite::Prefix(replacement) => match matched_prefix {
            Some(prefix) if path.starts_with(prefix) => {
                let rest = &path[prefix.len()..];
                // Gateway API: replacing "/foo" with "/" in "/foo/bar" gives "/bar", not "//bar".
                if replacement.ends_with('/') && rest.starts_with('/') {
                    format!("{}{}", replacement.trim_end_matches('/'), rest)
                } else if rest.is_empty() && replacement.is_empty() {
                    "/".to_string()
                } else {
                    format!("{replacement}{rest}")
                }
            }
            _ => path.to_string(),
        },
    }
}

/// Splits `host[:port]` (IPv6 in brackets); the port only when it is all digits.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            (h, Some(p))
        }
        _ => (authority, None),
    }
}

/// Inserts `-shadow` after the host and before any port, as Envoy names mirrored requests.
pub fn shadow_authority(authority: &str) -> String {
    match split_port(authority) {
        (host, Some(port)) => format!("{host}-shadow:{port}"),
        (_, None) => format!("{authority}-shadow"),
    }
}

/// The `Location` of a redirect for a request to `host` (authority, maybe with a port) and
/// `path` (no query) with `query`.
pub fn redirect_location(
    r: &Redirect,
    host: &str,
    path: &str,
    query: Option<&str>,
    matched_prefix: Option<&str>,
) -> String {
    let (req_host, req_port) = split_port(host);
    let req_port = req_port.and_then(|p| p.parse::<u16>().ok());
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let new_host = r.host.as_deref().unwrap_or(req_host);
    // A changed scheme without a port goes to the scheme's well-known port (Gateway API).
    let port = r.port.or(if r.scheme.is_some() { None } else { req_port });
    let port = port.filter(|p| !matches!((scheme, p), ("http", 80) | ("https", 443)));
    let new_path = match &r.path {
        Some(rw) => rewrite_path(path, rw, matched_prefix),
        None => path.to_string(),
    };
    let mut loc = format!("{scheme}://{new_host}");
    if let Some(p) = port {
        loc.push(':');
        loc.push_str(&p.to_string());
    }
    loc.push_str(&new_path);
    if let Some(q) = query {
        loc.push('?');
        loc.push_str(q);
    }
    loc
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
    fn path_rewrites() {
        let full = PathRewrite::Full("/new".into());
        assert_eq!(rewrite_path("/old/x", &full, None), "/new");
        let prefix = PathRewrite::Prefix("/v2".into());
        assert_eq!(rewrite_path("/v1/users", &prefix, Some("/v1")), "/v2/users");
        let slash = PathRewrite::Prefix("/".into());
        assert_eq!(rewrite_path("/api/users", &slash, Some("/api")), "/users");
        assert_eq!(rewrite_path("/other", &prefix, Some("/v1")), "/other");
    }

    #[test]
    fn shadow_names() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
    }

    #[test]
    fn redirect_locations() {
        let r = Redirect {
            scheme: Some("https".into()),
            host: Some("example.com".into()),
            port: None,
            path: Some(PathRewrite::Full("/new".into())),
            status: 301,
        };
        assert_eq!(
            redirect_location(&r, "web:8080", "/old", Some("a=1"), None),
            "https://example.com/new?a=1"
        );
        let keep = Redirect {
            scheme: None,
            host: None,
            port: None,
            path: Some(PathRewrite::Prefix("/v2".into())),
            status: 302,
        };
        assert_eq!(
            redirect_location(&keep, "web:8080", "/v1/x", None, Some("/v1")),
            "http://web:8080/v2/x"
        );
        let port = Redirect {
            port: Some(9000),
            ..keep.clone()
        };
        assert_eq!(
            redirect_location(&port, "web", "/a", None, None),
            "http://web:9000/a"
        );
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
