//! `trellis check --pre`, `trellis check` in Kubernetes mode, `trellis upgrade` and
//! `trellis validate --cluster` against a REAL kube-apiserver (the testbed of crates/control/
//! tests, v1.20), with the real `trellis-control` run outside the cluster as its webhook server
//! (found next to `trellis`: `cargo build --workspace --bins` first). Needs kubectl on PATH.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

#[path = "../../control/tests/k8s_testbed/mod.rs"]
mod k8s_testbed;

// Only the goldens of the shared test support: this test starts no demo.
#[path = "support/golden.rs"]
mod golden;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use golden::{golden, mask_ports};
use k8s_testbed::{Testbed, control_replicas, free_port, kubectl, kubectl_ok};
use trellis_testkit::tools::run_bounded;

/// How long one `trellis` command against the testbed may take before it is killed.
const TRELLIS_DEADLINE: Duration = Duration::from_secs(45);

/// Kills the child it holds when dropped, also when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `trellis args`, bounded in time; (exit code, stdout, stderr).
fn trellis(args: &[&str]) -> (i32, String, String) {
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_trellis")).args(args),
        TRELLIS_DEADLINE,
    )
    .unwrap_or_else(|e| panic!("trellis {}: {e}", args.join(" ")));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn apply(kubeconfig: &Path, yaml: &str) {
    kubectl_ok(kubeconfig, &["apply", "-f", "-"], yaml.as_bytes());
}

/// The line of a check report that starts with `mark` and holds `text`.
fn has_line(report: &str, mark: &str, text: &str) -> bool {
    report
        .lines()
        .any(|l| l.starts_with(mark) && l.contains(text))
}

