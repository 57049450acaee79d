//! The checks every HTTP request passes before it is forwarded, in order: request-target
//! length (414), header count (431; HTTP/1 heads are already bounded by hyper, this covers
//! HTTP/2), declared body size (413, where `--max-request-body-size` is set), then load
//! shedding and the concurrent-request cap ([`crate::resilience::shed`], 503). Each refusal is
//! the proxy's own response (`trellis-error`), counted in [`LimitMetrics`].

use http::header::{CONTENT_LENGTH, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};

use super::penalty::AbusivePeers;
use super::{Limit, LimitMetrics, RETRY_AFTER_SECS, ServerLimits};
use crate::http::{ProxyBody, error_response};
use crate::resilience::shed::{InFlight, InFlightGuard, Refusal};
use crate::telemetry::Direction;

/// The limits in force and the in-flight counts they are checked against; one per proxy.
#[derive(Debug)]
pub struct Admission {
    limits: ServerLimits,
    in_flight: [InFlight; 2],
    /// Checked at accept, before a connection costs anything ([`super::penalty`]).
    abusive_peers: AbusivePeers,
}

impl Default for Admission {
    fn default() -> Self {
        Self::new(ServerLimits::default())
    }
}

impl Admission {
    pub fn new(limits: ServerLimits) -> Self {
        Self {
            abusive_peers: AbusivePeers::new(
                limits.abusive_peer_penalty,
                limits.abusive_peer_connections,
            ),
            limits,
            in_flight: Default::default(),
        }
    }

    pub fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    pub fn abusive_peers(&self) -> &AbusivePeers {
        &self.abusive_peers
    }

    /// Admits `req` (the guard counts it in flight until dropped) or answers it (boxed: the
    /// refusal is the rare path, the guard the common one).
    pub fn admit<B>(
        &self,
        d: Direction,
        req: &Request<B>,
        metrics: &LimitMetrics,
    ) -> Result<InFlightGuard<'_>, Box<Response<ProxyBody>>> {
        let refuse = |limit: Limit, status: StatusCode, reason: &'static str| {
            metrics.rejected(d, limit);
            Box::new(error_response(status, reason))
        };
        if target_len(req.uri()) > self.limits.max_uri_bytes {
            return Err(refuse(
                Limit::UriLength,
                StatusCode::URI_TOO_LONG,
                "request target too long",
            ));
        }
        if req.headers().len() > self.limits.max_headers {
            return Err(refuse(
                Limit::Headers,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many request headers",
            ));
        }
        if let Some(max) = self.limits.max_request_body_bytes
            && declared_len(req).is_some_and(|len| len > max)
        {
            return Err(refuse(
                Limit::BodySize,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ));
        }
        let l = &self.limits;
        self.in_flight[d as usize]
            .enter(l.load_shed_in_flight, l.max_concurrent_requests)
            .map_err(|verdict| {
                let mut resp = match verdict {
                    Refusal::Overloaded => refuse(
                        Limit::ConcurrentRequests,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                    ),
                    Refusal::Shed => {
                        metrics.shed(d);
                        Box::new(error_response(StatusCode::SERVICE_UNAVAILABLE, "load shed"))
                    }
                };
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                resp
            })
    }
}

/// Bytes of the request target as the client sent it: path and query, plus scheme and
/// authority in absolute form.
fn target_len(uri: &http::Uri) -> usize {
    let pq = uri.path_and_query().map_or(0, |p| p.as_str().len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    pq + authority + scheme
}

/// `Content-Length`, when present and a number (hyper has already refused a malformed one on
/// HTTP/1).
fn declared_len<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str) -> Request<()> {
        Request::builder().uri(uri).body(()).unwrap()
    }

    #[test]
    fn refusals_have_their_status_and_count() {
        let metrics = LimitMetrics::default();
        let a = Admission::new(ServerLimits {
            max_uri_bytes: 10,
            max_headers: 1,
            max_request_body_bytes: Some(5),
            load_shed_in_flight: Some(1),
            ..ServerLimits::default()
        });
        let d = Direction::Inbound;
        let status = |r: Result<InFlightGuard<'_>, Box<Response<ProxyBody>>>| {
            r.map(|_| 200).unwrap_or_else(|r| r.status().as_u16())
        };
        assert_eq!(status(a.admit(d, &req("/0123456789"), &metrics)), 414);
        let mut two = req("/");
        two.headers_mut().insert("a", HeaderValue::from_static("1"));
        two.headers_mut().insert("b", HeaderValue::from_static("2"));
        assert_eq!(status(a.admit(d, &two, &metrics)), 431);
        let mut big = req("/");
        big.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(6));
        assert_eq!(status(a.admit(d, &big, &metrics)), 413);
        let held = a.admit(d, &req("/"), &metrics).expect("admitted");
        let shed = a.admit(d, &req("/"), &metrics).unwrap_err();
        assert_eq!(shed.status(), 503);
        assert_eq!(shed.headers()[RETRY_AFTER], "1");
        // The other direction has its own count.
        assert!(a.admit(Direction::Outbound, &req("/"), &metrics).is_ok());
        drop(held);
        assert!(a.admit(d, &req("/"), &metrics).is_ok());
        for l in [Limit::UriLength, Limit::Headers, Limit::BodySize] {
            assert_eq!(metrics.rejected_count(d, l), 1, "{l:?}");
        }
    }
}
