//! Endpoint deltas across processes: a real trellis-control and real trellis-proxies. An
//! endpoint joining and leaving a service reaches a subscribed proxy as an endpoint delta
//! (control plane `trellis_control_endpoint_deltas_total`, the proxy's `/config_dump`
//! `endpoint_deltas`), traffic follows it, and a proxy speaking as one from before deltas
//! (`TRELLIS_DISCOVERY_PROTOCOL=1`) follows the same changes through whole destinations.

// Test helpers outside #[test] functions fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use trellis_testkit::mesh::{ControlPlane, Proxy, ProxyBuilder, config_dir, service_yaml};
use trellis_testkit::metrics::Metrics;
use trellis_testkit::tools::http_get;
use trellis_testkit::{HttpEcho, wait};

const CONVERGE: Duration = Duration::from_secs(30);
const TARGET: &str = "echo.default:8080";
/// Every server proxy registers this port; each forwards to its own `--app`.
const APP_PORT: &str = "8080";

/// Round robin, so that with two endpoints each is sure to get a share of a few requests (the
/// default P2C over peak-EWMA may favour one).
const ROUND_ROBIN: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
";

fn server(name: &str, control: &str, app: SocketAddr) -> Proxy {
    ProxyBuilder::loopback(name)
        .label("app", "echo")
        .control(control)
        .app(app)
        .app_port(APP_PORT.parse().unwrap())
        .start()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

/// The endpoint addresses `proxy` holds for [`TARGET`] (its `/config_dump`), and how many
/// Updates it applied as endpoint deltas.
fn held(proxy: &Proxy) -> Result<(Vec<String>, u64), String> {
    let (code, body) = proxy.admin_get("/config_dump")?;
    if code != 200 {
        return Err(format!("/config_dump answered {code}"));
    }
    let dump: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let discovery = &dump["discovery"]["dump"];
    let deltas = discovery["status"]["endpoint_deltas"]
        .as_u64()
        .ok_or("no discovery.status.endpoint_deltas")?;
    let targets = discovery["targets"].as_array().ok_or("no targets")?;
    let target = targets
        .iter()
        .find(|t| t["target"] == TARGET)
        .ok_or_else(|| format!("{TARGET} not subscribed"))?;
    let mut addresses: Vec<String> = target["destination"]["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .filter_map(|e| e["address"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    addresses.sort();
    Ok((addresses, deltas))
}

/// Waits until `proxy` holds exactly `want` for the target.
fn wait_held(proxy: &Proxy, want: &[SocketAddr]) -> u64 {
    let mut want: Vec<String> = want.iter().map(ToString::to_string).collect();
    want.sort();
    wait::until(CONVERGE, || {
        let (addresses, deltas) = held(proxy)?;
        if addresses == want {
            Ok(deltas)
        } else {
            Err(format!("holds {addresses:?}, want {want:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{} never held the endpoints: {e}", proxy.name))
}

fn control_metrics(control: &ControlPlane) -> Metrics {
    let (code, text) = http_get(control.ready.http, "/metrics").unwrap();
    assert_eq!(code, 200, "{text}");
    Metrics::parse(&text)
}

/// Sends `n` requests through `client` to the target; each must answer 200.
fn send(client: &Proxy, n: usize, what: &str) {
    let port = client.outbound_port(TARGET);
    for i in 0..n {
        match http_get(port, &format!("/{what}/{i}")) {
            Ok((200, _)) => {}
            other => panic!(
                "{what} request {i} through {} failed: {other:?}",
                client.name
            ),
        }
    }
}

#[test]
fn an_endpoint_joining_and_leaving_reaches_proxies_as_a_delta() {
    let (echo_a, echo_b) = (HttpEcho::start().unwrap(), HttpEcho::start().unwrap());
    let config = config_dir(&[
        (
            "echo.yaml",
            service_yaml("echo", "default", 8080, 8080, "echo"),
        ),
        ("rr.yaml", ROUND_ROBIN.to_string()),
    ])
    .unwrap();
    // A stopped workload leaves the service's endpoints within the test.
    let control = ControlPlane::start_with(
        config.path(),
        "127.0.0.1:0".parse().unwrap(),
        None,
        &["--heartbeat-interval", "500ms", "--workload-expiry", "2s"],
    )
    .unwrap();
    let url = control.url();
    let a = server("echo-a", &url, echo_a.addr);
    let client = ProxyBuilder::loopback("client")
        .label("app", "client")
        .control(&url)
        .outbound_port(TARGET)
        .start()
        .unwrap();
    // As a proxy from before deltas: Hello lists no features.
    let old_client = ProxyBuilder::loopback("old-client")
        .label("app", "client")
        .control(&url)
        .outbound_port(TARGET)
        .env("TRELLIS_DISCOVERY_PROTOCOL", "1")
        .start()
        .unwrap();
    let addr_a = a.ready.inbound;
    let deltas_before = wait_held(&client, &[addr_a]);
    wait_held(&old_client, &[addr_a]);
    send(&client, 1, "first");
    send(&old_client, 1, "first");
    let pushed_before = control_metrics(&control).sum("trellis_control_endpoint_deltas_total", &[]);

    // B joins: both clients hold both endpoints and spread requests over them.
    let mut b = server("echo-b", &url, echo_b.addr);
    let addr_b = b.ready.inbound;
    let deltas_joined = wait_held(&client, &[addr_a, addr_b]);
    wait_held(&old_client, &[addr_a, addr_b]);
    // At least one: on a loaded machine A may also miss its expiry and come back.
    assert!(
        deltas_joined > deltas_before,
        "the join reached the client as an endpoint delta ({deltas_before} -> {deltas_joined})"
    );
    let (a0, b0) = (echo_a.requests(), echo_b.requests());
    send(&client, 20, "joined");
    send(&old_client, 20, "joined");
    let (a1, b1) = (echo_a.requests() - a0, echo_b.requests() - b0);
    assert_eq!(a1 + b1, 40);
    assert!(
        a1 >= 10 && b1 >= 10,
        "round robin over two endpoints: {a1} to A, {b1} to B"
    );

    // B stops and expires: both clients drop it, and no request reaches it any more.
    b.process().terminate(Duration::from_secs(5));
    let deltas_left = wait_held(&client, &[addr_a]);
    wait_held(&old_client, &[addr_a]);
    assert!(
        deltas_left > deltas_joined,
        "the leave reached the client as an endpoint delta ({deltas_joined} -> {deltas_left})"
    );
    let (a0, b0) = (echo_a.requests(), echo_b.requests());
    send(&client, 20, "left");
    send(&old_client, 20, "left");
    assert_eq!(
        (echo_a.requests() - a0, echo_b.requests() - b0),
        (40, 0),
        "every request after the leave reached A"
    );

    // The old client was sent whole destinations: it applied no delta.
    assert_eq!(held(&old_client).unwrap().1, 0);
    let metrics = control_metrics(&control);
    let pushed = metrics.sum("trellis_control_endpoint_deltas_total", &[]) - pushed_before;
    assert!(
        pushed >= 2.0,
        "the control plane counted {pushed} deltas for a join and a leave"
    );
    assert_eq!(
        metrics.sum("trellis_control_nacks_total", &[]),
        0.0,
        "no proxy refused an update"
    );
}
