//! External programs the tests drive (curl, h2load, Python with grpcio), and a tiny HTTP/1.0
//! client for admin endpoints that needs no runtime.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

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

/// Runs `command` to completion, killing it if it takes longer than `timeout`.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Result<Output, String> {
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    wait_bounded(&format!("{command:?}"), child, timeout)
}

/// Like [`run_bounded`], with `input` written to the command's stdin (then closed).
pub fn run_bounded_with_input(
    command: &mut Command,
    input: &[u8],
    timeout: Duration,
) -> Result<Output, String> {
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    // From a thread, so input larger than the pipe cannot block us past the deadline.
    let mut stdin = child.stdin.take();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(stdin) = stdin.as_mut() {
            // A command that exits without reading all of it is judged by its exit status.
            let _ = stdin.write_all(&input);
        }
    });
    let out = wait_bounded(&format!("{command:?}"), child, timeout);
    let _ = writer.join();
    out
}

/// `kubectl --kubeconfig KUBECONFIG ARGS` with `input` on stdin, bounded by a minute; its output
/// whatever its status.
pub fn kubectl(kubeconfig: &Path, args: &[&str], input: &[u8]) -> Result<Output, String> {
    run_bounded_with_input(
        Command::new(require("kubectl", "kubernetes-client"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args),
        input,
        Duration::from_secs(60),
    )
}

/// Waits for `child` (named `what` in errors) and collects its output; kills it once `timeout`
/// has passed.
pub(crate) fn wait_bounded(
    what: &str,
    mut child: std::process::Child,
    timeout: Duration,
) -> Result<Output, String> {
    let deadline = Instant::now() + timeout;
    // Polls rather than blocking in wait(), so the deadline holds; output is small, so the pipes
    // cannot fill up and stall the child meanwhile.
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} took longer than {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    }
    child.wait_with_output().map_err(|e| format!("{what}: {e}"))
}

/// Runs `curl -sS --max-time 10 ARGS` on the host; returns its output whatever its status.
pub fn curl(args: &[&str]) -> Result<Output, String> {
    let curl = require("curl", "curl");
    run_bounded(
        Command::new(curl)
            .args(["-sS", "--max-time", "10"])
            .args(args),
        Duration::from_secs(15),
    )
}

/// What [`curl_http`] saw.
#[derive(Clone, Debug)]
pub struct CurlReply {
    pub status: u16,
    /// As curl reports it: `1.1` or `2`.
    pub http_version: String,
    pub body: String,
}

impl CurlReply {
    /// The body as the HTTP echo's JSON. Panics with the body when it is not that.
    pub fn echo(&self) -> crate::servers::EchoReply {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an echo reply ({e}): status {} body {:?}",
                self.status, self.body
            )
        })
    }
}

/// Runs curl with `args` and returns status, HTTP version and body; fails if curl itself fails
/// (connection refused, reset, timeout), with curl's error message.
pub fn curl_http(args: &[&str]) -> Result<CurlReply, String> {
    const MARK: &str = "\n--trellis-curl-- %{http_code} %{http_version}";
    let mut all = vec!["-w", MARK];
    all.extend_from_slice(args);
    let out = curl(&all)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "curl {args:?} failed ({}): {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            text
        ));
    }
    let (body, trailer) = text
        .rsplit_once("\n--trellis-curl-- ")
        .ok_or_else(|| format!("curl {args:?}: no status line in {text:?}"))?;
    let mut fields = trailer.split_whitespace();
    let status = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let http_version = fields.next().unwrap_or_default().to_string();
    Ok(CurlReply {
        status,
        http_version,
        body: body.to_string(),
    })
}

/// A loopback port free right now, for a program that takes a port rather than reporting the
/// one it bound (`openssl s_server -accept`, `--gateway-port`, a webhook's URL). Panics if
/// loopback cannot be bound: the machine cannot run these tests.
///
/// Picked below the kernel's ephemeral range (`ip_local_port_range`), not by binding port 0:
/// the suite's load tests open thousands of connections, and each takes a source port from that
/// range, so a port the OS handed out and this function released was at times taken by some
/// connection before the program could bind it (`Address already in use`). Below the range only
/// ports named this way are used; each process starts at its own offset and walks on.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const SPAN: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let low = first_ephemeral.saturating_sub(SPAN).max(1_024);
    let span = first_ephemeral.saturating_sub(low);
    if span >= 100 {
        let start = std::process::id().wrapping_mul(7_919);
        for _ in 0..span.min(2_000) {
            let step = NEXT.fetch_add(1, Ordering::Relaxed);
            let Ok(port) = u16::try_from(low + start.wrapping_add(step.wrapping_mul(97)) % span)
            else {
                continue;
            };
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"))
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
