//! `trellis install | kubectl apply -f -` and `trellis uninstall | kubectl delete -f -` against
//! a REAL kube-apiserver (the testbed of crates/control/tests). Needs kubectl on PATH
//! (scripts/test.sh installs Debian's kubernetes-client when there is none).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

#[path = "../../control/tests/k8s_testbed/mod.rs"]
mod k8s_testbed;

use std::process::Command;
use std::time::Duration;

use k8s_testbed::{Testbed, control_replicas, kubectl, kubectl_ok};
use trellis_testkit::tools::run_bounded;

/// `trellis args` (it only prints manifests here), bounded in time; its stdout.
fn trellis(args: &[&str]) -> Vec<u8> {
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_trellis")).args(args),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("trellis {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "trellis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn install_and_uninstall_with_kubectl() {
    let Some(testbed) = Testbed::start() else {
        return;
    };
    let manifests = trellis(&["install", "--set", "replicas=2"]);
    let stdout = kubectl_ok(&testbed.kubeconfig, &["apply", "-f", "-"], &manifests);
    for expected in [
        "namespace/trellis-system",
        "customresourcedefinition.apiextensions.k8s.io/virtualservices.networking.istio.io",
        "deployment.apps/trellis-control",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/trellis-sidecar-injector",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/trellis-config-validator",
    ] {
        assert!(stdout.contains(expected), "{expected} not in: {stdout}");
    }
    assert_eq!(control_replicas(&testbed.kubeconfig), "2");

    let removal = trellis(&["uninstall"]);
    kubectl_ok(
        &testbed.kubeconfig,
        &["delete", "--wait=false", "-f", "-"],
        &removal,
    );
    let left = kubectl(
        &testbed.kubeconfig,
        &["get", "mutatingwebhookconfigurations", "-o", "name"],
        b"",
    );
    assert!(!String::from_utf8_lossy(&left.stdout).contains("trellis"));
}
