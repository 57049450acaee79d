//! The decision: one request (or TCP connection) against one workload's policies, in Istio's
//! order. DENY policies first (any match denies); then, if any ALLOW policy covers the workload,
//! the request is denied unless one matches; with none, the mesh default decides. AUDIT
//! policies only report. Dry-run policies never change the decision: they are evaluated in a
//! shadow pass that reports what would have been denied.
//!
//! TCP traffic has no HTTP attributes. As Istio does, an ALLOW (or AUDIT) rule that uses an
//! HTTP-only field never matches a TCP connection, while a DENY rule keeps its L4 part (its
//! HTTP-only fields are ignored), so a DENY written for HTTP still closes TCP connections from
//! the same source: the safe side.

use std::net::IpAddr;

use super::Cidr;
use super::pattern::{matches, matches_ignore_case};
use super::policy::{
    Action, Condition, DefaultPolicy, Key, Operation, Policy, Rule, Source, Values, WorkloadAuthz,
};
use crate::authn::RequestAuth;

/// The HTTP side of a request; absent for TCP connections.
#[derive(Clone, Copy, Debug)]
pub struct HttpAttributes<'a> {
    /// The authority (`host[:port]`).
    pub host: &'a str,
    pub method: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The validated JWT identity, when a token was presented and accepted.
    pub auth: Option<&'a RequestAuth>,
}

/// What authorization knows of a request or connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request<'a> {
    /// The mTLS peer's principal in Istio's form (`cluster.local/ns/<ns>/sa/<sa>`); `None`
    /// for plaintext.
    pub peer_principal: Option<&'a str>,
    /// `source.namespace`: the peer principal's namespace.
    pub source_namespace: Option<&'a str>,
    /// The downstream connection's address.
    pub source_ip: Option<IpAddr>,
    /// The original client (the same as `source_ip` unless a trusted hop says otherwise).
    pub remote_ip: Option<IpAddr>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: u16,
    pub sni: Option<&'a str>,
    pub http: Option<HttpAttributes<'a>>,
}

/// A rule of a policy, by index in [`WorkloadAuthz::policies`] and the policy's `rules`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub policy: usize,
    pub rule: usize,
}

/// Why a request was allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A DENY policy's rule matched.
    Denied(Hit),
    /// An ALLOW policy's rule matched.
    Allowed(Hit),
    /// ALLOW policies cover the workload and none matched (the first one names it).
    NoAllowMatched { first_allow: usize },
    /// No ALLOW policy covers the workload: the mesh default decided.
    Default(DefaultPolicy),
}

/// The outcome for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
    /// AUDIT rules that matched (enforced AUDIT policies only).
    pub audits: Vec<Hit>,
    /// The default policy is `audit` and decided for a request it reports.
    pub default_audit: bool,
    /// The request is allowed, but would have been denied with the dry-run policies enforced:
    /// what decided in that shadow evaluation.
    pub dry_run_denied: Option<Reason>,
}

/// Private and loopback ranges: the cluster networks when none are configured.
const DEFAULT_CLUSTER_NETWORKS: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "100.64.0.0/10",
    "::1/128",
    "fd00::/8",
];

/// Decides `req` against `authz` (see the module docs for the order).
pub fn evaluate(authz: &WorkloadAuthz, req: &Request<'_>) -> Decision {
    let mut audits = Vec::new();
    for (p, policy) in authz.policies.iter().enumerate() {
        if policy.action == Action::Audit
            && !policy.dry_run
            && let Some(rule) = first_match(policy, req)
        {
            audits.push(Hit { policy: p, rule });
        }
    }
    let reason = decide(authz, req, false);
    let allowed = is_allowed(authz, req, reason);
    let dry_run_denied = if allowed && authz.policies.iter().any(|p| p.dry_run) {
        let shadow = decide(authz, req, true);
        (!is_allowed(authz, req, shadow)).then_some(shadow)
    } else {
        None
    };
    let default_audit =
        reason == Reason::Default(DefaultPolicy::Audit) && !authenticated(req.peer_principal);
    Decision {
        allowed,
        reason,
        audits,
        default_audit,
        dry_run_denied,
    }
}

fn authenticated(principal: Option<&str>) -> bool {
    principal.is_some_and(|p| !p.is_empty())
}

