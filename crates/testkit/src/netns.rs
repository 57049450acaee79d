//! Pods as network namespaces, so that interception is real: iptables REDIRECT written by
//! `trellis-proxy init`, `SO_ORIGINAL_DST` read by the proxy, unmodified clients.
//!
//! Layout: a [`Node`] is a network namespace holding a bridge (`br0`); each [`Pod`] is a network
//! namespace with `lo` up and an `eth0` veth whose peer sits on the node's bridge, with an
//! address from 198.18.0.0/24 (RFC 2544's benchmarking range, so it can never be a real host).
//! Nothing is created in the root namespace: a test cannot disturb the machine's own network,
//! and two tests running at once each have their own node. Names carry the test process' pid and
//! a counter, so concurrent test binaries never collide. Everything is deleted on drop.
//!
//! This needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN). See [`require_root`].

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::process::{ManagedProcess, ProcessError};
use crate::tools::run_bounded;
use crate::{bins, mesh::READY_TIMEOUT};

/// The environment variable that turns "not root" from a failure into a skip.
pub const SKIP_ENV: &str = "TRELLIS_SKIP_NETNS";
/// The uid proxies in pods run as (the `trellis-proxy init` default).
pub const PROXY_UID: u32 = 1337;
/// How long one `ip` command may take.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's address on its bridge; pods get .2 and up.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Whether network-namespace tests can run. As root: true. Otherwise, with
/// `TRELLIS_SKIP_NETNS=1`: prints that `test` was skipped and returns false. Otherwise panics
/// saying what is needed: a silent skip would let CI pass without running them.
pub fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        // Straight to the stderr handle, not eprintln!: the test harness captures the macros'
        // output of passing tests, and a skip must be visible.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: network-namespace tests need root ({SKIP_ENV}=1 is set)"
        );
        return false;
    }
    panic!(
        "{test} needs root (it creates network namespaces and iptables rules); run it as root, \
         e.g. via scripts/test.sh, or set {SKIP_ENV}=1 to skip network-namespace tests"
    );
}

fn unique_name(kind: &str) -> String {
    format!(
        "trellis-{}-{kind}{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// `ip netns exec <netns> <program>`: a command run inside the namespace. `ip` execs the program
/// in place, so the child's pid is the program's.
pub fn command(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns]).arg(program);
    c
}

/// Like [`command`], running the program as `uid` (and gid `uid`, no supplementary groups).
///
/// The uid switch goes through `setpriv` inside the namespace rather than
/// `std::os::unix::process::CommandExt::uid`: the latter switches before `ip` runs, and `ip`
/// then lacks the privilege to enter the namespace. `setpriv` execs in place too.
pub fn command_as(netns: &str, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = command(netns, "setpriv");
    c.args([
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".to_string(),
    ])
    .arg("--")
    .arg(program);
    c
}

