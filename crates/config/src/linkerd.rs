//! Linkerd `ServiceProfile` (linkerd.io/v1alpha2) -> routes for `<svc>.<ns>.svc.cluster.local`.
//!
//! Each profile route becomes a model route that forwards to the service itself (or to the
//! service's TrafficSplit, which the control plane combines), with its `timeout` and, when
//! `isRetryable`, a retry on the statuses its `responseClasses` call failures (5xx when no class
//! matches), bounded by the `retryBudget` (the service's policy) and at most
//! [`MAX_PROFILE_RETRIES`] per request. Conditions: `method`, `pathRegex`, `all`, `any`;
//! `not` is refused "not supported yet", as are `dstOverrides` (use a TrafficSplit).
//! `opaquePorts` is ignored with a note.

use serde::Deserialize;
use trellis_model::matching::{HttpMatch, PathMatch, Regex};
use trellis_model::policy::RetryBudget;
use trellis_model::route::{
    BackendRef, HeaderModifier, HttpRoute, RetryOn, RetryPolicy, RouteAction, WeightedBackend,
};
use trellis_model::{CLUSTER_DOMAIN, ServiceKey};

use crate::document::{Resource, Translated};
use crate::kube::FieldError;
use crate::traffic::{Meta, Parent, PolicyLayer, RouteApi, RouteSet, duration, from_value};

/// Linkerd bounds retries by the budget alone; the mesh also caps them per request.
pub const MAX_PROFILE_RETRIES: u32 = 3;

/// Bounds the match blocks one condition expands into (each `any` multiplies them).
const MAX_ALTERNATIVES: usize = 64;

