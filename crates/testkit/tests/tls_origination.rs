//! DestinationRule TLS origination with the real processes, in local mode on loopback: a
//! `trellis-control` reading a config directory, a `trellis-proxy` sidecar whose application is
//! curl (plain HTTP to its explicit outbound port), and an "external" host declared by a
//! ServiceEntry (STATIC, endpoint 127.0.0.1 at the port of an `openssl s_server -www`, which
//! answers every request with a page about the TLS session it served it on).
//!
//! SIMPLE works through the sidecar; MUTUAL presents the client certificate and the server
//! sees it (`s_server -Verify`), without one the server refuses; a `subjectAltNames` the
//! certificate lacks fails the handshake (counted by reason), one it has passes whatever the
//! SNI; `insecureSkipVerify` passes a self-signed certificate no configured root issued; a
//! key file that cannot be read is named (rule and field) and the last good settings stay.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use trellis_testkit::mesh::{config_dir, write_config};
use trellis_testkit::tools::{free_port, require};
use trellis_testkit::{ControlPlane, ManagedProcess, Proxy, ProxyBuilder, certs, wait};

const HOST: &str = "secure.external.test";
/// The address the ServiceEntry gives its host: nobody listens there; the sidecar's outbound
/// port targets it and discovery maps it to the entry.
const VIP: &str = "127.0.0.77";
const CONVERGE: Duration = Duration::from_secs(15);

/// `openssl s_server -www` on a free loopback port, with `cert`/`key` (file names in `dir`) and
/// `extra` flags. Stopped on drop.
struct HttpsServer {
    process: ManagedProcess,
    port: u16,
}

impl HttpsServer {
    fn start(dir: &Path, cert: &str, key: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let mut command = Command::new(require("openssl", "openssl"));
        command
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
            .args(["-cert", cert, "-key", key, "-www"])
            .args(extra)
            .current_dir(dir);
        let process = ManagedProcess::spawn("openssl s_server", command).unwrap();
        wait::until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map_err(|e| format!("s_server on {port}: {e}"))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", process.log()));
        Self { process, port }
    }
}

/// The ServiceEntry for [`HOST`] (port 80, HTTP, sent to the server's port) and a
/// DestinationRule with `tls` (a YAML flow mapping).
fn config(server_port: u16, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure}}
spec:
  hosts: [{HOST}]
  addresses: [{VIP}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {server_port}}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure}}
spec:
  host: {HOST}
  trafficPolicy:
    tls: {tls}
"
    )
}

/// A control plane reading `config` and a sidecar with an outbound port to the host.
struct Mesh {
    dir: tempfile::TempDir,
    _control: ControlPlane,
    proxy: Proxy,
    proxy_log: PathBuf,
    outbound: SocketAddr,
}

impl Mesh {
    fn start(config: String) -> Self {
        let dir = config_dir(&[("secure.yaml", config)]).unwrap();
        let control = ControlPlane::start(dir.path()).unwrap();
        let target = format!("{VIP}:80");
        let mut proxy = ProxyBuilder::loopback("app")
            .label("app", "app")
            .control(&control.url())
            .outbound_port(&target)
            .start()
            .unwrap();
        let outbound = proxy.outbound_port(&target);
        let proxy_log = proxy.process().log_path().to_path_buf();
        Self {
            dir,
            _control: control,
            proxy,
            proxy_log,
            outbound,
        }
    }

    fn reconfigure(&self, config: String) {
        write_config(self.dir.path(), "secure.yaml", &config).unwrap();
    }

