//! Istio `Telemetry` (telemetry.istio.io v1, v1alpha1) -> [`TelemetryPolicy`], and the pure
//! rule that picks the settings in force for a workload ([`effective`]).
//!
//! What Trellis reads of it: `tracing[].randomSamplingPercentage` and
//! `tracing[].disableSpanReporting` (the trace sampling of the proxies in scope),
//! `accessLogging[].disabled` (access logs on or off), the access-log format from the provider's
//! name (a name containing `json` is JSON, `envoy` or a name containing `text` is text: Trellis
//! has one access-log sink, so a provider only picks the format), and an
//! `accessLogging[].filter.expression` of the simple form `response.code >= N` (or `> N`).
//! `tracing[].providers[0].name` is kept ([`ProviderRef`]) and resolved by the control plane
//! against the MeshConfig's `extensionProviders` ([`super::mesh_config`]) to the collector the
//! workload's proxy exports to.
//! `metrics[].overrides[]` map onto Trellis' metric families and labels ([`MetricOverride`]):
//! `disabled` hides a metric (per `mode`: CLIENT is outbound, SERVER inbound) and a
//! `tagOverrides` `REMOVE` drops a label (the series that differed only by it are summed).
//! `customTags`, `match`, other filters, `targetRefs`, `UPSERT` tag overrides and custom metrics
//! are accepted and noted as not applied.
//!
//! Scope, as Istio: the root namespace without a selector is mesh-wide,
//! another namespace without a selector covers that namespace, `selector.matchLabels` covers
//! matching workloads; the most specific scope that sets a field wins (workload > namespace >
//! mesh), field by field, and among equals the oldest.
//!
//! The control plane resolves the settings per workload and sends them to its proxy on the
//! discovery stream (`InboundPolicy.telemetry_json`); fields no Telemetry sets leave the
//! proxy's flags in force.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trellis_model::route::ResourceRef;

use crate::document::{Resource, Translated};
use crate::kube::FieldError;
use crate::traffic::{Meta, from_value};

use super::policy_target::Selector;

/// The line format a Telemetry's access-log provider asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    Json,
    Text,
}

/// Istio's standard metric names → the Trellis families they are.
const METRICS: [(&str, &str); 8] = [
    ("REQUEST_COUNT", "trellis_requests_total"),
    ("REQUEST_DURATION", "trellis_request_duration_seconds"),
    ("REQUEST_SIZE", "trellis_request_bytes_total"),
    ("RESPONSE_SIZE", "trellis_response_bytes_total"),
    (
        "TCP_OPENED_CONNECTIONS",
        "trellis_tcp_connections_opened_total",
    ),
    (
        "TCP_CLOSED_CONNECTIONS",
        "trellis_tcp_connections_closed_total",
    ),
    ("TCP_SENT_BYTES", "trellis_tcp_sent_bytes_total"),
    ("TCP_RECEIVED_BYTES", "trellis_tcp_received_bytes_total"),
];

/// Istio's standard tag names → Trellis labels (a Trellis label name is accepted as itself).
const TAGS: [(&str, &str); 10] = [
    ("source_workload", "source_workload"),
    ("source_workload_namespace", "source_namespace"),
    ("source_principal", "source_identity"),
    ("destination_workload", "destination_workload"),
    ("destination_workload_namespace", "destination_namespace"),
    ("destination_principal", "destination_identity"),
    ("destination_service", "destination_service"),
    ("response_code", "status_code"),
    ("grpc_response_status", "grpc_status"),
    ("connection_security_policy", "tls"),
];

const OWN_LABELS: [&str; 13] = [
    "source_workload",
    "source_namespace",
    "source_identity",
    "destination_workload",
    "destination_namespace",
    "destination_identity",
    "destination_service",
    "route",
    "tls",
    "status_code",
    "grpc_status",
    "response_class",
    "outcome",
];

/// One metrics override, in Trellis' terms: which families, which directions, and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricOverride {
    /// Metric family names (`trellis_requests_total`, ...).
    pub metrics: Vec<String>,
    /// `inbound` (Istio SERVER), `outbound` (CLIENT), or both.
    pub directions: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_labels: Vec<String>,
}

/// A tracing provider a Telemetry names, with where it says so (for errors).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRef {
    pub name: String,
    /// The Telemetry, `namespace/name`.
    pub telemetry: String,
    /// `spec.tracing[i].providers[0].name`.
    pub field: String,
}

