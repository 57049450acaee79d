//! HTTP message rules the proxy applies on every hop, as pure functions over `http` types:
//! hop-by-hop header removal, upgrade recognition, which HTTP version the next hop speaks, URI
//! and Host fix-ups between HTTP/1 and HTTP/2, and the responses the proxy makes itself.
//!
//! No I/O here: the forwarding in [`crate::forward`] calls these.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use crate::telemetry::Direction;

/// An error that ends a response body early (an upstream failure, or the request timeout).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the proxy returns downstream.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Set by the outbound proxy when it carries an HTTP/1.x request over the HTTP/2 hop between
/// meshed proxies; the inbound proxy removes it and speaks HTTP/1.1 to the application.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("trellis-orig-proto");
pub const ORIG_PROTO_HTTP1: HeaderValue = HeaderValue::from_static("HTTP/1.1");

/// Set by the outbound proxy on the meshed hop: the application port behind the peer proxy
/// (`Endpoint::target_port`). The inbound proxy removes it and, when the connection had no
/// original destination, sends the request to that port if it is one of its `--app-port`s.
pub const TARGET_PORT: HeaderName = HeaderName::from_static("trellis-target-port");

/// Names the cause on responses the proxy makes itself (never on the application's).
pub const TRELLIS_ERROR: HeaderName = HeaderName::from_static("trellis-error");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1). With `upgrade`, `Connection: upgrade` and
/// `Upgrade` survive so the next hop sees the switch request (or the 101 answer).
///
/// Runs on every response (and, as [`strip_request`], every request), so it first scans the
/// names once and then touches only those present: a removal of an absent name still costs a
/// hashed lookup, and most messages carry none of these names, or only `Connection: keep-alive`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let has = scan(headers, false);
    strip(headers, &has, upgrade);
}

/// What [`strip_request`] learnt from a request's headers.
#[derive(Debug, Default)]
pub struct RequestHeaders {
    /// The request asks to switch protocols (WebSocket and any other `Upgrade`): an HTTP/1.1
    /// request with an `Upgrade` header that its `Connection` header names.
    pub upgrade: bool,
    /// The value of [`TARGET_PORT`], taken out.
    pub target_port: Option<HeaderValue>,
    /// The value of [`ORIG_PROTO`], taken out.
    pub orig_proto: Option<HeaderValue>,
}

/// [`strip_hop_by_hop`] for a request about to be forwarded, keeping `Connection: upgrade` and
/// `Upgrade` when it asks to switch protocols. It also loses `Expect` (this proxy's server
/// already answered `100 Continue` by reading the body, so the next hop gets the body at once)
/// and the mesh's own headers, which are for this proxy and never for the next hop: their
/// values are returned. One scan of the names finds all of them.
pub fn strip_request<B>(req: &mut Request<B>) -> RequestHeaders {
    let is_http11 = req.version() == Version::HTTP_11;
    let headers = req.headers_mut();
    let has = scan(headers, true);
    let upgrade = is_http11
        && has.upgrade
        && has.connection
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    // Taken before a Connection token could name (and so remove) them.
    let found = RequestHeaders {
        upgrade,
        target_port: has
            .target_port
            .then(|| headers.remove(TARGET_PORT))
            .flatten(),
        orig_proto: has.orig_proto.then(|| headers.remove(ORIG_PROTO)).flatten(),
    };
    if has.expect {
        headers.remove(header::EXPECT);
    }
    strip(headers, &has, upgrade);
    found
}

/// Which of the names the strip cares about the headers hold; `request` adds those only a
/// request can carry.
fn scan(headers: &HeaderMap, request: bool) -> Present {
    let mut has = Present {
        plain_connection: true,
        ..Present::default()
    };
    // Matched as strings, one comparison per header whatever the number of names; the names
    // are those of the constants (`KEEP_ALIVE`, `TARGET_PORT`, ...), which a test checks.
    for (name, value) in headers.iter() {
        match name.as_str() {
            "connection" => {
                has.connection = true;
                has.plain_connection &= names_no_header(value);
            }
            "transfer-encoding" => has.transfer_encoding = true,
            "upgrade" => has.upgrade = true,
            "te" => has.te = true,
            "keep-alive" => has.keep_alive = true,
            "proxy-connection" => has.proxy_connection = true,
            "expect" if request => has.expect = true,
            "trellis-target-port" if request => has.target_port = true,
            "trellis-orig-proto" if request => has.orig_proto = true,
            _ => {}
        }
    }
    has
}

