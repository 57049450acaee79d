//! The install manifests, as data: `trellis install` prints them, `trellis uninstall` names
//! what to delete, and the Kubernetes tests apply them to a real API server.
//!
//! Pure: values in, objects (JSON) out, in apply order (namespace and CRDs first, webhook
//! configurations last so that nothing is admitted through a webhook with no server yet).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::kinds::{CONFIG_KINDS, mesh_kinds, names};
use crate::webhook::inject::INJECT_KEY;

/// The knobs `--set key=value` changes; see [`Values::set`] for the keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Values {
    pub image: String,
    pub proxy_image: String,
    pub replicas: u32,
    pub log_level: String,
    /// `Ignore` (default: a control plane that is down never blocks pod creation; pods made
    /// meanwhile start without a proxy) or `Fail`.
    pub failure_policy: String,
    /// Call the webhooks at this base URL instead of the Service (a control plane run outside
    /// the cluster, as in development and the tests).
    pub webhook_url: Option<String>,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub install_crds: bool,
    /// Namespaces whose certificate Secrets Gateways may name: a Role to read Secrets there
    /// (and nowhere else), and `--gateway-secret-namespace` for each.
    pub gateway_secret_namespaces: Vec<String>,
}

impl Default for Values {
    fn default() -> Self {
        Self {
            image: "ghcr.io/trellis-mesh/control:latest".into(),
            proxy_image: "ghcr.io/trellis-mesh/proxy:latest".into(),
            replicas: 1,
            log_level: "info".into(),
            failure_policy: "Ignore".into(),
            webhook_url: None,
            cpu_request: "100m".into(),
            memory_request: "128Mi".into(),
            memory_limit: "1Gi".into(),
            install_crds: true,
            gateway_secret_namespaces: Vec::new(),
        }
    }
}

impl Values {
    /// Applies one `key=value`. Keys: image, proxyImage, replicas, logLevel,
    /// webhook.failurePolicy, webhook.url, resources.cpu, resources.memory,
    /// resources.memoryLimit, crds (true|false), gateway.secretNamespaces (comma-separated).
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| format!("{assignment:?}: expected key=value"))?;
        let value = value.trim().to_string();
        match key.trim() {
            "image" => self.image = value,
            "proxyImage" => self.proxy_image = value,
            "replicas" => {
                self.replicas = value
                    .parse()
                    .map_err(|_| format!("replicas: {value:?} is not a number"))?;
            }
            "logLevel" => self.log_level = value,
            "webhook.failurePolicy" => match value.as_str() {
                "Ignore" | "Fail" => self.failure_policy = value,
                _ => {
                    return Err(format!(
                        "webhook.failurePolicy: {value:?} is not Ignore or Fail"
                    ));
                }
            },
            "webhook.url" => {
                if !value.starts_with("https://") {
                    return Err(format!("webhook.url: {value:?} must start with https://"));
                }
                self.webhook_url = Some(value.trim_end_matches('/').to_string());
            }
            "resources.cpu" => self.cpu_request = value,
            "resources.memory" => self.memory_request = value,
            "resources.memoryLimit" => self.memory_limit = value,
            "gateway.secretNamespaces" => {
                self.gateway_secret_namespaces = value
                    .split(',')
                    .map(str::trim)
                    .filter(|ns| !ns.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            "crds" => {
                self.install_crds = value
                    .parse()
                    .map_err(|_| format!("crds: {value:?} is not true or false"))?;
            }
            other => {
                return Err(format!(
                    "unknown key {other:?} (see `trellis install --help`)"
                ));
            }
        }
        Ok(())
    }
}

fn labels() -> Value {
    json!({"app.kubernetes.io/name": names::CONTROL, "app.kubernetes.io/part-of": "trellis"})
}

/// Every object of an install, in apply order.
pub fn render(values: &Values) -> Vec<Value> {
    let mut out = vec![json!({
        "apiVersion": "v1", "kind": "Namespace",
        // Never inject the mesh's own pods.
        "metadata": {"name": names::NAMESPACE, "labels": {INJECT_KEY: "disabled"}},
    })];
    if values.install_crds {
        out.extend(mesh_kinds().map(|k| crd(k.group, k.kind, k.plural, k.short_names, k.versions)));
    }
    out.extend(rbac());
    out.extend(gateway_secret_roles(values));
    out.push(service());
    out.push(deployment(values));
    out.extend(webhooks(values));
    out
}

