//! The pure URL decisions of route filters: a path rewrite (full, or the matched prefix
//! replaced), a redirect's `Location`, and the authority of a mirrored request. Strings in,
//! strings out, so the proxy and `trellis explain` compute the same URL.

use crate::matching::{PathMatch, RequestView};
use crate::route::{HttpRoute, PathRewrite, Redirect, RouteAction};

/// The prefix the route's first matching block matched, when the route rewrites or redirects
/// by prefix (otherwise `None`, without matching again).
pub fn matched_prefix<'r>(route: &'r HttpRoute, view: &RequestView<'_>) -> Option<&'r str> {
    let by_prefix = |p: Option<&PathRewrite>| matches!(p, Some(PathRewrite::Prefix(_)));
    let wanted = by_prefix(route.rewrite.as_ref().and_then(|r| r.path.as_ref()))
        || matches!(&route.action, RouteAction::Redirect(r) if by_prefix(r.path.as_ref()));
    if !wanted {
        return None;
    }
    route
        .matches
        .iter()
        .find(|m| m.matches(view))
        .and_then(|m| match &m.path {
            Some(PathMatch::Prefix(p) | PathMatch::SegmentPrefix(p)) => Some(p.as_str()),
            _ => None,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