/// Removes the hop-by-hop headers `has` found (see [`strip_hop_by_hop`]).
fn strip(headers: &mut HeaderMap, has: &Present, upgrade: bool) {
    if has.connection && !has.plain_connection {
        // Headers the Connection header names. Names handled below anyway need no lookup
        // (nor a `HeaderName`): `upgrade` is kept on upgrades and removed otherwise; only
        // other names (rare) are collected.
        let named = |t: &&str| {
            ![
                "keep-alive",
                "proxy-connection",
                "transfer-encoding",
                "connection",
                "upgrade",
            ]
            .iter()
            .any(|n| t.eq_ignore_ascii_case(n))
        };
        if connection_tokens(headers).any(|t| named(&t)) {
            let named: Vec<HeaderName> = connection_tokens(headers)
                .filter(named)
                .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
    }
    if has.keep_alive {
        headers.remove(KEEP_ALIVE);
    }
    if has.proxy_connection {
        headers.remove(PROXY_CONNECTION);
    }
    if has.transfer_encoding {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        if has.connection {
            headers.remove(header::CONNECTION);
        }
        if has.upgrade {
            headers.remove(header::UPGRADE);
        }
    }
    // TE may only say "trailers" on HTTP/2, and gRPC needs exactly that to pass. (A `te`
    // token in Connection removed it above, and then it is not kept.)
    if has.te {
        let keep_te = headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
        headers.remove(header::TE);
        if keep_te {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// Whether a Connection value names no header (nearly every HTTP/1.1 message that has one
/// says just `keep-alive` or `close`), so the token scan can be skipped.
fn names_no_header(value: &HeaderValue) -> bool {
    let v = value.as_bytes();
    v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
}

/// Which hop-by-hop names a header map holds.
#[derive(Default)]
struct Present {
    connection: bool,
    /// Every Connection value is `keep-alive` or `close` (or there is none).
    plain_connection: bool,
    transfer_encoding: bool,
    upgrade: bool,
    te: bool,
    keep_alive: bool,
    proxy_connection: bool,
    /// Looked for in requests only ([`strip_request`]).
    expect: bool,
    target_port: bool,
    orig_proto: bool,
}

/// The HTTP version spoken on the next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HopVersion {
    Http1,
    Http2,
}

/// Chooses the next hop's version and whether to tag the request with [`ORIG_PROTO`].
///
/// Upgrades always go over HTTP/1.1 (HTTP/2 has no `Upgrade`). Outbound to a meshed peer
/// (`meshed_upgrade` is `Some(h2_upgrade)`; `None` for any other hop), every other request
/// rides the multiplexed HTTP/2 hop, unless the backend's `h2UpgradePolicy` is `DO_NOT_UPGRADE`
/// (`Some(false)`). Inbound, a tagged request goes back to HTTP/1.1. Otherwise the
/// application's own version is kept.
pub fn choose_version(
    direction: Direction,
    incoming: Version,
    upgrade: bool,
    meshed_upgrade: Option<bool>,
    tagged_h1: bool,
) -> (HopVersion, bool) {
    let own = if incoming == Version::HTTP_2 {
        HopVersion::Http2
    } else {
        HopVersion::Http1
    };
    if upgrade {
        return (HopVersion::Http1, false);
    }
    match direction {
        Direction::Outbound if meshed_upgrade == Some(true) => {
            (HopVersion::Http2, own == HopVersion::Http1)
        }
        Direction::Inbound if tagged_h1 => (HopVersion::Http1, false),
        _ => (own, false),
    }
}

/// Rewrites a request for an HTTP/1.1 hop: origin-form target, and a Host header (taken from an
/// HTTP/2 `:authority`) since HTTP/1.1 requires one.
pub fn to_http1<B>(req: &mut Request<B>) {
    if !req.headers().contains_key(header::HOST)
        && let Some(value) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, value);
    }
    if req.version() == Version::HTTP_2 {
        *req.version_mut() = Version::HTTP_11;
    }
}

/// Rewrites a request for an HTTP/2 hop: an absolute URI whose authority is the Host header
/// (HTTP/2 carries it as `:authority`), falling back to `fallback_authority`.
///
/// A Host that is not a valid authority (`a b`, `x, y`: hyper does not judge it) stays a Host
/// header, passed on as the client sent it for the application to judge as it would without
/// the mesh, and `:authority` is the fallback: h2 refuses to send a request with neither scheme
/// nor authority, so the client got a 502 for its own bad Host (found by `fuzz/` http1_head).
pub fn to_http2<B>(req: &mut Request<B>, fallback_authority: impl std::fmt::Display) {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<Authority>().ok());
    let host_unusable = req.uri().authority().is_none()
        && host.is_none()
        && req.headers().contains_key(header::HOST);
    // The fallback (the hop's address) is formatted only when it is used: most requests carry
    // a Host, and formatting a socket address cost every request about 1,700 instructions
    // (callgrind, the mTLS client of bench/floor_profile.py).
    let authority = req
        .uri()
        .authority()
        .cloned()
        .or(host)
        .or_else(|| fallback_authority.to_string().parse().ok());
    if let Some(authority) = authority {
        // From parts, not a builder: the path and query are reused as parsed (a cheap clone of
        // shared bytes) instead of parsed and copied again for every request.
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(authority);
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    if !host_unusable || req.uri().authority().is_none() {
        req.headers_mut().remove(header::HOST);
    }
    *req.version_mut() = Version::HTTP_2;
}

/// A response the proxy makes itself, tagged with [`TRELLIS_ERROR`].
pub fn error_response(status: StatusCode, reason: &'static str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(format!("{reason}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(TRELLIS_ERROR, HeaderValue::from_static(reason));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// An HTTP/1.1 request (the builder's default version) with these headers.
    fn request(pairs: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::new(());
        *req.headers_mut() = headers(pairs);
        req
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-connection", "close"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-app"]);
    }

    #[test]
    fn a_request_loses_expect_and_hands_over_the_mesh_headers() {
        let mut req = request(&[
            ("connection", "keep-alive, trellis-target-port"),
            ("Trellis-Target-Port", "8080"),
            ("trellis-orig-proto", "HTTP/1.1"),
            ("expect", "100-continue"),
            ("x-app", "kept"),
        ]);
        let found = strip_request(&mut req);
        assert!(!found.upgrade);
        assert_eq!(found.target_port.unwrap(), "8080");
        assert_eq!(found.orig_proto.unwrap(), ORIG_PROTO_HTTP1);
        let names: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-app"]);
        // A response keeps them: they only mean something on requests.
        let mut h = headers(&[("expect", "x"), ("trellis-orig-proto", "HTTP/1.1")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
        let found = strip_request(&mut request(&[("x-app", "1")]));
        assert!(found.target_port.is_none() && found.orig_proto.is_none());
        // The scan matches these names as strings.
        let names = [&KEEP_ALIVE, &PROXY_CONNECTION, &TARGET_PORT, &ORIG_PROTO];
        let spelled = names.map(HeaderName::as_str);
        assert_eq!(
            spelled,
            [
                "keep-alive",
                "proxy-connection",
                "trellis-target-port",
                "trellis-orig-proto"
            ]
        );
    }

    #[test]
    fn te_named_in_connection_is_dropped_and_plain_messages_are_untouched() {
        let mut h = headers(&[
            ("connection", "te, close"),
            ("te", "trailers"),
            ("close", "x"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut h = headers(&[("content-length", "3"), ("x-app", "kept")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn plain_connection_values_are_removed_and_name_nothing() {
        let mut h = headers(&[
            ("Connection", "Keep-Alive"),
            ("keep-alive", "timeout=5"),
            ("close", "kept: not named"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["close", "x-app"]);
        // Two values, one of which names a header: the scan still runs.
        let mut h = headers(&[
            ("connection", "close"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn keeps_te_trailers_and_upgrade_on_upgrades() {
        let mut h = headers(&[
            ("te", "trailers, deflate"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn a_request_that_asks_to_upgrade_keeps_its_upgrade_headers() {
        let mut req = request(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "timeout=5"),
        ]);
        assert!(strip_request(&mut req).upgrade);
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers()["connection"], "upgrade");
        assert!(!req.headers().contains_key("keep-alive"));
        // Not named by Connection, or not HTTP/1.1: no upgrade, and the headers go.
        let mut req = request(&[("upgrade", "websocket")]);
        assert!(!strip_request(&mut req).upgrade);
        assert!(req.headers().is_empty());
        let mut req = request(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        *req.version_mut() = Version::HTTP_2;
        assert!(!strip_request(&mut req).upgrade);
        assert!(req.headers().is_empty());
    }

    #[test]
    fn version_choice() {
        use Direction::*;
        use HopVersion::*;
        let h1 = Version::HTTP_11;
        let h2 = Version::HTTP_2;
        assert_eq!(
            choose_version(Outbound, h1, false, Some(true), false),
            (Http2, true)
        );
        assert_eq!(
            choose_version(Outbound, h2, false, Some(true), false),
            (Http2, false)
        );
        assert_eq!(
            choose_version(Outbound, h1, true, Some(true), false),
            (Http1, false)
        );
        assert_eq!(
            choose_version(Outbound, h1, false, None, false),
            (Http1, false)
        );
        // h2UpgradePolicy: DO_NOT_UPGRADE keeps each request's own version to a meshed peer.
        assert_eq!(
            choose_version(Outbound, h1, false, Some(false), false),
            (Http1, false)
        );
        assert_eq!(
            choose_version(Outbound, h2, false, Some(false), false),
            (Http2, false)
        );
        assert_eq!(
            choose_version(Outbound, h2, false, None, false),
            (Http2, false)
        );
        assert_eq!(
            choose_version(Inbound, h2, false, None, true),
            (Http1, false)
        );
        assert_eq!(
            choose_version(Inbound, h2, false, None, false),
            (Http2, false)
        );
        assert_eq!(
            choose_version(Inbound, h1, false, None, false),
            (Http1, false)
        );
    }

    #[test]
    fn converts_between_versions() {
        let mut req = Request::builder()
            .uri("/a?b")
            .header("host", "web:80")
            .body(())
            .unwrap();
        to_http2(&mut req, "10.0.0.1:80");
        assert_eq!(req.uri().to_string(), "http://web:80/a?b");
        assert!(!req.headers().contains_key("host"));
        to_http1(&mut req);
        assert_eq!(req.headers()["host"], "web:80");
        assert_eq!(req.version(), Version::HTTP_11);
        let mut bare = Request::builder()
            .uri("/")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        to_http2(&mut bare, "10.0.0.1:80");
        assert_eq!(bare.uri().to_string(), "http://10.0.0.1:80/");
    }

    /// The fallback authority is formatted only for a request that has none: formatting the
    /// hop's address for every request was a measurable share of an HTTP/2 hop's cost.
    #[test]
    fn the_fallback_authority_is_not_formatted_when_the_request_has_one() {
        struct MustNotFormat;
        impl std::fmt::Display for MustNotFormat {
            fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                panic!("the fallback authority was formatted although the request had a Host");
            }
        }
        let mut req = Request::builder()
            .uri("/p?q=1")
            .header("host", "reviews:9080")
            .body(())
            .unwrap();
        to_http2(&mut req, MustNotFormat);
        assert_eq!(req.uri().to_string(), "http://reviews:9080/p?q=1");
        let mut absolute = Request::builder()
            .uri("http://ratings:9080/r")
            .body(())
            .unwrap();
        to_http2(&mut absolute, MustNotFormat);
        assert_eq!(absolute.uri().to_string(), "http://ratings:9080/r");
    }

    /// Regression (fuzz/ http1_head): a Host that is no authority used to leave the HTTP/2
    /// request with neither `:authority` nor Host, which cannot be sent (a 502).
    #[test]
    fn an_invalid_host_survives_the_http2_hop() {
        for host in ["reviews:454 HTTP/G1.1", "a, b", "x@y z"] {
            let mut req = Request::builder()
                .uri("/a")
                .header("host", host)
                .body(())
                .unwrap();
            to_http2(&mut req, "10.0.0.1:80");
            assert_eq!(req.uri().to_string(), "http://10.0.0.1:80/a", "{host}");
            assert_eq!(req.headers()["host"], host);
            to_http1(&mut req);
            assert_eq!(req.headers()["host"], host);
        }
    }

    #[test]
    fn error_responses_are_tagged() {
        let r = error_response(StatusCode::SERVICE_UNAVAILABLE, "no endpoints");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[TRELLIS_ERROR], "no endpoints");
    }
}
