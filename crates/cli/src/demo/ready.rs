//! The ready files `trellis-control` and `trellis-proxy` write (atomically) once they listen:
//! how the demo learns the addresses they bound when asked for port 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// `trellis-control --ready-file`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ControlReady {
    pub pid: u32,
    /// The gRPC discovery address proxies connect to.
    pub discovery: SocketAddr,
    /// The JSON API, /metrics and the dashboard.
    pub http: SocketAddr,
}

/// `trellis-proxy --ready-file`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProxyReady {
    pub pid: u32,
    pub inbound: SocketAddr,
    #[serde(default)]
    pub outbound: Option<SocketAddr>,
    /// Target (`reviews.default:9080`) to the local address that reaches it.
    #[serde(default)]
    pub outbound_ports: BTreeMap<String, SocketAddr>,
    pub admin: SocketAddr,
}

/// What a ready file says right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyFile<T> {
    /// Not written yet.
    Missing,
    /// Present but not what the contract says; kept to report if it never becomes valid.
    Invalid(String),
    Ready(T),
}

pub fn read<T: DeserializeOwned>(path: &Path) -> ReadyFile<T> {
    match std::fs::read(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => ReadyFile::Missing,
        Err(err) => ReadyFile::Invalid(err.to_string()),
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(value) => ReadyFile::Ready(value),
            Err(err) => {
                ReadyFile::Invalid(format!("{err}: {}", String::from_utf8_lossy(&bytes).trim()))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_proxy_contract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        assert_eq!(read::<ProxyReady>(&path), ReadyFile::Missing);
        std::fs::write(
            &path,
            r#"{"pid":7,"inbound":"127.0.0.1:1","outbound":null,"outbound_ports":{"reviews.default:9080":"127.0.0.1:2"},"admin":"127.0.0.1:3"}"#,
        )
        .unwrap();
        let ReadyFile::Ready(ready) = read::<ProxyReady>(&path) else {
            panic!("not ready")
        };
        assert_eq!(ready.pid, 7);
        assert_eq!(ready.outbound, None);
        assert_eq!(
            ready.outbound_ports["reviews.default:9080"],
            "127.0.0.1:2".parse().unwrap()
        );
    }

    #[test]
    fn reads_the_control_contract_and_flags_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        std::fs::write(
            &path,
            r#"{"pid":1,"discovery":"127.0.0.1:1","http":"127.0.0.1:2"}"#,
        )
        .unwrap();
        assert!(matches!(
            read::<ControlReady>(&path),
            ReadyFile::Ready(ControlReady { pid: 1, .. })
        ));
        std::fs::write(&path, "{\"pid\":").unwrap();
        assert!(matches!(read::<ControlReady>(&path), ReadyFile::Invalid(_)));
    }
}
