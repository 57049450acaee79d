#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A CA: its PEM and an issuer to sign with.
fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A leaf with `sans` signed by `issuer`: (certificate PEM, key PEM).
fn leaf(issuer: &Issuer<'_, KeyPair>, sans: Vec<SanType>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(name.try_into().unwrap())
}

/// A TLS server on loopback with `cert`, requiring a client certificate from `client_ca` when
/// given; answers each connection with "hello <client cert count>".
async fn server(cert: &(String, String), client_ca: Option<&str>) -> std::net::SocketAddr {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.0.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let config = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let roots = Arc::new(roots_from_pem(pem.as_bytes()).unwrap());
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    }
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if let Ok(mut tls) = acceptor.accept(stream).await {
                let n = tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
                let _ = tls.write_all(format!("hello {n}").as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        }
    });
    addr
}

async fn talk(
    tls: &OriginationTls,
    addr: std::net::SocketAddr,
    sni: &str,
) -> Result<String, OriginationHandshakeError> {
    let io = TcpStream::connect(addr).await.unwrap();
    let mut stream = tls.connect(sni, false, io).await?;
    let mut got = String::new();
    let _ = stream.read_to_string(&mut got).await;
    Ok(got)
}

fn spec<'a>(roots: &'a str, sans: &'a [String]) -> OriginationSpec<'a> {
    OriginationSpec {
        roots_pem: Some(roots.as_bytes()),
        subject_alt_names: sans,
        ..OriginationSpec::default()
    }
}

#[tokio::test]
async fn simple_checks_the_chain_and_the_sni_name() {
    let (ca_pem, issuer) = ca("test ca");
    let addr = server(&leaf(&issuer, vec![dns("api.example.test")]), None).await;
    let tls = OriginationTls::new(&spec(&ca_pem, &[])).unwrap();
    assert_eq!(
        talk(&tls, addr, "api.example.test").await.unwrap(),
        "hello 0"
    );
    let err = talk(&tls, addr, "other.example.test").await.unwrap_err();
    assert_eq!(err.reason, "identity_mismatch", "{err}");
    let (stranger, _) = ca("another ca");
    let tls = OriginationTls::new(&spec(&stranger, &[])).unwrap();
    let err = talk(&tls, addr, "api.example.test").await.unwrap_err();
    assert_eq!(err.reason, "unknown_ca", "{err}");
}

#[tokio::test]
async fn subject_alt_names_replace_the_sni_check_and_one_must_match() {
    let (ca_pem, issuer) = ca("test ca");
    let uri = SanType::URI("spiffe://partner/api".try_into().unwrap());
    let addr = server(&leaf(&issuer, vec![dns("*.partner.test"), uri]), None).await;
    // The SNI need not be in the certificate when a listed name is: URI, or DNS by wildcard.
    for sans in [
        vec!["nope.test".to_string(), "spiffe://partner/api".to_string()],
        vec!["api.partner.test".to_string()],
    ] {
        let tls = OriginationTls::new(&spec(&ca_pem, &sans)).unwrap();
        assert_eq!(
            talk(&tls, addr, "sni.elsewhere.test").await.unwrap(),
            "hello 0",
            "{sans:?}"
        );
    }
    let sans = vec!["a.b.partner.test".to_string(), "spiffe://partner/db".into()];
    let tls = OriginationTls::new(&spec(&ca_pem, &sans)).unwrap();
    let err = talk(&tls, addr, "api.partner.test").await.unwrap_err();
    assert_eq!(err.reason, "identity_mismatch");
    let text = format!("{err}: {:?}", err.source);
    assert!(text.contains("spiffe://partner/db"), "{text}");
    // A listed name does not excuse a chain from another CA.
    let (stranger, _) = ca("another ca");
    let sans = vec!["spiffe://partner/api".to_string()];
    let tls = OriginationTls::new(&spec(&stranger, &sans)).unwrap();
    let err = talk(&tls, addr, "api.partner.test").await.unwrap_err();
    assert_eq!(err.reason, "unknown_ca");
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate() {
    let (_, issuer) = ca("unknown ca");
    let addr = server(&leaf(&issuer, vec![dns("self.test")]), None).await;
    let (other_ca, _) = ca("unrelated ca");
    let sans = vec!["not-this.test".to_string()];
    let tls = OriginationTls::new(&OriginationSpec {
        insecure_skip_verify: true,
        ..spec(&other_ca, &sans)
    })
    .unwrap();
    assert_eq!(talk(&tls, addr, "wrong.test").await.unwrap(), "hello 0");
}

#[tokio::test]
async fn mutual_presents_the_client_certificate() {
    let (ca_pem, issuer) = ca("server ca");
    let (client_ca_pem, client_issuer) = ca("client ca");
    let addr = server(
        &leaf(&issuer, vec![dns("api.example.test")]),
        Some(&client_ca_pem),
    )
    .await;
    let (cert, key) = leaf(&client_issuer, vec![dns("client.test")]);
    let tls = OriginationTls::new(&OriginationSpec {
        client: Some((cert.as_bytes(), key.as_bytes())),
        ..spec(&ca_pem, &[])
    })
    .unwrap();
    assert_eq!(
        talk(&tls, addr, "api.example.test").await.unwrap(),
        "hello 1"
    );
    // Without one, the server refuses (in TLS 1.3 after the client's side of the handshake:
    // the refusal arrives as an alert on the first read).
    let tls = OriginationTls::new(&spec(&ca_pem, &[])).unwrap();
    match talk(&tls, addr, "api.example.test").await {
        Ok(got) => assert!(!got.starts_with("hello"), "served without a client cert"),
        Err(e) => assert_eq!(e.reason, "alert", "{e}"),
    }
}

#[test]
fn bad_pem_is_named() {
    let (ca_pem, issuer) = ca("ca");
    let (cert, key) = leaf(&issuer, vec![dns("client.test")]);
    let (_, other_key) = leaf(&issuer, vec![dns("other.test")]);
    let build = |roots: &str, client: Option<(&str, &str)>| {
        OriginationTls::new(&OriginationSpec {
            client: client.map(|(c, k)| (c.as_bytes(), k.as_bytes())),
            ..spec(roots, &[])
        })
    };
    assert!(matches!(
        build("not pem", None),
        Err(OriginationError::NoRoots(_))
    ));
    assert!(matches!(
        build(&ca_pem, Some(("not pem", &key))),
        Err(OriginationError::NoClientCertificate)
    ));
    assert!(matches!(
        build(&ca_pem, Some((&cert, "not pem"))),
        Err(OriginationError::NoPrivateKey)
    ));
    assert!(matches!(
        build(&ca_pem, Some((&cert, &other_key))),
        Err(OriginationError::ClientKey(_))
    ));
    assert!(build(&ca_pem, Some((&cert, &key))).is_ok());
}

#[test]
fn wildcards_cover_one_label() {
    let w = CertName::Dns("*.example.test".into());
    assert!(w.matches("api.example.test"));
    assert!(w.matches("API.Example.Test"));
    assert!(!w.matches("a.b.example.test"));
    assert!(!w.matches("example.test"));
    assert!(CertName::Ip("127.0.0.1".parse().unwrap()).matches("127.0.0.1"));
    assert!(!CertName::Uri("spiffe://a/b".into()).matches("spiffe://a/b/c"));
}
