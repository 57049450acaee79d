//! The raw YAML of each document, kept beside the translated resource so that a problem found
//! on the model (which has no field paths) can be reported at the exact field of the file, and
//! so that workloads (Deployments, Pods) the mesh config does not read still inform the checks.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;
use trellis_model::ServiceKey;

/// The documents of one file by index, as `trellis_config::parse_documents` numbers them
/// (empty documents count; a syntax error ends the file there, as it does there).
pub fn documents(bytes: &[u8]) -> BTreeMap<usize, Value> {
    let mut out = BTreeMap::new();
    for (index, de) in serde_yaml::Deserializer::from_slice(bytes).enumerate() {
        match Value::deserialize(de) {
            Ok(Value::Null) => {}
            Ok(value) => {
                out.insert(index, value);
            }
            Err(_) => break,
        }
    }
    out
}

/// Every scalar string of a document with its field path (`spec.http[0].route[1].destination.host`).
pub fn strings(value: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}

fn walk(value: &Value, path: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::String(s) => out.push((path, s.clone())),
        Value::Mapping(map) => {
            for (k, v) in map {
                if let Some(k) = k.as_str() {
                    let p = if path.is_empty() {
                        k.to_string()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(v, p, out);
                }
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, format!("{path}[{i}]"), out);
            }
        }
        Value::Tagged(t) => walk(&t.value, path, out),
        _ => {}
    }
}

/// Whether a host string as written (`reviews`, `reviews.default`, `reviews.default.svc...`,
/// optionally with `:port`) names `service`.
pub fn names(written: &str, service: &ServiceKey) -> bool {
    let host = written.split(':').next().unwrap_or(written);
    let qualified = format!("{}.{}", service.name, service.namespace);
    host == service.name || host == qualified || host.starts_with(&format!("{qualified}."))
}

/// The field where a resource names `service` as the host it routes (a parent). A
/// ServiceProfile is named after its host, so `metadata.name` is the last resort.
pub fn parent_field(doc: &Value, service: &ServiceKey) -> Option<String> {
    let rank = |p: &str| {
        if p.starts_with("spec.hosts[") {
            Some(0)
        } else if p.starts_with("spec.parentRefs[") && p.ends_with(".name") {
            Some(1)
        } else if p == "spec.service" {
            Some(2)
        } else if p == "metadata.name" {
            Some(3)
        } else {
            None
        }
    };
    strings(doc)
        .into_iter()
        .filter(|(_, v)| names(v, service))
        .filter_map(|(p, _)| rank(&p).map(|r| (r, p)))
        .min_by_key(|(r, _)| *r)
        .map(|(_, p)| p)
}

/// The field where a route names `service` as a backend.
pub fn backend_field(doc: &Value, service: &ServiceKey) -> Option<String> {
    let backend_path = |p: &str| {
        p.ends_with("destination.host")
            || p.ends_with("mirror.host")
            || (p.contains("backendRefs[") && p.ends_with(".name"))
            || (p.starts_with("spec.backends[") && p.ends_with(".service"))
    };
    strings(doc)
        .into_iter()
        .find(|(p, v)| backend_path(p) && names(v, service))
        .map(|(p, _)| p)
}

/// The field where a route names `subset` of `service`.
pub fn subset_field(doc: &Value, service: &ServiceKey, subset: &str) -> Option<String> {
    let all = strings(doc);
    all.iter()
        .filter(|(p, v)| p.ends_with(".subset") && v == subset)
        .find(|(p, _)| {
            let host = format!("{}.host", p.trim_end_matches(".subset"));
            all.iter().any(|(hp, hv)| *hp == host && names(hv, service))
        })
        .map(|(p, _)| p.clone())
}

/// Paths of backend lists whose every entry has an explicit weight of zero, in document order.
pub fn zero_weight_lists(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    zero_weights(doc, String::new(), &mut out);
    out
}

fn zero_weights(value: &Value, path: String, out: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                let Some(k) = k.as_str() else { continue };
                let p = if path.is_empty() {
                    k.to_string()
                } else {
                    format!("{path}.{k}")
                };
                if matches!(k, "route" | "backendRefs" | "backends")
                    && let Value::Sequence(items) = v
                    && !items.is_empty()
                    && items.iter().all(|i| i.get("weight").is_some_and(is_zero))
                {
                    out.push(p.clone());
                }
                zero_weights(v, p, out);
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                zero_weights(v, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_zero(v: &Value) -> bool {
    v.as_u64() == Some(0)
        || v.as_str()
            .is_some_and(|s| s.trim() == "0" || s.trim() == "0m")
}

/// A workload the config set describes (a Deployment's pod template, a Pod): the mesh does not
/// read these kinds, but they say which labels exist, for the "selects nothing" checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownWorkload {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// The workload a document describes, if it is a kind that runs pods.
pub fn workload(doc: &Value) -> Option<KnownWorkload> {
    let kind = doc.get("kind")?.as_str()?;
    let labels = match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => doc
            .get("spec")?
            .get("template")?
            .get("metadata")?
            .get("labels")?,
        "Pod" => doc.get("metadata")?.get("labels")?,
        _ => return None,
    };
    let labels = labels
        .as_mapping()?
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v)?)))
        .collect();
    let namespace = doc
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    Some(KnownWorkload { namespace, labels })
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Value {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn finds_subset_next_to_its_host() {
        let d = doc(
            "spec:\n  http:\n  - route:\n    - destination: {host: ratings, subset: v1}\n    - destination: {host: reviews, subset: v1}\n",
        );
        let reviews = ServiceKey::new("default", "reviews");
        assert_eq!(
            subset_field(&d, &reviews, "v1").as_deref(),
            Some("spec.http[0].route[1].destination.subset")
        );
        assert_eq!(
            backend_field(&d, &reviews).as_deref(),
            Some("spec.http[0].route[1].destination.host")
        );
    }

    #[test]
    fn zero_weights_and_host_names() {
        let d = doc(
            "spec:\n  rules:\n  - backendRefs: [{name: a, weight: 0}, {name: b, weight: 0}]\n  - backendRefs: [{name: a, weight: 1}]\n",
        );
        assert_eq!(zero_weight_lists(&d), ["spec.rules[0].backendRefs"]);
        let key = ServiceKey::new("default", "reviews");
        assert!(names("reviews.default.svc.cluster.local", &key));
        assert!(names("reviews:9080", &key));
        assert!(!names("reviews-v1", &key));
    }
}
