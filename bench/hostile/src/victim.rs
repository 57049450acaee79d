//! The proxy under attack: a release `trellis-proxy` started through `taskset` on one CPU, one
//! runtime thread, in front of the echo backend, stopped when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use trellis_testkit::mesh::ProxyReady;
use trellis_testkit::{ManagedProcess, Metrics, tools, wait};

/// How long a proxy gets to write its ready file and answer `/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Victim {
    pub ready: ProxyReady,
    // Dropped before the ready directory, so the process is gone when its files go.
    _process: ManagedProcess,
    _dir: tempfile::TempDir,
}

impl Victim {
    /// `taskset -c CPU PROXY --threads 1 ... --app BACKEND EXTRA...`, waited for until ready.
    pub fn start(
        proxy: &Path,
        cpu: u32,
        backend: SocketAddr,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bench-hostile-")
            .tempdir()
            .context("ready file directory")?;
        let ready_file = dir.path().join("proxy.json");
        let mut command = Command::new("taskset");
        command
            .arg("-c")
            .arg(cpu.to_string())
            .arg(proxy)
            .args(["--workload", "victim", "--namespace", "default"])
            .args(["--inbound", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--outbound", "none", "--threads", "1"])
            .arg("--app")
            .arg(backend.to_string())
            .args(extra)
            .arg("--ready-file")
            .arg(&ready_file)
            // Warnings only: logging every refused attacker would measure the log, not the proxy.
            .env("RUST_LOG", "warn");
        let mut process =
            ManagedProcess::spawn(format!("trellis-proxy ({})", proxy.display()), command)
                .map_err(|e| anyhow!("{e}"))?;
        let ready: ProxyReady = process
            .wait_ready_file(&ready_file, READY_TIMEOUT)
            .map_err(|e| anyhow!("{e}"))?;
        let admin = ready.admin;
        wait::until(READY_TIMEOUT, || match tools::http_get(admin, "/ready") {
            Ok((200, _)) => Ok(()),
            Ok((code, body)) => Err(format!("/ready answered {code}: {body}")),
            Err(e) => Err(e),
        })
        .map_err(|e| anyhow!("trellis-proxy at {admin}: not ready: {e}"))?;
        Ok(Self {
            ready,
            _process: process,
            _dir: dir,
        })
    }

    /// The proxy's `/metrics`, parsed.
    pub fn metrics(&self) -> anyhow::Result<Metrics> {
        match tools::http_get(self.ready.admin, "/metrics") {
            Ok((200, text)) => Ok(Metrics::parse(&text)),
            Ok((code, text)) => bail!("trellis-proxy /metrics answered {code}: {text}"),
            Err(e) => bail!("trellis-proxy /metrics: {e}"),
        }
    }
}
