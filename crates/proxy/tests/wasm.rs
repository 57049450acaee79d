//! Proxy-Wasm plugins (Istio WasmPlugin) with the real binaries: a `trellis-control` reading
//! WasmPlugins from its config directory, server proxies in front of HTTP echoes, and plugins
//! built here from Rust with the `proxy-wasm` SDK (tests/wasm-plugins). What a user sees is
//! asserted: headers the app receives, the plugin's 403, the plugin's metric on `/metrics`,
//! requests failed (or not) per failStrategy by a trapping, looping or memory-hungry plugin
//! while the proxy stays up, and a config change that reloads a plugin under load without a
//! failed request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trellis_testkit::mesh::{config_dir, service_yaml, write_config};
use trellis_testkit::tools::curl_http;
use trellis_testkit::wasm_plugins::{build, sha256_hex, wasm_plugin_yaml};
use trellis_testkit::{ControlPlane, HttpEcho, Proxy, ProxyBuilder, wait};

const CONVERGE: Duration = Duration::from_secs(20);

fn plugins() -> PathBuf {
    build().unwrap_or_else(|e| panic!("{e}"))
}

/// A reply with its response headers (names lower-case).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn get(url: &str, headers: &[&str]) -> Reply {
    let mut args = vec!["-s", "-i", "--max-time", "10"];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(url);
    let r = curl_http(&args).unwrap();
    let (head, body) = r
        .body
        .split_once("\r\n\r\n")
        .unwrap_or((r.body.as_str(), ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status: r.status,
        headers,
        body: body.to_string(),
    }
}

/// The value the echo saw for a request header.
fn seen(reply: &Reply, header: &str) -> Option<String> {
    let echo: serde_json::Value = serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("not an echo reply ({e}): {} {}", reply.status, reply.body));
    echo["headers"][header].as_str().map(str::to_string)
}

