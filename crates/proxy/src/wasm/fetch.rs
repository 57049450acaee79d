//! Fetching a module from an `http://` URL (the proxy fetches, as Istio's agent does in the
//! pod): one GET, bounded in size and time, answered 200. The plugin's loader checks the
//! sha256 and compiles it like a file's bytes; a failed fetch keeps the last good version.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// The whole fetch (connect, answer, body) must end within this.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Fetches `url`, refusing a body longer than `max` bytes; the error says what failed.
pub fn fetch(url: &str, max: u64) -> Result<Vec<u8>, String> {
    // The loader runs off the async threads (spawn_blocking) or in a plain test thread.
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(fetch_async(url, max)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("no runtime to fetch with: {e}"))?
            .block_on(fetch_async(url, max)),
    }
}

async fn fetch_async(url: &str, max: u64) -> Result<Vec<u8>, String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let host = uri.host().ok_or("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        // The connection lives as long as this one exchange.
        let conn = tokio::spawn(conn);
        let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
        let req = Request::get(path)
            .header(http::header::HOST, authority)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET: {e}"))?;
        if resp.status() != StatusCode::OK {
            conn.abort();
            return Err(format!("GET answered {}", resp.status()));
        }
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading the module: {e}"))?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() as u64 + data.len() as u64 > max {
                    conn.abort();
                    return Err(format!("the module is longer than {max} bytes"));
                }
                bytes.extend_from_slice(&data);
            }
        }
        conn.abort();
        Ok(bytes)
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no module within {FETCH_TIMEOUT:?}"))?
}
