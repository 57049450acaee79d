//! Shared by the CLI's end-to-end tests: a `trellis demo` started for one test, waited for, and
//! killed with everything it started when dropped; [`golden`] compares its output with goldens.

pub mod golden;
pub mod rotate;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::Value;
use trellis_testkit::wait;

/// A running `trellis demo --no-load` on ephemeral loopback ports, in its own process group.
pub struct Demo {
    child: Child,
    /// The demo's `--status-file` JSON.
    pub status: Value,
    tmp: tempfile::TempDir,
}

impl Demo {
    /// Starts the demo with `config_dir` as its `--config-dir` and waits (bounded, 60 s) for
    /// its status file. Blocking: call from a plain test or `spawn_blocking`.
    pub fn start(config_dir: &Path) -> Self {
        Self::start_with_env(config_dir, &[])
    }

    /// [`Demo::start`] with environment variables set for the demo (and what it starts) only:
    /// other tests of the binary may run in this process.
    // Not every test binary that includes this module calls it.
    #[allow(dead_code)]
    pub fn start_with_env(config_dir: &Path, env: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let status_file = tmp.path().join("status.json");
        let log = std::fs::File::create(tmp.path().join("demo.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_trellis"))
            .args([
                "demo",
                "--no-load",
                "--entry",
                "127.0.0.1:0",
                "--dashboard",
                "127.0.0.1:0",
            ])
            .arg("--config-dir")
            .arg(config_dir)
            .arg("--status-file")
            .arg(&status_file)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let mut demo = Self {
            child,
            status: Value::Null,
            tmp,
        };
        demo.status = wait_status_file(
            &mut demo.child,
            &status_file,
            &demo.tmp.path().join("demo.log"),
        );
        demo
    }

    /// What the demo printed so far.
    // Not every test binary that includes this module reads it.
    #[allow(dead_code)]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("demo.log")).unwrap_or_default()
    }

    /// `status.control.http` as a URL.
    pub fn control_url(&self) -> String {
        format!(
            "http://{}",
            self.status["control"]["http"].as_str().unwrap()
        )
    }
}

/// Waits (bounded, 60 s) for a demo's `--status-file` JSON; fails early, with the demo's log
/// (`log`), if the demo exits first. The demo writes the file whole (write + rename).
pub fn wait_status_file(demo: &mut Child, status_file: &Path, log: &Path) -> Value {
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    wait::until(Duration::from_secs(60), || {
        if let Some(exit) = demo.try_wait().map_err(|e| e.to_string())? {
            panic!("the demo exited ({exit}) before it was ready:\n{}", log());
        }
        let bytes = std::fs::read(status_file).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| format!("the status file: {e}"))
    })
    .unwrap_or_else(|e| panic!("no status file: {e}\n{}", log()))
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id())
            && let Some(pid) = Pid::from_raw(pid)
        {
            let _ = kill_process_group(pid, Signal::KILL);
        }
        let _ = self.child.wait();
    }
}