fn is_allowed(authz: &WorkloadAuthz, req: &Request<'_>, reason: Reason) -> bool {
    match reason {
        Reason::Denied(_) | Reason::NoAllowMatched { .. } => false,
        Reason::Allowed(_) => true,
        Reason::Default(d) => match d {
            DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => true,
            DefaultPolicy::Deny => false,
            DefaultPolicy::AllAuthenticated => authenticated(req.peer_principal),
            DefaultPolicy::ClusterAuthenticated => {
                authenticated(req.peer_principal)
                    && req.source_ip.is_some_and(|ip| in_cluster(authz, ip))
            }
        },
    }
}

fn in_cluster(authz: &WorkloadAuthz, ip: IpAddr) -> bool {
    if authz.cluster_networks.is_empty() {
        DEFAULT_CLUSTER_NETWORKS
            .iter()
            .filter_map(|c| c.parse::<Cidr>().ok())
            .any(|c| c.contains(ip))
    } else {
        authz.cluster_networks.iter().any(|c| c.contains(ip))
    }
}

/// DENY, then ALLOW, then the default. `shadow` includes the dry-run policies as if enforced.
fn decide(authz: &WorkloadAuthz, req: &Request<'_>, shadow: bool) -> Reason {
    let counted = |p: &&Policy| shadow || !p.dry_run;
    for (p, policy) in authz.policies.iter().enumerate() {
        if policy.action == Action::Deny
            && counted(&policy)
            && let Some(rule) = first_match(policy, req)
        {
            return Reason::Denied(Hit { policy: p, rule });
        }
    }
    let mut first_allow = None;
    for (p, policy) in authz.policies.iter().enumerate() {
        if policy.action != Action::Allow || !counted(&policy) {
            continue;
        }
        first_allow.get_or_insert(p);
        if let Some(rule) = first_match(policy, req) {
            return Reason::Allowed(Hit { policy: p, rule });
        }
    }
    match first_allow {
        Some(first_allow) => Reason::NoAllowMatched { first_allow },
        None => Reason::Default(authz.default),
    }
}

/// The index of the first rule of `policy` that matches.
pub fn first_match(policy: &Policy, req: &Request<'_>) -> Option<usize> {
    // For TCP traffic: does a DENY keep the L4 part of HTTP rules (true), or does an
    // ALLOW/AUDIT rule with HTTP fields not match at all (false)?
    let keep_l4 = policy.action == Action::Deny;
    policy
        .rules
        .iter()
        .position(|rule| rule_matches(rule, req, keep_l4))
}

fn rule_matches(rule: &Rule, req: &Request<'_>, keep_l4: bool) -> bool {
    if req.http.is_none() && !keep_l4 && rule_is_http_only(rule) {
        return false;
    }
    (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, req)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, req)))
        && rule.when.iter().all(|c| condition_holds(c, req))
}

/// Whether a rule names anything only HTTP requests have.
pub fn rule_is_http_only(rule: &Rule) -> bool {
    rule.from
        .iter()
        .any(|s| !s.request_principals.is_empty() || !s.not_request_principals.is_empty())
        || rule.to.iter().any(|o| {
            !(o.hosts.is_empty()
                && o.not_hosts.is_empty()
                && o.methods.is_empty()
                && o.not_methods.is_empty()
                && o.paths.is_empty()
                && o.not_paths.is_empty())
        })
        || rule.when.iter().any(|c| c.key.is_http_only())
}

/// `values` empty, or some value accepted; and `not_values` empty, or none accepted. An
/// absent attribute (`value` is `None`) matches no value and so passes every `not_*` list.
fn one_of<T: ?Sized>(
    values: &[String],
    not_values: &[String],
    value: Option<&T>,
    accept: impl Fn(&str, &T) -> bool,
) -> bool {
    let any = |list: &[String]| value.is_some_and(|v| list.iter().any(|p| accept(p, v)));
    (values.is_empty() || any(values)) && (not_values.is_empty() || !any(not_values))
}

fn in_blocks(values: &[Cidr], not_values: &[Cidr], ip: Option<IpAddr>) -> bool {
    let any = |list: &[Cidr]| ip.is_some_and(|ip| list.iter().any(|c| c.contains(ip)));
    (values.is_empty() || any(values)) && (not_values.is_empty() || !any(not_values))
}

fn source_matches(s: &Source, req: &Request<'_>) -> bool {
    let request_principal = req.http.and_then(|h| h.auth).map(|a| a.principal.as_str());
    let http_ok = match req.http {
        Some(_) => one_of(
            &s.request_principals,
            &s.not_request_principals,
            request_principal,
            matches,
        ),
        // Only a DENY rule reaches here for TCP with these fields: they are ignored.
        None => true,
    };
    one_of(
        &s.principals,
        &s.not_principals,
        req.peer_principal,
        matches,
    ) && one_of(
        &s.namespaces,
        &s.not_namespaces,
        req.source_namespace,
        matches,
    ) && in_blocks(&s.ip_blocks, &s.not_ip_blocks, req.source_ip)
        && in_blocks(&s.remote_ip_blocks, &s.not_remote_ip_blocks, req.remote_ip)
        && http_ok
}

