//! Assembling a proxy from its config: bind every listener (all or nothing, before anything is
//! spawned), start discovery, spawn the listeners and the admin server, publish the ready file,
//! and run the drain when shutdown starts.
//!
//! [`Proxy`] is the embedding API used by `main`, tests and other binaries.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trellis_model::Workload;

use crate::accesslog::{self, AccessLog};
use crate::admin::{self, AdminState};
use crate::config::ProxyConfig;
use crate::discovery::{Discovery, DiscoveryConfig};
use crate::serve::{Ctx, Source};
use crate::shutdown;
use crate::telemetry::Metrics;
use crate::telemetry::exchange::{LocalWorkload, Telemetry};
use crate::tls::{self, MeshIdentity};
use crate::trace::{self, export::ResourceInfo};
use crate::transport::{BindError, bind};
use crate::{inbound, outbound};

/// How often the ready-file writer checks readiness when nothing woke it: a backstop, since
/// it wakes on the Welcome and on the certificate themselves.
const READY_POLL: Duration = Duration::from_millis(50);

/// Why the proxy could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Config(#[from] crate::args::ConfigError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

impl ProxyError {
    /// The process exit code: 64 (EX_USAGE) for bad flags, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 64,
            Self::Bind(_) | Self::Io { .. } => 1,
        }
    }
}

/// The addresses the proxy actually listens on (ports resolved when 0 was asked for).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BoundAddrs {
    pub inbound: SocketAddr,
    pub outbound: Option<SocketAddr>,
    /// Target (as written on the command line) to listen address.
    pub outbound_ports: BTreeMap<String, SocketAddr>,
    pub admin: SocketAddr,
    /// The inbound address registered with the control plane.
    pub advertise: SocketAddr,
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    addrs: BoundAddrs,
    shutdown: CancellationToken,
    stop: CancellationToken,
    tracker: TaskTracker,
    drain_timeout: Duration,
    ready_file: Option<PathBuf>,
}

