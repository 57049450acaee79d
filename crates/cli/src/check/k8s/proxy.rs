//! `trellis check --proxy` in Kubernetes mode: the `trellis-data-plane` section, like Linkerd's
//! `linkerd check --proxy`. Meshed pods are those with the injector's `trellis-proxy` container
//! (a regular container, or a native sidecar among the init containers). For them: is the proxy
//! container ready (the kubelet's `containerStatuses[].ready`), and does it run the proxy image
//! the installed control plane injects (its Deployment's `--proxy-image`)?
//!
//! [`evaluate`] is pure; [`data_plane`] only lists the pods and reads the Deployment.

use kube::Client;
use serde_json::Value;
use trellis_control::k8s::kinds::names;
use trellis_control::webhook::inject::PROXY_CONTAINER;

use super::{bad, category, ok};
use crate::check::report::{Category, Check, CheckResult};
use crate::install::cluster;

pub const SECTION: &str = "trellis-data-plane";
const LISTED: &str = "can list meshed pods";
const READY: &str = "data plane proxies are ready";
const UP_TO_DATE: &str = "data plane proxies run the control plane's proxy image";

/// One meshed pod as the checks need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshedPod {
    /// `namespace/name`.
    pub name: String,
    /// The proxy container's image in the pod spec.
    pub image: String,
    /// `containerStatuses[].ready` of the proxy; `None` when the kubelet has not reported it.
    pub ready: Option<bool>,
}

/// The meshed pods of a `PodList` (others are skipped).
pub fn meshed_pods(list: &Value) -> Vec<MeshedPod> {
    let empty = Vec::new();
    let items = list["items"].as_array().unwrap_or(&empty);
    items.iter().filter_map(meshed_pod).collect()
}

fn meshed_pod(pod: &Value) -> Option<MeshedPod> {
    let spec = &pod["spec"];
    // The injector adds the proxy as a container, or as a native sidecar (an init container
    // with `restartPolicy: Always`) where the cluster supports it.
    let proxy = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec[*k].as_array())
        .flatten()
        .find(|c| c["name"] == PROXY_CONTAINER)?;
    let status = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|k| pod["status"][*k].as_array())
        .flatten()
        .find(|c| c["name"] == PROXY_CONTAINER);
    let meta = &pod["metadata"];
    Some(MeshedPod {
        name: format!(
            "{}/{}",
            meta["namespace"].as_str().unwrap_or("?"),
            meta["name"].as_str().unwrap_or("?")
        ),
        image: proxy["image"].as_str().unwrap_or("").to_string(),
        ready: status.and_then(|s| s["ready"].as_bool()),
    })
}

