//! The Proxy-Wasm test plugins (tests/wasm-plugins, built from Rust with the `proxy-wasm` SDK)
//! for the tests that load them: built once per target directory with cargo for
//! wasm32-unknown-unknown (a target scripts/test.sh adds with rustup).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::bins::workspace_root;
use crate::tools::run_bounded;

/// Far above a cached build (under a second) and a cold one (about 10 s on 2 cores).
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Builds the plugins (a no-op when up to date) and returns the directory of the `.wasm`
/// files: `add_header.wasm`, `deny_missing_header.wasm`, `count_requests.wasm`,
/// `misbehave.wasm`, `rewrite_body.wasm`, `deny_body_word.wasm`, `http_auth.wasm`.
pub fn build() -> Result<PathBuf, String> {
    let root = workspace_root();
    let target_dir = root.join("target").join("wasm-plugins");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let installed = run_bounded(
        Command::new("rustup").args(["target", "list", "--installed"]),
        Duration::from_secs(30),
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-unknown-unknown"))
    // Without rustup, the toolchain may still have the target: let cargo say.
    .unwrap_or(true);
    // Installing it is machine setup (a download), which scripts/test.sh does once; a test
    // reaches nothing beyond loopback.
    if !installed {
        return Err(
            "the wasm32-unknown-unknown target is not installed: run `rustup target add \
             wasm32-unknown-unknown` (scripts/test.sh does)"
                .to_string(),
        );
    }
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-unknown-unknown",
        "--manifest-path",
    ])
    .arg(root.join("tests/wasm-plugins/Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir)
    // The outer build's flags are for the host, not for wasm32.
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env_remove("CARGO_BUILD_TARGET")
    // Its intermediate files stay in its own target dir too: a build-dir shared with the outer
    // build (CI's cache) would wait on the lock a running `cargo test` holds on it.
    .env_remove("CARGO_BUILD_BUILD_DIR");
    let out = run_bounded(&mut cmd, BUILD_TIMEOUT)?;
    if !out.status.success() {
        return Err(format!(
            "building tests/wasm-plugins failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(target_dir.join("wasm32-unknown-unknown").join("release"))
}

/// The lower-case hex SHA-256 of a file, for `WasmPlugin.spec.sha256`.
pub fn sha256_hex(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let out = run_bounded(Command::new("sha256sum").arg(path), Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    if hex.len() != 64 || bytes.is_empty() {
        return Err(format!("sha256sum {}: {text}", path.display()));
    }
    Ok(hex)
}

/// An Istio WasmPlugin document for a module of [`build`]'s directory.
pub fn wasm_plugin_yaml(name: &str, app: &str, wasm: &Path, extra_spec: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: {name}
  namespace: default
spec:
  selector:
    matchLabels: {{app: {app}}}
  url: file://{}
{extra_spec}",
        wasm.display()
    )
}
