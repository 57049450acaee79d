//! Start-up's pages leave the proxy's resident set once it is ready (issue 14; docs/benchmarks.md,
//! "Proxy memory: what is resident").
//!
//! The kernel maps file pages a window or a page-cache folio at a time around each fault, and a
//! mapped page counts in the process's RSS until the process exits. Start-up touches code and
//! read-only data that requests never touch again: argument parsing, config and TLS set-up,
//! the dynamic loader's relocation table (`.rela.dyn`, about 0.6 MB), libc's start-up code.
//! Once the proxy is ready, [`release_when_ready`] unmaps (`MADV_DONTNEED`) the pages of every
//! read-only private file mapping the process never wrote: the code and read-only data of the
//! binary and of the shared libraries. The pages stay in the page cache (nothing is read from
//! disk again); whatever runs next faults its own pages back in, so what stays resident is what
//! requests use.
//!
//! Only mappings without private (copy-on-write) pages qualify: for those, dropping a page and
//! faulting it back in gives the same bytes. A written one (RELRO after relocation, `.data`)
//! would come back as the file's bytes, so smaps' `Anonymous:` must be 0 and the mapping not
//! writable. `TRELLIS_PROXY_RELEASE_STARTUP_PAGES=off` keeps the pages (to compare).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::admin::AdminState;

/// How often readiness is checked; readiness usually comes within tens of milliseconds.
const POLL: Duration = Duration::from_millis(50);

/// After readiness, how long start-up's last steps (the first config push's routes, the
/// certificate's installation) get before their pages are released.
const SETTLE: Duration = Duration::from_millis(500);

/// Waits for readiness (or the proxy's stop), then releases start-up's pages once.
pub async fn release_when_ready(state: Arc<AdminState>, stop: CancellationToken) {
    if std::env::var("TRELLIS_PROXY_RELEASE_STARTUP_PAGES").is_ok_and(|v| v == "off") {
        return;
    }
    // Bounded by the proxy's life: ends at readiness or stop.
    while state.readiness().is_err() {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
    tokio::select! {
        () = stop.cancelled() => return,
        () = tokio::time::sleep(SETTLE) => {}
    }
    match release_clean_file_pages() {
        Ok(bytes) => tracing::debug!(kib = bytes / 1024, "released start-up's file pages"),
        // Memory only, never behaviour: a kernel without smaps keeps the pages.
        Err(e) => tracing::debug!(error = %e, "could not release start-up's file pages"),
    }
}

/// One mapping of /proc/self/smaps that may be released.
#[derive(Debug, PartialEq, Eq)]
struct Clean {
    start: usize,
    len: usize,
}

/// Unmaps the pages of every clean read-only private file mapping; returns the bytes covered.
pub fn release_clean_file_pages() -> std::io::Result<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut covered = 0;
    for m in clean_mappings(&smaps) {
        if madvise_dontneed(m.start, m.len) {
            covered += m.len;
        }
    }
    Ok(covered)
}

/// The mappings of an smaps text that are file-backed, private, not writable and hold no
/// anonymous (copy-on-write) page.
fn clean_mappings(smaps: &str) -> Vec<Clean> {
    let mut out = Vec::new();
    // The mapping whose fields are being read, if it qualifies so far.
    let mut current: Option<Clean> = None;
    for line in smaps.lines() {
        if let Some(range) = header_range(line) {
            current = range;
            continue;
        }
        if let Some(rest) = line.strip_prefix("Anonymous:")
            && let Some(m) = current.take()
            && rest.trim() == "0 kB"
        {
            out.push(m);
        }
    }
    out
}

/// For a mapping's header line (`start-end perms offset dev inode path`): `Some(Some(range))`
/// when it is a private, non-writable mapping of a file, `Some(None)` for any other mapping,
/// `None` when the line is a field, not a header.
fn header_range(line: &str) -> Option<Option<Clean>> {
    let mut parts = line.split_ascii_whitespace();
    let (start, end) = parts.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = parts.next()?.as_bytes();
    if perms.len() != 4 {
        return None;
    }
    // offset, device, inode, then the path (absent for anonymous memory).
    let path = parts.nth(3);
    let clean = perms[0] == b'r'
        && perms[1] == b'-'
        && perms[3] == b'p'
        && path.is_some_and(|p| p.starts_with('/'))
        && end > start;
    Some(clean.then_some(Clean {
        start,
        len: end - start,
    }))
}

/// `madvise(MADV_DONTNEED)` over one whole mapping; false when the kernel refused (a locked
/// mapping, say), which only means the pages stay.
#[allow(unsafe_code)]
fn madvise_dontneed(start: usize, len: usize) -> bool {
    // SAFETY: the range is one whole mapping of /proc/self/smaps that is private, read-only and
    // has no anonymous page, so no byte in it differs from the file: dropping its pages changes
    // no value the process can read (the next access faults the same bytes back in), and no
    // Rust reference can observe the difference.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_private_file_mappings_qualify() {
        let smaps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fd:01 42 /usr/bin/trellis-proxy
Rss:                 400 kB
Anonymous:             0 kB
55d0c0100000-55d0c0900000 r-xp 00100000 fd:01 42 /usr/bin/trellis-proxy
Anonymous:             0 kB
55d0c0900000-55d0c0980000 r--p 00900000 fd:01 42 /usr/bin/trellis-proxy
Anonymous:           412 kB
55d0c0980000-55d0c0990000 rw-p 00980000 fd:01 42 /usr/bin/trellis-proxy
Anonymous:             0 kB
55d0c1000000-55d0c1200000 rw-p 00000000 00:00 0 [heap]
Anonymous:          1200 kB
7f0000000000-7f0000001000 r--s 00000000 fd:01 43 /dev/shm/x
Anonymous:             0 kB
7f0000010000-7f0000020000 r--p 00000000 00:00 0
Anonymous:             0 kB
7fff00000000-7fff00002000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
";
        assert_eq!(
            clean_mappings(smaps),
            vec![
                Clean {
                    start: 0x55d0c0000000,
                    len: 0x100000
                },
                Clean {
                    start: 0x55d0c0100000,
                    len: 0x800000
                },
            ]
        );
    }
}
