//! The HTTP/1 request head path: the bytes a client sends reach the proxy's HTTP/1 server
//! (hyper, built as `serve_http1` builds it, with the proxy's `HeadTimer`), and every head hyper
//! accepts goes through the rules the proxy adds on top, in the order `forward::HttpForward`
//! applies them: `strip_request` (upgrade recognition, the `trellis-target-port` hint and
//! `trellis-orig-proto` tag taken off, hop-by-hop and `Expect` removal), the authority (URI or
//! `Host`) that route matching sees, then the rewrites for the next hop's version
//! (`to_http1`/`to_http2`, the orig-proto tag) and a route's header edits.
//!
//! Checked: nothing panics or hangs; the upgrade is recognised as RFC 9110 §7.8 says (an
//! HTTP/1.1 request whose `Connection` names its `Upgrade`); after the strip no hop-by-hop
//! header is left (nor any header the `Connection` header named, nor `Expect` or the mesh's
//! own headers); a rewrite for HTTP/2 carries the authority in the URI and leaves no `Host`
//! (unless it could not be an authority: then it is passed on as sent); an HTTP/1 request
//! carried over the meshed HTTP/2 hop and turned back into HTTP/1.1 by the inbound proxy keeps
//! its `Host`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_model::matching::{HttpMatch, RequestView, StringMatch};
use trellis_model::route::HeaderModifier;
use trellis_proxy::filters::{HeaderEdits, shadow_authority};
use trellis_proxy::http::{
    HopVersion, ORIG_PROTO, ORIG_PROTO_HTTP1, TARGET_PORT, choose_version, strip_request, to_http1,
    to_http2,
};
use trellis_proxy::telemetry::Direction;
use trellis_proxy::transport::HeadTimer;

/// The most a connection may take in memory; far more than any input's work needs.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// Names hop-by-hop removal must leave no trace of (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &["keep-alive", "proxy-connection", "transfer-encoding"];

/// The fallback authority of an HTTP/2 hop: the endpoint address, as `send` passes it.
const HOP_ADDR: &str = "10.0.0.1:9080";

pub fn check_http1_head(data: &[u8]) {
    // The same bytes as an upstream's answer to the direct HTTP/1.1 client.
    crate::h1_response::check_h1_response(data);
    // The same bytes as a client's request to the direct HTTP/1.1 server path.
    crate::h1_request::check_h1_request(data);
    let rt = crate::runtime();
    let served = rt
        .block_on(async { tokio::time::timeout(CONNECTION_DEADLINE, serve(data.to_vec())).await });
    assert!(served.is_ok(), "the HTTP/1 connection hung on closed input");
}