#[derive(Debug, Deserialize)]
struct ServiceProfile {
    metadata: Meta,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    routes: Vec<Route>,
    retry_budget: Option<Budget>,
    #[serde(default)]
    dst_overrides: Vec<serde_yaml::Value>,
    #[serde(default)]
    opaque_ports: Vec<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Route {
    name: String,
    condition: Condition,
    #[serde(default)]
    response_classes: Vec<ResponseClass>,
    #[serde(default)]
    is_retryable: bool,
    timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Condition {
    method: Option<String>,
    path_regex: Option<String>,
    #[serde(default)]
    all: Vec<Condition>,
    #[serde(default)]
    any: Vec<Condition>,
    not: Option<Box<Condition>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ResponseClass {
    condition: ResponseCondition,
    #[serde(default)]
    is_failure: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseCondition {
    status: Option<StatusRange>,
    #[serde(default)]
    all: Vec<ResponseCondition>,
    #[serde(default)]
    any: Vec<ResponseCondition>,
    not: Option<Box<ResponseCondition>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusRange {
    min: Option<u16>,
    max: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Budget {
    retry_ratio: f64,
    min_retries_per_second: i64,
    ttl: String,
}

impl ResponseCondition {
    fn holds(&self, status: u16) -> bool {
        self.status
            .as_ref()
            .is_none_or(|r| r.min.is_none_or(|m| status >= m) && r.max.is_none_or(|m| status <= m))
            && self.all.iter().all(|c| c.holds(status))
            && (self.any.is_empty() || self.any.iter().any(|c| c.holds(status)))
            && self.not.as_ref().is_none_or(|c| !c.holds(status))
    }
}

/// The statuses a profile route's classes call failures: the first class whose condition
/// holds decides; with none, 5xx is a failure (Linkerd's default classification).
fn failure_statuses(classes: &[ResponseClass]) -> RetryOn {
    let failure = |s: u16| {
        classes
            .iter()
            .find(|c| c.condition.holds(s))
            .map_or(s >= 500, |c| c.is_failure)
    };
    let statuses: Vec<u16> = (100..=599).filter(|s| failure(*s)).collect();
    if statuses == (500..=599).collect::<Vec<u16>>() {
        RetryOn {
            server_error: true,
            ..RetryOn::default()
        }
    } else {
        RetryOn {
            statuses,
            ..RetryOn::default()
        }
    }
}

/// A condition as a disjunction of match blocks (any block matches).
fn condition(field: &str, c: &Condition) -> Result<Vec<HttpMatch>, FieldError> {
    if c.not.is_some() {
        return Err(FieldError::new(
            format!("{field}.not"),
            "is not supported yet",
        ));
    }
    let mut base = HttpMatch::default();
    if let Some(m) = &c.method {
        base.method = Some(m.to_ascii_uppercase());
    }
    if let Some(p) = &c.path_regex {
        base.path = Some(PathMatch::Regex(Regex::new(p).map_err(|e| {
            FieldError::new(
                format!("{field}.pathRegex"),
                crate::traffic::regex_error(&e),
            )
        })?));
    }
    let mut blocks = vec![base];
    for (i, sub) in c.all.iter().enumerate() {
        let f = format!("{field}.all[{i}]");
        let alts = condition(&f, sub)?;
        blocks = product(&f, &blocks, &alts)?;
    }
    if !c.any.is_empty() {
        let mut alts = Vec::new();
        for (i, sub) in c.any.iter().enumerate() {
            alts.extend(condition(&format!("{field}.any[{i}]"), sub)?);
            if alts.len() > MAX_ALTERNATIVES {
                return Err(FieldError::new(
                    format!("{field}.any"),
                    format!("expands to more than {MAX_ALTERNATIVES} alternatives"),
                ));
            }
        }
        blocks = product(&format!("{field}.any"), &blocks, &alts)?;
    }
    Ok(blocks)
}

/// Every block of `left` ANDed with every block of `right`, bounded before it is built.
fn product(
    field: &str,
    left: &[HttpMatch],
    right: &[HttpMatch],
) -> Result<Vec<HttpMatch>, FieldError> {
    if left.len().saturating_mul(right.len()) > MAX_ALTERNATIVES {
        return Err(FieldError::new(
            field,
            format!("expands to more than {MAX_ALTERNATIVES} alternatives"),
        ));
    }
    let mut out = Vec::with_capacity(left.len() * right.len());
    for l in left {
        for r in right {
            out.push(and(field, l, r)?);
        }
    }
    Ok(out)
}

fn and(field: &str, a: &HttpMatch, b: &HttpMatch) -> Result<HttpMatch, FieldError> {
    Ok(HttpMatch {
        path: pick(field, &a.path, &b.path, "pathRegex")?,
        method: pick(field, &a.method, &b.method, "method")?,
        ..HttpMatch::default()
    })
}

fn pick<T: Clone + PartialEq>(
    field: &str,
    x: &Option<T>,
    y: &Option<T>,
    what: &str,
) -> Result<Option<T>, FieldError> {
    match (x, y) {
        (Some(l), Some(r)) if l != r => Err(FieldError::new(
            field,
            format!("two different {what} conditions in one `all` are not supported yet"),
        )),
        (Some(v), _) | (None, Some(v)) => Ok(Some(v.clone())),
        (None, None) => Ok(None),
    }
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let sp: ServiceProfile = from_value(value)?;
    let source = sp.metadata.reference("ServiceProfile")?;
    let spec = sp.spec;
    let mut notes = Vec::new();
    let Some(service) = profile_service(&source.name) else {
        return Ok(Translated::Ignored(format!(
            "name {:?} is not <service>.<namespace>.{CLUSTER_DOMAIN}; profiles for external hosts are not supported yet",
            source.name
        )));
    };
    if !spec.dst_overrides.is_empty() {
        return Err(FieldError::new(
            "spec.dstOverrides",
            "is not supported yet (use an SMI TrafficSplit)",
        ));
    }
    if !spec.opaque_ports.is_empty() {
        notes.push("spec.opaquePorts ignored: use the Service port's appProtocol".into());
    }
    let mut http = Vec::new();
    let own = WeightedBackend {
        backend: BackendRef {
            service: service.clone(),
            port: None,
            subset: None,
        },
        weight: 1,
        request_headers: HeaderModifier::default(),
        response_headers: HeaderModifier::default(),
    };
    for (i, r) in spec.routes.iter().enumerate() {
        let field = format!("spec.routes[{i}]");
        let matches = condition(&format!("{field}.condition"), &r.condition)?;
        let timeout = r
            .timeout
            .as_ref()
            .map(|t| duration(&format!("{field}.timeout"), t))
            .transpose()?
            .filter(|d| !d.is_zero());
        let retry = r.is_retryable.then(|| RetryPolicy {
            attempts: MAX_PROFILE_RETRIES,
            per_try_timeout: None,
            on: failure_statuses(&r.response_classes),
        });
        http.push(HttpRoute {
            name: format!("{}/{}", source.name, r.name),
            source: source.clone(),
            matches,
            action: RouteAction::Forward(vec![own.clone()]),
            request_headers: HeaderModifier::default(),
            response_headers: HeaderModifier::default(),
            rewrite: None,
            mirrors: Vec::new(),
            fault: None,
            timeout,
            retry,
        });
    }
    let policy = match &spec.retry_budget {
        None => PolicyLayer::default(),
        Some(b) => {
            if !(0.0..=10.0).contains(&b.retry_ratio) {
                return Err(FieldError::new(
                    "spec.retryBudget.retryRatio",
                    format!("must be 0-10, got {}", b.retry_ratio),
                ));
            }
            let min = u32::try_from(b.min_retries_per_second).map_err(|_| {
                FieldError::new(
                    "spec.retryBudget.minRetriesPerSecond",
                    format!("must be 0 or more, got {}", b.min_retries_per_second),
                )
            })?;
            PolicyLayer {
                retry_budget: Some(RetryBudget {
                    ratio: b.retry_ratio,
                    min_per_second: min,
                    ttl: duration("spec.retryBudget.ttl", &b.ttl)?,
                }),
                ..PolicyLayer::default()
            }
        }
    };
    Ok(Translated::Resource(Resource::Routes(Box::new(RouteSet {
        api: RouteApi::ServiceProfile,
        source,
        created: sp.metadata.creation_timestamp,
        parents: vec![Parent {
            service,
            port: None,
        }],
        http,
        tcp: Vec::new(),
        policy,
        notes,
    }))))
}

fn profile_service(name: &str) -> Option<ServiceKey> {
    let rest = name.strip_suffix(CLUSTER_DOMAIN)?.strip_suffix('.')?;
    let (svc, ns) = rest.split_once('.')?;
    let ok = crate::kube::is_dns1123_label;
    (ok(svc) && ok(ns)).then(|| ServiceKey::new(ns, svc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let default = failure_statuses(&[]);
        assert!(default.server_error && default.statuses.is_empty());
        let classes = vec![ResponseClass {
            condition: ResponseCondition {
                status: Some(StatusRange {
                    min: Some(500),
                    max: Some(504),
                }),
                ..ResponseCondition::default()
            },
            is_failure: true,
        }];
        let on = failure_statuses(&classes);
        // 500-504 by the class, 505-599 by the default.
        assert!(on.server_error);
        let ok_class = vec![ResponseClass {
            condition: ResponseCondition {
                status: Some(StatusRange {
                    min: Some(503),
                    max: Some(503),
                }),
                ..ResponseCondition::default()
            },
            is_failure: false,
        }];
        let on = failure_statuses(&ok_class);
        assert!(!on.server_error && !on.statuses.contains(&503) && on.statuses.contains(&500));
    }

    #[test]
    fn names() {
        assert_eq!(
            profile_service("web.emojivoto.svc.cluster.local"),
            Some(ServiceKey::new("emojivoto", "web"))
        );
        assert_eq!(profile_service("example.com"), None);
    }
}
