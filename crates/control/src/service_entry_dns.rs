//! DNS for ServiceEntries with resolution DNS / DNS_ROUND_ROBIN: the adapter between the config
//! store and discovery that looks their names up and puts the answers into the snapshot
//! (`traffic.service_entries.dns`), so compile stays pure.
//!
//! Why the control plane and not the proxy: a transparent proxy only sees the address an
//! application connected to, and discovery answers for addresses; to say that `198.51.100.7:443`
//! is `api.example.com` the control plane must know what the name resolves to. Resolving once
//! here also gives every proxy the same endpoints. The cost: the control plane's resolver must
//! see the same answers as the workloads' (true for cluster DNS and public names).
//!
//! A config change looks up only the names without an answer yet, so that a change to
//! anything else reaches discovery without waiting on the resolver; every name is looked up
//! again every [`REFRESH`]. A failed lookup keeps the last good answer (a resolver hiccup must
//! not empty an endpoint list), and a name never answered has no endpoints. Lookups run one
//! after another with a timeout each (names are few: one per entry endpoint or host).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::ConfigSnapshot;

/// How often names are looked up again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the adapter: returns the receiver discovery reads, fed from `upstream` with DNS
/// answers filled in. Without DNS names a snapshot passes through unchanged.
pub fn spawn(
    mut upstream: watch::Receiver<Arc<ConfigSnapshot>>,
    shutdown: CancellationToken,
) -> watch::Receiver<Arc<ConfigSnapshot>> {
    let first = upstream.borrow_and_update().clone();
    let (tx, rx) = watch::channel(first.clone());
    tokio::spawn(async move {
        let mut answers: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        let mut current = first;
        // An interval, not a sleep per pass: config changes must not keep postponing it.
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.tick().await; // the first tick is immediate; the first pass looks all up anyway
        let mut all = true;
        loop {
            let names = current.traffic.service_entries.dns_names();
            answers.retain(|n, _| names.contains(n));
            let due: Vec<&String> = names
                .iter()
                .filter(|n| all || !answers.contains_key(*n))
                .collect();
            for name in due {
                match lookup(name).await {
                    Ok(ips) if !ips.is_empty() => {
                        answers.insert(name.clone(), ips);
                    }
                    Ok(_) => {
                        tracing::warn!(%name, "ServiceEntry DNS lookup returned no address; keeping the last answer")
                    }
                    Err(e) => {
                        tracing::warn!(%name, error = %e, "ServiceEntry DNS lookup failed; keeping the last answer")
                    }
                }
            }
            let with_dns = with_answers(&current, &answers);
            tx.send_if_modified(|published| {
                // The same `Arc`: nothing to compare (the usual case without DNS names).
                let changed = !Arc::ptr_eq(published, &with_dns) && **published != *with_dns;
                if changed {
                    *published = with_dns;
                }
                changed
            });
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = upstream.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    current = upstream.borrow_and_update().clone();
                    all = false;
                }
                _ = refresh.tick() => all = true,
            }
        }
    });
    rx
}

/// The snapshot with `answers` as its DNS data; the same `Arc` when there is nothing to add.
fn with_answers(
    snapshot: &Arc<ConfigSnapshot>,
    answers: &BTreeMap<String, Vec<IpAddr>>,
) -> Arc<ConfigSnapshot> {
    if snapshot.traffic.service_entries.dns == *answers {
        return snapshot.clone();
    }
    let mut out = (**snapshot).clone();
    out.traffic.service_entries.dns = answers.clone();
    Arc::new(out)
}

async fn lookup(name: &str) -> std::io::Result<Vec<IpAddr>> {
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, 0)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "DNS lookup timed out"))??;
    let mut ips: Vec<IpAddr> = Vec::new();
    for addr in found {
        if !ips.contains(&addr.ip()) {
            ips.push(addr.ip());
        }
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ConfigIndex;

    #[tokio::test]
    async fn answers_fill_the_snapshot_and_follow_config_changes() {
        let yaml = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: local}
spec:
  hosts: [local.external.test]
  resolution: DNS
  ports: [{number: 80, name: http}]
  endpoints: [{address: localhost}]
";
        let mut index = ConfigIndex::default();
        index.apply(
            "se.yaml",
            trellis_config::parse_documents("se.yaml", yaml.as_bytes()),
        );
        let (tx, rx) = watch::channel(Arc::new(ConfigSnapshot::default()));
        let shutdown = CancellationToken::new();
        let mut out = spawn(rx, shutdown.clone());
        tx.send_replace(Arc::new(index.snapshot()));
        // `localhost` resolves from /etc/hosts, without a network.
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            out.wait_for(|s| s.traffic.service_entries.dns.contains_key("localhost")),
        )
        .await
        .expect("an answer within 10 s")
        .expect("adapter alive")
        .clone();
        let ips = &got.traffic.service_entries.dns["localhost"];
        assert!(ips.iter().all(|ip| ip.is_loopback()), "{ips:?}");
        // Without entries the snapshot passes through as is.
        let empty = Arc::new(ConfigSnapshot::default());
        tx.send_replace(empty.clone());
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            out.wait_for(|s| s.traffic.service_entries.by_key.is_empty()),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        assert!(Arc::ptr_eq(&got, &empty));
        shutdown.cancel();
    }
}
