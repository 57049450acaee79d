//! A bounded, fixed-rate HTTP/1.1 load generator for chaos tests: it sends `rate` requests a
//! second for `duration` (open loop: the schedule does not wait for slow answers, so a stall
//! shows up as latency and timeouts rather than as fewer requests), and counts every outcome.
//!
//! It runs in the test process ([`run`], [`spawn`]) or, for pods, as the
//! `trellis-testkit-load` binary inside a network namespace ([`Load::in_netns`]), which prints
//! the same [`LoadReport`] as JSON.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// At most this many requests are in flight: a hung upstream then costs bounded memory and
/// sockets, and the schedule's lag is visible in the report as `late`.
const MAX_IN_FLIGHT: usize = 512;
/// The scheduler's tick: requests due within a tick are sent together.
const TICK: Duration = Duration::from_millis(1);

/// What to send.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadSpec {
    /// `http://host:port/path`; the host may be a name the client never resolves itself when
    /// the request is captured by a sidecar, but it must parse as a URL.
    pub url: String,
    /// Requests per second.
    pub rate: u32,
    pub duration: Duration,
    /// Per-request deadline (connect, send, whole body).
    pub timeout: Duration,
}

impl LoadSpec {
    pub fn new(url: impl Into<String>, rate: u32, duration: Duration) -> Self {
        Self {
            url: url.into(),
            rate,
            duration,
            timeout: Duration::from_secs(5),
        }
    }
}

/// What happened, in numbers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// Requests started.
    pub sent: u64,
    /// Answered 2xx with the whole body read.
    pub ok: u64,
    /// Non-2xx answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests with no answer, by kind (`connect`, `timeout`, `io`, ...), with one example
    /// message each.
    pub errors: BTreeMap<String, (u64, String)>,
    /// Latency of the 2xx answers, microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
    /// Absent in reports from older `trellis-testkit-load` binaries.
    #[serde(default)]
    pub p999_us: u64,
    pub max_us: u64,
    /// Wall time from the first request to the last answer.
    pub elapsed_ms: u64,
    /// Ticks on which the in-flight cap held requests back (the target was slower than the
    /// schedule).
    pub late: u64,
}

impl LoadReport {
    /// Requests that did not answer 2xx.
    pub fn failed(&self) -> u64 {
        self.sent - self.ok
    }

    /// The achieved rate of answered requests.
    pub fn ok_rate(&self) -> f64 {
        self.ok as f64 / (self.elapsed_ms.max(1) as f64 / 1000.0)
    }

    /// A one-line summary for test output and figures.
    pub fn summary(&self) -> String {
        format!(
            "sent {} ok {} failed {} (statuses {:?}, errors {:?}) p50 {:.1} ms p99 {:.1} ms max {:.1} ms in {:.1} s ({:.0} ok/s)",
            self.sent,
            self.ok,
            self.failed(),
            self.statuses,
            self.errors
                .iter()
                .map(|(k, (n, _))| (k.as_str(), *n))
                .collect::<Vec<_>>(),
            self.p50_us as f64 / 1000.0,
            self.p99_us as f64 / 1000.0,
            self.max_us as f64 / 1000.0,
            self.elapsed_ms as f64 / 1000.0,
            self.ok_rate()
        )
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, (u64, String)>,
    latencies_us: Vec<u64>,
}

impl Tally {
    fn error(&mut self, kind: &str, message: String) {
        let e = self.errors.entry(kind.to_string()).or_insert((0, message));
        e.0 += 1;
    }
}

/// Runs the load to completion on a runtime of its own and reports.
pub fn run(spec: &LoadSpec) -> Result<LoadReport, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("load runtime: {e}"))?;
    rt.block_on(run_async(spec))
}

/// Runs the load on a thread of its own; join the handle for the report.
pub fn spawn(spec: LoadSpec) -> std::thread::JoinHandle<Result<LoadReport, String>> {
    std::thread::spawn(move || run(&spec))
}

