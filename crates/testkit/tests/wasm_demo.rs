//! The Proxy-Wasm test plugins in the Bookinfo demo: `trellis demo` (real control plane, one
//! real proxy per workload) with WasmPlugins for productpage written into its watched config
//! directory once it is up. Through productpage's entry: the add-header plugin's response
//! header, the deny plugin's 403 for a request without `x-wasm-allow` (and the page for one
//! with it), and the count plugin's metric on productpage's proxy `/metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use trellis_testkit::mesh::write_config;
use trellis_testkit::tools::curl_http;
use trellis_testkit::wasm_plugins::{build, wasm_plugin_yaml};
use trellis_testkit::{ManagedProcess, bin, wait};

const CONVERGE: Duration = Duration::from_secs(30);

/// Status code and raw head+body of `GET url` (`-i`).
fn get(url: &str, headers: &[&str]) -> (u16, String) {
    let mut args = vec!["-s", "-i", "--max-time", "10"];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(url);
    let r = curl_http(&args).unwrap();
    (r.status, r.body.to_ascii_lowercase())
}

#[test]
fn wasm_plugins_work_in_the_bookinfo_demo() {
    let plugins = build().unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let status_file = tmp.path().join("status.json");
    let mut cmd = Command::new(bin("trellis"));
    cmd.args([
        "demo",
        "--no-load",
        "--entry",
        "127.0.0.1:0",
        "--dashboard",
        "127.0.0.1:0",
        "--config-dir",
    ])
    .arg(&config)
    .arg("--status-file")
    .arg(&status_file);
    let mut demo = ManagedProcess::spawn("trellis-demo", cmd).unwrap();
    let status: serde_json::Value = wait::until(Duration::from_secs(60), || {
        if !demo.is_running() {
            return Err(format!("the demo exited:\n{}", demo.log_tail()));
        }
        let bytes = std::fs::read(&status_file).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    })
    .unwrap();
    let entry = status["entry"].as_str().unwrap().to_string();
    let admin: SocketAddr = status["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "productpage")
        .and_then(|w| w["admin"].as_str())
        .unwrap()
        .parse()
        .unwrap();
    let page = format!("http://{entry}/productpage");
    assert_eq!(
        get(&page, &[]).0,
        200,
        "Bookinfo answers before the plugins"
    );

    // The plugins arrive through the watched config directory, as a user would add them.
    let docs = [
        (
            "add",
            wasm_plugin_yaml(
                "add",
                "productpage",
                &plugins.join("add_header.wasm"),
                "  phase: AUTHN\n",
            ),
        ),
        (
            "deny",
            wasm_plugin_yaml(
                "deny",
                "productpage",
                &plugins.join("deny_missing_header.wasm"),
                "  phase: AUTHZ\n",
            ),
        ),
        (
            "count",
            wasm_plugin_yaml(
                "count",
                "productpage",
                &plugins.join("count_requests.wasm"),
                "  phase: STATS\n  pluginConfig: {metric: bookinfo_pages_seen}\n",
            ),
        ),
    ];
    for (name, text) in &docs {
        write_config(&config, &format!("wasm-{name}.yaml"), text).unwrap();
    }

    wait::until(CONVERGE, || match get(&page, &[]) {
        (403, body) if body.contains("denied by wasm plugin") => Ok(()),
        (status, _) => Err(format!("not denied yet: {status}")),
    })
    .unwrap();
    let (status, denied) = get(&page, &[]);
    assert_eq!(status, 403);
    assert!(denied.contains("x-wasm-denied: missing header"), "{denied}");
    assert!(denied.contains("x-wasm-plugin: add-header"), "{denied}");

    let metric = || -> f64 {
        let (_, body) = trellis_testkit::tools::http_get(admin, "/metrics").unwrap();
        body.lines()
            .find_map(|l| {
                l.strip_prefix("bookinfo_pages_seen{plugin=\"default/count\"}")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    let before = metric();
    for _ in 0..4 {
        let (status, body) = get(&page, &["x-wasm-allow: yes"]);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("x-wasm-plugin: add-header"), "{body}");
        // The page itself, rendered from details and reviews behind their own proxies.
        assert!(body.contains("book"), "{body}");
    }
    assert_eq!(metric(), before + 4.0);
    assert!(demo.is_running());
}
