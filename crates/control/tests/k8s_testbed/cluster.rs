//! What the Kubernetes tests do on the testbed again and again: start it with the install's
//! manifests applied, kubectl from async tests, waiting for the installed CRDs to be served,
//! namespaces, a control plane on the testbed, a ServiceAccount token for the mesh, and a plain
//! (unmeshed) pod made Ready as a kubelet would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use trellis_control::k8s::manifests::{Values, render};
use trellis_control::k8s::{KubeOptions, apply};
use trellis_control::{ControlConfig, ControlPlane};

use trellis_testkit::wait;

/// How long one of these steps may wait for the API server (a CRD established, a namespace's
/// `default` ServiceAccount made by the controller manager).
const STEP: Duration = Duration::from_secs(15);

/// Awaits `check` (bounded by [`STEP`]) until it gives `Some`; fails the test naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait::until_async(STEP, || {
        let fut = check();
        async move { fut.await.ok_or_else(|| "not yet".to_string()) }
    })
    .await
    .unwrap_or_else(|e| panic!("timed out waiting for {what}: {e}"))
}

/// The testbed started, with `trellis install`'s manifests for `values` applied (by the API, as
/// the admin) and the custom resources `served` (plural.group) served; with an admin client.
/// `None` when the testbed is skipped (TRELLIS_SKIP_K8S=1 without its binaries).
pub async fn start_installed(
    values: &Values,
    served: &[&str],
) -> Option<(super::Testbed, kube::Client)> {
    let testbed = super::Testbed::start()?;
    let admin = testbed.client().await;
    install(&testbed, &admin, values, served).await;
    Some((testbed, admin))
}

/// `trellis install`'s manifests for `values` applied by `admin`, then waits until the custom
/// resources `served` are served. For a test that must create something first (a namespace the
/// install puts a Role in); the rest use [`start_installed`].
pub async fn install(
    testbed: &super::Testbed,
    admin: &kube::Client,
    values: &Values,
    served: &[&str],
) {
    apply::apply(admin, &render(values)).await.unwrap();
    if !served.is_empty() {
        wait_served(
            &testbed.kubeconfig,
            &format!("{} served", served.join(", ")),
            served,
        )
        .await;
    }
}

/// Install values whose admission webhooks the API server calls at `webhook` (this process, or
/// a control plane it starts), over HTTPS.
pub fn webhook_values(webhook: SocketAddr) -> Values {
    let mut values = Values::default();
    values
        .set(&format!("webhook.url=https://{webhook}"))
        .unwrap();
    values
}

/// Creates the namespace `name` with `labels` (a JSON object; `{}` for none).
pub async fn create_namespace(kube: &kube::Client, name: &str, labels: Value) {
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    let namespace = json!({"metadata": {"name": name, "labels": labels}});
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(namespace).unwrap(),
        )
        .await
        .unwrap_or_else(|e| panic!("creating the namespace {name}: {e}"));
}

/// [`super::kubectl`] (bounded) off the async runtime, with `stdin` text: whether it succeeded,
/// and its stdout then stderr.
pub async fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let kubeconfig = kubeconfig.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| (*a).to_string()).collect();
    let stdin = stdin.unwrap_or_default().as_bytes().to_vec();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        super::kubectl(&kubeconfig, &args, &stdin)
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `kubectl apply -f -` of `yaml`, which must succeed.
pub async fn kubectl_apply(kubeconfig: &Path, yaml: &str) {
    let (ok, out) = kubectl(kubeconfig, &["apply", "-f", "-"], Some(yaml)).await;
    assert!(ok, "kubectl apply: {out}");
}

/// `kubectl get <what> -n <ns> -o json`'s `.status`, when the object exists.
pub async fn status(kubeconfig: &Path, what: &str, ns: &str) -> Option<Value> {
    let (ok, out) = kubectl(kubeconfig, &["get", what, "-n", ns, "-o", "json"], None).await;
    if !ok {
        return None;
    }
    let obj: Value = serde_json::from_str(&out).ok()?;
    Some(obj["status"].clone())
}

/// The element of the array `list` whose `key` is `value`.
pub fn find<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|v| v[key] == value)
}

