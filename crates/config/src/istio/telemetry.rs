//! Istio `Telemetry` (telemetry.istio.io v1, v1alpha1) -> [`TelemetryPolicy`], and the pure
//! rule that picks the settings in force for a workload ([`effective`]).
//!
//! What Trellis reads of it: `tracing[].randomSamplingPercentage` and
//! `tracing[].disableSpanReporting` (the trace sampling of the proxies in scope),
//! `accessLogging[].disabled` (access logs on or off). Providers are accepted by name and not
//! checked against a mesh config (Trellis has one tracing exporter, OTLP, and one access-log
//! sink); `customTags`, `match`, `filter` and `metrics` overrides are accepted and noted as not
//! applied. Scope, as Istio: the root namespace without a selector is mesh-wide, another
//! namespace without a selector covers that namespace, `selector.matchLabels` covers matching
//! workloads; the most specific scope that sets a field wins (workload > namespace > mesh),
//! field by field, and among equals the oldest.
//!
//! Not yet delivered to proxies: the discovery protocol carries no per-proxy telemetry
//! settings, so a valid Telemetry is reported as read-but-not-applied (the proxy flags
//! `--trace-sampling` and `--access-log` are what is in force).

use std::collections::BTreeMap;

use serde::Deserialize;
use trellis_model::route::ResourceRef;

use crate::document::Translated;
use crate::kube::FieldError;
use crate::traffic::{Meta, from_value};

/// One Telemetry resource, translated.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TelemetryPolicy {
    pub source: ResourceRef,
    pub created: Option<String>,
    /// `None`: no selector (namespace or mesh scope).
    pub selector: Option<BTreeMap<String, String>>,
    /// Probability 0.0-1.0 of sampling a new trace; `None`: inherit.
    pub sampling: Option<f64>,
    /// `Some(true)`: spans are not reported; `None`: inherit.
    pub tracing_disabled: Option<bool>,
    /// `Some(true)`: access logs on; `Some(false)`: off; `None`: inherit.
    pub access_logging: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Telemetry {
    metadata: Meta,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    selector: Option<Selector>,
    #[serde(default)]
    target_refs: Vec<serde_yaml::Value>,
    target_ref: Option<serde_yaml::Value>,
    #[serde(default)]
    tracing: Vec<Tracing>,
    #[serde(default)]
    access_logging: Vec<AccessLogging>,
    #[serde(default)]
    metrics: Vec<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Selector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Provider {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Tracing {
    #[serde(default)]
    providers: Vec<Provider>,
    random_sampling_percentage: Option<f64>,
    disable_span_reporting: Option<bool>,
    custom_tags: Option<serde_yaml::Value>,
    #[serde(rename = "match")]
    match_: Option<serde_yaml::Value>,
    use_request_id_for_trace_sampling: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccessLogging {
    #[serde(default)]
    providers: Vec<Provider>,
    disabled: Option<bool>,
    filter: Option<serde_yaml::Value>,
    #[serde(rename = "match")]
    match_: Option<serde_yaml::Value>,
}

/// Parses and validates one Telemetry document.
pub(crate) fn parse(value: serde_yaml::Value) -> Result<TelemetryPolicy, FieldError> {
    let t: Telemetry = from_value(value)?;
    let source = t.metadata.reference("Telemetry")?;
    let spec = t.spec;
    let mut notes = Vec::new();
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        notes.push("spec.targetRef(s) not applied: use spec.selector".to_string());
    }
    if spec.selector.is_some() && (spec.target_ref.is_some() || !spec.target_refs.is_empty()) {
        return Err(FieldError::new(
            "spec.selector",
            "cannot be combined with spec.targetRef or spec.targetRefs",
        ));
    }
    if !spec.metrics.is_empty() {
        notes.push("spec.metrics overrides not applied: metric labels are fixed".to_string());
    }
    let mut sampling = None;
    let mut tracing_disabled = None;
    for (i, tr) in spec.tracing.iter().enumerate() {
        let field = format!("spec.tracing[{i}]");
        for (j, p) in tr.providers.iter().enumerate() {
            if p.name.is_empty() {
                return Err(FieldError::new(
                    format!("{field}.providers[{j}].name"),
                    "must not be empty",
                ));
            }
        }
        if let Some(pct) = tr.random_sampling_percentage {
            if !(0.0..=100.0).contains(&pct) || pct.is_nan() {
                return Err(FieldError::new(
                    format!("{field}.randomSamplingPercentage"),
                    format!("must be between 0 and 100, got {pct}"),
                ));
            }
            sampling = Some(pct / 100.0);
        }
        if let Some(d) = tr.disable_span_reporting {
            tracing_disabled = Some(d);
        }
        if tr.custom_tags.is_some() || tr.match_.is_some() {
            notes.push(format!("{field}: customTags and match not applied"));
        }
        if tr.use_request_id_for_trace_sampling.is_some() {
            notes.push(format!("{field}.useRequestIdForTraceSampling not applied"));
        }
    }
    let mut access_logging = None;
    for (i, al) in spec.access_logging.iter().enumerate() {
        let field = format!("spec.accessLogging[{i}]");
        for (j, p) in al.providers.iter().enumerate() {
            if p.name.is_empty() {
                return Err(FieldError::new(
                    format!("{field}.providers[{j}].name"),
                    "must not be empty",
                ));
            }
        }
        access_logging = Some(!al.disabled.unwrap_or(false));
        if al.filter.is_some() || al.match_.is_some() {
            notes.push(format!("{field}: filter and match not applied"));
        }
    }
    Ok(TelemetryPolicy {
        source,
        created: t.metadata.creation_timestamp,
        selector: spec.selector.map(|s| s.match_labels),
        sampling,
        tracing_disabled,
        access_logging,
        notes,
    })
}

/// The adapter for `document`: validated, then reported as not yet applied.
pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let policy = parse(value)?;
    let mut what = Vec::new();
    if let Some(s) = policy.sampling {
        what.push(format!("trace sampling {}%", s * 100.0));
    }
    if policy.tracing_disabled == Some(true) {
        what.push("span reporting disabled".to_string());
    }
    if let Some(on) = policy.access_logging {
        what.push(format!("access logging {}", if on { "on" } else { "off" }));
    }
    let what = if what.is_empty() {
        "no settings".to_string()
    } else {
        what.join(", ")
    };
    Ok(Translated::Ignored(format!(
        "Telemetry is valid ({what}) but not yet delivered to proxies; \
         their --trace-sampling and --access-log flags are in force"
    )))
}

/// The telemetry settings in force for one workload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TelemetrySettings {
    pub sampling: Option<f64>,
    pub tracing_disabled: Option<bool>,
    pub access_logging: Option<bool>,
}

