//! Istio `VirtualService` -> routes for the mesh (`gateways` absent or naming `mesh`) and, for
//! the other gateways it names, routes bound to those gateways (`crate::gateways`), including
//! `tls[]` routes by SNI. For the mesh, a `tls[]` route is a TCP route that only a TLS
//! connection whose ClientHello names one of its `sniHosts` takes (passed through unterminated).
//!
//! Refused "not supported yet" (the file is not applied): `delegate`, `tls[].match[]`
//! conditions other than `sniHosts`, `port` and `gateways`,
//! `http[].match[].scheme`, `ignoreUriCase: true`, a method match other than exact,
//! `rewrite.uriRegexRewrite`, `redirect.derivePort`, `directResponse.body.bytes`,
//! `fault.abort.http2Error`, `tcp[].match[]` conditions other than `port`, and destinations
//! that are not cluster Services (ServiceEntry hosts). Accepted but not acted on, with a note:
//! `exportTo`, `corsPolicy`, `retries.retryRemoteLocalities`, gateways other than `mesh`.

use std::collections::BTreeMap;

use serde::Deserialize;
use trellis_model::ServiceKey;
use trellis_model::matching::{HeaderMatch, HttpMatch, PathMatch, QueryMatch, StringMatch};
use trellis_model::route::{
    BackendRef, HttpRoute, Mirror, PathRewrite, Redirect, ResourceRef, RetryPolicy, Rewrite,
    RouteAction, TcpRoute, WeightedBackend,
};

use super::fault::{FaultInjection, fault};
use super::retries::{istio_default_retry_on, parse_retry_on};
use super::{Headers, IstioStringMatch, Percent, PortSelector};
use crate::document::{Resource, Translated};
use crate::kube::{FieldError, not_yet};
use crate::traffic::{
    Meta, Parent, PolicyLayer, RouteApi, RouteSet, duration, from_value, non_negative_u32, percent,
    port, resolve_host,
};

