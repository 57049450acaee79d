//! The egress gateway tests' fixture (`egress_gateway.rs`, `egress_gateway_https.rs`): one
//! node with the external host [`HOST`] (servers in pod `ext`, no proxy), the egress gateway in
//! pod `egress`, and the client's sidecar in pod `sleep`, which may not reach the host itself
//! (an iptables rule stands for the NetworkPolicy a cluster would use). The control plane runs
//! in the node with REGISTRY_ONLY and resolves the host's name there. What each test then
//! sends and checks stays in the test.
//!
//! Needs the crate's `external` module (`mod external;` beside `mod support;`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use trellis_testkit::egress::{NodeHosts, block, captured_client, registry_only_control};
use trellis_testkit::mesh::config_dir;
use trellis_testkit::{ControlPlane, Node, Pod, Proxy, ProxyBuilder, wait};

use crate::external;

/// How long config and proxies get to converge.
pub const CONVERGE: Duration = Duration::from_secs(20);
/// The external host of Istio's egress tasks, resolved by the control plane's node.
pub const HOST: &str = "edition.cnn.com";

/// An external server to start in pod `ext`: the name it answers with, its port, and its
/// certificates when it speaks HTTPS only.
pub struct Server<'a> {
    pub name: &'a str,
    pub port: u16,
    pub tls: Option<&'a external::Certs>,
}

/// Everything a test here starts; see the module docs.
pub struct Egress {
    // Fields drop in this order: the processes before the pods and the node they run in.
    pub client: Proxy,
    pub gw: Proxy,
    _control: ControlPlane,
    /// The control plane's config directory: tests remove and write files in it.
    pub config: tempfile::TempDir,
    _servers: Vec<external::External>,
    _hosts: NodeHosts,
    pub sleep: Pod,
    pub egress: Pod,
    pub ext: Pod,
    _node: Node,
}

impl Egress {
    /// Starts `servers`, a control plane reading `config` (file name, YAML), the egress gateway
    /// `gateway` makes for its pod (started here, ready within [`CONVERGE`]), then the client's
    /// sidecar; last, blocks the client pod from the host.
    pub fn start(
        servers: &[Server<'_>],
        config: &[(&str, &str)],
        gateway: impl FnOnce(&Pod, &ControlPlane) -> ProxyBuilder,
    ) -> Self {
        let node = Node::new().unwrap();
        let ext = node.pod().unwrap();
        let egress = node.pod().unwrap();
        let sleep = node.pod().unwrap();
        let hosts = NodeHosts::new(&node, &format!("{} {HOST}", ext.ip())).unwrap();
        let servers = servers
            .iter()
            .map(|s| {
                let tls = s.tls.map(|c| (c.cert.as_path(), c.key.as_path()));
                external::start(&ext, s.name, s.port, tls)
            })
            .collect();
        let files: Vec<(&str, String)> = config.iter().map(|(f, y)| (*f, y.to_string())).collect();
        let config = config_dir(&files).unwrap();
        let control = registry_only_control(&node, config.path()).unwrap();
        let gw = gateway(&egress, &control).start().unwrap();
        gw.wait_ready(CONVERGE).unwrap();
        let client = captured_client(&sleep, &control, "sleep-0", "sleep", CONVERGE).unwrap();
        block(&sleep, ext.ip()).unwrap();
        Self {
            client,
            gw,
            _control: control,
            config,
            _servers: servers,
            _hosts: hosts,
            sleep,
            egress,
            ext,
            _node: node,
        }
    }

    /// `--resolve` for the host's `port`: the client resolves the name as DNS would.
    pub fn resolve(&self, port: u16) -> String {
        format!("{HOST}:{port}:{}", self.ext.ip())
    }

    /// `http://HOST{path}` from the client pod: the status (0: no answer), curl's error, body.
    pub fn curl(&self, path: &str) -> (u16, Option<String>, String) {
        external::curl(
            &self.sleep,
            &format!("http://{HOST}{path}"),
            Some(&self.resolve(80)),
        )
    }

    /// [`Egress::curl`] until it answers 200 (the config has reached the proxies); the body.
    pub fn curl_ok(&self, path: &str) -> String {
        external::curl_ok(
            &self.sleep,
            &format!("http://{HOST}{path}"),
            Some(&self.resolve(80)),
            CONVERGE,
        )
    }

    /// `curl https://HOST{path}` from the client pod, verifying the host's certificate against
    /// `ca`: the HTTP status (0: no answer) and the body, or curl's error when not 200.
    pub fn curl_https(&self, ca: &std::path::Path, path: &str) -> (u16, String) {
        let resolve = self.resolve(443);
        let url = format!("https://{HOST}{path}");
        let ca = ca.display().to_string();
        let args = [
            "--cacert",
            ca.as_str(),
            "--resolve",
            resolve.as_str(),
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            url.as_str(),
        ];
        let out = self.sleep.curl(None, &args).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or_default();
        let code = code.trim().parse().unwrap_or(0);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (code, if code == 200 { body.to_string() } else { err })
    }

    /// [`Egress::curl_https`] until it answers 200; the body.
    pub fn curl_https_ok(&self, ca: &std::path::Path, path: &str) -> String {
        wait::until(CONVERGE, || match self.curl_https(ca, path) {
            (200, body) => Ok(body),
            (code, err) => Err(format!("{code}: {err}")),
        })
        .unwrap_or_else(|e| panic!("https://{HOST}{path}: {e}"))
    }

    /// Panics unless the gateway's inbound (the sidecar -> gateway hop) was mesh mTLS.
    pub fn assert_gateway_meshed_inbound(&self) {
        if let Err(err) = self.gw.metrics().check_meshed_inbound() {
            panic!("sidecar -> egress gateway hop is not mTLS: {err}");
        }
    }
}

/// The JSON an external server answered with.
pub fn reply(body: &str) -> external::Reply {
    serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("not an external server's reply: {e}: {body}"))
}
