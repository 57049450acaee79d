//! A child process under measurement: spawned, waited for through its ready file, and read
//! from /proc (RSS, peak RSS, CPU time). Killed when dropped, so a failed run leaves nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A spawned process killed on drop.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        die_with_parent(cmd);
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        Ok(Self {
            child,
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident and peak resident memory (VmRSS, VmHWM) in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        let path = format!("/proc/{}/status", self.pid());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |key: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("{path}: no {key}"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// User + system CPU time so far, in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        self.cpu().map(|c| c.total())
    }

    /// CPU time so far, user and system apart.
    pub fn cpu(&self) -> Result<Cpu> {
        Cpu::of(&format!("/proc/{}/stat", self.pid()))
    }

    /// Waits until the process has been idle (under `busy` of CPU time over each `window`),
    /// bounded by `bound`; returns how long it waited. What a fixed sleep used to guess: that
    /// the control plane has finished the work the last requests queued (its paced
    /// publication of the registry), before its memory is read.
    pub async fn wait_idle(
        &self,
        window: Duration,
        busy: Duration,
        bound: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        let mut before = self.cpu_seconds()?;
        loop {
            tokio::time::sleep(window).await;
            let now = self.cpu_seconds()?;
            if now - before < busy.as_secs_f64() {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= bound {
                bail!(
                    "{} still busy after {bound:?} ({:.0} ms of CPU in the last {window:?})",
                    self.name,
                    (now - before) * 1000.0
                );
            }
            before = now;
        }
    }

    /// Asks the process to stop (SIGTERM), then kills it after `grace`.
    pub fn stop(mut self, grace: Duration) {
        terminate(self.child.id());
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU time of a process (all its threads) from `/proc/PID/stat`, in seconds: user (its own
/// code and libraries) and system (the kernel on its behalf: sockets, TCP on loopback,
/// futexes, page faults).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cpu {
    pub user: f64,
    pub system: f64,
}

impl Cpu {
    /// This process (`/proc/self/stat`): the load tool's own cost.
    pub fn own() -> Result<Self> {
        Self::of("/proc/self/stat")
    }

    fn of(path: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        Self::parse(&text).with_context(|| format!("{path}: unexpected format"))
    }

    fn parse(text: &str) -> Option<Self> {
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let (_, rest) = text.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        let hz = clock_ticks();
        Some(Self {
            user: ticks(11)? / hz,
            system: ticks(12)? / hz,
        })
    }

    pub fn total(&self) -> f64 {
        self.user + self.system
    }

    /// What was spent since `before`.
    pub fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            user: self.user - before.user,
            system: self.system - before.system,
        }
    }
}

/// Write system calls a process has made (`/proc/PID/io` `syscw`: `write`, `writev` and
/// the like, on sockets too; tokio writes sockets with `writev`). Counted, not timed: how many
/// socket writes a change costs does not depend on how busy the machine is. (`syscr` is not
/// used: socket reads go through `recv`, which it does not count.)
pub fn write_syscalls(pid: Option<u32>) -> Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/io"),
        None => "/proc/self/io".to_string(),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .and_then(|rest| rest.trim().parse().ok())
        .with_context(|| format!("{path}: no syscw"))
}

/// The child gets SIGKILL when this process dies, even by a signal (`timeout` sends TERM),
/// so that no control plane or proxy outlives a run.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn clock_ticks() -> f64 {
    #[allow(unsafe_code)]
    // SAFETY: sysconf reads a constant; no memory is passed.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

fn terminate(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own child's pid; no memory is passed.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// Waits (bounded) until `path` exists and parses as JSON; returns it.
pub fn wait_ready_file(
    path: &Path,
    timeout: Duration,
    proc: &mut Proc,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(v) = serde_json::from_str(&text)
        {
            return Ok(v);
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            bail!(
                "{} exited ({status}) before writing {}",
                proc.name,
                path.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} wrote no ready file {} within {timeout:?}",
                proc.name,
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A trellis-control in local mode for the bench, with its bound addresses.
#[derive(Debug)]
pub struct Control {
    pub proc: Proc,
    pub discovery: String,
}

/// Starts trellis-control on free ports with `config_dir`; waits for its ready file.
pub fn start_control(
    bin: &Path,
    config_dir: &Path,
    work: &Path,
    extra: &[&str],
    timeout: Duration,
) -> Result<Control> {
    let ready = work.join("control-ready.json");
    let _ = std::fs::remove_file(&ready);
    let log = std::fs::File::create(work.join("control.log")).context("control.log")?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config-dir")
        .arg(config_dir)
        .args(["--discovery", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--ready-file")
        .arg(&ready)
        .args(["--log-level", "warn"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log);
    let mut proc = Proc::spawn("trellis-control", &mut cmd)?;
    let v = wait_ready_file(&ready, timeout, &mut proc)?;
    let field = |k: &str| -> Result<String> {
        v.get(k)
            .and_then(|s| s.as_str())
            .map(str::to_string)
            .with_context(|| format!("{}: no {k}", ready.display()))
    };
    Ok(Control {
        discovery: field("discovery")?,
        proc,
    })
}

/// A binary next to this one's target dir, or as given.
pub fn default_bin(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_read_from_stat_past_a_name_with_spaces() {
        let hz = clock_ticks();
        let stat = "42 (trellis (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        let cpu = Cpu::parse(stat).expect("parses");
        assert_eq!(cpu.user, 250.0 / hz);
        assert_eq!(cpu.system, 50.0 / hz);
        assert_eq!(Cpu::parse("no name"), None);
    }

    #[test]
    fn own_cpu_and_writes_are_counted() {
        assert!(Cpu::own().expect("stat").total() >= 0.0);
        let before = write_syscalls(None).expect("io");
        let mut f = tempfile::tempfile().expect("temp file");
        std::io::Write::write_all(&mut f, b"x").expect("write");
        assert!(write_syscalls(None).expect("io") > before);
    }
}
