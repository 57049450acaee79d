//! Gateway API status, pure: from the gateway resources in force, what the spec asks a
//! controller to report on the objects it serves.
//!
//! - A `Gateway` of a served class: `status.listeners[]` (`name`, `supportedKinds`,
//!   `attachedRoutes`, conditions `Accepted`, `ResolvedRefs`, `Programmed`). Its own
//!   `Accepted`/`Programmed` conditions are the status writer's, as for every mesh kind.
//! - An `HTTPRoute`/`GRPCRoute`: `status.parents[]`, one per parentRef naming a served Gateway
//!   (`parentRef`, `controllerName`, conditions `Accepted` and `ResolvedRefs`). `ResolvedRefs`
//!   is False with `RefNotPermitted` for a backend in another namespace no ReferenceGrant
//!   allows ([`super::backend_refs`]), else with `BackendNotFound` for a missing Service.
//!
//! Attachment is [`super::attach_parent`], the rule compile serves by. Gateways of classes
//! served by another controller are theirs to report on: [`Report::foreign`] lists them so
//! the writer leaves them alone, and no route parent is written for them.
//!
//! Conditions carry no `lastTransitionTime` or `observedGeneration` here (the writer stamps
//! them), so that an unchanged report compares equal and is not written again.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use trellis_config::gateways::{ApiGateway, GatewayParent, GatewayResource, GatewayRoutes};
use trellis_model::route::RouteAction;
use trellis_model::{Service, ServiceKey};

use super::{CONTROLLER_NAME, Refusal, attach_parent, listener_certificate, serves_class};

const GROUP: &str = "gateway.networking.k8s.io";

/// What to write, by object key (`Kind namespace/name`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Status fields to merge beside the writer's conditions: `{"listeners": [...]}` for a
    /// Gateway, `{"parents": [...]}` for a route.
    pub fields: BTreeMap<String, Value>,
    /// Gateway API Gateways of classes this control plane does not serve.
    pub foreign: BTreeSet<String>,
}

fn condition(kind: &str, ok: bool, reason: &str, message: impl Into<String>) -> Value {
    json!({
        "type": kind,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message.into(),
    })
}

/// The report for every Gateway API Gateway and route in `resources`; `services` decides
/// whether a route's backends resolve.
pub fn report(resources: &[GatewayResource], services: &BTreeMap<ServiceKey, Service>) -> Report {
    let mut out = Report::default();
    let gateways: Vec<&ApiGateway> = resources
        .iter()
        .filter_map(|r| match r {
            GatewayResource::Api(g) => Some(g),
            _ => None,
        })
        .collect();
    let routes: Vec<&GatewayRoutes> = resources
        .iter()
        .filter_map(|r| match r {
            GatewayResource::Routes(r) if r.gateways.iter().any(|p| !p.istio) => Some(r),
            _ => None,
        })
        .collect();
    let served = |g: &ApiGateway| serves_class(resources, &g.class_name);
    for gw in &gateways {
        if !served(gw) {
            out.foreign.insert(gw.source.to_string());
            continue;
        }
        let listeners: Vec<Value> = gw
            .listeners
            .iter()
            .map(|l| {
                let attached = routes
                    .iter()
                    .filter(|r| {
                        r.gateways
                            .iter()
                            .any(|p| matches!(attach_parent(gw, l, r, p), Some(Ok(_))))
                    })
                    .count();
                let kinds: Vec<Value> = if super::serves_routes(l) {
                    ["HTTPRoute", "GRPCRoute"]
                        .into_iter()
                        .filter(|k| l.allowed.kinds.is_empty() || l.allowed.kinds.iter().any(|a| a == k))
                        .map(|k| json!({"group": GROUP, "kind": k}))
                        .collect()
                } else {
                    Vec::new()
                };
                let refs = match listener_certificate(resources, gw, l) {
                    Ok(_) => condition("ResolvedRefs", true, "ResolvedRefs", "references resolved"),
                    Err(e) => condition("ResolvedRefs", false, e.reason(), e.message()),
                };
                let resolved = refs["status"] == "True";
                json!({
                    "name": l.name,
                    "supportedKinds": kinds,
                    "attachedRoutes": attached,
                    "conditions": [
                        condition("Accepted", true, "Accepted", "listener accepted"),
                        refs,
                        if resolved {
                            condition("Programmed", true, "Programmed", "served by the gateway workloads of this Gateway")
                        } else {
                            condition("Programmed", false, "Invalid", "not served: its references do not resolve")
                        },
                    ],
                })
            })
            .collect();
        out.fields
            .insert(gw.source.to_string(), json!({ "listeners": listeners }));
    }
    for r in routes {
        let parents: Vec<Value> = r
            .gateways
            .iter()
            .filter(|p| !p.istio)
            .filter_map(|p| {
                let gw = gateways
                    .iter()
                    .find(|g| g.source.namespace == p.namespace && g.source.name == p.name)?;
                served(gw).then(|| parent_status(resources, gw, r, p, services))
            })
            .collect();
        if !parents.is_empty() {
            out.fields
                .insert(r.source.to_string(), json!({ "parents": parents }));
        }
    }
    out
}

