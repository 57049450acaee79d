//! `trellis check` reports version skew in local mode: a real `trellis-control` process, and
//! discovery streams that register proxies announcing their versions (hand-built clients, so
//! that a proxy can claim an older or newer version than this build's); the `trellis` binary's
//! `trellis-version` section warns (‼) on one minor version apart and fails (×) on more.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use trellis_api::discovery::{self as pb, proxy_message::Kind};
use trellis_testkit::{ControlPlane, tools, wait};

const CLI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// A version `minors` minor versions away from this build's (a major away for 2+).
fn away(minors: u64) -> String {
    let mut parts = CLI_VERSION.split('.').map(|p| p.parse::<u64>().unwrap());
    let (major, minor) = (parts.next().unwrap(), parts.next().unwrap());
    match minors {
        0 => format!("{major}.{minor}.7"),
        1 if minor > 0 => format!("{major}.{}.0", minor - 1),
        1 => format!("{major}.{}.0", minor + 1),
        _ => format!("{}.0.0", major + 1),
    }
}

/// A registered stream; dropping it closes the stream (its heartbeats stop with it).
struct Registered(tokio::task::JoinHandle<()>);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Registers `name` claiming `version`, and heartbeats as a proxy does until dropped.
async fn register(grpc: std::net::SocketAddr, name: &str, version: &str, port: u16) -> Registered {
    let mut client = pb::discovery_client::DiscoveryClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(pb::ProxyMessage {
        kind: Some(Kind::Hello(pb::Hello {
            proxy_id: format!("{name}-proxy"),
            workload: Some(pb::Workload {
                name: name.into(),
                namespace: "default".into(),
                service_account: name.into(),
                inbound_address: format!("127.0.0.1:{port}"),
                ..Default::default()
            }),
            proxy_version: version.into(),
            protocol_version: trellis_api::DISCOVERY_PROTOCOL,
            ..Default::default()
        })),
    })
    .unwrap();
    let mut inbound = client
        .stream(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Registered once welcomed; the rest of the stream is drained in the background.
    let welcome = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("a Welcome in time")
        .unwrap()
        .unwrap();
    assert!(matches!(
        welcome.kind,
        Some(pb::control_message::Kind::Welcome(_))
    ));
    tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    Registered(tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(200));
        loop {
            beat.tick().await;
            let heartbeat = pb::ProxyMessage {
                kind: Some(Kind::Heartbeat(pb::Heartbeat {})),
            };
            if tx.send(heartbeat).is_err() {
                return;
            }
        }
    }))
}

