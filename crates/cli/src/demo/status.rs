//! The status file (`--status-file`): the demo's addresses and pids for scripts and tests,
//! written atomically once everything answers.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoStatus {
    /// Where Bookinfo answers: productpage's sidecar.
    pub entry: SocketAddr,
    /// `http://<control http>/`.
    pub dashboard: String,
    pub control: ControlStatus,
    pub workloads: Vec<WorkloadStatus>,
    /// Ingress gateways: `{"name": ..., "address": "127.0.0.1:P"}`, the address of each
    /// one's first listener.
    pub gateways: Vec<serde_json::Value>,
    /// The user's config directory (or the sample one written for this run).
    pub config_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlStatus {
    /// The discovery (gRPC) address.
    pub address: SocketAddr,
    pub http: SocketAddr,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    /// The app (service) name: `reviews`.
    pub name: String,
    pub version: String,
    /// The workload's own name: `reviews-v2`.
    pub workload: String,
    pub namespace: String,
    pub service_account: String,
    pub identity: String,
    /// Where the app itself listens (behind its proxy).
    pub app: SocketAddr,
    /// The proxy's inbound listener: what other proxies connect to.
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    /// The proxy's pid.
    pub pid: u32,
}

/// Writes `value` as JSON to `path` so that a reader sees either nothing or the whole file:
/// a temporary file in the same directory, synced, then renamed over `path`.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".trellis-status-")
        .tempfile_in(dir)?;
    serde_json::to_writer_pretty(&mut tmp, value)?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DemoStatus {
        DemoStatus {
            entry: "127.0.0.1:9080".parse().unwrap(),
            dashboard: "http://127.0.0.1:15014/".into(),
            control: ControlStatus {
                address: "127.0.0.1:1".parse().unwrap(),
                http: "127.0.0.1:15014".parse().unwrap(),
                pid: 10,
            },
            workloads: vec![WorkloadStatus {
                name: "reviews".into(),
                version: "v2".into(),
                workload: "reviews-v2".into(),
                namespace: "default".into(),
                service_account: "bookinfo-reviews".into(),
                identity: "spiffe://cluster.local/ns/default/sa/bookinfo-reviews".into(),
                app: "127.0.0.1:2".parse().unwrap(),
                inbound: "127.0.0.1:3".parse().unwrap(),
                admin: "127.0.0.1:4".parse().unwrap(),
                pid: 11,
            }],
            gateways: vec![],
            config_dir: "/tmp/x".into(),
        }
    }

    #[test]
    fn json_shape_matches_the_contract() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["entry"], "127.0.0.1:9080");
        assert_eq!(json["dashboard"], "http://127.0.0.1:15014/");
        assert_eq!(
            json["control"],
            serde_json::json!({"address": "127.0.0.1:1", "http": "127.0.0.1:15014", "pid": 10})
        );
        let w = &json["workloads"][0];
        for key in [
            "name",
            "version",
            "namespace",
            "service_account",
            "identity",
            "app",
            "inbound",
            "admin",
            "pid",
        ] {
            assert!(w.get(key).is_some(), "workload lacks {key}");
        }
        assert_eq!(
            w["identity"],
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
        assert_eq!(json["gateways"], serde_json::json!([]));
    }

    #[test]
    fn written_atomically_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        write_json_atomic(&path, &sample()).unwrap();
        write_json_atomic(&path, &sample()).unwrap();
        let back: DemoStatus = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, sample());
        // Only the file itself is left: no temporary files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
