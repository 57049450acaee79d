//! External programs the tests drive (curl, h2load, Python with grpcio), and a tiny HTTP/1.0
//! client for admin endpoints that needs no runtime.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Panics with an install hint unless `program` is on PATH: a missing client is a broken test
/// machine, which `scripts/test.sh` fixes, not a reason to pass silently.
pub fn require(program: &str, debian_package: &str) -> PathBuf {
    which(program).unwrap_or_else(|| {
        panic!(
            "`{program}` is not installed; run scripts/test.sh (it installs what the tests need) \
             or `apt-get install {debian_package}`"
        )
    })
}

/// The first `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A Python interpreter that can `import grpc`: `$TRELLIS_PYTHON`, else Debian's
/// `/usr/bin/python3` (where `python3-grpcio` installs), else `python3` on PATH. Panics with an
/// install hint when none can.
pub fn python_with_grpc() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("TRELLIS_PYTHON") {
        candidates.push(p.into());
    }
    candidates.push("/usr/bin/python3".into());
    if let Some(p) = which("python3") {
        candidates.push(p);
    }
    for candidate in &candidates {
        let ok = Command::new(candidate)
            .args(["-c", "import grpc"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return candidate.clone();
        }
    }
    panic!(
        "no Python with grpcio among {candidates:?}; run scripts/test.sh or \
         `apt-get install python3-grpcio` (or `pip install grpcio`), or set TRELLIS_PYTHON"
    )
}

/// `GET path` over HTTP/1.0 with a short timeout; returns the status code and body.
///
/// Deliberately minimal (no keep-alive, no chunked decoding: HTTP/1.0 servers answer with a
/// close-delimited body) so that scraping a proxy's admin port needs no async runtime.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    http_request(addr, "GET", path)
}

/// Like [`http_get`] with another method (`POST /shutdown`).
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String), String> {
    let timeout = Duration::from_secs(5);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    parse_response(&raw).ok_or_else(|| {
        format!(
            "malformed HTTP response from {addr}: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// Splits a raw HTTP/1.x response into status and body (decoding a chunked body if needed).
pub fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    // Each iteration consumes one chunk; the zero-size chunk ends the loop.
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(parse_response(plain), Some((200, "ok".to_string())));
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((503, "abcde".to_string())));
    }
}