fn parent_status(
    resources: &[GatewayResource],
    gw: &ApiGateway,
    route: &GatewayRoutes,
    parent: &GatewayParent,
    services: &BTreeMap<ServiceKey, Service>,
) -> Value {
    let mut parent_ref = json!({
        "group": GROUP,
        "kind": "Gateway",
        "namespace": parent.namespace,
        "name": parent.name,
    });
    if let Some(s) = &parent.section_name {
        parent_ref["sectionName"] = json!(s);
    }
    if let Some(p) = parent.port {
        parent_ref["port"] = json!(p);
    }
    let outcomes: Vec<Result<Vec<String>, Refusal>> = gw
        .listeners
        .iter()
        .filter_map(|l| attach_parent(gw, l, route, parent))
        .collect();
    let accepted = if outcomes.iter().any(Result::is_ok) {
        condition("Accepted", true, "Accepted", "attached")
    } else if outcomes.is_empty() {
        let what = match (&parent.section_name, parent.port) {
            (Some(s), _) => format!("no listener named {s:?}"),
            (None, Some(p)) => format!("no listener on port {p}"),
            (None, None) => "no listeners".to_string(),
        };
        condition(
            "Accepted",
            false,
            "NoMatchingParent",
            format!(
                "Gateway {}/{} has {what}",
                gw.source.namespace, gw.source.name
            ),
        )
    } else {
        // A hostname mismatch is the more telling reason when some listener admitted the
        // route's namespace and kind.
        let refusal = outcomes
            .iter()
            .filter_map(|o| o.as_ref().err())
            .max()
            .copied()
            .unwrap_or(Refusal::NotAllowedByListeners);
        let message = match refusal {
            Refusal::NotAllowedByListeners => format!(
                "the listeners of Gateway {}/{} do not allow a {} from namespace {:?} (allowedRoutes, protocol)",
                gw.source.namespace, gw.source.name, route.source.kind, route.source.namespace
            ),
            Refusal::NoMatchingListenerHostname => format!(
                "hostnames {:?} match no listener hostname of Gateway {}/{}",
                route.hosts, gw.source.namespace, gw.source.name
            ),
        };
        condition("Accepted", false, refusal.reason(), message)
    };
    let refused = super::backend_refs::refused(resources, route);
    let missing: BTreeSet<String> = route
        .http
        .iter()
        .filter_map(|h| match &h.action {
            RouteAction::Forward(bs) => Some(bs),
            _ => None,
        })
        .flatten()
        .filter(|w| !services.contains_key(&w.backend.service))
        .map(|w| format!("{}/{}", w.backend.service.namespace, w.backend.service.name))
        .collect();
    // RefNotPermitted before BackendNotFound: whether the Service exists is not the route's
    // to learn until it is allowed to refer to it.
    let resolved = if !refused.is_empty() {
        let messages: Vec<String> = refused
            .iter()
            .map(|s| super::backend_refs::message(route, s))
            .collect();
        condition(
            "ResolvedRefs",
            false,
            "RefNotPermitted",
            messages.join("; "),
        )
    } else if missing.is_empty() {
        condition("ResolvedRefs", true, "ResolvedRefs", "backends resolved")
    } else {
        condition(
            "ResolvedRefs",
            false,
            "BackendNotFound",
            format!(
                "no Service {}",
                missing.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )
    };
    json!({
        "parentRef": parent_ref,
        "controllerName": CONTROLLER_NAME,
        "conditions": [accepted, resolved],
    })
}

/// Sets `lastTransitionTime` (and `observedGeneration`, when known) on every condition in
/// `fields`, as the writer does for its own.
pub fn stamp(fields: &mut Value, now: &Value, generation: Option<i64>) {
    match fields {
        Value::Object(map) => {
            if let Some(Value::Array(conditions)) = map.get_mut("conditions") {
                for c in conditions.iter_mut() {
                    c["lastTransitionTime"] = now.clone();
                    if let Some(g) = generation {
                        c["observedGeneration"] = json!(g);
                    }
                }
            }
            for (k, v) in map.iter_mut() {
                if k != "conditions" {
                    stamp(v, now, generation);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| stamp(v, now, generation)),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
