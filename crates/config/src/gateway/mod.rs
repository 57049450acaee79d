//! Gateway API `HTTPRoute` and `GRPCRoute` (gateway.networking.k8s.io) with Service parents:
//! the GAMMA mesh routes; with Gateway parents: routes bound to gateways (`crate::gateways`,
//! compiled per gateway workload by the control plane). `Gateway`, `GatewayClass` and
//! `ReferenceGrant` are in [`gateway`] and [`reference_grant`].
//!
//! Each rule's matches become one model route per match, so the control plane can order the
//! routes of every HTTPRoute attached to a Service by the spec's match precedence
//! ([`precedence_key`]). A backend may name a Service in another namespace (`namespace`
//! kept in its key) on a route whose parents are all Gateways: the gateway compile uses it only
//! where a ReferenceGrant in that namespace allows it (`RefNotPermitted` otherwise). Refused
//! "not supported yet": such a backend on a route with a Service parent (the mesh compile does
//! not check grants) or in a `RequestMirror`, backends that are not Services,
//! `ExtensionRef`/`CORS` filters, `rules[].retry`, `rules[].sessionPersistence`. `hostnames`
//! is ignored for mesh routes, as GAMMA specifies.

use std::cmp::Reverse;
use std::time::Duration;

use serde::Deserialize;
use trellis_model::ServiceKey;
use trellis_model::matching::{HeaderMatch, HttpMatch, PathMatch, QueryMatch, Regex, StringMatch};
use trellis_model::route::{
    BackendRef, HttpRoute, ResourceRef, RetryOn, RetryPolicy, RouteAction, WeightedBackend,
};

mod filters;
#[allow(clippy::module_inception)] // the kind is called Gateway, in the Gateway API
pub mod gateway;
pub mod reference_grant;

use filters::{Filter, Filters, filters};

use crate::document::{Resource, Translated};
use crate::kube::{FieldError, not_yet};
use crate::traffic::{Meta, Parent, PolicyLayer, RouteApi, RouteSet, duration, from_value, port};

