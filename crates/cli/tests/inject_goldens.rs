//! Goldens of `trellis inject` and `uninject` (the real binary) on Bookinfo's platform YAML
//! (the Istio sample's bookinfo.yaml, kept in crates/config/tests/fixtures): the default
//! injection, one with every inject flag, and the uninjection of each, which gives back the
//! input's objects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// Only the goldens of the shared test support: these tests start no demo.
#[path = "support/golden.rs"]
mod golden;

use std::path::Path;
use std::process::Command;

use golden::golden;
use serde::Deserialize;
use serde_json::Value;

/// Bookinfo's Services, ServiceAccounts and Deployments, as the Istio sample ships them.
const BOOKINFO: &str = "../config/tests/fixtures/bookinfo.yaml";

/// Runs `trellis <args>` that must succeed; its stdout.
fn ok(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "trellis {args:?}: {err}");
    assert!(err.is_empty(), "trellis {args:?} wrote to stderr: {err}");
    String::from_utf8(out.stdout).unwrap()
}

/// The objects of a multi-document YAML stream, in order (comments and layout aside).
fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Writes `text` to `dir/name`; its path.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The containers (init containers with `init`) of each Deployment's pod, by Deployment name.
fn containers(objects: &[Value], field: &str) -> Vec<(String, Vec<String>)> {
    objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .map(|o| {
            let names = o["spec"]["template"]["spec"][field]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| c["name"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            (o["metadata"]["name"].as_str().unwrap().to_string(), names)
        })
        .collect()
}

#[test]
fn inject_and_uninject_bookinfo() {
    let input = objects(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(BOOKINFO)).unwrap(),
    );
    let injected = ok(&["inject", BOOKINFO]);
    golden("inject", "bookinfo-injected.yaml", &injected);
    let objects_in = objects(&injected);
    // Every one of the six Deployments gets the proxy and its init container; Services and
    // ServiceAccounts pass through unchanged.
    let pods = containers(&objects_in, "containers");
    assert_eq!(pods.len(), 6, "{pods:?}");
    for (name, names) in &pods {
        assert_eq!(names[0], "trellis-proxy", "{name}: {names:?}");
    }
    for (name, names) in containers(&objects_in, "initContainers") {
        assert_eq!(names, ["trellis-init"], "{name}");
    }
    for (before, after) in input.iter().zip(&objects_in) {
        if before["kind"] != "Deployment" {
            assert_eq!(before, after);
        }
    }

    // uninject of the result: the input's objects again.
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "injected.yaml", &injected);
    let uninjected = ok(&["uninject", &file]);
    golden("inject", "bookinfo-uninjected.yaml", &uninjected);
    assert_eq!(objects(&uninjected), input);
    // Injecting twice adds nothing the second time.
    assert_eq!(ok(&["inject", &file]), injected);
}

#[test]
fn inject_with_every_flag_and_uninject() {
    let input = objects(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(BOOKINFO)).unwrap(),
    );
    let injected = ok(&[
        "inject",
        "--native-sidecar",
        "--proxy-image",
        "registry.example/trellis/proxy:1.2.3",
        "--control",
        "http://control.mesh.example:15010",
        BOOKINFO,
    ]);
    golden("inject", "bookinfo-injected-flags.yaml", &injected);
    let objects_in = objects(&injected);
    // A native sidecar: the proxy is an init container that restarts, after trellis-init.
    for (name, names) in containers(&objects_in, "initContainers") {
        assert_eq!(names, ["trellis-init", "trellis-proxy"], "{name}");
    }
    assert!(
        injected.contains("image: registry.example/trellis/proxy:1.2.3"),
        "{injected}"
    );
    assert!(
        injected.contains("- http://control.mesh.example:15010\n"),
        "{injected}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "injected.yaml", &injected);
    let uninjected = ok(&["uninject", &file]);
    assert_eq!(objects(&uninjected), input);
    // The same text as uninjecting the default injection (read, not rewritten, here: the
    // other test owns that golden under UPDATE_GOLDEN=1).
    let same = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/inject/golden/bookinfo-uninjected.yaml"),
    )
    .unwrap();
    assert_eq!(uninjected, same);
}
