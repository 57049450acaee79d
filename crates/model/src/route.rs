//! Routes: what happens to a request once it matches. Every input API (Istio VirtualService,
//! Gateway API HTTPRoute/GRPCRoute, Linkerd ServiceProfile, SMI TrafficSplit) translates into an
//! ordered list of [`HttpRoute`]s per destination; the first route that matches wins, so the
//! translators put routes in their API's precedence order.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ServiceKey;
use crate::matching::{HttpMatch, RequestView};

/// The resource a piece of config came from, for `explain`, status conditions and errors.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A service port and optional subset: one set of endpoints traffic can be split across.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackendRef {
    pub service: ServiceKey,
    /// `None`: the port the request was addressed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A DestinationRule subset name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
}

impl std::fmt::Display for BackendRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.service.name, self.service.namespace)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        if let Some(subset) = &self.subset {
            write!(f, " subset {subset}")?;
        }
        Ok(())
    }
}

/// Header edits (Istio `headers.request|response`, Gateway API header modifier filters).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderModifier {
    /// Replace (or add) these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    /// Append these values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    /// Remove these headers (lowercase names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderModifier {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A backend with its share of the route's traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedBackend {
    pub backend: BackendRef,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "HeaderModifier::is_empty")]
    pub request_headers: HeaderModifier,
    #[serde(default, skip_serializing_if = "HeaderModifier::is_empty")]
    pub response_headers: HeaderModifier,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathRewrite {
    /// Replace the whole path.
    Full(String),
    /// Replace the part the route's path match matched as a prefix.
    Prefix(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    /// 301 unless stated.
    pub status: u16,
}

/// Where a matched request goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    /// Split across backends by weight. All weights zero: the request fails with 500, as Gateway
    /// API specifies for a route with no usable backend.
    Forward(Vec<WeightedBackend>),
    Redirect(Redirect),
    DirectResponse {
        status: u16,
        body: Option<String>,
    },
}

/// A percentage in [0, 100] with sub-percent precision (Istio `Percent`, SMI `900m` weights).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
pub struct Percent(pub f64);

impl Percent {
    pub const ALL: Self = Self(100.0);

    /// Whether a uniform draw in [0, 1) falls inside this share.
    pub fn hit(self, draw: f64) -> bool {
        draw * 100.0 < self.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortStatus {
    Http(u16),
    /// A gRPC status code, answered as HTTP 200 with `grpc-status` in the trailers-only response.
    Grpc(u32),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultDelay {
    pub fixed: Duration,
    pub percent: Percent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultAbort {
    pub status: AbortStatus,
    pub percent: Percent,
}

/// Fault injection (Istio `HTTPFaultInjection`). Delay applies first, then abort, each drawn
/// independently, as Envoy's fault filter does.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// What the fault filter does to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultDecision {
    pub delay: Option<Duration>,
    pub abort: Option<AbortStatus>,
}

impl Fault {
    /// Decides with two uniform draws in [0, 1), so tests and `explain` can fix them.
    pub fn decide(&self, delay_draw: f64, abort_draw: f64) -> FaultDecision {
        FaultDecision {
            delay: self
                .delay
                .as_ref()
                .filter(|d| d.percent.hit(delay_draw))
                .map(|d| d.fixed),
            abort: self
                .abort
                .as_ref()
                .filter(|a| a.percent.hit(abort_draw))
                .map(|a| a.status),
        }
    }
}

/// A copy of the request sent fire-and-forget; its answer is discarded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mirror {
    pub backend: BackendRef,
    pub percent: Percent,
}

/// The conditions under which an attempt is retried.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryOn {
    /// Any 5xx response.
    #[serde(default)]
    pub server_error: bool,
    /// 502, 503 and 504.
    #[serde(default)]
    pub gateway_error: bool,
    #[serde(default)]
    pub connect_failure: bool,
    /// HTTP/2 REFUSED_STREAM.
    #[serde(default)]
    pub refused_stream: bool,
    /// The upstream reset or closed the connection before answering.
    #[serde(default)]
    pub reset: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc_codes: Vec<u32>,
}

impl RetryOn {
    /// Whether an answer with this HTTP status (and gRPC status, if any) is retried.
    pub fn retries_response(&self, status: u16, grpc_status: Option<u32>) -> bool {
        (self.server_error && (500..600).contains(&status))
            || (self.gateway_error && matches!(status, 502..=504))
            || self.statuses.contains(&status)
            || grpc_status.is_some_and(|c| self.grpc_codes.contains(&c))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
}

/// One route: match conditions and what to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpRoute {
    /// Stable, bounded name for metrics and `explain` (`<resource>/<index>` or the API's name).
    pub name: String,
    pub source: ResourceRef,
    /// Any block may match; none means every request matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    pub action: RouteAction,
    #[serde(default, skip_serializing_if = "HeaderModifier::is_empty")]
    pub request_headers: HeaderModifier,
    #[serde(default, skip_serializing_if = "HeaderModifier::is_empty")]
    pub response_headers: HeaderModifier,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// The whole request, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

impl HttpRoute {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req))
    }
}

