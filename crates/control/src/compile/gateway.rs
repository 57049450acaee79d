//! Compile for a gateway workload: the Istio `Gateway`s whose `selector` matches its labels and
//! the Gateway API `Gateway`s it serves (its label `gateway.networking.k8s.io/gateway-name`,
//! same namespace, a class this control plane serves), with the routes bound to them, become
//! the proxy's listeners ([`GatewayConfig`]). Pure, like the rest of compile.
//!
//! Routes reuse the mesh translation (a VirtualService's `http[]`, an HTTPRoute's rules): per
//! listener and host, the bound routes in order (Istio: oldest VirtualService first; Gateway
//! API: the spec's match precedence across routes), then a 404 catch-all. Backends resolve to
//! endpoints and DestinationRule policy as they do for sidecars, so the gateway's hop into the
//! mesh is mTLS to the endpoint's identity.
//!
//! What cannot be served (a `credentialName` no Secret answers, a port two Gateways declare
//! with different protocols) is left out and reported in [`Compiled::problems`]; the rest of
//! the gateway is served.

pub mod backend_refs;
pub mod status;

use std::collections::BTreeMap;

use trellis_config::gateways::{
    ApiGateway, ApiListener, Credential, GatewayParent, GatewayResource, GatewayRoutes,
    IstioGateway, ReferenceGrant, SecretRef, TlsMode, TlsSecret,
};
use trellis_model::gateway::{
    CertSource, GatewayConfig, GatewayListener, ListenerProtocol, PassthroughHost, TlsHost,
    VirtualHost, host_matches,
};
use trellis_model::route::{HttpRoute, ResourceRef, RouteAction, TcpRoute};
use trellis_model::{Destination, ServiceKey, Workload};

use super::MeshView;

/// The label Istio and Gateway API implementations put on a Gateway's own deployment.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The `controllerName` of GatewayClasses this control plane serves.
pub const CONTROLLER_NAME: &str = "trellis.io/gateway-controller";

/// Class names served without a GatewayClass resource: `trellis`, and `istio` so that
/// Istio's samples (`gatewayClassName: istio`) work unchanged.
const BUILTIN_CLASSES: &[&str] = &["trellis", "istio"];

/// A gateway workload's config and what could not be served.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    pub config: GatewayConfig,
    /// `Gateway ns/name: field: why`, one per thing left out.
    pub problems: Vec<String>,
    /// The gateways this workload serves (`Gateway ns/name`); empty: it is no gateway, and
    /// discovery sends it no gateway config.
    pub gateways: Vec<ResourceRef>,
}

/// The key of the pseudo-service a virtual host's routes hang off: `<gateway>.gateway` in the
/// gateway's namespace. No Service has that name (Service names are DNS labels, without
/// dots), so no backend is mistaken for the destination itself (`Destination::is_self`).
fn vhost_key(gateway: &ResourceRef) -> ServiceKey {
    ServiceKey::new(&gateway.namespace, format!("{}.gateway", gateway.name))
}

/// Whether a Gateway API Gateway of class `class` is served by this control plane.
pub fn serves_class(gateways: &[GatewayResource], class: &str) -> bool {
    BUILTIN_CLASSES.contains(&class)
        || gateways.iter().any(|g| {
            matches!(g, GatewayResource::Class(c)
                if c.source.name == class && c.controller_name == CONTROLLER_NAME)
        })
}

