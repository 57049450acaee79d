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

/// [`until`] for async checks (a Kubernetes API call, a request through a proxy): awaits
/// `check` until it returns `Ok`, or until `timeout` has passed, sleeping on the runtime's
/// timer between checks.
pub async fn until_async<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(why) if Instant::now() >= deadline => {
                return Err(format!("still not done after {timeout:?}: {why}"));
            }
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}
