//! The admission webhooks the API server calls over HTTPS: sidecar injection (`/inject`) and
//! mesh config validation (`/validate`).
//!
//! [`inject`] and [`review`] are pure; this module is the adapter: a TLS listener serving a
//! certificate issued by the mesh CA (`CaState::serving_cert`; reissued when the issuer changes
//! and at half its life), an axum router, and the task that keeps the webhook configurations'
//! `caBundle` equal to the mesh trust bundle, so that the API server trusts this process through
//! an anchor rotation (both roots while both are in the bundle) and after a restart.

pub mod inject;
pub mod review;
pub mod revision;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::time::SystemTime;

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
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use trellis_identity::ca::CaError;
use trellis_identity::serving::{ServingCert, ServingError, TlsAcceptor, TlsStream};

use crate::ca::CaState;
use crate::k8s::kinds::names;
use inject::InjectConfig;

/// Lifetime of the webhook's serving leaf; it is reissued at half of it, and at once when the
/// issuer changes.
const SERVING_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long to wait before trying again when the CA cannot issue.
const REISSUE_RETRY: Duration = Duration::from_secs(10);

/// How long a client has to finish the TLS handshake; the accept loop waits for it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the caBundle patch is retried while the webhook configurations do not exist yet.
const PATCH_RETRY: Duration = Duration::from_secs(2);
/// How often the caBundle is checked again: re-applying the install manifests empties it.
const PATCH_RECHECK: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Serving(#[from] ServingError),
    #[error("cannot issue the webhook's serving certificate from the mesh CA: {0}")]
    Issue(#[from] CaError),
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
    /// The roots the serving certificate chains to (the mesh bundle when it was issued).
    pub ca_pem: String,
    listener: TlsListener,
    renewal: Renewal,
}

/// What keeps the serving certificate current.
struct Renewal {
    ca: Arc<CaState>,
    names: Vec<String>,
    acceptor_tx: watch::Sender<TlsAcceptor>,
    issuer_generation: u64,
    not_after: SystemTime,
}

impl std::fmt::Debug for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewal")
            .field("names", &self.names)
            .field("issuer_generation", &self.issuer_generation)
            .finish_non_exhaustive()
    }
}

