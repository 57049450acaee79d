//! Kubernetes mode against a REAL kube-apiserver (v1.20.2, built from Debian's source package by
//! scripts/k8s-testbed/build-kube-apiserver.sh) with etcd and kube-controller-manager, started
//! on free 127.0.0.1 ports for this test binary.
//!
//! The install manifests are applied, the control plane runs in-process with its admission
//! webhooks, and a real proxy discovery client subscribes. There is no kubelet: the test writes
//! pod status (IP, Ready) as one would, and force-deletes pods.
//!
//! Without the binaries the test fails, unless TRELLIS_SKIP_K8S=1 (then it prints why it skips).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;
mod k8s_testbed;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{client, eventually, found, workload};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_testbed::cluster::{create_namespace, start_installed, webhook_values};
use k8s_testbed::free_port;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trellis_control::k8s::KubeOptions;
use trellis_control::{ControlConfig, ControlPlane};
use trellis_model::Target;

fn control_config(kubeconfig: &Path, discovery: SocketAddr, webhook: SocketAddr) -> ControlConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    ControlConfig {
        discovery_addr: discovery,
        http_addr: any,
        heartbeat_interval: Duration::from_millis(200),
        workload_expiry: Duration::from_secs(2),
        kubernetes: Some(KubeOptions {
            kubeconfig: Some(kubeconfig.to_path_buf()),
            webhook_addr: Some(webhook),
            webhook_names: vec!["127.0.0.1".into()],
            sync_timeout: Duration::from_secs(20),
            ..KubeOptions::default()
        }),
        ..ControlConfig::default()
    }
}

fn vs_resource() -> ApiResource {
    ApiResource {
        group: "networking.istio.io".into(),
        version: "v1beta1".into(),
        api_version: "networking.istio.io/v1beta1".into(),
        kind: "VirtualService".into(),
        plural: "virtualservices".into(),
    }
}

fn pod(name: &str, namespace: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "reviews"}},
        "spec": {
            "nodeName": "node-1",
            "serviceAccountName": "default",
            "containers": [{"name": "app", "image": "reviews:1", "ports": [{"containerPort": 9080}]}],
        },
    }))
    .unwrap()
}