impl Proxy {
    /// Binds every listener and starts serving. Fails without side effects left running if any
    /// listener cannot be bound.
    pub async fn start(config: ProxyConfig) -> Result<Self, ProxyError> {
        let inbound_listener = bind("--inbound", config.inbound).await?;
        let outbound_listener = match config.outbound {
            Some(addr) => Some(bind("--outbound", addr).await?),
            None => None,
        };
        let mut port_listeners = Vec::with_capacity(config.outbound_ports.len());
        for port in &config.outbound_ports {
            port_listeners.push((
                bind("--outbound-port", port.listen).await?,
                port.target.clone(),
            ));
        }
        let admin_listener = bind("--admin", config.admin).await?;

        let local = |l: &tokio::net::TcpListener| {
            l.local_addr().map_err(|source| ProxyError::Io {
                what: "reading a bound address",
                source,
            })
        };
        let inbound_addr = local(&inbound_listener)?;
        let addrs = BoundAddrs {
            inbound: inbound_addr,
            outbound: outbound_listener.as_ref().map(local).transpose()?,
            outbound_ports: port_listeners
                .iter()
                .map(|(l, t)| Ok((t.to_string(), local(l)?)))
                .collect::<Result<_, ProxyError>>()?,
            admin: local(&admin_listener)?,
            advertise: config.advertise.unwrap_or_else(|| advertised(inbound_addr)),
        };

        let shutdown = CancellationToken::new();
        // Discovery and the admin server outlive the drain: in-flight requests may still need
        // endpoints, and `/ready` must keep answering 503 until the process is gone.
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let metrics = Arc::new(Metrics::with_detail(config.metrics_labels));
        let workload = config.workload.as_deref().unwrap_or_default();
        let mut telemetry = Telemetry::new(
            metrics.clone(),
            LocalWorkload::new(workload, &config.namespace),
        );
        let resource = ResourceInfo {
            service_name: if workload.is_empty() {
                "trellis-proxy"
            } else {
                workload
            }
            .to_owned(),
            namespace: config.namespace.clone(),
        };
        let flag_collector =
            config
                .otlp_endpoint
                .clone()
                .map(|endpoint| trace::export::Collector {
                    endpoint,
                    protocol: config.otlp_protocol,
                });
        // With a control plane there is a tracer even without --otlp-endpoint: a Telemetry's
        // tracing provider may name a collector at run time. The exporter outlives the drain
        // like discovery: spans of the last requests still go out.
        if let Some(tracer) = trace::export::spawn(
            flag_collector,
            config.control.is_some(),
            config.trace_sampling,
            resource,
            metrics.spans.clone(),
            stop.clone(),
        ) {
            telemetry = telemetry.with_tracer(tracer);
        }
        // With a control plane the access log exists even when off: an Istio Telemetry may turn
        // it on at runtime (trace::settings); an idle writer thread is all that costs.
        if config.access_log != accesslog::Format::Off || config.control.is_some() {
            let log = AccessLog::start(
                config.access_log,
                config.access_log_path.as_deref(),
                metrics.access_log_dropped.clone(),
            )
            .map_err(|e| ProxyError::Io {
                what: "opening the access log",
                source: e.source,
            })?;
            telemetry = telemetry.with_access_log(log);
        }
        let telemetry = Arc::new(telemetry);
        tokio::spawn(crate::anomaly::run(
            metrics.anomaly.clone(),
            crate::anomaly::config(config.anomaly_window, config.anomaly_baseline),
            stop.clone(),
        ));
        let discovery = match &config.control {
            Some(control) => {
                Discovery::spawn(discovery_config(&config, control, &addrs), stop.clone())
            }
            None => Discovery::disabled(),
        };
        // With a control plane, its CA issues this workload's certificate and meshed hops go
        // over mTLS; standalone there is none and they stay plaintext.
        let identity = Arc::new(MeshIdentity::new(config.control.is_some()));
        crate::resilience::health::use_identity(identity.clone());
        crate::client::Origination::count_failures_in(identity.clone());
        let authn = Arc::new(crate::authn::Authenticator::default());
        if let Some(control) = &config.control {
            tls::manager::spawn(
                tls::manager::ManagerConfig {
                    control: control.clone(),
                    namespace: config.namespace.clone(),
                    service_account: config.service_account.clone(),
                    join_token: config.join_token.clone(),
                    identity_token_file: config.identity_token_file.clone(),
                },
                identity.clone(),
                discovery.clone(),
                stop.clone(),
            );
            tokio::spawn(tls::policy::follow(
                discovery.inbound_policy_rx(),
                identity.clone(),
                stop.clone(),
            ));
            if let Some(log) = telemetry.access_log.clone() {
                tokio::spawn(trace::settings::follow(
                    discovery.telemetry_rx(),
                    trace::settings::Defaults {
                        sampling: config.trace_sampling,
                        access_log: config.access_log,
                    },
                    telemetry.tracer.clone(),
                    log,
                    metrics.overrides.clone(),
                    stop.clone(),
                ));
            }
            tokio::spawn(crate::authz::follow(
                discovery.authorization_rx(),
                metrics.authz.clone(),
                stop.clone(),
            ));
            tokio::spawn(crate::wasm::follow(
                discovery.wasm_plugins_rx(),
                metrics.wasm.clone(),
                stop.clone(),
            ));
            tokio::spawn(crate::wasm::tick(metrics.wasm.clone(), stop.clone()));
            tokio::spawn(crate::authn::follow(
                discovery.request_authentication_rx(),
                authn.clone(),
                stop.clone(),
            ));
        }

        let gateway_listeners = crate::gateway::BoundListeners::default();
        let gateway_mode = config.gateway.mode == crate::gateway::Mode::Gateway;
        let mut listeners = vec![addrs.inbound, addrs.admin];
        listeners.extend(addrs.outbound);
        listeners.extend(addrs.outbound_ports.values().copied());
        let ctx = Arc::new(
            Ctx::new(
                metrics.clone(),
                discovery.clone(),
                config.detect_timeout,
                config.opaque_ports.clone(),
                listeners,
                shutdown.clone(),
                tracker.clone(),
            )
            .with_source(Source {
                namespace: config.namespace.clone(),
                labels: config.labels.clone(),
            })
            .with_telemetry(telemetry)
            .with_identity(identity.clone())
            .with_authn(authn.clone())
            .with_limits(config.limits.clone())
            .with_gateway_listeners(gateway_mode.then(|| gateway_listeners.clone())),
        );
        if config.control.is_some() {
            tokio::spawn(crate::resilience::ratelimit::follow(
                discovery.rate_limits_rx(),
                ctx.rate_limits.clone(),
                stop.clone(),
            ));
        }
        let gateway_rx = discovery.gateway_rx();
        let admin_state = Arc::new(AdminState {
            metrics,
            discovery,
            config: serde_json::json!({ "config": &config, "listeners": &addrs }),
            listening: false.into(),
            shutdown: shutdown.clone(),
            identity,
            authn,
            gateway_listeners: gateway_listeners.clone(),
        });

        tracker.spawn(inbound::run(
            inbound_listener,
            ctx.clone(),
            config.app,
            config.app_ports.clone(),
        ));
        if let Some(listener) = outbound_listener {
            tracker.spawn(outbound::run_transparent(listener, ctx.clone()));
        }
        for (listener, target) in port_listeners {
            tracker.spawn(outbound::run_explicit(listener, ctx.clone(), target));
        }
        if config.gateway.mode == crate::gateway::Mode::Gateway {
            // Listeners come from discovery (the Gateways selecting this workload).
            tracker.spawn(crate::gateway::run(
                ctx.clone(),
                gateway_rx,
                config.gateway.clone(),
                gateway_listeners,
            ));
        }
        tokio::spawn(admin::run(
            admin_listener,
            admin_state.clone(),
            stop.clone(),
        ));
        admin_state.listening.store(true, Ordering::Release);
        tokio::spawn(crate::resident::release_when_ready(
            admin_state.clone(),
            stop.clone(),
        ));
        if let Some(path) = config.ready_file.clone() {
            tokio::spawn(write_ready_file_when_ready(
                path,
                addrs.clone(),
                admin_state,
                stop.clone(),
            ));
        }
        tracing::info!(
            inbound = %addrs.inbound,
            outbound = ?addrs.outbound,
            admin = %addrs.admin,
            outbound_ports = ?addrs.outbound_ports,
            "proxy listening"
        );
        Ok(Self {
            addrs,
            shutdown,
            stop,
            tracker,
            drain_timeout: config.drain_timeout,
            ready_file: config.ready_file,
        })
    }