/// Another mesh's sidecar injector on a namespace the mesh would inject too.
const OTHER_MESH: &str = "apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: istio-sidecar-injector}
webhooks:
- name: namespace.sidecar-injector.istio.io
  clientConfig: {url: \"https://127.0.0.1:1/inject\"}
  rules: [{apiGroups: [\"\"], apiVersions: [v1], operations: [CREATE], resources: [pods]}]
  namespaceSelector: {matchLabels: {istio-injection: enabled}}
  failurePolicy: Ignore
  sideEffects: None
  admissionReviewVersions: [v1]
";

/// Config with one semantic error: a subset the DestinationRule does not define.
const BROKEN: &str = "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v9}
";

#[test]
fn pre_check_install_upgrade_check_and_validate_cluster() {
    let Some(testbed) = Testbed::start() else {
        return;
    };
    let kc = testbed.kubeconfig.to_str().unwrap().to_string();

    // An empty cluster is ready for the mesh.
    let (code, out, err) = trellis(&["check", "--pre", "--kubeconfig", &kc]);
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        "can query the Kubernetes API",
        "is running the minimum Kubernetes API version",
        "control plane namespace does not already exist",
        "can create non-namespaced resources",
        "can create namespaced resources in the control plane namespace",
        "mesh CRDs can be installed",
        "no other mesh's injection webhook",
    ] {
        assert!(has_line(&out, "√", line), "{line}: {out}");
    }
    assert!(out.ends_with("Status check results are √\n"), "{out}");
    golden("check", "k8s-pre.txt", &out);
    let (code, json, _) = trellis(&["check", "--pre", "--kubeconfig", &kc, "-o", "json"]);
    assert_eq!(code, 0, "{json}");
    golden("check", "k8s-pre.json", &json);
    // --context as kubectl: the kubeconfig's context works, another is an error.
    let (code, _, _) = trellis(&["check", "--pre", "--kubeconfig", &kc, "--context", "test"]);
    assert_eq!(code, 0);
    let (code, out, _) = trellis(&["check", "--pre", "--kubeconfig", &kc, "--context", "nope"]);
    assert_eq!(code, 1);
    assert!(has_line(&out, "×", "can initialize the client"), "{out}");

    // Another mesh's injector on `shop`: refused, naming it and the namespace; JSON too.
    apply(&testbed.kubeconfig, OTHER_MESH);
    let (code, out, _) = trellis(&["check", "--pre", "--kubeconfig", &kc]);
    assert_eq!(code, 1, "{out}");
    assert!(
        has_line(&out, "×", "no other mesh's injection webhook"),
        "{out}"
    );
    assert!(
        out.contains(
            "istio-sidecar-injector (namespace.sidecar-injector.istio.io) injects pods in: shop"
        ),
        "{out}"
    );
    golden("check", "k8s-pre-other-mesh.txt", &out);
    let (_, json, _) = trellis(&["check", "--pre", "--kubeconfig", &kc, "-o", "json"]);
    golden("check", "k8s-pre-other-mesh.json", &json);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["success"], false);
    // Opting the namespace out of the mesh settles it.
    let out = kubectl(
        &testbed.kubeconfig,
        &["label", "namespace", "shop", "trellis.io/inject=disabled"],
        b"",
    );
    assert!(out.status.success());
    let (code, out, _) = trellis(&["check", "--pre", "--kubeconfig", &kc]);
    assert_eq!(code, 0, "{out}");

    // Nothing installed yet: Kubernetes-mode check fails on what is missing.
    let (code, out, _) = trellis(&["check", "--kubeconfig", &kc]);
    assert_eq!(code, 1);
    assert!(
        has_line(&out, "×", "control plane namespace exists"),
        "{out}"
    );
    assert!(has_line(&out, "×", "mesh CRDs are installed"), "{out}");

    // Install with the webhooks calling a control plane outside the cluster.
    let webhook = format!("127.0.0.1:{}", free_port());
    let url = format!("webhook.url=https://{webhook}");
    let (code, manifests, err) = trellis(&["install", "--set", &url]);
    assert_eq!(code, 0, "{err}");
    apply(&testbed.kubeconfig, &manifests);

    // Upgrade: nothing to change for the same values; a replica change is shown, not applied.
    let (code, diff, err) = trellis(&["upgrade", "--set", &url, "--kubeconfig", &kc]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(diff, "", "an unchanged install diffs empty");
    assert!(err.contains("0 to create, 0 to change"), "{err}");
    let (code, diff, err) = trellis(&[
        "upgrade",
        "--set",
        &url,
        "--set",
        "replicas=3",
        "--kubeconfig",
        &kc,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        diff.starts_with(
            "--- cluster: Deployment trellis-system/trellis-control\n+++ trellis install: Deployment trellis-system/trellis-control\n@@"
        ),
        "{diff}"
    );
    assert!(
        diff.contains("\n-  replicas: 1\n+  replicas: 3\n"),
        "{diff}"
    );
    assert!(err.contains("0 to create, 1 to change"), "{err}");
    golden("install", "k8s-upgrade-replicas.diff", &mask_ports(&diff));
    assert!(
        err.contains(&format!(
            "To apply: trellis install --set {url} --set replicas=3 | kubectl --kubeconfig {kc} apply -f -"
        )),
        "{err}"
    );
    assert_eq!(
        control_replicas(&testbed.kubeconfig),
        "1",
        "applied nothing"
    );

    // Installed, but no control plane has run: the caBundle is empty.
    let (code, out, _) = trellis(&["check", "--kubeconfig", &kc]);
    assert_eq!(code, 1, "{out}");
    assert!(
        has_line(&out, "√", "control plane namespace exists"),
        "{out}"
    );
    assert!(has_line(&out, "√", "mesh CRDs are installed"), "{out}");
    assert!(
        has_line(
            &out,
            "√",
            "MutatingWebhookConfiguration trellis-sidecar-injector exists"
        ),
        "{out}"
    );
    assert!(
        has_line(
            &out,
            "×",
            "inject.trellis.io: caBundle holds a CA certificate"
        ),
        "{out}"
    );
    // No kubelet in the testbed: the Deployment's pods never run.
    assert!(
        has_line(&out, "×", "control plane Deployment is ready"),
        "{out}"
    );
    assert!(out.contains("0/1 replicas ready"), "{out}");

    // The control plane, run outside the cluster, patches the caBundle with its CA; the
    // webhook's certificate then chains to it.
    let control = Path::new(env!("CARGO_BIN_EXE_trellis")).with_file_name("trellis-control");
    let ready_file = testbed.run.path().join("control.ready");
    let _control = KillOnDrop(
        Command::new(&control)
            .args(["--kubernetes", "--kubeconfig", &kc])
            .args(["--discovery", &format!("127.0.0.1:{}", free_port())])
            .args(["--http", &format!("127.0.0.1:{}", free_port())])
            .args(["--webhook", &webhook, "--webhook-name", "127.0.0.1"])
            .arg("--ready-file")
            .arg(&ready_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (cargo build --workspace --bins)",
                    control.display()
                )
            }),
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    let out = loop {
        let (_, out, _) = trellis(&["check", "--kubeconfig", &kc]);
        let signed = "validate.trellis.io: serving certificate is signed by the caBundle";
        if has_line(&out, "√", signed) || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for line in [
        "inject.trellis.io: caBundle holds a CA certificate",
        "inject.trellis.io: caBundle CA is not near expiry",
        "inject.trellis.io: serving certificate is signed by the caBundle",
        "inject.trellis.io: serving certificate is not near expiry",
        "validate.trellis.io: serving certificate is signed by the caBundle",
    ] {
        assert!(has_line(&out, "√", line), "{line}: {out}");
    }

    // A caBundle that is not the serving certificate's CA (the API server's own) is refused.
    let other_ca = Command::new("base64")
        .args(["-w0"])
        .arg(testbed.run.path().join("ca.crt"))
        .output()
        .unwrap();
    assert!(other_ca.status.success());
    let patch = format!(
        "[{{\"op\":\"replace\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"{}\"}}]",
        String::from_utf8(other_ca.stdout).unwrap()
    );
    let patched = kubectl(
        &testbed.kubeconfig,
        &[
            "patch",
            "mutatingwebhookconfiguration",
            "trellis-sidecar-injector",
            "--type=json",
            "-p",
            &patch,
        ],
        b"",
    );
    assert!(
        patched.status.success(),
        "{}",
        String::from_utf8_lossy(&patched.stderr)
    );
    let (code, out, _) = trellis(&["check", "--kubeconfig", &kc]);
    assert_eq!(code, 1, "{out}");
    assert!(
        has_line(
            &out,
            "×",
            "inject.trellis.io: serving certificate is signed by the caBundle"
        ),
        "{out}"
    );
    assert!(
        has_line(
            &out,
            "√",
            "validate.trellis.io: serving certificate is signed by the caBundle"
        ),
        "{out}"
    );

    // validate --cluster: a clean cluster, then a VirtualService naming an undefined subset.
    let (code, _, err) = trellis(&["validate", "--cluster", "--kubeconfig", &kc]);
    assert_eq!(code, 0, "{err}");
    apply(&testbed.kubeconfig, BROKEN);
    let (code, table, err) = trellis(&["validate", "--cluster", "--kubeconfig", &kc]);
    assert_eq!(code, 79, "{table}{err}");
    let row = table
        .lines()
        .find(|l| l.contains("TRL2002"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("VirtualService shop/reviews"), "{row}");
    assert!(
        row.contains("spec.http[0].route[0].destination.subset"),
        "{row}"
    );
    let (_, json, _) = trellis(&["validate", "--cluster", "--kubeconfig", &kc, "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let f = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "TRL2002")
        .unwrap();
    assert_eq!(f["file"], "VirtualService shop/reviews");
    assert_eq!(f["severity"], "error");
    // Unreachable cluster: unreadable input.
    let (code, _, err) = trellis(&["validate", "--cluster", "--kubeconfig", "/nonexistent"]);
    assert_eq!(code, 65, "{err}");
}

/// A pod as the injector leaves it: the app and the `trellis-proxy` container with `image`.
fn meshed_pod(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
  annotations: {{trellis.io/injected: enabled}}
spec:
  automountServiceAccountToken: false
  containers:
  - {{name: app, image: example/app:1}}
  - {{name: trellis-proxy, image: \"{image}\", command: [trellis-proxy]}}
"
    )
}

/// What the kubelet would report (the testbed has none): both containers running, the proxy
/// `ready` or not. A PATCH of the pods/status subresource.
fn set_proxy_ready(kubeconfig: &Path, pod: &str, image: &str, ready: bool) {
    let status = serde_json::json!({"status": {"phase": "Running", "containerStatuses": [
        {"name": "app", "image": "example/app:1", "imageID": "", "ready": true,
         "restartCount": 0, "state": {"running": {"startedAt": "2026-11-27T00:00:00Z"}}},
        {"name": "trellis-proxy", "image": image, "imageID": "", "ready": ready,
         "restartCount": 0, "state": {"running": {"startedAt": "2026-11-27T00:00:00Z"}}},
    ]}});
    // kube-rs rather than `kubectl patch --subresource=status`, which needs kubectl >= 1.24
    // (Debian's kubernetes-client is older).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("client config");
        let client = kube::Client::try_from(config).expect("client");
        let pods_resource = kube::api::ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "Pod".into(),
            plural: "pods".into(),
        };
        let pods: kube::Api<kube::api::DynamicObject> =
            kube::Api::namespaced_with(client, "shop", &pods_resource);
        pods.patch_status(
            pod,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&status),
        )
        .await
        .unwrap_or_else(|e| panic!("PATCH pods/status of shop/{pod}: {e}"));
    });
}

/// `check --proxy` on a cluster: the trellis-data-plane section over meshed pods whose status
/// is set through the API (no kubelet): ready and current √, not ready × naming the pod, an
/// older proxy image ‼ naming pod and image; `-n` scopes it; JSON carries the section.
#[test]
fn proxy_check_on_the_cluster() {
    let Some(testbed) = Testbed::start() else {
        return;
    };
    let kc = testbed.kubeconfig.to_str().unwrap().to_string();
    let current = "example/trellis-proxy:v2";
    // The webhooks call nothing here (Ignore): the pods are created as given, already injected.
    let (code, manifests, err) = trellis(&[
        "install",
        "--set",
        &format!("proxyImage={current}"),
        "--set",
        "webhook.failurePolicy=Ignore",
        "--set",
        &format!("webhook.url=https://127.0.0.1:{}", free_port()),
    ]);
    assert_eq!(code, 0, "{err}");
    apply(&testbed.kubeconfig, &manifests);
    apply(
        &testbed.kubeconfig,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    );

    // No meshed pods yet: a warning, not a failure of the data plane.
    let (_, out, _) = trellis(&["check", "--proxy", "--kubeconfig", &kc]);
    assert!(has_line(&out, "‼", "data plane proxies are ready"), "{out}");
    assert!(out.contains("no meshed pods in all namespaces"), "{out}");

    // The ServiceAccount admission wants `default` in `shop`, which the controller creates soon.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = kubectl(
            &testbed.kubeconfig,
            &["apply", "-f", "-"],
            meshed_pod("good", current).as_bytes(),
        );
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    set_proxy_ready(&testbed.kubeconfig, "good", current, true);
    let (code, out, _) = trellis(&["check", "--proxy", "--kubeconfig", &kc, "-n", "shop"]);
    // The control plane's own checks fail (no kubelet: 0/1 replicas); the data plane is √.
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("trellis-data-plane\n"), "{out}");
    for line in [
        "can list meshed pods",
        "data plane proxies are ready",
        "data plane proxies run the control plane's proxy image",
    ] {
        assert!(has_line(&out, "√", line), "{line}: {out}");
    }

    // One proxy not ready, one on an older image.
    apply(&testbed.kubeconfig, &meshed_pod("stuck", current));
    set_proxy_ready(&testbed.kubeconfig, "stuck", current, false);
    let old = "example/trellis-proxy:v1";
    apply(&testbed.kubeconfig, &meshed_pod("old", old));
    set_proxy_ready(&testbed.kubeconfig, "old", old, true);
    let (code, out, _) = trellis(&["check", "--proxy", "--kubeconfig", &kc]);
    assert_eq!(code, 1, "{out}");
    assert!(has_line(&out, "×", "data plane proxies are ready"), "{out}");
    assert!(out.contains("shop/stuck (proxy not ready)"), "{out}");
    assert!(!out.contains("shop/good ("), "{out}");
    assert!(
        has_line(
            &out,
            "‼",
            "data plane proxies run the control plane's proxy image"
        ),
        "{out}"
    );
    assert!(
        out.contains(&format!("want {current}: shop/old runs {old}")),
        "{out}"
    );
    let (_, json, _) = trellis(&["check", "--proxy", "--kubeconfig", &kc, "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let section = json["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["categoryName"] == "trellis-data-plane")
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(section["checks"][1]["result"], "error");
    assert_eq!(section["checks"][2]["result"], "warning");

    // Another namespace has no meshed pods; -n without --proxy is bad usage.
    let (_, out, _) = trellis(&["check", "--proxy", "--kubeconfig", &kc, "-n", "default"]);
    assert!(out.contains("no meshed pods in namespace default"), "{out}");
    let (code, _, err) = trellis(&["check", "--kubeconfig", &kc, "-n", "shop"]);
    assert_eq!(code, 64, "{err}");
}
