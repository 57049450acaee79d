//! Istio `AuthorizationPolicy` (security.istio.io v1, v1beta1) -> [`AuthzPolicy`]: a
//! [`Scope`] (which workloads it covers) and a [`Policy`] (what the proxy evaluates, see
//! `trellis_model::authz`). Everything is validated here, so a proxy never receives a pattern,
//! IP block or condition key it cannot evaluate; errors name the field
//! (`spec.rules[0].from[1].source.principals[2]`).
//!
//! Not read: `action: CUSTOM` (external authorizers) and `targetRefs` to anything but a
//! Service; both are refused with a clear error rather than silently ignored, because a
//! policy that is not enforced is a security hole.

use std::collections::BTreeMap;

use serde::Deserialize;
use trellis_model::authz::{
    Action, Cidr, Condition, Key, Operation, Policy, Rule, Scope, Source, Values, pattern,
};
use trellis_model::route::ResourceRef;

use crate::document::{Resource, Translated};
use crate::kube::FieldError;
use crate::traffic::{Meta, from_value};

use super::policy_target::{Selector, TargetRef, scope};

/// The annotations that make a policy dry-run (evaluated and reported, never enforced).
pub const DRY_RUN_ANNOTATIONS: &[&str] = &["trellis.io/dry-run", "istio.io/dry-run"];

/// One AuthorizationPolicy, translated.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AuthzPolicy {
    pub source: ResourceRef,
    pub scope: Scope,
    pub policy: Policy,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct AuthorizationPolicy {
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
}

/// `metadata` with the annotations (the dry-run flag); shared by the security.istio.io kinds.
#[derive(Debug, Deserialize)]
pub(crate) struct Metadata {
    #[serde(flatten)]
    pub(crate) meta: Meta,
    #[serde(default)]
    pub(crate) annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    selector: Option<Selector>,
    target_ref: Option<TargetRef>,
    #[serde(default)]
    target_refs: Vec<TargetRef>,
    action: Option<String>,
    provider: Option<serde_yaml::Value>,
    /// `None` and `Some([])` are the same: no rules.
    rules: Option<Vec<RuleSpec>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    from: Vec<FromSpec>,
    #[serde(default)]
    to: Vec<ToSpec>,
    #[serde(default)]
    when: Vec<ConditionSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FromSpec {
    source: Option<SourceSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToSpec {
    operation: Option<OperationSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SourceSpec {
    #[serde(default)]
    principals: Vec<String>,
    #[serde(default)]
    not_principals: Vec<String>,
    #[serde(default)]
    request_principals: Vec<String>,
    #[serde(default)]
    not_request_principals: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    not_namespaces: Vec<String>,
    #[serde(default)]
    ip_blocks: Vec<String>,
    #[serde(default)]
    not_ip_blocks: Vec<String>,
    #[serde(default)]
    remote_ip_blocks: Vec<String>,
    #[serde(default)]
    not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OperationSpec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    not_hosts: Vec<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    not_ports: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    not_methods: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    not_paths: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConditionSpec {
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    not_values: Vec<String>,
}

fn patterns(field: &str, list: &[String]) -> Result<Vec<String>, FieldError> {
    for (i, p) in list.iter().enumerate() {
        if let Some(why) = pattern::check(p) {
            return Err(FieldError::new(format!("{field}[{i}]"), why));
        }
    }
    Ok(list.to_vec())
}

fn cidrs(field: &str, list: &[String]) -> Result<Vec<Cidr>, FieldError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<Cidr>()
                .map_err(|e| FieldError::new(format!("{field}[{i}]"), e.to_string()))
        })
        .collect()
}

fn ports(field: &str, list: &[String]) -> Result<Vec<u16>, FieldError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                FieldError::new(
                    format!("{field}[{i}]"),
                    format!("{s:?} is not a port (1-65535)"),
                )
            })
        })
        .collect()
}

