//! `trellis inject` / `uninject` as a user runs them (the real binary): bad usage exits 64 with
//! the usage line, input that cannot be read or parsed exits 1 naming the file (and the
//! object and field when there is one), good input exits 0 with the proxy added.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: reviews\nspec:\n  template:\n    metadata:\n      labels: {app: reviews}\n    spec:\n      containers:\n      - name: app\n        image: reviews:1\n";

/// Runs `trellis <args>` with `stdin` piped in; returns (exit code, stdout, stderr).
fn trellis(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses its arguments may exit before reading: a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn good_input_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "d.yaml", DEPLOYMENT);
    let (code, out, err) = trellis(&["inject", &file], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("name: trellis-proxy"), "{out}");
    // From a pipe, with no file or with `-`.
    for args in [&["inject"][..], &["inject", "-"]] {
        let (code, out, err) = trellis(args, DEPLOYMENT);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("name: trellis-proxy"), "{out}");
    }
    let (code, out, err) = trellis(&["uninject", "-"], &out);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("trellis-proxy"), "{out}");
}

#[test]
fn bad_usage_exits_64_with_a_usage_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "d.yaml", DEPLOYMENT);
    let cases: [(&[&str], &str); 6] = [
        // clap's own: an unknown flag, a flag without its value.
        (
            &["inject", "--bogus", &file],
            "unexpected argument '--bogus'",
        ),
        (
            &["inject", &file, "--proxy-image"],
            "a value is required for '--proxy-image",
        ),
        // Ours: clashes clap cannot see.
        (
            &["inject", "-", "-"],
            "inject: `-` (stdin) is given 2 times; stdin can be read once",
        ),
        (
            &["uninject", "--native-sidecar", &file],
            "uninject: --native-sidecar applies to inject only",
        ),
        (
            &["inject", "--control", "trellis-control:15010", &file],
            "inject: --control: must be an http:// or https:// URL",
        ),
        (
            &["inject", "--proxy-image", "", &file],
            "inject: --proxy-image: must name an image",
        ),
    ];
    for (args, want) in cases {
        let (code, out, err) = trellis(args, DEPLOYMENT);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert_eq!(out, "", "{args:?}: data goes to stdout only on success");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            err.contains("For more information, try '"),
            "{args:?}: {err}"
        );
        // clap prints the usage line with every error but a missing value (where it names the
        // flag's value instead); ours print it always.
        let command = args[0];
        assert_eq!(
            err.contains(&format!("Usage: trellis {command} [OPTIONS] [FILES]...")),
            !want.starts_with("a value is required"),
            "{args:?}: {err}"
        );
    }
}

/// No file argument with a terminal on stdin would wait for typing: a usage error instead. A
/// real terminal from `script` (util-linux), bounded by `timeout`.
#[test]
fn no_file_argument_on_a_terminal_exits_64() {
    let bin = env!("CARGO_BIN_EXE_trellis");
    let out = Command::new("timeout")
        .args(["20", "script", "-qec"])
        .arg(format!("{bin} inject"))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(64), "{text}");
    assert!(
        text.contains(
            "inject: no input: give YAML files, `-` to type YAML on stdin, or pipe YAML in"
        ),
        "{text}"
    );
    assert!(text.contains("Usage: trellis inject"), "{text}");
}

#[test]
fn unreadable_or_unparsable_input_exits_1_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml").display().to_string();
    let directory = dir.path().display().to_string();
    let not_yaml = write(dir.path(), "broken.yaml", "kind: Pod\nmetadata: {name: [\n");
    let no_containers = write(
        dir.path(),
        "empty.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: reviews}\nspec:\n  template:\n    spec:\n      containers: app\n",
    );
    let no_template = write(
        dir.path(),
        "job.yaml",
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly}\nspec: {}\n",
    );
    let bad_annotation = write(
        dir.path(),
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {trellis.io/opaque-ports: nope}\nspec:\n  containers: [{name: app}]\n",
    );
    let cases = [
        (
            missing.clone(),
            format!("trellis: {missing}: No such file or directory"),
        ),
        (directory.clone(), format!("trellis: {directory}: ")),
        (
            not_yaml.clone(),
            format!("trellis: {not_yaml}: document 1: invalid YAML: "),
        ),
        (
            no_containers.clone(),
            format!(
                "trellis: {no_containers}: Deployment reviews: spec.template.spec.containers: must be a list of containers, got a string"
            ),
        ),
        (
            no_template.clone(),
            format!(
                "trellis: {no_template}: CronJob nightly: spec.jobTemplate.spec.template: must be a mapping (the pod template), got empty"
            ),
        ),
        (
            bad_annotation.clone(),
            format!("trellis: {bad_annotation}: Pod p: annotation trellis.io/opaque-ports"),
        ),
    ];
    for (file, want) in cases {
        // A good file first: the bad one still fails the command, and nothing is half-written.
        let good = write(dir.path(), "good.yaml", DEPLOYMENT);
        let (code, out, err) = trellis(&["inject", &good, &file], "");
        assert_eq!(code, 1, "{file}: {err}");
        assert!(err.starts_with(&want), "{file}: want {want:?}, got {err:?}");
        assert_eq!(out, "", "{file}");
    }
}
