//! Compile, for one proxy: the Istio Telemetry settings in force for its workload, as the JSON
//! the discovery `InboundPolicy.telemetry_json` carries. Pure: config snapshot and workload in,
//! text out. The scoping rule (workload > namespace > mesh, field by field) is
//! `trellis_config::istio::telemetry::effective`; this only encodes its answer.

use trellis_config::istio::telemetry::{TelemetryPolicy, TelemetrySettings, effective};
use trellis_model::Workload;

/// The settings for `workload` as JSON; `"{}"` when no Telemetry applies (the proxy's flags
/// stay in force).
pub fn telemetry_json(
    policies: &[TelemetryPolicy],
    root_namespace: &str,
    workload: &Workload,
) -> String {
    let settings: TelemetrySettings = effective(
        policies,
        root_namespace,
        &workload.namespace,
        &workload.labels,
    );
    // Serializing plain options and numbers cannot fail; an empty object is the safe fallback.
    serde_json::to_string(&settings).unwrap_or_else(|_| "{}".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::test_support::{resources, workload};
    use trellis_config::Resource;

    fn policies(yaml: &str) -> Vec<TelemetryPolicy> {
        resources(yaml, |r| match r {
            Resource::Telemetry(p) => Some(*p),
            _ => None,
        })
    }

    #[test]
    fn mesh_namespace_and_workload_scopes() {
        let all = policies(
            r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: trellis-system}
spec:
  tracing: [{randomSamplingPercentage: 1}]
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: shop, namespace: shop}
spec:
  accessLogging: [{providers: [{name: envoy}]}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews, namespace: shop}
spec:
  selector: {matchLabels: {app: reviews}}
  tracing: [{randomSamplingPercentage: 50, disableSpanReporting: true}]
  accessLogging: [{providers: [{name: envoy-json}], filter: {expression: "response.code >= 500"}}]
"#,
        );
        let root = "trellis-system";
        let reviews: serde_json::Value =
            serde_json::from_str(&telemetry_json(&all, root, &workload("shop", "reviews")))
                .unwrap();
        assert_eq!(
            reviews,
            serde_json::json!({"sampling": 0.5, "tracing_disabled": true,
                "access_logging": true, "access_log_format": "json",
                "access_log_min_status": 500})
        );
        let web: serde_json::Value =
            serde_json::from_str(&telemetry_json(&all, root, &workload("shop", "web"))).unwrap();
        assert_eq!(
            web,
            serde_json::json!({"sampling": 0.01, "access_logging": true,
                "access_log_format": "text"})
        );
        assert_eq!(
            telemetry_json(&all, root, &workload("other", "web")),
            r#"{"sampling":0.01}"#
        );
        assert_eq!(telemetry_json(&[], root, &workload("shop", "web")), "{}");
    }
}