    /// `GET path` with curl, plain HTTP to the sidecar: status, `trellis-error`, body.
    fn get(&self, path: &str) -> (u16, Option<String>, String) {
        let url = format!("http://{}{path}", self.outbound);
        let out = trellis_testkit::tools::curl(&["-D", "-", "-H", &format!("Host: {HOST}"), &url])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let error = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("trellis-error")
                .then(|| value.trim().to_string())
        });
        (status, error, body.to_string())
    }

    /// Waits (bounded) until `GET path` gives `status`; returns the last answer.
    fn until_status(&self, path: &str, status: u16) -> (u16, Option<String>, String) {
        wait::until(CONVERGE, || {
            let got = self.get(path);
            if got.0 == status {
                Ok(got)
            } else {
                Err(format!("want {status}, got {got:?}"))
            }
        })
        .unwrap_or_else(|e| panic!("{e}\nproxy log:\n{}", self.log()))
    }

    fn handshake_failures(&self, reason: &str) -> f64 {
        self.proxy.metrics().sum(
            "trellis_tls_handshake_failures_total",
            &[("direction", "outbound"), ("reason", reason)],
        )
    }

    fn log(&self) -> String {
        std::fs::read(&self.proxy_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// A CA `ca` and a server certificate `server` for [`HOST`] in `dir`.
fn server_certs(dir: &Path) {
    certs::ca(dir, "ca").unwrap();
    certs::server_cert(dir, "ca", "server", HOST).unwrap();
}

fn path(dir: &Path, file: &str) -> PathBuf {
    dir.join(file)
}

#[test]
fn simple_originates_tls_through_the_sidecar() {
    let certs_dir = tempfile::tempdir().unwrap();
    server_certs(certs_dir.path());
    let server = HttpsServer::start(certs_dir.path(), "server.pem", "server.key", &[]);
    let ca = path(certs_dir.path(), "ca.pem");
    let mesh = Mesh::start(config(
        server.port,
        &format!(
            "{{mode: SIMPLE, caCertificates: {}, sni: {HOST}}}",
            ca.display()
        ),
    ));
    let (_, _, body) = mesh.until_status("/simple", 200);
    // s_server -www describes the TLS session: the request reached it over TLS.
    assert!(body.contains("Cipher"), "{body}");
    assert!(body.contains("no client certificate available"), "{body}");
    for i in 0..5 {
        let (status, error, body) = mesh.get(&format!("/again/{i}"));
        assert_eq!(status, 200, "{error:?} {body}");
    }
    let _ = &server.process;
}

/// A client CA `client-ca` and a client certificate `client` (clientAuth, CN `trellis-app`)
/// in `dir`.
fn client_certs(dir: &Path) {
    certs::ca(dir, "client-ca").unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\nsubjectAltName=URI:spiffe://external.test/app\n",
    )
    .unwrap();
    certs::openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=trellis-app",
        ],
    )
    .unwrap();
    certs::openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "client-ca.pem",
            "-CAkey",
            "client-ca.key",
            "-CAcreateserial",
            "-out",
            "client.pem",
            "-days",
            "1",
            "-extfile",
            "client.ext",
        ],
    )
    .unwrap();
}

