//! Istio tracing providers resolved through the MeshConfig, across real processes: the
//! control plane's config directory holds the ConfigMap `istio` (key `mesh`) naming an
//! `opentelemetry` extension provider by its cluster host name, a static ServiceEntry giving
//! that host a loopback address, and a Telemetry selecting the `echo` workload with
//! `tracing[0].providers[0].name` set to it. Two in-process OTLP/gRPC collectors listen: the
//! provider's, and the one both proxies' `--otlp-endpoint` names. The echo proxy's spans go to
//! the provider's collector, the client proxy's (no Telemetry) only to the flag's; removing
//! the Telemetry sends the echo proxy's spans back to the flag's collector; and a Telemetry
//! naming a provider the MeshConfig does not define is reported by the control plane with its
//! field, and the workload's spans go nowhere.
//!
//! Needs the built binaries (`cargo build --workspace --bins`). Everything listens on
//! 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use trellis_testkit::mesh::write_config;
use trellis_testkit::otlp::OtlpCollector;
use trellis_testkit::tools::http_get;
use trellis_testkit::{HttpEcho, MeshBuilder, wait};

const CONVERGE: Duration = Duration::from_secs(30);
const APPLY: Duration = Duration::from_secs(20);

const COLLECTOR_HOST: &str = "otel-collector.observability.svc.cluster.local";

fn mesh_config() -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: trellis-system}}
data:
  mesh: |
    extensionProviders:
    - name: otel
      opentelemetry:
        service: observability/{COLLECTOR_HOST}
        port: 4317
"#
    )
}

/// Gives the collector's cluster host name a loopback address (local mode has no cluster DNS).
fn service_entry(collector: SocketAddr) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: otel-collector, namespace: trellis-system}}
spec:
  hosts: [{COLLECTOR_HOST}]
  ports: [{{number: 4317, name: grpc-otlp, protocol: GRPC}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{grpc-otlp: {}}}}}]
"#,
        collector.port()
    )
}

fn telemetry(provider: &str) -> String {
    format!(
        r#"apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: echo-traces, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  tracing:
  - providers: [{{name: {provider}}}]
    randomSamplingPercentage: 100
"#
    )
}

/// A log without its ANSI colour sequences (`ESC [ ... m`).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends `n` GETs to `path` through the client proxy; each must answer 200.
fn send(port: SocketAddr, path: &str, n: usize) {
    for _ in 0..n {
        let (code, body) = http_get(port, path).unwrap();
        assert_eq!(code, 200, "{body}");
    }
}

/// Sends GETs to `path` through the client proxy until `collector` has an echo-0 span of it
/// (the config a step changed has reached the echo proxy); fails with `what`.
fn until_echo_span_at(collector: &OtlpCollector, port: SocketAddr, path: &str, what: &str) {
    wait::until(APPLY, || {
        send(port, path, 1);
        match collector.count("echo-0", path) {
            0 => Err(format!(
                "no echo-0 {path} span there yet: {:?}",
                collector.services()
            )),
            _ => Ok(()),
        }
    })
    .unwrap_or_else(|e| panic!("{what}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_provider_sends_its_workloads_spans_to_the_provider_collector() {
    let (provider, provider_addr) = OtlpCollector::start().await.unwrap();
    let (flag, flag_addr) = OtlpCollector::start().await.unwrap();
    let echo = HttpEcho::start().unwrap();
    let flag_url = format!("http://{flag_addr}");
    // The server proxy samples nothing itself: its spans come from the client's sampled traces
    // (and from the Telemetry's 100%).
    let mut mesh = MeshBuilder::new()
        .service("echo", 8080, echo.addr)
        .config_file("mesh.yaml", mesh_config())
        .config_file("collector.yaml", service_entry(provider_addr))
        .config_file("telemetry.yaml", telemetry("otel"))
        .server_args(
            "echo",
            ["--otlp-endpoint", &flag_url, "--trace-sampling", "0"],
        )
        .client_args(["--otlp-endpoint", &flag_url, "--trace-sampling", "1"])
        .start();
    mesh.wait_http_route("echo", CONVERGE);
    let port = mesh.client_port("echo");
    let config = mesh.config.path().to_path_buf();

    // The provider's collector gets the echo proxy's server spans.
    until_echo_span_at(
        &provider,
        port,
        "/first",
        "the provider's collector never heard from echo-0",
    );
    send(port, "/traced", 10);
    wait::until(APPLY, || {
        let (at_provider, at_flag) = (
            provider.count("echo-0", "/traced"),
            flag.count("client", "/traced"),
        );
        if at_provider >= 10 && at_flag >= 10 {
            Ok(())
        } else {
            Err(format!(
                "echo-0 at the provider: {at_provider}, client at the flag: {at_flag}"
            ))
        }
    })
    .unwrap_or_else(|e| panic!("spans did not arrive: {e}"));
    assert_eq!(
        provider.count("echo-0", "/traced"),
        10,
        "one server span per request"
    );
    // The client has no Telemetry: none of its spans at the provider's collector; the echo
    // proxy's flag is overridden: none of its spans at the flag's.
    assert_eq!(
        provider.services(),
        vec!["echo-0".to_string()],
        "only the Telemetry's workload exports to its provider"
    );
    assert_eq!(flag.count("echo-0", "/traced"), 0);

    // Removing the Telemetry gives the echo proxy its --otlp-endpoint back.
    std::fs::remove_file(config.join("telemetry.yaml")).unwrap();
    until_echo_span_at(
        &flag,
        port,
        "/after",
        "removing the Telemetry did not restore the flag",
    );
    let before = provider.count("echo-0", "/after");
    send(port, "/after", 5);
    wait::until(APPLY, || match flag.count("echo-0", "/after") {
        n if n > 5 => Ok(()),
        n => Err(format!("{n} echo-0 spans at the flag's collector")),
    })
    .unwrap();
    assert_eq!(provider.count("echo-0", "/after"), before);

    // A provider the MeshConfig does not define: the control plane names the field, and the
    // workload's spans go to no collector (not silently to the flag's).
    write_config(&config, "telemetry.yaml", &telemetry("nope")).unwrap();
    wait::until(APPLY, || {
        let log = mesh.control.process().log();
        if log.contains("Telemetry default/echo-traces spec.tracing[0].providers[0].name")
            && log.contains("unknown provider")
            && log.contains("nope")
        {
            Ok(())
        } else {
            Err("no error about the unknown provider in the control plane's log".into())
        }
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", mesh.control.process().log_tail()));
    wait::until(APPLY, || {
        if plain(&mesh.server_mut("echo").process().log()).contains("span_reporting=false") {
            Ok(())
        } else {
            Err("the echo proxy has not turned span reporting off".into())
        }
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", mesh.server_mut("echo").process().log_tail()));
    send(port, "/nope", 5);
    wait::until(APPLY, || match flag.count("client", "/nope") {
        5 => Ok(()),
        n => Err(format!("{n} client spans")),
    })
    .unwrap();
    // Proven in order, not by waiting a while: the Telemetry removed, the echo proxy exports to
    // the flag's collector again. Its spans leave through one queue, whose batches go out one
    // after another (each awaited), so once a later `/marker` span has reached the flag's
    // collector, any `/nope` span it had queued has been sent too, to whichever collector.
    std::fs::remove_file(config.join("telemetry.yaml")).unwrap();
    until_echo_span_at(
        &flag,
        port,
        "/marker",
        "removing the Telemetry again did not restore the flag",
    );
    assert_eq!(flag.count("echo-0", "/nope"), 0);
    assert_eq!(provider.count("echo-0", "/nope"), 0);
}