/// Writes the bytes and closes, as a client that sends and hangs up; reads what comes back so
/// the server never blocks on a full pipe.
async fn serve(data: Vec<u8>) {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let svc = service_fn(|req: Request<Incoming>| async move {
        head_path(&req);
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(HeadTimer::default())
        .serve_connection(TokioIo::new(server), svc)
        .with_upgrades();
    let talk = async move {
        let _ = client.write_all(&data).await;
        let _ = client.shutdown().await;
        let mut sink = Vec::new();
        let _ = client.read_to_end(&mut sink).await;
    };
    // Errors are the client's bad bytes, answered by hyper; only a panic or a hang matters.
    let (_served, ()) = tokio::join!(conn, talk);
}

/// A copy of the head without the body, as each rewrite below needs its own.
fn head_of<B>(req: &Request<B>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

fn head_path<B>(incoming: &Request<B>) {
    let named = connection_names(incoming.headers());
    for direction in [Direction::Inbound, Direction::Outbound] {
        let mut req = head_of(incoming);
        // As `HttpForward::forward`.
        let found = strip_request(&mut req);
        let upgrade = found.upgrade;
        assert_eq!(upgrade, asks_upgrade(incoming), "upgrade misjudged");
        let _port = found
            .target_port
            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok());
        let tagged = found.orig_proto.is_some_and(|v| v == ORIG_PROTO_HTTP1)
            && direction == Direction::Inbound;
        check_stripped(req.headers(), upgrade, &named);

        let authority = authority(&req).to_string();
        match_routes(&req, &authority);
        let _ = shadow_authority(&authority);
        edit_headers(&req);

        for meshed_upgrade in [None, Some(false), Some(true)] {
            let (version, tag) =
                choose_version(direction, req.version(), upgrade, meshed_upgrade, tagged);
            let mut next = head_of(&req);
            match version {
                HopVersion::Http1 => {
                    to_http1(&mut next);
                    assert_ne!(next.version(), Version::HTTP_2, "HTTP/1 hop kept HTTP/2");
                    if let Some(a) = req.uri().authority() {
                        assert!(
                            next.headers().contains_key(header::HOST)
                                || HeaderValue::from_str(a.as_str()).is_err(),
                            "an HTTP/1 hop without Host for {a}"
                        );
                    }
                }
                HopVersion::Http2 => {
                    to_http2(&mut next, HOP_ADDR);
                    if tag {
                        next.headers_mut().insert(ORIG_PROTO, ORIG_PROTO_HTTP1);
                    }
                    check_http2(&req, &next);
                    if tag {
                        round_trip(&req, next);
                    }
                }
            }
        }
    }
}

/// The oracle for upgrade recognition, written apart from the proxy's: HTTP/1.1, an `Upgrade`
/// header, and a `Connection` token naming it.
fn asks_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The header names the `Connection` header lists (other than the ones kept on an upgrade).
fn connection_names(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

fn check_stripped(headers: &HeaderMap, upgrade: bool, named: &[HeaderName]) {
    for name in HOP_BY_HOP {
        assert!(!headers.contains_key(*name), "{name} survived");
    }
    assert!(!headers.contains_key(ORIG_PROTO), "orig-proto survived");
    assert!(!headers.contains_key(TARGET_PORT), "target-port survived");
    assert!(!headers.contains_key(header::EXPECT), "Expect survived");
    if upgrade {
        let connection: Vec<_> = headers.get_all(header::CONNECTION).iter().collect();
        assert_eq!(connection, [HeaderValue::from_static("upgrade")]);
    } else {
        assert!(
            !headers.contains_key(header::CONNECTION),
            "Connection survived"
        );
        assert!(!headers.contains_key(header::UPGRADE), "Upgrade survived");
    }
    for name in named {
        let kept_on_upgrade = upgrade && (name == header::UPGRADE || name == header::CONNECTION);
        // `te: trailers` is put back on purpose (gRPC); any other named header must be gone.
        if !kept_on_upgrade && name != header::TE {
            assert!(
                !headers.contains_key(name),
                "{name} was named by Connection and survived"
            );
        }
    }
    for te in headers.get_all(header::TE) {
        assert_eq!(te, "trailers", "TE other than trailers survived");
    }
}

/// As `forward::routed`: the URI's authority (HTTP/2, absolute form) or the Host header.
fn authority<B>(req: &Request<B>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
        .unwrap_or("")
}

/// Route matching sees the head as the proxy builds its view of it.
fn match_routes<B>(req: &Request<B>, authority: &str) {
    let labels = BTreeMap::new();
    let view = RequestView {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query(),
        authority,
        headers: req.headers(),
        port: 9080,
        source_labels: &labels,
        source_namespace: "default",
    };
    let conditions = [
        HttpMatch {
            authority: Some(StringMatch::Exact("reviews:9080".into())),
            ..HttpMatch::default()
        },
        HttpMatch {
            authority: Some(StringMatch::Prefix("reviews".into())),
            method: Some("GET".into()),
            ..HttpMatch::default()
        },
    ];
    for m in &conditions {
        let _ = m.matches(&view);
    }
}

/// A route's header edits with names and values taken from the request itself.
fn edit_headers<B>(req: &Request<B>) {
    let pairs: Vec<(String, String)> = req
        .headers()
        .iter()
        .take(4)
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            )
        })
        .collect();
    let modifier = HeaderModifier {
        set: pairs.clone(),
        add: pairs.clone(),
        remove: pairs.iter().map(|(n, _)| n.clone()).collect(),
    };
    let mut headers = req.headers().clone();
    HeaderEdits::compile(&modifier).apply(&mut headers);
}

