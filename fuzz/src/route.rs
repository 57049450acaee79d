//! Route matching (`trellis_model::route::select_route`) with arbitrary routes and requests:
//! the route chosen is the first whose any match block holds, as an independent oracle computes
//! it (segment-wise path prefixes, case-insensitive methods and header names, `to_str` header
//! values, `&`-split queries, full-match regexes compiled on their own); and the URL decisions
//! taken for the chosen route (matched prefix, path rewrite, redirect `Location`, mirror
//! authority) never panic, whatever the strings.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use trellis_model::ServiceKey;
use trellis_model::matching::{
    HeaderMatch, HttpMatch, PathMatch, QueryMatch, Regex, RequestView, StringMatch,
};
use trellis_model::rewrite::{matched_prefix, redirect_location, rewrite_path, shadow_authority};
use trellis_model::route::{
    BackendRef, HttpRoute, PathRewrite, Redirect, ResourceRef, RouteAction, WeightedBackend,
    select_route,
};

use crate::input::Input;

const PATHS: &[&str] = &[
    "/", "a", "b", "/a", "/a/", "/ab", "//", "?", "%2F", "\u{e9}", ".",
];
const WORDS: &[&str] = &[
    "a", "A", "b", "get", "GET", "x-a", "X-A", "=", "&", "", " ", "\u{e9}",
];
const HOSTS: &[&str] = &[
    "reviews", ":", "9080", "[::1]", ".", "default", "*", "\u{e9}",
];
const REGEXES: &[&str] = &[
    "a",
    ".*",
    "[a-z]+",
    "(",
    "/a/[0-9]*",
    "\\d",
    "x|y",
    "\u{e9}?",
];

