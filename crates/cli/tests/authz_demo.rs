//! Issue 5's authorization "Must show" on the running Bookinfo demo: the built
//! `trellis demo --no-load` with the real `trellis-proxy` and `trellis-control` (run
//! `cargo build --workspace --bins` first), Istio AuthorizationPolicies in its `--config-dir`,
//! and extra `trellis-proxy` workloads ("sleep") that this test registers with the demo's
//! control plane to call services directly over mesh mTLS, as another workload would.
//!
//! Each test has its own demo on kernel-chosen loopback ports; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::Value;

mod support;
use support::Demo;

/// Only productpage's identity may call reviews (any version).
const REVIEWS_VIEWER: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: reviews-viewer
  namespace: default
spec:
  selector:
    matchLabels:
      app: reviews
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]
"#;

/// DENY `GET /ratings/*` from namespace default; AUDIT of every reviews call; a dry-run DENY
/// of everything on details.
const RATINGS_DENY_AUDIT_DRY_RUN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ratings-deny-default
  namespace: default
spec:
  selector:
    matchLabels:
      app: ratings
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["default"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/ratings/*"]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: reviews-audit
  namespace: default
spec:
  selector:
    matchLabels:
      app: reviews
  action: AUDIT
  rules:
  - to:
    - operation:
        paths: ["/reviews/*"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: details-dry-run
  namespace: default
  annotations:
    trellis.io/dry-run: "true"
spec:
  selector:
    matchLabels:
      app: details
  action: DENY
  rules:
  - {}
"#;

/// One HTTP/1.1 answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

/// `GET path` on `addr` with `Connection: close`; status 0 when the exchange failed (5 s bound).
fn get(addr: &str, path: &str) -> Answer {
    let exchange = || -> std::io::Result<Answer> {
        let addr: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok(Answer { status, body })
    };
    exchange().unwrap_or_else(|e| Answer {
        status: 0,
        body: e.to_string(),
    })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `GET path` (20 s at most) until `done` holds; returns that answer.
fn wait_for(addr: &str, path: &str, what: &str, done: impl Fn(&Answer) -> bool) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = get(addr, path);
        if done(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not after 20 s; last answer {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `trellis-proxy` registered as another workload, with one outbound port per target.
struct Sleep {
    child: Child,
    ready: Value,
    _tmp: tempfile::TempDir,
}

impl Sleep {
    fn start(demo: &Demo, namespace: &str, targets: &[&str]) -> Sleep {
        let tmp = tempfile::tempdir().unwrap();
        let proxy = Path::new(env!("CARGO_BIN_EXE_trellis")).with_file_name("trellis-proxy");
        let ready_file = tmp.path().join("ready.json");
        let log = std::fs::File::create(tmp.path().join("proxy.log")).unwrap();
        let control = demo.status["control"]["address"].as_str().unwrap();
        let mut cmd = Command::new(proxy);
        cmd.args(["--workload", &format!("sleep-{namespace}")])
            .args(["--namespace", namespace, "--service-account", "sleep"])
            .args(["--label", "app=sleep"])
            .args(["--control", &format!("http://{control}")])
            .args(["--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--outbound", "none"]);
        for target in targets {
            cmd.args(["--outbound-port", &format!("127.0.0.1:0={target}")]);
        }
        let child = cmd
            .arg("--ready-file")
            .arg(&ready_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let mut sleep = Sleep {
            child,
            ready: Value::Null,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        sleep.ready = loop {
            if let Ok(bytes) = std::fs::read(&ready_file) {
                break serde_json::from_slice(&bytes).unwrap();
            }
            assert!(
                sleep.child.try_wait().unwrap().is_none(),
                "the sleep proxy exited"
            );
            assert!(
                Instant::now() < deadline,
                "sleep proxy not ready after 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        sleep
    }

    /// The local address that reaches `target` through this workload's proxy.
    fn port(&self, target: &str) -> String {
        self.ready["outbound_ports"][target]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id())
            && let Some(pid) = Pid::from_raw(pid)
        {
            let _ = kill_process_group(pid, Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

fn config_dir(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("authz.yaml"), yaml).unwrap();
    (tmp, dir)
}

/// The `field` of each demo workload of app `name`.
fn workloads(demo: &Demo, name: &str, field: &str) -> Vec<String> {
    demo.status["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["name"] == name)
        .map(|w| w[field].as_str().unwrap().to_string())
        .collect()
}

/// The sum, over the admin servers of app `name`'s proxies, of the series starting `series`.
fn metric(demo: &Demo, name: &str, series: &str) -> u64 {
    workloads(demo, name, "admin")
        .iter()
        .map(|admin| {
            let text = get(admin, "/metrics").body;
            text.lines()
                .filter(|l| l.starts_with(series))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

#[test]
fn only_productpage_may_call_reviews() {
    let (_tmp, dir) = config_dir(REVIEWS_VIEWER);
    let demo = Demo::start(&dir);
    let entry = demo.status["entry"].as_str().unwrap().to_string();
    // The control plane read the policy (and says so in its config API).
    let control = demo.control_url();
    let config = get(control.trim_start_matches("http://"), "/api/v1/config");
    let config: Value = serde_json::from_str(&config.body).unwrap();
    let row = config["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "AuthorizationPolicy")
        .cloned();
    assert_eq!(
        row.as_ref()
            .map(|r| (r["name"].clone(), r["status"].clone())),
        Some(("reviews-viewer".into(), "Accepted".into())),
        "{row:?}"
    );
    // Each reviews proxy holds the policy (its /config_dump shows what it enforces).
    for admin in workloads(&demo, "reviews", "admin") {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let dump: Value = serde_json::from_str(&get(&admin, "/config_dump").body).unwrap();
            if dump["authorization"]["policies"][0]["name"] == "default/reviews-viewer" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{admin}: {}",
                dump["authorization"]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let sleep = Sleep::start(&demo, "default", &["reviews.default:9080"]);
    let reviews = sleep.port("reviews.default:9080");

    // Another workload (identity default/sleep) calling reviews directly, over mesh mTLS.
    let denied = wait_for(&reviews, "/reviews/0", "sleep -> reviews denied", |a| {
        a.status == 403
    });
    assert_eq!(denied.body.trim(), "RBAC: access denied", "{denied:?}");
    for _ in 0..10 {
        let a = get(&reviews, "/reviews/0");
        assert_eq!(a.status, 403, "sleep -> reviews: {a:?}");
    }
    // A plaintext client (no identity at all) straight at a reviews proxy's inbound.
    for inbound in workloads(&demo, "reviews", "inbound") {
        let a = get(&inbound, "/reviews/0");
        assert_eq!(a.status, 403, "plaintext -> {inbound}: {a:?}");
    }

    // Plaintext bytes that are not HTTP are a TCP connection: the rule is L4 (principals), the
    // client has none, so the proxy closes the connection before the app (which would answer
    // `400 Bad Request`) sees a byte.
    for inbound in workloads(&demo, "reviews", "inbound") {
        let mut s = TcpStream::connect(&inbound).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"hello, reviews\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let read = s.read_to_end(&mut answer);
        assert!(
            matches!(read, Ok(0)) || answer.is_empty(),
            "TCP to {inbound} should be closed unanswered: {read:?} {:?}",
            String::from_utf8_lossy(&answer)
        );
    }

    // The demo keeps working: productpage's identity is allowed.
    for n in 0..20 {
        let a = get(&entry, "/api/v1/products/0/reviews");
        assert_eq!(a.status, 200, "entry request {n}: {a:?}\n{}", demo.log());
        assert!(a.body.contains("\"reviews_version\""), "{a:?}");
    }
    let page = get(&entry, "/productpage");
    assert_eq!(page.status, 200, "{page:?}");

    let allowed = metric(
        &demo,
        "reviews",
        "trellis_authz_allowed_total{policy=\"default/reviews-viewer\",action=\"ALLOW\"}",
    );
    let refused = metric(
        &demo,
        "reviews",
        "trellis_authz_denied_total{policy=\"none\",action=\"ALLOW\"}",
    );
    assert!(allowed >= 21, "allowed by reviews-viewer: {allowed}");
    assert!(refused >= 14, "denied (no ALLOW matched): {refused}");
}

#[test]
fn deny_ratings_from_default_audit_reviews_dry_run_details() {
    let (_tmp, dir) = config_dir(RATINGS_DENY_AUDIT_DRY_RUN);
    let demo = Demo::start(&dir);
    let entry = demo.status["entry"].as_str().unwrap().to_string();

    // DENY GET /ratings/* from namespace default: a workload of default is refused, one of
    // another namespace is not.
    let in_default = Sleep::start(&demo, "default", &["ratings.default:9080"]);
    let in_other = Sleep::start(&demo, "other", &["ratings.default:9080"]);
    let denied = wait_for(
        &in_default.port("ratings.default:9080"),
        "/ratings/0",
        "default/sleep -> ratings denied",
        |a| a.status == 403,
    );
    assert_eq!(denied.body.trim(), "RBAC: access denied");
    let other = get(&in_other.port("ratings.default:9080"), "/ratings/0");
    assert_eq!(other.status, 200, "other/sleep -> ratings: {other:?}");

    // For TCP the DENY keeps its L4 part (namespace default): a plaintext client has no
    // namespace, so its (non-HTTP) connection reaches the app, which answers 400.
    for inbound in workloads(&demo, "ratings", "inbound") {
        let mut s = TcpStream::connect(&inbound).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"hello, ratings\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "TCP to {inbound}: {answer:?}"
        );
    }

    // reviews v2 and v3 (namespace default) lose their ratings; the page still answers.
    let audit_series =
        "trellis_authz_audit_total{policy=\"default/reviews-audit\",action=\"AUDIT\"}";
    let audited_before = metric(&demo, "reviews", audit_series);
    let mut rated_versions = 0;
    for n in 0..30 {
        let a = get(&entry, "/api/v1/products/0/reviews");
        assert_eq!(a.status, 200, "entry request {n}: {a:?}\n{}", demo.log());
        assert!(
            a.body.contains("\"ratings_available\":false"),
            "ratings are denied to reviews, request {n}: {a:?}"
        );
        if a.body.contains("\"reviews_version\":\"v2\"")
            || a.body.contains("\"reviews_version\":\"v3\"")
        {
            rated_versions += 1;
        }
    }
    // 30 draws over three versions: all v1 has probability (1/3)^30.
    assert!(rated_versions > 0, "no answer came from reviews v2 or v3");
    let denied_ratings = metric(
        &demo,
        "ratings",
        "trellis_authz_denied_total{policy=\"default/ratings-deny-default\",action=\"DENY\"}",
    );
    assert!(
        denied_ratings > rated_versions,
        "ratings denials {denied_ratings}, v2/v3 answers {rated_versions}"
    );

    // AUDIT only counts: every reviews call above succeeded and was audited.
    let audited = metric(&demo, "reviews", audit_series) - audited_before;
    assert!(audited >= 30, "audited reviews calls: {audited}");

    // A dry-run DENY of everything on details: evaluated and counted, never enforced.
    for _ in 0..5 {
        let a = get(&entry, "/api/v1/products/0");
        assert_eq!(a.status, 200, "details through productpage: {a:?}");
    }
    let dry = metric(
        &demo,
        "details",
        "trellis_authz_dry_run_denied_total{policy=\"default/details-dry-run\",action=\"DENY\"}",
    );
    assert!(dry >= 5, "dry-run denials counted on details: {dry}");
}

#[test]
fn unknown_default_inbound_policy_is_a_usage_error() {
    let control = Path::new(env!("CARGO_BIN_EXE_trellis")).with_file_name("trellis-control");
    let out = Command::new(control)
        .args(["--default-inbound-policy", "sometimes"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--default-inbound-policy")
            && stderr.contains(
                "all-unauthenticated, all-authenticated, cluster-authenticated, deny, audit"
            ),
        "{stderr}"
    );
}

/// A child process in its own process group, killed with its group when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(bin: &str, args: &[String], dir: &Path, name: &str) -> Proc {
        let path = Path::new(env!("CARGO_BIN_EXE_trellis")).with_file_name(bin);
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    /// Waits (30 s at most) for the JSON ready file the process writes.
    fn ready(&mut self, file: &Path) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(bytes) = std::fs::read(file) {
                return serde_json::from_slice(&bytes).unwrap();
            }
            assert!(
                self.child.try_wait().unwrap().is_none() && Instant::now() < deadline,
                "not ready: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id())
            && let Some(pid) = Pid::from_raw(pid)
        {
            let _ = kill_process_group(pid, Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

/// A tiny HTTP app on 127.0.0.1:0 answering `200 ok` to each of its first 200 connections.
fn app() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(200) {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    addr
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn default_inbound_policy_flag_and_workload_label() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("config");
    std::fs::create_dir(&config).unwrap();
    let service = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 8080, targetPort: 8080}}]\n"
        )
    };
    std::fs::write(
        config.join("services.yaml"),
        format!("{}---\n{}", service("web"), service("api")),
    )
    .unwrap();
    let control_ready = dir.join("control.json");
    let mut control = Proc::spawn(
        "trellis-control",
        &args(&[
            "--config-dir",
            config.to_str().unwrap(),
            "--discovery",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--default-inbound-policy",
            "deny",
            "--ready-file",
            control_ready.to_str().unwrap(),
        ]),
        dir,
        "control",
    );
    let discovery = control.ready(&control_ready)["discovery"]
        .as_str()
        .unwrap()
        .to_string();
    let control_url = format!("http://{discovery}");
    // web: the mesh default (deny); api: all-authenticated by its workload label.
    let server = |name: &str, extra: &[&str]| {
        let ready = dir.join(format!("{name}.json"));
        let app = app().to_string();
        let mut list = args(&[
            "--workload",
            &format!("{name}-0"),
            "--label",
            &format!("app={name}"),
            "--control",
            &control_url,
            "--inbound",
            "127.0.0.1:0",
            "--app",
            &app,
            "--app-port",
            "8080",
            "--outbound",
            "none",
            "--admin",
            "127.0.0.1:0",
            "--ready-file",
            ready.to_str().unwrap(),
        ]);
        list.extend(args(extra));
        let mut proc = Proc::spawn("trellis-proxy", &list, dir, name);
        let ready = proc.ready(&ready);
        (proc, ready)
    };
    let (_web, web) = server("web", &[]);
    let (_api, api) = server(
        "api",
        &[
            "--label",
            "config.linkerd.io/default-inbound-policy=all-authenticated",
        ],
    );
    let client_ready = dir.join("client.json");
    let mut client = Proc::spawn(
        "trellis-proxy",
        &args(&[
            "--workload",
            "client-0",
            "--label",
            "app=client",
            "--control",
            &control_url,
            "--inbound",
            "127.0.0.1:0",
            "--outbound",
            "none",
            "--outbound-port",
            "127.0.0.1:0=web.default:8080",
            "--outbound-port",
            "127.0.0.1:0=api.default:8080",
            "--admin",
            "127.0.0.1:0",
            "--ready-file",
            client_ready.to_str().unwrap(),
        ]),
        dir,
        "client",
    );
    let client = client.ready(&client_ready);
    let port = |target: &str| {
        client["outbound_ports"][target]
            .as_str()
            .unwrap()
            .to_string()
    };

    // deny: even a mesh mTLS peer is refused.
    let denied = wait_for(
        &port("web.default:8080"),
        "/",
        "client -> web denied",
        |a| a.status == 403,
    );
    assert_eq!(denied.body.trim(), "RBAC: access denied");
    // all-authenticated: the mesh peer passes, a plaintext caller does not.
    let ok = wait_for(
        &port("api.default:8080"),
        "/",
        "client -> api allowed",
        |a| a.status == 200,
    );
    assert_eq!(ok.body, "ok");
    let plaintext = get(api["inbound"].as_str().unwrap(), "/");
    assert_eq!(plaintext.status, 403, "plaintext -> api: {plaintext:?}");
    let web_metrics = get(web["admin"].as_str().unwrap(), "/metrics").body;
    assert!(
        web_metrics.lines().any(|l| l
            .starts_with("trellis_authz_denied_total{policy=\"default:deny\",action=\"DEFAULT\"}")),
        "{web_metrics}"
    );
}
