//! The few WebDriver calls the dashboard tests need, over a small HTTP/1.1 client, and the
//! `chromedriver` + Chromium they run against; also a process-group guard.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::{Value, json};
pub use trellis_testkit::tools::free_port;

const SCREENSHOTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/img");

/// The flags that let Chromium run here: no sandbox (root), no GPU, and none of the background
/// connections a closed network refuses (see the machine notes).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1000",
];

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client (one request per connection) for WebDriver and the load.

pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).unwrap();
    // Read the head, then exactly the body it announces: chromedriver keeps the connection open
    // whatever the request says, so EOF cannot mark the end.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let complete = |raw: &[u8]| -> Option<usize> {
        let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        let body = &raw[head_end + 4..];
        if head.contains("transfer-encoding: chunked") {
            return body
                .windows(5)
                .any(|w| w == b"0\r\n\r\n")
                .then_some(head_end);
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())?;
        (body.len() >= length).then_some(head_end)
    };
    loop {
        if complete(&raw).is_some() {
            break;
        }
        let n = stream
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"));
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP head in {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[head_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[end + 4 + size..];
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// WebDriver

/// `chromedriver` in its own process group with one Chromium session; both are killed on drop.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Self {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) is not installed: run scripts/test.sh, apt-get install chromium chromium-driver, or set TRELLIS_SKIP_BROWSER=1");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                let (status, body) = http(addr, "GET", "/status", &[], None);
                let ready = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["value"]["ready"].as_bool());
                if status == 200 && ready == Some(true) {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready on {addr} after 15 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!(
            "--user-data-dir={}",
            browser._profile.path().display()
        ));
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("Debian's chromium is not installed");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": binary, "args": args},
        }}});
        let value = browser.call("POST", "/session", Some(&caps));
        browser.session = value["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser
    }

    /// One WebDriver command; its `value`. A WebDriver error fails the test with its message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let empty = json!({});
        let body = body.or(if method == "POST" { Some(&empty) } else { None });
        let (status, bytes) = http(self.addr, method, path, &[], body);
        let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        assert!(status == 200, "{method} {path}: {status} {value}");
        value["value"].clone()
    }

    pub fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(&json!({"url": url})),
        );
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(&json!({"script": script, "args": args})),
        )
    }

    /// Presses keys (WebDriver key codes) one after another, as a keyboard would.
    pub fn keys(&self, keys: &[&str]) {
        let mut actions = Vec::new();
        for k in keys {
            actions.push(json!({"type": "keyDown", "value": k}));
            actions.push(json!({"type": "keyUp", "value": k}));
        }
        let body = json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]});
        self.call("POST", &self.session_path("/actions"), Some(&body));
    }

    /// Chrome's DevTools command through chromedriver (for the dark colour scheme).
    pub fn cdp(&self, cmd: &str, params: Value) {
        self.call(
            "POST",
            &self.session_path("/goog/cdp/execute"),
            Some(&json!({"cmd": cmd, "params": params})),
        );
    }

    /// Saves what the window shows as `docs/img/<name>` when TRELLIS_UPDATE_SCREENSHOTS=1.
    pub fn screenshot(&self, name: &str) {
        let png = base64_decode(
            self.call("GET", &self.session_path("/screenshot"), None)
                .as_str()
                .unwrap(),
        );
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        if std::env::var_os("TRELLIS_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
            std::fs::create_dir_all(SCREENSHOTS).unwrap();
            std::fs::write(Path::new(SCREENSHOTS).join(name), png).unwrap();
        }
    }

    /// Polls `script` every 250 ms until `done` accepts its value; panics after `limit`.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        script: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.run(script, json!([]));
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not after {limit:?}; last seen: {value}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                http(
                    self.addr,
                    "DELETE",
                    &format!("/session/{}", self.session),
                    &[],
                    None,
                )
            }));
        }
        if let Ok(pid) = i32::try_from(self.driver.id())
            && let Some(pid) = Pid::from_raw(pid)
        {
            let _ = kill_process_group(pid, Signal::KILL);
        }
        let _ = self.driver.wait();
    }
}

/// A child in its own process group, killed with the group on drop.
pub struct Group(pub Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id())
            && let Some(pid) = Pid::from_raw(pid)
        {
            let _ = kill_process_group(pid, Signal::KILL);
        }
        let _ = self.0.wait();
    }
}
