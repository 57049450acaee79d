//! The demo's child processes (control plane and proxies): starting them with their output in
//! log files, noticing when one exits, and stopping them all, so that none outlives the demo.
//!
//! Three guards, for three ways the demo can end:
//! - an orderly stop: [`Supervisor::shutdown`] sends SIGTERM, waits, then SIGKILLs stragglers;
//! - an error return: dropping the [`Supervisor`] aborts the per-child wait tasks, which drop
//!   their `Child` handles, each spawned with `kill_on_drop`;
//! - a panic (release builds abort, so no destructor runs): a panic hook SIGKILLs every child
//!   still alive, from a process-wide list of pids.
//!
//! Children stay in the demo's process group, so that a terminal's Ctrl-C or a
//! `kill -- -PGID` reaches them even if the demo itself was killed with SIGKILL.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, Once};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Index of a child in its [`Supervisor`].
pub type ChildId = usize;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create the log file {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    #[error("cannot start {name} ({program}): {source}")]
    Start {
        name: String,
        program: PathBuf,
        source: io::Error,
    },
    #[error("{name} started but has no pid (it exited at once)")]
    NoPid { name: String },
}

/// A child that exited: which, and how.
#[derive(Debug, Clone)]
pub struct Exit {
    pub id: ChildId,
    pub status: Option<ExitStatus>,
}

#[derive(Debug)]
struct Supervised {
    name: String,
    pid: u32,
    log: PathBuf,
    status: Option<Option<ExitStatus>>,
    wait_task: JoinHandle<()>,
}

/// Owns every child process the demo started.
#[derive(Debug)]
pub struct Supervisor {
    children: Vec<Supervised>,
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits_rx: mpsc::UnboundedReceiver<Exit>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        install_panic_guard();
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        Self {
            children: Vec::new(),
            exits_tx,
            exits_rx,
        }
    }

    /// Starts `program args...` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[OsString],
        log: &Path,
    ) -> Result<ChildId, SpawnError> {
        let log_err = |source| SpawnError::Log {
            path: log.to_path_buf(),
            source,
        };
        let stdout = std::fs::File::create(log).map_err(log_err)?;
        let stderr = stdout.try_clone().map_err(log_err)?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SpawnError::Start {
                name: name.to_string(),
                program: program.to_path_buf(),
                source,
            })?;
        let pid = child.id().ok_or_else(|| SpawnError::NoPid {
            name: name.to_string(),
        })?;
        live_pids(|pids| pids.insert(pid));
        let id = self.children.len();
        let exits_tx = self.exits_tx.clone();
        let wait_task = tokio::spawn(async move {
            let status = child.wait().await.ok();
            live_pids(|pids| pids.remove(&pid));
            let _ = exits_tx.send(Exit { id, status });
        });
        self.children.push(Supervised {
            name: name.to_string(),
            pid,
            log: log.to_path_buf(),
            status: None,
            wait_task,
        });
        Ok(id)
    }

    /// Every child, in the order they were started.
    pub fn ids(&self) -> Vec<ChildId> {
        (0..self.children.len()).collect()
    }

    pub fn name(&self, id: ChildId) -> &str {
        self.children.get(id).map_or("?", |c| c.name.as_str())
    }

    pub fn pid(&self, id: ChildId) -> u32 {
        self.children.get(id).map_or(0, |c| c.pid)
    }

    pub fn log_path(&self, id: ChildId) -> Option<&Path> {
        self.children.get(id).map(|c| c.log.as_path())
    }

    /// The next child to exit. Pending forever while all run.
    pub async fn next_exit(&mut self) -> Exit {
        match self.exits_rx.recv().await {
            Some(exit) => {
                self.record(&exit);
                exit
            }
            // Unreachable while `self` holds a sender; never resolve rather than spin.
            None => std::future::pending().await,
        }
    }

    /// A child that has exited since the last call, without waiting.
    pub fn try_exit(&mut self) -> Option<Exit> {
        let exit = self.exits_rx.try_recv().ok()?;
        self.record(&exit);
        Some(exit)
    }

    fn record(&mut self, exit: &Exit) {
        if let Some(child) = self.children.get_mut(exit.id) {
            child.status = Some(exit.status);
        }
    }

    fn running(&self, ids: &[ChildId]) -> Vec<ChildId> {
        ids.iter()
            .copied()
            .filter(|id| self.children.get(*id).is_some_and(|c| c.status.is_none()))
            .collect()
    }

    /// Stops `ids`: SIGTERM, up to `grace` to exit, then SIGKILL. Returns the names of those
    /// that had to be killed.
    pub async fn stop(&mut self, ids: &[ChildId], grace: Duration) -> Vec<String> {
        for id in self.running(ids) {
            self.signal(id, Signal::TERM);
        }
        let mut killed = Vec::new();
        if !self.wait_for(ids, Instant::now() + grace).await {
            for id in self.running(ids) {
                tracing::warn!(
                    child = self.name(id),
                    pid = self.pid(id),
                    "did not stop in time; killing it"
                );
                killed.push(self.name(id).to_string());
                self.signal(id, Signal::KILL);
            }
            // SIGKILL cannot be refused; this only waits for the kernel to reap.
            self.wait_for(ids, Instant::now() + Duration::from_secs(2))
                .await;
        }
        killed
    }

    async fn wait_for(&mut self, ids: &[ChildId], deadline: Instant) -> bool {
        while !self.running(ids).is_empty() {
            match tokio::time::timeout_at(deadline, self.exits_rx.recv()).await {
                Ok(Some(exit)) => self.record(&exit),
                Ok(None) | Err(_) => return self.running(ids).is_empty(),
            }
        }
        true
    }

    fn signal(&self, id: ChildId, signal: Signal) {
        let Some(child) = self.children.get(id) else {
            return;
        };
        let Some(pid) = i32::try_from(child.pid).ok().and_then(Pid::from_raw) else {
            return;
        };
        if let Err(err) = kill_process(pid, signal) {
            // ESRCH: it exited between our check and the signal, which is what we wanted.
            if err != rustix::io::Errno::SRCH {
                tracing::warn!(child = %child.name, pid = child.pid, %err, "cannot signal child");
            }
        }
    }

    /// The last `lines` lines of a child's log, for reporting why it died.
    pub fn log_tail(&self, id: ChildId, lines: usize) -> String {
        let Some(path) = self.log_path(id) else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Each wait task owns its `Child` (kill_on_drop): aborting it kills the process.
        for child in &self.children {
            child.wait_task.abort();
        }
    }
}

