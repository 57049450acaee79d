//! Access logs: one line per HTTP request, off by default (`--access-log json|text`), to
//! stdout or a file (`--access-log-path`). A line names the trace, the route, the upstream
//! endpoint, the status, the duration, the bytes each way and, for a request the proxy failed,
//! why: Envoy-style response flags derived from the proxy's own `trellis-error` reason.
//!
//! Formatting is pure ([`Entry::to_json`], [`Entry::to_text`]); writing happens on a thread of
//! its own fed by a bounded queue, so a slow disk or pipe never stalls a request (a full queue
//! drops the line and counts it). Access logs cost an allocation per request by nature; they
//! are opt-in for that reason.
//!
//! The format (on, off, JSON, text) and a minimum status can change while the proxy runs (an
//! Istio `Telemetry` delivered by the control plane, `trace::settings`): the request path reads
//! them from atomics, so a proxy started with `--access-log off` can be turned on without a
//! restart and costs one relaxed load per request while off.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::telemetry::Direction;

/// Lines waiting for the writer; past this, lines are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 8192;

/// `--access-log`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Off,
    Json,
    Text,
}

impl Format {
    fn to_u8(self) -> u8 {
        match self {
            Format::Off => 0,
            Format::Json => 1,
            Format::Text => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Format::Json,
            2 => Format::Text,
            _ => Format::Off,
        }
    }
}

/// Why the proxy failed a request, from its `trellis-error` reason: Envoy's response flag
/// where one exists (so log tooling that knows Envoy reads these), else a Trellis code.
pub fn response_flags(reason: Option<&str>) -> &'static str {
    let Some(reason) = reason else { return "-" };
    match reason {
        "request timeout" | "upstream request timeout" => "UT",
        "upstream connect failed" | "upstream TLS origination failed" | "upstream mTLS failed" => {
            "UF"
        }
        "upstream reset" => "UR",
        "no endpoints" => "UH",
        // REGISTRY_ONLY's refusal is Istio's BlackHoleCluster: no route to the destination.
        "no destination" | "discovery timeout" | "no application" | "no backends" | "no route"
        | "registry-only" => "NR",
        "local rate limited" => "RL",
        // Envoy's overload manager: the proxy's own in-flight caps.
        "load shed" | "overloaded" => "OM",
        r if r.starts_with("circuit open") => "UO",
        "fault abort" => "FI",
        "forwarding loop" => "LOOP",
        r if r.contains("denied") || r.contains("forbidden") || r.contains("unauthorized") => {
            "DENIED"
        }
        _ => "ERR",
    }
}

/// Everything one line says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    pub start_unix_nanos: u64,
    pub direction: Option<Direction>,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub protocol: &'static str,
    pub status: u16,
    pub grpc_status: Option<u32>,
    /// The proxy's `trellis-error` reason, when it made the answer.
    pub reason: Option<String>,
    pub duration: Duration,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub upstream: Option<SocketAddr>,
    pub upstream_workload: String,
    pub route: String,
    pub downstream: Option<SocketAddr>,
    pub trace_id: Option<String>,
}

/// `2026-11-27T00:10:00.123Z` (UTC, milliseconds); also the tap's row time.
pub(crate) fn rfc3339(unix_nanos: u64) -> String {
    let secs = unix_nanos / 1_000_000_000;
    let millis = (unix_nanos / 1_000_000) % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

impl Entry {
    pub fn flags(&self) -> &'static str {
        response_flags(self.reason.as_deref())
    }

    pub fn to_json(&self) -> String {
        let v = serde_json::json!({
            "start_time": rfc3339(self.start_unix_nanos),
            "direction": self.direction.map(Direction::as_str),
            "method": self.method,
            "authority": self.authority,
            "path": self.path,
            "protocol": self.protocol,
            "response_code": self.status,
            "grpc_status": self.grpc_status,
            "response_flags": self.flags(),
            "response_code_details": self.reason,
            "duration_ms": self.duration.as_secs_f64() * 1000.0,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "upstream_host": self.upstream.map(|u| u.to_string()),
            "upstream_workload": self.upstream_workload,
            "route_name": self.route,
            "downstream_remote_address": self.downstream.map(|d| d.to_string()),
            "trace_id": self.trace_id,
        });
        v.to_string()
    }

    /// Envoy's default format, as far as the proxy knows its fields, plus the trace id.
    pub fn to_text(&self) -> String {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_owned()
            } else {
                s.to_owned()
            }
        };
        format!(
            "[{}] {} \"{} {} {}\" {} {} {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" route={} trace_id={}",
            rfc3339(self.start_unix_nanos),
            self.direction.map_or("-", Direction::as_str),
            self.method,
            dash(&self.path),
            self.protocol,
            self.status,
            self.flags(),
            self.grpc_status.map_or("-".to_owned(), |g| g.to_string()),
            self.bytes_received,
            self.bytes_sent,
            self.duration.as_millis(),
            dash(self.reason.as_deref().unwrap_or("")),
            dash(&self.authority),
            self.upstream.map_or("-".to_owned(), |u| u.to_string()),
            dash(&self.upstream_workload),
            dash(&self.route),
            self.trace_id.as_deref().unwrap_or("-"),
        )
    }
}

pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[derive(Debug, thiserror::Error)]
#[error("cannot open access log {path}: {source}")]
pub struct OpenError {
    pub path: String,
    pub source: std::io::Error,
}