/// The gateway config for `workload`. Empty when no Gateway selects it.
pub fn compile_gateway(
    view: MeshView<'_>,
    gateways: &[GatewayResource],
    workload: &Workload,
) -> Compiled {
    let mut b = Builder {
        view,
        resources: gateways,
        workload,
        listeners: BTreeMap::new(),
        out: Compiled::default(),
    };
    let mut routes: Vec<&GatewayRoutes> = gateways
        .iter()
        .filter_map(|g| match g {
            GatewayResource::Routes(r) => Some(r),
            _ => None,
        })
        .collect();
    // Oldest first (then namespace/name): Istio's order for VirtualServices on one host.
    routes.sort_by(|a, b| {
        (a.created.is_none(), &a.created, &a.source).cmp(&(
            b.created.is_none(),
            &b.created,
            &b.source,
        ))
    });
    for g in gateways {
        match g {
            GatewayResource::Istio(gw)
                if !gw.selector.is_empty()
                    && gw
                        .selector
                        .iter()
                        .all(|(k, v)| workload.labels.get(k) == Some(v)) =>
            {
                b.istio(gw, &routes)
            }
            GatewayResource::Api(gw)
                if gw.source.namespace == workload.namespace
                    && workload.labels.get(GATEWAY_NAME_LABEL) == Some(&gw.source.name) =>
            {
                if serves_class(gateways, &gw.class_name) {
                    b.api(gw, &routes)
                } else {
                    b.out.problems.push(format!(
                        "{}: spec.gatewayClassName: class {:?} is not served by this control plane (controllerName {CONTROLLER_NAME}, or the built-in classes {BUILTIN_CLASSES:?})",
                        gw.source, gw.class_name
                    ));
                }
            }
            _ => {}
        }
    }
    b.finish()
}

struct Builder<'a> {
    view: MeshView<'a>,
    resources: &'a [GatewayResource],
    workload: &'a Workload,
    listeners: BTreeMap<u16, ListenerBuild>,
    out: Compiled,
}

#[derive(Default)]
struct ListenerBuild {
    listener: GatewayListener,
    /// Per host pattern, the gateway it came from and its routes in order.
    vhosts: Vec<(String, ResourceRef, Vec<HttpRoute>)>,
    passthrough: Vec<(Vec<String>, ResourceRef, Vec<TcpRoute>)>,
}

impl ListenerBuild {
    fn vhost(&mut self, host: &str, gateway: &ResourceRef) -> &mut Vec<HttpRoute> {
        let i = match self.vhosts.iter().position(|(h, _, _)| h == host) {
            Some(i) => i,
            None => {
                self.vhosts
                    .push((host.to_string(), gateway.clone(), Vec::new()));
                self.vhosts.len() - 1
            }
        };
        &mut self.vhosts[i].2
    }
}

