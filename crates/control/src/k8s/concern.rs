//! Which proxies a mesh config object concerns, for the `Programmed` count ("programmed on
//! N/M proxies": M is the proxies it concerns, not every connected one).
//!
//! Pure: an object's JSON in, its [`Concern`] out ([`concern_of`]); a [`Concern`] and what a
//! proxy stream has told the control plane ([`Proxy`]: its workload and the destinations it
//! subscribed to) in, yes or no out ([`concerns`]). Read from the object as the user wrote it,
//! not from the translated model, so that an object counts the same proxies whether or not
//! another object wins over it.
//!
//! - Host-bound kinds (VirtualService, DestinationRule, ServiceEntry, HTTPRoute, GRPCRoute,
//!   ServiceProfile, TrafficSplit) concern the proxies subscribed to one of their hosts, and
//!   the gateway proxies of the Gateways they are bound to (VirtualService `gateways`, route
//!   `parentRefs` of kind Gateway).
//! - Workload-scoped kinds (PeerAuthentication, AuthorizationPolicy, RequestAuthentication,
//!   Telemetry, WasmPlugin, RateLimitPolicy) and Gateways concern the workloads their selector
//!   picks: in their namespace, or in every namespace from the mesh root namespace (as
//!   `trellis_model::authz::Scope::covers`). An empty selector picks every workload of the
//!   namespace; an Istio Gateway without one picks none, as compile does.
//! - Everything else (ReferenceGrant, HTTPRouteGroup, Secrets, policies with `targetRef(s)`,
//!   whose reach goes through other objects) concerns every connected proxy, as before.
//!
//! This module must not do I/O or decide routing.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use trellis_model::gateway::host_matches;
use trellis_model::{Target, Workload};

use super::kinds::{ConfigKind, GATEWAY_API_GROUP};
use super::objects::object_key;

/// What a proxy stream has told the control plane, as far as `Programmed` needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proxy {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// The hosts it subscribed to, as fully qualified names (`reviews.shop.svc.cluster.local`,
    /// `api.example.com`).
    pub hosts: BTreeSet<String>,
}

impl Proxy {
    pub fn new(workload: &Workload) -> Self {
        Self {
            namespace: workload.namespace.clone(),
            labels: workload.labels.clone(),
            hosts: BTreeSet::new(),
        }
    }

    /// The host a subscription names; `None` for an address (no object names it by host).
    pub fn host_of(target: &Target) -> Option<String> {
        match target {
            Target::Service { service, .. } => Some(service.fqdn()),
            Target::Address(_) => None,
        }
    }
}

/// Workloads picked by labels, in one namespace or (`None`) every namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl Selector {
    fn selects(&self, proxy: &Proxy) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| *ns == proxy.namespace)
            && self
                .labels
                .iter()
                .all(|(k, v)| proxy.labels.get(k) == Some(v))
    }
}

/// Which proxies one object concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Concern {
    /// Every connected proxy.
    All,
    /// No proxy (an Istio Gateway without a selector).
    None,
    /// Proxies subscribed to one of `hosts` (names or `*.suffix` patterns) when `mesh` (bound
    /// to sidecars), and the gateway proxies of the Gateways `gateways` names (object keys).
    Hosts {
        hosts: Vec<String>,
        mesh: bool,
        gateways: Vec<String>,
    },
    /// The workloads a selector picks.
    Workloads(Selector),
}

