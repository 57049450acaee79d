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
    assert_eq!(
        other["authorization"], "not evaluated (no policies)",
        "{other:#}"
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
