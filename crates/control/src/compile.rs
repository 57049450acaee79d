//! Compile: the pure function from what the control plane knows (services, registered
//! workloads, trust domain) to what one proxy needs about one target.
//!
//! No I/O, no clocks, no locks: the discovery adapter calls [`compile`] with a snapshot on every
//! change and pushes the result only when it differs from what it last sent.

pub mod authn;
pub mod authz;
pub mod gateway;
pub mod h2_upgrade;
pub mod index;
pub mod mtls;
pub mod outbound_policy;
pub mod ratelimit;
pub mod scope;
pub mod service_entry;
pub mod telemetry;
pub mod wasm;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use trellis_config::traffic::PolicyLayer;
use trellis_identity::SpiffeId;
use trellis_model::policy::TrafficPolicy;
use trellis_model::route::{BackendRef, RouteAction};
use trellis_model::{
    Backend, Destination, Endpoint, Service, ServiceKey, ServicePort, Target, TargetPort, Workload,
};

use crate::store::Traffic;

/// What compile reads: one immutable view of the mesh.
#[derive(Clone, Copy, Debug)]
pub struct MeshView<'a> {
    pub services: &'a BTreeMap<ServiceKey, Service>,
    /// Routes and destination policies in force (see `store::traffic` for precedence).
    pub traffic: &'a Traffic,
    /// Shared with the registry and its publications (`registry::WorkloadSet`).
    pub workloads: &'a [Arc<Workload>],
    pub trust_domain: &'a str,
}

/// The destination at `target`, or `None` when nothing is known there.
pub fn compile(view: MeshView<'_>, target: &Target) -> Option<Destination> {
    compile_indexed(view, None, target)
}

/// [`compile`], finding the workloads a Service selects through `index` (built from
/// `view.workloads`, see [`index::SelectorIndex`]) rather than a scan: the same result.
pub fn compile_indexed(
    view: MeshView<'_>,
    index: Option<&index::SelectorIndex>,
    target: &Target,
) -> Option<Destination> {
    let cx = Cx { view, index };
    match target {
        Target::Service { service, port } => {
            let svc = view.services.get(service)?;
            let svc_port = svc.port(*port)?;
            Some(service_destination_in(cx, svc, svc_port))
        }
        Target::Address(addr) => address_destination(cx, *addr),
    }
}

/// What the compile of one target reads: the view, and an index of its workloads if the
/// caller has one.
#[derive(Clone, Copy)]
struct Cx<'a> {
    view: MeshView<'a>,
    index: Option<&'a index::SelectorIndex>,
}

impl<'a> Cx<'a> {
    fn plain(view: MeshView<'a>) -> Self {
        Self { view, index: None }
    }

    fn selected(self, svc: &'a Service) -> Box<dyn Iterator<Item = &'a Workload> + 'a> {
        match self.index {
            Some(index) => index.selected(svc, self.view.workloads),
            None => Box::new(selected(svc, self.view.workloads)),
        }
    }
}

/// The SPIFFE ID a workload is issued; `None` if its names cannot form one (registration
/// validates them, so this is defensive).
pub fn identity(trust_domain: &str, workload: &Workload) -> Option<String> {
    SpiffeId::new(trust_domain, &workload.namespace, &workload.service_account)
        .ok()
        .map(|id| id.to_string())
}

/// Whether `svc` selects `w`: same namespace (selectors are namespaced) and matching labels.
pub fn selects(svc: &Service, w: &Workload) -> bool {
    w.namespace == svc.key.namespace && svc.selects(&w.labels)
}

/// Workloads a service selects (see [`selects`]).
pub fn selected<'a>(
    svc: &'a Service,
    workloads: &'a [Arc<Workload>],
) -> impl Iterator<Item = &'a Workload> {
    workloads.iter().map(|w| &**w).filter(|w| selects(svc, w))
}

fn target_port(port: &ServicePort) -> u16 {
    match &port.target_port {
        TargetPort::Number(n) => *n,
        // Workloads register port numbers only, so a named targetPort cannot be resolved against
        // them; the service port is the usual convention (`name: http, containerPort: 9080`).
        TargetPort::Named(_) => port.port,
    }
}

