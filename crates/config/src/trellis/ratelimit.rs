//! Trellis `RateLimitPolicy` (trellis.io/v1alpha1) -> [`RateLimitPolicy`]: which workloads it
//! covers (a [`Scope`], as an AuthorizationPolicy's: `selector.matchLabels` or `targetRefs` to
//! Services, the namespace without either) and its limits, translated into
//! `trellis_model::ratelimit`. Everything is validated here, so a proxy never receives a
//! bucket it cannot run; errors name the field (`spec.limits[1].requestsPerUnit`).
//!
//! ```yaml
//! apiVersion: trellis.io/v1alpha1
//! kind: RateLimitPolicy
//! metadata: {name: reviews, namespace: default}
//! spec:
//!   selector: {matchLabels: {app: reviews}}      # or targetRefs: [{kind: Service, name: reviews}]
//!   limits:                                      # the first whose match a request meets applies
//!   - name: writes
//!     match: {method: POST, path: {prefix: /api}}
//!     requestsPerUnit: 10                        # with unit: second | minute | hour
//!     unit: second
//!     burst: 20                                  # bucket size; default requestsPerUnit
//!     perClientIdentity: true                    # a bucket per calling identity
//!   - name: everything-else
//!     tokenBucket: {maxTokens: 100, tokensPerFill: 50, fillInterval: 1s}
//! ```

use std::collections::BTreeSet;

use serde::Deserialize;
use trellis_model::authz::Scope;
use trellis_model::matching::{PathMatch, Regex};
use trellis_model::ratelimit::{RateLimit, TokenBucket};
use trellis_model::route::ResourceRef;

use crate::document::{Resource, Translated};
use crate::istio::policy_target::{Selector, TargetRef, scope};
use crate::kube::FieldError;
use crate::traffic::{Meta, duration, from_value, regex_error};

