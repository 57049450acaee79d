//! `trellis inject` and `trellis uninject`: the admission webhook's patch, applied offline to
//! YAML (files or stdin) with the same builder (`trellis_control::webhook::inject`).
//!
//! Pods and the pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and
//! CronJobs are changed; other documents pass through unchanged. Offline there is no namespace
//! label to read, so `inject` injects every pod that does not opt out with the annotation
//! `trellis.io/inject: disabled`.
//!
//! Exit codes (mapped in `lib.rs` by [`InjectError::is_usage`]): 0 done; 64 bad usage (clap's
//! own errors, and the clashes [`usage::check`] finds); 1 a file that cannot be read, is not
//! YAML, or holds a pod the patch cannot apply to (the file, object and field named).

mod shape;
pub mod usage;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;
use serde_json::Value;
use trellis_control::webhook::inject::{self, Decision, INJECT_KEY, InjectConfig};

#[derive(Debug, Args)]
pub struct InjectArgs {
    /// YAML files to read; `-` or none: stdin. The result goes to stdout.
    pub files: Vec<PathBuf>,
    /// The proxy image.
    #[arg(long, value_name = "IMAGE")]
    pub proxy_image: Option<String>,
    /// Inject as a native sidecar (Kubernetes 1.29+): an init container with restartPolicy Always.
    #[arg(long)]
    pub native_sidecar: bool,
    /// The discovery URL proxies connect to.
    #[arg(long, value_name = "URL")]
    pub control: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{0}")]
    Usage(#[from] usage::UsageError),
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: document {document}: invalid YAML: {source}")]
    Yaml {
        file: String,
        document: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{file}: {kind} {name}: {message}")]
    Object {
        file: String,
        kind: String,
        name: String,
        message: String,
    },
    #[error("cannot write: {0}")]
    Write(#[from] std::io::Error),
}

impl InjectError {
    /// Whether the command was used wrongly (exit 64) rather than given bad input (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Usage(_))
    }
}

/// Where the pod (template) of a document is, as a JSON pointer; `None`: no pod in it.
fn pod_pointer(doc: &Value) -> Option<&'static str> {
    match doc["kind"].as_str()? {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects (or with `remove`, uninjects) every pod in the YAML `text`; returns the new YAML.
pub fn transform(
    file: &str,
    text: &str,
    config: &InjectConfig,
    remove: bool,
) -> Result<String, InjectError> {
    let mut out = String::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let yaml = serde_yaml::Value::deserialize(de).map_err(|source| InjectError::Yaml {
            file: file.into(),
            document: index + 1,
            source,
        })?;
        if yaml.is_null() {
            continue;
        }
        let mut doc: Value = serde_json::to_value(&yaml).map_err(|e| InjectError::Object {
            file: file.into(),
            kind: String::new(),
            name: format!("document {}", index + 1),
            message: e.to_string(),
        })?;
        if let Some(pointer) = pod_pointer(&doc) {
            let err = |message: String| InjectError::Object {
                file: file.into(),
                kind: doc["kind"].as_str().unwrap_or_default().into(),
                name: doc["metadata"]["name"].as_str().unwrap_or_default().into(),
                message,
            };
            let namespace = doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            let pod = doc.pointer(pointer).cloned().unwrap_or(Value::Null);
            if remove {
                if let Some(pod) = doc.pointer_mut(pointer) {
                    inject::uninject(pod);
                }
            } else {
                shape::check(&doc, pointer).map_err(&err)?;
                // Offline, the namespace is taken as enabled; the pod's own opt-out still wins.
                let enabled = BTreeMap::from([(INJECT_KEY.to_string(), "enabled".to_string())]);
                if inject::decide(&pod, &enabled) == Decision::Inject {
                    let ops = inject::patch(&pod, &namespace, config, pointer)
                        .map_err(|e| err(e.to_string()))?;
                    let mut patched = doc.clone();
                    inject::apply_patch(&mut patched, &ops).map_err(err)?;
                    doc = patched;
                }
            }
        }
        out.push_str("---\n");
        out.push_str(
            &serde_yaml::to_string(&doc).map_err(|source| InjectError::Yaml {
                file: file.into(),
                document: index + 1,
                source,
            })?,
        );
    }
    Ok(out)
}

pub fn run(
    args: &InjectArgs,
    remove: bool,
    stdin: &mut impl Read,
    out: &mut impl Write,
) -> Result<(), InjectError> {
    usage::check(args, remove, usage::stdin_is_terminal())?;
    let mut config = InjectConfig {
        native_sidecar: args.native_sidecar,
        ..InjectConfig::default()
    };
    if let Some(image) = &args.proxy_image {
        config.proxy_image = image.clone();
    }
    if let Some(control) = &args.control {
        config.control_url = control.clone();
    }
    let stdin_only = args.files.is_empty();
    let mut inputs: Vec<(String, String)> = Vec::new();
    for file in &args.files {
        let name = file.display().to_string();
        let text = if name == "-" {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(|source| InjectError::Read {
                    file: name.clone(),
                    source,
                })?;
            text
        } else {
            std::fs::read_to_string(file).map_err(|source| InjectError::Read {
                file: name.clone(),
                source,
            })?
        };
        inputs.push((name, text));
    }
    if stdin_only {
        let mut text = String::new();
        stdin
            .read_to_string(&mut text)
            .map_err(|source| InjectError::Read {
                file: "-".into(),
                source,
            })?;
        inputs.push(("-".into(), text));
    }
    // Every input is transformed before anything is written: a bad file later on the command
    // line fails the command with nothing on stdout, not with the files before it applied.
    let mut result = String::new();
    for (name, text) in inputs {
        result.push_str(&transform(&name, &text, &config, remove)?);
    }
    out.write_all(result.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: reviews\n  namespace: shop\nspec:\n  template:\n    metadata:\n      labels: {app: reviews}\n    spec:\n      containers:\n      - name: app\n        image: reviews:1\n---\napiVersion: v1\nkind: Service\nmetadata: {name: reviews}\n";

    #[test]
    fn inject_then_uninject_round_trips() {
        let config = InjectConfig::default();
        let injected = transform("d.yaml", DEPLOYMENT, &config, false).unwrap();
        assert!(injected.contains("name: trellis-proxy"), "{injected}");
        assert!(injected.contains("name: trellis-init"));
        assert!(injected.contains("kind: Service"));
        let again = transform("d.yaml", &injected, &config, false).unwrap();
        assert_eq!(again, injected, "injecting twice changes nothing");
        let removed = transform("d.yaml", &injected, &config, true).unwrap();
        let original = transform("d.yaml", DEPLOYMENT, &config, true).unwrap();
        assert_eq!(removed, original);
    }

    #[test]
    fn opt_out_and_errors_name_the_object() {
        let config = InjectConfig::default();
        let opted_out = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {trellis.io/inject: disabled}\nspec:\n  containers: [{name: app}]\n";
        assert!(
            !transform("p.yaml", opted_out, &config, false)
                .unwrap()
                .contains("trellis-proxy")
        );
        let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {trellis.io/opaque-ports: nope}\nspec:\n  containers: [{name: app}]\n";
        let err = transform("p.yaml", bad, &config, false).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("p.yaml: Pod p: annotation trellis.io/opaque-ports"),
            "{err}"
        );
    }
}