/// Runs `command`, failing with its stderr unless it exits 0.
fn run(command: &mut Command) -> Result<Output, String> {
    let out = run_bounded(command, IP_TIMEOUT)?;
    if !out.status.success() {
        return Err(format!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out)
}

fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// Kills every process in the namespace (SIGKILL: this is clean-up after the orderly stop
/// already had its chance) and deletes it.
fn delete_netns(name: &str) {
    if let Ok(out) = run_bounded(Command::new("ip").args(["netns", "pids", name]), IP_TIMEOUT) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Some(pid) = pid
                .parse::<i32>()
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
    if let Err(e) = ip(&["netns", "del", name]) {
        eprintln!("cleaning up network namespace {name}: {e}");
    }
}

/// The "node": a namespace with the bridge pods attach to.
#[derive(Debug)]
pub struct Node {
    name: String,
    next_host: AtomicU32,
}

impl Node {
    /// Creates the node namespace and its bridge. Call [`require_root`] first.
    pub fn new() -> Result<Self, String> {
        let name = unique_name("node");
        ip(&["netns", "add", &name])?;
        // From here on, Drop deletes the namespace even if a later step fails.
        let node = Self {
            name,
            next_host: AtomicU32::new(2),
        };
        ip(&["-n", &node.name, "link", "set", "lo", "up"])?;
        ip(&["-n", &node.name, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &node.name, "link", "set", "br0", "up"])?;
        ip(&[
            "-n",
            &node.name,
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "br0",
        ])?;
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's own address on the bridge (for processes run in the node, like a control
    /// plane the pods' proxies connect to).
    pub fn ip(&self) -> Ipv4Addr {
        NODE_IP
    }

    /// A command run inside the node's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command(&self.name, program)
    }

    /// Creates a pod attached to this node's bridge, with the next free address.
    pub fn pod(&self) -> Result<Pod, String> {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        let host = u8::try_from(host)
            .ok()
            .filter(|h| *h < 255)
            .ok_or("this node has no pod addresses left in 198.18.0.0/24")?;
        let addr = Ipv4Addr::new(198, 18, 0, host);
        let name = unique_name("pod");
        ip(&["netns", "add", &name])?;
        let pod = Pod { name, ip: addr };
        // The node-side end is named after the host number: unique on this node, and short
        // enough for the 15-byte interface name limit.
        let peer = format!("veth{host}");
        ip(&[
            "-n", &pod.name, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns",
            &self.name,
        ])?;
        ip(&["-n", &self.name, "link", "set", &peer, "master", "br0"])?;
        ip(&["-n", &self.name, "link", "set", &peer, "up"])?;
        ip(&[
            "-n",
            &pod.name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &pod.name, "link", "set", "eth0", "up"])?;
        ip(&["-n", &pod.name, "link", "set", "lo", "up"])?;
        Ok(pod)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

/// The app's addresses, as `trellis-testkit-echo --ready-file` reports them.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct EchoReady {
    pub pid: u32,
    pub http: Option<std::net::SocketAddr>,
    pub tcp: Option<std::net::SocketAddr>,
}

/// A pod: a network namespace on a [`Node`]'s bridge. Declare it after its node, so it is
/// dropped first.
#[derive(Debug)]
pub struct Pod {
    name: String,
    ip: Ipv4Addr,
}

impl Pod {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod's address on the node's bridge.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// A command run inside the pod (as root).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command(&self.name, program)
    }

    /// A command run inside the pod as `uid`.
    pub fn command_as(&self, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_as(&self.name, uid, program)
    }

    /// Runs `trellis-proxy init` with `args` in the pod, failing with its output unless it
    /// succeeds.
    pub fn init_iptables(&self, args: &[&str]) -> Result<String, String> {
        let mut c = self.command(bins::bin("trellis-proxy"));
        c.arg("init").args(args);
        run(&mut c).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// The pod's nat table, as `iptables-save` prints it.
    pub fn nat_rules(&self) -> Result<String, String> {
        run(self.command("iptables-save").args(["-t", "nat"]))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Starts the testkit's echo server in the pod (as root, like an app that knows nothing of
    /// the mesh), listening on all the pod's addresses.
    pub fn start_echo(
        &self,
        http_port: Option<u16>,
        tcp_port: Option<u16>,
    ) -> Result<(ManagedProcess, EchoReady), ProcessError> {
        let dir = tempfile::Builder::new()
            .prefix("trellis-echo-")
            .tempdir()
            .map_err(|source| ProcessError::Io {
                what: "echo ready directory".into(),
                source,
            })?;
        let ready_file = dir.path().join("echo.json");
        let mut c = self.command(bins::bin("trellis-testkit-echo"));
        if let Some(port) = http_port {
            c.args(["--http", &format!("0.0.0.0:{port}")]);
        }
        if let Some(port) = tcp_port {
            c.args(["--tcp", &format!("0.0.0.0:{port}")]);
        }
        c.arg("--ready-file").arg(&ready_file);
        let mut process = ManagedProcess::spawn(format!("echo in {}", self.name), c)?;
        let ready = process.wait_ready_file(&ready_file, READY_TIMEOUT)?;
        Ok((process, ready))
    }

    /// Runs `curl` in the pod (as `uid`, or root) with `args` and a bounded time; returns its
    /// output whatever its exit status.
    pub fn curl(&self, uid: Option<u32>, args: &[&str]) -> Result<Output, String> {
        let mut c = match uid {
            Some(uid) => self.command_as(uid, "curl"),
            None => self.command("curl"),
        };
        c.args(["-sS", "--max-time", "10"]).args(args);
        run_bounded(&mut c, Duration::from_secs(15))
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}