/// One RateLimitPolicy, translated.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RateLimitPolicy {
    pub source: ResourceRef,
    pub scope: Scope,
    pub limits: Vec<RateLimit>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Document {
    metadata: Meta,
    spec: Option<Spec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    selector: Option<Selector>,
    #[serde(default)]
    target_refs: Vec<TargetRef>,
    #[serde(default)]
    limits: Vec<LimitSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LimitSpec {
    name: Option<String>,
    #[serde(rename = "match")]
    matches: Option<MatchSpec>,
    requests_per_unit: Option<i64>,
    unit: Option<String>,
    burst: Option<i64>,
    token_bucket: Option<BucketSpec>,
    #[serde(default)]
    per_client_identity: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchSpec {
    path: Option<PathSpec>,
    method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathSpec {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BucketSpec {
    max_tokens: i64,
    tokens_per_fill: Option<i64>,
    fill_interval: String,
}

/// The largest count a bucket field takes: far above any sane local limit, and small enough
/// that the proxy's arithmetic cannot overflow.
const MAX_COUNT: i64 = 1_000_000_000;

fn count(field: &str, n: i64) -> Result<u32, FieldError> {
    if (1..=MAX_COUNT).contains(&n) {
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    } else {
        Err(FieldError::new(
            field,
            format!("must be 1-{MAX_COUNT}, got {n}"),
        ))
    }
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let doc: Document = from_value(value)?;
    let source = doc.metadata.reference("RateLimitPolicy")?;
    let spec = doc
        .spec
        .ok_or_else(|| FieldError::new("spec", "is required"))?;
    let scope = scope(&source.namespace, spec.selector, None, &spec.target_refs)?;
    if spec.limits.is_empty() {
        return Err(FieldError::new("spec.limits", "needs at least one limit"));
    }
    let policy = format!("{}/{}", source.namespace, source.name);
    let mut names = BTreeSet::new();
    let mut limits = Vec::with_capacity(spec.limits.len());
    for (i, l) in spec.limits.iter().enumerate() {
        let field = format!("spec.limits[{i}]");
        let limit = limit(&field, &policy, i, l)?;
        if !names.insert(limit.name.clone()) {
            return Err(FieldError::new(
                format!("{field}.name"),
                format!("{:?} is used by an earlier limit", limit.name),
            ));
        }
        limits.push(limit);
    }
    Ok(Translated::Resource(Resource::RateLimitPolicy(Box::new(
        RateLimitPolicy {
            scope,
            limits,
            source,
            notes: Vec::new(),
        },
    ))))
}

fn limit(field: &str, policy: &str, index: usize, l: &LimitSpec) -> Result<RateLimit, FieldError> {
    let name = match &l.name {
        Some(n) if n.is_empty() => {
            return Err(FieldError::new(
                format!("{field}.name"),
                "must not be empty",
            ));
        }
        Some(n) => n.clone(),
        None => index.to_string(),
    };
    let bucket = match (&l.requests_per_unit, &l.token_bucket) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                format!("{field}.tokenBucket"),
                "cannot be set together with requestsPerUnit",
            ));
        }
        (None, None) => {
            return Err(FieldError::new(
                field,
                "needs requestsPerUnit (with unit) or tokenBucket",
            ));
        }
        (Some(n), None) => {
            let per = count(&format!("{field}.requestsPerUnit"), *n)?;
            let unit = l.unit.as_deref().ok_or_else(|| {
                FieldError::new(format!("{field}.unit"), "is required with requestsPerUnit")
            })?;
            let ms = match unit {
                "second" => 1_000,
                "minute" => 60_000,
                "hour" => 3_600_000,
                other => {
                    return Err(FieldError::new(
                        format!("{field}.unit"),
                        format!("must be second, minute or hour, got {other:?}"),
                    ));
                }
            };
            let burst = match l.burst {
                Some(b) => count(&format!("{field}.burst"), b)?,
                None => per,
            };
            TokenBucket {
                max_tokens: burst,
                tokens_per_fill: per,
                fill_interval_ms: ms,
            }
        }
        (None, Some(b)) => {
            if l.unit.is_some() || l.burst.is_some() {
                return Err(FieldError::new(
                    format!("{field}.tokenBucket"),
                    "cannot be set together with unit or burst",
                ));
            }
            let f = format!("{field}.tokenBucket");
            let max_tokens = count(&format!("{f}.maxTokens"), b.max_tokens)?;
            let tokens_per_fill = match b.tokens_per_fill {
                Some(n) => count(&format!("{f}.tokensPerFill"), n)?,
                None => 1,
            };
            let interval = duration(&format!("{f}.fillInterval"), &b.fill_interval)?;
            let fill_interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
            if fill_interval_ms == 0 {
                return Err(FieldError::new(
                    format!("{f}.fillInterval"),
                    format!("must be at least 1ms, got {:?}", b.fill_interval),
                ));
            }
            TokenBucket {
                max_tokens,
                tokens_per_fill,
                fill_interval_ms,
            }
        }
    };
    let (path, method) = match &l.matches {
        None => (None, None),
        Some(m) => (
            m.path
                .as_ref()
                .map(|p| path(&format!("{field}.match.path"), p))
                .transpose()?,
            m.method
                .as_ref()
                .map(|m| method(&format!("{field}.match.method"), m))
                .transpose()?,
        ),
    };
    Ok(RateLimit {
        policy: policy.to_string(),
        name,
        path,
        method,
        bucket,
        per_client_identity: l.per_client_identity,
    })
}

fn path(field: &str, p: &PathSpec) -> Result<PathMatch, FieldError> {
    let slash = |kind: &str, v: &str| {
        if v.starts_with('/') {
            Ok(v.to_string())
        } else {
            Err(FieldError::new(
                format!("{field}.{kind}"),
                format!("must start with '/', got {v:?}"),
            ))
        }
    };
    match (&p.exact, &p.prefix, &p.regex) {
        (Some(e), None, None) => Ok(PathMatch::Exact(slash("exact", e)?)),
        (None, Some(pre), None) => Ok(PathMatch::Prefix(slash("prefix", pre)?)),
        (None, None, Some(r)) => Regex::new(r)
            .map(PathMatch::Regex)
            .map_err(|e| FieldError::new(format!("{field}.regex"), regex_error(&e))),
        _ => Err(FieldError::new(
            field,
            "needs exactly one of exact, prefix or regex",
        )),
    }
}

