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

mod plan {
    use std::sync::Arc;

    use trellis_model::route::{
        BackendRef, HeaderModifier, ResourceRef, TcpRoute, WeightedBackend,
    };
    use trellis_model::{AppProtocol, Backend, Destination, Endpoint, ServiceKey};

    use crate::traffic::Plan;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            address: ([127, 0, 0, 1], port).into(),
            meshed: false,
            identity: None,
            workload: format!("w{port}"),
            labels: Default::default(),
            target_port: port,
            remote: None,
        }
    }

    fn svc(name: &str) -> BackendRef {
        BackendRef {
            service: ServiceKey::new("istio-system", name),
            port: Some(443),
            subset: None,
        }
    }

    fn route(name: &str, sni: &[&str], to: &str) -> TcpRoute {
        TcpRoute {
            name: name.into(),
            source: ResourceRef::default(),
            port: Some(443),
            sni_hosts: sni.iter().map(|s| s.to_string()).collect(),
            backends: vec![WeightedBackend {
                backend: svc(to),
                weight: 100,
                request_headers: HeaderModifier::default(),
                response_headers: HeaderModifier::default(),
            }],
        }
    }

    /// The destination `edition.cnn.com:443` with a TLS route to the egress gateway for its
    /// own name, a TLS route for another name, then an opaque route.
    fn plan() -> Plan {
        let backend = |name: &str, port| Backend {
            backend: svc(name),
            authority: name.into(),
            endpoints: vec![ep(port)],
            policy: Default::default(),
        };
        let dest = Destination {
            authority: "edition.cnn.com:443".into(),
            service: ServiceKey::new("", "edition.cnn.com"),
            port: 443,
            protocol: AppProtocol::Tcp,
            endpoints: vec![ep(1)],
            tcp_routes: vec![
                route("tls/0", &["edition.cnn.com"], "egress"),
                route("tls/1", &["*.example.com"], "other"),
                route("tcp/0", &[], "opaque"),
            ],
            backends: vec![
                backend("egress", 2),
                backend("other", 3),
                backend("opaque", 4),
            ],
            ..Destination::default()
        };
        Plan::build(Arc::new(dest), None)
    }

    fn chosen(plan: &Plan, port: u16, sni: Option<&str>) -> Option<String> {
        plan.tcp_backend_for(port, sni)
            .map(|b| b.backend.service.name.clone())
    }

    #[test]
    fn tls_connections_take_the_route_for_their_sni_others_the_opaque_route() {
        let plan = plan();
        assert_eq!(
            chosen(&plan, 443, Some("edition.cnn.com")).as_deref(),
            Some("egress")
        );
        assert_eq!(
            chosen(&plan, 443, Some("a.example.com")).as_deref(),
            Some("other")
        );
        assert_eq!(
            chosen(&plan, 443, Some("unknown.org")).as_deref(),
            Some("opaque")
        );
        assert_eq!(chosen(&plan, 443, None).as_deref(), Some("opaque"));
        assert_eq!(
            plan.tcp_backend(443)
                .map(|b| b.backend.service.name.as_str()),
            Some("opaque")
        );
        // Another port: no route applies, the service's own endpoints.
        assert_eq!(
            chosen(&plan, 8443, Some("edition.cnn.com")).as_deref(),
            Some("edition.cnn.com")
        );
    }
}
