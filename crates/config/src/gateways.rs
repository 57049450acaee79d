//! What the gateway kinds translate into: gateways (Istio `Gateway`, Gateway API `Gateway` and
//! `GatewayClass`), the routes bound to them (VirtualServices with `gateways:`, HTTPRoutes and
//! GRPCRoutes with Gateway parents), `ReferenceGrant`s and TLS `Secret`s. The control plane
//! compiles them per gateway workload (`trellis_control::compile::gateway`); nothing here
//! reaches a sidecar.

pub mod secret;

use std::collections::BTreeMap;

use trellis_model::gateway::ListenerProtocol;
use trellis_model::route::{HttpRoute, ResourceRef, TcpRoute};

use crate::traffic::{RouteApi, RouteSet};

/// A Gateway API `Hostname` (listener `hostname`, route `hostnames[]`): a host name or
/// `*.suffix`; no port, no bare `*`.
pub(crate) fn is_api_hostname(h: &str) -> bool {
    !h.is_empty() && !h.contains(':') && (!h.contains('*') || h.starts_with("*."))
}

/// An Istio gateway host (Gateway `servers[].hosts`, a gateway-bound VirtualService's
/// `hosts`): a host name, `*` or `*.suffix`.
pub(crate) fn is_istio_host(h: &str) -> bool {
    !h.is_empty() && (!h.contains('*') || h == "*" || h.starts_with("*."))
}

/// One gateway-related resource.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayResource {
    Istio(IstioGateway),
    Api(ApiGateway),
    Class(GatewayClass),
    ReferenceGrant(ReferenceGrant),
    Routes(GatewayRoutes),
    Secret(TlsSecret),
}

impl GatewayResource {
    pub fn notes(&self) -> &[String] {
        match self {
            Self::Istio(g) => &g.notes,
            Self::Api(g) => &g.notes,
            Self::Routes(r) => &r.notes,
            Self::Class(_) | Self::ReferenceGrant(_) | Self::Secret(_) => &[],
        }
    }

    pub fn source(&self) -> &ResourceRef {
        match self {
            Self::Istio(g) => &g.source,
            Self::Api(g) => &g.source,
            Self::Class(c) => &c.source,
            Self::ReferenceGrant(g) => &g.source,
            Self::Routes(r) => &r.source,
            Self::Secret(s) => &s.source,
        }
    }
}

/// Istio `Gateway` (networking.istio.io).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct IstioGateway {
    pub source: ResourceRef,
    pub created: Option<String>,
    /// Gateway workloads carrying all these labels serve it (any namespace, as Istio's default
    /// `PILOT_SCOPE_GATEWAY_TO_NAMESPACE=false`).
    pub selector: BTreeMap<String, String>,
    pub servers: Vec<Server>,
    pub notes: Vec<String>,
}

/// One `servers[]` entry.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Server {
    pub port: u16,
    pub name: Option<String>,
    pub protocol: ListenerProtocol,
    /// `host` or `namespace/host` (`*` and `.` namespaces as Istio reads them).
    pub hosts: Vec<HostRef>,
    pub https_redirect: bool,
    pub tls: Option<ServerTls>,
}

/// A server host with the namespace of the VirtualServices it admits (`None`: any, `*/`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostRef {
    pub namespace: Option<String>,
    pub host: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum TlsMode {
    /// Terminate with the server's certificate.
    Simple,
    /// Terminate and require a client certificate.
    Mutual,
    /// Forward the TLS stream untouched, by SNI.
    Passthrough,
    /// Istio `ISTIO_MUTUAL`: reached over the mesh's mTLS (terminated by the gateway's inbound
    /// listener with its workload identity), HTTP inside.
    IstioMutual,
}

/// A server's certificate: `credentialName` (a Secret) or files on the gateway.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Credential {
    /// A Secret in the gateway workload's namespace (Istio's rule).
    Secret(String),
    Files {
        cert_chain: String,
        private_key: String,
        ca_certificates: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServerTls {
    pub mode: TlsMode,
    /// `None` for PASSTHROUGH.
    pub credential: Option<Credential>,
}

/// Routes bound to gateways: a VirtualService with `gateways:`, or an HTTPRoute/GRPCRoute
/// with Gateway parents.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GatewayRoutes {
    pub api: RouteApi,
    pub source: ResourceRef,
    pub created: Option<String>,
    pub gateways: Vec<GatewayParent>,
    /// VirtualService `hosts` / HTTPRoute `hostnames` (empty: every host of the listener).
    pub hosts: Vec<String>,
    pub http: Vec<HttpRoute>,
    /// VirtualService `tls[]` routes: TLS passed through by SNI.
    pub tls: Vec<TlsRoute>,
    pub tcp: Vec<TcpRoute>,
    /// The same resource's routes for the mesh, when it is bound to `mesh` too.
    pub mesh: Option<Box<RouteSet>>,
    pub notes: Vec<String>,
}