#[derive(Debug, Deserialize)]
struct VirtualService {
    metadata: Meta,
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    gateways: Vec<String>,
    #[serde(default)]
    http: Vec<Http>,
    #[serde(default)]
    tcp: Vec<Tcp>,
    #[serde(default)]
    tls: Vec<TlsSpec>,
    #[serde(default)]
    export_to: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Http {
    name: Option<String>,
    #[serde(rename = "match", default)]
    matches: Vec<Match>,
    #[serde(default)]
    route: Vec<RouteDestination>,
    redirect: Option<HttpRedirect>,
    direct_response: Option<DirectResponse>,
    delegate: Option<serde_yaml::Value>,
    rewrite: Option<HttpRewrite>,
    timeout: Option<String>,
    retries: Option<Retries>,
    fault: Option<FaultInjection>,
    mirror: Option<Destination>,
    mirror_percentage: Option<Percent>,
    mirror_percent: Option<i64>,
    #[serde(default)]
    mirrors: Vec<MirrorPolicy>,
    cors_policy: Option<serde_yaml::Value>,
    headers: Option<Headers>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Match {
    #[allow(dead_code)] // informational in Istio
    name: Option<String>,
    uri: Option<IstioStringMatch>,
    scheme: Option<IstioStringMatch>,
    method: Option<IstioStringMatch>,
    authority: Option<IstioStringMatch>,
    #[serde(default)]
    headers: BTreeMap<String, IstioStringMatch>,
    #[serde(default)]
    without_headers: BTreeMap<String, IstioStringMatch>,
    #[serde(default)]
    query_params: BTreeMap<String, IstioStringMatch>,
    port: Option<i64>,
    #[serde(default)]
    source_labels: BTreeMap<String, String>,
    source_namespace: Option<String>,
    #[serde(default)]
    gateways: Vec<String>,
    #[serde(default)]
    ignore_uri_case: bool,
    #[allow(dead_code)] // metrics naming in Envoy; no effect on routing
    stat_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Destination {
    host: String,
    subset: Option<String>,
    port: Option<PortSelector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteDestination {
    destination: Destination,
    weight: Option<i64>,
    headers: Option<Headers>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorPolicy {
    destination: Destination,
    percentage: Option<Percent>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpRedirect {
    uri: Option<String>,
    authority: Option<String>,
    port: Option<i64>,
    derive_port: Option<String>,
    scheme: Option<String>,
    redirect_code: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectResponse {
    status: i64,
    body: Option<Body>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    string: Option<String>,
    bytes: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpRewrite {
    uri: Option<String>,
    authority: Option<String>,
    uri_regex_rewrite: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Retries {
    #[serde(default)]
    attempts: i64,
    per_try_timeout: Option<String>,
    retry_on: Option<String>,
    retry_remote_localities: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSpec {
    #[serde(rename = "match", default)]
    matches: Vec<TlsMatch>,
    #[serde(default)]
    route: Vec<RouteDestination>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TlsMatch {
    #[serde(default)]
    sni_hosts: Vec<String>,
    port: Option<i64>,
    #[serde(default)]
    destination_subnets: Vec<String>,
    #[serde(default)]
    source_labels: BTreeMap<String, String>,
    source_namespace: Option<String>,
    #[serde(default)]
    gateways: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tcp {
    #[serde(rename = "match", default)]
    matches: Vec<TcpMatch>,
    #[serde(default)]
    route: Vec<RouteDestination>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TcpMatch {
    port: Option<i64>,
    #[serde(default)]
    destination_subnets: Vec<String>,
    #[serde(default)]
    source_labels: BTreeMap<String, String>,
    source_namespace: Option<String>,
    #[serde(default)]
    gateways: Vec<String>,
}

/// Which side of the VirtualService a translation is for: a match block's `gateways` decides
/// whether it applies there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Mesh,
    Gateways,
}

impl Scope {
    fn admits(self, gateways: &[String]) -> bool {
        match self {
            Self::Mesh => gateways.is_empty() || gateways.iter().any(|g| g == "mesh"),
            Self::Gateways => gateways.is_empty() || gateways.iter().any(|g| g != "mesh"),
        }
    }
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let vs: VirtualService = from_value(value)?;
    let source = vs.metadata.reference("VirtualService")?;
    let spec = vs.spec;
    // The VirtualService's own `gateways` decide as a match block's do.
    let mesh_bound = Scope::Mesh.admits(&spec.gateways);
    let mut parents = Vec::new();
    for (i, g) in spec.gateways.iter().enumerate() {
        if g == "mesh" {
            continue;
        }
        parents.push(gateway_parent(
            &format!("spec.gateways[{i}]"),
            g,
            &source.namespace,
        )?);
    }
    if parents.is_empty() {
        // No gateway but `mesh` (or none at all): a mesh-only VirtualService.
        return mesh_routes(&source, vs.metadata.creation_timestamp, &spec);
    }
    let mesh = if mesh_bound {
        Some(mesh_routes(
            &source,
            vs.metadata.creation_timestamp.clone(),
            &spec,
        )?)
    } else {
        None
    };
    let mut notes = Vec::new();
    if spec.hosts.is_empty() {
        return Err(FieldError::new("spec.hosts", "must name at least one host"));
    }
    let mut hosts = Vec::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        if !crate::gateways::is_istio_host(h) {
            return Err(FieldError::new(
                format!("spec.hosts[{i}]"),
                format!("must be a host name, \"*\" or \"*.suffix\", got {h:?}"),
            ));
        }
        hosts.push(h.to_ascii_lowercase());
    }
    let http = http_routes(&source, &spec.http, Scope::Gateways, &mut notes)?;
    let mut tls = Vec::new();
    for (i, route) in spec.tls.iter().enumerate() {
        tls.extend(tls_route(&source, &format!("spec.tls[{i}]"), i, route)?);
    }
    let tcp = tcp_routes(&source, &spec.tcp, Scope::Gateways)?;
    let mesh = match mesh {
        Some(Translated::Resource(Resource::Routes(set))) => Some(set),
        Some(Translated::Ignored(reason)) => {
            notes.push(format!("for the mesh: {reason}"));
            None
        }
        _ => None,
    };
    Ok(Translated::Resource(Resource::Gateway(Box::new(
        crate::gateways::GatewayResource::Routes(crate::gateways::GatewayRoutes {
            api: RouteApi::Istio,
            source,
            created: vs.metadata.creation_timestamp,
            gateways: parents,
            hosts,
            http,
            tls,
            tcp,
            mesh,
            notes,
        }),
    ))))
}

/// `name` (the VirtualService's namespace) or `namespace/name`.
fn gateway_parent(
    field: &str,
    g: &str,
    namespace: &str,
) -> Result<crate::gateways::GatewayParent, FieldError> {
    let (ns, name) = g.split_once('/').unwrap_or((namespace, g));
    // `name.namespace.svc.cluster.local` spellings are Istio's legacy form; not read.
    if !crate::kube::is_dns1123_label(ns) || name.is_empty() || name.contains('/') {
        return Err(FieldError::new(
            field,
            format!("must be \"mesh\", a Gateway name or \"namespace/name\", got {g:?}"),
        ));
    }
    Ok(crate::gateways::GatewayParent {
        namespace: ns.to_string(),
        name: name.to_string(),
        section_name: None,
        port: None,
        istio: true,
    })
}

fn mesh_routes(
    source: &ResourceRef,
    created: Option<String>,
    spec: &Spec,
) -> Result<Translated, FieldError> {
    let source = source.clone();
    let mut notes = Vec::new();
    if !spec.export_to.is_empty() {
        notes.push("spec.exportTo ignored: routes are visible mesh-wide".into());
    }
    if spec.hosts.is_empty() {
        return Err(FieldError::new("spec.hosts", "must name at least one host"));
    }
    let mut parents = Vec::new();
    for host in &spec.hosts {
        match resolve_host(host, &source.namespace) {
            Some(service) => parents.push(Parent {
                service,
                port: None,
            }),
            None => notes.push(format!(
                "host {host:?} is a wildcard or not a DNS name (wildcard hosts are not supported yet)"
            )),
        }
    }
    if parents.is_empty() {
        return Ok(Translated::Ignored(format!(
            "no host names a Service or ServiceEntry host: {:?} (wildcard hosts are not supported yet)",
            spec.hosts
        )));
    }
    let http = http_routes(&source, &spec.http, Scope::Mesh, &mut notes)?;
    // TLS routes first: a TLS connection is matched by SNI before the opaque routes (as
    // Istio's listener matches `tls[]` filter chains first); others skip them.
    let mut tcp = mesh_tls_routes(&source, &spec.tls)?;
    tcp.extend(tcp_routes(&source, &spec.tcp, Scope::Mesh)?);
    Ok(Translated::Resource(Resource::Routes(Box::new(RouteSet {
        api: RouteApi::Istio,
        source,
        created,
        parents,
        http,
        tcp,
        policy: PolicyLayer::default(),
        notes,
    }))))
}

/// `http[]` for one side of the VirtualService, ending in the no-route catch-all: Istio answers
/// a request to the host that no `http[]` route matches with 404 (Envoy's `NR`) instead of
/// sending it to the service. Not for a VirtualService without `http[]` routes, whose HTTP
/// traffic Istio leaves alone.
fn http_routes(
    source: &ResourceRef,
    routes: &[Http],
    scope: Scope,
    notes: &mut Vec<String>,
) -> Result<Vec<HttpRoute>, FieldError> {
    let mut http = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let field = format!("spec.http[{i}]");
        if let Some(r) = http_route(source, &field, i, route, scope, notes)? {
            http.push(r);
        }
    }
    if !routes.is_empty() && !http.last().is_some_and(crate::no_route::takes_everything) {
        http.push(crate::no_route::http(source));
    }
    Ok(http)
}

/// `tcp[]` for one side of the VirtualService.
fn tcp_routes(
    source: &ResourceRef,
    routes: &[Tcp],
    scope: Scope,
) -> Result<Vec<TcpRoute>, FieldError> {
    let mut tcp = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        tcp.extend(tcp_route(
            source,
            &format!("spec.tcp[{i}]"),
            i,
            route,
            scope,
        )?);
    }
    Ok(tcp)
}

/// `tls[]` for gateways: one route per match block (SNI names, port).
fn tls_route(
    source: &ResourceRef,
    field: &str,
    index: usize,
    t: &TlsSpec,
) -> Result<Vec<crate::gateways::TlsRoute>, FieldError> {
    let backends = tls_backends(source, field, t)?;
    let matches = tls_matches(field, t, Scope::Gateways)?;
    Ok(matches
        .into_iter()
        .map(|(sni_hosts, port)| crate::gateways::TlsRoute {
            sni_hosts,
            port,
            route: TcpRoute {
                name: format!("{}/tls/{index}", source.name),
                source: source.clone(),
                port,
                // The gateway matches the SNI itself (its listener's passthrough hosts).
                sni_hosts: Vec::new(),
                backends: backends.clone(),
            },
        })
        .collect())
}

/// `tls[]` for the mesh (sidecars): one TCP route per match block that only a TLS connection
/// whose ClientHello names one of the block's `sniHosts` takes; passed through unterminated.
fn mesh_tls_routes(source: &ResourceRef, routes: &[TlsSpec]) -> Result<Vec<TcpRoute>, FieldError> {
    let mut out = Vec::new();
    for (i, t) in routes.iter().enumerate() {
        let field = format!("spec.tls[{i}]");
        let backends = tls_backends(source, &field, t)?;
        for (sni_hosts, port) in tls_matches(&field, t, Scope::Mesh)? {
            out.push(TcpRoute {
                name: format!("{}/tls/{i}", source.name),
                source: source.clone(),
                port,
                sni_hosts,
                backends: backends.clone(),
            });
        }
    }
    Ok(out)
}

fn tls_backends(
    source: &ResourceRef,
    field: &str,
    t: &TlsSpec,
) -> Result<Vec<WeightedBackend>, FieldError> {
    let backends = weighted(source, &format!("{field}.route"), &t.route)?;
    if backends.is_empty() {
        return Err(FieldError::new(
            format!("{field}.route"),
            "must name a destination",
        ));
    }
    Ok(backends)
}

/// One `tls[].match[]` block as routing reads it: its SNI names (lowercase) and port.
type SniMatch = (Vec<String>, Option<u16>);

/// The `(sniHosts, port)` of each match block of `t` that applies to `scope`; every block is
/// validated, whichever side it is for.
fn tls_matches(field: &str, t: &TlsSpec, scope: Scope) -> Result<Vec<SniMatch>, FieldError> {
    if t.matches.is_empty() {
        return Err(FieldError::new(
            format!("{field}.match"),
            "must have at least one match with sniHosts",
        ));
    }
    let mut out = Vec::new();
    for (j, m) in t.matches.iter().enumerate() {
        let mf = format!("{field}.match[{j}]");
        if m.sni_hosts.is_empty() {
            return Err(FieldError::new(
                format!("{mf}.sniHosts"),
                "must name at least one host",
            ));
        }
        for (k, h) in m.sni_hosts.iter().enumerate() {
            if !crate::gateways::is_istio_host(h) {
                return Err(FieldError::new(
                    format!("{mf}.sniHosts[{k}]"),
                    format!("must be a host name, \"*\" or \"*.suffix\", got {h:?}"),
                ));
            }
        }
        refuse_source_and_subnets(
            &mf,
            [
                "TLS matching on subnets",
                "TLS matching on source labels",
                "TLS matching on source namespace",
            ],
            &m.destination_subnets,
            &m.source_labels,
            m.source_namespace.as_ref(),
        )?;
        let port = m.port.map(|p| port(&format!("{mf}.port"), p)).transpose()?;
        if scope.admits(&m.gateways) {
            let hosts = m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
            out.push((hosts, port));
        }
    }
    Ok(out)
}

/// Refuses the conditions of a `tls[]` or `tcp[]` match block `mf` that routing does not
/// read yet: `destinationSubnets`, `sourceLabels`, `sourceNamespace`, in that order; `what`
/// names each in its "not supported yet" error.
fn refuse_source_and_subnets(
    mf: &str,
    what: [&str; 3],
    destination_subnets: &[String],
    source_labels: &BTreeMap<String, String>,
    source_namespace: Option<&String>,
) -> Result<(), FieldError> {
    let [subnets, labels, namespace] = what;
    if !destination_subnets.is_empty() {
        return Err(not_yet(format!("{mf}.destinationSubnets"), subnets));
    }
    if !source_labels.is_empty() {
        return Err(not_yet(format!("{mf}.sourceLabels"), labels));
    }
    if source_namespace.is_some() {
        return Err(not_yet(format!("{mf}.sourceNamespace"), namespace));
    }
    Ok(())
}

fn backend(source: &ResourceRef, field: &str, d: &Destination) -> Result<BackendRef, FieldError> {
    let service: ServiceKey = resolve_host(&d.host, &source.namespace).ok_or_else(|| {
        FieldError::new(
            format!("{field}.host"),
            format!(
                "{:?} is a wildcard or not a DNS name: not a Service or ServiceEntry host",
                d.host
            ),
        )
    })?;
    let port = d
        .port
        .as_ref()
        .map(|p| port(&format!("{field}.port.number"), p.number))
        .transpose()?;
    Ok(BackendRef {
        service,
        port,
        subset: d.subset.clone(),
    })
}

fn weighted(
    source: &ResourceRef,
    field: &str,
    routes: &[RouteDestination],
) -> Result<Vec<WeightedBackend>, FieldError> {
    let mut out = Vec::with_capacity(routes.len());
    for (j, r) in routes.iter().enumerate() {
        let f = format!("{field}[{j}]");
        let weight = match r.weight {
            None => 0,
            Some(w) if (0..=100).contains(&w) => w as u32,
            Some(w) => {
                return Err(FieldError::new(
                    format!("{f}.weight"),
                    format!("must be 0-100, got {w}"),
                ));
            }
        };
        let (request_headers, response_headers) = Headers::to_model(r.headers.as_ref());
        out.push(WeightedBackend {
            backend: backend(source, &format!("{f}.destination"), &r.destination)?,
            weight,
            request_headers,
            response_headers,
        });
    }
    match out.as_mut_slice() {
        // A single destination takes all the traffic whatever its weight says.
        [only] => only.weight = 100,
        [] => {}
        many => {
            let sum: u32 = many.iter().map(|b| b.weight).sum();
            if sum != 100 {
                return Err(FieldError::new(
                    field,
                    format!(
                        "weights must sum to 100 when there is more than one destination, got {sum}"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

fn http_match(field: &str, m: &Match, scope: Scope) -> Result<Option<HttpMatch>, FieldError> {
    if m.scheme.is_some() {
        return Err(not_yet(format!("{field}.scheme"), "matching on scheme"));
    }
    if m.ignore_uri_case {
        return Err(not_yet(
            format!("{field}.ignoreUriCase"),
            "case-insensitive URI matching",
        ));
    }
    if !scope.admits(&m.gateways) {
        // This block applies to the other side (gateways only, or the mesh only).
        return Ok(None);
    }
    let path = match &m.uri {
        None => None,
        Some(u) => match u.to_model(&format!("{field}.uri"))? {
            None => None,
            Some(StringMatch::Exact(p)) => Some(PathMatch::Exact(p)),
            Some(StringMatch::Prefix(p)) => Some(PathMatch::Prefix(p)),
            Some(StringMatch::Regex(r)) => Some(PathMatch::Regex(r)),
        },
    };
    let method = match &m.method {
        None => None,
        Some(sm) => match sm.to_model(&format!("{field}.method"))? {
            None => None,
            Some(StringMatch::Exact(e)) => Some(e.to_ascii_uppercase()),
            Some(_) => {
                return Err(not_yet(
                    format!("{field}.method"),
                    "a method match other than exact",
                ));
            }
        },
    };
    let authority = match &m.authority {
        None => None,
        Some(a) => a.to_model(&format!("{field}.authority"))?,
    };
    let mut headers = Vec::new();
    for (invert, map, key) in [
        (false, &m.headers, "headers"),
        (true, &m.without_headers, "withoutHeaders"),
    ] {
        for (name, sm) in map {
            headers.push(HeaderMatch {
                name: name.to_ascii_lowercase(),
                value: sm.to_model(&format!("{field}.{key}.{name}"))?,
                invert,
            });
        }
    }
    let mut query = Vec::new();
    for (name, sm) in &m.query_params {
        query.push(QueryMatch {
            name: name.clone(),
            value: sm.to_model(&format!("{field}.queryParams.{name}"))?,
        });
    }
    Ok(Some(HttpMatch {
        path,
        method,
        authority,
        headers,
        query,
        port: m
            .port
            .map(|p| port(&format!("{field}.port"), p))
            .transpose()?,
        source_labels: m.source_labels.clone(),
        source_namespace: m.source_namespace.clone(),
    }))
}

fn http_route(
    source: &ResourceRef,
    field: &str,
    index: usize,
    h: &Http,
    scope: Scope,
    notes: &mut Vec<String>,
) -> Result<Option<HttpRoute>, FieldError> {
    if h.delegate.is_some() {
        return Err(not_yet(format!("{field}.delegate"), "delegation"));
    }
    if h.cors_policy.is_some() {
        notes.push(format!(
            "{field}.corsPolicy ignored: CORS is not supported yet"
        ));
    }
    let mut matches = Vec::new();
    for (j, m) in h.matches.iter().enumerate() {
        if let Some(m) = http_match(&format!("{field}.match[{j}]"), m, scope)? {
            matches.push(m);
        }
    }
    if !h.matches.is_empty() && matches.is_empty() {
        notes.push(match scope {
            Scope::Mesh => {
                format!("{field}: every match is for gateways only; route skipped for the mesh")
            }
            Scope::Gateways => {
                format!("{field}: every match is for the mesh only; route skipped for gateways")
            }
        });
        return Ok(None);
    }
    let action = match (&h.redirect, &h.direct_response, h.route.is_empty()) {
        (Some(r), None, true) => RouteAction::Redirect(redirect(&format!("{field}.redirect"), r)?),
        (None, Some(d), true) => direct_response(&format!("{field}.directResponse"), d)?,
        (None, None, false) => {
            RouteAction::Forward(weighted(source, &format!("{field}.route"), &h.route)?)
        }
        (None, None, true) => {
            return Err(FieldError::new(
                field,
                "must have one of route, redirect, directResponse",
            ));
        }
        _ => {
            return Err(FieldError::new(
                field,
                "route, redirect and directResponse are mutually exclusive",
            ));
        }
    };
    let (request_headers, response_headers) = Headers::to_model(h.headers.as_ref());
    let rewrite = match &h.rewrite {
        None => None,
        Some(rw) => {
            if rw.uri_regex_rewrite.is_some() {
                return Err(not_yet(
                    format!("{field}.rewrite.uriRegexRewrite"),
                    "regex rewrite",
                ));
            }
            // Istio replaces the matched prefix when the route matched on a prefix, else the
            // whole path.
            let prefix_matched = matches
                .iter()
                .any(|m| matches!(m.path, Some(PathMatch::Prefix(_))));
            Some(Rewrite {
                path: rw.uri.clone().map(|u| {
                    if prefix_matched {
                        PathRewrite::Prefix(u)
                    } else {
                        PathRewrite::Full(u)
                    }
                }),
                authority: rw.authority.clone(),
            })
        }
    };
    let mut mirrors = Vec::new();
    if let Some(m) = &h.mirror {
        let pct = match (&h.mirror_percentage, h.mirror_percent) {
            (Some(p), _) => percent(&format!("{field}.mirrorPercentage.value"), p.value)?,
            (None, Some(p)) => percent(&format!("{field}.mirrorPercent"), p as f64)?,
            (None, None) => trellis_model::route::Percent::ALL,
        };
        mirrors.push(Mirror {
            backend: backend(source, &format!("{field}.mirror"), m)?,
            percent: pct,
        });
    }
    for (j, m) in h.mirrors.iter().enumerate() {
        let f = format!("{field}.mirrors[{j}]");
        mirrors.push(Mirror {
            backend: backend(source, &format!("{f}.destination"), &m.destination)?,
            percent: match &m.percentage {
                Some(p) => percent(&format!("{f}.percentage.value"), p.value)?,
                None => trellis_model::route::Percent::ALL,
            },
        });
    }
    let fault = h
        .fault
        .as_ref()
        .map(|f| fault(&format!("{field}.fault"), f))
        .transpose()?;
    let timeout = match &h.timeout {
        None => None,
        Some(t) => Some(duration(&format!("{field}.timeout"), t)?).filter(|d| !d.is_zero()),
    };
    let retry = match &h.retries {
        // The mesh default applies (see `retries`).
        None => None,
        Some(r) => {
            if r.retry_remote_localities.is_some() {
                notes.push(format!(
                    "{field}.retries.retryRemoteLocalities ignored: localities are not modelled"
                ));
            }
            let attempts = non_negative_u32(&format!("{field}.retries.attempts"), r.attempts)?;
            let on = match &r.retry_on {
                Some(text) => parse_retry_on(&format!("{field}.retries.retryOn"), text)?,
                None => istio_default_retry_on(),
            };
            let per_try_timeout = r
                .per_try_timeout
                .as_ref()
                .map(|t| duration(&format!("{field}.retries.perTryTimeout"), t))
                .transpose()?;
            (attempts > 0).then_some(RetryPolicy {
                attempts,
                per_try_timeout,
                on,
            })
        }
    };
    // Redirects and direct responses never reach a backend: nothing to retry.
    let retry = retry.filter(|_| matches!(action, RouteAction::Forward(_)));
    Ok(Some(HttpRoute {
        name: h
            .name
            .clone()
            .unwrap_or_else(|| format!("{}/{index}", source.name)),
        source: source.clone(),
        matches,
        action,
        request_headers,
        response_headers,
        rewrite,
        mirrors,
        fault,
        timeout,
        retry,
    }))
}

fn redirect(field: &str, r: &HttpRedirect) -> Result<Redirect, FieldError> {
    if r.derive_port.is_some() {
        return Err(not_yet(format!("{field}.derivePort"), "derivePort"));
    }
    let status = match r.redirect_code {
        None => 301,
        Some(c @ (301 | 302 | 303 | 307 | 308)) => c as u16,
        Some(c) => {
            return Err(FieldError::new(
                format!("{field}.redirectCode"),
                format!("must be 301, 302, 303, 307 or 308, got {c}"),
            ));
        }
    };
    Ok(Redirect {
        scheme: r.scheme.clone(),
        host: r.authority.clone(),
        port: r
            .port
            .map(|p| port(&format!("{field}.port"), p))
            .transpose()?,
        path: r.uri.clone().map(PathRewrite::Full),
        status,
    })
}

fn direct_response(field: &str, d: &DirectResponse) -> Result<RouteAction, FieldError> {
    if !(200..=599).contains(&d.status) {
        return Err(FieldError::new(
            format!("{field}.status"),
            format!("must be 200-599, got {}", d.status),
        ));
    }
    let body = match &d.body {
        None => None,
        Some(Body { bytes: Some(_), .. }) => {
            return Err(not_yet(format!("{field}.body.bytes"), "a binary body"));
        }
        Some(b) => b.string.clone(),
    };
    Ok(RouteAction::DirectResponse {
        status: d.status as u16,
        body,
    })
}

fn tcp_route(
    source: &ResourceRef,
    field: &str,
    index: usize,
    t: &Tcp,
    scope: Scope,
) -> Result<Vec<TcpRoute>, FieldError> {
    let backends = weighted(source, &format!("{field}.route"), &t.route)?;
    if backends.is_empty() {
        return Err(FieldError::new(
            format!("{field}.route"),
            "must name a destination",
        ));
    }
    let name = format!("{}/tcp/{index}", source.name);
    let mut ports = Vec::new();
    for (j, m) in t.matches.iter().enumerate() {
        let mf = format!("{field}.match[{j}]");
        refuse_source_and_subnets(
            &mf,
            [
                "matching on subnets",
                "TCP matching on source labels",
                "TCP matching on source namespace",
            ],
            &m.destination_subnets,
            &m.source_labels,
            m.source_namespace.as_ref(),
        )?;
        if !scope.admits(&m.gateways) {
            continue;
        }
        ports.push(m.port.map(|p| port(&format!("{mf}.port"), p)).transpose()?);
    }
    if t.matches.is_empty() {
        ports.push(None);
    }
    Ok(ports
        .into_iter()
        .map(|port| TcpRoute {
            name: name.clone(),
            source: source.clone(),
            port,
            sni_hosts: Vec::new(),
            backends: backends.clone(),
        })
        .collect())
}
