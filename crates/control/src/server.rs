//! Wiring: open the store, bind the listeners, run the tasks, stop them.

pub(crate) mod codec;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ControlConfig;
use crate::ca::{CaStartError, CaState};
use crate::cli::UsageError;
use crate::discovery::DiscoveryService;
use crate::state::Shared;
use crate::store::{DirStore, MissingDir};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error(transparent)]
    MissingDir(#[from] MissingDir),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ca(#[from] CaStartError),
    #[error("kubernetes: {0}")]
    Kube(#[from] crate::k8s::start::KubeStartError),
    #[error("cannot write ready file {}: {source}", path.display())]
    ReadyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// 64 (EX_USAGE) for bad flags or directories; 1 for failures of the environment.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) | Self::MissingDir(_) => 64,
            // A --ca-dir that cannot be read or does not hold a usable CA is a usage error.
            Self::Ca(CaStartError::Read { .. } | CaStartError::Load { .. }) => 64,
            Self::Ca(_) => 1,
            Self::Bind { .. } | Self::ReadyFile { .. } | Self::Kube(_) => 1,
        }
    }
}

/// A running control plane. Dropping it does not stop it; call [`ControlPlane::stop`].
/// How long [`ControlPlane::stop`] waits for its servers to finish before cutting them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The discovery server's HTTP/2 receive windows, stream and connection (the spec's default).
const DISCOVERY_WINDOW: u32 = 65_535;