fn host_matches(pattern: &str, authority: &str) -> bool {
    // `Host: reviews:9080` matches `reviews` and `reviews:9080`, as Istio generates both.
    matches_ignore_case(pattern, authority)
        || authority
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .is_some_and(|(host, _)| matches_ignore_case(pattern, host))
}

fn operation_matches(o: &Operation, req: &Request<'_>) -> bool {
    let port = req.destination_port;
    let ports_ok = (o.ports.is_empty() || o.ports.contains(&port)) && !o.not_ports.contains(&port);
    let http_ok = match req.http {
        Some(h) => {
            one_of(&o.hosts, &o.not_hosts, Some(h.host), host_matches)
                && one_of(&o.methods, &o.not_methods, Some(h.method), matches)
                && one_of(&o.paths, &o.not_paths, Some(h.path), matches)
        }
        None => true,
    };
    ports_ok && http_ok
}

fn condition_holds(c: &Condition, req: &Request<'_>) -> bool {
    match (&c.values, &c.not_values) {
        (Values::Cidrs(values), Values::Cidrs(not_values)) => {
            let ip = match c.key {
                Key::SourceIp => req.source_ip,
                Key::RemoteIp => req.remote_ip,
                Key::DestinationIp => req.destination_ip,
                _ => None,
            };
            in_blocks(values, not_values, ip)
        }
        (Values::Patterns(values), Values::Patterns(not_values)) => {
            if c.key.is_http_only() && req.http.is_none() {
                // Only a DENY rule reaches here for TCP: the HTTP-only condition is ignored.
                return true;
            }
            let accept = |pattern: &str| attribute_any(&c.key, req, &|v| matches(pattern, v));
            (values.is_empty() || values.iter().any(|p| accept(p)))
                && (not_values.is_empty() || !not_values.iter().any(|p| accept(p)))
        }
        // Mixed kinds are refused when the policy is read; never match one that slipped by.
        _ => false,
    }
}

/// Whether any value of the attribute `key` satisfies `f` (false when it has none).
fn attribute_any(key: &Key, req: &Request<'_>, f: &dyn Fn(&str) -> bool) -> bool {
    let http = req.http;
    let auth = http.and_then(|h| h.auth);
    match key {
        Key::RequestHeader(name) => http.is_some_and(|h| {
            h.headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(f)
        }),
        Key::SourceNamespace => req.source_namespace.is_some_and(f),
        Key::SourcePrincipal => req.peer_principal.is_some_and(f),
        Key::RequestPrincipal => auth.is_some_and(|a| f(&a.principal)),
        Key::Audiences => auth.is_some_and(|a| a.audiences.iter().any(|v| f(v))),
        Key::Presenter => auth.and_then(|a| a.presenter.as_deref()).is_some_and(f),
        Key::Claim(path) => auth.is_some_and(|a| claim_any(&a.claims, path, f)),
        Key::DestinationPort => {
            // Ports are compared as numbers; patterns were checked to be numbers when read.
            let port = req.destination_port;
            port_any(port, f)
        }
        Key::ConnectionSni => req.sni.is_some_and(f),
        Key::SourceIp | Key::RemoteIp | Key::DestinationIp => false,
    }
}

fn port_any(port: u16, f: &dyn Fn(&str) -> bool) -> bool {
    let mut buf = [0u8; 5];
    let mut n = port;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).is_ok_and(f)
}

/// A claim's value at `path` (nested objects): a string, or any string of a list.
fn claim_any(
    claims: &serde_json::Map<String, serde_json::Value>,
    path: &[String],
    f: &dyn Fn(&str) -> bool,
) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let mut value = claims.get(first);
    for segment in rest {
        value = value.and_then(|v| v.get(segment));
    }
    match value {
        Some(serde_json::Value::String(s)) => f(s),
        Some(serde_json::Value::Array(items)) => items.iter().any(|v| v.as_str().is_some_and(f)),
        Some(serde_json::Value::Bool(b)) => f(if *b { "true" } else { "false" }),
        Some(serde_json::Value::Number(n)) => f(&n.to_string()),
        _ => false,
    }
}
