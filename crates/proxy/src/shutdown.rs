//! Graceful shutdown: what starts it (SIGTERM, SIGINT, or `POST /shutdown` through the shared
//! token) and the bounded wait for in-flight work.
//!
//! The order is the contract: `/ready` turns 503 and listeners stop accepting the moment the
//! token is cancelled; HTTP connections finish their in-flight requests and close; the proxy
//! exits when every tracked task is done or `--drain-timeout` passes, whichever is first.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancels `shutdown` on SIGTERM or SIGINT. Returns when either arrives or `shutdown` is
/// cancelled by someone else.
pub async fn on_signals(shutdown: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: draining"),
        res = tokio::signal::ctrl_c() => match res {
            Ok(()) => tracing::info!("SIGINT: draining"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGINT");
                shutdown.cancelled().await;
                return;
            }
        },
        _ = shutdown.cancelled() => return,
    }
    shutdown.cancel();
}

/// Waits for every tracked task, at most `timeout`. Returns whether all finished.
pub async fn drain(tracker: &TaskTracker, timeout: Duration) -> bool {
    tracker.close();
    match tokio::time::timeout(timeout, tracker.wait()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                remaining = tracker.len(),
                "drain timeout: closing remaining connections"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tasks_up_to_the_timeout() {
        let tracker = TaskTracker::new();
        tracker.spawn(tokio::time::sleep(Duration::from_secs(1)));
        assert!(drain(&tracker, Duration::from_secs(5)).await);

        let tracker = TaskTracker::new();
        tracker.spawn(tokio::time::sleep(Duration::from_secs(60)));
        let started = tokio::time::Instant::now();
        assert!(!drain(&tracker, Duration::from_secs(5)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
