//! The answer to a request that none of a routing resource's rules match.
//!
//! Istio and Gateway API both answer such a request themselves rather than sending it to the
//! service: Envoy returns 404 with response flag `NR` for a VirtualService host; Gateway API
//! requires 404 for HTTPRoute and gRPC `UNIMPLEMENTED` (code 12) for GRPCRoute. Linkerd's
//! ServiceProfile and SMI TrafficSplit do not: an unmatched request goes to the service as
//! usual, so their adapters add nothing.
//!
//! The catch-all is an ordinary model route (a direct response, no match blocks) appended after
//! the resource's own routes, so the proxy and `trellis explain` need no special case to apply
//! it. It carries the `trellis-error` header the proxy sets on the answers it makes itself, with
//! [`REASON`], so logs and tools see the proxy made the 404.

use trellis_model::matching::{HttpMatch, PathMatch};
use trellis_model::route::{HeaderModifier, HttpRoute, ResourceRef, RouteAction};

/// The `trellis-error` reason of the catch-all's answer (Envoy's `NR`: no route).
pub const REASON: &str = "no route";

/// The header the proxy marks its own answers with.
const ERROR_HEADER: &str = "trellis-error";

/// gRPC `UNIMPLEMENTED`, what Gateway API requires for a GRPCRoute request no rule matches.
pub const GRPC_UNIMPLEMENTED: u32 = 12;

/// The catch-all's route name, `<resource>/no-route`, stable for metrics and `explain`.
fn name(source: &ResourceRef) -> String {
    format!("{}/no-route", source.name)
}

/// 404 with `trellis-error: no route` (VirtualService, HTTPRoute).
pub fn http(source: &ResourceRef) -> HttpRoute {
    route(
        source,
        404,
        vec![(ERROR_HEADER.into(), REASON.into())],
        Some("no route\n".into()),
    )
}

/// A gRPC trailers-only `UNIMPLEMENTED` answer: HTTP 200 with `grpc-status: 12` in the head
/// (GRPCRoute).
pub fn grpc(source: &ResourceRef) -> HttpRoute {
    route(
        source,
        200,
        vec![
            ("content-type".into(), "application/grpc".into()),
            ("grpc-status".into(), GRPC_UNIMPLEMENTED.to_string()),
            ("grpc-message".into(), REASON.into()),
            (ERROR_HEADER.into(), REASON.into()),
        ],
        None,
    )
}

fn route(
    source: &ResourceRef,
    status: u16,
    set: Vec<(String, String)>,
    body: Option<String>,
) -> HttpRoute {
    HttpRoute {
        name: name(source),
        source: source.clone(),
        matches: Vec::new(),
        action: RouteAction::DirectResponse { status, body },
        request_headers: HeaderModifier::default(),
        response_headers: HeaderModifier {
            set,
            ..HeaderModifier::default()
        },
        rewrite: None,
        mirrors: Vec::new(),
        fault: None,
        timeout: None,
        retry: None,
    }
}

/// Whether `route` is a catch-all this module made.
pub fn is_no_route(route: &HttpRoute) -> bool {
    route.matches.is_empty()
        && matches!(route.action, RouteAction::DirectResponse { .. })
        && route
            .response_headers
            .set
            .iter()
            .any(|(k, v)| k == ERROR_HEADER && v == REASON)
}

/// Whether one match block takes every request (no condition, or only the path prefix `/`):
/// a route with such a block leaves nothing for a catch-all after it.
pub fn matches_everything(m: &HttpMatch) -> bool {
    let path_all = match &m.path {
        None => true,
        Some(PathMatch::Prefix(p) | PathMatch::SegmentPrefix(p)) => p == "/" || p.is_empty(),
        Some(_) => false,
    };
    path_all
        && *m
            == HttpMatch {
                path: m.path.clone(),
                ..HttpMatch::default()
            }
}

/// Whether a route takes every request: no match blocks, or one that takes everything.
pub fn takes_everything(route: &HttpRoute) -> bool {
    route.matches.is_empty() || route.matches.iter().any(matches_everything)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> ResourceRef {
        ResourceRef {
            kind: "VirtualService".into(),
            namespace: "default".into(),
            name: "reviews".into(),
        }
    }

    #[test]
    fn catch_alls_are_recognised() {
        let h = http(&src());
        assert_eq!(h.name, "reviews/no-route");
        assert!(is_no_route(&h) && takes_everything(&h));
        assert!(is_no_route(&grpc(&src())));
        let mut other = h.clone();
        other.response_headers = HeaderModifier::default();
        assert!(!is_no_route(&other));
    }

    #[test]
    fn match_all_blocks() {
        let root = HttpMatch {
            path: Some(PathMatch::SegmentPrefix("/".into())),
            ..HttpMatch::default()
        };
        assert!(matches_everything(&root));
        assert!(matches_everything(&HttpMatch::default()));
        let jason = HttpMatch {
            method: Some("GET".into()),
            ..root
        };
        assert!(!matches_everything(&jason));
        let deep = HttpMatch {
            path: Some(PathMatch::Prefix("/a".into())),
            ..HttpMatch::default()
        };
        assert!(!matches_everything(&deep));
    }
}
