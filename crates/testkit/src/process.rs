//! A child process a test owns: its output captured to a log file, its ready file awaited with a
//! deadline, and its end guaranteed (SIGTERM, then SIGKILL) when the handle is dropped.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use serde::de::DeserializeOwned;

/// How long a process gets to exit after SIGTERM before it is killed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// How much of a log is printed when a test fails: the end is where the cause usually is.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// Errors of process handling, with the process' log attached where it helps.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// Creating a log file, ready directory or other scratch file failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited ({status}) before writing its ready file {path}\n--- log ---\n{log}")]
    ExitedEarly {
        name: String,
        status: ExitStatus,
        path: PathBuf,
        log: String,
    },
    #[error(
        "{name} wrote no valid ready file {path} within {timeout:?}: {last}\n--- log ---\n{log}"
    )]
    NotReady {
        name: String,
        path: PathBuf,
        timeout: Duration,
        last: String,
        log: String,
    },
}

/// A running child process owned by a test. Dropping it stops the process.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    // Kept so the log file lives as long as the handle.
    _log: tempfile::NamedTempFile,
    exited: Option<ExitStatus>,
}

impl ManagedProcess {
    /// Starts `command` with stdout and stderr going to a fresh log file.
    pub fn spawn(name: impl Into<String>, mut command: Command) -> Result<Self, ProcessError> {
        let name = name.into();
        let log = tempfile::Builder::new()
            .prefix(&format!("trellis-{}-", sanitize(&name)))
            .suffix(".log")
            .tempfile()
            .map_err(|source| ProcessError::Io {
                what: format!("log file for {name}"),
                source,
            })?;
        let stdout = log.reopen().map_err(|source| ProcessError::Io {
            what: format!("log file for {name}"),
            source,
        })?;
        let stderr = log.reopen().map_err(|source| ProcessError::Io {
            what: format!("log file for {name}"),
            source,
        })?;
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                name: name.clone(),
                source,
            })?;
        Ok(Self {
            name,
            log_path: log.path().to_path_buf(),
            _log: log,
            child,
            exited: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid of the spawned process. For `ip netns exec ... setpriv ... program`, both wrappers
    /// exec the next program in place, so this is the program's pid too.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read log {}: {e})", self.log_path.display()))
    }

    /// The last part of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let Ok(mut file) = File::open(&self.log_path) else {
            return String::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(LOG_TAIL_BYTES);
        let mut buf = Vec::new();
        if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut buf).is_err() {
            return String::new();
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        if start > 0 {
            format!("[... {start} bytes cut ...]\n{text}")
        } else {
            text
        }
    }

    /// Returns the exit status if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// Waits (polling, bounded by `timeout`) until `path` holds JSON that parses as `T`.
    ///
    /// The writer is expected to write the file atomically (write + rename), but a half-written
    /// file is tolerated: it just fails to parse and is read again on the next poll. Fails early,
    /// with the log, if the process exits first.
    pub fn wait_ready_file<T: DeserializeOwned>(
        &mut self,
        path: &Path,
        timeout: Duration,
    ) -> Result<T, ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match std::fs::read(path) {
                Ok(bytes) if !bytes.is_empty() => match serde_json::from_slice::<T>(&bytes) {
                    Ok(value) => return Ok(value),
                    Err(e) => format!("{e} in {:?}", String::from_utf8_lossy(&bytes)),
                },
                Ok(_) => String::from("file is empty"),
                Err(e) => e.to_string(),
            };
            if let Some(status) = self.try_exit_status() {
                return Err(ProcessError::ExitedEarly {
                    name: self.name.clone(),
                    status,
                    path: path.to_path_buf(),
                    log: self.log_tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(ProcessError::NotReady {
                    name: self.name.clone(),
                    path: path.to_path_buf(),
                    timeout,
                    last,
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Sends `signal` to the process (nothing if it has already exited).
    pub fn signal(&mut self, signal: Signal) {
        if self.try_exit_status().is_some() {
            return;
        }
        let Some(pid) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) else {
            return;
        };
        // ESRCH (already gone) is the only expected failure and needs no handling.
        let _ = rustix::process::kill_process(pid, signal);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Returns how it exited.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(Signal::TERM);
        if let Some(status) = self.wait_exit(grace) {
            return Some(status);
        }
        eprintln!(
            "{} did not exit within {grace:?} of SIGTERM; killing it",
            self.name
        );
        let _ = self.child.kill();
        self.wait_exit(Duration::from_secs(5))
    }

    /// SIGKILL, as a crash would: no draining, no clean-up by the process itself.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.wait_exit(Duration::from_secs(5))
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.terminate(DEFAULT_GRACE);
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} (pid {}, {}) -----\n{}\n----- end of log of {} -----",
                self.name,
                self.child.id(),
                self.log_path.display(),
                self.log_tail(),
                self.name
            );
        }
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