/// A CRD for a foreign kind: structural, with unknown fields preserved (the mesh validates).
fn crd(group: &str, kind: &str, plural: &str, short: &[&str], versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            json!({
                "name": v, "served": true, "storage": i == 0,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                }},
            })
        })
        .collect();
    let mut metadata = json!({"name": format!("{plural}.{group}"), "labels": labels()});
    // The API server refuses CRDs in *.k8s.io groups without this; the Gateway API's own CRDs
    // carry the same annotation.
    if group.ends_with(".k8s.io") {
        metadata["annotations"] = json!({"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"});
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": metadata,
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "shortNames": short, "listKind": format!("{kind}List")},
            "versions": versions,
        },
    })
}

fn rbac() -> Vec<Value> {
    let mut by_group: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for kind in CONFIG_KINDS.iter().filter(|k| !k.builtin) {
        by_group.entry(kind.group).or_default().push(kind.plural);
    }
    let mut rules = vec![
        json!({"apiGroups": [""], "resources": ["services", "pods", "namespaces", "serviceaccounts"], "verbs": ["get", "list", "watch"]}),
        // Endpoints of Services without a selector (k8s::slices).
        json!({"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}),
        // Read the API server's version (native sidecars) is allowed to every authenticated user.
        json!({"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"], "resourceNames": [names::INJECTOR_WEBHOOK], "verbs": ["get", "patch"]}),
        json!({"apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"], "resourceNames": [names::VALIDATING_WEBHOOK], "verbs": ["get", "patch"]}),
        json!({"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}),
        json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}),
    ];
    for (group, plurals) in by_group {
        let status: Vec<String> = plurals.iter().map(|p| format!("{p}/status")).collect();
        rules.push(
            json!({"apiGroups": [group], "resources": plurals, "verbs": ["get", "list", "watch"]}),
        );
        rules.push(
            json!({"apiGroups": [group], "resources": status, "verbs": ["get", "patch", "update"]}),
        );
    }
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": names::CONTROL, "namespace": names::NAMESPACE, "labels": labels()}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": names::CONTROL, "labels": labels()}, "rules": rules}),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": names::CONTROL, "labels": labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": names::CONTROL},
            "subjects": [{"kind": "ServiceAccount", "name": names::CONTROL, "namespace": names::NAMESPACE}],
        }),
        // The plug-in CA (k8s::cacerts): read the one Secret, in the control plane's namespace
        // only, so no ClusterRole grants Secrets anywhere. The MeshConfig: the one ConfigMap
        // `istio` in the root namespace (the control plane's, as installed), watched with a
        // `metadata.name` field selector so that list and watch are authorized by name.
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": names::CONTROL, "namespace": names::NAMESPACE, "labels": labels()},
            "rules": [
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [super::cacerts::SECRET], "verbs": ["get", "watch"]},
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [trellis_config::istio::mesh_config::CONFIG_MAP_NAME], "verbs": ["get", "list", "watch"]},
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": names::CONTROL, "namespace": names::NAMESPACE, "labels": labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names::CONTROL},
            "subjects": [{"kind": "ServiceAccount", "name": names::CONTROL, "namespace": names::NAMESPACE}],
        }),
    ]
}

/// Reading Secrets in each namespace Gateways take certificates from, and nowhere else: a Role
/// and RoleBinding per namespace (the namespace must exist; it is the gateways').
fn gateway_secret_roles(values: &Values) -> Vec<Value> {
    let name = format!("{}-gateway-secrets", names::CONTROL);
    values
        .gateway_secret_namespaces
        .iter()
        .flat_map(|namespace| {
            [
                json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": {"name": name, "namespace": namespace, "labels": labels()},
                    "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}],
                }),
                json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": name, "namespace": namespace, "labels": labels()},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                    "subjects": [{"kind": "ServiceAccount", "name": names::CONTROL, "namespace": names::NAMESPACE}],
                }),
            ]
        })
        .collect()
}