/// The (status, reason) of condition `kind` in `conditions`.
pub fn cond(conditions: &Value, kind: &str) -> Option<(String, String)> {
    let c = find(conditions, "type", kind)?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

/// A (status, reason) to compare [`cond`] with.
pub fn pair(status: &str, reason: &str) -> Option<(String, String)> {
    Some((status.to_string(), reason.to_string()))
}

/// Waits until `kubectl get <resource> -A` succeeds for each of `resources`: the CRDs an
/// install just applied are served (the API server takes a moment to establish them).
pub async fn wait_served(kubeconfig: &Path, what: &str, resources: &[&str]) {
    eventually(what, || async {
        for resource in resources {
            let (ok, _) = kubectl(kubeconfig, &["get", resource, "-A"], None).await;
            if !ok {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Options for a control plane on the testbed: its kubeconfig, no webhooks, 20 s to sync.
pub fn kube_options(kubeconfig: &Path) -> KubeOptions {
    KubeOptions {
        kubeconfig: Some(kubeconfig.to_path_buf()),
        webhook_addr: None,
        sync_timeout: Duration::from_secs(20),
        ..KubeOptions::default()
    }
}

/// A control plane in this process on free loopback ports, with `kube` and a 200 ms heartbeat
/// (so proxies' state reaches status quickly).
pub async fn control_plane(kube: KubeOptions) -> ControlPlane {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    ControlPlane::start(ControlConfig {
        discovery_addr: any,
        http_addr: any,
        heartbeat_interval: Duration::from_millis(200),
        kubernetes: Some(kube),
        ..ControlConfig::default()
    })
    .await
    .unwrap()
}

/// A TokenRequest token of `namespace`'s `default` ServiceAccount for the mesh's audience
/// (`trellis`, 600 s): what a workload proves its identity with (Kubernetes mode checks it with
/// TokenReview before issuing a certificate).
pub async fn default_token(kube: &kube::Client, namespace: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(kube.clone(), namespace);
    let request: TokenRequest = serde_json::from_value(
        json!({"spec": {"audiences": ["trellis"], "expirationSeconds": 600}}),
    )
    .unwrap();
    // The controller manager creates the namespace's `default` ServiceAccount shortly after it.
    eventually(&format!("a token of {namespace}/default"), || async {
        Some(
            accounts
                .create_token_request("default", &PostParams::default(), &request)
                .await
                .ok()?
                .status?
                .token,
        )
    })
    .await
}

/// [`default_token`] in the file `<namespace>.token` under `dir`.
pub async fn token_file(kube: &kube::Client, namespace: &str, dir: &Path) -> PathBuf {
    let token = default_token(kube, namespace).await;
    let path = dir.join(format!("{namespace}.token"));
    std::fs::write(&path, token).unwrap();
    path
}

/// A Service `plain` (port 8080) in `namespace` selecting the pod `plain-1`, which is made
/// Ready at 127.0.0.1 as a kubelet would (on the node `node-1`, created here), its container
/// port `port`: an application with no proxy in front of it.
pub async fn plain_backend(kube: &kube::Client, namespace: &str, port: u16) {
    let services: Api<Service> = Api::namespaced(kube.clone(), namespace);
    let service = json!({"metadata": {"name": "plain"},
        "spec": {"selector": {"app": "plain"}, "ports": [{"port": 8080, "targetPort": port}]}});
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(service).unwrap(),
        )
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(kube.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "node-1"}})).unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(kube.clone(), namespace);
    let pod = json!({
        "metadata": {"name": "plain-1", "labels": {"app": "plain"}},
        "spec": {"nodeName": "node-1", "serviceAccountName": "default",
                 "containers": [{"name": "app", "image": "plain:1", "ports": [{"containerPort": port}]}]},
    });
    // The namespace's `default` ServiceAccount comes from the controller manager shortly after
    // the namespace: the pod is refused until then.
    eventually("the plain pod created", || async {
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(pod.clone()).unwrap(),
        )
        .await
        .ok()
        .map(|_| ())
    })
    .await;
    let status = json!({"status": {
        "phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    pods.patch_status("plain-1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// A kubeconfig (in the testbed's run directory) authenticating as the `trellis-control`
/// ServiceAccount of the install manifests (already applied): a control plane using it has
/// exactly the RBAC `trellis install` grants.
pub async fn installed_account_kubeconfig(
    admin: &kube::Client,
    testbed: &super::Testbed,
) -> PathBuf {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "trellis-system");
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    let token = eventually("a token of trellis-system/trellis-control", || async {
        Some(
            accounts
                .create_token_request("trellis-control", &PostParams::default(), &request)
                .await
                .ok()?
                .status?
                .token,
        )
    })
    .await;
    let admin_config = std::fs::read_to_string(&testbed.kubeconfig).unwrap();
    let server = admin_config
        .lines()
        .find_map(|l| l.split("server: \"").nth(1)?.split('"').next())
        .unwrap()
        .to_string();
    let ca = testbed.run.path().join("ca.crt");
    let kubeconfig = testbed.run.path().join("control.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: t, cluster: {{server: \"{server}\", certificate-authority: \"{}\"}}}}]\nusers: [{{name: sa, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: t, context: {{cluster: t, user: sa}}}}]\ncurrent-context: t\n",
            ca.display()
        ),
    )
    .unwrap();
    kubeconfig
}