/// The first route that matches, with its index: first match wins.
pub fn select_route<'r>(
    routes: &'r [HttpRoute],
    req: &RequestView<'_>,
) -> Option<(usize, &'r HttpRoute)> {
    routes.iter().enumerate().find(|(_, r)| r.matches(req))
}

/// Picks a backend by weight from a uniform draw in [0, total weight). `None` when every weight
/// is zero or there are no backends.
pub fn pick_weighted(backends: &[WeightedBackend], draw: u64) -> Option<&WeightedBackend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = draw % total;
    backends.iter().find(|b| {
        let w = u64::from(b.weight);
        if point < w {
            true
        } else {
            point -= w;
            false
        }
    })
}

/// An opaque TCP route (Istio `tcp[]`, SMI TrafficSplit on TCP ports).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpRoute {
    pub name: String,
    pub source: ResourceRef,
    /// Destination port condition; `None` matches every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A TLS route (Istio `tls[]`): the ClientHello's SNI must match one of these names
    /// (`*.suffix` wildcards allowed). Empty: an opaque route, for any connection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_hosts: Vec<String>,
    pub backends: Vec<WeightedBackend>,
}

impl TcpRoute {
    /// Whether a connection to `port` whose ClientHello named `sni` (`None`: not TLS, or no
    /// SNI) takes this route. A TLS route never takes a connection without an SNI.
    pub fn admits(&self, port: u16, sni: Option<&str>) -> bool {
        self.port.is_none_or(|p| p == port)
            && (self.sni_hosts.is_empty()
                || sni.is_some_and(|s| {
                    self.sni_hosts
                        .iter()
                        .any(|p| crate::gateway::host_matches(p, s))
                }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, weight: u32) -> WeightedBackend {
        WeightedBackend {
            backend: BackendRef {
                service: ServiceKey::new("default", "reviews"),
                port: None,
                subset: Some(name.to_string()),
            },
            weight,
            request_headers: HeaderModifier::default(),
            response_headers: HeaderModifier::default(),
        }
    }

    #[test]
    fn weighted_pick_is_exact_over_the_whole_range() {
        let backends = [backend("v1", 90), backend("v3", 10)];
        let mut v1 = 0;
        for draw in 0..100 {
            if pick_weighted(&backends, draw)
                .unwrap()
                .backend
                .subset
                .as_deref()
                == Some("v1")
            {
                v1 += 1;
            }
        }
        assert_eq!(v1, 90);
    }

    #[test]
    fn zero_weights_pick_nothing_and_are_skipped() {
        assert!(pick_weighted(&[backend("v1", 0)], 7).is_none());
        assert!(pick_weighted(&[], 7).is_none());
        let b = [backend("v1", 0), backend("v2", 5)];
        for draw in 0..20 {
            assert_eq!(
                pick_weighted(&b, draw).unwrap().backend.subset.as_deref(),
                Some("v2")
            );
        }
    }

    #[test]
    fn tls_routes_take_matching_sni_only() {
        let route = |port, sni: &[&str]| TcpRoute {
            name: "r".into(),
            source: ResourceRef::default(),
            port,
            sni_hosts: sni.iter().map(|s| s.to_string()).collect(),
            backends: vec![backend("v1", 100)],
        };
        let tls = route(Some(443), &["edition.cnn.com", "*.example.com"]);
        assert!(tls.admits(443, Some("edition.cnn.com")));
        assert!(tls.admits(443, Some("a.example.com")));
        assert!(!tls.admits(443, Some("example.com")));
        assert!(!tls.admits(443, Some("other.com")));
        assert!(!tls.admits(443, None), "no SNI: not a TLS route's");
        assert!(!tls.admits(8443, Some("edition.cnn.com")));
        // An opaque route takes any connection to its port, TLS or not.
        let tcp = route(None, &[]);
        assert!(tcp.admits(443, None) && tcp.admits(1, Some("x")));
    }

    #[test]
    fn fault_draws() {
        let f = Fault {
            delay: Some(FaultDelay {
                fixed: Duration::from_secs(7),
                percent: Percent(100.0),
            }),
            abort: Some(FaultAbort {
                status: AbortStatus::Http(500),
                percent: Percent(10.0),
            }),
        };
        assert_eq!(f.decide(0.99, 0.05).delay, Some(Duration::from_secs(7)));
        assert_eq!(f.decide(0.0, 0.05).abort, Some(AbortStatus::Http(500)));
        assert_eq!(f.decide(0.0, 0.10).abort, None);
    }

    #[test]
    fn retry_conditions() {
        let on = RetryOn {
            gateway_error: true,
            statuses: vec![409],
            ..Default::default()
        };
        assert!(on.retries_response(503, None));
        assert!(!on.retries_response(500, None));
        assert!(on.retries_response(409, None));
        let grpc = RetryOn {
            grpc_codes: vec![14],
            ..Default::default()
        };
        assert!(grpc.retries_response(200, Some(14)));
        assert!(!grpc.retries_response(200, Some(0)));
    }
}