/// The logger the request path hands entries to.
#[derive(Debug)]
pub struct AccessLog {
    /// [`Format`] as a u8, so it can change under running requests.
    format: AtomicU8,
    /// Answers below this status are not logged (Istio filter `response.code >= N`); 0: all.
    min_status: AtomicU16,
    tx: mpsc::Sender<String>,
    /// Lines dropped because the queue was full (`trellis_access_log_dropped_total`).
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens the destination (appending to `path`, else stdout) and starts the writer thread,
    /// which ends when the logger is dropped. With `Format::Off` nothing is written until
    /// [`Self::set`] turns it on.
    pub fn start(
        format: Format,
        path: Option<&Path>,
        dropped: Arc<AtomicU64>,
    ) -> Result<Self, OpenError> {
        let mut out: Box<dyn std::io::Write + Send> = match path {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| OpenError {
                        path: p.display().to_string(),
                        source,
                    })?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = std::io::BufWriter::new(&mut out);
                while let Some(line) = rx.blocking_recv() {
                    let _ = buf.write_all(line.as_bytes());
                    let _ = buf.write_all(b"\n");
                    // Flush when the queue is drained: batches under load, prompt when idle.
                    if rx.is_empty() {
                        let _ = buf.flush();
                    }
                }
                let _ = buf.flush();
            })
            .map_err(|source| OpenError {
                path: "access-log writer thread".into(),
                source,
            })?;
        Ok(Self {
            format: AtomicU8::new(format.to_u8()),
            min_status: AtomicU16::new(0),
            tx,
            dropped,
        })
    }

    /// Whether requests should fill in an [`Entry`] at all.
    pub fn enabled(&self) -> bool {
        self.format.load(Relaxed) != 0
    }

    pub fn format(&self) -> Format {
        Format::from_u8(self.format.load(Relaxed))
    }

    pub fn min_status(&self) -> u16 {
        self.min_status.load(Relaxed)
    }

    /// Changes the format (`Off` stops logging) and the least status logged (0: every answer).
    pub fn set(&self, format: Format, min_status: u16) {
        self.min_status.store(min_status, Relaxed);
        self.format.store(format.to_u8(), Relaxed);
    }

    pub fn log(&self, entry: &Entry) {
        if entry.status < self.min_status.load(Relaxed) {
            return;
        }
        let line = match self.format() {
            Format::Off => return,
            Format::Json => entry.to_json(),
            Format::Text => entry.to_text(),
        };
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed_out() -> Entry {
        Entry {
            start_unix_nanos: 1_700_000_000_123_000_000,
            direction: Some(Direction::Outbound),
            method: "GET".into(),
            authority: "reviews:9080".into(),
            path: "/reviews/0".into(),
            protocol: "HTTP/1.1",
            status: 504,
            reason: Some("request timeout".into()),
            duration: Duration::from_millis(250),
            upstream: Some("127.0.0.1:4000".parse().unwrap()),
            upstream_workload: "reviews-v2".into(),
            route: "reviews-slow".into(),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            ..Default::default()
        }
    }

    #[test]
    fn json_names_the_reason_and_the_trace() {
        let v: serde_json::Value = serde_json::from_str(&timed_out().to_json()).unwrap();
        assert_eq!(v["response_flags"], "UT");
        assert_eq!(v["response_code_details"], "request timeout");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["upstream_host"], "127.0.0.1:4000");
        assert_eq!(v["start_time"], "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn text_is_one_line() {
        let t = timed_out().to_text();
        assert!(!t.contains('\n'));
        assert!(t.contains(" 504 UT "), "{t}");
        assert!(t.contains("\"request timeout\""), "{t}");
    }

    #[test]
    fn turned_on_filtered_and_off_at_runtime() {
        let dir = tempfile_dir();
        let path = dir.join("runtime.log");
        let log = AccessLog::start(Format::Off, Some(&path), Arc::default()).unwrap();
        assert!(!log.enabled());
        log.log(&timed_out());
        log.set(Format::Text, 0);
        assert!(log.enabled());
        log.log(&timed_out());
        log.set(Format::Json, 500);
        let mut ok = timed_out();
        ok.status = 200;
        log.log(&ok);
        log.log(&timed_out());
        log.set(Format::Off, 0);
        log.log(&timed_out());
        drop(log);
        // The writer thread flushes when its queue is empty; wait for both lines, bounded.
        let mut text = String::new();
        for _ in 0..200 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains(" 504 UT "), "{text}");
        assert!(lines[1].starts_with('{'), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "trellis-accesslog-unit-{}-{}",
            std::process::id(),
            unix_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn flags() {
        assert_eq!(response_flags(None), "-");
        assert_eq!(response_flags(Some("circuit open: max requests")), "UO");
        assert_eq!(response_flags(Some("no endpoints")), "UH");
        assert_eq!(response_flags(Some("upstream connect failed")), "UF");
        assert_eq!(response_flags(Some("upstream mTLS failed")), "UF");
        assert_eq!(response_flags(Some("registry-only")), "NR");
        assert_eq!(response_flags(Some("local rate limited")), "RL");
        assert_eq!(response_flags(Some("load shed")), "OM");
        assert_eq!(response_flags(Some("overloaded")), "OM");
    }
}
