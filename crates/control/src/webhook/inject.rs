//! The sidecar injector's pure part: whether a pod is injected, and the JSON patch that adds
//! the init step and the proxy. The admission webhook and `trellis inject` both call it.
//!
//! Works on the pod as JSON (`serde_json::Value`) rather than a typed `Pod`: a patch must leave
//! every field the builder does not understand exactly as it was, and offline inject must keep
//! the user's YAML whole. Only `add` operations are produced, so [`apply_patch`] stays small.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Namespace label and pod annotation that turn injection on (`enabled`) or off (`disabled`).
pub const INJECT_KEY: &str = "trellis.io/inject";
/// Set on injected pods so that injecting twice changes nothing.
pub const STATUS_ANNOTATION: &str = "trellis.io/injected";
pub const PROXY_CONTAINER: &str = "trellis-proxy";
pub const INIT_CONTAINER: &str = "trellis-init";
/// The proxy's uid: `trellis-proxy init` exempts it from redirection.
pub const PROXY_UID: i64 = 1337;
pub const INBOUND_PORT: u16 = 15006;
pub const ADMIN_PORT: u16 = 15020;
/// The projected ServiceAccount token volume the proxy proves its identity with (TokenReview).
pub const TOKEN_VOLUME: &str = "trellis-token";
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// The kubelet refreshes a projected token at 80% of this (the API server's minimum is 10 min).
const TOKEN_EXPIRATION_SECONDS: i64 = 12 * 3600;

/// Per-pod annotations read by the injector.
pub mod annotation {
    pub const CPU_REQUEST: &str = "trellis.io/proxy-cpu-request";
    pub const MEMORY_REQUEST: &str = "trellis.io/proxy-memory-request";
    pub const CPU_LIMIT: &str = "trellis.io/proxy-cpu-limit";
    pub const MEMORY_LIMIT: &str = "trellis.io/proxy-memory-limit";
    pub const LOG_LEVEL: &str = "trellis.io/proxy-log-level";
    pub const SKIP_INBOUND_PORTS: &str = "trellis.io/skip-inbound-ports";
    pub const SKIP_OUTBOUND_PORTS: &str = "trellis.io/skip-outbound-ports";
    pub const OPAQUE_PORTS: &str = "trellis.io/opaque-ports";
}

/// Mesh-wide injection settings (from the control plane's flags / `trellis install --set`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectConfig {
    pub proxy_image: String,
    pub image_pull_policy: String,
    /// The discovery URL proxies connect to.
    pub control_url: String,
    /// Native sidecars (init container with `restartPolicy: Always`, Kubernetes 1.29+):
    /// startup and shutdown ordering, and Jobs complete. Else the proxy is the first ordinary
    /// container and a postStart hook holds the app containers until it is ready.
    pub native_sidecar: bool,
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
    pub log_level: String,
    /// The audience of the projected token the proxy sends to the CA (`trellis-control`'s
    /// `--token-audience`, default `trellis`).
    pub token_audience: String,
    /// This control plane's revision (`--revision`; `None`: the default one): which
    /// namespaces it injects ([`super::revision::decide_for`]).
    pub revision: Option<String>,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            proxy_image: "ghcr.io/trellis-mesh/proxy:latest".into(),
            image_pull_policy: "IfNotPresent".into(),
            control_url: "http://trellis-control.trellis-system.svc:15010".into(),
            native_sidecar: false,
            cpu_request: "10m".into(),
            memory_request: "20Mi".into(),
            cpu_limit: None,
            memory_limit: Some("256Mi".into()),
            log_level: "info".into(),
            token_audience: "trellis".into(),
            revision: None,
        }
    }
}

/// Whether Kubernetes `major.minor` supports native sidecars (1.29 and later).
pub fn supports_native_sidecars(major: &str, minor: &str) -> bool {
    // Minor versions may carry a suffix (`29+` on some distributions).
    let digits = |s: &str| {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    };
    match (digits(major), digits(minor)) {
        (Some(major), Some(minor)) => major > 1 || (major == 1 && minor >= 29),
        _ => false,
    }
}