fn check_http2<B>(before: &Request<B>, next: &Request<()>) {
    assert_eq!(next.version(), Version::HTTP_2);
    // Only a Host that could not be the authority stays, for the application to judge.
    if let Some(host) = next.headers().get(header::HOST) {
        let usable = host
            .to_str()
            .is_ok_and(|h| h.parse::<http::uri::Authority>().is_ok());
        assert!(
            before.uri().authority().is_none() && !usable,
            "Host {host:?} left on an HTTP/2 hop"
        );
    }
    assert!(
        next.uri().authority().is_some(),
        "HTTP/2 hop without :authority for {:?} (Host {:?})",
        before.uri(),
        before.headers().get(header::HOST)
    );
}

/// The inbound proxy's side of the meshed hop: the tag comes off and the request goes back to
/// HTTP/1.1 with the Host it had.
fn round_trip(original: &Request<()>, mut hop: Request<()>) {
    let tagged = hop
        .headers_mut()
        .remove(ORIG_PROTO)
        .is_some_and(|v| v == ORIG_PROTO_HTTP1);
    assert!(tagged, "the orig-proto tag did not survive the hop");
    let (version, _) = choose_version(Direction::Inbound, hop.version(), false, None, tagged);
    assert_eq!(version, HopVersion::Http1);
    to_http1(&mut hop);
    let sent = authority(original);
    let arrived = hop
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    if !sent.is_empty() {
        assert_eq!(arrived, Some(sent), "Host changed across the meshed hop");
    }
}

#[cfg(test)]
mod tests {
    use super::check_http1_head;
    use crate::input::Rng;

    const PIECES: &[&str] = &[
        "GET / HTTP/1.1\r\n",
        "POST /a?b=c HTTP/1.1\r\n",
        "GET http://reviews:9080/x HTTP/1.1\r\n",
        "CONNECT reviews:9080 HTTP/1.1\r\n",
        "OPTIONS * HTTP/1.1\r\n",
        "Host: reviews:9080\r\n",
        "Host: [::1]:80\r\n",
        "Host: a b\r\n",
        "Host: \r\n",
        "Connection: upgrade, te, x-a\r\n",
        "Connection: keep-alive\r\n",
        "Connection: close\r\n",
        "Upgrade: websocket\r\n",
        "TE: trailers, gzip\r\n",
        "TE: gzip\r\n",
        "Keep-Alive: 5\r\n",
        "Proxy-Connection: x\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Content-Length: 3\r\n",
        "Expect: 100-continue\r\n",
        "trellis-orig-proto: HTTP/1.1\r\n",
        "trellis-target-port: 9080\r\n",
        "trellis-target-port: 99999\r\n",
        "x-a: 1\r\n",
        "\r\n",
        "abc",
        "0\r\n\r\n",
        "\u{e9}",
        "\r",
        ":",
    ];

    #[test]
    fn seeded_random_inputs() {
        let mut rng = Rng(0x4771_1ead_2026_0012);
        // Each input is a whole in-memory connection: 2,000 take a few seconds in debug.
        for _ in 0..2_000 {
            let mut input = String::new();
            if rng.below(4) != 0 {
                input.push_str(PIECES[rng.below(4)]);
            }
            for _ in 0..rng.below(10) {
                input.push_str(PIECES[rng.below(PIECES.len())]);
            }
            input.push_str("\r\n");
            let bytes = if rng.below(8) == 0 {
                rng.mutate(input.as_bytes())
            } else {
                input.into_bytes()
            };
            check_http1_head(&bytes);
        }
    }

    #[test]
    fn known_heads() {
        for head in [
            "GET / HTTP/1.1\r\nHost: reviews:9080\r\nConnection: x-a, te\r\nx-a: 1\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: r\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET http://reviews:9080/x HTTP/1.1\r\nHost: other\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ] {
            check_http1_head(head.as_bytes());
        }
    }
}
