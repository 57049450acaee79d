//! `trellis install --set revision=NAME` on the real API server (the testbed): a canary
//! control plane's Deployment, Service and webhook configurations apply beside the default
//! install, and `trellis uninstall --set revision=NAME` (the rollback) deletes them and
//! nothing of the default install.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

#[path = "../../control/tests/k8s_testbed/mod.rs"]
mod k8s_testbed;

use std::path::Path;
use std::process::Command;

use k8s_testbed::kubectl_ok;

fn trellis(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trellis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Whether the object exists. Only "not found" is false: any other failure of kubectl fails
/// the test, so a broken API server cannot pass for a clean uninstall.
fn exists(kubeconfig: &Path, what: &[&str]) -> bool {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend(["--ignore-not-found", "-o", "name"]);
    !kubectl_ok(kubeconfig, &args, b"").trim().is_empty()
}

#[test]
fn revision_install_applies_beside_the_default_and_uninstalls_alone() {
    let Some(testbed) = k8s_testbed::Testbed::start() else {
        return;
    };
    let kc = testbed.kubeconfig.as_path();
    kubectl_ok(kc, &["apply", "-f", "-"], trellis(&["install"]).as_bytes());
    let canary = trellis(&["install", "--set", "revision=canary"]);
    kubectl_ok(kc, &["apply", "-f", "-"], canary.as_bytes());

    let deployment: serde_json::Value = serde_json::from_str(&kubectl_ok(
        kc,
        &[
            "-n",
            "trellis-system",
            "get",
            "deployment",
            "trellis-control-canary",
            "-o",
            "json",
        ],
        b"",
    ))
    .unwrap();
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--revision" && w[1] == "canary"),
        "{args:?}"
    );
    let hook: serde_json::Value = serde_json::from_str(&kubectl_ok(
        kc,
        &[
            "get",
            "mutatingwebhookconfiguration",
            "trellis-sidecar-injector-canary",
            "-o",
            "json",
        ],
        b"",
    ))
    .unwrap();
    assert_eq!(
        hook["webhooks"][0]["clientConfig"]["service"]["name"],
        "trellis-control-canary"
    );

    // Rollback: the canary goes, the default install stays.
    let uninstall = trellis(&["uninstall", "--set", "revision=canary"]);
    kubectl_ok(kc, &["delete", "-f", "-"], uninstall.as_bytes());
    for gone in [
        &[
            "-n",
            "trellis-system",
            "deployment",
            "trellis-control-canary",
        ][..],
        &["-n", "trellis-system", "service", "trellis-control-canary"],
        &[
            "mutatingwebhookconfiguration",
            "trellis-sidecar-injector-canary",
        ],
        &[
            "validatingwebhookconfiguration",
            "trellis-config-validator-canary",
        ],
    ] {
        assert!(!exists(kc, gone), "{gone:?} still there");
    }
    for kept in [
        &["namespace", "trellis-system"][..],
        &["-n", "trellis-system", "deployment", "trellis-control"],
        &["mutatingwebhookconfiguration", "trellis-sidecar-injector"],
        &["crd", "virtualservices.networking.istio.io"],
    ] {
        assert!(exists(kc, kept), "{kept:?} was removed");
    }
}
