//! The Trellis processes under test: `trellis-control` and `trellis-proxy`, started the way a
//! user starts them (flags and a `--ready-file`), and talked to through their admin endpoints.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;

use crate::metrics::Metrics;
use crate::netns::Pod;
use crate::process::{ManagedProcess, ProcessError};
use crate::{bins, tools, wait};

/// How long a binary gets to write its ready file. Generous: on a loaded 2-core CI machine a
/// debug build can take a few seconds to start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What `trellis-control --ready-file` holds.
#[derive(Clone, Debug, Deserialize)]
pub struct ControlReady {
    pub pid: u32,
    pub discovery: SocketAddr,
    pub http: SocketAddr,
}

/// A running `trellis-control`, stopped when dropped.
#[derive(Debug)]
pub struct ControlPlane {
    pub ready: ControlReady,
    process: ManagedProcess,
    _ready_dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts the control plane reading `config_dir`, with every listener on a free loopback port.
    pub fn start(config_dir: &Path) -> Result<Self, ProcessError> {
        Self::start_at(config_dir, LOOPBACK_ANY)
    }

    /// Starts it with discovery on `discovery` (to restart it where proxies expect it).
    pub fn start_at(config_dir: &Path, discovery: SocketAddr) -> Result<Self, ProcessError> {
        Self::start_in(config_dir, discovery, None)
    }

    /// Starts it inside network namespace `netns` (a [`crate::Node`]'s), where pods reach it.
    pub fn start_in(
        config_dir: &Path,
        discovery: SocketAddr,
        netns: Option<&str>,
    ) -> Result<Self, ProcessError> {
        Self::start_with(config_dir, discovery, netns, &[])
    }

    /// [`Self::start_in`] with extra flags (`--cert-ttl 6s`, `--require-join-token`, ...;
    /// `--http ADDR` replaces the default free loopback port).
    pub fn start_with(
        config_dir: &Path,
        discovery: SocketAddr,
        netns: Option<&str>,
        extra: &[&str],
    ) -> Result<Self, ProcessError> {
        let ready_dir = ready_dir()?;
        let ready_file = ready_dir.path().join("control.json");
        let binary = bins::bin("trellis-control");
        let mut command = match netns {
            Some(ns) => crate::netns::command(ns, &binary),
            None => Command::new(&binary),
        };
        command
            .arg("--config-dir")
            .arg(config_dir)
            .arg("--discovery")
            .arg(discovery.to_string())
            // Unless the caller places it (`--http` may be given once).
            .args(
                (!extra.contains(&"--http"))
                    .then_some(["--http", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            .arg("--ready-file")
            .arg(&ready_file)
            .args(extra)
            .env("RUST_LOG", log_filter());
        let mut process = ManagedProcess::spawn("trellis-control", command)?;
        let ready = process.wait_ready_file(&ready_file, READY_TIMEOUT)?;
        Ok(Self {
            ready,
            process,
            _ready_dir: ready_dir,
        })
    }

    /// The `--control` value proxies are given.
    pub fn url(&self) -> String {
        format!("http://{}", self.ready.discovery)
    }

    pub fn process(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }
}

/// 127.0.0.1:0: loopback, any free port.
const LOOPBACK_ANY: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    0,
));

/// A directory of mesh configuration (Kubernetes YAML) for the control plane to read.
pub fn config_dir<N: AsRef<Path>, T: AsRef<[u8]>>(
    files: &[(N, T)],
) -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("trellis-config-")
        .tempdir()?;
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text)?;
    }
    Ok(dir)
}

/// Writes `name` in a config directory the control plane watches, atomically (write, then
/// rename), so the control plane never reads half a file.
pub fn write_config(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// A Kubernetes Service selecting pods labelled `app: <app>`, with one TCP port.
pub fn service_yaml(name: &str, namespace: &str, port: u16, target_port: u16, app: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  selector:
    app: {app}
  ports:
  - name: port-{port}
    protocol: TCP
    port: {port}
    targetPort: {target_port}
"
    )
}

/// Like [`service_yaml`], with a virtual `clusterIP` that proxies resolve captured traffic by.
pub fn service_yaml_with_cluster_ip(
    name: &str,
    namespace: &str,
    cluster_ip: std::net::IpAddr,
    port: u16,
    target_port: u16,
    app: &str,
) -> String {
    service_yaml(name, namespace, port, target_port, app).replacen(
        "spec:\n",
        &format!("spec:\n  clusterIP: {cluster_ip}\n"),
        1,
    )
}

