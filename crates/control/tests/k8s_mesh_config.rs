//! Istio's MeshConfig in Kubernetes mode against a REAL kube-apiserver (the testbed of
//! k8s.rs): the control plane, authenticated as the installed `trellis-control`
//! ServiceAccount (so with exactly the RBAC `trellis install` grants: the one ConfigMap
//! `istio` of the root namespace), reads the ConfigMap `istio`; an `extensionProviders`
//! OpenTelemetry entry named by a Telemetry reaches a connected proxy as its collector; a bad
//! `mesh` key is reported naming the ConfigMap and the field while the last good MeshConfig
//! stays in force; a fixed one is followed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;
mod k8s_testbed;

use common::{client, eventually, workload};
use k8s_testbed::cluster::{
    control_plane, create_namespace, installed_account_kubeconfig, kube_options, kubectl_apply,
    start_installed,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use trellis_control::k8s::manifests::Values;

const COLLECTOR: &str = "otel-collector.observability.svc.cluster.local";

/// The ConfigMap `istio` of the root namespace with `mesh` as its MeshConfig.
fn mesh_config(mesh: &str) -> String {
    let mesh = serde_json::to_string(mesh).unwrap();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: trellis-system}}\ndata:\n  mesh: {mesh}\n"
    )
}

fn otel(port: u32) -> String {
    format!(
        "extensionProviders:\n- name: otel\n  opentelemetry:\n    service: {COLLECTOR}\n    port: {port}\n"
    )
}

/// A Telemetry of the reviews workload naming the provider `otel`, sampling `percent`.
fn telemetry(percent: u32) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1alpha1\nkind: Telemetry\nmetadata: {{name: reviews-traces, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: reviews}}}}\n  tracing:\n  - providers: [{{name: otel}}]\n    randomSamplingPercentage: {percent}\n"
    )
}

/// The telemetry settings the proxy was last sent (`{}` before any).
fn settings(rx: &tokio::sync::watch::Receiver<std::sync::Arc<str>>) -> Value {
    serde_json::from_str(&rx.borrow()).unwrap_or_default()
}

/// The collector endpoint in the telemetry settings the proxy was last sent.
fn collector(rx: &tokio::sync::watch::Receiver<std::sync::Arc<str>>) -> Option<String> {
    Some(settings(rx)["collector"]["endpoint"].as_str()?.to_string())
}

/// The control plane's row for `file` in `/api/v1/config`.
async fn row(control: std::net::SocketAddr, file: &str) -> Option<Value> {
    let config = common::get_json(control, "/api/v1/config").await?;
    config["resources"]
        .as_array()?
        .iter()
        .find(|r| r["file"] == file)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_istio_config_map_names_the_collector_of_a_telemetry() {
    let Some((testbed, admin)) =
        start_installed(&Values::default(), &["telemetries.telemetry.istio.io"]).await
    else {
        return;
    };
    create_namespace(&admin, "shop", json!({})).await;
    kubectl_apply(&testbed.kubeconfig, &mesh_config(&otel(4317))).await;

    let kubeconfig = installed_account_kubeconfig(&admin, &testbed).await;
    let control = control_plane(kube_options(&kubeconfig)).await;
    let stop = CancellationToken::new();
    let mut reviews = workload("reviews-1", "reviews", "127.0.0.1:1");
    reviews.namespace = "shop".into();
    let proxy = client(control.discovery_addr, reviews, &stop);
    let telemetry_rx = proxy.telemetry_rx();

    // 1. A Telemetry naming the provider: the proxy is sent the ConfigMap's collector.
    kubectl_apply(&testbed.kubeconfig, &telemetry(100)).await;
    let first = format!("http://{COLLECTOR}:4317");
    eventually("the provider's collector at the proxy", || async {
        (collector(&telemetry_rx).as_deref() == Some(first.as_str())).then_some(())
    })
    .await;
    let accepted = row(control.http_addr, "ConfigMap trellis-system/istio")
        .await
        .unwrap();
    assert_eq!(accepted["status"], "Accepted", "{accepted}");

    // 2. A bad `mesh` key: reported naming the ConfigMap and the field; the last good
    //    MeshConfig stays in force.
    kubectl_apply(&testbed.kubeconfig, &mesh_config(&otel(70000))).await;
    let invalid = eventually("the bad MeshConfig reported", || async {
        let r = row(control.http_addr, "ConfigMap trellis-system/istio").await?;
        (r["status"] == "Invalid").then_some(r)
    })
    .await;
    let message = invalid["message"].as_str().unwrap();
    assert!(
        message.contains("ConfigMap trellis-system/istio")
            && message.contains("data.mesh: extensionProviders[0].opentelemetry.port")
            && message.contains("70000"),
        "{message}"
    );
    // The proxy keeps its collector. Proven in order, not by waiting a while: a later change
    // (the Telemetry's sampling) reaches the proxy through the same snapshots and stream as the
    // bad MeshConfig's, so once the proxy has it, it has had everything the bad MeshConfig
    // led to, and the settings it now holds must still name the first collector.
    kubectl_apply(&testbed.kubeconfig, &telemetry(50)).await;
    let marked = eventually("the Telemetry's new sampling at the proxy", || async {
        let s = settings(&telemetry_rx);
        (s["sampling"] == json!(0.5)).then_some(s)
    })
    .await;
    assert_eq!(
        marked["collector"]["endpoint"].as_str(),
        Some(first.as_str()),
        "{marked}"
    );

    // 3. A fixed MeshConfig is followed (the watch goes on after the bad one).
    kubectl_apply(&testbed.kubeconfig, &mesh_config(&otel(4318))).await;
    let second = format!("http://{COLLECTOR}:4318");
    eventually("the new collector at the proxy", || async {
        (collector(&telemetry_rx).as_deref() == Some(second.as_str())).then_some(())
    })
    .await;

    // 4. Deleting the ConfigMap: no MeshConfig, the proxy falls back to its own flag.
    let (ok, out) = k8s_testbed::cluster::kubectl(
        &testbed.kubeconfig,
        &["delete", "configmap", "istio", "-n", "trellis-system"],
        None,
    )
    .await;
    assert!(ok, "kubectl delete: {out}");
    eventually("no collector without the MeshConfig", || async {
        collector(&telemetry_rx).is_none().then_some(())
    })
    .await;

    stop.cancel();
    control.stop().await;
}