/// The more specific of two host patterns when one covers the other; `None` when they are
/// disjoint.
fn intersect(a: &str, b: &str) -> Option<String> {
    // `host_matches` is the proxy's own rule for which requests a host pattern takes; a
    // pattern passed as the host (`*.a.example.com`) is covered as a name would be.
    if host_matches(a, b) {
        Some(b.to_string())
    } else if host_matches(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

fn is_secure(p: ListenerProtocol) -> bool {
    matches!(p, ListenerProtocol::Https | ListenerProtocol::Tls)
}

impl<'a> Builder<'a> {
    /// The listener for `port`, or `None` (and a problem) when another gateway declared it
    /// with an incompatible protocol.
    fn listener(
        &mut self,
        port: u16,
        protocol: ListenerProtocol,
        source: &ResourceRef,
        field: &str,
    ) -> Option<&mut ListenerBuild> {
        let compatible = match self.listeners.get(&port) {
            None => true,
            Some(l) => {
                l.listener.protocol == protocol
                    || (is_secure(l.listener.protocol) && is_secure(protocol))
            }
        };
        if !compatible {
            let other = &self.listeners[&port].listener;
            self.out.problems.push(format!(
                "{source}: {field}: port {port} is already a {:?} listener of {}; this one ({protocol:?}) is not served",
                other.protocol,
                other.sources.join(", ")
            ));
            return None;
        }
        let l = self.listeners.entry(port).or_default();
        l.listener.port = port;
        // HTTPS and TLS on one port: TLS (SNI decides termination or passthrough).
        if l.listener.sources.is_empty() || protocol == ListenerProtocol::Tls {
            l.listener.protocol = protocol;
        }
        let name = source.to_string();
        if !l.listener.sources.contains(&name) {
            l.listener.sources.push(name);
        }
        Some(l)
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<&'a TlsSecret> {
        find_secret(self.resources, namespace, name)
    }

    /// An Istio `credentialName`: a Secret in the gateway workload's namespace (Istio's
    /// rule), else in the Gateway's own namespace (local mode, where they are often one file).
    fn credential(
        &self,
        gw: &ResourceRef,
        cred: &Credential,
    ) -> Result<(CertSource, Option<CertSource>), String> {
        match cred {
            Credential::Files {
                cert_chain,
                private_key,
                ca_certificates,
            } => Ok((
                CertSource::Files {
                    cert_chain: cert_chain.clone(),
                    private_key: private_key.clone(),
                },
                ca_certificates.as_ref().map(|ca| CertSource::Files {
                    cert_chain: ca.clone(),
                    private_key: String::new(),
                }),
            )),
            Credential::Secret(name) => {
                let s = self
                    .secret(&self.workload.namespace, name)
                    .or_else(|| self.secret(&gw.namespace, name))
                    .ok_or_else(|| {
                        format!(
                            "Secret {name:?} not found in namespace {:?} (the gateway workload's) or {:?}",
                            self.workload.namespace, gw.namespace
                        )
                    })?;
                Ok(pem(s))
            }
        }
    }

    fn istio(&mut self, gw: &IstioGateway, routes: &[&GatewayRoutes]) {
        self.out.gateways.push(gw.source.clone());
        let bound: Vec<&GatewayRoutes> = routes
            .iter()
            .copied()
            .filter(|r| {
                r.gateways.iter().any(|p| {
                    p.istio && p.namespace == gw.source.namespace && p.name == gw.source.name
                })
            })
            .collect();
        for (i, server) in gw.servers.iter().enumerate() {
            let field = format!("spec.servers[{i}]");
            let tls = match &server.tls {
                Some(t) => match (&t.mode, &t.credential) {
                    (TlsMode::Passthrough, _) | (_, None) => None,
                    (_, Some(c)) => match self.credential(&gw.source, c) {
                        Ok((cert, ca)) => Some((cert, ca.filter(|_| t.mode == TlsMode::Mutual))),
                        Err(why) => {
                            self.out.problems.push(format!(
                                "{}: {field}.tls.credentialName: {why}; server not served",
                                gw.source
                            ));
                            continue;
                        }
                    },
                },
                None => None,
            };
            let passthrough = server
                .tls
                .as_ref()
                .is_some_and(|t| t.mode == TlsMode::Passthrough);
            let server_hosts: Vec<&str> = server.hosts.iter().map(|h| h.host.as_str()).collect();
            let source = gw.source.clone();
            // ISTIO_MUTUAL: the mesh's mTLS ends at the gateway's inbound listener, which
            // hands the HTTP inside to this port; nothing else may reach it.
            let mesh_only = server
                .tls
                .as_ref()
                .is_some_and(|t| t.mode == TlsMode::IstioMutual);
            let protocol = if mesh_only {
                ListenerProtocol::Http
            } else {
                server.protocol
            };
            if let Some(other) = self.listeners.get(&server.port)
                && other.listener.mesh_only != mesh_only
            {
                let (this, that) = if mesh_only {
                    ("ISTIO_MUTUAL", "plain")
                } else {
                    ("plain", "ISTIO_MUTUAL")
                };
                self.out.problems.push(format!(
                    "{source}: {field}.tls.mode: port {} already has {that} servers ({}); this {this} server is not served",
                    server.port,
                    other.listener.sources.join(", ")
                ));
                continue;
            }
            let Some(l) = self.listener(server.port, protocol, &source, &format!("{field}.port"))
            else {
                continue;
            };
            l.listener.mesh_only |= mesh_only;
            if server.https_redirect {
                l.listener
                    .https_redirect
                    .extend(server_hosts.iter().map(|h| h.to_string()));
            }
            if let Some((cert, client_ca)) = tls {
                l.listener.tls_hosts.push(TlsHost {
                    hosts: server_hosts.iter().map(|h| h.to_string()).collect(),
                    cert,
                    client_ca,
                });
            }
            for r in &bound {
                // A `namespace/host` server host admits VirtualServices of that namespace only.
                let admitted = |h: &trellis_config::gateways::HostRef| {
                    h.namespace.as_deref().is_none_or(|ns| {
                        ns == "*"
                            || ns == r.source.namespace
                            || (ns == "." && r.source.namespace == gw.source.namespace)
                    })
                };
                for vs_host in &r.hosts {
                    let Some(host) = server
                        .hosts
                        .iter()
                        .filter(|h| admitted(h))
                        .find_map(|h| intersect(&h.host, vs_host))
                    else {
                        continue;
                    };
                    if passthrough {
                        for t in r
                            .tls
                            .iter()
                            .filter(|t| t.port.is_none_or(|p| p == server.port))
                        {
                            let sni: Vec<String> = t
                                .sni_hosts
                                .iter()
                                .filter_map(|s| intersect(&host, s))
                                .collect();
                            if !sni.is_empty() {
                                l.passthrough
                                    .push((sni, source.clone(), vec![t.route.clone()]));
                            }
                        }
                    } else if server.protocol == ListenerProtocol::Tcp {
                        let tcp: Vec<TcpRoute> = r
                            .tcp
                            .iter()
                            .filter(|t| t.port.is_none_or(|p| p == server.port))
                            .cloned()
                            .collect();
                        if !tcp.is_empty() {
                            l.passthrough.push((vec!["*".into()], source.clone(), tcp));
                        }
                    } else {
                        let http: Vec<HttpRoute> = r.http.clone();
                        l.vhost(&host, &source).extend(http);
                    }
                }
            }
        }
    }

    fn api(&mut self, gw: &ApiGateway, routes: &[&GatewayRoutes]) {
        self.out.gateways.push(gw.source.clone());
        for (i, listener) in gw.listeners.iter().enumerate() {
            let field = format!("spec.listeners[{i}]");
            let cert = match listener_certificate(self.resources, gw, listener) {
                Ok(cert) => cert.map(|s| pem(s).0),
                Err(refused) => {
                    if let Some(message) = refused.problem(&gw.source, &field) {
                        self.out.problems.push(message);
                    }
                    continue;
                }
            };
            let host = listener.hostname.clone().unwrap_or_else(|| "*".into());
            let source = gw.source.clone();
            // `l` borrows `self`: route problems wait until the listener is built.
            let resources = self.resources;
            let Some(l) = self.listener(
                listener.port,
                listener.protocol,
                &source,
                &format!("{field}.port"),
            ) else {
                continue;
            };
            if let Some(cert) = cert {
                l.listener.tls_hosts.push(TlsHost {
                    hosts: vec![host.clone()],
                    cert,
                    client_ca: None,
                });
            }
            if !serves_routes(listener) {
                continue;
            }
            let mut problems = Vec::new();
            for r in routes {
                let Some(Ok(hosts)) = attach(gw, listener, r) else {
                    continue;
                };
                let refused = backend_refs::refused(resources, r);
                problems.extend(refused.iter().map(|service| {
                    format!(
                        "{}: {} (RefNotPermitted); requests routed to it fail",
                        r.source,
                        backend_refs::message(r, service)
                    )
                }));
                // The per-route catch-all is replaced by one per host, after every route.
                for h in hosts {
                    let http = r
                        .http
                        .iter()
                        .filter(|route| !route.name.ends_with("/no-route"))
                        .cloned();
                    l.vhost(&h, &source)
                        .extend(backend_refs::enforce(&refused, http));
                }
            }
            for (_, _, routes) in &mut l.vhosts {
                // Gateway API orders matches across every route of a host (stable: ties keep
                // the oldest route's rule first).
                routes.sort_by_key(|r| trellis_config::gateway::precedence_key(r.matches.first()));
            }
            for problem in problems {
                // One per route and Service, however many listeners the route attaches to.
                if !self.out.problems.contains(&problem) {
                    self.out.problems.push(problem);
                }
            }
        }
    }

    fn finish(mut self) -> Compiled {
        let view = self.view;
        for (port, build) in std::mem::take(&mut self.listeners) {
            let mut listener = build.listener;
            for (host, gateway, mut routes) in build.vhosts {
                if !routes
                    .last()
                    .is_some_and(trellis_config::no_route::takes_everything)
                {
                    routes.push(trellis_config::no_route::http(&gateway));
                }
                listener.virtual_hosts.push(VirtualHost {
                    hosts: vec![host],
                    destination: destination(view, &gateway, port, routes, Vec::new()),
                });
            }
            for (hosts, gateway, tcp) in build.passthrough {
                listener.passthrough.push(PassthroughHost {
                    hosts,
                    destination: destination(view, &gateway, port, Vec::new(), tcp),
                });
            }
            self.out.config.listeners.push(listener);
        }
        self.out
    }
}

/// Why a Gateway API route is not attached to a listener: the spec's reasons for the route
/// parent's `Accepted=False`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// The listener's `allowedRoutes` (namespaces, kinds) or protocol do not admit the route.
    NotAllowedByListeners,
    /// The route's `hostnames` and the listener's `hostname` have no name in common.
    NoMatchingListenerHostname,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotAllowedByListeners => "NotAllowedByListeners",
            Self::NoMatchingListenerHostname => "NoMatchingListenerHostname",
        }
    }
}

