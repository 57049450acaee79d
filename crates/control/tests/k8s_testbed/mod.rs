//! The real kube-apiserver testbed for the Kubernetes tests: etcd, kube-apiserver and
//! kube-controller-manager from scripts/k8s-testbed/, on free 127.0.0.1 ports and a temporary
//! state directory per test, stopped on drop; [`cluster`] has what the tests then do on it.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

pub mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
pub use trellis_testkit::tools::free_port;

const BIN: &str = "/var/cache/mesh-testbin/k8s-v1.20.2";

/// etcd + kube-apiserver + kube-controller-manager, stopped on drop.
pub struct Testbed {
    pub run: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/k8s-testbed/start-test-apiserver.sh")
}

/// How long one kubectl request to the testbed may take (kubectl's own `--request-timeout`):
/// a stuck API server then fails the command with kubectl's own error on stderr.
const KUBECTL_REQUEST_TIMEOUT: &str = "--request-timeout=20s";
/// How long one kubectl command may take in all, should it hang outside a request; it is
/// killed then.
const KUBECTL_DEADLINE: Duration = Duration::from_secs(45);

/// `kubectl --kubeconfig KUBECONFIG ARGS` with `stdin`, bounded in time (each request and the
/// whole command); its output whatever its status. A command that cannot be run or is killed
/// at the deadline fails the test, naming the command.
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let kubectl = trellis_testkit::tools::require("kubectl", "kubernetes-client");
    let mut command = Command::new(kubectl);
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg(KUBECTL_REQUEST_TIMEOUT)
        .args(args);
    trellis_testkit::tools::run_bounded_with_input(&mut command, stdin, KUBECTL_DEADLINE)
        .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
}

/// [`kubectl`] that must succeed: its stdout; a failure fails the test with the command and
/// kubectl's output.
pub fn kubectl_ok(kubeconfig: &Path, args: &[&str], stdin: &[u8]) -> String {
    let out = kubectl(kubeconfig, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `spec.replicas` of the installed control plane's Deployment (`trellis-control` in
/// `trellis-system`), as kubectl prints it.
pub fn control_replicas(kubeconfig: &Path) -> String {
    kubectl_ok(
        kubeconfig,
        &[
            "get",
            "deployment",
            "-n",
            "trellis-system",
            "trellis-control",
            "-o",
            "jsonpath={.spec.replicas}",
        ],
        b"",
    )
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