fn source(field: &str, s: &SourceSpec) -> Result<Source, FieldError> {
    let f = |name: &str| format!("{field}.{name}");
    let source = Source {
        principals: patterns(&f("principals"), &s.principals)?,
        not_principals: patterns(&f("notPrincipals"), &s.not_principals)?,
        request_principals: patterns(&f("requestPrincipals"), &s.request_principals)?,
        not_request_principals: patterns(&f("notRequestPrincipals"), &s.not_request_principals)?,
        namespaces: patterns(&f("namespaces"), &s.namespaces)?,
        not_namespaces: patterns(&f("notNamespaces"), &s.not_namespaces)?,
        ip_blocks: cidrs(&f("ipBlocks"), &s.ip_blocks)?,
        not_ip_blocks: cidrs(&f("notIpBlocks"), &s.not_ip_blocks)?,
        remote_ip_blocks: cidrs(&f("remoteIpBlocks"), &s.remote_ip_blocks)?,
        not_remote_ip_blocks: cidrs(&f("notRemoteIpBlocks"), &s.not_remote_ip_blocks)?,
    };
    if source == Source::default() {
        // As Istio's validation: an empty source is almost always a mistake (it matches all).
        return Err(FieldError::new(field, "must set at least one field"));
    }
    Ok(source)
}

fn operation(field: &str, o: &OperationSpec) -> Result<Operation, FieldError> {
    let f = |name: &str| format!("{field}.{name}");
    let operation = Operation {
        hosts: patterns(&f("hosts"), &o.hosts)?,
        not_hosts: patterns(&f("notHosts"), &o.not_hosts)?,
        ports: ports(&f("ports"), &o.ports)?,
        not_ports: ports(&f("notPorts"), &o.not_ports)?,
        methods: patterns(&f("methods"), &o.methods)?,
        not_methods: patterns(&f("notMethods"), &o.not_methods)?,
        paths: patterns(&f("paths"), &o.paths)?,
        not_paths: patterns(&f("notPaths"), &o.not_paths)?,
    };
    if operation == Operation::default() {
        return Err(FieldError::new(field, "must set at least one field"));
    }
    Ok(operation)
}

/// `request.headers[x-user]` -> `x-user`; `request.auth.claims[a][b]` -> `[a, b]`.
fn bracketed(rest: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut rest = rest;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let (name, after) = inner.split_once(']')?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        parts.push(name.to_string());
        rest = after;
    }
    (!parts.is_empty()).then_some(parts)
}

/// An HTTP token (RFC 9110 `tchar`s), as header names are.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn key(field: &str, key: &str) -> Result<Key, FieldError> {
    let bad = |why: &str| FieldError::new(field, format!("{key:?}: {why}"));
    if let Some(rest) = key.strip_prefix("request.headers") {
        return match bracketed(rest).as_deref() {
            Some([name]) if is_header_name(name) => {
                Ok(Key::RequestHeader(name.to_ascii_lowercase()))
            }
            _ => Err(bad("must be request.headers[<header name>]")),
        };
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        return bracketed(rest)
            .map(Key::Claim)
            .ok_or_else(|| bad("must be request.auth.claims[<claim>] (nested: [a][b])"));
    }
    Ok(match key {
        "source.ip" => Key::SourceIp,
        "remote.ip" => Key::RemoteIp,
        "source.namespace" => Key::SourceNamespace,
        "source.principal" => Key::SourcePrincipal,
        "request.auth.principal" => Key::RequestPrincipal,
        "request.auth.audiences" => Key::Audiences,
        "request.auth.presenter" => Key::Presenter,
        "destination.ip" => Key::DestinationIp,
        "destination.port" => Key::DestinationPort,
        "connection.sni" => Key::ConnectionSni,
        _ => {
            return Err(bad(
                "not a supported condition key (see docs/authorization.md)",
            ));
        }
    })
}