fn method(field: &str, m: &str) -> Result<String, FieldError> {
    if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(m.to_string())
    } else {
        Err(FieldError::new(
            field,
            format!("must be an uppercase method name like GET, got {m:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Outcome, Resource, parse_documents};

    fn parse(spec: &str) -> Result<super::RateLimitPolicy, String> {
        let yaml = format!(
            "apiVersion: trellis.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{spec}"
        );
        let doc = parse_documents("rl.yaml", yaml.as_bytes()).remove(0);
        match doc.outcome {
            Outcome::Resource(Resource::RateLimitPolicy(p)) => Ok(*p),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn reads_both_bucket_forms_and_matches() {
        let p = parse(
            "  selector: {matchLabels: {app: web}}\n  limits:\n  - name: writes\n    match: {method: POST, path: {prefix: /api}}\n    requestsPerUnit: 10\n    unit: second\n    burst: 20\n    perClientIdentity: true\n  - tokenBucket: {maxTokens: 100, tokensPerFill: 50, fillInterval: 2s}\n",
        )
        .unwrap();
        assert_eq!(p.scope.namespace, "shop");
        assert_eq!(p.limits.len(), 2);
        let w = &p.limits[0];
        assert_eq!((w.policy.as_str(), w.name.as_str()), ("shop/p", "writes"));
        assert_eq!(w.method.as_deref(), Some("POST"));
        assert_eq!(
            (
                w.bucket.max_tokens,
                w.bucket.tokens_per_fill,
                w.bucket.fill_interval_ms
            ),
            (20, 10, 1000)
        );
        assert!(w.per_client_identity);
        let b = &p.limits[1];
        assert_eq!(b.name, "1");
        assert_eq!(
            (
                b.bucket.max_tokens,
                b.bucket.tokens_per_fill,
                b.bucket.fill_interval_ms
            ),
            (100, 50, 2000)
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (spec, field) in [
            ("  limits: []\n", "spec.limits"),
            ("  limits:\n  - unit: second\n", "spec.limits[0]"),
            (
                "  limits:\n  - requestsPerUnit: 0\n    unit: second\n",
                "spec.limits[0].requestsPerUnit",
            ),
            ("  limits:\n  - requestsPerUnit: 5\n", "spec.limits[0].unit"),
            (
                "  limits:\n  - requestsPerUnit: 5\n    unit: day\n",
                "spec.limits[0].unit",
            ),
            (
                "  limits:\n  - requestsPerUnit: 5\n    unit: second\n    tokenBucket: {maxTokens: 1, fillInterval: 1s}\n",
                "spec.limits[0].tokenBucket",
            ),
            (
                "  limits:\n  - tokenBucket: {maxTokens: 1, fillInterval: soon}\n",
                "spec.limits[0].tokenBucket.fillInterval",
            ),
            (
                "  limits:\n  - requestsPerUnit: 5\n    unit: second\n    match: {path: {prefix: api}}\n",
                "spec.limits[0].match.path.prefix",
            ),
            (
                "  limits:\n  - requestsPerUnit: 5\n    unit: second\n    match: {method: get}\n",
                "spec.limits[0].match.method",
            ),
            (
                "  limits:\n  - {name: a, requestsPerUnit: 5, unit: second}\n  - {name: a, requestsPerUnit: 5, unit: second}\n",
                "spec.limits[1].name",
            ),
            (
                "  targetRefs: [{kind: Deployment, name: web}]\n  limits:\n  - {requestsPerUnit: 5, unit: second}\n",
                "spec.targetRefs[0]",
            ),
            (
                "  limits:\n  - {requestsPerUnit: 5, unit: second, burts: 3}\n",
                "spec.limits[0]",
            ),
        ] {
            let err = parse(spec).unwrap_err();
            assert!(err.contains(field), "{spec}: {err}");
        }
    }
}
