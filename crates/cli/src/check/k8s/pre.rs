//! `trellis check --pre`: may this user install the mesh, and would it collide with anything
//! (an existing install, CRDs defined by someone else, another mesh's sidecar injector)?

use std::collections::BTreeMap;

use kube::Client;
use serde_json::Value;
use trellis_control::k8s::kinds::names;
use trellis_control::k8s::manifests::{Values, render};
use trellis_control::webhook::inject::INJECT_KEY;

use super::{api_checks, bad, category, ok, verdict};
use crate::check::report::{Check, CheckResult, Report};
use crate::install::cluster::{self, DryRun, KubeArgs};

/// Names of other meshes' injection webhooks (configuration or webhook name contains one).
const OTHER_MESHES: &[&str] = &[
    "istio",
    "linkerd",
    "kuma",
    "consul",
    "osm",
    "sidecar-injector",
];

/// `trellis check --pre`.
pub async fn pre(args: &KubeArgs) -> Report {
    let (mut categories, client) = api_checks(args).await;
    let Some(client) = client else {
        return Report::new(categories);
    };
    let mut checks = Vec::new();
    let ns_path = cluster::path("v1", "namespaces", None, Some(names::NAMESPACE));
    checks.push(match cluster::get(&client, &ns_path).await {
        Ok(None) => ok("control plane namespace does not already exist"),
        Ok(Some(_)) => bad(
            "control plane namespace does not already exist",
            CheckResult::Error,
            format!("namespace {} exists", names::NAMESPACE),
            "the mesh is installed already: `trellis check` and `trellis upgrade`, or remove it with `trellis uninstall | kubectl delete -f -`",
        ),
        Err(e) => bad(
            "control plane namespace does not already exist",
            CheckResult::Error,
            e.to_string(),
            "can this user read namespaces?",
        ),
    });
    checks.push(
        access(
            &client,
            "can create non-namespaced resources",
            &[
                ("", "namespaces"),
                ("rbac.authorization.k8s.io", "clusterroles"),
                ("rbac.authorization.k8s.io", "clusterrolebindings"),
                ("apiextensions.k8s.io", "customresourcedefinitions"),
                (
                    "admissionregistration.k8s.io",
                    "mutatingwebhookconfigurations",
                ),
                (
                    "admissionregistration.k8s.io",
                    "validatingwebhookconfigurations",
                ),
            ],
            None,
        )
        .await,
    );
    checks.push(
        access(
            &client,
            "can create namespaced resources in the control plane namespace",
            &[
                ("", "serviceaccounts"),
                ("", "services"),
                ("apps", "deployments"),
            ],
            Some(names::NAMESPACE),
        )
        .await,
    );
    checks.push(crds_installable(&client).await);
    checks.push(other_mesh_webhooks(&client).await);
    categories.push(category("pre-kubernetes-setup", checks));
    Report::new(categories)
}

/// One SelfSubjectAccessReview per resource: every one must allow `create`.
async fn access(
    client: &Client,
    description: &str,
    resources: &[(&str, &str)],
    namespace: Option<&str>,
) -> Check {
    let mut denied = Vec::new();
    for (group, resource) in resources {
        match cluster::can_i(client, "create", group, resource, namespace).await {
            Ok(true) => {}
            Ok(false) => denied.push(if group.is_empty() {
                (*resource).to_string()
            } else {
                format!("{resource}.{group}")
            }),
            Err(e) => {
                return bad(
                    description,
                    CheckResult::Error,
                    e.to_string(),
                    "can this user create SelfSubjectAccessReviews?",
                );
            }
        }
    }
    verdict(
        description,
        if denied.is_empty() {
            Ok(())
        } else {
            Err(format!("this user may not create: {}", denied.join(", ")))
        },
        "install as a cluster administrator (`kubectl auth can-i create <resource>` shows what is missing)",
    )
}

/// Dry-run creates of every CRD the install renders: schema, admission and RBAC in one go.
async fn crds_installable(client: &Client) -> Check {
    const D: &str = "mesh CRDs can be installed";
    let mut exist = Vec::new();
    let mut refused = Vec::new();
    for crd in render(&Values::default())
        .into_iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        let name = crd["metadata"]["name"].as_str().unwrap_or("?").to_string();
        let path = cluster::path(
            "apiextensions.k8s.io/v1",
            "customresourcedefinitions",
            None,
            None,
        );
        match cluster::dry_run_create(client, &path, &crd).await {
            Ok(DryRun::Allowed) => {}
            Ok(DryRun::Exists) => exist.push(name),
            Ok(DryRun::Refused(m)) => refused.push(format!("{name}: {m}")),
            Err(e) => refused.push(format!("{name}: {e}")),
        }
    }
    if !refused.is_empty() {
        return bad(
            D,
            CheckResult::Error,
            refused.join("\n"),
            "install as a cluster administrator",
        );
    }
    if !exist.is_empty() {
        return bad(
            D,
            CheckResult::Warning,
            format!("already defined (by another mesh?): {}", exist.join(", ")),
            "`trellis install` replaces these definitions; resources stored in them are kept and read by the mesh",
        );
    }
    ok(D)
}

