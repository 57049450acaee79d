//! Istio ServiceEntry hosts as services of the mesh: registering them next to the Kubernetes
//! Services, their endpoints per resolution, and which captured addresses belong to them.
//!
//! Pure, like the rest of compile. DNS answers are data here ([`ServiceEntries::dns`]), filled
//! in by the `service_entry_dns` adapter between the config store and discovery; this module
//! never looks a name up itself.
//!
//! - **Registration** ([`register`]): each host becomes a [`Service`] under its key (an
//!   external host's [`ServiceKey::external`], or the cluster key of a short name) with the
//!   entry's ports and no selector, so VirtualServices and DestinationRules naming the host
//!   attach to it as to any Service. A Kubernetes Service of the same key wins; between two
//!   entries the first by file, then document, wins.
//! - **Endpoints** ([`endpoints`]): STATIC: the entries' IPs; DNS: every address the
//!   endpoints' names (or, without endpoints, the host) resolve to; DNS_ROUND_ROBIN: the first
//!   of those; NONE: none (an address target carries the original destination instead). The
//!   port is the endpoint's `ports[<port name>]`, else the port's `targetPort`, else its number.
//!   No endpoint is meshed: the proxy speaks plaintext to them, or TLS it originates when a
//!   DestinationRule says `tls.mode: SIMPLE`, never mesh mTLS.
//! - **Addresses** ([`address_destination`]): a captured `ip:port` belongs to an entry with a
//!   port of that number when the IP is in its `addresses`, is one of its STATIC endpoints, or
//!   is one its DNS names resolved to.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use trellis_config::istio::service_entry::{Resolution, ServiceEntry};
use trellis_model::{Destination, Endpoint, Service, ServiceKey, ServicePort};

use super::MeshView;

/// The ServiceEntries in force, by host key, and the DNS answers for their names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceEntries {
    pub by_key: BTreeMap<ServiceKey, Arc<ServiceEntry>>,
    /// Name -> addresses, for every name [`ServiceEntries::dns_names`] lists that has been
    /// answered. Filled by the control plane's DNS adapter; empty in pure tests unless set.
    pub dns: BTreeMap<String, Vec<IpAddr>>,
}

impl ServiceEntries {
    /// The names DNS must answer: endpoints' names, or hosts of entries without endpoints,
    /// of entries with resolution DNS or DNS_ROUND_ROBIN. IP literals and wildcards are left
    /// out.
    pub fn dns_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (key, entry) in &self.by_key {
            for name in dns_names_of(key, entry) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names.sort();
        names
    }
}

fn is_dns(entry: &ServiceEntry) -> bool {
    matches!(
        entry.resolution,
        Resolution::Dns | Resolution::DnsRoundRobin
    )
}

fn dns_names_of(key: &ServiceKey, entry: &ServiceEntry) -> Vec<String> {
    if !is_dns(entry) {
        return Vec::new();
    }
    let names: Vec<String> = if entry.endpoints.is_empty() {
        vec![key.fqdn()]
    } else {
        entry.endpoints.iter().map(|e| e.address.clone()).collect()
    };
    names
        .into_iter()
        .filter(|n| n.parse::<IpAddr>().is_err() && !n.contains('*'))
        .collect()
}

/// Registers the entries' hosts as services (see the module docs). `entries` are in file, then
/// document, order. Returns the entries by key; `services` gains a [`Service`] per new key.
pub fn register<'a>(
    entries: impl IntoIterator<Item = &'a ServiceEntry>,
    services: &mut BTreeMap<ServiceKey, Service>,
) -> BTreeMap<ServiceKey, Arc<ServiceEntry>> {
    let mut by_key: BTreeMap<ServiceKey, Arc<ServiceEntry>> = BTreeMap::new();
    for entry in entries {
        let shared = Arc::new(entry.clone());
        for key in &entry.keys {
            if services.contains_key(key) {
                // A Kubernetes Service of that name, or an earlier entry's host: it wins.
                continue;
            }
            services.insert(
                key.clone(),
                Service {
                    key: key.clone(),
                    ports: entry.ports.clone(),
                    selector: BTreeMap::new(),
                    cluster_ip: None,
                },
            );
            by_key.insert(key.clone(), shared.clone());
        }
    }
    by_key
}