/// The endpoints of a service port, limited to workloads that also carry `subset` labels (a
/// DestinationRule subset is ANDed with the service's selector).
fn endpoints<'a>(
    cx: Cx<'a>,
    svc: &'a Service,
    port: &ServicePort,
    subset: Option<&BTreeMap<String, String>>,
) -> Vec<Endpoint> {
    let view = cx.view;
    if let Some(entry_endpoints) = service_entry::endpoints(view, &svc.key, port, subset) {
        return entry_endpoints;
    }
    let has = |w: &Workload| {
        subset.is_none_or(|labels| labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
    };
    let mut endpoints: Vec<Endpoint> = cx
        .selected(svc)
        .filter(|w| has(w))
        .map(|w| endpoint(view.trust_domain, w, target_port(port)))
        .collect();
    sort(&mut endpoints);
    // Linked clusters' endpoints come after the local ones (subsets select local workloads
    // only: a remote endpoint carries no workload labels).
    if subset.is_none() {
        endpoints.extend(crate::multicluster::endpoints(
            &view.traffic.remote,
            &svc.key,
            port.port,
        ));
    }
    endpoints
}

/// The DestinationRule policy for a service port (and subset); the default without a rule.
/// `None`: the subset is not defined.
fn policy(
    view: MeshView<'_>,
    service: &ServiceKey,
    port: u16,
    subset: Option<&str>,
) -> Option<TrafficPolicy> {
    match view.traffic.policies.get(service) {
        Some(rule) => rule.policy_for(port, subset),
        None => subset.is_none().then(TrafficPolicy::default),
    }
}

fn service_destination(view: MeshView<'_>, svc: &Service, port: &ServicePort) -> Destination {
    service_destination_in(Cx::plain(view), svc, port)
}

fn service_destination_in<'a>(cx: Cx<'a>, svc: &'a Service, port: &ServicePort) -> Destination {
    let view = cx.view;
    let mut dest = Destination {
        authority: format!("{}:{}", svc.key.fqdn(), port.port),
        service: svc.key.clone(),
        port: port.port,
        protocol: port.protocol,
        endpoints: endpoints(cx, svc, port, None),
        policy: policy(view, &svc.key, port.port, None).unwrap_or_default(),
        ..Destination::default()
    };
    let applies = |p: Option<u16>| p.is_none_or(|p| p == port.port);
    let mut route_layer = &PolicyLayer::default();
    if let Some(routes) = view.traffic.routes.get(&svc.key) {
        dest.routes = routes
            .http
            .iter()
            .filter(|a| applies(a.port))
            .map(|a| a.route.clone())
            .collect();
        dest.tcp_routes = routes
            .tcp
            .iter()
            .filter(|a| applies(a.port) && a.route.port.is_none_or(|p| p == port.port))
            .map(|a| a.route.clone())
            .collect();
        route_layer = &routes.policy;
    }
    route_layer.apply(&mut dest.policy);
    crate::multicluster::failover_policy(&mut dest.policy, &dest.endpoints);
    dest.backends = resolve_backends_in(cx, &dest);
    dest
}

/// Every backend `dest`'s routes and mirrors name, other than the destination itself, once
/// each in the order named, resolved for requests to `dest.port`.
fn resolve_backends(view: MeshView<'_>, dest: &Destination) -> Vec<Backend> {
    resolve_backends_in(Cx::plain(view), dest)
}

fn resolve_backends_in(cx: Cx<'_>, dest: &Destination) -> Vec<Backend> {
    let mut named: Vec<&BackendRef> = Vec::new();
    for route in &dest.routes {
        if let RouteAction::Forward(bs) = &route.action {
            named.extend(bs.iter().map(|b| &b.backend));
        }
        named.extend(route.mirrors.iter().map(|m| &m.backend));
    }
    for route in &dest.tcp_routes {
        named.extend(route.backends.iter().map(|b| &b.backend));
    }
    let mut backends: Vec<Backend> = Vec::new();
    for b in named {
        if dest.is_self(b) || backends.iter().any(|known| &known.backend == b) {
            continue;
        }
        backends.push(backend(cx, b, dest.port));
    }
    backends
}

