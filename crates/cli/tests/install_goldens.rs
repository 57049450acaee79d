//! Goldens of `trellis install` / `uninstall` as a user runs them (the real binary; both print
//! YAML only, there is no `-o`): the default values, a few `--set` knobs, and a canary
//! revision; and of what `trellis upgrade` prints for those knobs against a cluster holding the
//! default install (`upgrade::compare` is the function `upgrade` runs on each object it reads
//! back; the diff against a real API server is in k8s_check.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

// Only the goldens of the shared test support: these tests start no demo.
#[path = "support/golden.rs"]
mod golden;

use std::process::Command;

use golden::golden;
use serde::Deserialize;
use serde_json::Value;
use trellis_cli::upgrade::{self, Change};

/// The knobs of the `-set` goldens: one of each kind of value (a number, a string, an enum,
/// the alerting rules the CLI adds itself).
const KNOBS: [&str; 4] = [
    "replicas=3",
    "logLevel=debug",
    "webhook.failurePolicy=Fail",
    "alerts=true",
];

/// Runs `trellis <args>`; (exit code, stdout, stderr).
fn trellis(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `trellis <args>` that must succeed; its stdout.
fn ok(args: &[&str]) -> String {
    let (code, out, err) = trellis(args);
    assert_eq!(code, 0, "trellis {args:?}: {err}");
    assert!(err.is_empty(), "trellis {args:?} wrote to stderr: {err}");
    out
}

/// The objects of a multi-document YAML stream, in order.
fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// `Kind namespace/name` of each object, as upgrade names them.
fn ids(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            let (kind, name) = (&o["kind"], &o["metadata"]["name"]);
            match o["metadata"]["namespace"].as_str() {
                Some(ns) => format!("{} {ns}/{}", kind.as_str().unwrap(), name.as_str().unwrap()),
                None => format!("{} {}", kind.as_str().unwrap(), name.as_str().unwrap()),
            }
        })
        .collect()
}

/// `["--set", k1, "--set", k2, ...]` after `command`.
fn with_sets<'a>(command: &'a str, sets: &[&'a str]) -> Vec<&'a str> {
    std::iter::once(command)
        .chain(sets.iter().flat_map(|s| ["--set", *s]))
        .collect()
}

#[test]
fn install_and_uninstall_default_values() {
    let install = ok(&["install"]);
    assert!(
        install.starts_with("---\napiVersion: v1\nkind: Namespace\n"),
        "{install}"
    );
    golden("install", "install.yaml", &install);
    let uninstall = ok(&["uninstall"]);
    golden("install", "uninstall.yaml", &uninstall);
    // Uninstall names every installed object, in reverse order (the namespace last).
    let (mut installed, removed) = (ids(&objects(&install)), ids(&objects(&uninstall)));
    installed.reverse();
    assert_eq!(removed, installed);
    assert_eq!(removed.last().unwrap(), "Namespace trellis-system");
}

#[test]
fn install_and_uninstall_with_knobs() {
    let install = ok(&with_sets("install", &KNOBS));
    golden("install", "install-set.yaml", &install);
    let objects = objects(&install);
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3);
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("\"debug\""), "{args}");
    let injector = objects
        .iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    assert_eq!(injector["webhooks"][0]["failurePolicy"], "Fail");
    assert_eq!(objects.last().unwrap()["kind"], "PrometheusRule");
    // The PrometheusRule is removed first.
    let uninstall = ok(&with_sets("uninstall", &KNOBS));
    golden("install", "uninstall-set.yaml", &uninstall);
    assert!(
        uninstall.starts_with("---\napiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n"),
        "{uninstall}"
    );
}

#[test]
fn install_and_uninstall_a_canary_revision() {
    let install = ok(&["install", "--set", "revision=canary"]);
    golden("install", "install-revision.yaml", &install);
    // Only the canary's own objects: no namespace, no CRDs, nothing the stable install owns.
    let kinds: Vec<String> = objects(&install)
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "Service",
            "Deployment",
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration"
        ]
    );
    let uninstall = ok(&["uninstall", "--set", "revision=canary"]);
    golden("install", "uninstall-revision.yaml", &uninstall);
    assert!(!uninstall.contains("kind: Namespace"), "{uninstall}");
}

/// What `trellis upgrade --set ...` prints against a cluster where the default install was
/// applied: one diff per object that changes, a PrometheusRule to create, the rest unchanged.
#[test]
fn upgrade_render_of_the_knobs_against_the_default_install() {
    // The cluster: the default install (its text is the `install.yaml` golden).
    let live = objects(&ok(&["install"]));
    let desired = objects(&ok(&with_sets("install", &KNOBS)));
    let mut diff = String::new();
    let mut changes = Vec::new();
    for object in &desired {
        let id = &ids(std::slice::from_ref(object))[0];
        let current = live.iter().find(|l| &ids(std::slice::from_ref(l))[0] == id);
        let verdict = upgrade::compare(object, current);
        diff.push_str(&verdict.diff);
        if verdict.change != Change::Unchanged {
            changes.push(format!("{:?} {id}", verdict.change));
        }
    }
    assert_eq!(
        changes,
        [
            "Update Deployment trellis-system/trellis-control",
            "Update MutatingWebhookConfiguration trellis-sidecar-injector",
            "Update ValidatingWebhookConfiguration trellis-config-validator",
            "Create PrometheusRule trellis-system/trellis-alerts",
        ]
    );
    assert!(
        diff.contains("\n-  replicas: 1\n+  replicas: 3\n"),
        "{diff}"
    );
    golden("install", "upgrade-set.diff", &diff);
}

#[test]
fn a_bad_knob_exits_64_naming_it() {
    for (command, set) in [
        ("install", "replicas=many"),
        ("uninstall", "webhook.failurePolicy=Sometimes"),
    ] {
        let (code, out, err) = trellis(&[command, "--set", set]);
        assert_eq!(code, 64, "{command} --set {set}: {err}");
        assert!(out.is_empty(), "{out}");
        let key = set.split('=').next().unwrap();
        assert!(err.contains(key), "{err}");
    }
}