/// What `trellis-proxy --ready-file` holds.
#[derive(Clone, Debug, Deserialize)]
pub struct ProxyReady {
    pub pid: u32,
    pub inbound: SocketAddr,
    pub outbound: Option<SocketAddr>,
    #[serde(default)]
    pub outbound_ports: BTreeMap<String, SocketAddr>,
    pub admin: SocketAddr,
}

/// Flags for one `trellis-proxy`. Only the flags set are passed, so the proxy's own defaults
/// apply otherwise (which is what a pod wants: 15001, 15006, 15020).
#[derive(Clone, Debug)]
pub struct ProxyBuilder {
    name: String,
    args: Vec<OsString>,
    /// Extra environment variables (`SSL_CERT_FILE`, ...).
    env: Vec<(OsString, OsString)>,
    pod: Option<(String, u32)>,
}

impl ProxyBuilder {
    /// A proxy for workload `name` in namespace `default`, with nothing else set.
    pub fn new(name: &str) -> Self {
        let mut b = Self {
            name: name.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            pod: None,
        };
        b.args.extend([
            "--workload".into(),
            name.into(),
            "--namespace".into(),
            "default".into(),
        ]);
        b
    }

    /// A proxy with every listener on a free loopback port and no transparent outbound: what
    /// tests outside network namespaces use (they cannot redirect with iptables).
    pub fn loopback(name: &str) -> Self {
        Self::new(name)
            .inbound("127.0.0.1:0")
            .admin("127.0.0.1:0")
            .outbound("none")
    }

    fn flag(mut self, flag: &str, value: impl Into<OsString>) -> Self {
        self.args.push(flag.into());
        self.args.push(value.into());
        self
    }

    /// Replaces `--namespace` (given once by [`Self::new`]).
    pub fn namespace(mut self, ns: &str) -> Self {
        if let Some(i) = self.args.iter().position(|a| a == "--namespace") {
            self.args[i + 1] = ns.into();
        }
        self
    }
    pub fn service_account(self, sa: &str) -> Self {
        self.flag("--service-account", sa)
    }
    pub fn label(self, key: &str, value: &str) -> Self {
        self.flag("--label", format!("{key}={value}"))
    }
    pub fn control(self, url: &str) -> Self {
        self.flag("--control", url)
    }
    pub fn inbound(self, addr: &str) -> Self {
        self.flag("--inbound", addr)
    }
    pub fn app(self, addr: SocketAddr) -> Self {
        self.flag("--app", addr.to_string())
    }
    /// `--advertise`: where other proxies reach this one's inbound listener.
    pub fn advertise(self, addr: SocketAddr) -> Self {
        self.flag("--advertise", addr.to_string())
    }
    pub fn app_port(self, port: u16) -> Self {
        self.flag("--app-port", port.to_string())
    }
    /// `--outbound ADDR` or `--outbound none`.
    pub fn outbound(self, addr: &str) -> Self {
        self.flag("--outbound", addr)
    }
    /// `--outbound-port 127.0.0.1:0=<target>`; the bound address is in the ready file under the
    /// target's text.
    pub fn outbound_port(self, target: &str) -> Self {
        self.flag("--outbound-port", format!("127.0.0.1:0={target}"))
    }
    pub fn admin(self, addr: &str) -> Self {
        self.flag("--admin", addr)
    }
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }
    /// Sets an environment variable for the proxy process.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the proxy inside `pod`'s network namespace as `uid` (the uid that
    /// `trellis-proxy init` exempts from redirection).
    pub fn in_pod(mut self, pod: &Pod, uid: u32) -> Self {
        self.pod = Some((pod.name().to_string(), uid));
        self
    }

    /// Runs the proxy inside network namespace `netns` as `uid` (for a namespace that is not a
    /// [`Pod`], such as a whole cluster's in the multi-cluster tests).
    pub fn in_netns(mut self, netns: &str, uid: u32) -> Self {
        self.pod = Some((netns.to_string(), uid));
        self
    }

    /// Starts the proxy and waits for its ready file.
    pub fn start(self) -> Result<Proxy, ProcessError> {
        let dir = ready_dir()?;
        let ready_file = dir.path().join("proxy.json");
        let proxy = bins::bin("trellis-proxy");
        let mut command = match &self.pod {
            None => Command::new(&proxy),
            // `ip netns exec` and `setpriv` keep the environment, so RUST_LOG below reaches it.
            Some((netns, uid)) => crate::netns::command_as(netns, *uid, &proxy),
        };
        command
            .args(&self.args)
            .arg("--ready-file")
            .arg(&ready_file)
            .env("RUST_LOG", log_filter())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut process = ManagedProcess::spawn(format!("trellis-proxy {}", self.name), command)?;
        let ready = process.wait_ready_file(&ready_file, READY_TIMEOUT)?;
        Ok(Proxy {
            name: self.name,
            netns: self.pod.map(|(ns, _)| ns),
            ready,
            process,
            _ready_dir: dir,
        })
    }
}