fn condition(field: &str, c: &ConditionSpec) -> Result<Condition, FieldError> {
    let key = key(&format!("{field}.key"), &c.key)?;
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(FieldError::new(
            field,
            "must set values or notValues (or both)",
        ));
    }
    let values = |name: &str, list: &[String]| -> Result<Values, FieldError> {
        let f = format!("{field}.{name}");
        if key.is_ip() {
            return cidrs(&f, list).map(Values::Cidrs);
        }
        if key == Key::DestinationPort {
            ports(&f, list)?;
        }
        patterns(&f, list).map(Values::Patterns)
    };
    Ok(Condition {
        values: values("values", &c.values)?,
        not_values: values("notValues", &c.not_values)?,
        key,
    })
}

fn rule(field: &str, r: &RuleSpec) -> Result<Rule, FieldError> {
    let from = r
        .from
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let field = format!("{field}.from[{i}].source");
            match &f.source {
                Some(s) => source(&field, s),
                None => Err(FieldError::new(field, "is required")),
            }
        })
        .collect::<Result<_, _>>()?;
    let to =
        r.to.iter()
            .enumerate()
            .map(|(i, t)| {
                let field = format!("{field}.to[{i}].operation");
                match &t.operation {
                    Some(o) => operation(&field, o),
                    None => Err(FieldError::new(field, "is required")),
                }
            })
            .collect::<Result<_, _>>()?;
    let when = r
        .when
        .iter()
        .enumerate()
        .map(|(i, c)| condition(&format!("{field}.when[{i}]"), c))
        .collect::<Result<_, _>>()?;
    Ok(Rule { from, to, when })
}

/// Whether [`DRY_RUN_ANNOTATIONS`] mark a policy dry-run; anything but "true"/"false" is an
/// error naming the annotation.
pub(crate) fn dry_run(annotations: &BTreeMap<String, String>) -> Result<bool, FieldError> {
    let mut dry_run = false;
    for name in DRY_RUN_ANNOTATIONS {
        match annotations.get(*name).map(|v| v.trim()) {
            None | Some("false") => {}
            Some("true") => dry_run = true,
            Some(other) => {
                return Err(FieldError::new(
                    format!("metadata.annotations[{name}]"),
                    format!("must be \"true\" or \"false\", got {other:?}"),
                ));
            }
        }
    }
    Ok(dry_run)
}

fn action(a: Option<&str>) -> Result<Action, FieldError> {
    match a {
        None | Some("ALLOW") => Ok(Action::Allow),
        Some("DENY") => Ok(Action::Deny),
        Some("AUDIT") => Ok(Action::Audit),
        Some("CUSTOM") => Err(FieldError::new(
            "spec.action",
            "CUSTOM (external authorization) is not supported yet",
        )),
        Some(other) => Err(FieldError::new(
            "spec.action",
            format!("must be ALLOW, DENY or AUDIT, got {other:?}"),
        )),
    }
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let ap: AuthorizationPolicy = from_value(value)?;
    let source = ap.metadata.meta.reference("AuthorizationPolicy")?;
    let spec = ap.spec;
    if spec.provider.is_some() {
        return Err(FieldError::new(
            "spec.provider",
            "CUSTOM (external authorization) is not supported yet",
        ));
    }
    let scope = scope(
        &source.namespace,
        spec.selector,
        spec.target_ref.as_ref(),
        &spec.target_refs,
    )?;
    let rules = spec
        .rules
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, r)| rule(&format!("spec.rules[{i}]"), r))
        .collect::<Result<Vec<_>, _>>()?;
    let action = action(spec.action.as_deref())?;
    let mut notes = Vec::new();
    if rules.is_empty() {
        notes.push(match action {
            Action::Allow => "no rules: as ALLOW this denies every request to what it covers (Istio's allow-nothing)".to_string(),
            Action::Deny | Action::Audit => "no rules: matches nothing".to_string(),
        });
    }
    let dry_run = dry_run(&ap.metadata.annotations)?;
    Ok(Translated::Resource(Resource::AuthorizationPolicy(
        Box::new(AuthzPolicy {
            scope,
            policy: Policy {
                name: format!("{}/{}", source.namespace, source.name),
                action,
                rules,
                dry_run,
            },
            source,
            notes,
        }),
    )))
}

#[cfg(test)]
mod tests;
