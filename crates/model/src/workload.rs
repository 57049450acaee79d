use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A workload as its proxy registers it: one instance (a pod, a process) of an application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// Where other proxies reach this workload's inbound listener.
    pub inbound_address: SocketAddr,
    /// The application ports this workload serves.
    pub ports: Vec<u16>,
    /// The proxy's admin address, for scraping and the CLI.
    pub admin_address: Option<SocketAddr>,
}
