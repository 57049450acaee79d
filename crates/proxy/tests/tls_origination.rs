//! DestinationRule `tls.mode: SIMPLE` (TLS origination) on loopback: a plaintext request to the
//! proxy reaches a real HTTPS server (`openssl s_server`, certificate from a test CA made with
//! the `openssl` CLI) that is a plain endpoint outside the mesh; with roots that did not issue
//! the server's certificate, a server name it does not carry, or an unreadable CA file, the
//! request fails with 502 and `trellis-error: upstream TLS origination failed`, never in
//! plaintext; a CA file that appears later is read on the next policy update.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use trellis_model::Destination;
use trellis_model::policy::TlsOrigination;

use support::routed::{Backend, Routed, destination, routed};

/// The name the server's certificate carries.
const SERVER_NAME: &str = "api.external.test";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>.pem`, `<name>.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// `server.pem`/`server.key` for [`SERVER_NAME`], issued by the CA `ca`.
fn make_server_cert(dir: &Path, ca: &str) {
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "subjectAltName=DNS:{SERVER_NAME}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            &format!("/CN={SERVER_NAME}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "server.ext",
        ],
    );
}

/// `openssl s_server -www` on a free loopback port: it answers every request over TLS with
/// `HTTP/1.0 200 ok` and a page about the session. Killed on drop.
struct HttpsServer {
    child: Child,
    addr: SocketAddr,
}

impl HttpsServer {
    fn start(dir: &Path) -> Self {
        let addr = {
            // Ask the OS for a free port, then hand it to s_server.
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let child = Command::new("openssl")
            .args([
                "s_server",
                "-accept",
                &addr.to_string(),
                "-cert",
                "server.pem",
                "-key",
                "server.key",
                "-www",
                "-quiet",
            ])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "s_server never listened on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proxy routing to a destination whose one endpoint (plain: no proxy, no identity) is
/// `server`, with `tls`; and the destination, for updates.
async fn originating(server: SocketAddr, tls: TlsOrigination) -> (Routed, Destination) {
    let placeholder = Backend::start("unused").await;
    let mut dest = destination(&[&placeholder]);
    dest.endpoints[0].address = server;
    dest.endpoints[0].target_port = server.port();
    assert!(!dest.endpoints[0].meshed);
    dest.policy.mtls_disabled = true;
    dest.policy.tls_origination = Some(tls);
    (routed(dest.clone()).await, dest)
}

#[tokio::test]
async fn simple_originates_tls_to_a_plain_endpoint_with_the_given_ca_and_sni() {
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path(), "ca");
    make_server_cert(dir.path(), "ca");
    let server = HttpsServer::start(dir.path());
    let ca = dir.path().join("ca.pem").to_str().unwrap().to_string();
    let (proxy, _) = originating(
        server.addr,
        TlsOrigination {
            ca_certificates: Some(ca),
            sni: Some(SERVER_NAME.into()),
        },
    )
    .await;
    for _ in 0..3 {
        let a = proxy.get("/").await;
        assert_eq!(a.status, 200, "{:?} {}", a.headers, a.body);
        // s_server -www describes the TLS session it served the request on.
        assert!(a.body.contains("Cipher"), "{}", a.body);
    }
}

#[tokio::test]
async fn a_wrong_ca_a_wrong_name_or_a_missing_file_fails_clearly_and_never_in_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path(), "ca");
    make_ca(dir.path(), "other");
    make_server_cert(dir.path(), "ca");
    let server = HttpsServer::start(dir.path());
    let path = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let cases = [
        (
            "roots that did not issue it",
            path("other.pem"),
            SERVER_NAME,
        ),
        (
            "a name it does not carry",
            path("ca.pem"),
            "other.external.test",
        ),
        ("an unreadable CA file", path("missing.pem"), SERVER_NAME),
    ];
    let mut last = None;
    for (what, ca, sni) in cases {
        let tls = TlsOrigination {
            ca_certificates: Some(ca),
            sni: Some(sni.into()),
        };
        let (proxy, dest) = originating(server.addr, tls).await;
        let a = proxy.get("/").await;
        assert_eq!(a.status, 502, "{what}: {:?} {}", a.headers, a.body);
        assert_eq!(
            a.headers["trellis-error"], "upstream TLS origination failed",
            "{what}"
        );
        last = Some((proxy, dest));
    }
    // The missing file appears: the next policy update reads it (the server was fine all
    // along; the failures were the client's verdicts).
    let (proxy, dest) = last.unwrap();
    std::fs::copy(dir.path().join("ca.pem"), dir.path().join("missing.pem")).unwrap();
    proxy.update(dest);
    let a = proxy.get("/").await;
    assert_eq!(a.status, 200, "{:?} {}", a.headers, a.body);
}