/// Whether a listener serves HTTPRoutes/GRPCRoutes (TLSRoute and TCPRoute are not served yet).
pub fn serves_routes(listener: &ApiListener) -> bool {
    matches!(
        listener.protocol,
        ListenerProtocol::Http | ListenerProtocol::Https
    )
}

/// Whether `parent` names `listener` of `gw` (Gateway, `sectionName`, `port`).
pub fn parent_selects(parent: &GatewayParent, gw: &ApiGateway, listener: &ApiListener) -> bool {
    !parent.istio
        && parent.namespace == gw.source.namespace
        && parent.name == gw.source.name
        && parent
            .section_name
            .as_ref()
            .is_none_or(|s| *s == listener.name)
        && parent.port.is_none_or(|port| port == listener.port)
}

/// Attaches `route` to `listener` through `parent`: the hosts it serves there, or why it is
/// refused; `None` when `parent` does not name this listener. The one rule compile and
/// status share, so that what status says attached is what the gateway serves.
pub fn attach_parent(
    gw: &ApiGateway,
    listener: &ApiListener,
    route: &GatewayRoutes,
    parent: &GatewayParent,
) -> Option<Result<Vec<String>, Refusal>> {
    if !parent_selects(parent, gw, listener) {
        return None;
    }
    let kind = &route.source.kind;
    if !serves_routes(listener)
        || (!listener.allowed.all_namespaces && route.source.namespace != gw.source.namespace)
        || (!listener.allowed.kinds.is_empty() && !listener.allowed.kinds.contains(kind))
    {
        return Some(Err(Refusal::NotAllowedByListeners));
    }
    let host = listener.hostname.as_deref().unwrap_or("*");
    if route.hosts.is_empty() {
        return Some(Ok(vec![host.to_string()]));
    }
    let hosts: Vec<String> = route
        .hosts
        .iter()
        .filter_map(|h| intersect(host, h))
        .collect();
    Some(if hosts.is_empty() {
        Err(Refusal::NoMatchingListenerHostname)
    } else {
        Ok(hosts)
    })
}

