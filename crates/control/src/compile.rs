//! Compile: the pure function from what the control plane knows (services, registered
//! workloads, trust domain) to what one proxy needs about one target.
//!
//! No I/O, no clocks, no locks: the discovery adapter calls [`compile`] with a snapshot on every
//! change and pushes the result only when it differs from what it last sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use trellis_identity::SpiffeId;
use trellis_model::{
    Destination, Endpoint, Service, ServiceKey, ServicePort, Target, TargetPort, Workload,
};

/// What compile reads: one immutable view of the mesh.
#[derive(Clone, Copy, Debug)]
pub struct MeshView<'a> {
    pub services: &'a BTreeMap<ServiceKey, Service>,
    pub workloads: &'a [Workload],
    pub trust_domain: &'a str,
}

/// The destination at `target`, or `None` when nothing is known there.
pub fn compile(view: MeshView<'_>, target: &Target) -> Option<Destination> {
    match target {
        Target::Service { service, port } => {
            let svc = view.services.get(service)?;
            let svc_port = svc.port(*port)?;
            Some(service_destination(view, svc, svc_port))
        }
        Target::Address(addr) => address_destination(view, *addr),
    }
}

/// The SPIFFE ID a workload is issued; `None` if its names cannot form one (registration
/// validates them, so this is defensive).
pub fn identity(trust_domain: &str, workload: &Workload) -> Option<String> {
    SpiffeId::new(trust_domain, &workload.namespace, &workload.service_account)
        .ok()
        .map(|id| id.to_string())
}

/// Workloads a service selects: same namespace (selectors are namespaced) and matching labels.
pub fn selected<'a>(
    svc: &'a Service,
    workloads: &'a [Workload],
) -> impl Iterator<Item = &'a Workload> {
    workloads
        .iter()
        .filter(|w| w.namespace == svc.key.namespace && svc.selects(&w.labels))
}

fn service_destination(view: MeshView<'_>, svc: &Service, port: &ServicePort) -> Destination {
    let target_port = match &port.target_port {
        TargetPort::Number(n) => *n,
        // Workloads register port numbers only, so a named targetPort cannot be resolved against
        // them; the service port is the usual convention (`name: http, containerPort: 9080`).
        TargetPort::Named(_) => port.port,
    };
    let mut endpoints: Vec<Endpoint> = selected(svc, view.workloads)
        .map(|w| endpoint(view.trust_domain, w, target_port))
        .collect();
    sort(&mut endpoints);
    Destination {
        authority: format!("{}:{}", svc.key.fqdn(), port.port),
        service: svc.key.clone(),
        port: port.port,
        protocol: port.protocol,
        endpoints,
        ..Destination::default()
    }
}

fn address_destination(view: MeshView<'_>, addr: SocketAddr) -> Option<Destination> {
    // A Service's cluster IP wins: the proxy captured traffic to a virtual IP.
    if let Some((svc, port)) = view.services.values().find_map(|svc| {
        (svc.cluster_ip == Some(addr.ip())).then(|| svc.port(addr.port()).map(|p| (svc, p)))?
    }) {
        return Some(service_destination(view, svc, port));
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
        let selects = svc.key.namespace == workload.namespace && svc.selects(&workload.labels);
        let port = svc.ports.iter().find(|p| match &p.target_port {
            TargetPort::Number(n) => *n == addr.port(),
            TargetPort::Named(_) => p.port == addr.port(),
        });
        port.filter(|_| selects).map(|p| (svc, p))
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

fn endpoint(trust_domain: &str, w: &Workload, target_port: u16) -> Endpoint {
    Endpoint {
        address: w.inbound_address,
        meshed: true,
        identity: identity(trust_domain, w),
        workload: w.name.clone(),
        labels: w.labels.clone(),
        target_port,
    }
}

/// A stable order, so that an unchanged mesh compiles to an equal value and is not re-pushed.
fn sort(endpoints: &mut [Endpoint]) {
    endpoints.sort_by(|a, b| (&a.workload, a.address).cmp(&(&b.workload, b.address)));
}

#[cfg(test)]
mod tests;
