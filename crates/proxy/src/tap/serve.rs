//! `GET /tap` on the admin listener: one JSON object per line per finished request matching the
//! query, until `max_rows` rows were sent, `max_seconds` passed, the client left or the proxy
//! exits. The subscription is taken before the response head goes out, so a client that has
//! the head sees every request that finishes after it.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Tap;
use super::filter::Query;

/// Encoded lines waiting for the client; past this the subscriber's channel absorbs bursts, and
/// past that rows are lost (counted), never waited for.
const LINES_IN_FLIGHT: usize = 64;

/// The admin server's body type, shared by the tap stream and the other endpoints.
pub type AdminBody = BoxBody<Bytes, Infallible>;

/// Answers `GET /tap?<query>`; `stop` ends the stream when the proxy exits.
pub fn serve(tap: &Arc<Tap>, query: Option<&str>, stop: &CancellationToken) -> Response<AdminBody> {
    let query = match Query::parse(query.unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("tap: {e}\n")),
    };
    let mut sub = tap.subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(LINES_IN_FLIGHT);
    let stop = stop.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(query.max_seconds);
        tokio::pin!(deadline);
        let mut sent = 0;
        while sent < query.max_rows {
            let row = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = &mut deadline => break,
                _ = tx.closed() => break,
                row = sub.recv() => match row {
                    Some(row) => row,
                    None => break,
                },
            };
            if !query.matches(&row) {
                continue;
            }
            let mut line = match serde_json::to_vec(&*row) {
                Ok(line) => line,
                Err(e) => {
                    tracing::warn!(error = %e, "tap: cannot encode a row");
                    continue;
                }
            };
            line.push(b'\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                break;
            }
            sent += 1;
        }
        if sub.lagged > 0 {
            tracing::info!(
                lost = sub.lagged,
                "tap client read too slowly and lost rows"
            );
        }
    });
    let mut resp = Response::new(Lines { rx }.boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    resp
}

fn text(status: StatusCode, body: String) -> Response<AdminBody> {
    let mut resp = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// A body that yields each line as its own frame (so each is flushed as it comes) and ends when
/// the streaming task drops its sender.
#[derive(Debug)]
struct Lines {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for Lines {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}