/// The `--proxy-image` the control plane's Deployment runs with (`--proxy-image X` or
/// `--proxy-image=X`), if any.
pub fn control_proxy_image(deployment: &Value) -> Option<String> {
    let containers = deployment["spec"]["template"]["spec"]["containers"].as_array()?;
    containers.iter().find_map(|c| {
        let args: Vec<&str> = c["args"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        args.iter().enumerate().find_map(|(i, a)| {
            if let Some(v) = a.strip_prefix("--proxy-image=") {
                Some(v.to_string())
            } else if *a == "--proxy-image" {
                args.get(i + 1).map(|v| (*v).to_string())
            } else {
                None
            }
        })
    })
}

/// The checks for these pods against the control plane's proxy image (`Err`: why it is not
/// known). `scope` names where the pods were listed (`namespace shop`, `all namespaces`).
pub fn evaluate(pods: &[MeshedPod], expected: Result<String, String>, scope: &str) -> Vec<Check> {
    let mut checks = vec![ok(LISTED)];
    if pods.is_empty() {
        checks.push(bad(
            READY,
            CheckResult::Warning,
            format!("no meshed pods in {scope}"),
            "label a namespace `trellis.io/inject=enabled` and restart its workloads \
             (`kubectl rollout restart`), or `trellis inject`",
        ));
        return checks;
    }
    let not_ready: Vec<String> = pods
        .iter()
        .filter(|p| p.ready != Some(true))
        .map(|p| match p.ready {
            Some(_) => format!("{} (proxy not ready)", p.name),
            None => format!("{} (no proxy status yet)", p.name),
        })
        .collect();
    checks.push(if not_ready.is_empty() {
        ok(READY)
    } else {
        bad(
            READY,
            CheckResult::Error,
            not_ready.join(", "),
            "`kubectl -n NS describe pod NAME` and `kubectl -n NS logs NAME -c trellis-proxy`",
        )
    });
    checks.push(match expected {
        Err(e) => bad(
            UP_TO_DATE,
            CheckResult::Warning,
            e,
            "is the control plane installed? `trellis check --kubernetes`",
        ),
        Ok(want) => {
            let stale: Vec<String> = pods
                .iter()
                .filter(|p| p.image != want)
                .map(|p| format!("{} runs {}", p.name, p.image))
                .collect();
            if stale.is_empty() {
                ok(UP_TO_DATE)
            } else {
                bad(
                    UP_TO_DATE,
                    CheckResult::Warning,
                    format!("want {want}: {}", stale.join(", ")),
                    "restart these workloads so the injector gives them the current proxy: \
                     `kubectl -n NS rollout restart deploy/NAME`",
                )
            }
        }
    });
    checks
}

/// The `trellis-data-plane` section for the pods in `namespace` (`None`: all namespaces).
pub async fn data_plane(client: &Client, namespace: Option<&str>) -> Category {
    let scope = namespace.map_or_else(
        || "all namespaces".to_string(),
        |n| format!("namespace {n}"),
    );
    let path = cluster::path("v1", "pods", namespace, None);
    let pods = match cluster::get(client, &path).await {
        Ok(Some(list)) => meshed_pods(&list),
        Ok(None) => Vec::new(),
        Err(e) => {
            return category(
                SECTION,
                vec![bad(
                    LISTED,
                    CheckResult::Error,
                    e.to_string(),
                    "can this user list pods? `kubectl auth can-i list pods`",
                )],
            );
        }
    };
    let deployment = cluster::path(
        "apps/v1",
        "deployments",
        Some(names::NAMESPACE),
        Some(names::CONTROL),
    );
    let expected = match cluster::get(client, &deployment).await {
        Ok(Some(d)) => control_proxy_image(&d)
            .ok_or_else(|| format!("{deployment} has no --proxy-image argument")),
        Ok(None) => Err(format!(
            "deployment {}/{} not found",
            names::NAMESPACE,
            names::CONTROL
        )),
        Err(e) => Err(e.to_string()),
    };
    category(SECTION, evaluate(&pods, expected, &scope))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, image: &str, ready: Option<bool>) -> Value {
        let mut statuses = vec![json!({"name": "app", "ready": true})];
        if let Some(r) = ready {
            statuses.push(json!({"name": PROXY_CONTAINER, "ready": r}));
        }
        json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"containers": [{"name": "app", "image": "app:1"},
                                    {"name": PROXY_CONTAINER, "image": image}]},
            "status": {"containerStatuses": statuses},
        })
    }

    #[test]
    fn finds_meshed_pods_and_their_state() {
        let list = json!({"items": [
            pod("a", "proxy:1", Some(true)),
            pod("b", "proxy:1", None),
            {"metadata": {"name": "plain", "namespace": "shop"},
             "spec": {"containers": [{"name": "app"}]}},
            {"metadata": {"name": "native", "namespace": "shop"},
             "spec": {"initContainers": [{"name": PROXY_CONTAINER, "image": "proxy:1",
                                          "restartPolicy": "Always"}]},
             "status": {"initContainerStatuses": [{"name": PROXY_CONTAINER, "ready": true}]}},
        ]});
        let pods = meshed_pods(&list);
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["shop/a", "shop/b", "shop/native"]);
        assert_eq!(pods[0].ready, Some(true));
        assert_eq!(pods[1].ready, None);
        assert_eq!(pods[2].ready, Some(true));
    }

    #[test]
    fn proxy_image_from_the_deployment_args() {
        let d =
            |args: Value| json!({"spec": {"template": {"spec": {"containers": [{"args": args}]}}}});
        let want = Some("p:2".to_string());
        assert_eq!(
            control_proxy_image(&d(json!(["--x", "--proxy-image", "p:2"]))),
            want
        );
        assert_eq!(control_proxy_image(&d(json!(["--proxy-image=p:2"]))), want);
        assert_eq!(control_proxy_image(&d(json!(["--proxy-image"]))), None);
    }

    #[test]
    fn verdicts() {
        let p = |name: &str, image: &str, ready| MeshedPod {
            name: name.into(),
            image: image.into(),
            ready,
        };
        let checks = evaluate(&[p("shop/a", "p:2", Some(true))], Ok("p:2".into()), "x");
        assert!(checks.iter().all(|c| c.result == CheckResult::Success));
        let checks = evaluate(
            &[
                p("shop/a", "p:2", Some(true)),
                p("shop/b", "p:2", Some(false)),
                p("shop/c", "p:1", Some(true)),
            ],
            Ok("p:2".into()),
            "x",
        );
        assert_eq!(checks[1].result, CheckResult::Error);
        assert_eq!(checks[1].error.as_deref(), Some("shop/b (proxy not ready)"));
        assert_eq!(checks[2].result, CheckResult::Warning);
        assert_eq!(
            checks[2].error.as_deref(),
            Some("want p:2: shop/c runs p:1")
        );
        let checks = evaluate(&[], Err("gone".into()), "namespace shop");
        assert_eq!(checks[1].result, CheckResult::Warning);
        assert_eq!(
            checks[1].error.as_deref(),
            Some("no meshed pods in namespace shop")
        );
    }
}
