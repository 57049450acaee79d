//! Control-plane revisions, as Istio's: several control planes (`trellis-control --revision
//! NAME`) run side by side, each with its own webhook configurations, and a namespace chooses
//! which one injects its pods with the label `trellis.io/rev: NAME` (or Istio's `istio.io/rev`).
//! A namespace without a revision label is the default control plane's (the one started
//! without `--revision`), by the usual `trellis.io/inject` rules. Moving a namespace to a
//! canary, or back (rollback), is relabelling it and restarting its workloads. Pure.

use std::collections::BTreeMap;

use serde_json::Value;

use super::inject::{Decision, INJECT_KEY, decide};
use crate::k8s::kinds::names;

/// The namespace label that names the revision injecting its pods.
pub const REV_LABEL: &str = "trellis.io/rev";
/// Istio's spelling of it, read when Trellis' is absent.
pub const ISTIO_REV_LABEL: &str = "istio.io/rev";
/// What a namespace label names to mean the control plane started without `--revision`.
pub const DEFAULT_REVISION: &str = "default";

/// The revision a namespace's labels select, if any.
pub fn selected(namespace_labels: &BTreeMap<String, String>) -> Option<&str> {
    namespace_labels
        .get(REV_LABEL)
        .or_else(|| namespace_labels.get(ISTIO_REV_LABEL))
        .map(String::as_str)
        .filter(|r| !r.is_empty())
}

/// Whether the control plane of `revision` (`None`: the default one) injects `pod`: a
/// namespace labelled with a revision is injected by that revision only (the label opts it in,
/// as Istio's does; the pod may still say `trellis.io/inject: disabled`), an unlabelled one by
/// the default control plane only, by [`decide`]'s rules.
pub fn decide_for(
    pod: &Value,
    namespace_labels: &BTreeMap<String, String>,
    revision: Option<&str>,
) -> Decision {
    let mine = revision.unwrap_or(DEFAULT_REVISION);
    match selected(namespace_labels) {
        Some(chosen) if chosen == mine => {
            let mut labels = namespace_labels.clone();
            labels.insert(INJECT_KEY.to_string(), "enabled".to_string());
            decide(pod, &labels)
        }
        Some(_) => Decision::Skip("the namespace selects another revision"),
        None if revision.is_some() => {
            Decision::Skip("the namespace selects no revision (the default control plane's)")
        }
        None => decide(pod, namespace_labels),
    }
}

/// The name of a revision's webhook configuration (`base` for the default one, `base-NAME`).
pub fn webhook_name(base: &str, revision: Option<&str>) -> String {
    match revision {
        Some(r) => format!("{base}-{r}"),
        None => base.to_string(),
    }
}

/// The mutating (injector) and validating webhook configurations of a revision.
pub fn webhook_names(revision: Option<&str>) -> (String, String) {
    (
        webhook_name(names::INJECTOR_WEBHOOK, revision),
        webhook_name(names::VALIDATING_WEBHOOK, revision),
    )
}

/// A revision name must be a DNS label: it ends up in object names and label values.
pub fn validate(revision: &str) -> Result<(), String> {
    let ok = !revision.is_empty()
        && revision.len() <= 40
        && revision
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !revision.starts_with('-')
        && !revision.ends_with('-')
        && revision != DEFAULT_REVISION;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{revision:?}: a revision is 1-40 lowercase letters, digits and '-', not starting or ending with '-', and not \"{DEFAULT_REVISION}\" (leave --revision out for the default control plane)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(annotations: Value) -> Value {
        json!({"metadata": {"name": "p", "annotations": annotations},
               "spec": {"containers": [{"name": "app", "image": "app:1"}]}})
    }

    #[test]
    fn injection_follows_the_namespace_revision() {
        let plain = pod(json!({}));
        let enabled = labels(&[(INJECT_KEY, "enabled")]);
        let canary = labels(&[(REV_LABEL, "canary")]);
        let istio_canary = labels(&[(ISTIO_REV_LABEL, "canary")]);
        let default_rev = labels(&[(REV_LABEL, "default")]);
        let none = labels(&[]);

        // The default control plane: unlabelled namespaces by the inject label, and `default`.
        assert_eq!(decide_for(&plain, &enabled, None), Decision::Inject);
        assert_eq!(decide_for(&plain, &default_rev, None), Decision::Inject);
        assert!(matches!(decide_for(&plain, &none, None), Decision::Skip(_)));
        assert!(matches!(
            decide_for(&plain, &canary, None),
            Decision::Skip(_)
        ));
        // The canary: only namespaces labelled with it, either spelling.
        assert_eq!(
            decide_for(&plain, &canary, Some("canary")),
            Decision::Inject
        );
        assert_eq!(
            decide_for(&plain, &istio_canary, Some("canary")),
            Decision::Inject
        );
        assert!(matches!(
            decide_for(&plain, &enabled, Some("canary")),
            Decision::Skip(_)
        ));
        assert!(matches!(
            decide_for(&plain, &labels(&[(REV_LABEL, "other")]), Some("canary")),
            Decision::Skip(_)
        ));
        // Trellis' label wins over Istio's; the pod can still opt out.
        let both = labels(&[(REV_LABEL, "canary"), (ISTIO_REV_LABEL, "stable")]);
        assert_eq!(decide_for(&plain, &both, Some("canary")), Decision::Inject);
        let opted_out = pod(json!({INJECT_KEY: "disabled"}));
        assert!(matches!(
            decide_for(&opted_out, &canary, Some("canary")),
            Decision::Skip(_)
        ));
    }

    #[test]
    fn the_flag_points_proxies_and_certificates_at_the_revision_service() {
        use clap::Parser;
        let parse = |rev: &str| {
            crate::cli::Args::try_parse_from(["trellis-control", "--kubernetes", "--revision", rev])
                .unwrap()
                .into_config()
        };
        let kube = parse("canary").unwrap().kubernetes.unwrap();
        assert_eq!(kube.inject.revision.as_deref(), Some("canary"));
        assert_eq!(
            kube.inject.control_url,
            "http://trellis-control-canary.trellis-system.svc:15010"
        );
        assert_eq!(
            kube.webhook_names,
            [
                "trellis-control-canary.trellis-system.svc",
                "trellis-control-canary.trellis-system.svc.cluster.local"
            ]
        );
        let err = parse("default").unwrap_err();
        assert_eq!(err.flag, "revision");
        assert!(err.to_string().contains("leave --revision out"), "{err}");
    }

    #[test]
    fn names_and_validation() {
        assert_eq!(
            webhook_names(Some("canary")),
            (
                "trellis-sidecar-injector-canary".to_string(),
                "trellis-config-validator-canary".to_string()
            )
        );
        assert_eq!(webhook_names(None).0, "trellis-sidecar-injector");
        assert!(validate("canary-1").is_ok());
        for bad in ["", "Canary", "-x", "x-", "default", "a.b"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