pub fn check_route_matching(data: &[u8]) {
    let mut input = Input::new(data);
    let routes: Vec<HttpRoute> = (0..1 + input.below(4))
        .map(|i| route(&mut input, i))
        .collect();

    let method = input.text(&["GET", "get", "POST", "X"], 2);
    let path = input.text(PATHS, 6);
    let query = input
        .bool()
        .then(|| input.text(&["a", "=", "&", "b", "%"], 6));
    let authority = input.text(HOSTS, 4);
    let mut headers = HeaderMap::new();
    for _ in 0..input.below(4) {
        let name = input.text(WORDS, 2);
        let value = input.bytes(4);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    let labels: BTreeMap<String, String> =
        [("app".to_string(), input.text(&["web", "x"], 1))].into();
    let namespace = input.text(&["default", "shop"], 1);
    let view = RequestView {
        method: &method,
        path: &path,
        query: query.as_deref(),
        authority: &authority,
        headers: &headers,
        port: input.pick(&[80, 9080]),
        source_labels: &labels,
        source_namespace: &namespace,
    };

    let chosen = select_route(&routes, &view);
    let expected = routes
        .iter()
        .position(|r| r.matches.is_empty() || r.matches.iter().any(|m| oracle_block(m, &view)));
    assert_eq!(
        chosen.map(|(i, _)| i),
        expected,
        "select_route disagrees with the oracle for {view:?} over {routes:#?}"
    );

    if let Some((_, route)) = chosen {
        let prefix = matched_prefix(route, &view);
        if let Some(p) = prefix {
            assert!(
                path.starts_with(p.trim_end_matches('/')),
                "matched prefix {p:?} of {path:?}"
            );
        }
        if let Some(rw) = route.rewrite.as_ref().and_then(|r| r.path.as_ref()) {
            let _ = rewrite_path(&path, rw, prefix);
        }
        if let RouteAction::Redirect(r) = &route.action {
            let _ = redirect_location(r, &authority, &path, query.as_deref(), prefix);
        }
    }
    let _ = shadow_authority(&authority);
}

fn route(input: &mut Input<'_>, index: usize) -> HttpRoute {
    let matches = (0..input.below(4)).map(|_| block(input)).collect();
    let rewrite_to = input.text(PATHS, 3);
    let path_rewrite = match input.below(3) {
        0 => None,
        1 => Some(PathRewrite::Full(rewrite_to)),
        _ => Some(PathRewrite::Prefix(rewrite_to)),
    };
    let action = if input.below(3) == 0 {
        RouteAction::Redirect(Redirect {
            scheme: input.bool().then(|| "https".to_string()),
            host: input.bool().then(|| input.text(HOSTS, 2)),
            port: input.bool().then(|| input.u16()),
            path: path_rewrite.clone(),
            status: 301,
        })
    } else {
        RouteAction::Forward(vec![WeightedBackend {
            backend: BackendRef {
                service: ServiceKey {
                    namespace: "default".into(),
                    name: "reviews".into(),
                },
                port: None,
                subset: None,
            },
            weight: 1,
            request_headers: Default::default(),
            response_headers: Default::default(),
        }])
    };
    HttpRoute {
        name: format!("fuzz/{index}"),
        source: ResourceRef {
            kind: "VirtualService".into(),
            namespace: "default".into(),
            name: "fuzz".into(),
        },
        matches,
        action,
        request_headers: Default::default(),
        response_headers: Default::default(),
        rewrite: path_rewrite.map(|p| trellis_model::route::Rewrite {
            path: Some(p),
            authority: None,
        }),
        mirrors: Vec::new(),
        fault: None,
        timeout: None,
        retry: None,
    }
}

fn string_match(input: &mut Input<'_>, pieces: &[&str]) -> StringMatch {
    let text = input.text(pieces, 3);
    match input.below(3) {
        0 => StringMatch::Exact(text),
        1 => StringMatch::Prefix(text),
        _ => match Regex::new(&input.text(REGEXES, 2)) {
            Ok(r) => StringMatch::Regex(r),
            Err(_) => StringMatch::Exact(text),
        },
    }
}

fn block(input: &mut Input<'_>) -> HttpMatch {
    let mut m = HttpMatch::default();
    if input.bool() {
        let p = input.text(PATHS, 4);
        m.path = Some(match input.below(4) {
            0 => PathMatch::Exact(p),
            1 => PathMatch::Prefix(p),
            2 => PathMatch::SegmentPrefix(p),
            _ => match Regex::new(&input.text(REGEXES, 2)) {
                Ok(r) => PathMatch::Regex(r),
                Err(_) => PathMatch::Exact(p),
            },
        });
    }
    if input.bool() {
        m.method = Some(input.text(&["GET", "get", "POST"], 1));
    }
    if input.bool() {
        m.authority = Some(string_match(input, HOSTS));
    }
    for _ in 0..input.below(3) {
        m.headers.push(HeaderMatch {
            name: input.text(WORDS, 2),
            value: input.bool().then(|| string_match(input, WORDS)),
            invert: input.bool(),
        });
    }
    for _ in 0..input.below(3) {
        m.query.push(QueryMatch {
            name: input.text(&["a", "b", "="], 2),
            value: input.bool().then(|| string_match(input, &["a", "", "%"])),
        });
    }
    if input.bool() {
        m.port = Some(input.pick(&[80, 9080]));
    }
    if input.bool() {
        m.source_namespace = Some(input.text(&["default", "shop"], 1));
    }
    if input.bool() {
        m.source_labels
            .insert("app".into(), input.text(&["web", "x"], 1));
    }
    m
}

/// The oracle's string matching; regexes are compiled again here, anchored the RE2 way.
fn oracle_string(m: &StringMatch, value: &str) -> bool {
    match m {
        StringMatch::Exact(s) => value == s,
        StringMatch::Prefix(p) => value.get(..p.len()) == Some(p.as_str()),
        StringMatch::Regex(r) => oracle_regex(r.as_str(), value),
    }
}

fn oracle_regex(source: &str, value: &str) -> bool {
    regex::Regex::new(&format!("^(?:{source})$")).is_ok_and(|re| re.is_match(value))
}

/// Gateway API `PathPrefix`: the prefix's segments (ignoring a trailing `/`) start the path's.
fn oracle_segments(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    let want: Vec<&str> = prefix.split('/').collect();
    let have: Vec<&str> = path.split('/').collect();
    have.len() >= want.len() && have[..want.len()] == want[..]
}

fn oracle_block(m: &HttpMatch, req: &RequestView<'_>) -> bool {
    let path_ok = match &m.path {
        None => true,
        Some(PathMatch::Exact(s)) => req.path == s,
        Some(PathMatch::Prefix(p)) => req.path.get(..p.len()) == Some(p.as_str()),
        Some(PathMatch::SegmentPrefix(p)) => oracle_segments(p, req.path),
        Some(PathMatch::Regex(r)) => oracle_regex(r.as_str(), req.path),
    };
    let headers_ok = m.headers.iter().all(|h| {
        let holds = req.headers.iter().any(|(name, value)| {
            name.as_str().eq_ignore_ascii_case(&h.name)
                && HeaderName::from_bytes(h.name.as_bytes()).is_ok()
                && h.value
                    .as_ref()
                    .is_none_or(|v| value.to_str().is_ok_and(|s| oracle_string(v, s)))
        });
        holds != h.invert
    });
    let query_ok = m.query.iter().all(|q| {
        req.query.is_some_and(|query| {
            query.split('&').any(|pair| {
                let (name, value) = match pair.find('=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (pair, ""),
                };
                name == q.name && q.value.as_ref().is_none_or(|v| oracle_string(v, value))
            })
        })
    });
    path_ok
        && headers_ok
        && query_ok
        && m.method
            .as_ref()
            .is_none_or(|x| x.eq_ignore_ascii_case(req.method))
        && m.authority
            .as_ref()
            .is_none_or(|a| oracle_string(a, req.authority))
        && m.port.is_none_or(|p| p == req.port)
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| ns == req.source_namespace)
        && m.source_labels
            .iter()
            .all(|(k, v)| req.source_labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::check_route_matching;
    use crate::input::Rng;

    #[test]
    fn seeded_random_inputs() {
        let mut rng = Rng(0x5e1e_c7ed_2026_0012);
        // Bounded: 20,000 route tables, a few seconds in debug (regexes are the cost).
        for _ in 0..20_000 {
            let len = rng.below(160);
            check_route_matching(&rng.bytes(len));
        }
    }
}