static LIVE_PIDS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn live_pids<R>(f: impl FnOnce(&mut BTreeSet<u32>) -> R) -> R {
    // A poisoned lock still holds a valid set of pids; the guard must work after a panic.
    let mut pids = LIVE_PIDS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    f(&mut pids)
}

/// SIGKILLs every child still alive, of every supervisor: for when there is no time to be
/// graceful (a panic, a second Ctrl-C).
pub fn kill_all_now() {
    let pids: Vec<u32> = live_pids(|pids| pids.iter().copied().collect());
    for pid in pids {
        if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, Signal::KILL);
        }
    }
}

/// Release builds abort on panic, so destructors (and `kill_on_drop`) never run: kill the
/// children from the panic hook instead, before the previous hook reports the panic.
fn install_panic_guard() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            kill_all_now();
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<OsString> {
        vec!["-c".into(), script.into()]
    }

    #[tokio::test]
    async fn reports_exits_and_keeps_logs() {
        let dir = tempfile::tempdir().unwrap();
        let mut sup = Supervisor::new();
        let id = sup
            .spawn(
                "echo",
                Path::new("/bin/sh"),
                &sh("echo hello; exit 3"),
                &dir.path().join("echo.log"),
            )
            .unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(10), sup.next_exit())
            .await
            .unwrap();
        assert_eq!(exit.id, id);
        assert_eq!(exit.status.unwrap().code(), Some(3));
        assert_eq!(sup.log_tail(id, 5), "hello");
    }

    #[tokio::test]
    async fn stop_terms_then_kills() {
        let dir = tempfile::tempdir().unwrap();
        let mut sup = Supervisor::new();
        let polite = sup
            .spawn(
                "polite",
                Path::new("/bin/sh"),
                &sh("exec sleep 30"),
                &dir.path().join("a.log"),
            )
            .unwrap();
        let stubborn = sup
            .spawn(
                "stubborn",
                Path::new("/bin/sh"),
                &sh("trap '' TERM; echo up; while :; do sleep 0.1; done"),
                &dir.path().join("b.log"),
            )
            .unwrap();
        // Wait (bounded) until the trap is installed, or SIGTERM would arrive first.
        let deadline = Instant::now() + Duration::from_secs(10);
        while sup.log_tail(stubborn, 1) != "up" && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        let killed = sup
            .stop(&[polite, stubborn], Duration::from_millis(500))
            .await;
        assert_eq!(killed, vec!["stubborn".to_string()]);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(sup.running(&[polite, stubborn]).is_empty());
    }

    #[tokio::test]
    async fn dropping_the_supervisor_kills_children() {
        let dir = tempfile::tempdir().unwrap();
        let mut sup = Supervisor::new();
        let id = sup
            .spawn(
                "sleeper",
                Path::new("/bin/sh"),
                &sh("exec sleep 30"),
                &dir.path().join("s.log"),
            )
            .unwrap();
        let pid = sup.pid(id);
        drop(sup);
        let deadline = Instant::now() + Duration::from_secs(10);
        // Dead means gone or a zombie: tokio reaps dropped children only on a best-effort basis.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
        };
        while alive() {
            assert!(Instant::now() < deadline, "child outlived its supervisor");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
