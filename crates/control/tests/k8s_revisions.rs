//! Two control-plane revisions side by side against a REAL kube-apiserver (the testbed of
//! k8s.rs): the default one and `--revision canary`, each with its own webhook server,
//! certificate authority and webhook configurations (`trellis-sidecar-injector` and
//! `trellis-sidecar-injector-canary`, whose caBundle each patches itself). The API server calls
//! both injectors for every pod; injection follows the namespace's revision label
//! (`trellis.io/rev`, or Istio's `istio.io/rev`), unlabelled namespaces stay with the default
//! revision. A namespace moves to the canary by relabelling it, and back (the rollback).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;
mod k8s_testbed;

use std::net::SocketAddr;
use std::time::Duration;

use common::eventually;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_testbed::cluster::{create_namespace, start_installed, webhook_values};
use k8s_testbed::free_port;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use trellis_control::k8s::manifests::render;
use trellis_control::k8s::{KubeOptions, apply};
use trellis_control::webhook::inject::InjectConfig;
use trellis_control::webhook::revision::webhook_name;
use trellis_control::{ControlConfig, ControlPlane};

const STABLE_URL: &str = "http://trellis-control.trellis-system.svc:15010";
const CANARY_URL: &str = "http://trellis-control-canary.trellis-system.svc:15010";

fn control_config(
    kubeconfig: &std::path::Path,
    webhook: SocketAddr,
    revision: Option<&str>,
) -> ControlConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    ControlConfig {
        discovery_addr: any,
        http_addr: any,
        kubernetes: Some(KubeOptions {
            kubeconfig: Some(kubeconfig.to_path_buf()),
            webhook_addr: Some(webhook),
            webhook_names: vec!["127.0.0.1".into()],
            sync_timeout: Duration::from_secs(20),
            // The discovery URL each revision gives the proxies it injects tells them apart.
            inject: InjectConfig {
                control_url: if revision.is_some() {
                    CANARY_URL
                } else {
                    STABLE_URL
                }
                .into(),
                revision: revision.map(str::to_string),
                ..InjectConfig::default()
            },
            ..KubeOptions::default()
        }),
        ..ControlConfig::default()
    }
}

/// The install's webhook configurations for a control plane at `webhook`, named for
/// `revision` as a revisioned install names them.
fn webhook_configurations(webhook: SocketAddr, revision: Option<&str>) -> Vec<Value> {
    let mut values = webhook_values(webhook);
    values.set("webhook.failurePolicy=Fail").unwrap();
    render(&values)
        .into_iter()
        .filter(|o| {
            o["kind"] == "MutatingWebhookConfiguration"
                || o["kind"] == "ValidatingWebhookConfiguration"
        })
        .map(|mut o| {
            let name = webhook_name(o["metadata"]["name"].as_str().unwrap(), revision);
            o["metadata"]["name"] = json!(name);
            o
        })
        .collect()
}