/// Whether a label selector (`matchLabels`, `matchExpressions`) selects `labels`; an absent
/// selector selects everything, as the API server reads it.
pub fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector["matchLabels"].as_object().is_none_or(|m| {
        m.iter()
            .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
    });
    let by_exprs = selector["matchExpressions"].as_array().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let value = labels.get(key).map(String::as_str);
            match e["operator"].as_str().unwrap_or("") {
                "In" => value.is_some_and(|v| values.contains(&v)),
                "NotIn" => value.is_none_or(|v| !values.contains(&v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
    });
    by_labels && by_exprs
}

/// Whether a webhook intercepts pod creation (what sidecar injectors do).
fn mutates_pods(webhook: &Value) -> bool {
    webhook["rules"].as_array().is_some_and(|rules| {
        rules.iter().any(|r| {
            let has = |field: &str, want: &str| {
                r[field]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x == want || x == "*"))
            };
            has("resources", "pods") && has("operations", "CREATE") && has("apiGroups", "")
        })
    })
}

/// Namespaces both another mesh's injector and the mesh's own would inject pods into.
pub fn overlapping_injectors(
    configurations: &[Value],
    namespaces: &[(String, BTreeMap<String, String>)],
) -> Vec<String> {
    let ours = |labels: &BTreeMap<String, String>| {
        labels.get(INJECT_KEY).map(String::as_str) != Some("disabled")
    };
    let mut out = Vec::new();
    for conf in configurations {
        let conf_name = conf["metadata"]["name"].as_str().unwrap_or("");
        if conf_name == names::INJECTOR_WEBHOOK {
            continue;
        }
        for hook in conf["webhooks"].as_array().into_iter().flatten() {
            let hook_name = hook["name"].as_str().unwrap_or("");
            let text = format!("{conf_name} {hook_name}").to_ascii_lowercase();
            if !mutates_pods(hook) || !OTHER_MESHES.iter().any(|m| text.contains(m)) {
                continue;
            }
            let shared: Vec<&str> = namespaces
                .iter()
                .filter(|(ns, labels)| {
                    ns != names::NAMESPACE
                        && ours(labels)
                        && selects(&hook["namespaceSelector"], labels)
                })
                .map(|(ns, _)| ns.as_str())
                .collect();
            if !shared.is_empty() {
                out.push(format!(
                    "{conf_name} ({hook_name}) injects pods in: {}",
                    shared.join(", ")
                ));
            }
        }
    }
    out
}

async fn other_mesh_webhooks(client: &Client) -> Check {
    const D: &str = "no other mesh's injection webhook on the namespaces the mesh injects";
    let hooks = cluster::get(
        client,
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
    )
    .await;
    let namespaces = cluster::get(client, "/api/v1/namespaces").await;
    let (hooks, namespaces) = match (hooks, namespaces) {
        (Ok(h), Ok(n)) => (h.unwrap_or_default(), n.unwrap_or_default()),
        (Err(e), _) | (_, Err(e)) => {
            return bad(
                D,
                CheckResult::Error,
                e.to_string(),
                "can this user list mutatingwebhookconfigurations and namespaces?",
            );
        }
    };
    let confs: Vec<Value> = hooks["items"].as_array().cloned().unwrap_or_default();
    let namespaces: Vec<(String, BTreeMap<String, String>)> = namespaces["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let name = n["metadata"]["name"].as_str().unwrap_or("").to_string();
            let labels =
                serde_json::from_value(n["metadata"]["labels"].clone()).unwrap_or_default();
            (name, labels)
        })
        .collect();
    let overlaps = overlapping_injectors(&confs, &namespaces);
    verdict(
        D,
        if overlaps.is_empty() {
            Ok(())
        } else {
            Err(overlaps.join("\n"))
        },
        &format!(
            "two sidecars in one pod fight over its traffic: label those namespaces {INJECT_KEY}=disabled, or remove the other mesh from them"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
    #[test]
    fn selectors() {
        let sel = json!({"matchLabels": {"istio-injection": "enabled"}});
        assert!(selects(&sel, &labels(&[("istio-injection", "enabled")])));
        assert!(!selects(&sel, &labels(&[])));
        assert!(selects(&Value::Null, &labels(&[])));
        let not_in =
            json!({"matchExpressions": [{"key": "k", "operator": "NotIn", "values": ["off"]}]});
        assert!(selects(&not_in, &labels(&[])));
        assert!(!selects(&not_in, &labels(&[("k", "off")])));
    }

    #[test]
    fn other_meshes_on_shared_namespaces() {
        let istio = json!({"metadata": {"name": "istio-sidecar-injector"}, "webhooks": [{
            "name": "namespace.sidecar-injector.istio.io",
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"istio-injection": "enabled"}},
        }]});
        let other = json!({"metadata": {"name": "cert-manager-webhook"}, "webhooks": [{
            "name": "webhook.cert-manager.io",
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
        }]});
        let namespaces = vec![
            (
                "shop".to_string(),
                labels(&[("istio-injection", "enabled")]),
            ),
            (
                "quiet".to_string(),
                labels(&[("istio-injection", "enabled"), (INJECT_KEY, "disabled")]),
            ),
            ("plain".to_string(), labels(&[])),
        ];
        assert_eq!(
            overlapping_injectors(&[istio, other], &namespaces),
            ["istio-sidecar-injector (namespace.sidecar-injector.istio.io) injects pods in: shop"]
        );
    }
}
