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

use trellis_testkit::mesh::{ControlPlane, ProxyBuilder, config_dir, service_yaml, write_config};
use trellis_testkit::otlp::OtlpCollector;
use trellis_testkit::tools::http_get;
use trellis_testkit::{HttpEcho, wait};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_provider_sends_its_workloads_spans_to_the_provider_collector() {
    let (provider, provider_addr) = OtlpCollector::start().await.unwrap();
    let (flag, flag_addr) = OtlpCollector::start().await.unwrap();
    let echo = HttpEcho::start().unwrap();
    let config = config_dir(&[
        (
            "echo.yaml",
            service_yaml("echo", "default", 8080, echo.addr.port(), "echo"),
        ),
        ("mesh.yaml", mesh_config()),
        ("collector.yaml", service_entry(provider_addr)),
        ("telemetry.yaml", telemetry("otel")),
    ])
    .unwrap();
    let mut control = ControlPlane::start(config.path()).unwrap();
    let flag_url = format!("http://{flag_addr}");
    // The server proxy samples nothing itself: its spans come from the client's sampled traces
    // (and from the Telemetry's 100%).
    let mut server = ProxyBuilder::loopback("echo-0")
        .label("app", "echo")
        .control(&control.url())
        .app(echo.addr)
        .arg("--otlp-endpoint")
        .arg(&flag_url)
        .arg("--trace-sampling")
        .arg("0")
        .start()
        .unwrap();
    let client = ProxyBuilder::loopback("client")
        .label("app", "client")
        .control(&control.url())
        .outbound_port("echo.default:8080")
        .arg("--otlp-endpoint")
        .arg(&flag_url)
        .arg("--trace-sampling")
        .arg("1")
        .start()
        .unwrap();
    let port = client.outbound_port("echo.default:8080");
    wait::until(CONVERGE, || match http_get(port, "/converge") {
        Ok((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .unwrap_or_else(|e| panic!("the mesh never routed to echo: {e}"));

    // The provider's collector gets the echo proxy's server spans.
    wait::until(APPLY, || {
        send(port, "/first", 1);
        match provider.count("echo-0", "/first") {
            0 => Err(format!(
                "no echo-0 span there yet: {:?}",
                provider.services()
            )),
            _ => Ok(()),
        }
    })
    .unwrap_or_else(|e| panic!("the provider's collector never heard from echo-0: {e}"));
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
    std::fs::remove_file(config.path().join("telemetry.yaml")).unwrap();
    wait::until(APPLY, || {
        send(port, "/after", 1);
        match flag.count("echo-0", "/after") {
            0 => Err("echo-0 not back at the flag's collector".to_string()),
            _ => Ok(()),
        }
    })
    .unwrap_or_else(|e| panic!("removing the Telemetry did not restore the flag: {e}"));
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
    write_config(config.path(), "telemetry.yaml", &telemetry("nope")).unwrap();
    wait::until(APPLY, || {
        let log = control.process().log();
        if log.contains("Telemetry default/echo-traces spec.tracing[0].providers[0].name")
            && log.contains("unknown provider")
            && log.contains("nope")
        {
            Ok(())
        } else {
            Err("no error about the unknown provider in the control plane's log".into())
        }
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", control.process().log_tail()));
    wait::until(APPLY, || {
        if plain(&server.process().log()).contains("span_reporting=false") {
            Ok(())
        } else {
            Err("the echo proxy has not turned span reporting off".into())
        }
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", server.process().log_tail()));
    send(port, "/nope", 5);
    wait::until(APPLY, || match flag.count("client", "/nope") {
        5 => Ok(()),
        n => Err(format!("{n} client spans")),
    })
    .unwrap();
    // The client's spans arrived, so the echo proxy's (sent in the same batches' time) would
    // have too.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(flag.count("echo-0", "/nope"), 0);
    assert_eq!(provider.count("echo-0", "/nope"), 0);
}