/// Why a pod is (not) injected; logged and returned in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Inject,
    Skip(&'static str),
}

/// The pod's annotation wins over the namespace's label; `hostNetwork` pods are never injected
/// (their iptables rules would be the node's), nor pods injected already.
pub fn decide(pod: &Value, namespace_labels: &BTreeMap<String, String>) -> Decision {
    let annotations = &pod["metadata"]["annotations"];
    if annotations.get(STATUS_ANNOTATION).is_some() || has_container(pod, PROXY_CONTAINER) {
        return Decision::Skip("already injected");
    }
    if pod["spec"]["hostNetwork"].as_bool() == Some(true) {
        return Decision::Skip("hostNetwork pod");
    }
    match annotations[INJECT_KEY].as_str() {
        Some("enabled") => return Decision::Inject,
        Some("disabled") => return Decision::Skip("pod annotation disabled"),
        _ => {}
    }
    match namespace_labels.get(INJECT_KEY).map(String::as_str) {
        Some("enabled") => Decision::Inject,
        _ => Decision::Skip("injection not enabled for the pod or its namespace"),
    }
}

fn has_container(pod: &Value, name: &str) -> bool {
    ["containers", "initContainers"].iter().any(|list| {
        pod["spec"][list]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == name))
    })
}

/// A bad annotation value; the webhook refuses the pod with it rather than guess.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {message}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub message: String,
}

