//! Reading the control plane's `GET /api/v1/tap` stream line by line (for `tap` and `top`).
//!
//! The shared [`crate::http_client`] reads whole bodies; a tap stream lasts until its bound, so
//! this opens one HTTP/1.1 connection and yields each NDJSON line as it arrives.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Connecting and reading the response head.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// A longer line is not a tap row.
const MAX_LINE: usize = 64 * 1024;

/// Why no stream was opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the control plane at http://{addr} is not reachable: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    /// The control plane refused the query (the message is its own, e.g. an unknown filter).
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
}

/// An open tap stream.
#[derive(Debug)]
pub struct TapStream {
    body: Incoming,
    buf: Vec<u8>,
    /// The proxies the control plane tapped (its `trellis-tap-proxies` header).
    pub proxies: Vec<String>,
}

/// `GET /api/v1/tap?{query}` on the control plane at `control`.
pub async fn open(control: SocketAddr, query: &str) -> Result<TapStream, OpenError> {
    let unreachable = |reason: String| OpenError::Unreachable {
        addr: control,
        reason,
    };
    let opening = async {
        let tcp = TcpStream::connect(control)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // The connection task ends with the stream (or when the response is dropped).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(format!("/api/v1/tap?{query}"))
            .header(http::header::HOST, control.to_string())
            .header(http::header::ACCEPT, "application/x-ndjson")
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok::<_, OpenError>(resp)
    };
    let resp = tokio::time::timeout(OPEN_TIMEOUT, opening)
        .await
        .map_err(|_| unreachable(format!("no answer within {OPEN_TIMEOUT:?}")))??;
    let status = resp.status();
    let proxies = resp
        .headers()
        .get("trellis-tap-proxies")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    if !status.is_success() {
        let body = tokio::time::timeout(OPEN_TIMEOUT, resp.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        return Err(OpenError::Refused {
            status,
            message: if body.is_empty() {
                format!("the control plane answered {status}")
            } else {
                body
            },
        });
    }
    Ok(TapStream {
        body: resp.into_body(),
        buf: Vec::new(),
        proxies,
    })
}

impl TapStream {
    /// The next line (without its newline), `Ok(None)` at the end of the stream.
    pub async fn next_line(&mut self) -> Result<Option<String>, String> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..i]).into_owned()));
            }
            if self.buf.len() > MAX_LINE {
                return Err("the tap stream sent a line longer than 64 KiB".into());
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(format!("the tap stream broke: {e}")),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// Percent-encodes a query value (all but RFC 3986's unreserved characters and `/`).
pub fn encode(s: &str) -> String {
    use std::fmt::Write as _;
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