/// A running `trellis-proxy`, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proxy {
    pub name: String,
    pub ready: ProxyReady,
    netns: Option<String>,
    process: ManagedProcess,
    _ready_dir: tempfile::TempDir,
}

impl Proxy {
    /// The local address of `--outbound-port ...=<target>`. Panics naming what the proxy did
    /// report, so a mismatch between flag and ready file is obvious.
    pub fn outbound_port(&self, target: &str) -> SocketAddr {
        match self.ready.outbound_ports.get(target) {
            Some(addr) => *addr,
            None => panic!(
                "proxy {} reported no outbound port for {target:?}; it reported {:?}",
                self.name, self.ready.outbound_ports
            ),
        }
    }

    /// `GET path` on the admin port; from inside the pod's namespace when the proxy runs in one
    /// (its admin port listens on the pod's loopback).
    pub fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        let addr = self.ready.admin;
        match &self.netns {
            None => tools::http_get(addr, path),
            Some(ns) => {
                let out = tools::run_bounded(
                    crate::netns::command(ns, "curl").args([
                        "-sS",
                        "--max-time",
                        "5",
                        "-w",
                        "\n%{http_code}",
                        &format!("http://{addr}{path}"),
                    ]),
                    Duration::from_secs(10),
                )?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
                let code = code.trim().parse().map_err(|_| {
                    format!(
                        "curl for admin {path} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?;
                Ok((code, body.to_string()))
            }
        }
    }

    /// A scrape of `/metrics`. Panics (with the proxy's log through Drop) if it cannot be read.
    pub fn metrics(&self) -> Metrics {
        match self.admin_get("/metrics") {
            Ok((200, text)) => Metrics::parse(&text),
            Ok((code, text)) => panic!("{}: /metrics answered {code}: {text}", self.name),
            Err(e) => panic!("{}: /metrics: {e}", self.name),
        }
    }

    /// Waits until `/ready` answers 200.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        wait::until(timeout, || match self.admin_get("/ready") {
            Ok((200, _)) => Ok(()),
            Ok((code, body)) => Err(format!("/ready answered {code}: {body}")),
            Err(e) => Err(e),
        })
    }

    /// The proxy's peak resident memory (VmHWM) in bytes.
    pub fn peak_rss_bytes(&self) -> Result<u64, String> {
        proc_status_kib(self.process.pid(), "VmHWM:").map(|kib| kib * 1024)
    }

    pub fn process(&mut self) -> &mut ManagedProcess {
        &mut self.process
    }
}

/// A `kB` field of `/proc/<pid>/status`.
pub fn proc_status_kib(pid: u32, field: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {field} in {path}"))
}

/// A directory for a ready file that a process running as another uid (the proxy in a pod) can
/// write into: ready files are written with write + rename, which needs the directory.
fn ready_dir() -> Result<tempfile::TempDir, ProcessError> {
    let log_err = |source| ProcessError::Io {
        what: "ready file directory".into(),
        source,
    };
    let dir = tempfile::Builder::new()
        .prefix("trellis-ready-")
        .tempdir()
        .map_err(log_err)?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
        .map_err(log_err)?;
    Ok(dir)
}

/// The processes' log filter: `$TRELLIS_TEST_LOG` if set, else info.
fn log_filter() -> String {
    std::env::var("TRELLIS_TEST_LOG").unwrap_or_else(|_| "info".to_string())
}

/// Where a test's scratch files go.
pub fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("trellis-test-").tempdir()
}