/// [`attach_parent`] over every parent of `route`: the first that attaches wins.
pub fn attach(
    gw: &ApiGateway,
    listener: &ApiListener,
    route: &GatewayRoutes,
) -> Option<Result<Vec<String>, Refusal>> {
    let mut refused = None;
    for p in &route.gateways {
        match attach_parent(gw, listener, route, p) {
            Some(Ok(hosts)) => return Some(Ok(hosts)),
            Some(Err(r)) => refused = Some(Err(r)),
            None => {}
        }
    }
    refused
}

/// Why a listener's certificate cannot be served: the spec's reasons for the listener's
/// `ResolvedRefs=False`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertRefused {
    /// A `Terminate` listener without `certificateRefs` (nothing to serve with).
    NoCertificate,
    /// A Secret in another namespace that no ReferenceGrant there lets the Gateway use.
    RefNotPermitted(SecretRef),
    /// No such Secret (or not a TLS one).
    NotFound(SecretRef),
}

impl CertRefused {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RefNotPermitted(_) => "RefNotPermitted",
            Self::NoCertificate | Self::NotFound(_) => "InvalidCertificateRef",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::NoCertificate => "a Terminate listener needs tls.certificateRefs".into(),
            Self::RefNotPermitted(r) => format!(
                "Secret {}/{} is in another namespace and no ReferenceGrant there allows it",
                r.namespace, r.name
            ),
            Self::NotFound(r) => format!("Secret {}/{} not found", r.namespace, r.name),
        }
    }

    /// The compile problem for it, `None` where compile has always been silent (no refs).
    fn problem(&self, gw: &ResourceRef, field: &str) -> Option<String> {
        let what = match self {
            Self::NoCertificate => return None,
            Self::RefNotPermitted(_) => "RefNotPermitted",
            Self::NotFound(_) => "InvalidCertificateRef",
        };
        Some(format!(
            "{gw}: {field}.tls.certificateRefs[0]: {} ({what}); listener not served",
            self.message()
        ))
    }
}

