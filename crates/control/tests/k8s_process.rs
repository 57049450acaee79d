//! `trellis-control --kubernetes` as a process against a REAL kube-apiserver, authenticated as
//! the `trellis-control` ServiceAccount of the install manifests: proves the rendered RBAC is
//! enough for everything the control plane does (watch, patch the webhooks' caBundle, write
//! status, review ServiceAccount tokens), and that the API server calls the process's webhook.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;
mod k8s_testbed;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::eventually;
use k8s_openapi::api::core::v1::Pod;
use k8s_testbed::cluster::{
    create_namespace, default_token, installed_account_kubeconfig, start_installed, webhook_values,
};
use k8s_testbed::free_port;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::ApiResource;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_process_with_the_installed_rbac() {
    let webhook: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let Some((testbed, admin)) = start_installed(&webhook_values(webhook), &[]).await else {
        return;
    };

    // A token of the installed ServiceAccount, in a kubeconfig of its own.
    let kubeconfig = installed_account_kubeconfig(&admin, &testbed).await;

    let ready_file = testbed.run.path().join("control.ready");
    let discovery_port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_trellis-control"))
        .args(["--kubernetes", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--discovery", &format!("127.0.0.1:{discovery_port}")])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--webhook",
            &webhook.to_string(),
            "--webhook-name",
            "127.0.0.1",
        ])
        .arg("--ready-file")
        .arg(&ready_file)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually("control plane ready file", || async {
        std::fs::read_to_string(&ready_file).ok().map(|_| ())
    })
    .await;

    // The webhook is called once the process has patched the caBundle with its own CA.
    create_namespace(&admin, "shop", json!({"trellis.io/inject": "enabled"})).await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "shop");
    let mut n = 0;
    let injected = eventually("pod injected by the process's webhook", || {
        n += 1;
        let pods = pods.clone();
        let name = format!("reviews-{n}");
        async move {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"containers": [{"name": "app", "image": "reviews:1"}]},
            }))
            .unwrap();
            let created = pods.create(&PostParams::default(), &pod).await.ok()?;
            let names: Vec<String> = created
                .spec?
                .containers
                .into_iter()
                .map(|c| c.name)
                .collect();
            (names.first().map(String::as_str) == Some("trellis-proxy")).then_some(names)
        }
    })
    .await;
    assert_eq!(injected, ["trellis-proxy", "app"]);

    // Status is written with the ServiceAccount's rights.
    let resource = ApiResource {
        group: "networking.istio.io".into(),
        version: "v1beta1".into(),
        api_version: "networking.istio.io/v1beta1".into(),
        kind: "VirtualService".into(),
        plural: "virtualservices".into(),
    };
    let vs_api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), "shop", &resource);
    eventually("VirtualService CRD served", || async {
        vs_api.list(&ListParams::default()).await.ok().map(|_| ())
    })
    .await;
    let vs: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]},
    }))
    .unwrap();
    vs_api.create(&PostParams::default(), &vs).await.unwrap();
    eventually("Accepted=True written by the process", || async {
        let obj = vs_api.get("reviews").await.ok()?;
        (obj.data["status"]["conditions"][0]["status"] == "True").then_some(())
    })
    .await;

    // TokenReview with the ServiceAccount's rights: a `trellis` token of shop/default (made by
    // the controller manager) is reviewed and gets its certificate.
    let token = default_token(&admin, "shop").await;
    let id = trellis_identity::SpiffeId::new("cluster.local", "shop", "default").unwrap();
    let key = trellis_identity::tls::LeafKey::generate().unwrap();
    let mut identity = trellis_api::identity::identity_client::IdentityClient::connect(format!(
        "http://127.0.0.1:{discovery_port}"
    ))
    .await
    .unwrap();
    let issued = identity
        .certify(trellis_api::identity::CertifyRequest {
            namespace: "shop".into(),
            service_account: "default".into(),
            csr_pem: key.csr_pem(&id).unwrap(),
            join_token: token,
        })
        .await;
    assert!(issued.is_ok(), "TokenReview by the process: {issued:?}");

    let everything = pods.list(&ListParams::default()).await.unwrap();
    for pod in everything {
        let name = pod.metadata.name.unwrap();
        let _ = pods
            .delete(
                &name,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
            )
            .await;
    }
    child.start_kill().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;

    // failurePolicy Ignore (the default): with the control plane gone, pods are still created,
    // without a proxy.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "while-down"},
        "spec": {"containers": [{"name": "app", "image": "reviews:1"}]},
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let names: Vec<String> = created
        .spec
        .unwrap()
        .containers
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["app"]);
}
