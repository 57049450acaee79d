//! `GET /api/v1/tap?workload=NAME&namespace=NS&<filters>`: the live requests of a workload's
//! proxies, fanned in from each one's admin `GET /tap` stream and forwarded as newline-delimited
//! JSON, one proxy row per line, unchanged (see docs/control-plane.md for the shape).
//!
//! The workload is a registered workload's name or its `app` label (so `reviews` taps
//! reviews-v1, -v2 and -v3). Filters are checked here and passed on, so each proxy sends only
//! matching rows; `max_rows` and `max_seconds` bound the merged stream (and each proxy's). The
//! stream ends at the bound, when every proxy's stream ended, when the client leaves or at
//! shutdown. This module decides nothing about traffic; it only selects proxies and copies lines.
//!
//! The proxies' admin servers are plain HTTP/1 on loopback or the pod network; the request is
//! HTTP/1.0 so the answer is the raw line stream until close (no chunk framing to undo), which
//! keeps this to a socket and a line reader without another HTTP client in the control plane.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

use crate::registry::Registration;
use crate::state::Shared;

pub const DEFAULT_MAX_ROWS: u64 = 100;
pub const DEFAULT_MAX_SECONDS: u64 = 60;
/// The proxies clamp to the same caps; a forgotten tap ends on its own.
pub const MAX_ROWS_CAP: u64 = 10_000;
pub const MAX_SECONDS_CAP: u64 = 600;

/// Filters passed on to each proxy as they are.
const FILTERS: [&str; 6] = ["method", "path", "authority", "status", "direction", "to"];

/// Connecting to a proxy and reading its answer's head.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// A line longer than this is not a tap row; the proxy's stream is dropped.
const MAX_LINE: u64 = 64 * 1024;

/// A checked `GET /api/v1/tap` query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapRequest {
    pub workload: String,
    pub namespace: String,
    /// `(name, value)` pairs for the proxies, decoded.
    pub filters: Vec<(String, String)>,
    pub max_rows: u64,
    pub max_seconds: u64,
}

impl TapRequest {
    /// Checks the decoded query pairs; the error names the parameter.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut req = TapRequest {
            workload: String::new(),
            namespace: "default".into(),
            filters: Vec::new(),
            max_rows: DEFAULT_MAX_ROWS,
            max_seconds: DEFAULT_MAX_SECONDS,
        };
        for (name, value) in pairs {
            if value.is_empty() {
                continue;
            }
            match name.as_str() {
                "workload" => req.workload = strip_kind(value).to_owned(),
                "namespace" => req.namespace = value.clone(),
                "max_rows" => req.max_rows = positive(name, value)?.min(MAX_ROWS_CAP),
                "max_seconds" => req.max_seconds = positive(name, value)?.min(MAX_SECONDS_CAP),
                n if FILTERS.contains(&n) => req.filters.push((name.clone(), value.clone())),
                _ => {
                    return Err(format!(
                        "unknown query parameter {name:?} (known: workload, namespace, {}, \
                         max_rows, max_seconds)",
                        FILTERS.join(", ")
                    ));
                }
            }
        }
        if req.workload.is_empty() {
            return Err("the workload query parameter is required".into());
        }
        Ok(req)
    }

    /// The path and query to ask each proxy's admin server for.
    pub fn proxy_path(&self) -> String {
        let mut out = format!(
            "/tap?max_rows={}&max_seconds={}",
            self.max_rows, self.max_seconds
        );
        for (name, value) in &self.filters {
            let _ = write!(out, "&{name}={}", encode(value));
        }
        out
    }
}

/// `deploy/reviews` → `reviews`, as kubectl-style resource names are given.
fn strip_kind(name: &str) -> &str {
    for kind in ["deploy/", "deployment/", "workload/", "wl/"] {
        if let Some(rest) = name.strip_prefix(kind) {
            return rest;
        }
    }
    name
}