/// The Secret a `Terminate` listener serves with (its first `certificateRefs`), `None` for a
/// listener without termination.
pub fn listener_certificate<'a>(
    resources: &'a [GatewayResource],
    gw: &ApiGateway,
    listener: &ApiListener,
) -> Result<Option<&'a TlsSecret>, CertRefused> {
    let Some(tls) = listener.tls.as_ref().filter(|t| !t.passthrough) else {
        return Ok(None);
    };
    let Some(r) = tls.certificate_refs.first() else {
        return Err(CertRefused::NoCertificate);
    };
    let granted = r.namespace == gw.source.namespace
        || resources.iter().any(|g| {
            matches!(g, GatewayResource::ReferenceGrant(grant)
                if grant.source.namespace == r.namespace
                    && granted(grant, &gw.source.namespace, &r.name))
        });
    if !granted {
        return Err(CertRefused::RefNotPermitted(r.clone()));
    }
    find_secret(resources, &r.namespace, &r.name)
        .map(Some)
        .ok_or_else(|| CertRefused::NotFound(r.clone()))
}

fn find_secret<'a>(
    resources: &'a [GatewayResource],
    namespace: &str,
    name: &str,
) -> Option<&'a TlsSecret> {
    resources.iter().find_map(|r| match r {
        GatewayResource::Secret(s) if s.source.namespace == namespace && s.source.name == name => {
            Some(s)
        }
        _ => None,
    })
}

fn granted(grant: &ReferenceGrant, from_ns: &str, secret: &str) -> bool {
    grant.allows("Gateway", from_ns, "Secret", secret)
}

fn pem(s: &TlsSecret) -> (CertSource, Option<CertSource>) {
    (
        CertSource::Pem {
            cert_chain: s.cert_chain.clone(),
            private_key: s.private_key.clone(),
        },
        s.ca.as_ref().map(|ca| CertSource::Pem {
            cert_chain: ca.clone(),
            private_key: String::new(),
        }),
    )
}