/// The endpoints of an entry's host on `port`, limited to endpoints carrying every label of
/// `subset`. `None`: `key` is not a ServiceEntry host (the caller selects workloads).
pub fn endpoints(
    view: MeshView<'_>,
    key: &ServiceKey,
    port: &ServicePort,
    subset: Option<&BTreeMap<String, String>>,
) -> Option<Vec<Endpoint>> {
    let entry = view.traffic.service_entries.by_key.get(key)?;
    let dns = &view.traffic.service_entries.dns;
    let has = |labels: &BTreeMap<String, String>| {
        subset.is_none_or(|want| want.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    let plain = |ip: IpAddr, port: u16, name: &str, labels: &BTreeMap<String, String>| {
        super::unmeshed(SocketAddr::new(ip, port), name, labels)
    };
    let default_port = super::target_port(port);
    let port_of = |ports: &BTreeMap<String, u16>| {
        port.name
            .as_ref()
            .and_then(|n| ports.get(n).copied())
            .unwrap_or(default_port)
    };
    let lookup = |name: &str| -> Vec<IpAddr> {
        match name.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => dns.get(name).cloned().unwrap_or_default(),
        }
    };
    let mut out: Vec<Endpoint> = Vec::new();
    match entry.resolution {
        Resolution::None => {}
        Resolution::Static | Resolution::Dns | Resolution::DnsRoundRobin
            if !entry.endpoints.is_empty() =>
        {
            for e in entry.endpoints.iter().filter(|e| has(&e.labels)) {
                let p = port_of(&e.ports);
                for ip in lookup(&e.address) {
                    out.push(plain(ip, p, &e.address, &e.labels));
                }
            }
        }
        Resolution::Static => {}
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if has(&BTreeMap::new()) {
                let host = key.fqdn();
                for ip in lookup(&host) {
                    out.push(plain(ip, default_port, &host, &BTreeMap::new()));
                }
            }
        }
    }
    if entry.resolution == Resolution::DnsRoundRobin {
        // One address at a time, as Envoy's LOGICAL_DNS: the first the lookup returned.
        out.truncate(1);
    }
    Some(out)
}

/// Whether `ip` belongs to the entry: in its addresses, a STATIC endpoint, or a DNS answer for
/// one of its names.
fn owns(view: MeshView<'_>, key: &ServiceKey, entry: &ServiceEntry, ip: IpAddr) -> bool {
    if entry.addresses.iter().any(|c| c.contains(ip)) {
        return true;
    }
    if entry.resolution == Resolution::None {
        return false;
    }
    // STATIC endpoints are IPs; DNS ones may be IPs too, or names answered below (for STATIC,
    // `dns_names_of` is empty).
    entry
        .endpoints
        .iter()
        .any(|e| e.address.parse::<IpAddr>() == Ok(ip))
        || dns_names_of(key, entry).iter().any(|n| {
            view.traffic
                .service_entries
                .dns
                .get(n)
                .is_some_and(|ips| ips.contains(&ip))
        })
}

/// The destination for a captured address that belongs to a ServiceEntry host, if one does
/// (the first host by key). Resolution NONE sends to the captured address itself.
pub fn address_destination(view: MeshView<'_>, addr: SocketAddr) -> Option<Destination> {
    let (key, entry) = view
        .traffic
        .service_entries
        .by_key
        .iter()
        .find(|(key, e)| {
            e.ports.iter().any(|p| p.port == addr.port()) && owns(view, key, e, addr.ip())
        })?;
    let svc = view.services.get(key)?;
    let port = svc.port(addr.port())?;
    let mut dest = super::service_destination(view, svc, port);
    if entry.resolution == Resolution::None {
        dest.endpoints = vec![super::unmeshed(addr, &key.fqdn(), &BTreeMap::new())];
    }
    Some(dest)
}

#[cfg(test)]
mod tests;