fn positive(name: &str, value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{name}={value:?}: expected a whole number above 0")),
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters and `/`.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The proxies to tap: workloads in `namespace` named `workload` or labelled `app=workload`,
/// as `(name, admin address)`; `None` for a proxy that registered no admin address.
pub fn select<'a>(
    registrations: impl Iterator<Item = &'a Registration>,
    workload: &str,
    namespace: &str,
) -> Vec<(String, Option<SocketAddr>)> {
    registrations
        .map(|r| &r.workload)
        .filter(|w| w.namespace == namespace)
        .filter(|w| w.name == workload || w.labels.get("app").map(String::as_str) == Some(workload))
        .map(|w| (w.name.clone(), w.admin_address))
        .collect()
}

/// Answers `GET /api/v1/tap` with the decoded query `pairs`.
pub async fn serve(shared: Arc<Shared>, pairs: Vec<(String, String)>) -> Response {
    let req = match TapRequest::parse(&pairs) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("tap: {e}\n")).into_response(),
    };
    let targets = select(
        shared.registry().registrations(),
        &req.workload,
        &req.namespace,
    );
    if targets.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            format!(
                "tap: no workload {:?} (by name or app label) in namespace {:?}\n",
                req.workload, req.namespace
            ),
        )
            .into_response();
    }
    let path = req.proxy_path();
    // Every proxy is subscribed (in parallel, each bounded by OPEN_TIMEOUT) before the head
    // goes out, so a client that has the head sees every request that finishes after it.
    let attempts = futures_util::future::join_all(targets.iter().map(|(name, admin)| {
        let path = &path;
        async move {
            let Some(admin) = admin else {
                return (
                    name,
                    Err(Refused::Failed("no admin address registered".into())),
                );
            };
            let opened = open(*admin, path).await.map_err(|e| match e {
                Refused::Failed(e) => Refused::Failed(format!("{admin}: {e}")),
                bad => bad,
            });
            (name, opened)
        }
    }))
    .await;
    let mut opened = Vec::new();
    let mut failures = Vec::new();
    for (name, attempt) in attempts {
        match attempt {
            Ok(stream) => opened.push((name.clone(), stream)),
            Err(Refused::BadQuery(msg)) => {
                return (StatusCode::BAD_REQUEST, msg).into_response();
            }
            Err(Refused::Failed(e)) => failures.push(format!("{name}: {e}")),
        }
    }
    for f in &failures {
        tracing::warn!(failure = %f, "tap: a proxy could not be tapped");
    }
    if opened.is_empty() {
        return (
            StatusCode::BAD_GATEWAY,
            format!("tap: no proxy could be tapped: {}\n", failures.join("; ")),
        )
            .into_response();
    }
    let names: Vec<&str> = opened.iter().map(|(n, _)| n.as_str()).collect();
    let proxies = HeaderValue::from_str(&names.join(",")).ok();
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(256);
    let streams = opened.into_iter().map(|(_, s)| s).collect();
    tokio::spawn(fan_in(
        streams,
        out_tx,
        req.max_rows,
        Duration::from_secs(req.max_seconds),
        shared.shutdown.clone(),
    ));
    let body = Body::from_stream(ReceiverStream::new(out_rx).map(Ok::<Bytes, Infallible>));
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(p) = proxies {
        headers.insert("trellis-tap-proxies", p);
    }
    resp
}

/// Copies lines from every proxy stream to `out` until the bound, the end of every stream, the
/// client leaving or shutdown. Dropping the readers closes the proxies' streams.
async fn fan_in(
    streams: Vec<BufReader<TcpStream>>,
    out: mpsc::Sender<Bytes>,
    max_rows: u64,
    max_seconds: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let (line_tx, mut line_rx) = mpsc::channel::<Bytes>(256);
    let mut readers = JoinSet::new();
    for stream in streams {
        readers.spawn(read_lines(stream, line_tx.clone()));
    }
    drop(line_tx);
    let deadline = tokio::time::sleep(max_seconds);
    tokio::pin!(deadline);
    let mut sent = 0;
    while sent < max_rows {
        let line = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = &mut deadline => break,
            _ = out.closed() => break,
            line = line_rx.recv() => match line {
                Some(line) => line,
                None => break,
            },
        };
        if out.send(line).await.is_err() {
            break;
        }
        sent += 1;
    }
    readers.abort_all();
}

