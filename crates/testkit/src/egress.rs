//! Fixtures for tests of traffic that leaves the mesh (ServiceEntry, egress gateways) in
//! network-namespace pods: a control plane run in the node with
//! `--outbound-traffic-policy REGISTRY_ONLY`, and a client pod whose traffic its sidecar
//! captures. What the tests then do with them (external hosts, gateways) stays in the tests.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::mesh::{ControlPlane, Proxy, ProxyBuilder};
use crate::netns::{Node, PROXY_UID, Pod};

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