#[test]
fn mutual_presents_the_client_certificate_and_without_one_the_server_refuses() {
    let certs_dir = tempfile::tempdir().unwrap();
    let dir = certs_dir.path();
    server_certs(dir);
    client_certs(dir);
    // -Verify: a client certificate from client-ca is required.
    let server = HttpsServer::start(
        dir,
        "server.pem",
        "server.key",
        &[
            "-Verify",
            "1",
            "-CAfile",
            "client-ca.pem",
            "-verify_return_error",
        ],
    );
    let mutual = |key: &str| {
        format!(
            "{{mode: MUTUAL, caCertificates: {}, clientCertificate: {}, privateKey: {}}}",
            path(dir, "ca.pem").display(),
            path(dir, "client.pem").display(),
            path(dir, key).display()
        )
    };
    let mesh = Mesh::start(config(server.port, &mutual("client.key")));
    let (_, _, body) = mesh.until_status("/mutual", 200);
    // The server saw the certificate the sidecar presented.
    assert!(
        body.contains("Client certificate") && body.contains("trellis-app"),
        "{body}"
    );

    // A key file that is not there: the proxy names the rule and the field, and keeps the
    // last good settings (requests still succeed with the client certificate).
    mesh.reconfigure(config(server.port, &mutual("missing.key")));
    let named = "DestinationRule default/secure spec.trafficPolicy.tls.privateKey: cannot read";
    // The plan is rebuilt (and the files read) on the first request after the update.
    wait::until(CONVERGE, || {
        let (status, error, body) = mesh.get("/kept");
        if status != 200 {
            return Err(format!(
                "the last good settings did not stay: {status} {error:?} {body}"
            ));
        }
        let log = mesh.log();
        (log.contains(named) && log.contains("missing.key"))
            .then_some(())
            .ok_or_else(|| "no error naming the rule and privateKey yet".to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", mesh.log()));
    let (status, error, body) = mesh.get("/kept");
    assert_eq!(status, 200, "{error:?} {body}");
    assert!(body.contains("trellis-app"), "{body}");

    // SIMPLE: no client certificate, and the server refuses the connection. In TLS 1.3 the
    // refusal arrives after the client's side of the handshake (as an alert on the first read),
    // so it is either an origination failure or a reset; never a 200.
    mesh.reconfigure(config(
        server.port,
        &format!(
            "{{mode: SIMPLE, caCertificates: {}}}",
            path(dir, "ca.pem").display()
        ),
    ));
    let (_, error, body) = mesh.until_status("/no-client-cert", 502);
    assert!(
        matches!(
            error.as_deref(),
            Some("upstream TLS origination failed" | "upstream reset")
        ),
        "{error:?} {body}"
    );
    for i in 0..3 {
        let (status, error, _) = mesh.get(&format!("/still-refused/{i}"));
        assert_eq!(status, 502, "{error:?}");
    }
}

#[test]
fn subject_alt_names_must_match_and_a_mismatch_is_a_counted_handshake_failure() {
    let certs_dir = tempfile::tempdir().unwrap();
    let dir = certs_dir.path();
    server_certs(dir);
    let server = HttpsServer::start(dir, "server.pem", "server.key", &[]);
    let ca = path(dir, "ca.pem");
    let tls = |sans: &str| {
        format!(
            "{{mode: SIMPLE, caCertificates: {}, sni: sni.elsewhere.test, subjectAltNames: [{sans}]}}",
            ca.display()
        )
    };
    // The SNI is not in the certificate, but a listed name is: it passes.
    let mesh = Mesh::start(config(server.port, &tls(&format!("other.test, {HOST}"))));
    let (_, _, body) = mesh.until_status("/san-ok", 200);
    assert!(body.contains("Cipher"), "{body}");

    mesh.reconfigure(config(server.port, &tls("wrong.external.test")));
    let before = mesh.handshake_failures("identity_mismatch");
    let (_, error, body) = mesh.until_status("/san-wrong", 502);
    assert_eq!(
        error.as_deref(),
        Some("upstream TLS origination failed"),
        "{body}"
    );
    for i in 0..4 {
        let (status, error, _) = mesh.get(&format!("/san-wrong/{i}"));
        assert_eq!(status, 502, "{error:?}");
    }
    let after = mesh.handshake_failures("identity_mismatch");
    assert!(
        after >= before + 5.0,
        "identity_mismatch failures went from {before} to {after}"
    );
    assert!(
        mesh.log().contains("wrong.external.test"),
        "the log does not say which names were wanted:\n{}",
        mesh.log()
    );
}

#[test]
fn insecure_skip_verify_passes_a_self_signed_certificate_no_root_issued() {
    let certs_dir = tempfile::tempdir().unwrap();
    let dir = certs_dir.path();
    // The server's certificate is self-signed; caCertificates is an unrelated CA.
    certs::ca(dir, "unrelated").unwrap();
    let (cert, key) = certs::self_signed(dir, HOST).unwrap();
    let server = HttpsServer::start(dir, cert.to_str().unwrap(), key.to_str().unwrap(), &[]);
    let ca = path(dir, "unrelated.pem");
    let mesh = Mesh::start(config(
        server.port,
        &format!("{{mode: SIMPLE, caCertificates: {}}}", ca.display()),
    ));
    // Verified: no root issued it (and `openssl req -x509` makes a CA certificate, which
    // webpki refuses as a server's: reason bad_certificate).
    let (_, error, _) = mesh.until_status("/verified", 502);
    assert_eq!(error.as_deref(), Some("upstream TLS origination failed"));
    assert!(
        mesh.handshake_failures("bad_certificate") >= 1.0,
        "not counted:\n{}",
        mesh.log()
    );

    mesh.reconfigure(config(
        server.port,
        &format!(
            "{{mode: SIMPLE, caCertificates: {}, insecureSkipVerify: true}}",
            ca.display()
        ),
    ));
    let (_, _, body) = mesh.until_status("/unverified", 200);
    assert!(body.contains("Cipher"), "{body}");
}