/// Which revision injected the pod: the discovery URL its proxy was given, or `None`.
fn injected_by(pod: &Pod) -> Option<&'static str> {
    let text = serde_json::to_string(&pod.spec).unwrap();
    let has_proxy = pod
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .chain(pod.spec.as_ref().unwrap().init_containers.iter().flatten())
        .any(|c| c.name == "trellis-proxy");
    match (
        has_proxy,
        text.contains(CANARY_URL),
        text.contains(STABLE_URL),
    ) {
        (false, _, _) => None,
        (true, true, false) => Some("canary"),
        (true, false, true) => Some("default"),
        _ => panic!("injected by both revisions? {text}"),
    }
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": "default",
            "containers": [{"name": "app", "image": "reviews:1"}],
        },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_revisions_inject_by_the_namespace_revision_label() {
    let stable_hook: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let canary_hook: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();

    // The default install, plus the canary revision's webhook configurations.
    let mut values = webhook_values(stable_hook);
    values.set("webhook.failurePolicy=Fail").unwrap();
    let Some((testbed, kube)) = start_installed(&values, &[]).await else {
        return;
    };
    apply::apply(&kube, &webhook_configurations(canary_hook, Some("canary")))
        .await
        .unwrap();

    let stable = ControlPlane::start(control_config(&testbed.kubeconfig, stable_hook, None))
        .await
        .unwrap();
    let canary = ControlPlane::start(control_config(
        &testbed.kubeconfig,
        canary_hook,
        Some("canary"),
    ))
    .await
    .unwrap();
    // Each revision patches its own configuration's caBundle with its own CA; with
    // failurePolicy Fail a pod is admitted only once both injectors answer over TLS.
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(kube.clone());
    for name in [
        "trellis-sidecar-injector",
        "trellis-sidecar-injector-canary",
    ] {
        eventually(&format!("{name} caBundle patched"), || async {
            let hook = hooks.get(name).await.ok()?;
            hook.webhooks?.first()?.client_config.ca_bundle.as_ref()?;
            Some(())
        })
        .await;
    }
    let bundle = |name: &'static str| {
        let hooks = hooks.clone();
        async move {
            let hook = hooks.get(name).await.unwrap();
            hook.webhooks.unwrap()[0].client_config.ca_bundle.clone()
        }
    };
    assert_ne!(
        bundle("trellis-sidecar-injector").await,
        bundle("trellis-sidecar-injector-canary").await,
        "two CAs, each revision patched its own configuration"
    );

    for (name, labels) in [
        ("stable", json!({"trellis.io/inject": "enabled"})),
        ("canary", json!({"trellis.io/rev": "canary"})),
        ("istio-canary", json!({"istio.io/rev": "canary"})),
        ("plain", json!({})),
        ("moving", json!({"trellis.io/inject": "enabled"})),
    ] {
        create_namespace(&kube, name, labels).await;
    }
    let create = |namespace: &'static str, name: &'static str| {
        let pods: Api<Pod> = Api::namespaced(kube.clone(), namespace);
        async move {
            pods.create(&PostParams::default(), &pod(name))
                .await
                .unwrap_or_else(|e| panic!("creating {namespace}/{name}: {e}"))
        }
    };
    assert_eq!(injected_by(&create("stable", "a").await), Some("default"));
    assert_eq!(injected_by(&create("canary", "a").await), Some("canary"));
    assert_eq!(
        injected_by(&create("istio-canary", "a").await),
        Some("canary")
    );
    assert_eq!(injected_by(&create("plain", "a").await), None);

    // Move a namespace to the canary (its new pods), then roll it back.
    assert_eq!(
        injected_by(&create("moving", "before").await),
        Some("default")
    );
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    let relabel = |rev: Value| {
        let namespaces = namespaces.clone();
        async move {
            namespaces
                .patch(
                    "moving",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"trellis.io/rev": rev}}})),
                )
                .await
                .unwrap();
        }
    };
    relabel(json!("canary")).await;
    // Both injectors learn the label from their namespace watch; poll with fresh pods.
    let moved = eventually("moving's new pods injected by the canary", || {
        let kube = kube.clone();
        async move {
            let pods: Api<Pod> = Api::namespaced(kube, "moving");
            let name = format!("moved-{}", rand_suffix());
            let created = pods
                .create(&PostParams::default(), &pod(&name))
                .await
                .ok()?;
            (injected_by(&created) == Some("canary")).then_some(created)
        }
    })
    .await;
    assert_eq!(injected_by(&moved), Some("canary"));

    relabel(Value::Null).await;
    eventually("moving back with the default revision", || {
        let kube = kube.clone();
        async move {
            let pods: Api<Pod> = Api::namespaced(kube, "moving");
            let name = format!("back-{}", rand_suffix());
            let created = pods
                .create(&PostParams::default(), &pod(&name))
                .await
                .ok()?;
            (injected_by(&created) == Some("default")).then_some(())
        }
    })
    .await;

    canary.stop().await;
    stable.stop().await;
}

/// A name suffix unique within the test.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
