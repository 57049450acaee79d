//! AdmissionReview in, AdmissionReview out: the pure part of both webhooks.
//!
//! The mutating webhook injects pods ([`inject`](super::inject)); the validating webhook runs
//! the mesh config parser on the object and refuses it with the same message the status
//! condition and `trellis validate` give. Requests are read as JSON values so that any
//! `admission.k8s.io/v1` (or v1beta1) review works.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use trellis_config::{Outcome, parse_documents};

use super::inject::{self, Decision, InjectConfig};

/// Base64 (standard alphabet, padded), for the patch field.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn review(api_version: &Value, response: Value) -> Value {
    json!({
        "apiVersion": api_version.as_str().unwrap_or("admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    })
}

fn deny(uid: &Value, code: u16, message: &str) -> Value {
    json!({"uid": uid, "allowed": false, "status": {"code": code, "message": message}})
}

/// Handles one review for the injector. `namespace_labels` looks up the labels of a namespace.
pub fn mutate(
    body: &Value,
    config: &InjectConfig,
    namespace_labels: impl Fn(&str) -> BTreeMap<String, String>,
) -> Value {
    let request = &body["request"];
    let uid = &request["uid"];
    let allow = json!({"uid": uid, "allowed": true});
    let pod = &request["object"];
    if request["kind"]["kind"] != "Pod" || !pod.is_object() {
        return review(&body["apiVersion"], allow);
    }
    // At admission a pod has no namespace in its metadata when the request supplies it.
    let namespace = request["namespace"]
        .as_str()
        .or_else(|| pod["metadata"]["namespace"].as_str())
        .unwrap_or("default");
    let labels = namespace_labels(namespace);
    match super::revision::decide_for(pod, &labels, config.revision.as_deref()) {
        Decision::Skip(reason) => {
            tracing::debug!(namespace, reason, "not injecting");
            review(&body["apiVersion"], allow)
        }
        Decision::Inject => match inject::patch(pod, namespace, config, "") {
            Ok(mut ops) => {
                // A projected token needs a named ServiceAccount. The ServiceAccount admission
                // plugin names `default` before webhooks run; where it is off (the testbed),
                // name it here, as the proxy's --service-account already assumes.
                if pod["spec"]["serviceAccountName"]
                    .as_str()
                    .is_none_or(str::is_empty)
                {
                    ops.push(json!({"op": "add", "path": "/spec/serviceAccountName", "value": "default"}));
                }
                let patch = serde_json::to_vec(&ops).unwrap_or_default();
                tracing::info!(namespace, pod = ?pod["metadata"]["name"].as_str().or(pod["metadata"]["generateName"].as_str()), "injecting the proxy");
                review(
                    &body["apiVersion"],
                    json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": base64_encode(&patch)}),
                )
            }
            Err(err) => review(&body["apiVersion"], deny(uid, 400, &err.to_string())),
        },
    }
}

/// The message for an invalid config object, as the status condition says it: the config
/// crate's error without the file part (an object has no file).
pub fn config_error_message(err: &trellis_config::ConfigError) -> String {
    let field = err
        .field
        .as_deref()
        .map(|f| format!("{f}: "))
        .unwrap_or_default();
    format!("{}: {field}{}", err.resource, err.message)
}

/// Handles one review for the config validator: deletes and non-mesh kinds pass.
pub fn validate(body: &Value) -> Value {
    let request = &body["request"];
    let uid = &request["uid"];
    let object = &request["object"];
    if request["operation"] == "DELETE" || !object.is_object() {
        return review(&body["apiVersion"], json!({"uid": uid, "allowed": true}));
    }
    let bytes = serde_json::to_vec(object).unwrap_or_default();
    let errors: Vec<String> = parse_documents("admission", &bytes)
        .iter()
        .filter_map(|doc| match &doc.outcome {
            Outcome::Invalid(err) => Some(config_error_message(err)),
            _ => None,
        })
        .collect();
    if errors.is_empty() {
        review(&body["apiVersion"], json!({"uid": uid, "allowed": true}))
    } else {
        review(&body["apiVersion"], deny(uid, 422, &errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), expected);
        }
    }

    fn pod_review(annotations: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "shop",
                "operation": "CREATE",
                "object": {"metadata": {"generateName": "reviews-", "annotations": annotations}, "spec": {"containers": [{"name": "app"}]}},
            },
        })
    }

    #[test]
    fn mutate_patches_enabled_pods_only() {
        let labels = |ns: &str| {
            BTreeMap::from([(
                inject::INJECT_KEY.to_string(),
                if ns == "shop" { "enabled" } else { "x" }.to_string(),
            )])
        };
        let out = mutate(&pod_review(json!({})), &InjectConfig::default(), labels);
        assert_eq!(out["response"]["uid"], "u1");
        assert_eq!(out["response"]["allowed"], true);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let out = mutate(
            &pod_review(json!({inject::INJECT_KEY: "disabled"})),
            &InjectConfig::default(),
            labels,
        );
        assert!(out["response"].get("patch").is_none());
        let out = mutate(
            &pod_review(json!({inject::annotation::OPAQUE_PORTS: "x"})),
            &InjectConfig::default(),
            labels,
        );
        assert_eq!(out["response"]["allowed"], false);
    }

    #[test]
    fn validate_refuses_with_the_field_named() {
        let body = json!({
            "apiVersion": "admission.k8s.io/v1",
            "request": {"uid": "u2", "operation": "CREATE", "object": {
                "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
                "metadata": {"name": "bad", "namespace": "shop"},
                "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "port": {"number": 0}}}]}]},
            }},
        });
        let out = validate(&body);
        assert_eq!(out["response"]["allowed"], false);
        let message = out["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("VirtualService shop/bad: spec.http[0]"),
            "{message}"
        );
    }
}