/// One metric sample from a proxy's `/metrics`.
fn metric(proxy: &Proxy, series: &str) -> Option<f64> {
    let (_, body) = proxy.admin_get("/metrics").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Echo workloads (`app: <name>`, each behind its own server proxy) and a control plane
/// reading their Services and `files`.
struct Mesh {
    proxies: Vec<Proxy>,
    urls: Vec<String>,
    config: tempfile::TempDir,
    _control: ControlPlane,
    _echoes: Vec<HttpEcho>,
}

fn start_mesh(apps: &[&str], files: &[(&str, String)]) -> Mesh {
    let echoes: Vec<HttpEcho> = apps.iter().map(|_| HttpEcho::start().unwrap()).collect();
    let mut all: Vec<(String, String)> = apps
        .iter()
        .zip(&echoes)
        .map(|(app, e)| {
            (
                format!("{app}.yaml"),
                service_yaml(app, "default", 8080, e.addr.port(), app),
            )
        })
        .collect();
    all.extend(files.iter().map(|(n, t)| (n.to_string(), t.clone())));
    let config = config_dir(&all).unwrap();
    let control = ControlPlane::start(config.path()).unwrap();
    let proxies: Vec<Proxy> = apps
        .iter()
        .zip(&echoes)
        .map(|(app, e)| {
            ProxyBuilder::loopback(&format!("{app}-0"))
                .label("app", app)
                .service_account(app)
                .control(&control.url())
                .app(e.addr)
                .start()
                .unwrap()
        })
        .collect();
    for p in &proxies {
        p.wait_ready(CONVERGE).unwrap();
    }
    Mesh {
        urls: proxies
            .iter()
            .map(|p| format!("http://{}", p.ready.inbound))
            .collect(),
        proxies,
        config,
        _control: control,
        _echoes: echoes,
    }
}

#[test]
fn wasm_plugins_add_a_header_deny_and_count_on_the_inbound_proxy() {
    let dir = plugins();
    let add = dir.join("add_header.wasm");
    let files = [
        (
            "add.yaml",
            wasm_plugin_yaml(
                "add",
                "echo",
                &add,
                &format!(
                    "  sha256: {}\n  phase: AUTHN\n  pluginConfig: {{name: x-wasm-added, value: from-config}}\n",
                    sha256_hex(&add).unwrap()
                ),
            ),
        ),
        (
            "deny.yaml",
            wasm_plugin_yaml(
                "deny",
                "echo",
                &dir.join("deny_missing_header.wasm"),
                "  phase: AUTHZ\n  match: [{mode: SERVER}]\n",
            ),
        ),
        (
            "count.yaml",
            wasm_plugin_yaml(
                "count",
                "echo",
                &dir.join("count_requests.wasm"),
                "  phase: STATS\n  pluginConfig: {metric: wasm_requests_seen}\n",
            ),
        ),
    ];
    let mesh = start_mesh(&["echo"], &files);
    let url = format!("{}/hello", mesh.urls[0]);
    let proxy = &mesh.proxies[0];

    // The plugins arrive over discovery: wait for the deny plugin's answer.
    wait::until(CONVERGE, || match get(&url, &[]) {
        r if r.status == 403 => Ok(()),
        r => Err(format!("not denied yet: {} {}", r.status, r.body)),
    })
    .unwrap();
    let denied = get(&url, &[]);
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("x-wasm-denied"), Some("missing header"));
    assert!(
        denied
            .body
            .contains("denied by wasm plugin: missing x-wasm-allow"),
        "{}",
        denied.body
    );
    // The add-header plugin (AUTHN, before the deny) also saw the local reply on its way out.
    assert_eq!(denied.header("x-wasm-plugin"), Some("add-header"));

    let series = "wasm_requests_seen{plugin=\"default/count\"}";
    let before = metric(proxy, series).unwrap_or(0.0);
    for _ in 0..5 {
        let ok = get(&url, &["x-wasm-allow: yes"]);
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(seen(&ok, "x-wasm-added").as_deref(), Some("from-config"));
        assert_eq!(ok.header("x-wasm-plugin"), Some("add-header"));
    }
    for _ in 0..3 {
        assert_eq!(get(&url, &[]).status, 403);
    }
    // The counter runs in STATS, after the deny (AUTHZ): only the 5 allowed requests count.
    assert_eq!(metric(proxy, series), Some(before + 5.0));
    assert_eq!(
        metric(proxy, "wasm_last_status{plugin=\"default/count\"}"),
        Some(200.0)
    );
    let (_, dump) = proxy.admin_get("/config_dump").unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let names: Vec<&str> = dump["wasm_plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["plugin"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default/add", "default/deny", "default/count"]);
}