/// Sends the load.
pub async fn run_async(spec: &LoadSpec) -> Result<LoadReport, String> {
    let uri: hyper::Uri = spec
        .url
        .parse()
        .map_err(|e| format!("load url {:?}: {e}", spec.url))?;
    if spec.rate == 0 {
        return Err("load rate must be above 0".into());
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(spec.timeout));
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        // A request the pool could not send on a connection that closed is a failure here, not
        // something to hide: the figures count what the mesh did.
        .retry_canceled_requests(false)
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build(connector);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let total = (u128::from(spec.rate) * spec.duration.as_millis() / 1000) as u64;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut late = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while sent < total {
        let due = ((start.elapsed().as_micros() * u128::from(spec.rate)) / 1_000_000) as u64;
        let due = due.min(total);
        while sent < due {
            let permit = match in_flight.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    late += 1;
                    // Bounded: each request in flight ends by its timeout.
                    in_flight
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|e| e.to_string())?
                }
            };
            sent += 1;
            let (client, uri, tally, timeout) =
                (client.clone(), uri.clone(), tally.clone(), spec.timeout);
            tasks.spawn(async move {
                let _permit = permit;
                let began = Instant::now();
                let outcome = tokio::time::timeout(timeout, async {
                    let response = client.get(uri).await.map_err(classify)?;
                    let status = response.status().as_u16();
                    response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| ("body".to_string(), e.to_string()))?;
                    Ok::<u16, (String, String)>(status)
                })
                .await;
                let micros = began.elapsed().as_micros() as u64;
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Ok(Ok(status)) if (200..300).contains(&status) => {
                        t.ok += 1;
                        t.latencies_us.push(micros);
                    }
                    Ok(Ok(status)) => *t.statuses.entry(status).or_insert(0) += 1,
                    Ok(Err((kind, message))) => t.error(&kind, message),
                    Err(_) => t.error("timeout", format!("no answer within {timeout:?}")),
                }
            });
        }
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        tokio::time::sleep(TICK).await;
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    let mut t = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    t.latencies_us.sort_unstable();
    let pct = |p: f64| -> u64 {
        if t.latencies_us.is_empty() {
            return 0;
        }
        let i = ((t.latencies_us.len() as f64 * p).ceil() as usize).clamp(1, t.latencies_us.len());
        t.latencies_us[i - 1]
    };
    Ok(LoadReport {
        sent,
        ok: t.ok,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: t.latencies_us.last().copied().unwrap_or(0),
        statuses: t.statuses,
        errors: t.errors,
        elapsed_ms: elapsed.as_millis() as u64,
        late,
    })
}

/// Sorts a client error into a kind: connect (nothing sent), or io (the exchange broke).
fn classify(e: hyper_util::client::legacy::Error) -> (String, String) {
    let kind = if e.is_connect() { "connect" } else { "io" };
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    (kind.to_string(), message)
}

/// The load as a `trellis-testkit-load` process, for sending it from inside a pod.
#[derive(Debug)]
pub struct Load {
    /// Taken by [`Self::finish`]; killed on drop if still here.
    child: Option<std::process::Child>,
    name: String,
    limit: Duration,
}

impl Load {
    /// Starts `trellis-testkit-load` in network namespace `netns` (as root, so a pod's
    /// iptables capture it like any app's traffic).
    pub fn in_netns(netns: &str, spec: &LoadSpec) -> Result<Self, String> {
        let mut c = crate::netns::command(netns, crate::bins::bin("trellis-testkit-load"));
        c.args(["--url", &spec.url])
            .args(["--rate", &spec.rate.to_string()])
            .args(["--duration-ms", &spec.duration.as_millis().to_string()])
            .args(["--timeout-ms", &spec.timeout.as_millis().to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = c.spawn().map_err(|e| format!("cannot run {c:?}: {e}"))?;
        Ok(Self {
            child: Some(child),
            name: format!("load in {netns}"),
            limit: spec.duration + spec.timeout + Duration::from_secs(15),
        })
    }

    /// Waits (bounded by the spec's duration plus slack) and returns the report.
    pub fn finish(mut self) -> Result<LoadReport, String> {
        let child = self
            .child
            .take()
            .ok_or_else(|| format!("{} already finished", self.name))?;
        let out = crate::tools::wait_bounded(&self.name, child, self.limit)?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "{}: not a report ({e}): {}",
                self.name,
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resident memory (VmRSS) of a process, bytes.
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    crate::mesh::proc_status_kib(pid, "VmRSS:").map(|k| k * 1024)
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> Result<usize, String> {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir)
        .map(|d| d.count())
        .map_err(|e| format!("{dir}: {e}"))
}
