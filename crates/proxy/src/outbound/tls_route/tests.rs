#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::read_sni;

/// A real ClientHello naming `host`.
fn client_hello(host: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let mut hello = Vec::new();
    rustls::ClientConnection::new(Arc::new(config), name)
        .unwrap()
        .write_tls(&mut hello)
        .unwrap();
    hello
}

#[tokio::test]
async fn reads_the_sni_and_replays_every_byte() {
    let hello = client_hello("Edition.CNN.com");
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    // Detection left only the first bytes; the rest arrives later, in pieces.
    let prefix = BytesMut::from(&hello[..3]);
    let rest = hello[3..].to_vec();
    let writer = tokio::spawn(async move {
        for chunk in rest.chunks(50) {
            client.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        client.write_all(b"after").await.unwrap();
        client
    });
    let (mut io, sni) = read_sni(server, prefix, Duration::from_secs(5)).await;
    assert_eq!(sni.as_deref(), Some("edition.cnn.com"));
    let _client = writer.await.unwrap();
    let mut replayed = vec![0u8; hello.len() + 5];
    io.read_exact(&mut replayed).await.unwrap();
    assert_eq!(&replayed[..hello.len()], &hello[..]);
    assert_eq!(&replayed[hello.len()..], b"after");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_hello_gives_no_sni_and_keeps_its_bytes() {
    let hello = client_hello("edition.cnn.com");
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    client.write_all(&hello[3..20]).await.unwrap();
    let (mut io, sni) = read_sni(
        server,
        BytesMut::from(&hello[..3]),
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(sni, None);
    let mut replayed = vec![0u8; 20];
    io.read_exact(&mut replayed).await.unwrap();
    assert_eq!(&replayed[..], &hello[..20]);
}

#[tokio::test]
async fn not_a_client_hello_gives_no_sni() {
    let (_client, server) = tokio::io::duplex(1024);
    let (_io, sni) = read_sni(
        server,
        BytesMut::from(&[0x16, 3, 1, 0, 5, 9, 9, 9, 9, 9][..]),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(sni, None);
}