fn check(http: std::net::SocketAddr, json: bool) -> (i32, String) {
    let mut args = vec![
        "check".to_string(),
        "--control".into(),
        format!("http://{http}"),
    ];
    if json {
        args.extend(["-o".into(), "json".into()]);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(&args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_version_skew_between_cli_control_plane_and_proxies() {
    let config = tempfile::tempdir().unwrap();
    // A short expiry, so that a proxy that goes away leaves the registry within the test.
    let control = ControlPlane::start_with(
        config.path(),
        "127.0.0.1:0".parse().unwrap(),
        None,
        &["--heartbeat-interval", "200ms", "--workload-expiry", "1s"],
    )
    .unwrap();
    let (grpc, http) = (control.ready.discovery, control.ready.http);

    let same = register(grpc, "same", &away(0), 20101).await;
    let behind = register(grpc, "behind", &away(1), 20102).await;
    let major = register(grpc, "major", &away(2), 20103).await;

    let (code, text) = tokio::task::spawn_blocking(move || check(http, false))
        .await
        .unwrap();
    assert_eq!(code, 1, "{text}");
    let section = text
        .split("trellis-version\n---------------\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no trellis-version section:\n{text}"));
    assert!(
        section.starts_with("√ control plane and CLI versions match\n"),
        "{text}"
    );
    let expected = format!(
        "× data plane proxies are within one minor version of the control plane\n    \
         behind.default runs {}, control plane {CLI_VERSION}: one minor version apart\n    \
         major.default runs {}, control plane {CLI_VERSION}: more than one minor version apart\n    \
         hint: restart those workloads",
        away(1),
        away(2)
    );
    assert!(section.contains(&expected), "{text}");
    assert!(!section.contains("same.default"), "{text}");

    // Without the proxy two versions away, the skew is a warning.
    drop(major);
    let json = tokio::task::spawn_blocking(move || {
        // The control plane drops the registration when its stream closes.
        wait::until(Duration::from_secs(10), || match check(http, true) {
            (_, json) if !json.contains("major.default") => Ok(json),
            _ => Err("major.default is still registered".to_string()),
        })
        .unwrap()
    })
    .await
    .unwrap();
    let report: Value = serde_json::from_str(&json).unwrap();
    let version = report["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["categoryName"] == "trellis-version")
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(version["checks"][0]["result"], "success", "{json}");
    assert_eq!(version["checks"][1]["result"], "warning", "{json}");
    assert!(
        version["checks"][1]["error"]
            .as_str()
            .unwrap()
            .contains("behind.default runs"),
        "{json}"
    );
    drop((same, behind));
}

#[path = "../../control/tests/k8s_testbed/mod.rs"]
mod k8s_testbed;

fn kubectl_apply(kubeconfig: &std::path::Path, yaml: &str) -> Result<(), String> {
    let out = tools::kubectl(kubeconfig, &["apply", "-f", "-"], yaml.as_bytes())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A pod as the injector leaves it, its proxy on `image`.
fn meshed_pod(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, annotations: {{trellis.io/injected: enabled}}}}
spec:
  automountServiceAccountToken: false
  containers:
  - {{name: app, image: example/app:1}}
  - {{name: trellis-proxy, image: \"example/trellis-proxy:{image}\", command: [trellis-proxy]}}
"
    )
}

fn trellis_out(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

/// Kubernetes: the versions are the image tags of the control plane's Deployment and of each
/// meshed pod's proxy, on the real API server (no kubelet: the pods need not run).
#[test]
fn check_reports_version_skew_on_the_cluster() {
    let Some(testbed) = k8s_testbed::Testbed::start() else {
        return;
    };
    let kc = testbed.kubeconfig.to_str().unwrap().to_string();
    let install = |control_version: &str| {
        let (code, manifests) = trellis_out(&[
            "install",
            "--set",
            &format!("image=example/trellis-control:{control_version}"),
            "--set",
            &format!("proxyImage=example/trellis-proxy:{CLI_VERSION}"),
            "--set",
            &format!("webhook.url=https://127.0.0.1:{}", k8s_testbed::free_port()),
        ]);
        assert_eq!(code, 0);
        kubectl_apply(&testbed.kubeconfig, &manifests).unwrap();
    };
    install(CLI_VERSION);
    kubectl_apply(
        &testbed.kubeconfig,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    )
    .unwrap();
    // The ServiceAccount admission wants `default` in `shop`, which the controller makes soon.
    wait::until(Duration::from_secs(20), || {
        kubectl_apply(&testbed.kubeconfig, &meshed_pod("current", CLI_VERSION))
    })
    .unwrap();
    kubectl_apply(&testbed.kubeconfig, &meshed_pod("behind", &away(1))).unwrap();
    kubectl_apply(&testbed.kubeconfig, &meshed_pod("major", &away(2))).unwrap();

    let (_, out) = trellis_out(&["check", "--proxy", "-n", "shop", "--kubeconfig", &kc]);
    let section = out
        .split("trellis-version\n---------------\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no trellis-version section:\n{out}"));
    assert!(
        section.starts_with("√ control plane and CLI versions match\n"),
        "{out}"
    );
    let expected = format!(
        "× data plane proxies are within one minor version of the control plane\n    \
         shop/behind runs {}, control plane {CLI_VERSION}: one minor version apart\n    \
         shop/major runs {}, control plane {CLI_VERSION}: more than one minor version apart\n",
        away(1),
        away(2)
    );
    assert!(section.contains(&expected), "{out}");
    assert!(!section.contains("shop/current"), "{out}");

    // The control plane one minor away from the CLI: a warning; without --proxy no pods are read.
    install(&away(1));
    let (_, out) = trellis_out(&["check", "--kubeconfig", &kc]);
    let section = out.split("trellis-version\n").nth(1).unwrap_or_default();
    assert!(
        section.contains(&format!(
            "‼ control plane and CLI versions match\n    CLI {CLI_VERSION}, control plane {}: one minor version apart\n",
            away(1)
        )),
        "{out}"
    );
    assert!(!section.contains("data plane proxies"), "{out}");
}