#[derive(Debug)]
pub struct ControlPlane {
    pub discovery_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Kubernetes mode: where the admission webhooks listen (HTTPS).
    pub webhook_addr: Option<SocketAddr>,
    ca: Arc<CaState>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl ControlPlane {
    /// Validates, loads the initial config, binds both listeners and serves. Returns once
    /// ready (the ready file, if any, is written).
    pub async fn start(config: ControlConfig) -> Result<Self, StartError> {
        config.validate()?;
        let ca = Arc::new(CaState::load(&config.trust_domain, &config.ca)?);
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        // The config source: directories (local mode) or the API server's watchers.
        let (config_rx, kube) = match &config.kubernetes {
            None => {
                let mut store = DirStore::new(config.config_dirs.clone())?;
                store.poll().await;
                let rx = store.subscribe();
                tasks.spawn(store.run(config.poll_interval, shutdown.clone()));
                (rx, None)
            }
            Some(options) => {
                let source = crate::k8s::start::start_config(
                    options,
                    &config.root_namespace,
                    &ca,
                    &mut tasks,
                    &shutdown,
                )
                .await
                .map_err(|e| StartError::Kube(e.into()))?;
                (source.config_rx.clone(), Some((source, options)))
            }
        };
        // ServiceEntry DNS answers join the snapshot between the store and discovery.
        let config_rx = crate::service_entry_dns::spawn(config_rx, shutdown.clone());
        // So do linked clusters' exported services (docs/multicluster.md).
        let config_rx = crate::multicluster::link::spawn(config_rx, shutdown.clone());
        let discovery = TcpListener::bind(config.discovery_addr)
            .await
            .map_err(|source| StartError::Bind {
                what: "discovery",
                addr: config.discovery_addr,
                source,
            })?;
        let http = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| StartError::Bind {
                what: "http",
                addr: config.http_addr,
                source,
            })?;
        let local = |l: &TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let discovery_addr = local(&discovery, "discovery", config.discovery_addr)?;
        let http_addr = local(&http, "http", config.http_addr)?;

        // Pods are listed before ready, so there is nothing to hold back in Kubernetes mode.
        let grace = match kube {
            Some(_) => Duration::ZERO,
            None => config.registration_grace.unwrap_or(config.workload_expiry),
        };
        let shared = Arc::new(Shared::new(
            config.trust_domain.clone(),
            config.heartbeat_interval,
            config.workload_expiry,
            grace,
            config_rx,
            shutdown.clone(),
        ));
        let webhook_addr = match kube {
            Some((source, options)) => {
                crate::k8s::start::start_rest(source, options, shared.clone(), &mut tasks).await?
            }
            None => None,
        };
        tasks.spawn(shared.clone().run_expiry(config.workload_expiry));

        let grpc = tonic::transport::Server::builder()
            // Detects proxies that vanished without closing their connection.
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            // HTTP/2's default 64 KiB receive windows instead of hyper's 1 MiB: proxies send
            // tens of bytes (Hello, Subscribe, Ack, a CSR), so nothing waits on the window,
            // and with thousands of connections it measured 10-20 MiB less RSS at 5,000
            // proxies (three paired runs of `bench-cp hold`, docs/benchmarks.md).
            .initial_stream_window_size(DISCOVERY_WINDOW)
            .initial_connection_window_size(DISCOVERY_WINDOW)
            .add_service(
                DiscoveryService::new(shared.clone())
                    .with_root_namespace(&config.root_namespace)
                    .with_default_inbound_policy(config.default_inbound_policy)
                    .with_outbound_traffic_policy(config.outbound_traffic_policy)
                    .into_server(),
            )
            .add_service(
                crate::ca::grpc::IdentityService::new(ca.clone(), shutdown.clone()).into_server(),
            );
        let token = shutdown.clone();
        tasks.spawn(async move {
            // TCP_NODELAY, as tonic's own `serve` sets and `from` does not: with Nagle a small
            // write (a Welcome, a Certify answer) waits for the proxy's delayed ACK, ~40 ms.
            let incoming =
                tonic::transport::server::TcpIncoming::from(discovery).with_nodelay(Some(true));
            if let Err(err) = grpc
                .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
                .await
            {
                tracing::error!(error = %err, "discovery server failed");
            }
        });

        let ready = Arc::new(AtomicBool::new(false));
        let dashboard = crate::dashboard_api::DashboardOptions {
            prometheus: config.dashboard_prometheus.clone(),
            root_namespace: config.root_namespace.clone(),
            default_inbound_policy: config.default_inbound_policy,
        };
        let app = crate::http::router(shared, ready.clone(), dashboard)
            .merge(crate::ca::http::router(ca.clone()))
            .layer(axum::Extension(ca.clone()));
        let token = shutdown.clone();
        tasks.spawn(async move {
            let app = app.into_make_service_with_connect_info::<crate::ca::http::Origin>();
            let serve = axum::serve(http, app).with_graceful_shutdown(token.cancelled_owned());
            if let Err(err) = serve.await {
                tracing::error!(error = %err, "http server failed");
            }
        });

        ready.store(true, Ordering::Release);
        if let Some(path) = &config.ready_file {
            write_ready_file(path, discovery_addr, http_addr).map_err(|source| {
                StartError::ReadyFile {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        tracing::info!(%discovery_addr, %http_addr, "control plane ready");
        Ok(Self {
            discovery_addr,
            http_addr,
            webhook_addr,
            ca,
            shutdown,
            tasks,
        })
    }

    /// The certificate authority: join tokens, rotation, metrics.
    pub fn ca(&self) -> &Arc<CaState> {
        &self.ca
    }

    /// Cancelling this token stops the control plane (as [`ControlPlane::stop`] does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops serving: discovery streams end (proxies keep their last config and reconnect),
    /// listeners close. Waits for every task to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        // Every server ends its streams on the token; the bound is a backstop so that one
        // stream that does not can never keep the process from exiting.
        let drained = tokio::time::timeout(STOP_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(grace = ?STOP_GRACE, "tasks still running after the stop grace; cutting them");
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }

    /// Runs until the shutdown token is cancelled, then stops.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.stop().await;
    }
}

/// Temp file + rename, so a reader never sees a half-written file.
fn write_ready_file(path: &Path, discovery: SocketAddr, http: SocketAddr) -> std::io::Result<()> {
    let body = serde_json::json!({
        "pid": std::process::id(),
        "discovery": discovery.to_string(),
        "http": http.to_string(),
    });
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, body.to_string())?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
