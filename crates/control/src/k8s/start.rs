//! Startup of Kubernetes mode, called by the server wiring: the config watchers first (their
//! snapshots are what `Shared` is built on), then pods, namespaces and the webhooks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{KubeError, KubeOptions, watch as watchers};
use crate::ca::CaState;
use crate::state::Shared;
use crate::store::ConfigSnapshot;
use crate::webhook::{self, WebhookError, WebhookState, Webhooks};

/// The config side, running.
pub struct KubeConfigSource {
    pub client: Client,
    /// The mesh CA: TokenReview is installed into it, and it issues the webhooks' certificate.
    ca: Arc<CaState>,
    pub config_rx: watch::Receiver<Arc<ConfigSnapshot>>,
    listed_rx: watch::Receiver<Vec<&'static super::kinds::ConfigKind>>,
    status_rx: watch::Receiver<super::status::StatusInput>,
}

impl std::fmt::Debug for KubeConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeConfigSource").finish_non_exhaustive()
    }
}

/// `root_namespace` is the mesh root namespace (`--root-namespace`): where the MeshConfig
/// ConfigMap `istio` is read, as in local mode.
pub async fn start_config(
    options: &KubeOptions,
    root_namespace: &str,
    ca: &Arc<CaState>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> Result<KubeConfigSource, KubeError> {
    let client = super::connect(options).await?;
    // Fails fast with a clear message when the server is unreachable or refuses the account.
    client.apiserver_version().await.map_err(KubeError::Api)?;
    // The plug-in CA (Secret `cacerts` in the control plane's namespace) replaces the generated
    // one before any proxy connects; a malformed Secret stops startup.
    let namespace = &options.lease_namespace;
    match super::cacerts::read(&client, namespace, ca.trust_domain()).await? {
        Some(authority) => {
            ca.install_authority(authority);
            tracing::info!(secret = %format!("{namespace}/{}", super::cacerts::SECRET), "using the plug-in CA");
        }
        None => tracing::info!(
            "no Secret {namespace}/{}: using the control plane's own CA",
            super::cacerts::SECRET
        ),
    }
    // Identity by TokenReview from here on: a proxy proves its ServiceAccount with its token.
    ca.use_token_reviewer(Arc::new(super::tokenreview::KubeReviewer::new(
        client.clone(),
        &options.token_audience,
    )));
    let namespaces = watchers::Namespaces {
        secrets: &options.gateway_secret_namespaces,
        mesh_config: root_namespace,
    };
    let watch = watchers::watch_config(&client, namespaces, tasks, shutdown);
    Ok(KubeConfigSource {
        client,
        ca: ca.clone(),
        config_rx: watch.snapshot_rx,
        listed_rx: watch.listed_rx,
        status_rx: watch.status_rx,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum KubeStartError {
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
}

/// Starts pods, namespaces and the webhooks; returns once Services and Pods are listed (so the
/// first config a proxy gets is complete), with the webhook address if serving.
pub async fn start_rest(
    source: KubeConfigSource,
    options: &KubeOptions,
    shared: Arc<Shared>,
    tasks: &mut JoinSet<()>,
) -> Result<Option<SocketAddr>, KubeStartError> {
    let shutdown = shared.shutdown.clone();
    let client = source.client;
    let slices = super::slices::served_version(&client).await;
    match slices {
        Some(version) => tracing::info!(version, "watching EndpointSlices"),
        None => tracing::warn!(
            "the API server serves no EndpointSlices; Services without a selector have no endpoints"
        ),
    }
    let mut pods_rx = watchers::watch_pods(&client, shared.clone(), slices, tasks);
    let namespaces = watchers::watch_namespaces(&client, tasks, &shutdown);
    let mut listed_rx = source.listed_rx;
    let (leader_tx, leader_rx) = watch::channel(false);
    tasks.spawn(super::leader::run(
        client.clone(),
        options.lease_namespace.clone(),
        super::leader::identity(),
        leader_tx,
        shutdown.clone(),
    ));
    tasks.spawn(super::status::run(
        client.clone(),
        source.status_rx,
        shared.programmed.subscribe(),
        leader_rx,
        shutdown.clone(),
    ));
    wait_for(
        &mut listed_rx,
        |l| l.iter().any(|k| k.builtin && k.kind == "Service"),
        "Services",
        options.sync_timeout,
    )
    .await?;
    wait_for(&mut pods_rx, |synced| *synced, "Pods", options.sync_timeout).await?;
    let Some(addr) = options.webhook_addr else {
        return Ok(None);
    };
    let mut inject = options.inject.clone();
    inject.native_sidecar = super::native_sidecars(&client, options).await?;
    let webhooks = Webhooks::bind(addr, &options.webhook_names, source.ca.clone()).await?;
    let bound = webhooks.addr;
    if options.patch_webhooks {
        tasks.spawn(webhook::follow_ca_bundles(
            client.clone(),
            source.ca.clone(),
            options.inject.revision.clone(),
            shutdown.clone(),
        ));
    }
    let state = WebhookState {
        inject,
        namespace_labels: Box::new(move |ns| watchers::namespace_labels(&namespaces, ns)),
    };
    tasks.spawn(webhooks.serve(state, shutdown));
    tracing::info!(webhook = %bound, "admission webhooks listening");
    Ok(Some(bound))
}

async fn wait_for<T>(
    rx: &mut watch::Receiver<T>,
    done: impl FnMut(&T) -> bool,
    what: &'static str,
    timeout: Duration,
) -> Result<(), KubeError> {
    match tokio::time::timeout(timeout, rx.wait_for(done)).await {
        Ok(Ok(_)) => Ok(()),
        // A closed channel means the watcher task ended: only at shutdown.
        Ok(Err(_)) | Err(_) => Err(KubeError::SyncTimeout { what, timeout }),
    }
}
