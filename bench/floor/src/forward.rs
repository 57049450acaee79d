//! The floor forwarder: what any HTTP forwarder built on hyper must do, and nothing more.
//!
//! Per request it rewrites the URI to the upstream, drops hop-by-hop headers, and sends the
//! request over hyper-util's pooled client (HTTP/1.1 keep-alive pool, or one multiplexed h2c
//! connection when the request came in over HTTP/2), streaming both bodies. No TLS, no metrics,
//! no routing, no timeouts, no logging: the cost of a hop that a proxy cannot avoid.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type Body = Either<Incoming, Empty<Bytes>>;

struct Upstream {
    authority: Authority,
    http1: Client<HttpConnector, Incoming>,
    http2: Client<HttpConnector, Incoming>,
}

pub async fn serve(listener: TcpListener, upstream: SocketAddr) -> anyhow::Result<()> {
    let mut connector = HttpConnector::new();
    // Small requests and answers: without TCP_NODELAY each would wait for delayed ACKs.
    connector.set_nodelay(true);
    let http1 = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector.clone());
    let http2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let authority: Authority = upstream.to_string().parse()?;
    let upstream = Arc::new(Upstream {
        authority,
        http1,
        http2,
    });
    let server = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: wait instead of spinning.
                eprintln!("bench-floor: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let upstream = upstream.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| forward(upstream.clone(), req));
            // A client that goes away mid-request is not the forwarder's error.
            let _ = server.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn forward(
    upstream: Arc<Upstream>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(upstream.authority.clone());
    parts.path_and_query = Some(
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    match Uri::from_parts(parts) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    }
    strip_hop_by_hop(req.headers_mut());
    let client = if req.version() == Version::HTTP_2 {
        &upstream.http2
    } else {
        &upstream.http1
    };
    match client.request(req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, Either::Left(body)))
        }
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Either::Right(Empty::new()));
    *resp.status_mut() = code;
    resp
}

/// RFC 9110 §7.6.1: headers named in `Connection`, and the fixed hop-by-hop ones, are for this
/// hop only. `te: trailers` stays (gRPC over HTTP/2 needs it end to end).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(connection) = headers.remove(header::CONNECTION)
        && let Ok(list) = connection.to_str()
    {
        for name in list.split(',') {
            if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                headers.remove(name);
            }
        }
    }
    for name in [
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-end", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["te", "x-end"]);
    }
}
