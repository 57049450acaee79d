//! The real kube-apiserver testbed for the Kubernetes tests: etcd, kube-apiserver and
//! kube-controller-manager from scripts/k8s-testbed/, on free 127.0.0.1 ports and a temporary
//! state directory per test, stopped on drop.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

const BIN: &str = "/var/cache/mesh-testbin/k8s-v1.20.2";

/// etcd + kube-apiserver + kube-controller-manager, stopped on drop.
pub struct Testbed {
    pub run: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/k8s-testbed/start-test-apiserver.sh")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Testbed {
    pub fn start() -> Option<Self> {
        let bin = std::env::var("TRELLIS_K8S_BIN").unwrap_or_else(|_| BIN.into());
        let have = ["kube-apiserver", "kube-controller-manager", "etcd"]
            .iter()
            .all(|b| Path::new(&bin).join(b).exists());
        if !have {
            if std::env::var("TRELLIS_SKIP_K8S").as_deref() == Ok("1") {
                eprintln!("SKIPPED: no kube-apiserver testbed in {bin} and TRELLIS_SKIP_K8S=1");
                return None;
            }
            panic!(
                "no kube-apiserver testbed in {bin}: run scripts/k8s-testbed/build-kube-apiserver.sh \
                 (scripts/test.sh does), or set TRELLIS_SKIP_K8S=1 to skip"
            );
        }
        let run = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .env("BIN", &bin)
            .env("RUN", run.path())
            .env("KAS_PORT", free_port().to_string())
            .env("ETCD_PORT", free_port().to_string())
            .env("ETCD_PEER_PORT", free_port().to_string())
            .output()
            .unwrap();
        let testbed = Self {
            kubeconfig: run.path().join("kubeconfig"),
            run,
        };
        assert!(
            out.status.success(),
            "testbed did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(testbed)
    }

    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        Client::try_from(config).unwrap()
    }
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .env("RUN", self.run.path())
            .status();
    }
}
