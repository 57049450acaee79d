//! The simulated mesh that `routes` and `hold` both build against a trellis-control:
//! endpoints registered over a few shared connections, and proxies each on its own connection,
//! subscribed to svc-0 and others.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::meshgen::{self, PORT};
use crate::sim::{self, SimWorkload, UpdateEvent};

/// The simulated mesh's size, the flags `routes` and `hold` share.
#[derive(Clone, Debug, clap::Args)]
pub struct FleetArgs {
    /// Simulated proxies (discovery streams, one connection each).
    #[arg(long, default_value_t = 1000)]
    pub proxies: usize,
    /// Services in the mesh.
    #[arg(long, default_value_t = 200)]
    pub services: usize,
    /// Endpoints (workloads registered with the control plane and left), spread over the
    /// services.
    #[arg(long, default_value_t = 10_000)]
    pub endpoints: usize,
    /// Targets each proxy subscribes to: svc-0 (the one whose route `routes` changes) and
    /// others.
    #[arg(long, default_value_t = 4)]
    pub subscriptions: usize,
}

impl FleetArgs {
    pub fn validate(&self) -> Result<()> {
        if self.services < 2 || self.subscriptions == 0 || self.subscriptions > self.services {
            bail!("--services must be >= 2 and --subscriptions between 1 and --services");
        }
        if self.proxies == 0 {
            bail!("--proxies must be at least 1");
        }
        Ok(())
    }
}

/// The file holding svc-0's VirtualService, the route `routes` changes.
pub const ROUTE_FILE: &str = "vs.yaml";

/// trellis-control flags that keep the registered endpoints for the whole run: their
/// registration streams close at once.
pub const ENDPOINTS_STAY: [&str; 4] = ["--workload-expiry", "1h", "--registration-grace", "0s"];

/// Writes the mesh's config directory under `work`: `services` Services and svc-0's route.
pub fn write_config(work: &Path, services: usize) -> Result<PathBuf> {
    let config = work.join("config");
    std::fs::create_dir(&config).context("config dir")?;
    meshgen::write_atomic(&config, "services.yaml", &meshgen::services_yaml(services))?;
    meshgen::write_atomic(&config, ROUTE_FILE, &meshgen::virtual_service_yaml(0))?;
    Ok(config)
}

/// Registers `count` workloads spread over the services (`app: svc-(i % services)`), over a
/// few shared connections, and closes their streams: the control plane keeps them as
/// endpoints until the (long) expiry.
pub async fn register_endpoints(discovery: &str, count: usize, services: usize) -> Result<()> {
    const CONNECTIONS: usize = 16;
    const IN_FLIGHT: usize = 64;
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(sim::connect(discovery).await?);
    }
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let permit = permits.clone().acquire_owned().await?;
        let channel = channels[i % CONNECTIONS].clone();
        let w = SimWorkload {
            name: format!("ep-{i}"),
            app: meshgen::service_name(i % services),
            inbound: format!(
                "127.{}.{}.{}:15006",
                1 + (i >> 16) % 254,
                (i >> 8) & 0xff,
                i & 0xff
            ),
            extra_labels: vec![],
        };
        tasks.spawn(async move {
            let _permit = permit;
            sim::register_and_leave(channel, &w).await
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Starts the simulated proxies; each subscribes to svc-0 and `subscriptions - 1` others.
/// Returns how many subscriptions they made.
pub async fn connect_proxies(
    shape: &FleetArgs,
    discovery: &str,
    events: mpsc::UnboundedSender<UpdateEvent>,
    stop: CancellationToken,
) -> Result<usize> {
    let mut subscriptions = 0;
    const CONNECTING: usize = 32;
    let permits = Arc::new(Semaphore::new(CONNECTING));
    let mut connects = tokio::task::JoinSet::new();
    for i in 0..shape.proxies {
        let permit = permits.clone().acquire_owned().await?;
        let discovery = discovery.to_string();
        let (events, stop) = (events.clone(), stop.clone());
        let mut targets = vec![sim::service_target(&meshgen::service_name(0), PORT)];
        for j in 1..shape.subscriptions {
            // Deterministic spread over svc-1.. so that most services have subscribers.
            let s = 1 + (i * 7 + j * 13) % (shape.services - 1);
            targets.push(sim::service_target(&meshgen::service_name(s), PORT));
        }
        targets.sort_by_key(|t| format!("{t:?}"));
        targets.dedup();
        subscriptions += targets.len();
        let w = SimWorkload {
            // Clients: registered, but no Service selects them, so the endpoint count stays
            // what --endpoints says.
            name: format!("proxy-{i}"),
            app: "bench-client".into(),
            inbound: format!("127.200.{}.{}:15006", (i >> 8) & 0xff, i & 0xff),
            extra_labels: vec![],
        };
        connects.spawn(async move {
            let channel = sim::connect(&discovery).await;
            drop(permit);
            let channel = channel?;
            let proxy = u32::try_from(i).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Err(e) =
                    sim::run_proxy(proxy, channel, w, targets, events, stop.clone()).await
                    && !stop.is_cancelled()
                {
                    eprintln!("bench-cp: proxy {proxy}: {e:#}");
                }
            });
            anyhow::Ok(())
        });
    }
    while let Some(done) = connects.join_next().await {
        done??;
    }
    Ok(subscriptions)
}
