//! Bounded polling: the one way tests wait for something to become true.

use std::time::{Duration, Instant};

/// How often [`until`] checks again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `check` until it returns `Some`, or until `timeout` has passed (then returns the last
/// reason `check` gave for not being done). The interval between checks is short and fixed, so
/// the number of checks is bounded by `timeout / 50 ms`.
pub fn until<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(why) if Instant::now() >= deadline => {
                return Err(format!("still not done after {timeout:?}: {why}"));
            }
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}
