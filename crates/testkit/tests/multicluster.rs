//! Two clusters, each a network namespace with its own address (198.18.7.1 and 198.18.7.2) and
//! a veth pair between them, each with its own `trellis-control` (`--ca-dir` issuers signed by
//! one shared root), an east-west gateway (`trellis-proxy --mode gateway --east-west`) and the
//! Service `echo`, exported with a `ServiceExport`; `trellis multicluster link` writes each
//! cluster's Link to the other. A client in A calls echo through its sidecar's outbound port.
//!
//! - failover: all local while A's echo is up; A's echo stopped under a steady load: the
//!   requests go to B's echo through B's gateway with at most 1% failing; A's echo started
//!   again: back to local.
//! - identities: with no echo in A, B's AuthorizationPolicy naming another identity denies
//!   A's client (403), and one naming A's client's SPIFFE ID lets it through: the mTLS is end
//!   to end, the gateway never terminates it. Meanwhile `hello`, a second service behind the
//!   same gateway without a policy, answers 200: the client does not reuse a connection routed
//!   to one service for another.
//!
//! Needs root (network namespaces).

// Test helpers outside #[test] functions fail the test by panicking, as the tests themselves do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use trellis_testkit::load::{Load, LoadSpec};
use trellis_testkit::mesh::{config_dir, service_yaml, write_config};
use trellis_testkit::netns::{EchoReady, require_root};
use trellis_testkit::process::ManagedProcess;
use trellis_testkit::tools::run_bounded;
use trellis_testkit::{ControlPlane, Proxy, ProxyBuilder, bins, wait};

const CONVERGE: Duration = Duration::from_secs(30);
const IP_A: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 2);
const EAST_WEST_PORT: u16 = 15443;
const CLIENT_ID: &str = "cluster.local/ns/default/sa/client";

/// A network namespace, deleted (with whatever still runs in it) on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        // Unique per test too: the tests of this file run in one process at once.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("trellis-{}-mc{n}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Self(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = run_bounded(
            Command::new("ip").args(["netns", "pids", &self.0]),
            Duration::from_secs(10),
        ) {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = run_bounded(
            Command::new("ip").args(["netns", "del", &self.0]),
            Duration::from_secs(10),
        );
    }
}

