//! Fixtures for tests of traffic that leaves the mesh (ServiceEntry, egress gateways) in
//! network-namespace pods: a control plane run in the node with
//! `--outbound-traffic-policy REGISTRY_ONLY`, and a client pod whose traffic its sidecar
//! captures; the external host's name in the node's `/etc/hosts` ([`NodeHosts`]), the
//! NetworkPolicy that keeps a pod from the host itself ([`block`]), and the egress gateway's
//! flags ([`egress_gateway`]). What the tests then do with them stays in the tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mesh::{ControlPlane, Proxy, ProxyBuilder};
use crate::netns::{Node, PROXY_UID, Pod};
use crate::tools::run_bounded;

/// The control plane's discovery port on the node's address (Istio's istiod xDS port).
pub const DISCOVERY_PORT: u16 = 15010;

/// A control plane in `node` reading `config_dir`, with the outbound traffic policy
/// `REGISTRY_ONLY`: hosts that no Service or ServiceEntry declares are refused.
pub fn registry_only_control(node: &Node, config_dir: &Path) -> Result<ControlPlane, String> {
    ControlPlane::start_with(
        config_dir,
        SocketAddr::new(node.ip().into(), DISCOVERY_PORT),
        Some(node.name()),
        &["--outbound-traffic-policy", "REGISTRY_ONLY"],
    )
    .map_err(|e| format!("control plane in node {}: {e}", node.name()))
}

/// The client workload `name` (label `app: APP`) in `pod`: iptables capture its traffic and its
/// sidecar, registered with `control`, is ready within `timeout`.
pub fn captured_client(
    pod: &Pod,
    control: &ControlPlane,
    name: &str,
    app: &str,
    timeout: Duration,
) -> Result<Proxy, String> {
    pod.init_iptables(&[])
        .map_err(|e| format!("iptables in pod {}: {e}", pod.name()))?;
    let proxy = ProxyBuilder::new(name)
        .label("app", app)
        .control(&control.url())
        .in_pod(pod, PROXY_UID)
        .start()
        .map_err(|e| format!("sidecar {name} in pod {}: {e}", pod.name()))?;
    proxy.wait_ready(timeout)?;
    Ok(proxy)
}

/// `/etc/netns/<node>/hosts`: `ip netns exec` mounts it over `/etc/hosts` for the control
/// plane run in the node, so a ServiceEntry's DNS name resolves to an external pod there (and
/// nowhere else on the machine). Removed on drop.
#[derive(Debug)]
pub struct NodeHosts(PathBuf);

impl NodeHosts {
    /// Writes `lines` (`IP NAME` each) after the localhost entries.
    pub fn new(node: &Node, lines: &str) -> Result<Self, String> {
        let dir = PathBuf::from("/etc/netns").join(node.name());
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let hosts = dir.join("hosts");
        std::fs::write(
            &hosts,
            format!("127.0.0.1 localhost\n::1 localhost\n{lines}\n"),
        )
        .map_err(|e| format!("{}: {e}", hosts.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for NodeHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // The parent only when no other test's node still has a directory there.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// Stands for a NetworkPolicy: nothing in `pod` (its proxy included) may connect to `ip`.
pub fn block(pod: &Pod, ip: Ipv4Addr) -> Result<(), String> {
    let out = run_bounded(
        pod.command("iptables").args([
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &ip.to_string(),
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]),
        Duration::from_secs(10),
    )?;
    if !out.status.success() {
        return Err(format!(
            "iptables in pod {}: {}",
            pod.name(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The egress gateway workload for `pod`, not yet started: Istio's `istio-egressgateway`
/// labels and service account in `istio-system`, `--mode gateway` with the Gateway's `port`
/// bound on `target_port` (the `targetPort` of the gateway's Service), reached by sidecars over
/// mTLS through its inbound listener (advertised on the pod's 15006). Tests add what differs
/// (`SSL_CERT_FILE`, `--app`) and start it.
pub fn egress_gateway(
    pod: &Pod,
    control: &ControlPlane,
    port: u16,
    target_port: u16,
) -> ProxyBuilder {
    ProxyBuilder::new("istio-egressgateway")
        .namespace("istio-system")
        .service_account("istio-egressgateway-service-account")
        .label("istio", "egressgateway")
        .label("app", "istio-egressgateway")
        .control(&control.url())
        .outbound("none")
        .advertise(SocketAddr::new(pod.ip().into(), 15006))
        .app_port(target_port)
        .arg("--mode")
        .arg("gateway")
        .arg("--gateway-port")
        .arg(format!("{port}=0.0.0.0:{target_port}"))
        .in_pod(pod, PROXY_UID)
}
