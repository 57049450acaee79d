//! `trellis check` in Kubernetes mode: is the installed control plane there and healthy?

use kube::Client;
use trellis_control::k8s::kinds::names;
use trellis_control::k8s::manifests::{Values, render};

use super::webhook_tls::webhook_certs;
use super::{api_checks, bad, category, ok, verdict};
use crate::check::report::{Check, CheckResult, Report};
use crate::install::cluster::{self, KubeArgs};

/// `trellis check` against a cluster with the mesh installed; with `data_plane` (`--proxy`) also
/// the meshed pods in that namespace (`Some(None)`: all namespaces).
pub async fn installed(args: &KubeArgs, data_plane: Option<Option<&str>>) -> Report {
    let (mut categories, client) = api_checks(args).await;
    let Some(client) = client else {
        return Report::new(categories);
    };
    let mut checks = Vec::new();
    let ns = cluster::path("v1", "namespaces", None, Some(names::NAMESPACE));
    checks.push(verdict(
        "control plane namespace exists",
        exists(&client, &ns).await,
        "install the mesh: `trellis check --pre`, then `trellis install | kubectl apply -f -`",
    ));
    checks.push(crds_present(&client).await);
    checks.push(deployment_ready(&client).await);
    let mut webhook_checks = Vec::new();
    for (kind, plural, name) in [
        (
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            names::INJECTOR_WEBHOOK,
        ),
        (
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            names::VALIDATING_WEBHOOK,
        ),
    ] {
        let path = cluster::path("admissionregistration.k8s.io/v1", plural, None, Some(name));
        let description = format!("{kind} {name} exists");
        match cluster::get(&client, &path).await {
            Ok(Some(conf)) => {
                checks.push(ok(&description));
                webhook_checks.extend(webhook_certs(&conf, name).await);
            }
            Ok(None) => checks.push(bad(
                &description,
                CheckResult::Error,
                format!("{kind} {name} not found"),
                "re-apply the install: `trellis install | kubectl apply -f -`",
            )),
            Err(e) => checks.push(bad(
                &description,
                CheckResult::Error,
                e.to_string(),
                "can this user read webhook configurations?",
            )),
        }
    }
    categories.push(category("trellis-control-plane", checks));
    categories.push(category("trellis-webhooks", webhook_checks));
    if let Some(namespace) = data_plane {
        categories.push(super::proxy::data_plane(&client, namespace).await);
    }
    Report::new(categories)
}

async fn exists(client: &Client, path: &str) -> Result<(), String> {
    match cluster::get(client, path).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!("{path} not found")),
        Err(e) => Err(e.to_string()),
    }
}

async fn crds_present(client: &Client) -> Check {
    const D: &str = "mesh CRDs are installed";
    let mut missing = Vec::new();
    for crd in render(&Values::default())
        .into_iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        let name = crd["metadata"]["name"].as_str().unwrap_or("?");
        let path = cluster::path(
            "apiextensions.k8s.io/v1",
            "customresourcedefinitions",
            None,
            Some(name),
        );
        match cluster::get(client, &path).await {
            Ok(Some(live)) => {
                let established = live["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                });
                if !established {
                    missing.push(format!("{name} (not Established)"));
                }
            }
            Ok(None) => missing.push(name.to_string()),
            Err(e) => {
                return bad(
                    D,
                    CheckResult::Error,
                    e.to_string(),
                    "can this user read CRDs?",
                );
            }
        }
    }
    verdict(
        D,
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("missing: {}", missing.join(", ")))
        },
        "re-apply the install: `trellis install | kubectl apply -f -`",
    )
}

async fn deployment_ready(client: &Client) -> Check {
    const D: &str = "control plane Deployment is ready";
    let path = cluster::path(
        "apps/v1",
        "deployments",
        Some(names::NAMESPACE),
        Some(names::CONTROL),
    );
    let hint =
        "`kubectl -n trellis-system describe deployment trellis-control` and its pods' events";
    match cluster::get(client, &path).await {
        Ok(Some(d)) => {
            let want = d["spec"]["replicas"].as_u64().unwrap_or(1);
            let ready = d["status"]["readyReplicas"].as_u64().unwrap_or(0);
            verdict(
                D,
                if ready >= want && ready > 0 {
                    Ok(())
                } else {
                    Err(format!("{ready}/{want} replicas ready"))
                },
                hint,
            )
        }
        Ok(None) => bad(
            D,
            CheckResult::Error,
            format!(
                "deployment {}/{} not found",
                names::NAMESPACE,
                names::CONTROL
            ),
            hint,
        ),
        Err(e) => bad(D, CheckResult::Error, e.to_string(), hint),
    }
}