async fn read_lines(mut stream: BufReader<TcpStream>, tx: mpsc::Sender<Bytes>) {
    loop {
        let mut line = Vec::new();
        match (&mut stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) => return,
            Ok(_) if line.last() != Some(&b'\n') => {
                tracing::warn!("tap: a proxy sent an unterminated or oversized line");
                return;
            }
            Ok(_) => {
                if tx.send(Bytes::from(line)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "tap: a proxy stream ended with an error");
                return;
            }
        }
    }
}

enum Refused {
    /// The proxy refused the filters (400): the user's mistake, passed back as it is.
    BadQuery(String),
    Failed(String),
}

/// Opens `GET path` on a proxy's admin server and reads the head; the reader is left at the
/// first line of the stream.
async fn open(admin: SocketAddr, path: &str) -> Result<BufReader<TcpStream>, Refused> {
    let opening = async {
        let mut stream = TcpStream::connect(admin)
            .await
            .map_err(|e| Refused::Failed(format!("connect: {e}")))?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {admin}\r\nAccept: application/x-ndjson\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| Refused::Failed(format!("send: {e}")))?;
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        (&mut reader)
            .take(MAX_LINE)
            .read_line(&mut status)
            .await
            .map_err(|e| Refused::Failed(format!("read: {e}")))?;
        let code = status.split_whitespace().nth(1).unwrap_or("");
        let mut headers = BTreeMap::new();
        loop {
            let mut line = String::new();
            let n = (&mut reader)
                .take(MAX_LINE)
                .read_line(&mut line)
                .await
                .map_err(|e| Refused::Failed(format!("read: {e}")))?;
            let line = line.trim_end();
            if n == 0 || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        match code {
            "200" => Ok(reader),
            "400" => {
                let mut body = String::new();
                let _ = (&mut reader).take(4096).read_to_string(&mut body).await;
                Err(Refused::BadQuery(body))
            }
            "" => Err(Refused::Failed("no HTTP answer".into())),
            other => Err(Refused::Failed(format!("answered {other}"))),
        }
    };
    tokio::time::timeout(OPEN_TIMEOUT, opening)
        .await
        .unwrap_or_else(|_| {
            Err(Refused::Failed(format!(
                "no answer within {OPEN_TIMEOUT:?}"
            )))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_passes_filters_on() {
        let r = TapRequest::parse(&pairs(&[
            ("workload", "deploy/reviews"),
            ("path", "/reviews/0 x"),
            ("method", "GET"),
            ("max_rows", "500000"),
        ]))
        .unwrap();
        assert_eq!(r.workload, "reviews");
        assert_eq!(r.namespace, "default");
        assert_eq!(r.max_rows, MAX_ROWS_CAP);
        assert_eq!(
            r.proxy_path(),
            "/tap?max_rows=10000&max_seconds=60&path=/reviews/0%20x&method=GET"
        );
    }

    #[test]
    fn bad_queries_name_the_parameter() {
        let e = TapRequest::parse(&pairs(&[("path", "/")])).unwrap_err();
        assert!(e.contains("workload"), "{e}");
        let e = TapRequest::parse(&pairs(&[("workload", "a"), ("pth", "/")])).unwrap_err();
        assert!(e.contains("\"pth\""), "{e}");
        let e = TapRequest::parse(&pairs(&[("workload", "a"), ("max_seconds", "0")])).unwrap_err();
        assert!(e.starts_with("max_seconds"), "{e}");
    }
}
