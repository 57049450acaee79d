//! A minimal HTTP/1.1 `GET` over a plain TCP connection, for reading proxies' admin endpoints
//! (`/metrics`, `/config_dump`) on their loopback or pod addresses.
//!
//! The control crate has no HTTP client and the admin endpoints need none of one's features:
//! one request per connection (`Connection: close`), a bounded body (length-delimited,
//! chunked, or up to EOF), a deadline for the whole exchange. It must not be used for anything
//! that needs TLS, redirects or keep-alive.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A body larger than this is refused: a proxy's `/metrics` is tens of KiB.
pub const MAX_RESPONSE: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET http://{addr}{path}: timed out after {timeout:?}")]
    Timeout {
        addr: SocketAddr,
        path: String,
        timeout: Duration,
    },
    #[error("GET http://{addr}{path}: {source}")]
    Io {
        addr: SocketAddr,
        path: String,
        source: std::io::Error,
    },
    #[error("GET http://{addr}{path}: {reason}")]
    Protocol {
        addr: SocketAddr,
        path: String,
        reason: String,
    },
    #[error("GET http://{addr}{path}: answered {status}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: u16,
    },
}

/// `GET path` from `addr`; the body of a 2xx answer as text (lossy UTF-8).
pub async fn get_text(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<String, FetchError> {
    let raw = match tokio::time::timeout(timeout, exchange(addr, path)).await {
        Ok(result) => result.map_err(|source| FetchError::Io {
            addr,
            path: path.to_string(),
            source,
        })?,
        Err(_) => {
            return Err(FetchError::Timeout {
                addr,
                path: path.to_string(),
                timeout,
            });
        }
    };
    let protocol = |reason: &str| FetchError::Protocol {
        addr,
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let (status, body) = parse_response(&raw).map_err(protocol)?;
    if !(200..300).contains(&status) {
        return Err(FetchError::Status {
            addr,
            path: path.to_string(),
            status,
        });
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

async fn exchange(addr: SocketAddr, path: &str) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\nUser-Agent: trellis-control\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::with_capacity(16 * 1024);
    // One byte past the limit tells "too big" from "exactly the limit".
    (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .await?;
    if raw.len() > MAX_RESPONSE {
        return Err(std::io::Error::other(format!(
            "the response is larger than {MAX_RESPONSE} bytes"
        )));
    }
    Ok(raw)
}

/// Splits a whole HTTP/1.1 response (the connection was closed after it) into status and body.
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), &'static str> {
    let head_end = find(raw, b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err("not an HTTP/1.x status line");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("no status code")?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad content-length")?);
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        body.get(..n)
            .ok_or("body shorter than content-length")?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(data.len());
    loop {
        let line_end = find(data, b"\r\n").ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        // Chunk extensions (`;name=value`) are allowed and meaningless here.
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or("truncated chunk")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_length_delimited_chunked_and_eof_bodies() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"abc"[..]));
        let (s, b) = parse_response(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"abcde"[..]));
        let (s, b) = parse_response(b"HTTP/1.0 503 Nope\r\n\r\ndown").unwrap();
        assert_eq!((s, b.as_slice()), (503, &b"down"[..]));
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        for raw in [
            &b""[..],
            b"hello",
            b"SSH-2.0\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
        ] {
            assert!(parse_response(raw).is_err(), "{raw:?}");
        }
    }

    #[tokio::test]
    async fn fetches_from_a_real_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = sock.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /metrics HTTP/1.1\r\n"));
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nx 1\n\n")
                .await
                .unwrap();
        });
        let text = get_text(addr, "/metrics", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(text, "x 1\n\n");
        // Nothing listens on a port just released: a clear error, not a hang.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = get_text(closed, "/metrics", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&closed.to_string()), "{err}");
    }
}