/// Istio's scoping, field by field: workload, then namespace, then mesh (the root namespace
/// without a selector); among policies of one scope the oldest (then by namespace/name).
pub fn effective(
    policies: &[TelemetryPolicy],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> TelemetrySettings {
    let mut scoped: Vec<(u8, &TelemetryPolicy)> = policies
        .iter()
        .filter_map(|p| {
            let ns = p.source.namespace.as_str();
            match &p.selector {
                Some(sel) if ns == namespace => sel
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v))
                    .then_some((0, p)),
                None if ns == namespace && ns != root_namespace => Some((1, p)),
                None if ns == root_namespace => Some((2, p)),
                _ => None,
            }
        })
        .collect();
    scoped.sort_by(|(sa, a), (sb, b)| {
        (
            sa,
            a.created.as_deref().unwrap_or("~"),
            &a.source.namespace,
            &a.source.name,
        )
            .cmp(&(
                sb,
                b.created.as_deref().unwrap_or("~"),
                &b.source.namespace,
                &b.source.name,
            ))
    });
    TelemetrySettings {
        sampling: scoped.iter().find_map(|(_, p)| p.sampling),
        tracing_disabled: scoped.iter().find_map(|(_, p)| p.tracing_disabled),
        access_logging: scoped.iter().find_map(|(_, p)| p.access_logging),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Result<TelemetryPolicy, FieldError> {
        parse(serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn reads_sampling_and_access_logging() {
        let p = doc(r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: otel}]
    randomSamplingPercentage: 25.0
  accessLogging:
  - providers: [{name: envoy}]
"#)
        .unwrap();
        assert_eq!(p.sampling, Some(0.25));
        assert_eq!(p.access_logging, Some(true));
        assert_eq!(p.selector, None);
    }

    #[test]
    fn rejects_bad_fields_by_name() {
        let e = doc(r#"
metadata: {name: t, namespace: default}
spec:
  tracing:
  - randomSamplingPercentage: 150
"#)
        .unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("spec.tracing[0].randomSamplingPercentage")
        );
        let e = doc("metadata: {name: t}\nspec: {tracing: [{sampling: 1}]}\n").unwrap_err();
        assert!(e.message.contains("unknown field"), "{}", e.message);
    }

    #[test]
    fn workload_beats_namespace_beats_mesh_field_by_field() {
        let mesh = doc("metadata: {name: m, namespace: istio-system}\nspec: {tracing: [{randomSamplingPercentage: 1}], accessLogging: [{disabled: true}]}\n").unwrap();
        let ns = doc("metadata: {name: n, namespace: shop}\nspec: {tracing: [{randomSamplingPercentage: 10}]}\n").unwrap();
        let wl = doc("metadata: {name: w, namespace: shop}\nspec: {selector: {matchLabels: {app: reviews}}, accessLogging: [{providers: [{name: envoy}]}]}\n").unwrap();
        let all = [mesh, ns, wl];
        let reviews: BTreeMap<String, String> = [("app".into(), "reviews".into())].into();
        let s = effective(&all, "istio-system", "shop", &reviews);
        assert_eq!(s.sampling, Some(0.1));
        assert_eq!(s.access_logging, Some(true));
        let other = effective(&all, "istio-system", "shop", &BTreeMap::new());
        assert_eq!(other.access_logging, Some(false));
        let elsewhere = effective(&all, "istio-system", "default", &BTreeMap::new());
        assert_eq!(elsewhere.sampling, Some(0.01));
    }

    #[test]
    fn valid_telemetry_is_reported_as_not_yet_applied() {
        let v = serde_yaml::from_str(
            "metadata: {name: t, namespace: default}\nspec: {tracing: [{randomSamplingPercentage: 5}]}\n",
        )
        .unwrap();
        match translate(v).unwrap() {
            Translated::Ignored(reason) => {
                assert!(reason.contains("trace sampling 5%"), "{reason}");
                assert!(reason.contains("not yet delivered"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}
