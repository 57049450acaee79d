//! Tap: a live stream of the requests this proxy finishes, for `trellis tap`, `trellis top` and
//! the dashboard's tap table (served as newline-delimited JSON at `GET /tap` on the admin
//! listener, see [`serve`]).
//!
//! The contract with the request path: while nobody taps, recording costs one relaxed atomic
//! load per request ([`Tap::is_active`]) and nothing else, no allocation. While someone taps,
//! each finished request becomes a [`Row`] published on a bounded broadcast channel; publishing
//! never waits, so a tap client that reads slowly loses rows (counted in
//! `trellis_tap_dropped_rows_total`) and never slows traffic. Filters run on the subscriber's
//! task, not on the request path. This module must not decide anything about a request: it only
//! copies what telemetry already knows.

pub mod filter;
pub mod serve;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use http::HeaderValue;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::telemetry::Direction;
use crate::telemetry::requests::{RequestLabels, response_class};

/// Rows buffered per subscriber before the slowest one starts losing rows.
pub const CHANNEL_CAPACITY: usize = 1024;

/// One proxy's tap: shared by the request path (publishes) and the admin server (subscribes).
#[derive(Debug)]
pub struct Tap {
    tx: broadcast::Sender<Arc<Row>>,
    /// Live subscriptions; the request path reads only this.
    subscribers: AtomicUsize,
    /// Rows a subscriber missed because it fell behind.
    dropped: AtomicU64,
}

impl Default for Tap {
    fn default() -> Self {
        Self::new()
    }
}

impl Tap {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(CHANNEL_CAPACITY).0,
            subscribers: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether anyone taps: the one check the request path makes. Relaxed is enough: a request
    /// that races with a new subscription may or may not be shown, either is correct.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.subscribers.load(Relaxed) > 0
    }

    /// Hands a finished request to every subscriber; never waits.
    pub fn publish(&self, row: Row) {
        // `Err` only means every subscriber left since the request began.
        let _ = self.tx.send(Arc::new(row));
    }

    /// Starts receiving rows; [`Tap::is_active`] stays true until the subscription is dropped.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let rx = self.tx.subscribe();
        self.subscribers.fetch_add(1, Relaxed);
        Subscription {
            rx,
            tap: self.clone(),
            lagged: 0,
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Appends `trellis_tap_subscribers` and `trellis_tap_dropped_rows_total` to a scrape.
    pub fn render(&self, out: &mut String) {
        use crate::telemetry::{family, sample};
        // `write!` into a String cannot fail.
        let name = "trellis_tap_subscribers";
        let _ = family(out, name, "gauge", "Tap streams open on this proxy.");
        let _ = sample(out, name, "", self.subscribers.load(Relaxed));
        let name = "trellis_tap_dropped_rows_total";
        let help = "Tap rows lost because a tap client read too slowly.";
        let _ = family(out, name, "counter", help);
        let _ = sample(out, name, "", self.dropped());
    }
}

/// One tap client's view of the stream.
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Row>>,
    tap: Arc<Tap>,
    /// Rows this subscriber lost.
    pub lagged: u64,
}

impl Subscription {
    /// The next row, or `None` when the tap is gone. Rows lost to lag are counted and skipped.
    pub async fn recv(&mut self) -> Option<Arc<Row>> {
        loop {
            match self.rx.recv().await {
                Ok(row) => return Some(row),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.lagged += n;
                    self.tap.dropped.fetch_add(n, Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.tap.subscribers.fetch_sub(1, Relaxed);
    }
}

/// One finished request, as a tap client sees it (one NDJSON line). Field names follow the
/// request metrics' labels; the shape is a contract with `trellis tap`/`top` and the dashboard:
/// add fields, do not rename them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Row {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    pub time: String,
    #[serde(serialize_with = "direction_str")]
    pub direction: Option<Direction>,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub status: u16,
    /// From the trailers (or a trailers-only head) of a gRPC answer.
    pub grpc_status: Option<u32>,
    /// `success` or `failure` (5xx, or a gRPC status other than OK), as in the metrics.
    pub response_class: &'static str,
    /// Request to response headers.
    pub latency_ms: f64,
    /// Request to the end of the response body.
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub source_workload: String,
    pub source_namespace: String,
    pub source_identity: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub destination_identity: String,
    pub destination_service: String,
    /// The hop went over mesh mTLS (inbound: the caller proved an identity).
    pub tls: bool,
    pub route: String,
    /// The proxy's `trellis-error` reason when the proxy made the answer itself.
    pub error: Option<String>,
}

fn direction_str<S: serde::Serializer>(d: &Option<Direction>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.map_or("", Direction::as_str))
}

/// What is known of a tapped request when it arrives; made only while someone taps.
#[derive(Debug)]
pub struct Pending {
    start_unix_nanos: u64,
    method: String,
    authority: String,
    path: String,
}

impl Pending {
    pub fn new(parts: &http::request::Parts) -> Self {
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| parts.headers.get(http::header::HOST)?.to_str().ok())
            .unwrap_or("");
        Self {
            start_unix_nanos: crate::accesslog::unix_nanos(),
            method: parts.method.to_string(),
            authority: authority.to_owned(),
            path: parts.uri.path().to_owned(),
        }
    }

    /// The response head is ready: labels, status and latency are known.
    pub fn answered(
        self,
        labels: &RequestLabels<'_>,
        status: u16,
        latency: Duration,
        error: Option<&HeaderValue>,
    ) -> Box<Row> {
        Box::new(Row {
            time: crate::accesslog::rfc3339(self.start_unix_nanos),
            direction: Some(labels.direction),
            method: self.method,
            authority: self.authority,
            path: self.path,
            status,
            grpc_status: None,
            response_class: response_class(status, None),
            latency_ms: millis(latency),
            duration_ms: millis(latency),
            request_bytes: 0,
            response_bytes: 0,
            source_workload: labels.source.workload.to_owned(),
            source_namespace: labels.source.namespace.to_owned(),
            source_identity: labels.source.identity.to_owned(),
            destination_workload: labels.destination.workload.to_owned(),
            destination_namespace: labels.destination.namespace.to_owned(),
            destination_identity: labels.destination.identity.to_owned(),
            destination_service: labels.destination_service.to_owned(),
            tls: labels.tls,
            route: labels.route.to_owned(),
            error: error.and_then(|v| v.to_str().ok()).map(str::to_owned),
        })
    }
}

impl Row {
    /// The response body ended (or was dropped): the gRPC status, the bytes and the duration.
    pub fn finished(
        &mut self,
        grpc_status: Option<u32>,
        request_bytes: u64,
        response_bytes: u64,
        duration: Duration,
    ) {
        self.grpc_status = grpc_status;
        self.response_class = response_class(self.status, grpc_status);
        self.request_bytes = request_bytes;
        self.response_bytes = response_bytes;
        self.duration_ms = millis(duration);
    }
}

/// Milliseconds with microsecond precision: enough for a terminal, short on the wire.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests;