/// A gateway routes attach to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct GatewayParent {
    pub namespace: String,
    pub name: String,
    /// Gateway API `sectionName`: one listener by name.
    pub section_name: Option<String>,
    /// Gateway API `port`: listeners on that port only.
    pub port: Option<u16>,
    /// Istio: the parent is an Istio Gateway; Gateway API: a Gateway API Gateway.
    pub istio: bool,
}

/// VirtualService `tls[]`: SNI names (and port) -> backends.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TlsRoute {
    pub sni_hosts: Vec<String>,
    pub port: Option<u16>,
    pub route: TcpRoute,
}

/// Gateway API `Gateway`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ApiGateway {
    pub source: ResourceRef,
    pub created: Option<String>,
    pub class_name: String,
    pub listeners: Vec<ApiListener>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ApiListener {
    pub name: String,
    pub port: u16,
    pub protocol: ListenerProtocol,
    pub hostname: Option<String>,
    pub tls: Option<ApiTls>,
    pub allowed: AllowedRoutes,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ApiTls {
    /// `Terminate` (with `certificate_refs`) or `Passthrough`.
    pub passthrough: bool,
    pub certificate_refs: Vec<SecretRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

/// `allowedRoutes`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AllowedRoutes {
    /// `from: All`; `false` is `Same` (the default).
    pub all_namespaces: bool,
    /// Route kinds allowed; empty: the listener protocol's defaults.
    pub kinds: Vec<String>,
}

/// Gateway API `GatewayClass` (cluster-scoped).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GatewayClass {
    pub source: ResourceRef,
    pub controller_name: String,
}

/// Gateway API `ReferenceGrant`: lets resources of `from` refer to those of `to` in the
/// grant's namespace.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReferenceGrant {
    pub source: ResourceRef,
    /// (group, kind, namespace)
    pub from: Vec<(String, String, String)>,
    /// (group, kind, name: None for every name)
    pub to: Vec<(String, String, Option<String>)>,
}

impl ReferenceGrant {
    /// Whether this grant lets a `from_kind` in `from_ns` refer to `to_kind` `to_name` here.
    pub fn allows(&self, from_kind: &str, from_ns: &str, to_kind: &str, to_name: &str) -> bool {
        self.from
            .iter()
            .any(|(_, k, ns)| k == from_kind && ns == from_ns)
            && self
                .to
                .iter()
                .any(|(_, k, n)| k == to_kind && n.as_deref().is_none_or(|n| n == to_name))
    }
}

/// A Kubernetes `Secret` holding a certificate and key (`kubernetes.io/tls`, or generic with
/// `tls.crt`/`tls.key` or Istio's `cert`/`key`), decoded to PEM.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsSecret {
    pub source: ResourceRef,
    /// Not serialized: certificates and keys stay out of goldens and JSON status.
    #[serde(skip)]
    pub cert_chain: String,
    #[serde(skip)]
    pub private_key: String,
    /// `ca.crt` or `cacert`: client roots for MUTUAL.
    #[serde(skip)]
    pub ca: Option<String>,
}

impl std::fmt::Debug for TlsSecret {
    // The key never reaches logs or `/api/v1/config`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSecret")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::{is_api_hostname, is_istio_host};

    #[test]
    fn gateway_host_spellings() {
        for h in ["a.example.com", "*.example.com"] {
            assert!(is_api_hostname(h) && is_istio_host(h), "{h}");
        }
        assert!(is_istio_host("*") && !is_api_hostname("*"));
        assert!(!is_api_hostname("a.example.com:80"));
        for bad in ["", "a*b.example.com", "foo.*.com"] {
            assert!(!is_api_hostname(bad) && !is_istio_host(bad), "{bad}");
        }
    }
}