fn ip(args: &[&str]) {
    let out = run_bounded(Command::new("ip").args(args), Duration::from_secs(10)).unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two cluster namespaces joined by a veth pair.
fn two_clusters() -> (Netns, Netns) {
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    ip(&[
        "-n", &a.0, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b.0,
    ]);
    for (ns, addr) in [(&a, IP_A), (&b, IP_B)] {
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
    }
    (a, b)
}

fn service_export(name: &str) -> String {
    format!(
        "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {{name: {name}, namespace: default}}\n"
    )
}

/// One cluster's control plane, east-west gateway and config directory.
struct Cluster {
    ns: Netns,
    ip: Ipv4Addr,
    config: tempfile::TempDir,
    control: ControlPlane,
    _gateway: Proxy,
}

impl Cluster {
    fn start(ns: Netns, ip: Ipv4Addr, ca_dir: &Path) -> Self {
        let config = config_dir(&[
            (
                "echo.yaml",
                service_yaml("echo", "default", 8080, 8080, "echo"),
            ),
            (
                "hello.yaml",
                service_yaml("hello", "default", 8080, 8080, "hello"),
            ),
            (
                "export.yaml",
                format!("{}---\n{}", service_export("echo"), service_export("hello")),
            ),
        ])
        .unwrap();
        let control = ControlPlane::start_with(
            config.path(),
            SocketAddr::new(ip.into(), 15010),
            Some(&ns.0),
            &[
                "--http",
                &format!("{ip}:15014"),
                "--ca-dir",
                ca_dir.to_str().unwrap(),
                // A stopped workload leaves its service's endpoints within the test.
                "--heartbeat-interval",
                "1s",
                "--workload-expiry",
                "3s",
            ],
        )
        .unwrap();
        let gateway = ProxyBuilder::new("eastwestgateway")
            .namespace("istio-system")
            .service_account("eastwestgateway")
            .label("istio", "eastwestgateway")
            .control(&control.url())
            .inbound("127.0.0.1:0")
            .outbound("none")
            .admin("127.0.0.1:0")
            .arg("--mode")
            .arg("gateway")
            .arg("--east-west")
            .arg(format!("{ip}:{EAST_WEST_PORT}"))
            .in_netns(&ns.0, 0)
            .start()
            .unwrap();
        Self {
            ns,
            ip,
            config,
            control,
            _gateway: gateway,
        }
    }

    /// `trellis multicluster link` into this cluster's config directory, towards `remote`.
    fn link_to(&self, name: &str, remote: &Cluster) {
        let out = run_bounded(
            Command::new(bins::bin("trellis")).args([
                "multicluster",
                "link",
                "--cluster",
                name,
                "--control-plane",
                &format!("http://{}:15014", remote.ip),
                "--gateway",
                &format!("{}:{EAST_WEST_PORT}", remote.ip),
                "--refresh-interval",
                "500ms",
                "--config-dir",
                self.config.path().to_str().unwrap(),
            ]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(
            out.status.success(),
            "trellis multicluster link: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An echo app and its sidecar (service account `echo`), inbound on the cluster's address.
    fn start_echo(&self, name: &str) -> (ManagedProcess, Proxy) {
        self.start_app(name, "echo", 15006)
    }

    /// The echo server as workload `name` of Service `app` (label `app`, service account
    /// `app`), its sidecar's inbound on the cluster's address at `inbound_port`.
    fn start_app(&self, name: &str, app: &str, inbound_port: u16) -> (ManagedProcess, Proxy) {
        let dir = tempfile::tempdir().unwrap();
        let ready_file = dir.path().join("echo.json");
        let mut c = trellis_testkit::netns::command(&self.ns.0, bins::bin("trellis-testkit-echo"));
        c.args(["--http", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready_file);
        let mut server = ManagedProcess::spawn(format!("echo {name}"), c).unwrap();
        let ready: EchoReady = server
            .wait_ready_file(&ready_file, Duration::from_secs(30))
            .unwrap();
        let proxy = ProxyBuilder::new(name)
            .service_account(app)
            .label("app", app)
            .control(&self.control.url())
            .inbound(&format!("{}:{inbound_port}", self.ip))
            .app(ready.http.unwrap())
            .app_port(8080)
            .outbound("none")
            .admin("127.0.0.1:0")
            .in_netns(&self.ns.0, 0)
            .start()
            .unwrap();
        proxy.wait_ready(CONVERGE).unwrap();
        (server, proxy)
    }

    /// The client's sidecar, with echo at an explicit outbound port.
    fn start_client(&self) -> Proxy {
        let proxy = ProxyBuilder::new("client")
            .service_account("client")
            .label("app", "client")
            .control(&self.control.url())
            .inbound("127.0.0.1:0")
            .outbound("none")
            .outbound_port("echo.default:8080")
            .outbound_port("hello.default:8080")
            .admin("127.0.0.1:0")
            .in_netns(&self.ns.0, 0)
            .start()
            .unwrap();
        proxy.wait_ready(CONVERGE).unwrap();
        proxy
    }

    /// `GET url` with curl in this cluster: the status code, 0 when no answer came.
    fn curl_code(&self, url: &str) -> u16 {
        let out = run_bounded(
            trellis_testkit::netns::command(&self.ns.0, "curl").args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                url,
            ]),
            Duration::from_secs(10),
        )
        .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// How many endpoints of echo:8080 this cluster's control plane gives, remote ones apart.
    fn echo_endpoints(&self) -> (usize, usize) {
        let out = run_bounded(
            trellis_testkit::netns::command(&self.ns.0, "curl").args([
                "-sS",
                "--max-time",
                "5",
                &format!(
                    "http://{}/api/v1/destination?target=echo.default:8080",
                    self.control.ready.http
                ),
            ]),
            Duration::from_secs(10),
        )
        .unwrap();
        let dest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let endpoints = dest["endpoints"].as_array().cloned().unwrap_or_default();
        let remote = endpoints.iter().filter(|e| !e["remote"].is_null()).count();
        (endpoints.len() - remote, remote)
    }
}

/// Shared trust (one root, an issuer per cluster), two clusters linked both ways.
fn linked_clusters(scratch: &Path) -> (Cluster, Cluster) {
    let ca = trellis_testkit::certs::shared_root_ca_dirs(scratch, &["a", "b"]).unwrap();
    let (ns_a, ns_b) = two_clusters();
    let a = Cluster::start(ns_a, IP_A, &ca[0]);
    let b = Cluster::start(ns_b, IP_B, &ca[1]);
    a.link_to("b", &b);
    b.link_to("a", &a);
    (a, b)
}

fn inbound_requests(proxy: &Proxy) -> f64 {
    proxy
        .metrics()
        .sum("trellis_requests_total", &[("direction", "inbound")])
}

fn run_load(cluster: &Cluster, url: &str, rate: u32, duration: Duration) -> Load {
    Load::in_netns(&cluster.ns.0, &LoadSpec::new(url, rate, duration)).unwrap()
}

#[test]
fn multicluster_failover_to_the_linked_cluster_and_back() {
    if !require_root("multicluster_failover_to_the_linked_cluster_and_back") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (a, b) = linked_clusters(scratch.path());
    let (mut echo_a_app, mut echo_a) = a.start_echo("echo-a");
    let (_echo_b_app, echo_b) = b.start_echo("echo-b");
    let client = a.start_client();
    let url = format!("http://{}/", client.outbound_port("echo.default:8080"));

    // A knows its own echo and B's (through B's gateway); B's gateway forwards to B's only.
    wait::until(CONVERGE, || match a.echo_endpoints() {
        (1, 1) => Ok(()),
        other => Err(format!("A's echo endpoints (local, remote): {other:?}")),
    })
    .unwrap();

    // Healthy local endpoint: everything stays in A.
    let before_b = inbound_requests(&echo_b);
    let report = run_load(&a, &url, 100, Duration::from_secs(1))
        .finish()
        .unwrap();
    assert_eq!(report.failed(), 0, "{}", report.summary());
    assert!(report.ok >= 90, "{}", report.summary());
    wait::until(Duration::from_secs(5), || {
        let got = inbound_requests(&echo_a);
        (got >= report.ok as f64)
            .then_some(())
            .ok_or(format!("echo-a counted {got} of {}", report.ok))
    })
    .unwrap();
    assert_eq!(inbound_requests(&echo_b), before_b, "nothing went to B");

    // Stop A's echo (its sidecar drains, then the app goes) under a steady load.
    let before_a = inbound_requests(&echo_a);
    let load = run_load(&a, &url, 100, Duration::from_secs(8));
    // Traffic flowing to A's echo before the stop (a second's worth at 100/s), so that the
    // switch happens under load.
    wait::until(Duration::from_secs(5), || {
        let got = inbound_requests(&echo_a) - before_a;
        (got >= 100.0)
            .then_some(())
            .ok_or(format!("echo-a counted {got} of the load so far"))
    })
    .unwrap();
    echo_a.process().terminate(Duration::from_secs(10));
    echo_a_app.terminate(Duration::from_secs(5));
    let report = load.finish().unwrap();
    eprintln!("during the switch: {}", report.summary());
    let failed = report.failed();
    assert!(report.sent >= 600, "{}", report.summary());
    assert!(
        failed as f64 <= report.sent as f64 * 0.01,
        "more than 1% failed during the switch: {}",
        report.summary()
    );
    let to_b = inbound_requests(&echo_b) - before_b;
    assert!(
        to_b >= 300.0,
        "B should have served the requests after the switch: {to_b}; {}",
        report.summary()
    );
    // B saw A's client by its own SPIFFE ID: the gateway did not terminate the mTLS.
    let from_client = echo_b.metrics().sum(
        "trellis_requests_total",
        &[
            ("direction", "inbound"),
            ("source_identity", &format!("spiffe://{CLIENT_ID}")),
            ("tls", "true"),
        ],
    );
    assert!(
        from_client >= to_b,
        "{from_client} of {to_b} carried A's client identity"
    );

    // A's echo back: traffic returns to A.
    let (_echo_a_app, echo_a) = a.start_echo("echo-a");
    wait::until(CONVERGE, || match a.echo_endpoints() {
        (1, 1) => Ok(()),
        other => Err(format!("A's echo endpoints (local, remote): {other:?}")),
    })
    .unwrap();
    // Once the client has heard of it: a request counted at echo-a.
    wait::until(CONVERGE, || {
        let code = a.curl_code(&url);
        (code == 200 && inbound_requests(&echo_a) >= 1.0)
            .then_some(())
            .ok_or(format!("not back in A yet (last code {code})"))
    })
    .unwrap();
    let b_now = inbound_requests(&echo_b);
    let a_now = inbound_requests(&echo_a);
    let report = run_load(&a, &url, 100, Duration::from_secs(1))
        .finish()
        .unwrap();
    assert_eq!(report.failed(), 0, "{}", report.summary());
    wait::until(Duration::from_secs(5), || {
        let got = inbound_requests(&echo_a) - a_now;
        (got >= report.ok as f64)
            .then_some(())
            .ok_or(format!("echo-a counted {got} of {}", report.ok))
    })
    .unwrap();
    assert_eq!(
        inbound_requests(&echo_b),
        b_now,
        "back to local: nothing to B"
    );
}

fn allow_only(principal: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: echo, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: echo}}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"{principal}\"]\n"
    )
}

#[test]
fn multicluster_authorization_in_the_remote_cluster_sees_the_callers_identity() {
    if !require_root("multicluster_authorization_in_the_remote_cluster_sees_the_callers_identity") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (a, b) = linked_clusters(scratch.path());
    // echo and hello run in B only: A's client reaches them through B's gateway.
    let (_echo_b_app, _echo_b) = b.start_echo("echo-b");
    let (_hello_b_app, _hello_b) = b.start_app("hello-b", "hello", 15007);
    let client = a.start_client();
    let url = format!("http://{}/", client.outbound_port("echo.default:8080"));
    let hello_url = format!("http://{}/", client.outbound_port("hello.default:8080"));
    wait::until(CONVERGE, || match a.curl_code(&hello_url) {
        200 => Ok(()),
        code => Err(format!("hello in B through the gateway: {code}")),
    })
    .unwrap();
    wait::until(CONVERGE, || match a.curl_code(&url) {
        200 => Ok(()),
        code => Err(format!("echo in B through the gateway: {code}")),
    })
    .unwrap();

    write_config(
        b.config.path(),
        "authz.yaml",
        &allow_only("cluster.local/ns/default/sa/other"),
    )
    .unwrap();
    wait::until(CONVERGE, || match a.curl_code(&url) {
        403 => Ok(()),
        code => Err(format!("a policy for another identity: {code}")),
    })
    .unwrap();
    // hello, behind the same gateway and with no policy, still answers: connections through
    // one gateway to two services are kept apart (each was routed by its own SNI).
    for _ in 0..3 {
        assert_eq!(a.curl_code(&hello_url), 200, "hello through B's gateway");
        assert_eq!(a.curl_code(&url), 403, "echo through B's gateway");
    }

    write_config(b.config.path(), "authz.yaml", &allow_only(CLIENT_ID)).unwrap();
    wait::until(CONVERGE, || match a.curl_code(&url) {
        200 => Ok(()),
        code => Err(format!("a policy naming A's client: {code}")),
    })
    .unwrap();
    let codes: Vec<u16> = (0..5).map(|_| a.curl_code(&url)).collect();
    assert_eq!(codes, [200; 5]);
}
