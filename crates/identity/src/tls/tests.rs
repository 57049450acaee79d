use std::time::SystemTime;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::ca::{Authority, DEFAULT_LEAF_TTL};

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", sa).unwrap()
}

fn mesh_tls(ca: &Authority, sa: &str) -> MeshTls {
    let key = LeafKey::generate().unwrap();
    let csr = key.csr_pem(&id(sa)).unwrap();
    let issued = ca
        .issue(csr.as_bytes(), &id(sa), DEFAULT_LEAF_TTL, SystemTime::now())
        .unwrap();
    MeshTls::new(&issued.chain_pem, &key, ca.bundle()).unwrap()
}

async fn handshake(
    client: &MeshTls,
    server: &MeshTls,
    expected: &str,
) -> (Result<String, HandshakeError>, Result<Peer, HandshakeError>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server_side = async {
        let (mut s, peer) = server.accept(b).await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)
            .await
            .map_err(HandshakeError::from_io)?;
        s.write_all(&buf).await.map_err(HandshakeError::from_io)?;
        s.flush().await.map_err(HandshakeError::from_io)?;
        Ok(peer)
    };
    let client_side = async {
        let mut c = client.connect(a, MeshAlpn::Tcp, expected).await?;
        let group = c
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name());
        c.write_all(b"ping")
            .await
            .map_err(HandshakeError::from_io)?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf)
            .await
            .map_err(HandshakeError::from_io)?;
        assert_eq!(&buf, b"ping");
        Ok(format!("{group:?}"))
    };
    tokio::join!(client_side, server_side)
}

#[tokio::test]
async fn mutual_tls_with_spiffe_ids_and_post_quantum_key_exchange() {
    let ca = Authority::generate("cluster.local", SystemTime::now()).unwrap();
    let (web, api) = (mesh_tls(&ca, "web"), mesh_tls(&ca, "api"));
    let (client, server) = handshake(&web, &api, &id("api").to_string()).await;
    assert_eq!(client.unwrap(), "Some(X25519MLKEM768)");
    let peer = server.unwrap();
    assert_eq!(peer.id, id("web"));
    // Both sides know the TCP metadata exchange: the server selects it.
    assert_eq!(peer.alpn, MeshAlpn::TcpMx);
}

#[tokio::test]
async fn opaque_tcp_falls_back_to_trellis_tcp_when_either_side_lacks_the_exchange() {
    let ca = Authority::generate("cluster.local", SystemTime::now()).unwrap();
    let api = id("api").to_string();
    // A new client and a server from before the exchange.
    let (client, server) = handshake(
        &mesh_tls(&ca, "web"),
        &mesh_tls(&ca, "api").without_metadata_exchange(),
        &api,
    )
    .await;
    client.unwrap();
    assert_eq!(server.unwrap().alpn, MeshAlpn::Tcp);
    // A client from before the exchange and a new server.
    let (client, server) = handshake(
        &mesh_tls(&ca, "web").without_metadata_exchange(),
        &mesh_tls(&ca, "api"),
        &api,
    )
    .await;
    client.unwrap();
    assert_eq!(server.unwrap().alpn, MeshAlpn::Tcp);
}

#[test]
fn an_opaque_tcp_client_accepts_either_tcp_protocol_and_nothing_else() {
    for asked in [MeshAlpn::Tcp, MeshAlpn::TcpMx] {
        assert!(asked.accepts(b"trellis-tcp"));
        assert!(asked.accepts(b"trellis-mx/1"));
        assert!(!asked.accepts(b"h2"));
    }
    assert!(!MeshAlpn::H2.accepts(b"trellis-mx/1"));
    assert_eq!(
        MeshAlpn::from_protocol(b"trellis-mx/1"),
        Some(MeshAlpn::TcpMx)
    );
}

#[tokio::test]
async fn the_client_refuses_a_server_with_another_identity() {
    let ca = Authority::generate("cluster.local", SystemTime::now()).unwrap();
    let (web, impostor) = (mesh_tls(&ca, "web"), mesh_tls(&ca, "impostor"));
    let (client, _server) = handshake(&web, &impostor, &id("api").to_string()).await;
    let err = client.unwrap_err();
    assert_eq!(err.reason(), "identity_mismatch", "{err}");
}

#[tokio::test]
async fn another_ca_is_refused_by_both_sides() {
    let ca = Authority::generate("cluster.local", SystemTime::now()).unwrap();
    let other = Authority::generate("cluster.local", SystemTime::now()).unwrap();
    let (web, api) = (mesh_tls(&ca, "web"), mesh_tls(&other, "api"));
    let (client, server) = handshake(&web, &api, &id("api").to_string()).await;
    assert_eq!(client.unwrap_err().reason(), "unknown_ca");
    assert!(server.is_err());
}

#[tokio::test]
async fn a_bundle_with_two_anchors_trusts_old_and_new_leaves() {
    let mut ca = Authority::generate("cluster.local", SystemTime::now()).unwrap();
    ca.prepare_rotation(SystemTime::now()).unwrap();
    // Issued by the old issuer, trusting both anchors.
    let old = mesh_tls(&ca, "web");
    ca.activate_rotation().unwrap();
    let new = mesh_tls(&ca, "api");
    let (client, server) = handshake(&old, &new, &id("api").to_string()).await;
    assert!(client.is_ok() && server.is_ok());
    let (client, server) = handshake(&new, &old, &id("web").to_string()).await;
    assert!(client.is_ok() && server.is_ok());
}

#[test]
fn client_hello_peek() {
    assert_eq!(peek_client_hello(&[0x16, 3, 1]), ClientHello::NeedBytes(5));
    assert_eq!(
        peek_client_hello(&[0x16, 3, 1, 0, 10]),
        ClientHello::NeedBytes(15)
    );
    assert_eq!(
        peek_client_hello(&[0x16, 3, 1, 0, 3, 1, 2, 3]),
        ClientHello::Other
    );
}

#[test]
fn client_hello_peek_tells_mesh_from_app_tls() {
    // Capture real ClientHellos from rustls client connections.
    let hello = |alpn: Vec<Vec<u8>>| {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn;
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), "example.com".try_into().unwrap())
                .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    };
    let mesh = hello(vec![b"h2".to_vec(), MESH_MARKER.to_vec()]);
    assert_eq!(peek_client_hello(&mesh), ClientHello::Mesh);
    assert!(matches!(
        peek_client_hello(&mesh[..mesh.len() - 1]),
        ClientHello::NeedBytes(n) if n == mesh.len()
    ));
    assert_eq!(
        peek_client_hello(&hello(vec![b"h2".to_vec()])),
        ClientHello::Other
    );
    assert_eq!(peek_client_hello(&hello(vec![])), ClientHello::Other);
}
