//! `trellis install | kubectl apply -f -` and `trellis uninstall | kubectl delete -f -` against
//! a REAL kube-apiserver (the testbed of crates/control/tests). Needs kubectl on PATH
//! (scripts/test.sh installs Debian's kubernetes-client when there is none).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

#[path = "../../control/tests/k8s_testbed/mod.rs"]
mod k8s_testbed;

use std::process::Command;
use std::time::Duration;

use k8s_testbed::{Testbed, kubectl};
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
    let applied = kubectl(&testbed.kubeconfig, &["apply", "-f", "-"], &manifests);
    let stdout = String::from_utf8_lossy(&applied.stdout);
    assert!(
        applied.status.success(),
        "kubectl apply: {stdout}{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    for expected in [
        "namespace/trellis-system",
        "customresourcedefinition.apiextensions.k8s.io/virtualservices.networking.istio.io",
        "deployment.apps/trellis-control",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/trellis-sidecar-injector",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/trellis-config-validator",
    ] {
        assert!(stdout.contains(expected), "{expected} not in: {stdout}");
    }
    let got = kubectl(
        &testbed.kubeconfig,
        &[
            "get",
            "deployment",
            "-n",
            "trellis-system",
            "trellis-control",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        b"",
    );
    assert_eq!(String::from_utf8_lossy(&got.stdout), "2");

    let removal = trellis(&["uninstall"]);
    let deleted = kubectl(
        &testbed.kubeconfig,
        &["delete", "--wait=false", "-f", "-"],
        &removal,
    );
    assert!(
        deleted.status.success(),
        "kubectl delete: {}{}",
        String::from_utf8_lossy(&deleted.stdout),
        String::from_utf8_lossy(&deleted.stderr)
    );
    let left = kubectl(
        &testbed.kubeconfig,
        &["get", "mutatingwebhookconfigurations", "-o", "name"],
        b"",
    );
    assert!(!String::from_utf8_lossy(&left.stdout).contains("trellis"));
}
