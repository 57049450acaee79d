//! `trellis install` and `trellis uninstall`: render the mesh's manifests to stdout for
//! `kubectl apply -f -` / `kubectl delete -f -`. The manifests themselves are data from
//! `trellis_control::k8s::manifests`, so the control plane, its tests and this command agree.

pub mod alerts;
pub mod cluster;
pub mod revision;

use std::io::Write;

use clap::Args;
use serde_json::Value;
use trellis_control::k8s::manifests::{Values, render};

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Change a value: image, proxyImage, replicas, logLevel, webhook.failurePolicy
    /// (Ignore|Fail), webhook.url (https://... for a control plane outside the cluster),
    /// resources.cpu, resources.memory, resources.memoryLimit, crds (true|false), alerts
    /// (true|false: add the alerting rules as a PrometheusRule), revision (NAME: only a canary
    /// control plane's Deployment, Service and webhooks, named for it). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("--set {0}")]
    Usage(String),
    #[error("cannot write the manifests: {0}")]
    Write(#[from] std::io::Error),
    #[error("cannot render the manifests: {0}")]
    Render(#[from] serde_yaml::Error),
}

impl InstallError {
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Usage(_))
    }
}

/// What `--set` asked for: the control plane's values, whether to add the alerting rules
/// (`alerts=true`) and a revision (`revision=NAME`), the two keys the CLI handles itself.
struct Settings {
    values: Values,
    alerts: bool,
    revision: Option<String>,
}

fn values(args: &InstallArgs) -> Result<Settings, InstallError> {
    let mut settings = Settings {
        values: Values::default(),
        alerts: false,
        revision: None,
    };
    for assignment in &args.set {
        if let Some(on) = alerts::parse_set(assignment) {
            settings.alerts = on.map_err(InstallError::Usage)?;
        } else if let Some(name) = revision::parse_set(assignment) {
            settings.revision = Some(name.map_err(InstallError::Usage)?);
        } else {
            settings
                .values
                .set(assignment)
                .map_err(InstallError::Usage)?;
        }
    }
    Ok(settings)
}

/// Every object of the install, in apply order: the control plane's manifests, then the
/// PrometheusRule when `alerts=true`. `trellis upgrade` diffs the same list.
pub fn objects(args: &InstallArgs) -> Result<Vec<Value>, InstallError> {
    let settings = values(args)?;
    let mut objects = render(&settings.values);
    if let Some(name) = &settings.revision {
        objects = revision::objects(objects, name);
    }
    if settings.alerts {
        objects.push(alerts::prometheus_rule(
            trellis_control::k8s::kinds::names::NAMESPACE,
        )?);
    }
    Ok(objects)
}

/// Multi-document YAML, `---` between objects.
pub fn to_yaml(objects: &[Value]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(object)?);
    }
    Ok(out)
}

/// Everything to apply, in order.
pub fn install(args: &InstallArgs, out: &mut impl Write) -> Result<(), InstallError> {
    out.write_all(to_yaml(&objects(args)?)?.as_bytes())?;
    Ok(())
}

/// Everything to delete, webhooks first (so no pod creation waits on a control plane that is
/// going away) and the namespace last. CRDs are included: deleting them deletes the mesh config
/// stored in them, as `kubectl delete -f` of the install would.
pub fn uninstall(args: &InstallArgs, out: &mut impl Write) -> Result<(), InstallError> {
    let mut objects = objects(args)?;
    objects.reverse();
    // Only what identifies an object is needed to delete it.
    let objects: Vec<Value> = objects
        .into_iter()
        .map(|o| {
            let mut metadata = serde_json::json!({"name": o["metadata"]["name"]});
            if let Some(ns) = o["metadata"]["namespace"].as_str() {
                metadata["namespace"] = Value::String(ns.to_string());
            }
            serde_json::json!({"apiVersion": o["apiVersion"], "kind": o["kind"], "metadata": metadata})
        })
        .collect();
    out.write_all(to_yaml(&objects)?.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn install_renders_yaml_and_uninstall_reverses_it() {
        let args = InstallArgs {
            set: vec!["replicas=3".into()],
        };
        let mut out = Vec::new();
        install(&args, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("---\napiVersion: v1\nkind: Namespace\n"),
            "{text}"
        );
        assert!(text.contains("replicas: 3"));
        let mut out = Vec::new();
        uninstall(&InstallArgs { set: vec![] }, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\n"), "{text}");
        assert!(text.trim_end().ends_with("name: trellis-system"), "{text}");
        let bad = InstallArgs {
            set: vec!["replicas".into()],
        };
        assert!(install(&bad, &mut Vec::new()).unwrap_err().is_usage());
        let bad = InstallArgs {
            set: vec!["alerts=maybe".into()],
        };
        assert!(install(&bad, &mut Vec::new()).unwrap_err().is_usage());
    }
}
