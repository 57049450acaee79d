//! Where and how eagerly this process' threads run: the attackers in the idle scheduling class
//! (or at a nice value), the control round's listener on the proxy's CPU.
//!
//! Why the attackers yield: on a network, an attacker brings its own CPU; here the attackers
//! share one CPU with the good client and the echo backend, so whatever CPU they take is a delay
//! the good client would not see from a real attacker, and the benchmark would measure the
//! machine, not the proxy. `SCHED_IDLE` runs a thread only when its CPU has nothing else to
//! run, and a waking thread of the normal class preempts it at once; nice 19 only weights it
//! (about 1.5 % of a CPU against a nice-0 thread, and it still gets its slice when it wakes).
//! The attack itself is unchanged: what it sends is paced by the attack, and the proxy's CPU
//! (where the attack's cost is measured) is not shared with it.

use std::io;

/// How the attacker threads are scheduled (`--attacker-policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// `SCHED_IDLE`: run only when the client CPU is otherwise idle (and at the nice value, which
    /// the idle class ignores).
    Idle,
    /// The normal class (`SCHED_OTHER`) at `--attacker-nice` only.
    Normal,
}

/// Lowers the calling thread (Linux: policy and nice value are per thread, and threads it
/// starts inherit both): `policy`, then nice `nice`.
pub fn lower_this_thread(policy: Policy, nice: i32) -> io::Result<()> {
    if policy == Policy::Idle {
        set_idle()?;
    }
    rustix::process::setpriority_process(None, nice).map_err(io::Error::from)
}

#[allow(unsafe_code)]
fn set_idle() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` lives for the call, which only reads it; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins the calling thread (only it, and threads it starts later) to `cpu`.
#[allow(unsafe_code)]
pub fn pin_this_thread(cpu: u32) -> io::Result<()> {
    let cpu = usize::try_from(cpu).map_err(io::Error::other)?;
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::other(format!("CPU {cpu} is out of range")));
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it (`cpu` is checked
    // against CPU_SETSIZE above); sched_setaffinity reads `size_of` bytes of it; pid 0 is the
    // calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the calling thread is in `SCHED_IDLE`.
#[cfg(test)]
#[allow(unsafe_code)]
pub fn this_thread_is_idle() -> bool {
    // SAFETY: no arguments beyond the pid, 0 for the calling thread.
    unsafe { libc::sched_getscheduler(0) == libc::SCHED_IDLE }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_is_idle_and_its_children_too_but_not_its_parent() {
        let (me, child) = std::thread::spawn(|| {
            lower_this_thread(Policy::Idle, 19).unwrap();
            let child = std::thread::spawn(this_thread_is_idle).join().unwrap();
            (this_thread_is_idle(), child)
        })
        .join()
        .unwrap();
        assert!(me && child);
        assert!(!this_thread_is_idle());
        let normal = std::thread::spawn(|| {
            lower_this_thread(Policy::Normal, 19).unwrap();
            this_thread_is_idle()
        })
        .join()
        .unwrap();
        assert!(!normal);
    }
}