/// A virtual host's (or passthrough host's) destination: its routes with every backend they
/// name resolved. A backend without a port takes its Service's only port (a gateway's own
/// port means nothing to the Service).
fn destination(
    view: MeshView<'_>,
    gateway: &ResourceRef,
    port: u16,
    mut routes: Vec<HttpRoute>,
    mut tcp: Vec<TcpRoute>,
) -> Destination {
    let fix_port = |b: &mut trellis_model::route::BackendRef| {
        if b.port.is_none()
            && let Some(svc) = view.services.get(&b.service)
            && let [only] = svc.ports.as_slice()
        {
            b.port = Some(only.port);
        }
    };
    for r in &mut routes {
        if let RouteAction::Forward(bs) = &mut r.action {
            bs.iter_mut().for_each(|w| fix_port(&mut w.backend));
        }
        r.mirrors.iter_mut().for_each(|m| fix_port(&mut m.backend));
    }
    for t in &mut tcp {
        t.backends.iter_mut().for_each(|w| fix_port(&mut w.backend));
        // The listener decided the port already; the route applies to whatever arrives.
        t.port = None;
    }
    let mut dest = Destination {
        authority: format!("{}.{}.gateway:{port}", gateway.name, gateway.namespace),
        service: vhost_key(gateway),
        port,
        routes,
        tcp_routes: tcp,
        ..Destination::default()
    };
    dest.backends = super::resolve_backends(view, &dest);
    dest
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::compile::test_support::{resources, workload};
    use crate::store::Traffic;

    fn compile_for(yaml: &str, labels: &[(&str, &str)]) -> Compiled {
        let gateways: Vec<GatewayResource> = resources(yaml, |r| match r {
            trellis_config::Resource::Gateway(g) => Some(*g),
            _ => None,
        });
        let mut w = workload("istio-system", "istio-egressgateway");
        w.labels
            .extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let services = BTreeMap::new();
        let traffic = Traffic::default();
        let view = MeshView {
            services: &services,
            traffic: &traffic,
            workloads: &[std::sync::Arc::new(w.clone())],
            trust_domain: "cluster.local",
        };
        compile_gateway(view, &gateways, &w)
    }

    const MUTUAL: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mutual, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: https, protocol: HTTPS}
    hosts: [edition.cnn.com]
    tls: {mode: ISTIO_MUTUAL}
";

    #[test]
    fn an_istio_mutual_server_is_a_mesh_only_http_listener() {
        let out = compile_for(MUTUAL, &[("istio", "egressgateway")]);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let [l] = out.config.listeners.as_slice() else {
            panic!("{:?}", out.config.listeners)
        };
        assert_eq!(
            (l.port, l.protocol, l.mesh_only),
            (80, ListenerProtocol::Http, true)
        );
        assert!(
            l.tls_hosts.is_empty(),
            "no certificate: the mesh's mTLS ends at the inbound"
        );
    }

    #[test]
    fn a_plain_server_on_an_istio_mutual_port_is_left_out() {
        let plain = "---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: plain, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [other.example.com]
";
        let out = compile_for(&format!("{MUTUAL}{plain}"), &[("istio", "egressgateway")]);
        let [l] = out.config.listeners.as_slice() else {
            panic!("{:?}", out.config.listeners)
        };
        assert!(l.mesh_only);
        assert_eq!(l.sources, vec!["Gateway default/mutual".to_string()]);
        let [problem] = out.problems.as_slice() else {
            panic!("{:?}", out.problems)
        };
        assert!(
            problem.starts_with(
                "Gateway default/plain: spec.servers[0].tls.mode: port 80 already has ISTIO_MUTUAL servers (Gateway default/mutual)"
            ),
            "{problem}"
        );
    }

    #[test]
    fn host_intersection_takes_the_narrower() {
        assert_eq!(
            intersect("*", "bookinfo.com").as_deref(),
            Some("bookinfo.com")
        );
        assert_eq!(
            intersect("bookinfo.com", "*").as_deref(),
            Some("bookinfo.com")
        );
        assert_eq!(
            intersect("*.example.com", "a.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            intersect("a.example.com", "*.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(intersect("*", "*").as_deref(), Some("*"));
        assert_eq!(intersect("a.com", "b.com"), None);
        assert_eq!(intersect("*.a.com", "*.b.com"), None);
    }
}
