//! `trellis install --set revision=NAME`: a canary control plane beside the installed one
//! (docs/operations.md, "Revisions"). Of the install it keeps only what a revision owns, named
//! for it: the Deployment and Service `trellis-control-NAME` (the Deployment runs
//! `--revision NAME`) and the webhook configurations `trellis-sidecar-injector-NAME` and
//! `trellis-config-validator-NAME` calling that Service. The namespace, CRDs and RBAC stay the
//! default install's, so `trellis uninstall --set revision=NAME` (the rollback) removes the
//! revision and nothing else. Pure.

use serde_json::{Value, json};
use trellis_control::k8s::kinds::names;

/// The `--set` key.
pub const KEY: &str = "revision";

/// The label a revision's objects carry (and namespaces use to select it).
const REV_LABEL: &str = "trellis.io/rev";

/// `revision=NAME` -> `Some(Ok(NAME))` when NAME is a valid revision; any other key: `None`.
pub fn parse_set(assignment: &str) -> Option<Result<String, String>> {
    let (key, value) = assignment.split_once('=')?;
    if key.trim() != KEY {
        return None;
    }
    let value = value.trim().to_string();
    Some(
        trellis_control::webhook::revision::validate(&value)
            .map(|()| value)
            .map_err(|e| format!("{KEY}: {e}")),
    )
}

/// The revision's objects out of a full install's `objects`.
pub fn objects(objects: Vec<Value>, revision: &str) -> Vec<Value> {
    let control = format!("{}-{revision}", names::CONTROL);
    objects
        .into_iter()
        .filter_map(|mut o| {
            match o["kind"].as_str()? {
                "Service" if o["metadata"]["name"] == names::CONTROL => {
                    o["metadata"]["name"] = json!(control);
                    o["spec"]["selector"]["app.kubernetes.io/name"] = json!(control);
                }
                "Deployment" if o["metadata"]["name"] == names::CONTROL => {
                    o["metadata"]["name"] = json!(control);
                    o["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = json!(control);
                    let template = &mut o["spec"]["template"];
                    template["metadata"]["labels"]["app.kubernetes.io/name"] = json!(control);
                    template["metadata"]["labels"][REV_LABEL] = json!(revision);
                    if let Some(args) = template["spec"]["containers"][0]["args"].as_array_mut() {
                        args.extend([json!("--revision"), json!(revision)]);
                    }
                }
                "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => {
                    let name = format!("{}-{revision}", o["metadata"]["name"].as_str()?);
                    o["metadata"]["name"] = json!(name);
                    for hook in o["webhooks"].as_array_mut()? {
                        let service = &mut hook["clientConfig"]["service"];
                        if service.is_object() {
                            service["name"] = json!(control);
                        }
                    }
                }
                "PrometheusRule" => return Some(o),
                _ => return None,
            }
            o["metadata"]["labels"]["app.kubernetes.io/name"] = json!(control);
            o["metadata"]["labels"][REV_LABEL] = json!(revision);
            Some(o)
        })
        .filter(|o| o["kind"] != "PrometheusRule")
        .collect()
}

#[cfg(test)]
mod tests {
    use trellis_control::k8s::manifests::{Values, render};

    use super::*;

    #[test]
    fn a_revision_owns_its_deployment_service_and_webhooks_only() {
        let out = objects(render(&Values::default()), "canary");
        let kinds: Vec<(&str, &str)> = out
            .iter()
            .map(|o| {
                (
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("Service", "trellis-control-canary"),
                ("Deployment", "trellis-control-canary"),
                (
                    "MutatingWebhookConfiguration",
                    "trellis-sidecar-injector-canary"
                ),
                (
                    "ValidatingWebhookConfiguration",
                    "trellis-config-validator-canary"
                ),
            ]
        );
        let deployment = &out[1];
        let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap();
        assert_eq!(
            args[args.len() - 2..],
            [json!("--revision"), json!("canary")]
        );
        assert_eq!(
            deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            "trellis-control-canary"
        );
        assert_eq!(
            out[0]["spec"]["selector"]["app.kubernetes.io/name"],
            "trellis-control-canary"
        );
        assert_eq!(
            out[2]["webhooks"][0]["clientConfig"]["service"]["name"],
            "trellis-control-canary"
        );
        assert_eq!(parse_set("revision=canary"), Some(Ok("canary".into())));
        assert!(parse_set("revision=Canary").unwrap().is_err());
        assert_eq!(parse_set("replicas=2"), None);
    }
}
