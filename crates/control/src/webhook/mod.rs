//! The admission webhooks the API server calls over HTTPS: sidecar injection (`/inject`) and
//! mesh config validation (`/validate`).
//!
//! [`inject`] and [`review`] are pure; this module is the adapter: a TLS listener with a serving
//! certificate made at startup (`trellis_identity::serving`), an axum router, and the task that
//! writes the certificate's CA into the webhook configurations' `caBundle` so that the API
//! server trusts this process (a restart makes a new CA and patches it again).

pub mod inject;
pub mod review;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use trellis_identity::serving::{ServingCert, ServingError, TlsAcceptor, TlsStream};

use crate::k8s::kinds::names;
use inject::InjectConfig;

/// How long a client has to finish the TLS handshake; the accept loop waits for it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the caBundle patch is retried while the webhook configurations do not exist yet.
const PATCH_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Serving(#[from] ServingError),
    #[error("cannot listen for webhooks on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Looks up a namespace's labels (the injector's view of `trellis.io/inject`).
pub type NamespaceLabels = Box<dyn Fn(&str) -> BTreeMap<String, String> + Send + Sync>;

/// What the handlers read.
pub struct WebhookState {
    pub inject: InjectConfig,
    pub namespace_labels: NamespaceLabels,
}

impl std::fmt::Debug for WebhookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookState")
            .field("inject", &self.inject)
            .finish_non_exhaustive()
    }
}

/// A bound webhook server, not serving yet.
#[derive(Debug)]
pub struct Webhooks {
    pub addr: SocketAddr,
    pub ca_pem: String,
    listener: TlsListener,
}

struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %err, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
                Ok(Ok(tls)) => return (tls, peer),
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "webhook TLS handshake failed")
                }
                Err(_) => tracing::debug!(%peer, "webhook TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl Webhooks {
    /// Makes the serving certificate for `names` and binds `addr`.
    pub async fn bind(addr: SocketAddr, names: &[String]) -> Result<Self, WebhookError> {
        let cert = ServingCert::generate(names)?;
        let acceptor = cert.acceptor()?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| WebhookError::Bind { addr, source })?;
        let addr = tcp
            .local_addr()
            .map_err(|source| WebhookError::Bind { addr, source })?;
        Ok(Self {
            addr,
            ca_pem: cert.ca_pem,
            listener: TlsListener { tcp, acceptor },
        })
    }

    /// Serves until `shutdown`.
    pub async fn serve(self, state: WebhookState, shutdown: CancellationToken) {
        let app = Router::new()
            .route(names::INJECT_PATH, post(handle_inject))
            .route(names::VALIDATE_PATH, post(handle_validate))
            .with_state(Arc::new(state));
        let serve =
            axum::serve(self.listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(err) = serve.await {
            tracing::error!(error = %err, "webhook server failed");
        }
    }
}

async fn handle_inject(
    State(state): State<Arc<WebhookState>>,
    axum::Json(body): axum::Json<Value>,
) -> axum::Json<Value> {
    axum::Json(review::mutate(
        &body,
        &state.inject,
        &state.namespace_labels,
    ))
}

async fn handle_validate(axum::Json(body): axum::Json<Value>) -> axum::Json<Value> {
    axum::Json(review::validate(&body))
}

/// Writes `ca_pem` into the caBundle of every webhook of both configurations, retrying until
/// they exist (they may be applied after the control plane starts) or `shutdown`.
pub async fn patch_ca_bundles(client: Client, ca_pem: String, shutdown: CancellationToken) {
    let bundle = review::base64_encode(ca_pem.as_bytes());
    let mut logged = false;
    loop {
        match try_patch(&client, &bundle).await {
            Ok(()) => {
                tracing::info!("webhook caBundle patched");
                return;
            }
            Err(err) => {
                if !logged {
                    tracing::warn!(error = %err, "cannot patch the webhook caBundle yet; retrying");
                    logged = true;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PATCH_RETRY) => {}
        }
    }
}

async fn try_patch(client: &Client, bundle: &str) -> Result<(), crate::k8s::KubeError> {
    let params = PatchParams::default();
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let err = |name: &str| {
        let name = name.to_string();
        move |source| crate::k8s::KubeError::PatchWebhook { name, source }
    };
    // Strategic merge keys webhooks by name, so each gets the bundle and nothing else changes.
    let current = mutating
        .get(names::INJECTOR_WEBHOOK)
        .await
        .map_err(err(names::INJECTOR_WEBHOOK))?;
    let hooks: Vec<Value> = current
        .webhooks
        .iter()
        .flatten()
        .map(|w| json!({"name": w.name, "clientConfig": {"caBundle": bundle}}))
        .collect();
    mutating
        .patch(
            names::INJECTOR_WEBHOOK,
            &params,
            &Patch::Strategic(json!({"webhooks": hooks})),
        )
        .await
        .map_err(err(names::INJECTOR_WEBHOOK))?;
    let current = validating
        .get(names::VALIDATING_WEBHOOK)
        .await
        .map_err(err(names::VALIDATING_WEBHOOK))?;
    let hooks: Vec<Value> = current
        .webhooks
        .iter()
        .flatten()
        .map(|w| json!({"name": w.name, "clientConfig": {"caBundle": bundle}}))
        .collect();
    validating
        .patch(
            names::VALIDATING_WEBHOOK,
            &params,
            &Patch::Strategic(json!({"webhooks": hooks})),
        )
        .await
        .map_err(err(names::VALIDATING_WEBHOOK))?;
    Ok(())
}
