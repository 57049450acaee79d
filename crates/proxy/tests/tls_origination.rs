//! DestinationRule `tls.mode: SIMPLE` (TLS origination) on loopback: a plaintext request to the
//! proxy reaches a real HTTPS server (`openssl s_server`, certificate from a test CA made with
//! the `openssl` CLI) that is a plain endpoint outside the mesh; with roots that did not issue
//! the server's certificate, a server name it does not carry, or an unreadable CA file, the
//! request fails with 502 and `trellis-error: upstream TLS origination failed`, never in
//! plaintext; a CA file that appears later is read on the next policy update. HTTP/2 requests
//! are originated too, with ALPN h2, to a rustls server that speaks nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use trellis_model::Destination;
use trellis_model::policy::TlsOrigination;
use trellis_testkit::certs;
use trellis_testkit::tools::{free_port, require};
use trellis_testkit::{ManagedProcess, wait};

use support::routed::{Backend, Routed, destination, routed};

/// The name the server's certificate carries.
const SERVER_NAME: &str = "api.external.test";

/// A CA (`<name>.pem`, `<name>.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    certs::ca(dir, name).unwrap_or_else(|e| panic!("{e}"));
}

/// `server.pem`/`server.key` for [`SERVER_NAME`], issued by the CA `ca`.
fn make_server_cert(dir: &Path, ca: &str) {
    certs::server_cert(dir, ca, "server", SERVER_NAME).unwrap_or_else(|e| panic!("{e}"));
}

/// `openssl s_server -www` on a free loopback port: it answers every request over TLS with
/// `HTTP/1.0 200 ok` and a page about the session. Stopped on drop.
struct HttpsServer {
    _process: ManagedProcess,
    addr: SocketAddr,
}

impl HttpsServer {
    fn start(dir: &Path) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new(require("openssl", "openssl"));
        command
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
            .current_dir(dir);
        let process = ManagedProcess::spawn("openssl s_server", command).unwrap();
        wait::until(Duration::from_secs(10), || {
            TcpStream::connect(addr).map_err(|e| format!("s_server on {addr}: {e}"))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", process.log()));
        Self {
            _process: process,
            addr,
        }
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
            ..TlsOrigination::default()
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
            ..TlsOrigination::default()
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

/// An HTTPS server on loopback that speaks only HTTP/2 (ALPN `h2`), with a self-signed
/// certificate for [`SERVER_NAME`]; answers with the HTTP version it served. Returns its
/// address and the certificate's PEM (the test's trust anchor).
async fn h2_tls_server() -> (SocketAddr, String) {
    use std::sync::Arc;

    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let body = format!("{:?} over TLS", req.version());
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        bytes::Bytes::from(body),
                    )))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, cert.pem())
}

#[tokio::test]
async fn http2_requests_are_originated_over_tls_with_alpn_h2() {
    let dir = tempfile::tempdir().unwrap();
    let (server, pem) = h2_tls_server().await;
    let ca = dir.path().join("server.pem");
    std::fs::write(&ca, pem).unwrap();
    let (proxy, _) = originating(
        server,
        TlsOrigination {
            ca_certificates: Some(ca.to_str().unwrap().to_string()),
            sni: Some(SERVER_NAME.into()),
            ..TlsOrigination::default()
        },
    )
    .await;
    // h2c (prior knowledge) to the proxy: the hop to a plain endpoint keeps HTTP/2.
    let mut client = support::http2_conn(proxy.addr).await;
    for _ in 0..3 {
        let req = http::Request::builder()
            .uri(format!("http://{}/h2", proxy.addr))
            .body(support::full(""))
            .unwrap();
        let resp = tokio::time::timeout(support::WAIT, client.send_request(req))
            .await
            .unwrap()
            .unwrap();
        let status = resp.status().as_u16();
        let body = support::body_string(resp.into_body()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, "HTTP/2.0 over TLS");
    }
}
