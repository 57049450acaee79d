//! Kubernetes mode: the API server instead of config directories and self-registration.
//!
//! Watchers (kube-runtime) feed the same pipeline as local mode: config objects (Services and
//! the mesh's config kinds, read as dynamic objects and translated by `trellis_config` from
//! their JSON) into the [`ConfigIndex`](crate::store::ConfigIndex) behind an [`ObjectIndex`];
//! Pods into the workloads compile selects endpoints from. Namespaces are kept for the sidecar
//! injector (`crate::webhook`). Pure parts: [`objects`], [`pods`], [`kinds`]; the adapter is
//! [`watch`]. This module must not decide routing: that stays in `compile`.
//!
//! Endpoints come from Pods and Service selectors (as compile does in local mode), not from
//! Endpoints/EndpointSlices: the pod is where the mesh learns whether a proxy is there, its
//! service account (identity) and its labels (subsets), which Endpoints do not carry.

pub mod apply;
pub mod cacerts;
pub mod concern;
pub mod kinds;
pub mod leader;
pub mod manifests;
pub mod objects;
pub mod pods;
pub mod programmed;
pub mod slices;
pub mod start;
pub mod status;
pub mod tokenreview;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::webhook::inject::InjectConfig;

/// How the control plane runs in Kubernetes mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeOptions {
    /// A kubeconfig file; `None`: `$KUBECONFIG`, `~/.kube/config`, or the in-cluster account.
    pub kubeconfig: Option<PathBuf>,
    /// Where the admission webhooks listen (HTTPS). `None`: no webhooks.
    pub webhook_addr: Option<SocketAddr>,
    /// DNS names and IPs of the webhook's serving certificate (what the API server dials).
    pub webhook_names: Vec<String>,
    /// Patch the webhook configurations' caBundle with this process's serving CA.
    pub patch_webhooks: bool,
    pub inject: InjectConfig,
    /// Native sidecars: `None` decides from the server's version (1.29+).
    pub native_sidecar: Option<bool>,
    /// How long startup waits for the first full list of Services and Pods.
    pub sync_timeout: Duration,
    /// Where the leader-election Lease lives (status is written by the leader only).
    pub lease_namespace: String,
    /// The audience proxies' ServiceAccount tokens must be for (checked with TokenReview).
    pub token_audience: String,
    /// Namespaces whose certificate Secrets Gateways may name (`credentialName`,
    /// `certificateRefs`); Secrets are watched there only (Istio: the gateway's own namespace).
    pub gateway_secret_namespaces: Vec<String>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            webhook_addr: Some(SocketAddr::from(([0, 0, 0, 0], kinds::names::WEBHOOK_PORT))),
            webhook_names: vec![
                format!("{}.{}.svc", kinds::names::CONTROL, kinds::names::NAMESPACE),
                format!(
                    "{}.{}.svc.cluster.local",
                    kinds::names::CONTROL,
                    kinds::names::NAMESPACE
                ),
            ],
            patch_webhooks: true,
            inject: InjectConfig::default(),
            native_sidecar: None,
            sync_timeout: Duration::from_secs(60),
            lease_namespace: kinds::names::NAMESPACE.to_string(),
            token_audience: tokenreview::DEFAULT_AUDIENCE.to_string(),
            gateway_secret_namespaces: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
    #[error("cannot reach the API server: {0}")]
    Api(#[source] kube::Error),
    #[error(
        "the first list of {what} did not complete within {timeout:?} (is the API server reachable and RBAC granted?)"
    )]
    SyncTimeout {
        what: &'static str,
        timeout: Duration,
    },
    #[error(transparent)]
    CaSecret(#[from] cacerts::CaSecretError),
    #[error("cannot patch the webhook configuration {name}: {source}")]
    PatchWebhook {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// A client from `options.kubeconfig`, or inferred as kubectl would.
pub async fn connect(options: &KubeOptions) -> Result<Client, KubeError> {
    let config = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|err| KubeError::Config(err.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|err| KubeError::Config(err.to_string()))?,
    };
    Client::try_from(config).map_err(KubeError::Api)
}

/// Whether to inject native sidecars: forced by `options`, else from the server's version.
pub async fn native_sidecars(client: &Client, options: &KubeOptions) -> Result<bool, KubeError> {
    if let Some(native) = options.native_sidecar {
        return Ok(native);
    }
    let version = client.apiserver_version().await.map_err(KubeError::Api)?;
    Ok(crate::webhook::inject::supports_native_sidecars(
        &version.major,
        &version.minor,
    ))
}