/// The JSON patch (RFC 6902, `add` operations only) that injects `pod`. Paths start at
/// `prefix`: `""` for a Pod, `/spec/template` for a Deployment's pod template.
pub fn patch(
    pod: &Value,
    namespace: &str,
    config: &InjectConfig,
    prefix: &str,
) -> Result<Vec<Value>, AnnotationError> {
    let annotations = &pod["metadata"]["annotations"];
    let get = |key: &str| {
        annotations[key]
            .as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let ports = |key: &'static str| -> Result<Option<String>, AnnotationError> {
        get(key).map(|v| port_list(key, v)).transpose()
    };
    let skip_in = ports(annotation::SKIP_INBOUND_PORTS)?;
    let skip_out = ports(annotation::SKIP_OUTBOUND_PORTS)?;
    let opaque = ports(annotation::OPAQUE_PORTS)?;
    let log_level = get(annotation::LOG_LEVEL).unwrap_or(&config.log_level);
    let quantity =
        |key: &'static str, default: Option<&str>| -> Result<Option<String>, AnnotationError> {
            match get(key) {
                Some(v) if is_quantity(v) => Ok(Some(v.to_string())),
                Some(v) => Err(AnnotationError {
                    annotation: key,
                    message: format!("{v:?} is not a resource quantity (e.g. 100m, 64Mi)"),
                }),
                None => Ok(default.map(str::to_string)),
            }
        };
    let mut requests = serde_json::Map::new();
    let mut limits = serde_json::Map::new();
    for (is_limit, key, name, default) in [
        (
            false,
            annotation::CPU_REQUEST,
            "cpu",
            Some(config.cpu_request.as_str()),
        ),
        (
            false,
            annotation::MEMORY_REQUEST,
            "memory",
            Some(config.memory_request.as_str()),
        ),
        (
            true,
            annotation::CPU_LIMIT,
            "cpu",
            config.cpu_limit.as_deref(),
        ),
        (
            true,
            annotation::MEMORY_LIMIT,
            "memory",
            config.memory_limit.as_deref(),
        ),
    ] {
        if let Some(q) = quantity(key, default)? {
            let map = if is_limit { &mut limits } else { &mut requests };
            map.insert(name.into(), Value::String(q));
        }
    }
    let mut resources = json!({ "requests": requests });
    if !limits.is_empty() {
        resources["limits"] = Value::Object(limits);
    }

    let spec = &pod["spec"];
    let service_account = spec["serviceAccountName"].as_str().unwrap_or("default");
    // Pods of a ReplicaSet have no name yet at admission: Kubernetes expands $(POD_NAME)
    // from the env below once it is known.
    let workload = "$(POD_NAME)";
    let mut init_args = vec![
        json!("init"),
        json!("--proxy-uid"),
        json!(PROXY_UID.to_string()),
    ];
    if let Some(p) = &skip_in {
        init_args.extend([json!("--exclude-inbound-ports"), json!(p)]);
    }
    if let Some(p) = &skip_out {
        init_args.extend([json!("--exclude-outbound-ports"), json!(p)]);
    }
    let init = json!({
        "name": INIT_CONTAINER,
        "image": config.proxy_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["trellis-proxy"],
        "args": init_args,
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}},
    });
    let mut args = vec![
        json!("--workload"),
        json!(workload),
        json!("--namespace"),
        json!(namespace),
        json!("--service-account"),
        json!(service_account),
        json!("--control"),
        json!(config.control_url),
        json!("--inbound"),
        json!(format!("0.0.0.0:{INBOUND_PORT}")),
        // Kubernetes expands $(POD_IP) from the env below: peers reach the pod's own IP.
        json!("--advertise"),
        json!(format!("$(POD_IP):{INBOUND_PORT}")),
        json!("--admin"),
        json!(format!("0.0.0.0:{ADMIN_PORT}")),
        json!("--log-level"),
        json!(log_level),
        json!("--identity-token-file"),
        json!(format!("{TOKEN_DIR}/{TOKEN_VOLUME}")),
    ];
    if let Some(p) = &opaque {
        args.extend([json!("--opaque-ports"), json!(p)]);
    }
    let mut proxy = json!({
        "name": PROXY_CONTAINER,
        "image": config.proxy_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["trellis-proxy"],
        "args": args,
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "ports": [
            {"name": "trellis-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "trellis-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "readinessProbe": {
            "httpGet": {"path": "/ready", "port": ADMIN_PORT},
            "periodSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": resources,
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}],
    });

    let mut ops = Vec::new();
    // The token the CA checks with TokenReview: for the mesh's audience only, so that it is
    // worthless to the API server and to anything else the pod talks to.
    let volume = json!({
        "name": TOKEN_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": config.token_audience,
            "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
            "path": TOKEN_VOLUME,
        }}]},
    });
    ops.push(if pod["spec"]["volumes"].is_array() {
        json!({"op": "add", "path": format!("{prefix}/spec/volumes/-"), "value": volume})
    } else {
        json!({"op": "add", "path": format!("{prefix}/spec/volumes"), "value": [volume]})
    });
    // The init step must run before every other init container: theirs may need the network.
    ops.push(insert_first(pod, prefix, "initContainers", init));
    if config.native_sidecar {
        // Right after the init step: later init containers then run with the proxy up, and the
        // kubelet stops it after the app containers (so Jobs complete).
        proxy["restartPolicy"] = json!("Always");
        proxy["startupProbe"] = json!({
            "httpGet": {"path": "/ready", "port": ADMIN_PORT},
            "periodSeconds": 1,
            "failureThreshold": 120,
        });
        ops.push(
            json!({"op": "add", "path": format!("{prefix}/spec/initContainers/1"), "value": proxy}),
        );
    } else {
        // First container with a postStart hook that returns once the proxy is ready: the
        // kubelet starts the next container only after it, so the app never starts unmeshed.
        proxy["lifecycle"] = json!({
            "postStart": {"exec": {"command": [
                "trellis-proxy", "wait-ready", "--admin", format!("127.0.0.1:{ADMIN_PORT}"), "--timeout", "120s",
            ]}},
        });
        ops.push(insert_first(pod, prefix, "containers", proxy));
    }
    if pod["metadata"]["annotations"].is_object() {
        ops.push(json!({
            "op": "add",
            "path": format!("{prefix}/metadata/annotations/{}", escape(STATUS_ANNOTATION)),
            "value": "enabled",
        }));
    } else {
        ops.push(json!({
            "op": "add",
            "path": format!("{prefix}/metadata/annotations"),
            "value": {STATUS_ANNOTATION: "enabled"},
        }));
    }
    Ok(ops)
}