/// The object's concern, from its JSON (`kind` as watched, `root_namespace` the mesh's).
pub fn concern_of(kind: &ConfigKind, json: &Value, root_namespace: &str) -> Concern {
    let meta = &json["metadata"];
    let namespace = meta["namespace"].as_str().unwrap_or("default");
    let spec = &json["spec"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let hosts = |names: Vec<String>| -> Vec<String> {
        names
            .iter()
            .filter_map(|h| host_name(h, namespace))
            .collect()
    };
    match (kind.group, kind.kind) {
        ("networking.istio.io", "VirtualService") => {
            let mut gateways = strings(&spec["gateways"]);
            // Without `gateways`, Istio binds a VirtualService to the sidecars ("mesh").
            if gateways.is_empty() {
                gateways.push("mesh".into());
            }
            let mesh = gateways.iter().any(|g| g == "mesh");
            let gateways = gateways
                .iter()
                .filter(|g| *g != "mesh")
                .map(|g| {
                    let (ns, name) = g.split_once('/').unwrap_or((namespace, g));
                    object_key("networking.istio.io", "Gateway", ns, name)
                })
                .collect();
            Concern::Hosts {
                hosts: hosts(strings(&spec["hosts"])),
                mesh,
                gateways,
            }
        }
        ("networking.istio.io", "DestinationRule") => Concern::Hosts {
            hosts: hosts(
                spec["host"]
                    .as_str()
                    .map(str::to_owned)
                    .into_iter()
                    .collect(),
            ),
            mesh: true,
            gateways: Vec::new(),
        },
        ("networking.istio.io", "ServiceEntry") => Concern::Hosts {
            hosts: hosts(strings(&spec["hosts"])),
            mesh: true,
            gateways: Vec::new(),
        },
        (GATEWAY_API_GROUP, "HTTPRoute" | "GRPCRoute") => route_concern(spec, namespace),
        ("linkerd.io", "ServiceProfile") => Concern::Hosts {
            // A ServiceProfile is named for the host it describes.
            hosts: hosts(
                meta["name"]
                    .as_str()
                    .map(str::to_owned)
                    .into_iter()
                    .collect(),
            ),
            mesh: true,
            gateways: Vec::new(),
        },
        ("split.smi-spec.io", "TrafficSplit") => Concern::Hosts {
            hosts: hosts(
                spec["service"]
                    .as_str()
                    .map(str::to_owned)
                    .into_iter()
                    .collect(),
            ),
            mesh: true,
            gateways: Vec::new(),
        },
        ("networking.istio.io", "Gateway") => match labels(&spec["selector"]) {
            Some(labels) if !labels.is_empty() => Concern::Workloads(Selector {
                namespace: None,
                labels,
            }),
            _ => Concern::None,
        },
        (GATEWAY_API_GROUP, "Gateway") => Concern::Workloads(Selector {
            namespace: Some(namespace.to_owned()),
            labels: BTreeMap::from([(
                crate::compile::gateway::GATEWAY_NAME_LABEL.to_owned(),
                meta["name"].as_str().unwrap_or_default().to_owned(),
            )]),
        }),
        ("security.istio.io" | "telemetry.istio.io" | "extensions.istio.io" | "trellis.io", _) => {
            if !spec["targetRef"].is_null() || !spec["targetRefs"].is_null() {
                return Concern::All;
            }
            let labels = labels(&spec["selector"]["matchLabels"])
                .or_else(|| labels(&spec["selector"]))
                .unwrap_or_default();
            Concern::Workloads(Selector {
                namespace: (namespace != root_namespace).then(|| namespace.to_owned()),
                labels,
            })
        }
        _ => Concern::All,
    }
}

/// An HTTPRoute's or GRPCRoute's: Service parents (GAMMA) are hosts, Gateway parents gateways.
fn route_concern(spec: &Value, namespace: &str) -> Concern {
    let mut hosts = Vec::new();
    let mut gateways = Vec::new();
    for parent in spec["parentRefs"].as_array().into_iter().flatten() {
        let ns = parent["namespace"].as_str().unwrap_or(namespace);
        let Some(name) = parent["name"].as_str() else {
            continue;
        };
        // The spec's defaults: kind Gateway of the Gateway API's group.
        let kind = parent["kind"].as_str().unwrap_or("Gateway");
        let group = parent["group"].as_str().unwrap_or(GATEWAY_API_GROUP);
        match (group, kind) {
            ("" | "core", "Service") => hosts.extend(host_name(name, ns)),
            (GATEWAY_API_GROUP, "Gateway") => {
                gateways.push(object_key(GATEWAY_API_GROUP, "Gateway", ns, name));
            }
            _ => {}
        }
    }
    let mesh = !hosts.is_empty();
    Concern::Hosts {
        hosts,
        mesh,
        gateways,
    }
}

/// `host` as a proxy's subscription names it: fully qualified, or a `*` pattern kept as is.
fn host_name(host: &str, namespace: &str) -> Option<String> {
    if host.starts_with('*') {
        return Some(host.to_ascii_lowercase());
    }
    trellis_config::traffic::resolve_host(host, namespace).map(|key| key.fqdn())
}

/// A label map (`{k: v}`), `None` when absent or not a map.
fn labels(v: &Value) -> Option<BTreeMap<String, String>> {
    let map = v.as_object()?;
    Some(
        map.iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect(),
    )
}

/// Whether `concern` takes in `proxy`; `gateway` finds a Gateway's own concern by its object
/// key (a bound Gateway that is not there concerns no proxy).
pub fn concerns<'a>(
    concern: &Concern,
    proxy: &Proxy,
    gateway: impl Fn(&str) -> Option<&'a Concern>,
) -> bool {
    match concern {
        Concern::All => true,
        Concern::None => false,
        Concern::Workloads(selector) => selector.selects(proxy),
        Concern::Hosts {
            hosts,
            mesh,
            gateways,
        } => {
            let subscribed = *mesh
                && hosts
                    .iter()
                    .any(|pattern| proxy.hosts.iter().any(|h| host_matches(pattern, h)));
            subscribed
                || gateways.iter().any(
                    |key| matches!(gateway(key), Some(Concern::Workloads(s)) if s.selects(proxy)),
                )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;
    use crate::k8s::kinds::{CONFIG_KINDS, find};

    const ROOT: &str = "trellis-system";

    fn proxy(namespace: &str, labels: &[(&str, &str)], hosts: &[&str]) -> Proxy {
        Proxy {
            namespace: namespace.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            hosts: hosts.iter().map(|h| (*h).into()).collect(),
        }
    }

    fn kind(group: &str, kind: &str) -> &'static ConfigKind {
        find(group, kind).unwrap()
    }

    fn object(namespace: &str, name: &str, spec: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": namespace}, "spec": spec})
    }

    /// The Gateways of the table: an Istio ingress gateway and a Gateway API Gateway.
    fn gateways() -> BTreeMap<String, Concern> {
        let istio = object(
            "shop",
            "web",
            json!({"selector": {"istio": "ingressgateway"}}),
        );
        let api = object("shop", "edge", json!({"gatewayClassName": "trellis"}));
        BTreeMap::from([
            (
                "Gateway.networking.istio.io shop/web".to_string(),
                concern_of(kind("networking.istio.io", "Gateway"), &istio, ROOT),
            ),
            (
                "Gateway.gateway.networking.k8s.io shop/edge".to_string(),
                concern_of(kind(GATEWAY_API_GROUP, "Gateway"), &api, ROOT),
            ),
        ])
    }

    #[test]
    fn which_proxies_each_kind_concerns() {
        const REVIEWS: &str = "reviews.shop.svc.cluster.local";
        const RATINGS: &str = "ratings.shop.svc.cluster.local";
        let reviews_client = proxy("shop", &[("app", "web")], &[REVIEWS]);
        let ratings_client = proxy("shop", &[("app", "web")], &[RATINGS]);
        let external_client = proxy("other", &[("app", "batch")], &["api.example.com"]);
        let ingress = proxy("istio-system", &[("istio", "ingressgateway")], &[]);
        let edge = proxy(
            "shop",
            &[("gateway.networking.k8s.io/gateway-name", "edge")],
            &[],
        );
        let reviews_pod = proxy("shop", &[("app", "reviews")], &[]);
        let proxies = [
            &reviews_client,
            &ratings_client,
            &external_client,
            &ingress,
            &edge,
            &reviews_pod,
        ];
        let istio = "networking.istio.io";
        let security = "security.istio.io";
        // (what, kind, namespace, spec or whole object, which of `proxies` it concerns)
        let table: Vec<(&str, &ConfigKind, &str, Value, [bool; 6])> = vec![
            (
                "a VirtualService for reviews (short name)",
                kind(istio, "VirtualService"),
                "shop",
                json!({"hosts": ["reviews"]}),
                [true, false, false, false, false, false],
            ),
            (
                "a VirtualService for reviews bound to the ingress gateway only",
                kind(istio, "VirtualService"),
                "shop",
                json!({"hosts": ["reviews.shop.svc.cluster.local"], "gateways": ["web"]}),
                [false, false, false, true, false, false],
            ),
            (
                "a VirtualService bound to the gateway (by namespace/name) and the mesh",
                kind(istio, "VirtualService"),
                "default",
                json!({"hosts": ["reviews.shop"], "gateways": ["shop/web", "mesh"]}),
                [true, false, false, true, false, false],
            ),
            (
                "a DestinationRule for ratings",
                kind(istio, "DestinationRule"),
                "shop",
                json!({"host": "ratings"}),
                [false, true, false, false, false, false],
            ),
            (
                "a ServiceEntry for an external host",
                kind(istio, "ServiceEntry"),
                "other",
                json!({"hosts": ["api.example.com"]}),
                [false, false, true, false, false, false],
            ),
            (
                "a ServiceEntry with a wildcard host",
                kind(istio, "ServiceEntry"),
                "other",
                json!({"hosts": ["*.example.com"]}),
                [false, false, true, false, false, false],
            ),
            (
                "a GAMMA HTTPRoute on the reviews Service",
                kind(GATEWAY_API_GROUP, "HTTPRoute"),
                "shop",
                json!({"parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}]}),
                [true, false, false, false, false, false],
            ),
            (
                "an HTTPRoute on the Gateway API Gateway (default kind)",
                kind(GATEWAY_API_GROUP, "HTTPRoute"),
                "shop",
                json!({"parentRefs": [{"name": "edge"}]}),
                [false, false, false, false, true, false],
            ),
            (
                "a GRPCRoute on a Gateway that does not exist",
                kind(GATEWAY_API_GROUP, "GRPCRoute"),
                "shop",
                json!({"parentRefs": [{"name": "nowhere"}]}),
                [false; 6],
            ),
            (
                "a PeerAuthentication of the shop namespace",
                kind(security, "PeerAuthentication"),
                "shop",
                json!({"mtls": {"mode": "STRICT"}}),
                [true, true, false, false, true, true],
            ),
            (
                "an AuthorizationPolicy selecting reviews",
                kind(security, "AuthorizationPolicy"),
                "shop",
                json!({"selector": {"matchLabels": {"app": "reviews"}}}),
                [false, false, false, false, false, true],
            ),
            (
                "a RequestAuthentication in the root namespace: every workload",
                kind(security, "RequestAuthentication"),
                ROOT,
                json!({}),
                [true; 6],
            ),
            (
                "a Telemetry in the root namespace with a selector: those of every namespace",
                kind("telemetry.istio.io", "Telemetry"),
                ROOT,
                json!({"selector": {"matchLabels": {"app": "web"}}}),
                [true, true, false, false, false, false],
            ),
            (
                "a WasmPlugin with targetRefs: every proxy (reached through Services)",
                kind("extensions.istio.io", "WasmPlugin"),
                "shop",
                json!({"targetRefs": [{"kind": "Service", "name": "reviews"}]}),
                [true; 6],
            ),
            (
                "a RateLimitPolicy of another namespace",
                kind("trellis.io", "RateLimitPolicy"),
                "other",
                json!({}),
                [false, false, true, false, false, false],
            ),
            (
                "a ReferenceGrant: every proxy",
                kind(GATEWAY_API_GROUP, "ReferenceGrant"),
                "shop",
                json!({}),
                [true; 6],
            ),
            (
                "an Istio Gateway: the workloads of its selector, any namespace",
                kind(istio, "Gateway"),
                "shop",
                json!({"selector": {"istio": "ingressgateway"}}),
                [false, false, false, true, false, false],
            ),
            (
                "an Istio Gateway without a selector: none",
                kind(istio, "Gateway"),
                "shop",
                json!({}),
                [false; 6],
            ),
        ];
        let gateways = gateways();
        for (what, kind, namespace, spec, want) in table {
            let concern = concern_of(kind, &object(namespace, "x", spec), ROOT);
            let got: Vec<bool> = proxies
                .iter()
                .map(|p| concerns(&concern, p, |key| gateways.get(key)))
                .collect();
            assert_eq!(got, want, "{what}: {concern:?}");
        }
    }

    #[test]
    fn named_objects_are_hosts_too() {
        let reviews = proxy("shop", &[], &["reviews.shop.svc.cluster.local"]);
        let sp = json!({"metadata": {"name": "reviews.shop.svc.cluster.local", "namespace": "shop"}, "spec": {}});
        let c = concern_of(kind("linkerd.io", "ServiceProfile"), &sp, ROOT);
        assert!(concerns(&c, &reviews, |_| None), "{c:?}");
        let ts = object("shop", "split", json!({"service": "reviews"}));
        let c = concern_of(kind("split.smi-spec.io", "TrafficSplit"), &ts, ROOT);
        assert!(concerns(&c, &reviews, |_| None), "{c:?}");
        let other = proxy("shop", &[], &["ratings.shop.svc.cluster.local"]);
        assert!(!concerns(&c, &other, |_| None));
    }

    #[test]
    fn every_watched_kind_has_a_concern() {
        // Services (builtin) never get status; every mesh kind maps without panicking.
        for kind in CONFIG_KINDS {
            let _ = concern_of(kind, &object("shop", "x", json!({})), ROOT);
        }
        let t: Target = "reviews.shop:9080".parse().unwrap();
        assert_eq!(
            Proxy::host_of(&t).as_deref(),
            Some("reviews.shop.svc.cluster.local")
        );
        let a: Target = "10.0.0.1:80".parse().unwrap();
        assert_eq!(Proxy::host_of(&a), None);
    }
}