/// One Telemetry resource, translated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TelemetryPolicy {
    pub source: ResourceRef,
    pub created: Option<String>,
    /// `None`: no selector (namespace or mesh scope).
    pub selector: Option<BTreeMap<String, String>>,
    /// Probability 0.0-1.0 of sampling a new trace; `None`: inherit.
    pub sampling: Option<f64>,
    /// `Some(true)`: spans are not reported; `None`: inherit.
    pub tracing_disabled: Option<bool>,
    /// `tracing[].providers[0]`; `None`: inherit (in the end the MeshConfig's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing_provider: Option<ProviderRef>,
    /// `Some(true)`: access logs on; `Some(false)`: off; `None`: inherit.
    pub access_logging: Option<bool>,
    /// From the access-log provider's name; `None`: the proxy's choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log_format: Option<AccessLogFormat>,
    /// `filter.expression: response.code >= N`: only answers with at least this status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log_min_status: Option<u16>,
    /// `metrics[].overrides[]`; `None`: no `metrics` section (inherit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric_overrides: Option<Vec<MetricOverride>>,
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
    metrics: Vec<Metrics>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Metrics {
    #[serde(default)]
    providers: Vec<Provider>,
    #[serde(default)]
    overrides: Vec<Override>,
    reporting_interval: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Override {
    #[serde(rename = "match")]
    match_: Option<MetricSelector>,
    disabled: Option<bool>,
    #[serde(default)]
    tag_overrides: BTreeMap<String, TagOverride>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetricSelector {
    metric: Option<String>,
    custom_metric: Option<String>,
    mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TagOverride {
    operation: Option<String>,
    value: Option<String>,
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
    filter: Option<Filter>,
    #[serde(rename = "match")]
    match_: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Filter {
    #[serde(default)]
    expression: String,
}

fn check_providers(field: &str, providers: &[Provider]) -> Result<(), FieldError> {
    for (j, p) in providers.iter().enumerate() {
        if p.name.is_empty() {
            return Err(FieldError::new(
                format!("{field}.providers[{j}].name"),
                "must not be empty",
            ));
        }
    }
    Ok(())
}

/// The format a provider's name asks for: Istio's built-in `envoy` provider writes text; a
/// provider named for JSON (`envoy-json`, `json-log`, ...) writes JSON.
fn format_of(providers: &[Provider]) -> Option<AccessLogFormat> {
    providers.iter().find_map(|p| {
        let name = p.name.to_ascii_lowercase();
        if name.contains("json") {
            Some(AccessLogFormat::Json)
        } else if name == "envoy" || name.contains("text") {
            Some(AccessLogFormat::Text)
        } else {
            None
        }
    })
}

/// `response.code >= 400` → 400; `response.code > 399` → 400. Other expressions: `None`.
fn min_status(expression: &str) -> Option<u16> {
    let rest = expression
        .trim()
        .strip_prefix("response.code")?
        .trim_start();
    let (inclusive, num) = match rest.strip_prefix(">=") {
        Some(n) => (true, n),
        None => (false, rest.strip_prefix('>')?),
    };
    let n: u16 = num.trim().parse().ok()?;
    if inclusive { Some(n) } else { n.checked_add(1) }
}

/// Parses and validates one Telemetry document.
pub(crate) fn parse(value: serde_yaml::Value) -> Result<TelemetryPolicy, FieldError> {
    let t: Telemetry = from_value(value)?;
    let source = t.metadata.reference("Telemetry")?;
    let spec = t.spec;
    let mut notes = Vec::new();
    if spec.selector.is_some() && (spec.target_ref.is_some() || !spec.target_refs.is_empty()) {
        return Err(FieldError::new(
            "spec.selector",
            "cannot be combined with spec.targetRef or spec.targetRefs",
        ));
    }
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        // Istio's targetRefs name a Gateway or a waypoint's Service, neither of which is a
        // sidecar proxy; rather than widening the policy to the whole namespace, it is left out.
        return Ok(TelemetryPolicy {
            source,
            created: t.metadata.creation_timestamp,
            selector: None,
            sampling: None,
            tracing_disabled: None,
            tracing_provider: None,
            access_logging: None,
            access_log_format: None,
            access_log_min_status: None,
            metric_overrides: None,
            notes: vec![
                "spec.targetRef(s) not applied (they select gateways and waypoints, which \
                 Trellis does not run): this Telemetry applies to no proxy; use spec.selector"
                    .to_string(),
            ],
        });
    }
    let metric_overrides = metric_overrides(&spec.metrics, &mut notes)?;
    let mut sampling = None;
    let mut tracing_disabled = None;
    let mut tracing_provider = None;
    for (i, tr) in spec.tracing.iter().enumerate() {
        let field = format!("spec.tracing[{i}]");
        check_providers(&field, &tr.providers)?;
        if let Some(first) = tr.providers.first() {
            tracing_provider = Some(ProviderRef {
                name: first.name.clone(),
                telemetry: format!("{}/{}", source.namespace, source.name),
                field: format!("{field}.providers[0].name"),
            });
        }
        if tr.providers.len() > 1 {
            // Istio, too, supports one tracing provider per rule.
            notes.push(format!(
                "{field}.providers: only the first ({:?}) is used",
                tr.providers[0].name
            ));
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
    let mut access_log_format = None;
    let mut access_log_min_status = None;
    for (i, al) in spec.access_logging.iter().enumerate() {
        let field = format!("spec.accessLogging[{i}]");
        check_providers(&field, &al.providers)?;
        access_logging = Some(!al.disabled.unwrap_or(false));
        access_log_format = format_of(&al.providers).or(access_log_format);
        if let Some(filter) = &al.filter {
            match min_status(&filter.expression) {
                Some(n) => access_log_min_status = Some(n),
                None => notes.push(format!(
                    "{field}.filter.expression {:?} not applied: only `response.code >= N` is",
                    filter.expression
                )),
            }
        }
        if al.match_.is_some() {
            notes.push(format!("{field}.match not applied"));
        }
    }
    Ok(TelemetryPolicy {
        source,
        created: t.metadata.creation_timestamp,
        selector: spec.selector.map(|s| s.match_labels),
        sampling,
        tracing_disabled,
        tracing_provider,
        access_logging,
        access_log_format,
        access_log_min_status,
        metric_overrides,
        notes,
    })
}

/// `spec.metrics` → overrides in Trellis' terms; `None` when there is no `metrics` section.
fn metric_overrides(
    metrics: &[Metrics],
    notes: &mut Vec<String>,
) -> Result<Option<Vec<MetricOverride>>, FieldError> {
    if metrics.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (i, m) in metrics.iter().enumerate() {
        let field = format!("spec.metrics[{i}]");
        check_providers(&field, &m.providers)?;
        if m.reporting_interval.is_some() {
            notes.push(format!(
                "{field}.reportingInterval not applied: metrics are scraped"
            ));
        }
        for (j, o) in m.overrides.iter().enumerate() {
            let field = format!("{field}.overrides[{j}]");
            let selector = o.match_.as_ref();
            if let Some(custom) = selector.and_then(|s| s.custom_metric.as_deref()) {
                notes.push(format!(
                    "{field}.match.customMetric {custom:?} not applied: Trellis has no custom metrics"
                ));
                continue;
            }
            let families: Vec<String> = match selector.and_then(|s| s.metric.as_deref()) {
                None | Some("ALL_METRICS") => METRICS.iter().map(|(_, f)| f.to_string()).collect(),
                Some("GRPC_REQUEST_MESSAGES" | "GRPC_RESPONSE_MESSAGES") => {
                    notes.push(format!(
                        "{field}.match.metric: gRPC message counts are not kept; override not applied"
                    ));
                    continue;
                }
                Some(name) => match METRICS.iter().find(|(n, _)| *n == name) {
                    Some((_, f)) => vec![f.to_string()],
                    None => {
                        return Err(FieldError::new(
                            format!("{field}.match.metric"),
                            format!(
                                "unknown metric {name:?}: one of ALL_METRICS, {}, GRPC_REQUEST_MESSAGES, GRPC_RESPONSE_MESSAGES",
                                METRICS.map(|(n, _)| n).join(", ")
                            ),
                        ));
                    }
                },
            };
            let directions: Vec<String> = match selector.and_then(|s| s.mode.as_deref()) {
                None | Some("CLIENT_AND_SERVER") => vec!["inbound".into(), "outbound".into()],
                Some("CLIENT") => vec!["outbound".into()],
                Some("SERVER") => vec!["inbound".into()],
                Some(other) => {
                    return Err(FieldError::new(
                        format!("{field}.match.mode"),
                        format!("must be CLIENT, SERVER or CLIENT_AND_SERVER, got {other:?}"),
                    ));
                }
            };
            let mut remove_labels = Vec::new();
            for (tag, t) in &o.tag_overrides {
                let tfield = format!("{field}.tagOverrides.{tag}");
                match t.operation.as_deref().unwrap_or("UPSERT") {
                    "REMOVE" => {}
                    "UPSERT" => {
                        notes.push(format!(
                            "{tfield}: UPSERT not applied (value {:?}): labels come from the proxy's own knowledge",
                            t.value.as_deref().unwrap_or("")
                        ));
                        continue;
                    }
                    other => {
                        return Err(FieldError::new(
                            format!("{tfield}.operation"),
                            format!("must be UPSERT or REMOVE, got {other:?}"),
                        ));
                    }
                }
                let label = TAGS
                    .iter()
                    .find(|(istio, _)| istio == tag)
                    .map(|(_, ours)| *ours)
                    .or_else(|| OWN_LABELS.iter().copied().find(|l| l == tag));
                match label {
                    Some(l) => remove_labels.push(l.to_string()),
                    None => notes.push(format!(
                        "{tfield}: no Trellis label corresponds to {tag:?}; not applied"
                    )),
                }
            }
            let disabled = o.disabled.unwrap_or(false);
            if disabled || !remove_labels.is_empty() {
                out.push(MetricOverride {
                    metrics: families,
                    directions,
                    disabled,
                    remove_labels,
                });
            }
        }
    }
    Ok(Some(out))
}

/// The adapter for `document`.
pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    Ok(Translated::Resource(Resource::Telemetry(Box::new(parse(
        value,
    )?))))
}

/// The telemetry settings in force for one workload; `None`: the proxy's flag.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetrySettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing_disabled: Option<bool>,
    /// Resolved to a collector by the control plane, never sent as such.
    #[serde(skip)]
    pub tracing_provider: Option<ProviderRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_logging: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_format: Option<AccessLogFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_min_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_overrides: Option<Vec<MetricOverride>>,
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
        tracing_provider: scoped.iter().find_map(|(_, p)| p.tracing_provider.clone()),
        access_logging: scoped.iter().find_map(|(_, p)| p.access_logging),
        access_log_format: scoped.iter().find_map(|(_, p)| p.access_log_format),
        access_log_min_status: scoped.iter().find_map(|(_, p)| p.access_log_min_status),
        // The most specific Telemetry with a `metrics` section decides the overrides whole.
        metric_overrides: scoped.iter().find_map(|(_, p)| p.metric_overrides.clone()),
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
        assert_eq!(
            p.tracing_provider,
            Some(ProviderRef {
                name: "otel".into(),
                telemetry: "istio-system/mesh-default".into(),
                field: "spec.tracing[0].providers[0].name".into(),
            })
        );
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
    fn provider_format_and_a_simple_filter() {
        let p = doc(r#"
metadata: {name: t, namespace: default}
spec:
  accessLogging:
  - providers: [{name: envoy-json}]
    filter: {expression: "response.code >= 400"}
"#)
        .unwrap();
        assert_eq!(p.access_log_format, Some(AccessLogFormat::Json));
        assert_eq!(p.access_log_min_status, Some(400));
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        let p = doc("metadata: {name: t}\nspec: {accessLogging: [{providers: [{name: envoy}], filter: {expression: 'request.path == \"/x\"'}}]}\n").unwrap();
        assert_eq!(p.access_log_format, Some(AccessLogFormat::Text));
        assert_eq!(p.access_log_min_status, None);
        assert!(p.notes[0].contains("filter.expression"), "{:?}", p.notes);
        assert_eq!(min_status("response.code > 499"), Some(500));
    }

    #[test]
    fn metric_overrides_map_onto_families_and_labels() {
        let p = doc(r#"
metadata: {name: t, namespace: default}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_DURATION, mode: SERVER}
      disabled: true
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        source_workload_namespace: {operation: REMOVE}
        request_host: {value: "request.host"}
    - match: {customMetric: my_metric}
      disabled: true
"#)
        .unwrap();
        let o = p.metric_overrides.unwrap();
        assert_eq!(
            o,
            vec![
                MetricOverride {
                    metrics: vec!["trellis_request_duration_seconds".into()],
                    directions: vec!["inbound".into()],
                    disabled: true,
                    remove_labels: vec![],
                },
                MetricOverride {
                    metrics: vec!["trellis_requests_total".into()],
                    directions: vec!["inbound".into(), "outbound".into()],
                    disabled: false,
                    remove_labels: vec!["source_namespace".into()],
                },
            ]
        );
        assert_eq!(p.notes.len(), 2, "{:?}", p.notes);
        let e = doc(
            "metadata: {name: t}\nspec: {metrics: [{overrides: [{match: {metric: REQUESTS}}]}]}\n",
        )
        .unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("spec.metrics[0].overrides[0].match.metric")
        );
        let e =
            doc("metadata: {name: t}\nspec: {metrics: [{overrides: [{match: {mode: BOTH}}]}]}\n")
                .unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("spec.metrics[0].overrides[0].match.mode")
        );
    }

    #[test]
    fn target_refs_apply_to_no_sidecar() {
        let p = doc("metadata: {name: t, namespace: default}\nspec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}], tracing: [{randomSamplingPercentage: 5}]}\n").unwrap();
        assert_eq!(p.sampling, None);
        assert!(p.notes[0].contains("targetRef"), "{:?}", p.notes);
    }

    #[test]
    fn a_valid_telemetry_is_a_resource() {
        let v = serde_yaml::from_str(
            "metadata: {name: t, namespace: default}\nspec: {tracing: [{randomSamplingPercentage: 5}]}\n",
        )
        .unwrap();
        match translate(v).unwrap() {
            Translated::Resource(Resource::Telemetry(p)) => assert_eq!(p.sampling, Some(0.05)),
            other => panic!("{other:?}"),
        }
    }
}
