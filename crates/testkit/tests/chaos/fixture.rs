//! The pods every mesh scenario starts from: a node with `trellis-control` on its bridge, a
//! Service `echo` (a virtual clusterIP) whose endpoints are server pods (echo app + sidecar),
//! and a client pod whose sidecar captures the load.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use trellis_testkit::load::{self, Load, LoadReport, LoadSpec};
use trellis_testkit::mesh::{config_dir, service_yaml_with_cluster_ip, write_config};
use trellis_testkit::netns::PROXY_UID;
use trellis_testkit::{ControlPlane, ManagedProcess, Node, Pod, Proxy, ProxyBuilder, wait};

pub const CONVERGE: Duration = Duration::from_secs(30);
/// The Service `echo`'s virtual address (198.18.0.0/24 is the tests' own range).
pub const ECHO_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
/// The app's port in every server pod.
pub const APP_PORT: u16 = 8080;
/// The control plane's discovery port on the node's bridge (a namespace of the test's own, so a
/// fixed port cannot collide).
const DISCOVERY_PORT: u16 = 15010;

/// The steady load of the mesh scenarios, requests per second: the 1,000, which the
/// debug binaries of a whole mesh (client sidecar, server sidecars, control plane, apps, the
/// load generator) held in three whole-suite runs on a 2-core machine with other builds
/// running beside them (docs/reliability.md). `TRELLIS_CHAOS_RPS` lowers it for a slower
/// machine.
pub fn mesh_rate() -> u32 {
    std::env::var("TRELLIS_CHAOS_RPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// Prints a figure line for docs/reliability.md, straight to the stderr handle so the test
/// harness does not swallow it (nextest shows it with `--no-capture` or `--success-output`).
pub fn figure(scenario: &str, numbers: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "chaos figure: {scenario}: {numbers}");
}

/// One server pod: the echo app and its sidecar.
pub struct Server {
    pub proxy: Proxy,
    pub app: ManagedProcess,
    pub pod: Pod,
}

/// The running pods. Fields drop in declaration order: proxies and apps before their pods,
/// pods before the node.
pub struct PodMesh {
    pub client: Proxy,
    pub servers: Vec<Server>,
    pub client_pod: Pod,
    pub control: ControlPlane,
    pub config: tempfile::TempDir,
    pub node: Node,
}

/// How to build a [`PodMesh`].
#[derive(Default)]
pub struct PodMeshSpec<'a> {
    pub servers: usize,
    /// Extra files for the control plane's config directory.
    pub config: Vec<(&'a str, String)>,
    pub control_args: Vec<&'a str>,
    pub server_args: Vec<&'a str>,
}

impl PodMesh {
    pub fn start(spec: PodMeshSpec<'_>) -> Self {
        let node = Node::new().unwrap();
        let mut files = vec![(
            "echo.yaml".to_string(),
            service_yaml_with_cluster_ip(
                "echo",
                "default",
                IpAddr::V4(ECHO_VIP),
                80,
                APP_PORT,
                "echo",
            ),
        )];
        files.extend(spec.config.into_iter().map(|(n, t)| (n.to_string(), t)));
        let config = config_dir(&files).unwrap();
        let control = ControlPlane::start_with(
            config.path(),
            discovery(&node),
            Some(node.name()),
            &spec.control_args,
        )
        .unwrap();
        let url = control.url();
        let mut servers = Vec::new();
        for i in 0..spec.servers {
            let pod = node.pod().unwrap();
            let (app, _) = pod.start_echo(Some(APP_PORT), None).unwrap();
            pod.init_iptables(&[]).unwrap();
            let mut b = ProxyBuilder::new(&format!("echo-{i}"))
                .label("app", "echo")
                .service_account("echo")
                .control(&url)
                .advertise(SocketAddr::new(pod.ip().into(), 15006))
                .app_port(APP_PORT);
            for a in &spec.server_args {
                b = b.arg(*a);
            }
            let proxy = b.in_pod(&pod, PROXY_UID).start().unwrap();
            servers.push(Server { proxy, app, pod });
        }
        let client_pod = node.pod().unwrap();
        client_pod.init_iptables(&[]).unwrap();
        let client = ProxyBuilder::new("client-0")
            .label("app", "client")
            .service_account("client")
            .control(&url)
            .in_pod(&client_pod, PROXY_UID)
            .start()
            .unwrap();
        let mesh = Self {
            client,
            servers,
            client_pod,
            control,
            config,
            node,
        };
        for p in mesh.proxies() {
            p.wait_ready(CONVERGE).unwrap();
        }
        // Routed to every server: each has answered at least once through the client sidecar.
        wait::until(CONVERGE, || {
            let code = curl_code(&mesh.client_pod, &echo_url("/converge"));
            if code != 200 {
                return Err(format!("curl to the echo VIP answered {code}"));
            }
            let silent: Vec<_> = mesh
                .servers
                .iter()
                .filter(|s| inbound_requests(&s.proxy) < 1.0)
                .map(|s| s.proxy.name.clone())
                .collect();
            if silent.is_empty() {
                Ok(())
            } else {
                Err(format!("no request reached {silent:?} yet"))
            }
        })
        .unwrap();
        mesh
    }

    pub fn proxies(&self) -> impl Iterator<Item = &Proxy> {
        std::iter::once(&self.client).chain(self.servers.iter().map(|s| &s.proxy))
    }

    /// Starts the steady load from the client pod to the echo Service.
    pub fn load(&self, rate: u32, duration: Duration) -> Load {
        Load::in_netns(
            self.client_pod.name(),
            &LoadSpec::new(echo_url("/load"), rate, duration),
        )
        .unwrap()
    }

    /// Waits until the servers together have answered `n` more requests than `before`: the load
    /// is flowing.
    pub fn wait_flowing(&self, before: f64, n: f64) {
        wait::until(CONVERGE, || {
            let now = self.server_requests();
            if now - before >= n {
                Ok(())
            } else {
                Err(format!("{} load requests answered so far", now - before))
            }
        })
        .unwrap();
    }

    /// Inbound requests over every server sidecar still running.
    pub fn server_requests(&self) -> f64 {
        self.servers
            .iter()
            .map(|s| inbound_requests(&s.proxy))
            .sum()
    }

    /// Restarts the control plane where the proxies expect it (after it was killed).
    pub fn restart_control(&mut self, extra: &[&str]) {
        self.control = ControlPlane::start_with(
            self.config.path(),
            discovery(&self.node),
            Some(self.node.name()),
            extra,
        )
        .unwrap();
    }

    /// Writes a config file atomically (rename), so the control plane never reads half of it.
    pub fn write_config(&self, name: &str, text: &str) {
        write_config(self.config.path(), name, text).unwrap();
    }

    /// `POST path` to the control plane's HTTP API (it listens on the node's loopback).
    pub fn control_post(&self, path: &str) -> (u16, String) {
        let out = trellis_testkit::tools::run_bounded(
            self.node.command("curl").args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "--data",
                "{}",
                &format!("http://{}{path}", self.control.ready.http),
            ]),
            Duration::from_secs(15),
        )
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or_default();
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

fn discovery(node: &Node) -> SocketAddr {
    SocketAddr::new(node.ip().into(), DISCOVERY_PORT)
}

pub fn echo_url(path: &str) -> String {
    format!("http://{ECHO_VIP}{path}")
}

/// curl from `pod` (as root, so captured by its sidecar): the HTTP code, 0 when it failed.
pub fn curl_code(pod: &Pod, url: &str) -> u16 {
    let out = pod
        .curl(None, &["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

pub fn inbound_requests(proxy: &Proxy) -> f64 {
    proxy
        .metrics()
        .sum("trellis_requests_total", &[("direction", "inbound")])
}

pub fn metric(proxy: &Proxy, name: &str) -> f64 {
    proxy.metrics().sum(name, &[])
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Samples a process' RSS (and fds) every `every` while `during` runs; returns what `during`
/// returned and the samples (bytes, fds).
pub fn sample_while<T>(
    pid: u32,
    every: Duration,
    during: impl FnOnce() -> T + Send,
) -> (T, Vec<(u64, usize)>)
where
    T: Send,
{
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples = Vec::new();
            // Bounded: `during` is bounded, and this stops when it returns.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let (Ok(rss), Ok(fds)) = (load::rss_bytes(pid), load::fd_count(pid)) {
                    samples.push((rss, fds));
                }
                let until = Instant::now() + every;
                while Instant::now() < until && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            samples
        });
        let value = during();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (value, sampler.join().unwrap())
    })
}

/// Asserts nothing failed and the mesh kept up with the rate (at least 95% of the planned
/// requests answered, and the last within 3 s of the planned end), naming the scenario.
pub fn assert_no_failures(scenario: &str, report: &LoadReport, rate: u32, duration: Duration) {
    let planned = (f64::from(rate) * duration.as_secs_f64()) as u64;
    assert_eq!(
        report.failed(),
        0,
        "{scenario}: requests failed: {}",
        report.summary()
    );
    assert!(
        report.ok * 100 >= planned * 95,
        "{scenario}: only {} of {planned} planned requests answered: {}",
        report.ok,
        report.summary()
    );
    assert!(
        Duration::from_millis(report.elapsed_ms) <= duration + Duration::from_secs(3),
        "{scenario}: the mesh did not keep up with {rate} rps: {}",
        report.summary()
    );
}