// Ports name their protocol: server-side apply on Kubernetes before 1.22 refuses list items
// that omit a key field of the associative list (containerPort+protocol, port+protocol).
fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": names::CONTROL, "namespace": names::NAMESPACE, "labels": labels()},
        "spec": {
            "selector": {"app.kubernetes.io/name": names::CONTROL},
            "ports": [
                {"name": "grpc-discovery", "port": names::DISCOVERY_PORT, "targetPort": names::DISCOVERY_PORT, "protocol": "TCP"},
                {"name": "http", "port": names::HTTP_PORT, "targetPort": names::HTTP_PORT, "protocol": "TCP"},
                {"name": "https-webhook", "port": 443, "targetPort": names::WEBHOOK_PORT, "protocol": "TCP"},
            ],
        },
    })
}

fn deployment(values: &Values) -> Value {
    let mut args: Vec<Value> = [
        "--kubernetes".to_string(),
        "--discovery".into(),
        format!("0.0.0.0:{}", names::DISCOVERY_PORT),
        "--http".into(),
        format!("0.0.0.0:{}", names::HTTP_PORT),
        "--webhook".into(),
        format!("0.0.0.0:{}", names::WEBHOOK_PORT),
        "--proxy-image".into(),
        values.proxy_image.clone(),
        "--log-level".into(),
        values.log_level.clone(),
    ]
    .into_iter()
    .map(Value::String)
    .collect();
    for namespace in &values.gateway_secret_namespaces {
        args.push(json!("--gateway-secret-namespace"));
        args.push(json!(namespace));
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": names::CONTROL, "namespace": names::NAMESPACE, "labels": labels()},
        "spec": {
            "replicas": values.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": names::CONTROL}},
            "template": {
                "metadata": {"labels": labels()},
                "spec": {
                    "serviceAccountName": names::CONTROL,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
                    "containers": [{
                        "name": "control",
                        "image": values.image,
                        "args": args,
                        "ports": [
                            {"name": "grpc", "containerPort": names::DISCOVERY_PORT, "protocol": "TCP"},
                            {"name": "http", "containerPort": names::HTTP_PORT, "protocol": "TCP"},
                            {"name": "webhook", "containerPort": names::WEBHOOK_PORT, "protocol": "TCP"},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": names::HTTP_PORT}, "periodSeconds": 5},
                        "livenessProbe": {"httpGet": {"path": "/live", "port": names::HTTP_PORT}, "periodSeconds": 10, "failureThreshold": 6},
                        "resources": {
                            "requests": {"cpu": values.cpu_request, "memory": values.memory_request},
                            "limits": {"memory": values.memory_limit},
                        },
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        },
    })
}

fn client_config(values: &Values, path: &str) -> Value {
    match &values.webhook_url {
        Some(url) => json!({"url": format!("{url}{path}")}),
        None => {
            json!({"service": {"name": names::CONTROL, "namespace": names::NAMESPACE, "path": path, "port": 443}})
        }
    }
}

fn webhooks(values: &Values) -> Vec<Value> {
    let mesh_groups: Vec<&str> = {
        let mut g: Vec<&str> = mesh_kinds().map(|k| k.group).collect();
        g.dedup();
        g
    };
    let mesh_resources: Vec<&str> = mesh_kinds().map(|k| k.plural).collect();
    vec![
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": names::INJECTOR_WEBHOOK, "labels": labels()},
            "webhooks": [{
                "name": "inject.trellis.io",
                "clientConfig": client_config(values, names::INJECT_PATH),
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
                // Every pod outside opted-out namespaces is seen, so the pod annotation works in
                // namespaces without the label; the webhook decides.
                "namespaceSelector": {"matchExpressions": [{"key": INJECT_KEY, "operator": "NotIn", "values": ["disabled"]}]},
                "failurePolicy": values.failure_policy,
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
                "reinvocationPolicy": "IfNeeded",
            }],
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": names::VALIDATING_WEBHOOK, "labels": labels()},
            "webhooks": [{
                "name": "validate.trellis.io",
                "clientConfig": client_config(values, names::VALIDATE_PATH),
                "rules": [{"apiGroups": mesh_groups, "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"], "resources": mesh_resources, "scope": "Namespaced"}],
                "failurePolicy": values.failure_policy,
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }],
        }),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn gateway_secret_namespaces_get_a_role_each_and_the_flag() {
        let mut values = Values::default();
        assert!(
            render(&values)
                .iter()
                .all(|o| o["metadata"]["name"] != "trellis-control-gateway-secrets"),
            "no Secrets beyond cacerts unless asked"
        );
        values
            .set("gateway.secretNamespaces=istio-system, edge")
            .unwrap();
        let objects = render(&values);
        let roles: Vec<&Value> = objects
            .iter()
            .filter(|o| {
                o["kind"] == "Role" && o["metadata"]["name"] == "trellis-control-gateway-secrets"
            })
            .collect();
        let namespaces: Vec<&str> = roles
            .iter()
            .map(|r| r["metadata"]["namespace"].as_str().unwrap())
            .collect();
        assert_eq!(namespaces, ["istio-system", "edge"]);
        assert_eq!(
            roles[0]["rules"],
            json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}])
        );
        let bindings = objects
            .iter()
            .filter(|o| {
                o["kind"] == "RoleBinding"
                    && o["metadata"]["name"] == "trellis-control-gateway-secrets"
            })
            .count();
        assert_eq!(bindings, 2);
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(
            args.contains(
                r#""--gateway-secret-namespace","istio-system","--gateway-secret-namespace","edge""#
            ),
            "{args}"
        );
    }

    #[test]
    fn renders_in_apply_order_with_knobs() {
        let mut values = Values::default();
        values.set("replicas=2").unwrap();
        values.set("webhook.url=https://127.0.0.1:9443/").unwrap();
        assert!(values.set("webhook.failurePolicy=Maybe").is_err());
        assert!(values.set("nope=1").is_err());
        let objects = render(&values);
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds.first(), Some(&"Namespace"));
        assert_eq!(kinds.last(), Some(&"ValidatingWebhookConfiguration"));
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == "CustomResourceDefinition")
                .count(),
            17,
            "Istio networking (4), security (3), telemetry and extensions, Gateway API (4), Linkerd, SMI (2), Trellis"
        );
        // Secrets: only the plug-in CA's, only in the control plane's namespace.
        let role = objects.iter().find(|o| o["kind"] == "Role").unwrap();
        assert_eq!(role["metadata"]["namespace"], names::NAMESPACE);
        assert_eq!(role["rules"][0]["resourceNames"], json!(["cacerts"]));
        // ConfigMaps: only the MeshConfig `istio`, in the root namespace the control plane
        // runs with (the default: it is not passed).
        assert_eq!(names::NAMESPACE, crate::DEFAULT_ROOT_NAMESPACE);
        assert_eq!(
            role["rules"][1],
            json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["istio"], "verbs": ["get", "list", "watch"]})
        );
        assert_eq!(
            super::super::kinds::CONFIG_MAP_FIELD_SELECTOR,
            format!(
                "metadata.name={}",
                trellis_config::istio::mesh_config::CONFIG_MAP_NAME
            )
        );
        assert!(
            objects
                .iter()
                .filter(|o| o["kind"] == "ClusterRole")
                .all(
                    |o| !o.to_string().contains("secrets") && !o.to_string().contains("configmaps")
                )
        );
        assert!(objects.iter().any(|o| o["kind"] == "RoleBinding"));
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        assert_eq!(deployment["spec"]["replicas"], 2);
        let hook = objects
            .iter()
            .find(|o| o["kind"] == "MutatingWebhookConfiguration")
            .unwrap();
        assert_eq!(
            hook["webhooks"][0]["clientConfig"]["url"],
            "https://127.0.0.1:9443/inject"
        );
        values.set("crds=false").unwrap();
        assert!(
            render(&values)
                .iter()
                .all(|o| o["kind"] != "CustomResourceDefinition")
        );
    }
}
