//! The host with the real test plugins (tests/wasm-plugins), in process: the ABI calls the SDK
//! makes, local responses, metrics, and the isolation limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use trellis_model::wasm::{FailStrategy, Mode, Phase, WasmPlugin, WasmPlugins};

use super::{FAILED, Reason, Wasm, WasmRequest, full};
use crate::client::UpBody;
use crate::http::ProxyBody;
use crate::telemetry::Direction;

/// A host with `plugins` (name, file in the built plugins' `dir`, configuration) installed in
/// that order, each fail-closed.
fn host(dir: &Path, plugins: &[(&str, &str, &str)]) -> Wasm {
    let wasm = Wasm::default();
    let plugins = plugins
        .iter()
        .map(|(name, file, config)| WasmPlugin {
            name: (*name).into(),
            plugin_name: String::new(),
            url: format!("file://{}", dir.join(file).display()),
            sha256: None,
            phase: Phase::UnspecifiedPhase,
            priority: 0,
            config: (*config).into(),
            fail_strategy: FailStrategy::FailClose,
            mode: Mode::ClientAndServer,
            ports: vec![],
        })
        .collect();
    wasm.install(WasmPlugins { plugins });
    wasm
}

/// A new inbound exchange through `wasm`, run through every request phase on `req`: the
/// exchange, for its response phases, and the local response a plugin answered with, if any.
async fn request_phases(
    wasm: &Wasm,
    req: &mut Request<UpBody>,
) -> (WasmRequest, Option<Response<ProxyBody>>) {
    let mut run = wasm.begin(Direction::Inbound, 80, None);
    let local = run.run_until(Phase::UnspecifiedPhase, req).await;
    (run, local)
}

fn request(path: &str, headers: &[(&str, &str)]) -> Request<UpBody> {
    request_with(path, headers, "")
}

fn request_with(path: &str, headers: &[(&str, &str)], body: &'static str) -> Request<UpBody> {
    let mut b = Request::builder().uri(path).header("host", "web");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    )
    .unwrap()
}