fn container_names(pod: &Pod, init: bool) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    let list = if init {
        spec.init_containers.clone().unwrap_or_default()
    } else {
        spec.containers.clone()
    };
    list.into_iter().map(|c| c.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_against_a_real_api_server() {
    // 1. `trellis install`'s manifests, with the webhooks called at this process's address.
    let webhook: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // Fixed, so that the restarted control plane is where the client reconnects.
    let discovery_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut values = webhook_values(webhook);
    values.set("webhook.failurePolicy=Fail").unwrap();
    let Some((testbed, kube)) =
        start_installed(&values, &["virtualservices.networking.istio.io"]).await
    else {
        return;
    };
    let test_start = Instant::now();
    let vs_api: Api<DynamicObject> = Api::namespaced_with(kube.clone(), "shop", &vs_resource());
    create_namespace(&kube, "shop", json!({"trellis.io/inject": "enabled"})).await;
    create_namespace(&kube, "plain", json!({})).await;
    let nodes: Api<Node> = Api::all(kube.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "node-1"}})).unwrap(),
        )
        .await
        .unwrap();
    let services: Api<Service> = Api::namespaced(kube.clone(), "shop");
    let svc = json!({"metadata": {"name": "reviews"}, "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080, "targetPort": 9080}]}});
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(svc).unwrap(),
        )
        .await
        .unwrap();

    // 2. The control plane, in-process, in Kubernetes mode; it patches the webhooks' caBundle.
    let control = ControlPlane::start(control_config(&testbed.kubeconfig, discovery_addr, webhook))
        .await
        .unwrap();
    assert_eq!(control.webhook_addr, Some(webhook));
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(kube.clone());
    eventually("caBundle patched", || async {
        let hook = hooks.get("trellis-sidecar-injector").await.ok()?;
        hook.webhooks?
            .first()?
            .client_config
            .ca_bundle
            .as_ref()
            .map(|_| ())
    })
    .await;

    // 3. Injection: the API server calls the webhook over TLS.
    let pods: Api<Pod> = Api::namespaced(kube.clone(), "shop");
    let created = pods
        .create(&PostParams::default(), &pod("reviews-1", "shop"))
        .await
        .unwrap();
    assert_eq!(
        container_names(&created, false),
        ["trellis-proxy", "app"],
        "proxy injected first"
    );
    assert_eq!(container_names(&created, true), ["trellis-init"]);
    let plain: Api<Pod> = Api::namespaced(kube.clone(), "plain");
    let other = plain
        .create(&PostParams::default(), &pod("reviews-1", "plain"))
        .await
        .unwrap();
    assert_eq!(
        container_names(&other, false),
        ["app"],
        "no injection without the label"
    );

    // 4. A discovery client subscribed to the Service sees the pod once it is Ready.
    let shutdown = CancellationToken::new();
    let discovery = client(
        control.discovery_addr,
        workload("client-1", "client", "127.0.0.1:1"),
        &shutdown,
    );
    let target: Target = "reviews.shop:9080".parse().unwrap();
    let rx = discovery.watch(&target);
    eventually("reviews known, no endpoints yet", || async {
        found(&rx).filter(|d| d.endpoints.is_empty())
    })
    .await;
    let status = json!({"status": {
        "phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    pods.patch_status("reviews-1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let dest = eventually("endpoint of the ready pod", || async {
        found(&rx).filter(|d| !d.endpoints.is_empty())
    })
    .await;
    let ep = &dest.endpoints[0];
    assert_eq!(ep.address, "10.1.0.5:15006".parse().unwrap());
    assert_eq!(ep.target_port, 9080);
    assert_eq!(
        ep.identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/default")
    );

    // 5. A VirtualService reaches the subscriber; an invalid one is refused by the webhook.
    let vs: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"hosts": ["reviews"], "http": [{"timeout": "3s", "route": [{"destination": {"host": "reviews"}}]}]},
    }))
    .unwrap();
    vs_api.create(&PostParams::default(), &vs).await.unwrap();
    eventually("VirtualService route", || async {
        found(&rx).filter(|d| !d.routes.is_empty())
    })
    .await;
    let mut bad = vs.clone();
    bad.metadata.name = Some("bad".into());
    bad.data["spec"]["http"][0]["route"][0]["destination"]["port"] = json!({"number": 0});
    let err = vs_api
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("VirtualService shop/bad: spec.http[0].route[0].destination.port.number: must be 1-65535"), "{message}");

    // Status: the valid one is Accepted; with the validator out of the way, an invalid one
    // is stored and gets Accepted=False with the same message.
    let condition = |name: &'static str| {
        let vs_api = vs_api.clone();
        async move {
            let obj = vs_api.get(name).await.ok()?;
            let cond = obj.data["status"]["conditions"]
                .as_array()?
                .first()?
                .clone();
            (cond["type"] == "Accepted").then_some(cond)
        }
    };
    let accepted = eventually("Accepted condition", || condition("reviews")).await;
    assert_eq!(accepted["status"], "True");
    assert_eq!(accepted["observedGeneration"], 1);
    let validators: Api<ValidatingWebhookConfiguration> = Api::all(kube.clone());
    validators
        .delete("trellis-config-validator", &DeleteParams::default())
        .await
        .unwrap();
    // The API server learns of the deleted webhook configuration eventually, not at once:
    // retry the create (bounded) until the validator no longer answers for it.
    eventually("a create the deleted validator no longer refuses", || {
        let (vs_api, bad) = (vs_api.clone(), bad.clone());
        async move { vs_api.create(&PostParams::default(), &bad).await.ok() }
    })
    .await;
    let refused = eventually("Accepted=False", || condition("bad")).await;
    assert_eq!(refused["status"], "False");
    assert_eq!(refused["reason"], "Invalid");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .starts_with("VirtualService shop/bad: spec.http[0].route[0].destination.port.number"),
        "{refused}"
    );
    // The invalid one never reaches the proxy: the route of the valid one stays.
    assert!(found(&rx).is_some_and(|d| !d.routes.is_empty()));

    // 6. A control-plane restart: the client reconnects and never sees the endpoint go away.
    let went_empty = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (mut rx, went_empty) = (rx.clone(), went_empty.clone());
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if found(&rx).is_some_and(|d| d.endpoints.is_empty()) {
                    went_empty.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    control.stop().await;
    let control = ControlPlane::start(control_config(&testbed.kubeconfig, discovery_addr, webhook))
        .await
        .unwrap();
    // The restarted control plane knows the client only once it has reconnected.
    let http = control.http_addr;
    eventually("client reconnected", || async {
        let workloads = common::get_json(http, "/api/v1/workloads").await?;
        workloads
            .as_array()?
            .iter()
            .any(|w| w["name"] == "client-1")
            .then_some(())
    })
    .await;
    let control_plane = control;
    // The stopped instance released the Lease, so the new one leads at once (one transition).
    let leases: Api<Lease> = Api::namespaced(kube.clone(), "trellis-system");
    eventually("lease taken over", || async {
        let spec = leases.get("trellis-control").await.ok()?.spec?;
        (spec.holder_identity.is_some() && spec.lease_transitions == Some(1)).then_some(())
    })
    .await;
    // Past the reconnect and the first pushes of the new control plane.
    eventually("endpoint after the restart", || async {
        found(&rx).filter(|d| !d.endpoints.is_empty())
    })
    .await;
    watcher.abort();
    assert!(
        !went_empty.load(Ordering::SeqCst),
        "endpoint vanished during the restart"
    );

    // 7. Force-deleting the pod removes the endpoint within a second.
    let deleted_at = Instant::now();
    pods.delete(
        "reviews-1",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    eventually("endpoint removed", || async {
        found(&rx).filter(|d| d.endpoints.is_empty())
    })
    .await;
    let took = deleted_at.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "endpoint removed after {took:?}"
    );

    let _ = plain
        .delete(
            "reviews-1",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await;
    shutdown.cancel();
    control_plane.stop().await;

    // failurePolicy Fail (set above): with the control plane down, pods where the webhook
    // applies are refused rather than started without a proxy.
    let refused = pods
        .create(&PostParams::default(), &pod("reviews-2", "shop"))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("inject.trellis.io"), "{refused}");
    eprintln!("k8s test took {:?}", test_start.elapsed());
}