    pub fn addrs(&self) -> &BoundAddrs {
        &self.addrs
    }

    /// Cancelling this token starts the graceful drain (as SIGTERM or `POST /shutdown` do).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until shutdown starts, then drains (bounded by `--drain-timeout`) and stops the
    /// admin server and discovery.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        tracing::info!(timeout = ?self.drain_timeout, "draining");
        let clean = shutdown::drain(&self.tracker, self.drain_timeout).await;
        self.stop.cancel();
        if let Some(path) = &self.ready_file {
            // A stale file would advertise ports nobody listens on any more.
            let _ = tokio::fs::remove_file(path).await;
        }
        tracing::info!(clean, "proxy stopped");
    }
}

/// `--advertise`'s default: the bound inbound address, with a wildcard IP made loopback.
pub fn advertised(inbound: SocketAddr) -> SocketAddr {
    match inbound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), inbound.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), inbound.port())
        }
        _ => inbound,
    }
}

fn discovery_config(config: &ProxyConfig, control: &str, addrs: &BoundAddrs) -> DiscoveryConfig {
    let name = config.workload.clone().unwrap_or_default();
    DiscoveryConfig {
        control: control.to_string(),
        proxy_id: format!(
            "{name}.{}-{}-{:08x}",
            config.namespace,
            std::process::id(),
            rand::random::<u32>()
        ),
        workload: Workload {
            name,
            namespace: config.namespace.clone(),
            service_account: config.service_account.clone(),
            labels: config.labels.clone(),
            inbound_address: addrs.advertise,
            ports: config.app_ports.clone(),
            admin_address: Some(addrs.admin),
        },
        join_token: config.join_token.clone(),
    }
}

/// The ready file's JSON.
#[derive(Debug, Serialize)]
struct ReadyFile<'a> {
    pid: u32,
    inbound: SocketAddr,
    outbound: Option<SocketAddr>,
    outbound_ports: &'a BTreeMap<String, SocketAddr>,
    admin: SocketAddr,
}

async fn write_ready_file_when_ready(
    path: PathBuf,
    addrs: BoundAddrs,
    state: Arc<AdminState>,
    stop: CancellationToken,
) {
    // Subscribed before the first check, so a change between the check and the wait wakes it.
    let mut registration_rx = state.discovery.registration_rx();
    let mut installs_rx = state.identity.installs_rx();
    // Bounded by the proxy's life: the loop ends at readiness, drain or exit.
    while let Err(reason) = state.readiness() {
        if state.shutdown.is_cancelled() {
            return;
        }
        tracing::debug!(reason = %reason, "not ready yet; ready file deferred");
        // A closed channel only ends that wake-up; the backstop still runs.
        tokio::select! {
            _ = stop.cancelled() => return,
            Ok(()) = registration_rx.changed() => {}
            Ok(()) = installs_rx.changed() => {}
            _ = tokio::time::sleep(READY_POLL) => {}
        }
    }
    if let Err(e) = write_ready_file(&path, &addrs).await {
        tracing::error!(path = %path.display(), error = %e, "cannot write the ready file");
    }
}

/// Writes to a temporary sibling and renames, so a reader never sees half a file.
async fn write_ready_file(path: &Path, addrs: &BoundAddrs) -> std::io::Result<()> {
    let ready = ReadyFile {
        pid: std::process::id(),
        inbound: addrs.inbound,
        outbound: addrs.outbound,
        outbound_ports: &addrs.outbound_ports,
        admin: addrs.admin,
    };
    let json = serde_json::to_vec_pretty(&ready).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    tokio::fs::write(&tmp, json).await?;
    tokio::fs::rename(&tmp, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_replaces_wildcards() {
        assert_eq!(
            advertised("0.0.0.0:15006".parse().unwrap()),
            "127.0.0.1:15006".parse().unwrap()
        );
        assert_eq!(
            advertised("[::]:1".parse().unwrap()),
            "[::1]:1".parse().unwrap()
        );
        assert_eq!(
            advertised("10.1.2.3:15006".parse().unwrap()),
            "10.1.2.3:15006".parse().unwrap()
        );
    }
}