#[tokio::test]
async fn wasm_real_plugins_run_in_process() {
    let dir = trellis_testkit::wasm_plugins::build().unwrap();
    let wasm = host(
        &dir,
        &[
            (
                "t/add",
                "add_header.wasm",
                r#"{"name":"x-added","value":"v"}"#,
            ),
            ("t/deny", "deny_missing_header.wasm", ""),
            ("t/count", "count_requests.wasm", r#"{"metric":"seen"}"#),
        ],
    );
    let dump = wasm.dump().to_string();
    assert!(!dump.contains("failed"), "{dump}");

    let mut req = request("/a", &[("x-wasm-allow", "1")]);
    let (mut run, local) = request_phases(&wasm, &mut req).await;
    assert!(local.is_none());
    assert_eq!(req.headers()["x-added"], "v");
    let mut resp = Response::new(full(Bytes::new()));
    run.respond(&mut resp).await;
    assert_eq!(resp.headers()["x-wasm-plugin"], "add-header");

    let denied = request_phases(&wasm, &mut request("/a", &[]))
        .await
        .1
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(
        denied.headers()["x-wasm-denied"],
        "missing header",
        "{denied:?}"
    );

    let mut out = String::new();
    wasm.render(&mut out);
    assert!(out.contains("seen{plugin=\"t/count\"} 1"), "{out}");
}

#[tokio::test]
async fn wasm_isolation_fuel_trap_and_memory() {
    let dir = trellis_testkit::wasm_plugins::build().unwrap();
    for (mode, reason) in [
        ("trap", Reason::Trap),
        ("loop", Reason::Fuel),
        ("grow", Reason::Memory),
    ] {
        let name = format!("t/{mode}");
        let config = format!(r#"{{"mode":"{mode}"}}"#);
        let wasm = host(&dir, &[(name.as_str(), "misbehave.wasm", config.as_str())]);
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let resp = request_phases(&wasm, &mut request("/x", &[]))
                .await
                .1
                .unwrap();
            assert_eq!(resp.status(), 500, "{mode}");
            assert_eq!(resp.headers()["trellis-error"], FAILED);
            assert!(
                started.elapsed().as_secs() < 5,
                "{mode}: {:?}",
                started.elapsed()
            );
            let (_, local) = request_phases(&wasm, &mut request("/ok", &[])).await;
            assert!(local.is_none(), "{mode}: a fresh instance serves /ok");
        }
        let all: Vec<_> = [Reason::Trap, Reason::Fuel, Reason::Memory, Reason::Load]
            .into_iter()
            .map(|r| (r, wasm.metrics.failures(&name, r)))
            .collect();
        assert_eq!(wasm.metrics.failures(&name, reason), 2, "{mode}: {all:?}");
    }
}

#[tokio::test]
async fn wasm_body_plugins_read_and_rewrite_bodies_in_process() {
    let dir = trellis_testkit::wasm_plugins::build().unwrap();
    let wasm = host(
        &dir,
        &[
            ("t/word", "deny_body_word.wasm", r#"{"word":"nope"}"#),
            (
                "t/rewrite",
                "rewrite_body.wasm",
                r#"{"from":"a","to":"bb"}"#,
            ),
        ],
    );
    // The deny plugin pauses on the head: the body is read through it before forwarding.
    let mut req = request_with("/", &[], "say nope");
    let denied = request_phases(&wasm, &mut req).await.1.unwrap();
    assert_eq!(denied.status(), 403);

    // More than a plugin may hold: 413, and the request goes nowhere.
    let mut big = request("/", &[]);
    *big.body_mut() = Full::new(Bytes::from(vec![b'a'; (1 << 20) + 1]))
        .map_err(|never| match never {})
        .boxed();
    let refused = request_phases(&wasm, &mut big).await.1.unwrap();
    assert_eq!(refused.status(), 413);
    assert_eq!(refused.headers()["trellis-error"], "wasm-body-too-large");

    let mut req = request_with("/", &[], "fine");
    let (mut run, local) = request_phases(&wasm, &mut req).await;
    assert!(local.is_none());
    assert_eq!(req.headers()["x-wasm-body-checked"], "4");
    assert_eq!(req.headers()["content-length"], "4");
    let body = std::mem::replace(req.body_mut(), request("/", &[]).into_body());
    assert_eq!(body.collect().await.unwrap().to_bytes(), "fine");
    // The response body streams through the rewrite plugin (buffered to its end).
    let mut resp = Response::new(full(Bytes::from_static(b"banana")));
    run.respond(&mut resp).await;
    assert_eq!(resp.headers()["x-wasm-body-rewritten"], "true");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "bbbnbbnbb");
}

#[tokio::test]
async fn wasm_response_trailers_reach_the_trailers_callback_in_process() {
    let dir = trellis_testkit::wasm_plugins::build().unwrap();
    let wasm = host(
        &dir,
        &[(
            "t/rewrite",
            "rewrite_body.wasm",
            r#"{"from":"a","to":"bb"}"#,
        )],
    );
    let (mut run, local) = request_phases(&wasm, &mut request("/", &[])).await;
    assert!(local.is_none());
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = vec![
        http_body::Frame::data(Bytes::from_static(b"aa")),
        http_body::Frame::data(Bytes::from_static(b"a")),
        http_body::Frame::trailers(trailers),
    ];
    let mut resp = Response::new(super::body::replay(frames));
    run.respond(&mut resp).await;
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-wasm-trailer"], "seen 0");
    // No end of stream came before the trailers: the held bytes pass on as they were.
    assert_eq!(collected.to_bytes(), "aaa");
}

#[tokio::test]
async fn wasm_a_held_response_head_takes_changes_from_the_body_callback_in_process() {
    let dir = trellis_testkit::wasm_plugins::build().unwrap();
    let wasm = host(
        &dir,
        &[(
            "t/hold",
            "rewrite_body.wasm",
            r#"{"from":"a","to":"bb","hold":true}"#,
        )],
    );
    let (mut run, local) = request_phases(&wasm, &mut request("/", &[])).await;
    assert!(local.is_none());
    let mut resp = Response::new(full(Bytes::from_static(b"banana")));
    resp.headers_mut()
        .insert("content-length", http::HeaderValue::from_static("6"));
    run.respond(&mut resp).await;
    assert_eq!(resp.headers()["x-wasm-original-length"], "6");
    assert_eq!(resp.headers()["content-length"], "9");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "bbbnbbnbb");
}
