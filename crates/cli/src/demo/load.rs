//! The steady load generator: `--load-rps` requests per second to the entry's
//! `/api/v1/products/0/reviews`, every third one as the user `jason`, with bounded concurrency,
//! so that the dashboard and metrics have something to show.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bookinfo::handlers::ProductReviews;
use crate::http_client::{HttpClient, Reply};

pub const LOAD_PATH: &str = "/api/v1/products/0/reviews";
/// In-flight requests at most: when the mesh is slow the generator skips ticks instead of
/// piling up work.
const MAX_IN_FLIGHT: usize = 32;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Totals since the generator started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadStats {
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Other answers.
    pub failed: u64,
    /// No answer (refused, reset, timed out).
    pub errors: u64,
    /// Ticks skipped because [`MAX_IN_FLIGHT`] requests were outstanding.
    pub skipped: u64,
    /// `reviews_version` of the 2xx answers.
    pub by_version: BTreeMap<String, u64>,
}

impl fmt::Display for LoadStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent, {} ok, {} failed, {} errors",
            self.sent, self.ok, self.failed, self.errors
        )?;
        if self.skipped > 0 {
            write!(f, ", {} skipped", self.skipped)?;
        }
        for (version, n) in &self.by_version {
            write!(f, "; reviews {version}: {n}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    errors: AtomicU64,
    skipped: AtomicU64,
    versions: [AtomicU64; 3],
    other_version: AtomicU64,
}

const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];

impl Counters {
    fn record(&self, reply: Option<&Reply>) {
        let Some(reply) = reply else {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !reply.status.is_success() {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.ok.fetch_add(1, Ordering::Relaxed);
        let version = serde_json::from_slice::<ProductReviews>(&reply.body)
            .ok()
            .map(|r| r.reviews_version);
        match version.and_then(|v| VERSIONS.iter().position(|known| *known == v)) {
            Some(i) => self.versions[i].fetch_add(1, Ordering::Relaxed),
            None => self.other_version.fetch_add(1, Ordering::Relaxed),
        };
    }

    fn snapshot(&self) -> LoadStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut by_version: BTreeMap<String, u64> = VERSIONS
            .iter()
            .zip(&self.versions)
            .map(|(v, c)| (v.to_string(), get(c)))
            .filter(|(_, n)| *n > 0)
            .collect();
        if get(&self.other_version) > 0 {
            by_version.insert("unknown".into(), get(&self.other_version));
        }
        LoadStats {
            sent: get(&self.sent),
            ok: get(&self.ok),
            failed: get(&self.failed),
            errors: get(&self.errors),
            skipped: get(&self.skipped),
            by_version,
        }
    }
}

/// The headers of the `n`th request: every third is `jason`, whom Istio's sample routes send to
/// reviews v2.
pub fn request_headers(n: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // `n % 3` rather than `is_multiple_of`: the workspace's rust-version predates it.
    if let 0 = n % 3 {
        headers.insert("end-user", HeaderValue::from_static("jason"));
    }
    headers
}

/// A running generator; [`LoadGenerator::stop`] ends it and returns the totals.
#[derive(Debug)]
pub struct LoadGenerator {
    counters: Arc<Counters>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl LoadGenerator {
    pub fn start(client: HttpClient, entry: SocketAddr, rps: u32) -> Self {
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            client,
            entry,
            rps.max(1),
            Arc::clone(&counters),
            stop.clone(),
        ));
        Self {
            counters,
            stop,
            task,
        }
    }

    /// Stops sending; requests in flight are abandoned.
    pub async fn stop(self) -> LoadStats {
        self.stop.cancel();
        let _ = self.task.await;
        self.counters.snapshot()
    }
}

async fn run(
    client: HttpClient,
    entry: SocketAddr,
    rps: u32,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rps);
    // After a stall, carry on at the set rate instead of sending a burst to catch up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut report = tokio::time::interval(REPORT_EVERY);
    report.tick().await;
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let requests = tokio_util::task::TaskTracker::new();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = report.tick() => tracing::info!(load = %counters.snapshot(), "traffic to the entry"),
            _ = tick.tick() => {
                let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                    counters.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let headers = request_headers(n);
                n += 1;
                counters.sent.fetch_add(1, Ordering::Relaxed);
                let (client, counters, stop) = (client.clone(), Arc::clone(&counters), stop.clone());
                requests.spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        () = stop.cancelled() => {}
                        reply = client.get(entry, LOAD_PATH, &headers, REQUEST_TIMEOUT) => counters.record(reply.ok().as_ref()),
                    }
                });
            }
        }
    }
    requests.close();
    requests.wait().await;
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::StatusCode;

    use super::*;

    fn reply(status: StatusCode, body: &str) -> Reply {
        Reply {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn every_third_request_is_jason() {
        let jason: Vec<u64> = (0..9)
            .filter(|n| request_headers(*n).contains_key("end-user"))
            .collect();
        assert_eq!(jason, [0, 3, 6]);
        assert_eq!(request_headers(0)["end-user"], "jason");
    }

    #[test]
    fn counts_outcomes_and_versions() {
        let c = Counters::default();
        c.record(Some(&reply(
            StatusCode::OK,
            r#"{"id":0,"reviews_version":"v2","ratings_available":true,"reviews":[]}"#,
        )));
        c.record(Some(&reply(
            StatusCode::OK,
            r#"{"id":0,"reviews_version":"v3","ratings_available":true,"reviews":[]}"#,
        )));
        c.record(Some(&reply(StatusCode::OK, "not json")));
        c.record(Some(&reply(StatusCode::SERVICE_UNAVAILABLE, "{}")));
        c.record(None);
        let stats = c.snapshot();
        assert_eq!((stats.ok, stats.failed, stats.errors), (3, 1, 1));
        assert_eq!(stats.by_version["v2"], 1);
        assert_eq!(stats.by_version["v3"], 1);
        assert_eq!(stats.by_version["unknown"], 1);
        assert!(!stats.by_version.contains_key("v1"));
        assert!(stats.to_string().contains("reviews v2: 1"));
    }
}
