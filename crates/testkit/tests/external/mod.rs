//! "External" hosts for the ServiceEntry and egress tests: a small HTTP(S) server run in a pod
//! of its own with no proxy and no iptables (a host outside the mesh), which answers every
//! request with JSON naming itself, so a test can tell which endpoint served it. Plus a CA and
//! a server certificate made with the `openssl` command, for TLS origination.
//!
//! The server is Python's standard library (`http.server`, `ssl`): a real, independent HTTP/1.1
//! and TLS implementation, as an external API would be.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use trellis_testkit::{ManagedProcess, Pod, certs};

/// Answers `GET` with `{"server": NAME, "path": ..., "host": ...}`; `?delay=MS` in the path
/// waits that long first. TLS when a certificate and key are given.
const SERVER: &str = r#"
import http.server, json, os, ssl, sys, time, urllib.parse
name, port, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cert = sys.argv[4] if len(sys.argv) > 5 else None
key = sys.argv[5] if len(sys.argv) > 5 else None

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        delay = int(query.get("delay", ["0"])[0])
        time.sleep(min(delay, 10000) / 1000.0)
        body = json.dumps({"server": name, "path": self.path,
                           "host": self.headers.get("Host", "")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
server.daemon_threads = True
if cert:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
tmp = ready + ".tmp"
with open(tmp, "w") as f:
    json.dump({"pid": os.getpid(), "port": port}, f)
os.rename(tmp, ready)
server.serve_forever()
"#;

#[derive(serde::Deserialize)]
struct Ready {
    #[allow(dead_code)]
    pid: u32,
}

/// A running external server; stopped when dropped.
pub struct External {
    pub process: ManagedProcess,
    _dir: tempfile::TempDir,
}

/// Starts the server named `name` in `pod` on `port`; HTTPS with `tls` = (cert, key).
pub fn start(pod: &Pod, name: &str, port: u16, tls: Option<(&Path, &Path)>) -> External {
    let dir = tempfile::Builder::new()
        .prefix("trellis-external-")
        .tempdir()
        .unwrap();
    let script = dir.path().join("server.py");
    std::fs::write(&script, SERVER).unwrap();
    let ready = dir.path().join("ready.json");
    let mut c = pod.command("python3");
    c.arg(&script).arg(name).arg(port.to_string()).arg(&ready);
    if let Some((cert, key)) = tls {
        c.arg(cert).arg(key);
    }
    let mut process = ManagedProcess::spawn(format!("external {name}"), c).unwrap();
    let _: Ready = process
        .wait_ready_file(&ready, Duration::from_secs(15))
        .unwrap();
    External { process, _dir: dir }
}

/// What the server answered.
#[derive(Debug, serde::Deserialize)]
pub struct Reply {
    pub server: String,
    pub path: String,
    pub host: String,
}

/// A CA and a server certificate for `host` it signed, as PEM files in a directory every uid
/// can read (the proxies run as uid 1337 and read `caCertificates` themselves).
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes [`Certs`] for `host`; a missing `openssl` fails the test (scripts/test.sh installs
/// it) rather than skipping its TLS part.
pub fn certs(host: &str) -> Certs {
    let dir = tempfile::Builder::new()
        .prefix("trellis-external-certs-")
        .tempdir()
        .unwrap();
    let p = dir.path();
    certs::ca(p, "ca").unwrap_or_else(|e| panic!("{e}"));
    certs::server_cert(p, "ca", "server", host).unwrap_or_else(|e| panic!("{e}"));
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::set_permissions(p.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    Certs {
        ca: p.join("ca.pem"),
        cert: p.join("server.pem"),
        key: p.join("server.key"),
        dir,
    }
}

/// curl in `pod` (captured by its sidecar), returning status, `trellis-error` header and body.
/// `resolve` pins `host:port` to an address, as DNS would.
pub fn curl(pod: &Pod, url: &str, resolve: Option<&str>) -> (u16, Option<String>, String) {
    let mut args = vec!["-D", "-", "-o", "-", "-w", "\n%{http_code}"];
    if let Some(r) = resolve {
        args.extend(["--resolve", r]);
    }
    args.push(url);
    let out = pod.curl(None, &args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').unwrap_or_default();
    let code: u16 = code.trim().parse().unwrap_or(0);
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    let error = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("trellis-error")
            .then(|| v.trim().to_string())
    });
    (code, error, body.to_string())
}

/// [`curl`] until it answers 200 (the config has reached the sidecar), within `timeout`; the
/// body. Fails the test with the last answer otherwise.
pub fn curl_ok(pod: &Pod, url: &str, resolve: Option<&str>, timeout: Duration) -> String {
    trellis_testkit::wait::until(timeout, || match curl(pod, url, resolve) {
        (200, _, body) => Ok(body),
        (code, err, body) => Err(format!("got {code} {err:?} {body}")),
    })
    .unwrap_or_else(|e| panic!("{url}: {e}"))
}