#[derive(Debug, Deserialize)]
struct Route<R> {
    metadata: Meta,
    spec: Spec<R>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec<R> {
    #[serde(default)]
    parent_refs: Vec<ParentRef>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default = "Vec::new")]
    rules: Vec<R>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ParentRef {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    section_name: Option<String>,
    port: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpRule {
    name: Option<String>,
    #[serde(default)]
    matches: Vec<HttpRouteMatch>,
    #[serde(default)]
    filters: Vec<Filter>,
    #[serde(default)]
    backend_refs: Vec<Backend>,
    timeouts: Option<Timeouts>,
    retry: Option<serde_yaml::Value>,
    session_persistence: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrpcRule {
    name: Option<String>,
    #[serde(default)]
    matches: Vec<GrpcRouteMatch>,
    #[serde(default)]
    filters: Vec<Filter>,
    #[serde(default)]
    backend_refs: Vec<Backend>,
    session_persistence: Option<serde_yaml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpRouteMatch {
    path: Option<PathSpec>,
    #[serde(default)]
    headers: Vec<ValueMatch>,
    #[serde(default)]
    query_params: Vec<ValueMatch>,
    method: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcRouteMatch {
    method: Option<GrpcMethod>,
    #[serde(default)]
    headers: Vec<ValueMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcMethod {
    #[serde(rename = "type")]
    kind: Option<String>,
    service: Option<String>,
    method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueMatch {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Backend {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<i64>,
    weight: Option<i64>,
    #[serde(default)]
    filters: Vec<Filter>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Timeouts {
    request: Option<String>,
    backend_request: Option<String>,
}

/// Orders Gateway API routes attached to one parent, most specific first: exact path, then
/// the longest prefix (regex after prefixes), then a method match, then the most header
/// matches, then the most query matches. Ties are broken by the caller (oldest, then
/// namespace/name, then rule order), as the spec says. `None` (a route without match blocks:
/// only the no-route catch-all, since every rule's route has one) sorts after everything.
pub fn precedence_key(m: Option<&HttpMatch>) -> impl Ord + use<> {
    let Some(m) = m else {
        return (3, Reverse(0), true, Reverse(0), Reverse(0));
    };
    let (path_rank, path_len) = match &m.path {
        Some(PathMatch::Exact(p)) => (0u8, Reverse(p.len())),
        Some(PathMatch::SegmentPrefix(p) | PathMatch::Prefix(p)) => (1, Reverse(p.len())),
        Some(PathMatch::Regex(r)) => (2, Reverse(r.as_str().len())),
        None => (1, Reverse(1)),
    };
    let (method, headers, query) = (m.method.is_some(), m.headers.len(), m.query.len());
    (
        path_rank,
        path_len,
        !method,
        Reverse(headers),
        Reverse(query),
    )
}

/// The parents of kind Service, and those of kind Gateway.
fn parents(
    source: &ResourceRef,
    refs: &[ParentRef],
    notes: &mut Vec<String>,
) -> Result<(Vec<Parent>, Vec<crate::gateways::GatewayParent>), FieldError> {
    let mut out = Vec::new();
    let mut gateways = Vec::new();
    for (i, p) in refs.iter().enumerate() {
        let group = p.group.as_deref().unwrap_or("gateway.networking.k8s.io");
        let kind = p.kind.as_deref().unwrap_or("Gateway");
        if matches!(group, "" | "core") && kind == "Service" {
            if p.section_name.is_some() {
                return Err(not_yet(
                    format!("spec.parentRefs[{i}].sectionName"),
                    "sectionName on a Service parent",
                ));
            }
            let namespace = p
                .namespace
                .clone()
                .unwrap_or_else(|| source.namespace.clone());
            if namespace != source.namespace {
                notes.push(format!(
                    "spec.parentRefs[{i}]: a consumer route (for a Service in {namespace}) applies to every client, not only those in {}, until per-client routes are supported",
                    source.namespace
                ));
            }
            out.push(Parent {
                service: ServiceKey::new(namespace, p.name.clone()),
                port: p
                    .port
                    .map(|n| port(&format!("spec.parentRefs[{i}].port"), n))
                    .transpose()?,
            });
        } else if group == "gateway.networking.k8s.io" && kind == "Gateway" {
            gateways.push(crate::gateways::GatewayParent {
                namespace: p
                    .namespace
                    .clone()
                    .unwrap_or_else(|| source.namespace.clone()),
                name: p.name.clone(),
                section_name: p.section_name.clone(),
                port: p
                    .port
                    .map(|n| port(&format!("spec.parentRefs[{i}].port"), n))
                    .transpose()?,
                istio: false,
            });
        } else {
            notes.push(format!(
                "spec.parentRefs[{i}]: {group}/{kind} {} ignored (not a Service or Gateway)",
                p.name
            ));
        }
    }
    Ok((out, gateways))
}

fn string_match(field: &str, kind: Option<&str>, value: &str) -> Result<StringMatch, FieldError> {
    match kind.unwrap_or("Exact") {
        "Exact" => Ok(StringMatch::Exact(value.to_string())),
        "RegularExpression" => Regex::new(value).map(StringMatch::Regex).map_err(|e| {
            FieldError::new(format!("{field}.value"), crate::traffic::regex_error(&e))
        }),
        other => Err(FieldError::new(
            format!("{field}.type"),
            format!("must be Exact or RegularExpression, got {other:?}"),
        )),
    }
}

fn headers(field: &str, list: &[ValueMatch]) -> Result<Vec<HeaderMatch>, FieldError> {
    list.iter()
        .enumerate()
        .map(|(i, h)| {
            let f = format!("{field}[{i}]");
            Ok(HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value: Some(string_match(&f, h.kind.as_deref(), &h.value)?),
                invert: false,
            })
        })
        .collect()
}

fn http_match(field: &str, m: &HttpRouteMatch) -> Result<HttpMatch, FieldError> {
    let path = match &m.path {
        None => PathMatch::SegmentPrefix("/".into()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => PathMatch::Exact(value),
                "PathPrefix" => PathMatch::SegmentPrefix(value),
                "RegularExpression" => PathMatch::Regex(Regex::new(&value).map_err(|e| {
                    FieldError::new(
                        format!("{field}.path.value"),
                        crate::traffic::regex_error(&e),
                    )
                })?),
                other => {
                    return Err(FieldError::new(
                        format!("{field}.path.type"),
                        format!("must be Exact, PathPrefix or RegularExpression, got {other:?}"),
                    ));
                }
            }
        }
    };
    if let PathMatch::Exact(v) | PathMatch::SegmentPrefix(v) = &path
        && !v.starts_with('/')
    {
        {
            return Err(FieldError::new(
                format!("{field}.path.value"),
                format!("must start with '/', got {v:?}"),
            ));
        }
    }
    let mut query = Vec::new();
    for (i, q) in m.query_params.iter().enumerate() {
        let f = format!("{field}.queryParams[{i}]");
        query.push(QueryMatch {
            name: q.name.clone(),
            value: Some(string_match(&f, q.kind.as_deref(), &q.value)?),
        });
    }
    Ok(HttpMatch {
        path: Some(path),
        method: m.method.as_ref().map(|s| s.to_ascii_uppercase()),
        headers: headers(&format!("{field}.headers"), &m.headers)?,
        query,
        ..HttpMatch::default()
    })
}

fn grpc_match(field: &str, m: &GrpcRouteMatch) -> Result<HttpMatch, FieldError> {
    let path = match &m.method {
        None => None,
        Some(gm) => {
            let f = format!("{field}.method");
            match (
                gm.kind.as_deref().unwrap_or("Exact"),
                &gm.service,
                &gm.method,
            ) {
                (_, None, None) => {
                    return Err(FieldError::new(f, "must set service or method"));
                }
                ("Exact", Some(s), Some(m)) => Some(PathMatch::Exact(format!("/{s}/{m}"))),
                ("Exact", Some(s), None) => Some(PathMatch::Prefix(format!("/{s}/"))),
                ("Exact", None, Some(m)) => Some(PathMatch::Regex(
                    Regex::new(&format!("/[^/]+/{}", regex_escape(m)))
                        .map_err(|e| FieldError::new(f.clone(), e.to_string()))?,
                )),
                ("RegularExpression", s, m) => {
                    let s = s.as_deref().unwrap_or("[^/]+");
                    let m = m.as_deref().unwrap_or("[^/]+");
                    Some(PathMatch::Regex(
                        Regex::new(&format!("/(?:{s})/(?:{m})")).map_err(|e| {
                            FieldError::new(f.clone(), crate::traffic::regex_error(&e))
                        })?,
                    ))
                }
                (other, _, _) => {
                    return Err(FieldError::new(
                        format!("{f}.type"),
                        format!("must be Exact or RegularExpression, got {other:?}"),
                    ));
                }
            }
        }
    };
    Ok(HttpMatch {
        path,
        headers: headers(&format!("{field}.headers"), &m.headers)?,
        ..HttpMatch::default()
    })
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc = c.is_ascii_punctuation();
            esc.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

/// Where a backendRef to another namespace may appear: only the gateway compile checks
/// ReferenceGrants, so only a route whose parents are all Gateways may carry one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OtherNamespace {
    /// A `backendRefs[]` entry of a route with Gateway parents only.
    Granted,
    /// A `backendRefs[]` entry of a route with a Service parent (a mesh route).
    MeshRoute,
    /// A `RequestMirror` filter's backend.
    Mirror,
}

/// Whether any parentRef is a Service (a GAMMA mesh route), by the same defaults [`parents`]
/// reads them with.
fn has_service_parent(refs: &[ParentRef]) -> bool {
    refs.iter().any(|p| {
        matches!(p.group.as_deref(), Some("" | "core"))
            && p.kind.as_deref().unwrap_or("Gateway") == "Service"
    })
}

fn backend_ref(
    source: &ResourceRef,
    field: &str,
    b: &Backend,
    other_namespace: OtherNamespace,
) -> Result<BackendRef, FieldError> {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !matches!(group, "" | "core") || kind != "Service" {
        return Err(not_yet(
            format!("{field}.kind"),
            &format!("a backend of kind {kind} (group {group:?})"),
        ));
    }
    let namespace = b.namespace.as_ref().unwrap_or(&source.namespace);
    if *namespace != source.namespace {
        if !crate::kube::is_dns1123_label(namespace) {
            return Err(FieldError::new(
                format!("{field}.namespace"),
                format!("must be a DNS-1123 label, got {namespace:?}"),
            ));
        }
        let refused = match other_namespace {
            OtherNamespace::Granted => None,
            OtherNamespace::MeshRoute => Some(
                "a backend in another namespace on a route with a Service parent (ReferenceGrant is checked for Gateway parents only)",
            ),
            OtherNamespace::Mirror => Some("a mirror backend in another namespace"),
        };
        if let Some(what) = refused {
            return Err(not_yet(format!("{field}.namespace"), what));
        }
    }
    let p = b.port.ok_or_else(|| {
        FieldError::new(format!("{field}.port"), "is required for a Service backend")
    })?;
    Ok(BackendRef {
        service: ServiceKey::new(namespace.clone(), b.name.clone()),
        port: Some(port(&format!("{field}.port"), p)?),
        subset: None,
    })
}

fn backends(
    source: &ResourceRef,
    field: &str,
    list: &[Backend],
    other_namespace: OtherNamespace,
) -> Result<Vec<WeightedBackend>, FieldError> {
    let mut out = Vec::new();
    for (i, b) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let weight = match b.weight {
            None => 1,
            Some(w) if (0..=1_000_000).contains(&w) => w as u32,
            Some(w) => {
                return Err(FieldError::new(
                    format!("{f}.weight"),
                    format!("must be 0-1000000, got {w}"),
                ));
            }
        };
        let bf = filters(source, &format!("{f}.filters"), &b.filters, false)?;
        if bf.redirect.is_some() || bf.rewrite.is_some() || !bf.mirrors.is_empty() {
            return Err(not_yet(
                format!("{f}.filters"),
                "a backend filter other than the header modifiers",
            ));
        }
        out.push(WeightedBackend {
            backend: backend_ref(source, &f, b, other_namespace)?,
            weight,
            request_headers: bf.request_headers,
            response_headers: bf.response_headers,
        });
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn build(
    source: &ResourceRef,
    field: &str,
    name: String,
    matches: Vec<HttpMatch>,
    f: Filters,
    forward: Vec<WeightedBackend>,
    timeout: Option<std::time::Duration>,
    per_try: Option<std::time::Duration>,
    out: &mut Vec<HttpRoute>,
) {
    let _ = field;
    let action = match f.redirect {
        Some(r) => RouteAction::Redirect(r),
        // No backend: Gateway API answers 500, which Forward with no weight does.
        None => RouteAction::Forward(forward),
    };
    // The model has no per-try timeout without a retry policy, so `backendRequest` comes with
    // the mesh's default retry conditions (what the proxy applies to a route without a policy:
    // 2 retries on connect-failure and refused-stream), leaving retries as they would be.
    let retry = per_try.map(|t| RetryPolicy {
        attempts: 2,
        per_try_timeout: Some(t),
        on: RetryOn {
            connect_failure: true,
            refused_stream: true,
            ..RetryOn::default()
        },
    });
    // One route per match: precedence is per match in Gateway API.
    let blocks: Vec<Option<HttpMatch>> = if matches.is_empty() {
        vec![None]
    } else {
        matches.into_iter().map(Some).collect()
    };
    for m in blocks {
        out.push(HttpRoute {
            name: name.clone(),
            source: source.clone(),
            matches: m.into_iter().collect(),
            action: action.clone(),
            request_headers: f.request_headers.clone(),
            response_headers: f.response_headers.clone(),
            rewrite: f.rewrite.clone(),
            mirrors: f.mirrors.clone(),
            fault: None,
            timeout,
            retry: retry.clone(),
        });
    }
}

fn finish(
    kind: &str,
    meta: Meta,
    parent_refs: &[ParentRef],
    hostnames: &[String],
    rules: impl FnOnce(&ResourceRef, &mut Vec<HttpRoute>) -> Result<(), FieldError>,
) -> Result<Translated, FieldError> {
    let source = meta.reference(kind)?;
    let mut notes = Vec::new();
    let (parents, gateways) = parents(&source, parent_refs, &mut notes)?;
    if parents.is_empty() && gateways.is_empty() {
        return Ok(Translated::Ignored(
            "no parentRef of kind Service or Gateway".into(),
        ));
    }
    if !hostnames.is_empty() && !parents.is_empty() {
        notes.push(
            "spec.hostnames ignored for Service parents: mesh routes apply to their parent Service"
                .into(),
        );
    }
    let mut http = Vec::new();
    rules(&source, &mut http)?;
    // A request to the parent that no rule matches gets 404 (HTTPRoute) or gRPC UNIMPLEMENTED
    // (GRPCRoute), as the spec requires, not the Service's own endpoints. Its empty match list
    // sorts after every rule of every route attached to the parent (`precedence_key`). The same
    // rules serve a route's Gateway parents and its Service parents.
    if !http.is_empty() && !http.iter().any(crate::no_route::takes_everything) {
        http.push(if kind == "GRPCRoute" {
            crate::no_route::grpc(&source)
        } else {
            crate::no_route::http(&source)
        });
    }
    if !gateways.is_empty() {
        for (i, h) in hostnames.iter().enumerate() {
            if !crate::gateways::is_api_hostname(h) {
                return Err(FieldError::new(
                    format!("spec.hostnames[{i}]"),
                    format!("must be a host name or \"*.suffix\", got {h:?}"),
                ));
            }
        }
        let mesh = (!parents.is_empty()).then(|| {
            Box::new(RouteSet {
                api: RouteApi::GatewayApi,
                source: source.clone(),
                created: meta.creation_timestamp.clone(),
                parents,
                http: http.clone(),
                tcp: Vec::new(),
                policy: PolicyLayer::default(),
                notes: Vec::new(),
            })
        });
        return Ok(Translated::Resource(Resource::Gateway(Box::new(
            crate::gateways::GatewayResource::Routes(crate::gateways::GatewayRoutes {
                api: RouteApi::GatewayApi,
                source,
                created: meta.creation_timestamp,
                gateways,
                hosts: hostnames.iter().map(|h| h.to_ascii_lowercase()).collect(),
                http,
                tls: Vec::new(),
                tcp: Vec::new(),
                mesh,
                notes,
            }),
        ))));
    }
    Ok(Translated::Resource(Resource::Routes(Box::new(RouteSet {
        api: RouteApi::GatewayApi,
        source,
        created: meta.creation_timestamp,
        parents,
        http,
        tcp: Vec::new(),
        policy: PolicyLayer::default(),
        notes,
    }))))
}

fn rule_name(source: &ResourceRef, name: Option<&String>, i: usize) -> String {
    match name {
        Some(n) => format!("{}/{n}", source.name),
        None => format!("{}/{i}", source.name),
    }
}

/// An HTTPRoute or a GRPCRoute rule as translation reads it: the two kinds share all but
/// their match blocks, HTTP's `retry` and `timeouts`, and the match a rule without any gets.
trait RouteRule: serde::de::DeserializeOwned {
    /// The resource kind, for its [`ResourceRef`].
    const KIND: &'static str;
    /// Whether the rule's filters are a GRPCRoute's.
    const GRPC: bool;
    /// One `matches[]` entry as written.
    type Match;

    fn name(&self) -> Option<&String>;
    fn matches(&self) -> &[Self::Match];
    fn filters(&self) -> &[Filter];
    fn backend_refs(&self) -> &[Backend];
    /// `sessionPersistence` is set (refused: not supported yet).
    fn session_persistence(&self) -> bool;
    /// `retry` is set (HTTPRoute only; refused: not supported yet).
    fn retry(&self) -> bool {
        false
    }
    /// One match block, `field` naming it in errors.
    fn translate_match(field: &str, m: &Self::Match) -> Result<HttpMatch, FieldError>;
    /// The request timeout and the per-try (backend request) timeout; zero is none.
    fn timeouts(&self, field: &str) -> Result<(Option<Duration>, Option<Duration>), FieldError> {
        let _ = field;
        Ok((None, None))
    }
    /// The match of a rule without matches, which matches every request.
    fn match_all() -> HttpMatch;
}

/// The [`RouteRule`] items both rule structs read from fields of the same names (serde's
/// `flatten` cannot share the fields: it does not work with `deny_unknown_fields`).
macro_rules! rule_fields {
    ($match:ty) => {
        type Match = $match;

        fn name(&self) -> Option<&String> {
            self.name.as_ref()
        }
        fn matches(&self) -> &[$match] {
            &self.matches
        }
        fn filters(&self) -> &[Filter] {
            &self.filters
        }
        fn backend_refs(&self) -> &[Backend] {
            &self.backend_refs
        }
        fn session_persistence(&self) -> bool {
            self.session_persistence.is_some()
        }
    };
}

impl RouteRule for HttpRule {
    const KIND: &'static str = "HTTPRoute";
    const GRPC: bool = false;
    rule_fields!(HttpRouteMatch);

    fn retry(&self) -> bool {
        self.retry.is_some()
    }
    fn translate_match(field: &str, m: &HttpRouteMatch) -> Result<HttpMatch, FieldError> {
        http_match(field, m)
    }
    fn timeouts(&self, field: &str) -> Result<(Option<Duration>, Option<Duration>), FieldError> {
        let (mut timeout, mut per_try) = (None, None);
        if let Some(t) = &self.timeouts {
            if let Some(r) = &t.request {
                timeout = Some(duration(&format!("{field}.timeouts.request"), r)?)
                    .filter(|d| !d.is_zero());
            }
            if let Some(b) = &t.backend_request {
                per_try = Some(duration(&format!("{field}.timeouts.backendRequest"), b)?)
                    .filter(|d| !d.is_zero());
            }
            if let (Some(r), Some(b)) = (timeout, per_try)
                && b > r
            {
                return Err(FieldError::new(
                    format!("{field}.timeouts.backendRequest"),
                    "must not be longer than timeouts.request",
                ));
            }
        }
        Ok((timeout, per_try))
    }
    /// PathPrefix "/".
    fn match_all() -> HttpMatch {
        HttpMatch {
            path: Some(PathMatch::SegmentPrefix("/".into())),
            ..HttpMatch::default()
        }
    }
}

impl RouteRule for GrpcRule {
    const KIND: &'static str = "GRPCRoute";
    const GRPC: bool = true;
    rule_fields!(GrpcRouteMatch);

    fn translate_match(field: &str, m: &GrpcRouteMatch) -> Result<HttpMatch, FieldError> {
        grpc_match(field, m)
    }
    /// One empty match block, so that only the no-route catch-all has none.
    fn match_all() -> HttpMatch {
        HttpMatch::default()
    }
}

pub(crate) fn translate_http(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    translate_route::<HttpRule>(value)
}

pub(crate) fn translate_grpc(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    translate_route::<GrpcRule>(value)
}

/// An HTTPRoute or GRPCRoute: each rule is checked in the order its errors are reported
/// (unsupported fields, matches, filters, backends, timeouts), then becomes one model route
/// per match.
fn translate_route<R: RouteRule>(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let route: Route<R> = from_value(value)?;
    let spec = route.spec;
    let rules = spec.rules;
    let other_namespace = if has_service_parent(&spec.parent_refs) {
        OtherNamespace::MeshRoute
    } else {
        OtherNamespace::Granted
    };
    finish(
        R::KIND,
        route.metadata,
        &spec.parent_refs,
        &spec.hostnames,
        |source, out| {
            for (i, rule) in rules.iter().enumerate() {
                let field = format!("spec.rules[{i}]");
                if rule.retry() {
                    return Err(not_yet(format!("{field}.retry"), "rules[].retry"));
                }
                if rule.session_persistence() {
                    return Err(not_yet(
                        format!("{field}.sessionPersistence"),
                        "session persistence",
                    ));
                }
                let matches = rule
                    .matches()
                    .iter()
                    .enumerate()
                    .map(|(j, m)| R::translate_match(&format!("{field}.matches[{j}]"), m))
                    .collect::<Result<Vec<_>, _>>()?;
                let f = filters(source, &format!("{field}.filters"), rule.filters(), R::GRPC)?;
                let forward = backends(
                    source,
                    &format!("{field}.backendRefs"),
                    rule.backend_refs(),
                    other_namespace,
                )?;
                let (timeout, per_try) = rule.timeouts(&field)?;
                let name = rule_name(source, rule.name(), i);
                let matches = if matches.is_empty() {
                    vec![R::match_all()]
                } else {
                    matches
                };
                build(
                    source, &field, name, matches, f, forward, timeout, per_try, out,
                );
            }
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        let exact = HttpMatch {
            path: Some(PathMatch::Exact("/a".into())),
            ..Default::default()
        };
        let long = HttpMatch {
            path: Some(PathMatch::SegmentPrefix("/abc".into())),
            ..Default::default()
        };
        let short = HttpMatch {
            path: Some(PathMatch::SegmentPrefix("/a".into())),
            ..Default::default()
        };
        let method = HttpMatch {
            method: Some("GET".into()),
            ..short.clone()
        };
        let mut v = vec![&short, &method, &exact, &long];
        v.sort_by_key(|m| precedence_key(Some(m)));
        assert_eq!(v, [&exact, &long, &method, &short]);
        // The no-route catch-all (no match block) comes after any rule, even a regex.
        let regex = HttpMatch {
            path: Some(PathMatch::Regex(Regex::new("x").unwrap())),
            ..Default::default()
        };
        assert!(precedence_key(None) > precedence_key(Some(&regex)));
        assert!(precedence_key(None) > precedence_key(Some(&HttpMatch::default())));
    }

    fn translate(yaml: &str) -> Result<Translated, FieldError> {
        let value: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        translate_http(value)
    }

    const CROSS: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [PARENT]
  rules: [{backendRefs: [{name: reviews, namespace: other, port: 9080}]}]
";

    #[test]
    fn a_backend_in_another_namespace_keeps_it_on_gateway_routes_only() {
        let gw = translate(&CROSS.replace("PARENT", "{name: edge}")).unwrap();
        let Translated::Resource(Resource::Gateway(g)) = gw else {
            panic!("{gw:?}")
        };
        let crate::gateways::GatewayResource::Routes(r) = *g else {
            panic!("{g:?}")
        };
        let RouteAction::Forward(bs) = &r.http[0].action else {
            panic!("{:?}", r.http[0].action)
        };
        assert_eq!(bs[0].backend.service, ServiceKey::new("other", "reviews"));
        // A Service parent: the mesh compile checks no grant, so it is refused by field.
        let mesh = translate(&CROSS.replace(
            "PARENT",
            "{name: edge}, {group: '', kind: Service, name: reviews}",
        ))
        .unwrap_err();
        assert_eq!(
            mesh.field.as_deref(),
            Some("spec.rules[0].backendRefs[0].namespace")
        );
        let bad = translate(
            &CROSS
                .replace("PARENT", "{name: edge}")
                .replace("namespace: other", "namespace: Other_NS"),
        )
        .unwrap_err();
        assert_eq!(
            bad.field.as_deref(),
            Some("spec.rules[0].backendRefs[0].namespace")
        );
    }

    /// The mesh routes of one HTTPRoute or GRPCRoute of namespace `shop` with `rules`.
    fn mesh_routes(kind: &str, rules: &str) -> Result<Vec<HttpRoute>, FieldError> {
        let yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata: {{name: r, namespace: shop}}
spec:
  parentRefs: [{{group: '', kind: Service, name: reviews}}]
  rules: {rules}
"
        );
        let value: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let translated = match kind {
            "GRPCRoute" => translate_grpc(value),
            _ => translate_http(value),
        }?;
        let Translated::Resource(Resource::Routes(set)) = translated else {
            panic!("{translated:?}")
        };
        Ok(set.http)
    }

    #[test]
    fn http_and_grpc_rules_differ_only_where_their_kinds_do() {
        let plain = "[{backendRefs: [{name: reviews, port: 9080}]}]";
        // A rule without matches matches every request: HTTP's by the path prefix "/", gRPC's
        // by one empty match block.
        let http = mesh_routes("HTTPRoute", plain).unwrap();
        let all_paths = HttpMatch {
            path: Some(PathMatch::SegmentPrefix("/".into())),
            ..HttpMatch::default()
        };
        assert_eq!(
            (http[0].name.as_str(), &http[0].matches[..]),
            ("r/0", &[all_paths][..])
        );
        let grpc = mesh_routes("GRPCRoute", plain).unwrap();
        assert_eq!(
            (grpc[0].name.as_str(), &grpc[0].matches[..]),
            ("r/0", &[HttpMatch::default()][..])
        );
        // HTTP's timeouts, a zero one being none; gRPC has no such field.
        let timed = mesh_routes(
            "HTTPRoute",
            "[{name: t, timeouts: {request: 2s, backendRequest: 0s}, backendRefs: [{name: reviews, port: 9080}]}]",
        )
        .unwrap();
        assert_eq!(
            (timed[0].name.as_str(), timed[0].timeout),
            ("r/t", Some(Duration::from_secs(2)))
        );
        assert!(mesh_routes("GRPCRoute", "[{timeouts: {request: 2s}}]").is_err());
        // Refused by field, the first in the order they are checked.
        for (kind, rules, field) in [
            (
                "HTTPRoute",
                "[{retry: {attempts: 2}, sessionPersistence: {}}]",
                "spec.rules[0].retry",
            ),
            (
                "HTTPRoute",
                "[{sessionPersistence: {}, matches: [{path: {type: Bogus}}]}]",
                "spec.rules[0].sessionPersistence",
            ),
            (
                "GRPCRoute",
                "[{}, {sessionPersistence: {}}]",
                "spec.rules[1].sessionPersistence",
            ),
            (
                "HTTPRoute",
                "[{timeouts: {request: 1s, backendRequest: 2s}}]",
                "spec.rules[0].timeouts.backendRequest",
            ),
        ] {
            let err = mesh_routes(kind, rules).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{kind} {rules}: {err:?}");
        }
    }

    #[test]
    fn escape() {
        assert_eq!(regex_escape("a.b"), "a\\.b");
    }
}
