//! `trellis explain`: the route, backends and policy it reports for Bookinfo requests, golden
//! text and JSON, and agreement with what the running demo's proxies then do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use trellis_cli::{Cli, Command as Sub, explain};

mod support;
use support::Demo;

const NETWORKING: &str = "../config/tests/fixtures/networking";

/// A config dir with Istio's jason routing (jason -> v2, everyone else -> v3) and its rules.
fn jason_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "virtual-service-reviews-jason-v2-v3.yaml",
        "destination-rule-all.yaml",
    ] {
        std::fs::copy(format!("{NETWORKING}/{f}"), dir.path().join(f)).unwrap();
    }
    dir
}

/// Runs `trellis explain <args>` in-process; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (u8, String, String) {
    let argv = ["trellis", "explain"]
        .into_iter()
        .chain(args.iter().copied());
    let Sub::Explain(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("not explain");
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = explain::run(&args, &mut out, &mut err);
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (code, text(out), text(err))
}

fn explain_json(dir: &Path, user: Option<&str>) -> Value {
    let dir = dir.to_str().unwrap();
    let mut args = vec![
        "--from",
        "productpage",
        "GET",
        "http://reviews:9080/reviews/0",
        "--config-dir",
        dir,
        "-o",
        "json",
    ];
    let header = user.map(|u| format!("end-user:{u}"));
    if let Some(h) = &header {
        args.extend(["-H", h]);
    }
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// The one subset explain says all traffic goes to (the jason routes have one backend each).
fn only_subset(e: &Value) -> String {
    let backends = e["action"]["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 1, "{e:#}");
    assert_eq!(backends[0]["percent"], 100.0);
    backends[0]["subset"].as_str().unwrap().to_string()
}

#[test]
fn jason_and_everyone_else() {
    let dir = jason_config();
    let jason = explain_json(dir.path(), Some("jason"));
    assert_eq!(jason["route"]["resource"], "VirtualService default/reviews");
    assert_eq!(jason["route"]["index"], 0);
    assert_eq!(jason["route"]["match_index"], 0);
    assert_eq!(only_subset(&jason), "v2");
    assert_eq!(
        jason["action"]["backends"][0]["endpoints"],
        serde_json::json!(["reviews-v2"])
    );
    assert_eq!(
        jason["action"]["backends"][0]["subset_labels"]["version"],
        "v2"
    );
    let other = explain_json(dir.path(), Some("paul"));
    assert_eq!(other["route"]["index"], 1);
    assert_eq!(other["route"]["matched"], Value::Null);
    assert_eq!(only_subset(&other), "v3");
    // No AuthorizationPolicy: reviews-v3's proxy allows by the default.
    let authz = &other["authorization"]["workloads"];
    assert_eq!(authz.as_array().map(Vec::len), Some(1), "{other:#}");
    assert_eq!(authz[0]["workload"], "reviews-v3");
    assert_eq!(
        authz[0]["reason"],
        "allowed: no policy applies (default all-unauthenticated)"
    );
    assert!(
        other["retries"].as_str().unwrap().contains("proxy default"),
        "{other:#}"
    );
}

#[test]
fn no_route_unknown_host_and_usage() {
    let dir = jason_config();
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = run(&[
        "--from",
        "reviews-v2",
        "GET",
        "http://ratings:9080/ratings/0",
        "--config-dir",
        d,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("route:          none: the service's own endpoints"),
        "{out}"
    );
    assert!(out.contains("endpoints:         ratings-v1"), "{out}");
    let (code, out, _) = run(&[
        "--from",
        "productpage",
        "GET",
        "http://nowhere:80/",
        "--config-dir",
        d,
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("503 (no destination)"), "{out}");
    let (code, _, err) = run(&["--from", "nobody", "GET", "http://reviews:9080/"]);
    assert_eq!(code, 64);
    assert!(err.contains("productpage-v1"), "{err}");
    let (code, _, _) = run(&[
        "--from",
        "productpage",
        "GET",
        "http://reviews:9080/",
        "-H",
        "no-colon",
    ]);
    assert_eq!(code, 64);
    let (code, _, _) = run(&[
        "--from",
        "productpage",
        "GET",
        "http://reviews:9080/",
        "--config-dir",
        "/nonexistent",
    ]);
    assert_eq!(code, 65);
}

/// Compares with a golden file; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, actual: &str) {
    let path = Path::new("tests/fixtures/explain/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert_eq!(actual, expected, "{name} (UPDATE_GOLDEN=1 to accept)");
}

#[test]
fn golden_text_and_json() {
    // A fixed path: the config dir's name appears nowhere in the output, but keep it stable.
    let dir = jason_config();
    let d = dir.path().to_str().unwrap();
    let base = [
        "--from",
        "productpage",
        "GET",
        "http://reviews:9080/reviews/0",
        "-H",
        "end-user: jason",
        "--config-dir",
        d,
    ];
    golden("jason.txt", &run(&base).1);
    let mut json = base.to_vec();
    json.extend(["-o", "json"]);
    golden("jason.json", &run(&json).1);
}

async fn reviews_version(
    client: &Client<HttpConnector, Full<Bytes>>,
    entry: &str,
    user: Option<&str>,
) -> String {
    let mut req = http::Request::get(format!("http://{entry}/api/v1/products/0/reviews"));
    if let Some(user) = user {
        req = req.header("end-user", user);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let exchange = async {
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes()
    };
    let body = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    answer["reviews_version"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_running_demo() {
    let config = jason_config();
    let path = config.path().to_path_buf();
    let demo = tokio::task::spawn_blocking(move || Demo::start(&path))
        .await
        .unwrap();
    let status = &demo.status;
    let entry = status["entry"].as_str().unwrap().to_string();
    let client = Client::builder(TokioExecutor::new()).build_http();
    for user in [Some("jason"), None, Some("paul")] {
        let expected = only_subset(&explain_json(config.path(), user));
        // The live control plane compiles the same destination.
        let control = demo.control_url();
        let header = user.map(|u| format!("end-user:{u}"));
        let mut args = vec![
            "--from",
            "productpage-v1",
            "GET",
            "http://reviews:9080/reviews/0",
        ];
        args.extend(["--control", &control, "-o", "json"]);
        if let Some(h) = &header {
            args.extend(["-H", h]);
        }
        // `run` starts its own runtime: call it off this test's async workers.
        let (code, live, err) = tokio::task::block_in_place(|| run(&args));
        assert_eq!(code, 0, "{err}");
        let live: Value = serde_json::from_str(&live).unwrap();
        assert_eq!(only_subset(&live), expected, "{live:#}");
        // Enough requests that a 1-in-3 round robin over the versions would show itself.
        for _ in 0..15 {
            let served = reviews_version(&client, &entry, user).await;
            assert_eq!(
                served, expected,
                "user {user:?}: explain said {expected}, the mesh served {served}"
            );
        }
    }
}

#[test]
fn timeout_retries_fault_mirror_headers_and_policy() {
    let dir = "tests/fixtures/explain/policies";
    let args = [
        "--from",
        "reviews-v2",
        "GET",
        "http://ratings:9080/ratings/0",
        "--config-dir",
        dir,
    ];
    let (code, text, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    for expected in [
        "route:          VirtualService default/ratings rule 0 (ratings/0)",
        "matched:        match 0: {\"path\":{\"prefix\":\"/ratings\"}}",
        "  - ratings.default subset v1 weight 80 (80%) [version=v1]",
        "  - ratings.default subset v1-copy weight 20 (20%) [version=v1]",
        "load balancer:     RoundRobin",
        "connection pool:   max_connections=10 max_requests=100",
        "outlier detection: eject after 3 consecutive 5xx, every 5s, for 15s x ejections, at most 50% ejected",
        "timeout:        2s (whole request, retries included)",
        "retries:        3 retries on 5xx, connect-failure, 500ms per try",
        "faults:         delay 1s for 10% of requests",
        "mirrors:        reviews.default (50% of requests, answers discarded)",
        "header edits:   request: set x-explained: yes",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    golden("policies.txt", &text);
    // A path the route does not match: the service's own endpoints and the proxy's defaults.
    let (_, text, _) = run(&[
        "--from",
        "reviews-v2",
        "GET",
        "http://ratings:9080/health",
        "--config-dir",
        dir,
    ]);
    // A path no rule of the VirtualService matches: Istio answers 404 (Envoy's NR), and so
    // does the proxy, without sending anything.
    assert!(
        text.contains(
            "route:          no matching route \u{2192} 404 (VirtualService default/ratings"
        ),
        "{text}"
    );
    assert!(
        text.contains("answer:         404 from the proxy (trellis-error: no route)"),
        "{text}"
    );
    assert!(
        text.contains("timeout:        none (the proxy answers"),
        "{text}"
    );
}

/// Istio's reviews routing by path: jason's `/reviews/*` to v2, everyone else's to v3, and no
/// rule for any other path.
fn reviews_paths_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        format!("{NETWORKING}/destination-rule-all.yaml"),
        dir.path().join("destination-rule-all.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("reviews-paths.yaml"),
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {prefix: /reviews/}
      headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - match:
    - uri: {prefix: /reviews/}
    route:
    - destination: {host: reviews, subset: v3}
",
    )
    .unwrap();
    dir
}

/// A plain HTTP/1 GET with optional `end-user`; (status, trellis-error, body).
async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    user: Option<&str>,
) -> (u16, String, Value) {
    let mut req = http::Request::get(url);
    if let Some(user) = user {
        req = req.header("end-user", user);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let exchange = async {
        let resp = client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let reason = resp
            .headers()
            .get("trellis-error")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, reason, body)
    };
    let (status, reason, body) = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap();
    (
        status,
        reason,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// A VirtualService none of whose rules match: explain says 404, and the calling proxy then
/// answers 404 `trellis-error: no route` itself (productpage's outbound port for reviews),
/// while the paths the rules name still reach their subsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_route_is_404_in_explain_and_in_the_proxy() {
    let config = reviews_paths_config();
    let d = config.path().to_str().unwrap().to_string();
    let args = [
        "--from",
        "productpage",
        "GET",
        "http://reviews:9080/health",
        "--config-dir",
        &d,
    ];
    let (code, text, err) = tokio::task::block_in_place(|| run(&args));
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains(
            "route:          no matching route \u{2192} 404 (VirtualService default/reviews"
        ),
        "{text}"
    );
    let mut json_args = args.to_vec();
    json_args.extend(["-o", "json"]);
    let (_, json, _) = tokio::task::block_in_place(|| run(&json_args));
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["action"]["kind"], "no_route", "{json:#}");
    assert_eq!(json["action"]["status"], 404);
    assert_eq!(json["route"]["name"], "reviews/no-route");

    let path = config.path().to_path_buf();
    let demo = tokio::task::spawn_blocking(move || Demo::start(&path))
        .await
        .unwrap();
    // The live control plane compiles the same catch-all.
    let control = demo.control_url();
    let live_args = [
        "--from",
        "productpage-v1",
        "GET",
        "http://reviews:9080/health",
        "--control",
        &control,
        "-o",
        "json",
    ];
    let (code, live, err) = tokio::task::block_in_place(|| run(&live_args));
    assert_eq!(code, 0, "{err}");
    let live: Value = serde_json::from_str(&live).unwrap();
    assert_eq!(live["action"], json["action"], "{live:#}");

    let client = Client::builder(TokioExecutor::new()).build_http();
    let productpage = demo.status["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["workload"] == "productpage-v1")
        .unwrap();
    let admin = productpage["admin"].as_str().unwrap();
    let (status, _, dump) = get(&client, &format!("http://{admin}/config_dump"), None).await;
    assert_eq!(status, 200);
    let outbound = dump["proxy"]["listeners"]["outbound_ports"]["reviews.default:9080"]
        .as_str()
        .unwrap_or_else(|| panic!("no outbound port for reviews: {dump:#}"))
        .to_string();
    for _ in 0..10 {
        let (status, reason, _) = get(&client, &format!("http://{outbound}/health"), None).await;
        assert_eq!((status, reason.as_str()), (404, "no route"));
        let (status, reason, _) =
            get(&client, &format!("http://{outbound}/health"), Some("jason")).await;
        assert_eq!((status, reason.as_str()), (404, "no route"));
        let reviews = format!("http://{outbound}/reviews/0");
        let (status, _, body) = get(&client, &reviews, Some("jason")).await;
        assert_eq!(
            (status, &body["version"]),
            (200, &Value::from("v2")),
            "{body}"
        );
        let (status, _, body) = get(&client, &reviews, None).await;
        assert_eq!(
            (status, &body["version"]),
            (200, &Value::from("v3")),
            "{body}"
        );
    }
}

/// Gateway API routes: a request no HTTPRoute rule matches gets 404, and a gRPC call no
/// GRPCRoute rule matches gets UNIMPLEMENTED; a Linkerd ServiceProfile leaves unmatched requests
/// to the service.
#[test]
fn no_route_answers_per_api() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        "../config/tests/fixtures/traffic/no-route.yaml",
        dir.path().join("no-route.yaml"),
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    let explain = |method: &str, url: &str, extra: &[&str]| {
        let mut args = vec!["--from", "productpage", method, url, "--config-dir", d];
        args.extend(extra);
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{err}");
        out
    };
    let text = explain("GET", "http://reviews:9080/other", &[]);
    assert!(
        text.contains(
            "route:          no matching route \u{2192} 404 (HTTPRoute default/reviews-api"
        ),
        "{text}"
    );
    let text = explain(
        "POST",
        "http://ratings:9080/bookinfo.Ratings/List",
        &["-H", "content-type:application/grpc"],
    );
    assert!(
        text.contains(
            "no matching route \u{2192} gRPC UNIMPLEMENTED (12) (GRPCRoute default/ratings-grpc-get"
        ),
        "{text}"
    );
    assert!(
        text.contains("answer:         200, grpc-status 12 from the proxy"),
        "{text}"
    );
    let text = explain("POST", "http://ratings:9080/bookinfo.Ratings/Get", &[]);
    assert!(
        text.contains("route:          GRPCRoute default/ratings-grpc-get rule 0"),
        "{text}"
    );
}

/// Only productpage may call reviews: an ALLOW policy for productpage's identity, and a DENY of
/// `/reviews/*` for details' identity (so a denial names a policy and a rule as well).
const ONLY_PRODUCTPAGE: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-deny-details, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/other/sa/nobody"]}
  - from:
    - source: {principals: ["*/sa/bookinfo-details"]}
    to:
    - operation: {paths: ["/reviews/*"]}
"#;

fn authz_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("authz.yaml"), ONLY_PRODUCTPAGE).unwrap();
    dir
}

/// `(decision, policy, action, rule)` of every workload in `e`'s authorization, one per
/// workload the request lands on.
fn decisions(e: &Value) -> Vec<(String, Value, Value, Value)> {
    e["authorization"]["workloads"]
        .as_array()
        .unwrap_or_else(|| panic!("no authorization workloads: {e:#}"))
        .iter()
        .map(|w| {
            (
                w["decision"].as_str().unwrap().to_string(),
                w["policy"].clone(),
                w["action"].clone(),
                w["rule"].clone(),
            )
        })
        .collect()
}

fn explain_authz(dir: &str, from: &str, url: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--from",
        from,
        "GET",
        url,
        "--config-dir",
        dir,
        "-o",
        "json",
    ];
    args.extend(extra);
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn authorization_allow_deny_and_default() {
    let dir = authz_config();
    let d = dir.path().to_str().unwrap();
    let reviews = "http://reviews:9080/reviews/0";
    let allow = (
        "ALLOW".to_string(),
        Value::from("default/reviews-viewer"),
        Value::from("ALLOW"),
        Value::from(0),
    );
    let e = explain_authz(d, "productpage", reviews, &[]);
    assert_eq!(
        e["authorization"]["caller"],
        "cluster.local/ns/default/sa/bookinfo-productpage"
    );
    // No routing config: every reviews version, each decided by its own proxy's policies.
    assert_eq!(decisions(&e), vec![allow.clone(); 3], "{e:#}");
    let deny = (
        "DENY".to_string(),
        Value::from("default/reviews-deny-details"),
        Value::from("DENY"),
        Value::from(1),
    );
    let e = explain_authz(d, "details", reviews, &[]);
    assert_eq!(decisions(&e), vec![deny.clone(); 3], "{e:#}");
    assert_eq!(
        e["authorization"]["workloads"][0]["answer"],
        "403 RBAC: access denied"
    );
    // Another path: the DENY rule does not match, and no ALLOW rule does either.
    let e = explain_authz(d, "details", "http://reviews:9080/health", &[]);
    let none_matched = (
        "DENY".to_string(),
        Value::from("default/reviews-viewer"),
        Value::from("ALLOW"),
        Value::Null,
    );
    assert_eq!(decisions(&e), vec![none_matched; 3], "{e:#}");
    // Ratings has no policy: the default decides, and says so.
    let e = explain_authz(d, "details", "http://ratings:9080/ratings/0", &[]);
    assert_eq!(
        e["authorization"]["workloads"][0]["reason"],
        "allowed: no policy applies (default all-unauthenticated)",
        "{e:#}"
    );
    let e = explain_authz(
        d,
        "details",
        "http://ratings:9080/ratings/0",
        &["--default-inbound-policy", "deny"],
    );
    assert_eq!(
        decisions(&e),
        vec![(
            "DENY".into(),
            Value::Null,
            Value::from("DEFAULT"),
            Value::Null
        )]
    );
    // A route that lands on one subset: only that workload is decided.
    let jason = jason_config();
    std::fs::write(jason.path().join("authz.yaml"), ONLY_PRODUCTPAGE).unwrap();
    let j = jason.path().to_str().unwrap();
    let e = explain_authz(j, "details", reviews, &["-H", "end-user:jason"]);
    assert_eq!(e["authorization"]["workloads"][0]["workload"], "reviews-v2");
    assert_eq!(decisions(&e), vec![deny], "{e:#}");
    // The table form.
    let (code, text, err) = run(&["--from", "details", "GET", reviews, "--config-dir", d]);
    assert_eq!(code, 0, "{err}");
    for expected in [
        "authorization:  caller cluster.local/ns/default/sa/bookinfo-details (mTLS); policies from config",
        "  - reviews-v1.default: DENY by AuthorizationPolicy default/reviews-deny-details rule 1 (a DENY rule matched) \u{2192} 403 RBAC: access denied",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // A request the calling proxy answers itself reaches no workload's authorization.
    let (_, text, _) = run(&[
        "--from",
        "productpage",
        "GET",
        "http://nowhere:80/",
        "--config-dir",
        d,
    ]);
    assert!(
        text.contains("authorization:  not evaluated: no destination"),
        "{text}"
    );
    // An unknown default is refused when the arguments are read, naming the values.
    let bad = Cli::try_parse_from([
        "trellis",
        "explain",
        "--from",
        "productpage",
        "GET",
        reviews,
        "--default-inbound-policy",
        "sometimes",
    ])
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(bad.contains("all-authenticated"), "{bad}");
}

/// A `trellis-proxy` registered with the demo's control plane as another workload, with one
/// outbound port to reviews: calls through it are mesh mTLS calls under its service account.
struct Caller {
    child: std::process::Child,
    ready: Value,
    _tmp: tempfile::TempDir,
}

impl Caller {
    fn start(demo: &Demo, workload: &str, service_account: &str) -> Caller {
        use std::os::unix::process::CommandExt;
        let tmp = tempfile::tempdir().unwrap();
        let proxy = Path::new(env!("CARGO_BIN_EXE_trellis")).with_file_name("trellis-proxy");
        let ready_file = tmp.path().join("ready.json");
        let log = std::fs::File::create(tmp.path().join("proxy.log")).unwrap();
        let control = demo.status["control"]["address"].as_str().unwrap();
        let mut child = std::process::Command::new(proxy)
            .args(["--workload", workload, "--namespace", "default"])
            .args(["--service-account", service_account, "--label", "app=probe"])
            .args(["--control", &format!("http://{control}")])
            .args(["--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--outbound", "none"])
            .args(["--outbound-port", "127.0.0.1:0=reviews.default:9080"])
            .arg("--ready-file")
            .arg(&ready_file)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let ready = loop {
            if let Ok(bytes) = std::fs::read(&ready_file) {
                break serde_json::from_slice(&bytes).unwrap();
            }
            assert!(child.try_wait().unwrap().is_none(), "{workload} exited");
            assert!(std::time::Instant::now() < deadline, "{workload} not ready");
            std::thread::sleep(Duration::from_millis(100));
        };
        Caller {
            child,
            ready,
            _tmp: tmp,
        }
    }

    fn reviews(&self) -> String {
        self.ready["outbound_ports"]["reviews.default:9080"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        use rustix::process::{Pid, Signal, kill_process_group};
        if let Ok(pid) = i32::try_from(self.child.id())
            && let Some(pid) = Pid::from_raw(pid)
        {
            let _ = kill_process_group(pid, Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`: (status, body); status 0 on failure.
fn get_blocking(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let exchange = || -> std::io::Result<(u16, String)> {
        let sock: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
        let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
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
        Ok((status, body.to_string()))
    };
    exchange().unwrap_or((0, String::new()))
}

/// Live `explain --control` as JSON.
fn explain_live(control: &str, from: &str, path: &str) -> Value {
    let url = format!("http://reviews:9080{path}");
    let args = [
        "--from",
        from,
        "GET",
        &url,
        "--control",
        control,
        "-o",
        "json",
    ];
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// Issue 8's "explain agrees with what the proxy then does for an authorization denial": on the
/// running demo with only productpage allowed to call reviews, explain (from the config, and
/// live from each reviews proxy's own policies) says ALLOW for productpage and DENY, naming the
/// policy and rule, for details' identity and for another workload; those callers then really
/// get 403 from reviews' proxies while productpage keeps getting its reviews.
#[test]
fn explain_authorization_agrees_with_the_proxy() {
    let config = authz_config();
    let demo = Demo::start(config.path());
    let control = demo.control_url();
    // Bounded wait until every reviews proxy holds the policies (explain reads them live).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let live = loop {
        let e = explain_live(&control, "productpage-v1", "/reviews/0");
        let got = decisions(&e);
        if got.len() == 3 && got.iter().all(|d| d.1 == "default/reviews-viewer") {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "policies not in the proxies: {e:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(live["authorization"]["source"], "each proxy's /config_dump");
    let local = explain_authz(
        config.path().to_str().unwrap(),
        "productpage",
        "http://reviews:9080/reviews/0",
        &[],
    );
    assert_eq!(decisions(&live), decisions(&local), "{live:#}");
    assert!(decisions(&live).iter().all(|d| d.0 == "ALLOW"));

    // details' identity (a probe workload under its service account) and another workload.
    let details = Caller::start(&demo, "details-probe", "bookinfo-details");
    let sleep = Caller::start(&demo, "sleep", "sleep");
    for (caller, from, policy, rule) in [
        (
            &details,
            "details-probe",
            "default/reviews-deny-details",
            Value::from(1),
        ),
        (&sleep, "sleep", "default/reviews-viewer", Value::Null),
    ] {
        let e = explain_live(&control, from, "/reviews/0");
        let got = decisions(&e);
        assert_eq!(got.len(), 3, "{from}: {e:#}");
        for d in &got {
            assert_eq!(
                (d.0.as_str(), &d.1, &d.3),
                ("DENY", &Value::from(policy), &rule)
            );
        }
        // Every call is refused, whichever reviews version the balancer picks.
        let reviews = caller.reviews();
        for _ in 0..12 {
            let (status, body) = get_blocking(&reviews, "/reviews/0");
            assert_eq!(
                (status, body.trim()),
                (403, "RBAC: access denied"),
                "{from} -> reviews: explain said DENY by {policy}"
            );
        }
    }
    // details' identity from the config says the same as the live proxies.
    let local = explain_authz(
        config.path().to_str().unwrap(),
        "details",
        "http://reviews:9080/reviews/0",
        &[],
    );
    assert!(
        decisions(&local)
            .iter()
            .all(|d| d.1 == "default/reviews-deny-details" && d.3 == 1)
    );
    // productpage's calls still get through: the demo's product page shows reviews.
    let entry = demo.status["entry"].as_str().unwrap();
    for _ in 0..6 {
        let (status, body) = get_blocking(entry, "/api/v1/products/0/reviews");
        assert_eq!(status, 200, "{body}");
    }
}