fn insert_first(pod: &Value, prefix: &str, list: &str, value: Value) -> Value {
    let has_list = pod["spec"][list].as_array().is_some_and(|a| !a.is_empty());
    if has_list {
        json!({"op": "add", "path": format!("{prefix}/spec/{list}/0"), "value": value})
    } else {
        json!({"op": "add", "path": format!("{prefix}/spec/{list}"), "value": [value]})
    }
}

/// `~` and `/` in a JSON pointer token (RFC 6901).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn port_list(annotation: &'static str, value: &str) -> Result<String, AnnotationError> {
    let mut ports = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u16>() {
            Ok(p) if p > 0 => ports.push(p.to_string()),
            _ => {
                return Err(AnnotationError {
                    annotation,
                    message: format!("{part:?} is not a port (1-65535); expected e.g. 3306,6379"),
                });
            }
        }
    }
    Ok(ports.join(","))
}

/// A Kubernetes resource quantity, checked loosely: digits (with a point) and a known suffix.
fn is_quantity(s: &str) -> bool {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    !num.is_empty()
        && num.parse::<f64>().is_ok()
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}

/// Applies `add` operations (what [`patch`] produces) to `doc`. Array indices insert; `-`
/// appends; object keys are set. Other operations are refused.
pub fn apply_patch(doc: &mut Value, ops: &[Value]) -> Result<(), String> {
    for op in ops {
        if op["op"] != "add" {
            return Err(format!("unsupported patch operation {}", op["op"]));
        }
        let path = op["path"]
            .as_str()
            .ok_or("patch operation without a path")?;
        let value = op["value"].clone();
        let tokens: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = tokens.split_last().ok_or("empty patch path")?;
        let mut target = &mut *doc;
        for t in parents {
            target = match target {
                Value::Object(map) => map.get_mut(t),
                Value::Array(items) => t.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
                _ => None,
            }
            .ok_or_else(|| format!("patch path {path}: {t} not found"))?;
        }
        match target {
            Value::Object(map) => {
                map.insert(last.clone(), value);
            }
            Value::Array(items) if last == "-" => items.push(value),
            Value::Array(items) => {
                let i = last
                    .parse::<usize>()
                    .ok()
                    .filter(|i| *i <= items.len())
                    .ok_or_else(|| format!("patch path {path}: bad index"))?;
                items.insert(i, value);
            }
            _ => {
                return Err(format!(
                    "patch path {path}: parent is not an object or array"
                ));
            }
        }
    }
    Ok(())
}

/// Removes what injection added from a pod (or pod template) `pod`; returns whether anything
/// was removed.
pub fn uninject(pod: &mut Value) -> bool {
    // `get_mut`, not indexing: indexing a JSON object inserts nulls for missing keys.
    let mut removed = false;
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        for list in ["containers", "initContainers"] {
            if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
                let before = items.len();
                items.retain(|c| c["name"] != PROXY_CONTAINER && c["name"] != INIT_CONTAINER);
                removed |= items.len() != before;
                if items.is_empty() && list == "initContainers" {
                    spec.remove(list);
                }
            }
        }
        if let Some(items) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
            let before = items.len();
            items.retain(|v| v["name"] != TOKEN_VOLUME);
            removed |= items.len() != before;
            if items.is_empty() {
                spec.remove("volumes");
            }
        }
    }
    if let Some(meta) = pod.get_mut("metadata").and_then(Value::as_object_mut)
        && let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut)
    {
        removed |= annotations.remove(STATUS_ANNOTATION).is_some();
        if annotations.is_empty() {
            meta.remove("annotations");
        }
    }
    removed
}

#[cfg(test)]
mod tests;