#[test]
fn wasm_trapping_looping_and_hungry_plugins_fail_per_fail_strategy_and_the_proxy_stays_up() {
    let dir = plugins();
    let misbehave = dir.join("misbehave.wasm");
    let plugin = |name: &str, app: &str, mode: &str, strategy: &str| {
        (
            format!("{name}.yaml"),
            wasm_plugin_yaml(
                name,
                app,
                &misbehave,
                &format!("  failStrategy: {strategy}\n  pluginConfig: {{mode: {mode}}}\n"),
            ),
        )
    };
    let files = [
        plugin("trap", "trapped", "trap", "FAIL_CLOSE"),
        plugin("spin", "spun", "loop", "FAIL_OPEN"),
        plugin("spin-closed", "spunclosed", "loop", "FAIL_CLOSE"),
        plugin("grow", "grown", "grow", "FAIL_CLOSE"),
    ];
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let mut mesh = start_mesh(&["trapped", "spun", "spunclosed", "grown", "plain"], &files);
    let url = |i: usize, path: &str| format!("{}{path}", mesh.urls[i]);

    // Wait for each plugin to be in force: the FAIL_CLOSE ones fail /x, the FAIL_OPEN one
    // counts a fuel failure.
    for i in [0, 2, 3] {
        wait::until(CONVERGE, || match get(&url(i, "/x"), &[]) {
            r if r.status == 500 => Ok(()),
            r => Err(format!("plugin not in force yet: {} {}", r.status, r.body)),
        })
        .unwrap();
    }
    let fuel = "trellis_wasm_plugin_failures_total{plugin=\"default/spin\",reason=\"fuel\"}";
    wait::until(CONVERGE, || {
        let r = get(&url(1, "/x"), &[]);
        match metric(&mesh.proxies[1], fuel) {
            Some(_) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?} {}", r.status)),
        }
    })
    .unwrap();

    for (i, plugin, reason) in [
        (0, "trap", "trap"),
        (2, "spin-closed", "fuel"),
        (3, "grow", "memory"),
    ] {
        for _ in 0..3 {
            let started = Instant::now();
            let r = get(&url(i, "/x"), &[]);
            assert_eq!(r.status, 500, "{plugin}: {}", r.body);
            assert_eq!(
                r.header("trellis-error"),
                Some("wasm-plugin-failed"),
                "{plugin}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{plugin} took {:?}",
                started.elapsed()
            );
            // A fresh instance replaces the failed one: the path the plugin leaves alone works.
            let ok = get(&url(i, "/ok"), &[]);
            assert_eq!(ok.status, 200, "{plugin} /ok after a failure: {}", ok.body);
        }
        let series = format!(
            "trellis_wasm_plugin_failures_total{{plugin=\"default/{plugin}\",reason=\"{reason}\"}}"
        );
        let n = metric(&mesh.proxies[i], &series).unwrap_or(0.0);
        assert!(n >= 3.0, "{series} = {n}");
    }
    // FAIL_OPEN: the looping plugin is skipped and the request reaches the app.
    let before = metric(&mesh.proxies[1], fuel).unwrap();
    for _ in 0..3 {
        let r = get(&url(1, "/x"), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(seen(&r, "x-wasm-added").is_none());
    }
    assert_eq!(metric(&mesh.proxies[1], fuel), Some(before + 3.0));
    // A workload without plugins is untouched, and every proxy is still up.
    for _ in 0..5 {
        assert_eq!(get(&url(4, "/x"), &[]).status, 200);
    }
    for p in &mut mesh.proxies {
        assert!(p.process().is_running(), "{} exited", p.name);
        assert_eq!(p.admin_get("/ready").unwrap().0, 200);
    }
}