struct TlsListener {
    tcp: TcpListener,
    /// The current certificate's acceptor; swapped on reissue, read per connection.
    acceptor_rx: watch::Receiver<TlsAcceptor>,
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
            let acceptor = self.acceptor_rx.borrow().clone();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
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
    /// Has the mesh CA issue the serving certificate for `names` and binds `addr`.
    pub async fn bind(
        addr: SocketAddr,
        names: &[String],
        ca: Arc<CaState>,
    ) -> Result<Self, WebhookError> {
        let cert: ServingCert = ca.serving_cert(names, SERVING_TTL)?;
        let (acceptor_tx, acceptor_rx) = watch::channel(cert.acceptor()?);
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| WebhookError::Bind { addr, source })?;
        let addr = tcp
            .local_addr()
            .map_err(|source| WebhookError::Bind { addr, source })?;
        Ok(Self {
            addr,
            ca_pem: cert.ca_pem,
            listener: TlsListener { tcp, acceptor_rx },
            renewal: Renewal {
                ca,
                names: names.to_vec(),
                acceptor_tx,
                issuer_generation: cert.issuer_generation,
                not_after: cert.not_after,
            },
        })
    }

    /// Serves until `shutdown`, reissuing the serving certificate when the issuer changes or
    /// half its life has passed.
    pub async fn serve(self, state: WebhookState, shutdown: CancellationToken) {
        tokio::spawn(self.renewal.run(shutdown.clone()));
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

impl Renewal {
    fn renew_in(&self) -> Duration {
        self.not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            / 2
    }

    async fn run(mut self, shutdown: CancellationToken) {
        let mut bundle_rx = self.ca.bundle_rx();
        let mut due = tokio::time::Instant::now() + self.renew_in();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = bundle_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A new bundle alone changes nothing here (the caBundle task follows it);
                    // a new issuer means the leaf must chain to the new root before the old
                    // one is retired.
                    if bundle_rx.borrow_and_update().issuer_generation == self.issuer_generation {
                        continue;
                    }
                }
                () = tokio::time::sleep_until(due) => {}
            }
            due = tokio::time::Instant::now()
                + match self.reissue() {
                    Ok(()) => self.renew_in(),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot reissue the webhook serving certificate; serving the current one");
                        REISSUE_RETRY
                    }
                };
        }
    }

    fn reissue(&mut self) -> Result<(), WebhookError> {
        let cert = self.ca.serving_cert(&self.names, SERVING_TTL)?;
        self.acceptor_tx.send_replace(cert.acceptor()?);
        tracing::info!(
            issuer_generation = cert.issuer_generation,
            "webhook serving certificate reissued"
        );
        self.issuer_generation = cert.issuer_generation;
        self.not_after = cert.not_after;
        Ok(())
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

/// Keeps the caBundle of every webhook of both configurations equal to the mesh trust bundle
/// (every root in it) until `shutdown`: patched at once, retried until the configurations
/// exist (they may be applied after the control plane starts), again whenever the bundle's
/// roots change (an anchor rotation's `prepare` and `retire`), and checked every
/// [`PATCH_RECHECK`] (a re-applied manifest empties it; only a differing bundle is patched).
pub async fn follow_ca_bundles(
    client: Client,
    ca: Arc<CaState>,
    revision: Option<String>,
    shutdown: CancellationToken,
) {
    // A revision patches its own configurations (`trellis-sidecar-injector-NAME`, ...).
    let names = revision::webhook_names(revision.as_deref());
    let mut bundle_rx = ca.bundle_rx();
    let mut patched: Option<Vec<String>> = None;
    let mut logged = false;
    loop {
        let roots = bundle_rx.borrow_and_update().bundle.roots_pem.clone();
        if patched.as_ref() != Some(&roots) {
            match try_patch(&client, &roots.concat(), &names).await {
                Ok(changed) => {
                    if changed {
                        tracing::info!(anchors = roots.len(), "webhook caBundle patched");
                    }
                    patched = Some(roots);
                    logged = false;
                }
                Err(err) => {
                    if !logged {
                        tracing::warn!(error = %err, "cannot patch the webhook caBundle yet; retrying");
                        logged = true;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(PATCH_RETRY) => {}
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = bundle_rx.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(PATCH_RECHECK) => patched = None,
        }
    }
}

/// Sets every webhook's caBundle to `pem` where it differs; returns whether anything changed.
async fn try_patch(
    client: &Client,
    pem: &str,
    (injector, validator): &(String, String),
) -> Result<bool, crate::k8s::KubeError> {
    let bundle = review::base64_encode(pem.as_bytes());
    let same =
        |b: &Option<k8s_openapi::ByteString>| b.as_ref().is_some_and(|b| b.0 == pem.as_bytes());
    let params = PatchParams::default();
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let err = |name: &str| {
        let name = name.to_string();
        move |source| crate::k8s::KubeError::PatchWebhook { name, source }
    };
    // Strategic merge keys webhooks by name, so each gets the bundle and nothing else changes.
    let current = mutating
        .get(injector.as_str())
        .await
        .map_err(err(injector.as_str()))?;
    let current_validating = validating
        .get(validator.as_str())
        .await
        .map_err(err(validator.as_str()))?;
    let up_to_date = current
        .webhooks
        .iter()
        .flatten()
        .all(|w| same(&w.client_config.ca_bundle))
        && current_validating
            .webhooks
            .iter()
            .flatten()
            .all(|w| same(&w.client_config.ca_bundle));
    if up_to_date {
        return Ok(false);
    }
    let hooks: Vec<Value> = current
        .webhooks
        .iter()
        .flatten()
        .map(|w| json!({"name": w.name, "clientConfig": {"caBundle": bundle}}))
        .collect();
    mutating
        .patch(
            injector.as_str(),
            &params,
            &Patch::Strategic(json!({"webhooks": hooks})),
        )
        .await
        .map_err(err(injector.as_str()))?;
    let hooks: Vec<Value> = current_validating
        .webhooks
        .iter()
        .flatten()
        .map(|w| json!({"name": w.name, "clientConfig": {"caBundle": bundle}}))
        .collect();
    validating
        .patch(
            validator.as_str(),
            &params,
            &Patch::Strategic(json!({"webhooks": hooks})),
        )
        .await
        .map_err(err(validator.as_str()))?;
    Ok(true)
}
