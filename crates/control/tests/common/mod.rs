//! Helpers shared by the loopback tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // not every test uses every helper

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trellis_api::discovery as pb;
use trellis_control::{ControlConfig, ControlPlane};
use trellis_model::Workload;
use trellis_proxy::discovery::{Discovery, DiscoveryConfig, Resolution};

pub const DEADLINE: Duration = Duration::from_secs(15);

pub fn service_yaml(name: &str, port: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector:\n    app: {name}\n  ports:\n  - name: http\n    port: {port}\n    targetPort: 9081\n"
    )
}

pub fn config(dir: &Path, discovery: SocketAddr, http: SocketAddr) -> ControlConfig {
    ControlConfig {
        config_dirs: vec![dir.to_path_buf()],
        discovery_addr: discovery,
        http_addr: http,
        heartbeat_interval: Duration::from_millis(100),
        workload_expiry: Duration::from_secs(2),
        poll_interval: Duration::from_millis(50),
        ..ControlConfig::default()
    }
}

/// A control plane on loopback ports (the common `config`) whose config directory holds the
/// Service `reviews` on port 9080; the directory lives as long as the returned guard.
pub async fn control_with_reviews() -> (tempfile::TempDir, ControlPlane) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("reviews.yaml"),
        service_yaml("reviews", 9080),
    )
    .unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    let control = ControlPlane::start(config(dir.path(), any, any))
        .await
        .unwrap();
    (dir, control)
}

pub fn workload(name: &str, app: &str, inbound: &str) -> Workload {
    Workload {
        name: name.into(),
        namespace: "default".into(),
        service_account: format!("bookinfo-{app}"),
        labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        inbound_address: inbound.parse().unwrap(),
        ports: vec![9081],
        admin_address: None,
    }
}

pub fn client(control: SocketAddr, w: Workload, shutdown: &CancellationToken) -> Discovery {
    let config = DiscoveryConfig {
        control: format!("http://{control}"),
        proxy_id: format!("{}-proxy", w.name),
        workload: w,
        join_token: None,
    };
    Discovery::spawn(config, shutdown.clone())
}

/// The raw discovery message that subscribes to `service.default:9080`, for tests that speak
/// the protocol themselves.
pub fn subscribe(service: &str) -> pb::ProxyMessage {
    pb::ProxyMessage {
        kind: Some(pb::proxy_message::Kind::Subscribe(pb::Subscribe {
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::Service(pb::ServiceTarget {
                    name: service.into(),
                    namespace: "default".into(),
                    port: 9080,
                })),
            }),
        })),
    }
}

/// Polls `check` until it returns `Some`, failing with `what` at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.0 GET, so the test needs no HTTP client crate.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

pub async fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let (status, body) = get(addr, path).await?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

pub fn found(
    rx: &tokio::sync::watch::Receiver<Resolution>,
) -> Option<std::sync::Arc<trellis_model::Destination>> {
    match &*rx.borrow() {
        Resolution::Found(d) => Some(d.clone()),
        _ => None,
    }
}