#[test]
fn wasm_plugin_config_change_reloads_without_failed_requests() {
    let dir = plugins();
    let add = dir.join("add_header.wasm");
    let sha = sha256_hex(&add).unwrap();
    let doc = |value: &str, sha: &str| {
        wasm_plugin_yaml(
            "add",
            "echo",
            &add,
            &format!("  sha256: {sha}\n  pluginConfig: {{name: x-version, value: {value}}}\n"),
        )
    };
    let mut mesh = start_mesh(&["echo"], &[("add.yaml", doc("v1", &sha))]);
    let url = format!("{}/load", mesh.urls[0]);
    wait::until(CONVERGE, || {
        match seen(&get(&url, &[]), "x-version").as_deref() {
            Some("v1") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();

    // A small steady load while the plugin's config changes: every request must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    // Each request's status and the x-version the app saw.
    type Seen = Vec<(u16, Option<String>)>;
    let results: Arc<Mutex<Seen>> = Arc::default();
    let load = {
        let (stop, results, url) = (stop.clone(), results.clone(), url.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(40);
            for _ in 0..2000 {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let r = get(&url, &[]);
                let v = if r.status == 200 {
                    seen(&r, "x-version")
                } else {
                    None
                };
                results.lock().unwrap().push((r.status, v));
            }
        })
    };
    // Each phase below is held until the load has made this many more requests in it, so
    // every version is seen under load (a fixed pause would not prove any request was made).
    let more_load = |n: usize| {
        let from = results.lock().unwrap().len();
        wait::until(CONVERGE, || match results.lock().unwrap().len() {
            len if len >= from + n => Ok(()),
            len => Err(format!("{} of {n} load requests made", len - from)),
        })
        .unwrap();
    };
    more_load(10);
    write_config(mesh.config.path(), "add.yaml", &doc("v2", &sha)).unwrap();
    wait::until(CONVERGE, || {
        let last = results.lock().unwrap().last().cloned();
        match last {
            Some((200, Some(v))) if v == "v2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();
    more_load(10);

    // A wrong sha256: the new version is refused, the last good one (v2) stays in force.
    let wrong = "0".repeat(64);
    write_config(mesh.config.path(), "add.yaml", &doc("v3", &wrong)).unwrap();
    let proxy = &mut mesh.proxies[0];
    wait::until(CONVERGE, || {
        let log = proxy.process().log();
        if log.contains("sha256 mismatch") {
            Ok(())
        } else {
            Err("no sha256 mismatch logged yet".to_string())
        }
    })
    .unwrap();
    more_load(10);
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();

    let results = results.lock().unwrap();
    let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert!(results.len() >= 20, "too little load: {}", results.len());
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        results.len()
    );
    let versions: Vec<&str> = results.iter().filter_map(|(_, v)| v.as_deref()).collect();
    assert!(versions.contains(&"v1") && versions.contains(&"v2"));
    assert!(
        !versions.contains(&"v3"),
        "a module with a wrong sha256 ran"
    );
    assert_eq!(versions.last(), Some(&"v2"));
    let log = proxy.process().log();
    let line = log.lines().find(|l| l.contains("sha256 mismatch")).unwrap();
    assert!(
        line.contains("default/add") && line.contains(&sha),
        "{line}"
    );
}

/// POSTs `body` and returns the reply.
fn post(url: &str, body: &str, headers: &[&str]) -> Reply {
    let mut args = Vec::new();
    for h in headers {
        args.push(format!("-H{h}"));
    }
    let mut list: Vec<&str> = vec![
        "-s",
        "-i",
        "--max-time",
        "10",
        "-X",
        "POST",
        "--data-binary",
        body,
    ];
    list.extend(args.iter().map(String::as_str));
    list.push(url);
    let r = curl_http(&list).unwrap();
    let (head, rest) = r
        .body
        .split_once("\r\n\r\n")
        .unwrap_or((r.body.as_str(), ""));
    Reply {
        status: r.status,
        headers: head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect(),
        body: rest.to_string(),
    }
}

#[test]
fn wasm_plugins_rewrite_a_response_body_and_deny_a_request_body_word() {
    let dir = plugins();
    let files = [
        (
            "rewrite.yaml",
            wasm_plugin_yaml(
                "rewrite",
                "echo",
                &dir.join("rewrite_body.wasm"),
                "  pluginConfig: {from: xxxxx, to: hello!}\n",
            ),
        ),
        (
            "deny-word.yaml",
            wasm_plugin_yaml(
                "deny-word",
                "echo",
                &dir.join("deny_body_word.wasm"),
                "  phase: AUTHZ\n  pluginConfig: {word: forbidden}\n",
            ),
        ),
    ];
    let streaming = wasm_plugin_yaml(
        "deny-streaming",
        "stream",
        &dir.join("deny_body_word.wasm"),
        "  pluginConfig: {word: forbidden, hold: false}\n",
    );
    let files = [
        files[0].clone(),
        files[1].clone(),
        ("stream.yaml", streaming),
    ];
    let mesh = start_mesh(&["echo", "stream"], &files);
    let base = &mesh.urls[0];

    // A streamed body of several frames, buffered whole by the plugin and rewritten: every
    // 5 x's become 6 bytes, and the length the client reads is the new one.
    let url = format!("{base}/bytes/50000");
    wait::until(CONVERGE, || match get(&url, &[]) {
        r if r.header("x-wasm-body-rewritten").is_some() => Ok(()),
        r => Err(format!("not rewritten yet: {} {:?}", r.status, r.headers)),
    })
    .unwrap();
    let r = get(&url, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.len(),
        60_000,
        "{:?}",
        &r.body[..40.min(r.body.len())]
    );
    assert_eq!(r.body, "hello!".repeat(10_000));

    // The request body is read through the deny plugin before the echo sees the request.
    let echo = &mesh._echoes[0];
    let before = echo.requests();
    let denied = post(base, "this payload is forbidden here", &[]);
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert_eq!(denied.header("x-wasm-denied"), Some("body word"));
    assert!(
        denied.body.contains("the body says forbidden"),
        "{}",
        denied.body
    );
    assert_eq!(
        echo.requests(),
        before,
        "the denied request reached the app"
    );

    let ok = post(base, "a fine payload", &[]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let echoed: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(echoed["body_len"], 14);
    assert_eq!(echoed["headers"]["x-wasm-body-checked"], "14");
    assert_eq!(echo.requests(), before + 1);
    // A bodyless request is not held.
    assert_eq!(get(&format!("{base}/plain"), &[]).status, 200);

    // Without the hold the head goes upstream at once and the body streams through the
    // plugin: its answer still wins, and the upstream exchange is cancelled.
    let stream = &mesh.urls[1];
    wait::until(CONVERGE, || match post(stream, "forbidden words", &[]) {
        r if r.status == 403 => Ok(()),
        r => Err(format!("not denied yet: {} {}", r.status, r.body)),
    })
    .unwrap();
    let denied = post(stream, "more forbidden words", &[]);
    assert_eq!(denied.header("x-wasm-denied"), Some("body word"));
    let ok = post(stream, "all fine", &[]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let echoed: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(echoed["body_len"], 8);
}

/// An auth service on 127.0.0.1: 200 (with `x-auth-user`) for `x-user: alice`, else 403.
fn auth_service() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        // Bounded: far more connections than the test makes.
        for stream in listener.incoming().take(500) {
            let Ok(mut stream) = stream else { continue };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let reply = if head.contains("\r\nx-user: alice\r\n") {
                "HTTP/1.1 200 OK\r\nx-auth-user: alice\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
            } else {
                let body = "no such user\n";
                format!(
                    "HTTP/1.1 403 Forbidden\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    addr
}

fn dead_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn wasm_plugin_http_call_allows_or_denies_by_the_auth_service_answer_per_fail_strategy() {
    let dir = plugins();
    let wasm = dir.join("http_auth.wasm");
    let auth = auth_service();
    let dead = dead_port();
    let doc = |name: &str, app: &str, cluster: std::net::SocketAddr, strategy: &str| {
        wasm_plugin_yaml(
            name,
            app,
            &wasm,
            &format!("  failStrategy: {strategy}\n  pluginConfig: {{cluster: \"{cluster}\"}}\n"),
        )
    };
    // The third workload's plugin calls the auth service as a mesh service, through its
    // proxy's outbound path and the auth workload's own proxy.
    let mesh_doc = wasm_plugin_yaml(
        "by-name",
        "meshcall",
        &wasm,
        "  pluginConfig: {cluster: \"authsvc.default:8080\"}\n",
    );
    let files = [
        ("auth.yaml", doc("auth", "echo", auth, "FAIL_CLOSE")),
        ("open.yaml", doc("open", "other", dead, "FAIL_OPEN")),
        ("by-name.yaml", mesh_doc),
        (
            "authsvc.yaml",
            service_yaml("authsvc", "default", 8080, auth.port(), "authsvc"),
        ),
    ];
    let mesh = start_mesh(&["echo", "other", "meshcall"], &files);
    let auth_proxy = ProxyBuilder::loopback("authsvc-0")
        .label("app", "authsvc")
        .service_account("authsvc")
        .control(&mesh._control.url())
        .app(auth)
        .start()
        .unwrap();
    auth_proxy.wait_ready(CONVERGE).unwrap();
    let by_name = format!("{}/hello", mesh.urls[2]);
    wait::until(CONVERGE, || match get(&by_name, &["x-user: alice"]) {
        r if r.status == 200 => Ok(()),
        r => Err(format!("not allowed by name yet: {} {}", r.status, r.body)),
    })
    .unwrap();
    let r = get(&by_name, &["x-user: alice"]);
    assert_eq!(seen(&r, "x-auth-user").as_deref(), Some("alice"));
    let r = get(&by_name, &["x-user: mallory"]);
    assert_eq!((r.status, r.body.as_str()), (403, "no such user\n"));
    let url = format!("{}/hello", mesh.urls[0]);
    wait::until(CONVERGE, || match get(&url, &[]) {
        r if r.status == 403 => Ok(()),
        r => Err(format!("not denied yet: {} {}", r.status, r.body)),
    })
    .unwrap();
    // The plugin's 403 carries the auth service's own body.
    let denied = get(&url, &["x-user: mallory"]);
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("x-wasm-denied"), Some("auth"));
    assert_eq!(denied.body, "no such user\n");
    for _ in 0..5 {
        let ok = get(&url, &["x-user: alice"]);
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(seen(&ok, "x-auth-user").as_deref(), Some("alice"));
    }

    // The auth service does not answer: FAIL_OPEN lets the request through...
    let other = format!("{}/hello", mesh.urls[1]);
    wait::until(CONVERGE, || {
        let proxy = &mesh.proxies[1];
        match metric(
            proxy,
            "trellis_wasm_plugin_failures_total{plugin=\"default/open\",reason=\"http_call\"}",
        ) {
            Some(n) if n >= 1.0 => Ok(()),
            n => {
                let r = get(&other, &["x-user: alice"]);
                Err(format!(
                    "no http_call failure yet ({n:?}): {} {}",
                    r.status, r.body
                ))
            }
        }
    })
    .unwrap();
    let open = get(&other, &["x-user: alice"]);
    assert_eq!(open.status, 200, "{}", open.body);

    // ... and FAIL_CLOSE fails it.
    write_config(
        mesh.config.path(),
        "auth.yaml",
        &doc("auth", "echo", dead, "FAIL_CLOSE"),
    )
    .unwrap();
    wait::until(CONVERGE, || match get(&url, &["x-user: alice"]) {
        r if r.status == 500 => Ok(()),
        r => Err(format!("not failing yet: {} {}", r.status, r.body)),
    })
    .unwrap();
    let failed = get(&url, &["x-user: alice"]);
    assert_eq!(failed.header("trellis-error"), Some("wasm-plugin-failed"));
    // The proxy is up and its other workload unaffected.
    assert_eq!(get(&other, &["x-user: alice"]).status, 200);
}

/// Serves `files` (path -> bytes) over HTTP/1.1 on 127.0.0.1; other paths are 404. Counts
/// the GETs it answered.
fn module_server(
    files: Vec<(&'static str, Vec<u8>)>,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200) {
            let Ok(mut stream) = stream else { continue };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or_default();
            count.fetch_add(1, Ordering::SeqCst);
            let _ = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => stream
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|()| stream.write_all(body)),
                None => stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                ),
            };
        }
    });
    (addr, served)
}

#[test]
fn wasm_plugin_from_an_http_url_is_fetched_checked_and_kept_on_a_bad_fetch() {
    let dir = plugins();
    let add = dir.join("add_header.wasm");
    let sha = sha256_hex(&add).unwrap();
    let (server, served) = module_server(vec![("/add.wasm", std::fs::read(&add).unwrap())]);
    let doc = |path: &str, sha: &str, value: &str| {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: add
  namespace: default
spec:
  selector:
    matchLabels: {{app: echo}}
  url: http://{server}{path}
  sha256: {sha}
  pluginConfig: {{name: x-version, value: {value}}}
"
        )
    };
    let mut mesh = start_mesh(&["echo"], &[("add.yaml", doc("/add.wasm", &sha, "v1"))]);
    let url = format!("{}/x", mesh.urls[0]);
    wait::until(CONVERGE, || {
        match seen(&get(&url, &[]), "x-version").as_deref() {
            Some("v1") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();
    assert!(served.load(Ordering::SeqCst) >= 1);

    // A path the server does not have, then a module whose sha256 is not the spec's: each is
    // refused with an error naming the plugin and the field, and v1 stays in force.
    let proxy = &mut mesh.proxies[0];
    let wrong = "0".repeat(64);
    for (path, sha, want) in [
        ("/missing.wasm", sha.as_str(), "spec.url http://"),
        ("/add.wasm", wrong.as_str(), "sha256 mismatch"),
    ] {
        write_config(mesh.config.path(), "add.yaml", &doc(path, sha, "v2")).unwrap();
        wait::until(CONVERGE, || {
            let log = proxy.process().log();
            match log.lines().find(|l| l.contains(want)) {
                Some(line) if line.contains("WasmPlugin default/add") => Ok(()),
                Some(line) => Err(format!("the error does not name the plugin: {line}")),
                None => Err(format!("no {want:?} logged yet")),
            }
        })
        .unwrap();
        let r = get(&url, &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(seen(&r, "x-version").as_deref(), Some("v1"));
    }
    assert!(
        proxy.process().log().contains("GET answered 404"),
        "the fetch error says what the server answered"
    );
}