/// Resolves a backend a route names. A port of `None` is the port the request was sent to.
/// An unknown service, port or subset resolves to no endpoints: requests there get 503, and
/// the config status says why.
fn backend(cx: Cx<'_>, b: &BackendRef, request_port: u16) -> Backend {
    let view = cx.view;
    let port = b.port.unwrap_or(request_port);
    let subset_labels = b.subset.as_deref().map(|name| {
        view.traffic
            .policies
            .get(&b.service)
            .and_then(|rule| rule.subset(name))
            .map(|s| &s.labels)
    });
    let endpoints = match (view.services.get(&b.service), subset_labels) {
        (_, Some(None)) => Vec::new(),
        (Some(svc), labels) => match svc.port(port) {
            Some(svc_port) => endpoints(cx, svc, svc_port, labels.flatten()),
            None => Vec::new(),
        },
        (None, _) => Vec::new(),
    };
    let mut policy = policy(view, &b.service, port, b.subset.as_deref()).unwrap_or_default();
    if let Some(routes) = view.traffic.routes.get(&b.service) {
        routes.policy.apply(&mut policy);
    }
    crate::multicluster::failover_policy(&mut policy, &endpoints);
    Backend {
        backend: b.clone(),
        authority: format!("{}:{port}", b.service.fqdn()),
        endpoints,
        policy,
    }
}

fn address_destination(cx: Cx<'_>, addr: SocketAddr) -> Option<Destination> {
    let view = cx.view;
    // A Service's cluster IP wins: the proxy captured traffic to a virtual IP.
    if let Some((svc, port)) = view.services.values().find_map(|svc| {
        (svc.cluster_ip == Some(addr.ip())).then(|| svc.port(addr.port()).map(|p| (svc, p)))?
    }) {
        return Some(service_destination_in(cx, svc, port));
    }
    // Then a host a ServiceEntry declares (its addresses, endpoints or DNS answers).
    if let Some(dest) = service_entry::address_destination(view, addr) {
        return Some(dest);
    }
    // Else a workload reached directly at its own IP on one of its ports. Several local-mode
    // workloads share 127.0.0.1, so the port must match too; the first by namespace/name wins.
    let workload = view
        .workloads
        .iter()
        .filter(|w| w.inbound_address.ip() == addr.ip() && w.ports.contains(&addr.port()))
        .min_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))?;
    // Name the destination after a service that routes this port to the workload, if any, so
    // metrics and protocol hints match the service's.
    let owner = view.services.values().find_map(|svc| {
        let backs = selects(svc, workload);
        let port = svc.ports.iter().find(|p| match &p.target_port {
            TargetPort::Number(n) => *n == addr.port(),
            TargetPort::Named(_) => p.port == addr.port(),
        });
        port.filter(|_| backs).map(|p| (svc, p))
    });
    let (service, protocol) = match owner {
        Some((svc, port)) => (svc.key.clone(), port.protocol),
        None => (
            ServiceKey::new(&workload.namespace, &workload.name),
            Default::default(),
        ),
    };
    Some(Destination {
        authority: addr.to_string(),
        service,
        port: addr.port(),
        protocol,
        endpoints: vec![endpoint(view.trust_domain, workload, addr.port())],
        ..Destination::default()
    })
}

/// The workload label that marks an endpoint without a proxy (as Istio's
/// `security.istio.io/tlsMode`): `disabled` for Kubernetes pods without the sidecar and
/// EndpointSlice addresses. Set by the control plane (`k8s::pods`), never read from users.
pub const TLS_MODE_LABEL: &str = "trellis.io/tls-mode";

fn endpoint(trust_domain: &str, w: &Workload, target_port: u16) -> Endpoint {
    if w.labels
        .get(TLS_MODE_LABEL)
        .is_some_and(|m| m == "disabled")
    {
        // No proxy there: the application itself, plaintext, no identity to check.
        return unmeshed(
            SocketAddr::new(w.inbound_address.ip(), target_port),
            &w.name,
            &w.labels,
        );
    }
    Endpoint {
        address: w.inbound_address,
        meshed: true,
        identity: identity(trust_domain, w),
        workload: w.name.clone(),
        labels: w.labels.clone(),
        target_port,
        remote: None,
    }
}

/// An endpoint without a proxy (a pod without the sidecar, a ServiceEntry endpoint): reached
/// in plaintext (or TLS a DestinationRule originates), with no identity to check.
fn unmeshed(address: SocketAddr, workload: &str, labels: &BTreeMap<String, String>) -> Endpoint {
    Endpoint {
        address,
        meshed: false,
        identity: None,
        workload: workload.to_string(),
        labels: labels.clone(),
        target_port: address.port(),
        remote: None,
    }
}

/// A stable order, so that an unchanged mesh compiles to an equal value and is not re-pushed.
fn sort(endpoints: &mut [Endpoint]) {
    endpoints.sort_by(|a, b| (&a.workload, a.address).cmp(&(&b.workload, b.address)));
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod traffic_tests;

#[cfg(test)]
mod smi_tests;
