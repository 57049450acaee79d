//! Gateway API routes' backends in other namespaces. The spec lets an HTTPRoute or GRPCRoute
//! name a Service in another namespace only where a `ReferenceGrant` in that namespace has a
//! `from` entry for the route's kind and namespace and a `to` entry for core `Service` (every
//! name, or this one). Without one the reference is `RefNotPermitted`: the route's parent
//! status says so, and the backend receives no traffic.
//!
//! What requests that would have gone to a refused backend get: when every backend of a rule
//! is refused, the rule forwards to nothing, which the proxy answers with 500 (the spec's
//! answer); when only some are, a refused one keeps its weight but names a Service that
//! cannot exist (`<name>.ref-not-permitted`, a dot no Service name has), so its share gets the
//! proxy's 503 `no endpoints`, as for a backend whose Service is missing. A refused mirror is
//! left out. VirtualServices bound to Istio gateways are Istio's: no grant is asked of them.
//!
//! Compile and status share [`refused`], so that what status reports is what is served.

use std::collections::BTreeSet;

use trellis_config::gateways::{GatewayResource, GatewayRoutes, ReferenceGrant};
use trellis_config::traffic::RouteApi;
use trellis_model::ServiceKey;
use trellis_model::route::{HttpRoute, RouteAction};

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Whether `grant` lets a `route_kind` (HTTPRoute, GRPCRoute) in `route_ns` use the Service
/// `service`: the grant lives in the Service's namespace, and both the route's group and kind
/// and the core group's Service (with no name, or this name) are listed.
pub fn grants(
    grant: &ReferenceGrant,
    route_kind: &str,
    route_ns: &str,
    service: &ServiceKey,
) -> bool {
    grant.source.namespace == service.namespace
        && grant
            .from
            .iter()
            .any(|(g, k, ns)| g == GATEWAY_GROUP && k == route_kind && ns == route_ns)
        && grant.to.iter().any(|(g, k, n)| {
            matches!(g.as_str(), "" | "core")
                && k == "Service"
                && n.as_deref().is_none_or(|n| n == service.name)
        })
}

/// Whether `route` may send traffic to `service`: same namespace, a route that is not a
/// Gateway API one, or a grant.
pub fn permitted(
    resources: &[GatewayResource],
    route: &GatewayRoutes,
    service: &ServiceKey,
) -> bool {
    route.api != RouteApi::GatewayApi
        || service.namespace == route.source.namespace
        || resources.iter().any(|r| {
            matches!(r, GatewayResource::ReferenceGrant(g)
                if grants(g, &route.source.kind, &route.source.namespace, service))
        })
}

/// The Services `route` names (backends and mirrors) that no grant lets it use.
pub fn refused(resources: &[GatewayResource], route: &GatewayRoutes) -> BTreeSet<ServiceKey> {
    let mut out = BTreeSet::new();
    for h in &route.http {
        let forward = match &h.action {
            RouteAction::Forward(bs) => &bs[..],
            _ => &[],
        };
        let named = forward
            .iter()
            .map(|w| &w.backend.service)
            .chain(h.mirrors.iter().map(|m| &m.backend.service));
        for s in named {
            if !permitted(resources, route, s) {
                out.insert(s.clone());
            }
        }
    }
    out
}

/// What is wrong with `service` for `route`, for compile problems and status messages.
pub fn message(route: &GatewayRoutes, service: &ServiceKey) -> String {
    format!(
        "backendRef Service {}/{} is in another namespace and no ReferenceGrant there allows {} from namespace {:?}",
        service.namespace, service.name, route.source.kind, route.source.namespace
    )
}

/// `routes` (rules of `route`) as the gateway serves them: refused backends take no traffic
/// (see the module comment for what requests get instead).
pub fn enforce(
    refused: &BTreeSet<ServiceKey>,
    routes: impl Iterator<Item = HttpRoute>,
) -> Vec<HttpRoute> {
    routes
        .map(|mut r| {
            if refused.is_empty() {
                return r;
            }
            if let RouteAction::Forward(bs) = &mut r.action {
                if bs.iter().all(|w| refused.contains(&w.backend.service)) {
                    bs.clear();
                } else {
                    for w in bs.iter_mut() {
                        if refused.contains(&w.backend.service) {
                            w.backend.service = ServiceKey::new(
                                w.backend.service.namespace.clone(),
                                format!("{}.ref-not-permitted", w.backend.service.name),
                            );
                        }
                    }
                }
            }
            r.mirrors.retain(|m| !refused.contains(&m.backend.service));
            r
        })
        .collect()
}

#[cfg(test)]
mod tests;
