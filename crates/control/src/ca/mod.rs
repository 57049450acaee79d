//! The certificate authority server: who may get which identity (join tokens, or a bearer
//! token checked by a [`TokenReviewer`]), the CA held in memory, the trust bundle published to
//! proxies, anchor rotation, and CA metrics.
//!
//! Issuing itself is `trellis_identity::ca` (pure); this module decides whether a request may
//! have the identity it asks for and keeps the shared state. [`grpc`] and [`http`] are thin
//! adapters over [`CaState`]. It must not know about discovery or Kubernetes: Kubernetes mode
//! plugs its TokenReview in through [`TokenReviewer`] (`crate::k8s::tokenreview`).

pub mod grpc;
pub mod http;
pub(crate) mod metrics;
pub mod plugged;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use trellis_identity::SpiffeId;
use trellis_identity::ca::{Authority, CaError, CaStatus, DEFAULT_LEAF_TTL, Issued, TrustBundle};
use trellis_identity::token::{JoinTokens, TokenError};

pub use metrics::CaMetrics;

/// How the CA starts and what it requires.
#[derive(Clone, Debug)]
pub struct CaConfig {
    /// `root.pem`, `issuer.pem`, `issuer-key.pem`; `None`: generate both at startup.
    pub dir: Option<PathBuf>,
    /// Lifetime of issued leaves.
    pub cert_ttl: Duration,
    /// Refuse a Certify without a valid join token (default: accept the claimed identity).
    pub require_join_token: bool,
    /// The secret join tokens are signed with; `None`: random per process.
    pub join_token_secret: Option<PathBuf>,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            dir: None,
            cert_ttl: DEFAULT_LEAF_TTL,
            require_join_token: false,
            join_token_secret: None,
        }
    }
}

/// The CA could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaStartError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--ca-dir {}: {source}", dir.display())]
    Load {
        dir: PathBuf,
        #[source]
        source: CaError,
    },
    #[error("cannot generate the CA: {0}")]
    Generate(#[source] CaError),
    #[error("cannot make a join-token secret: the system RNG failed")]
    Rng,
}

/// Why a Certify was refused; the text goes back to the proxy.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("a join token is required (--require-join-token)")]
    TokenRequired,
    #[error("the token is for {proven}, not {asked}")]
    WrongIdentity { proven: String, asked: String },
    #[error(
        "a ServiceAccount token is required (Kubernetes mode checks it with TokenReview; see the proxy's --identity-token-file)"
    )]
    ServiceAccountTokenRequired,
    #[error("{0}")]
    Review(#[from] ReviewError),
    #[error("invalid identity: {0}")]
    Identity(#[from] trellis_identity::SpiffeIdError),
    #[error("{0}")]
    Ca(#[from] CaError),
}

impl CertifyError {
    /// Whether the proof was at fault (vs. the request being malformed).
    pub fn is_denied(&self) -> bool {
        match self {
            Self::Token(_)
            | Self::TokenRequired
            | Self::WrongIdentity { .. }
            | Self::ServiceAccountTokenRequired
            | Self::Review(ReviewError::Refused(_)) => true,
            Self::Ca(CaError::ForbiddenIdentity { .. }) => true,
            Self::Identity(_) | Self::Ca(_) | Self::Review(ReviewError::Unavailable(_)) => false,
        }
    }
}

/// What a proxy asks for.
#[derive(Clone, Debug)]
pub struct CertifyInput<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub csr: &'a [u8],
    /// The proof: a join token (local mode) or a ServiceAccount token (Kubernetes mode, checked
    /// by the [`TokenReviewer`]). Empty: none.
    pub join_token: &'a str,
}

/// The identity a reviewed bearer token proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewedIdentity {
    pub namespace: String,
    pub service_account: String,
}

/// Why a bearer token proved nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The reviewer looked at the token and refused it (bad signature, expired, wrong audience,
    /// not a ServiceAccount).
    #[error("the ServiceAccount token was refused: {0}")]
    Refused(String),
    /// The reviewer could not be asked (API server down, RBAC): the proxy retries.
    #[error("cannot review the ServiceAccount token: {0}")]
    Unavailable(String),
}

/// A future the reviewer returns (boxed: the trait is used as an object).
pub type ReviewFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ReviewedIdentity, ReviewError>> + Send + 'a>>;

/// Checks a bearer token and says which workload identity it proves. With one installed, every
/// Certify must carry a token it accepts (join tokens are not used).
pub trait TokenReviewer: Send + Sync + std::fmt::Debug {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a>;
}

/// The admission rule with a reviewer: a token is required, and the identity it proves must be
/// exactly the one asked for.
pub async fn admit_reviewed(
    trust_domain: &str,
    input: &CertifyInput<'_>,
    reviewer: &dyn TokenReviewer,
) -> Result<SpiffeId, CertifyError> {
    let asked = SpiffeId::new(trust_domain, input.namespace, input.service_account)?;
    if input.join_token.is_empty() {
        return Err(CertifyError::ServiceAccountTokenRequired);
    }
    let proven = reviewer.review(input.join_token).await?;
    if proven.namespace != input.namespace || proven.service_account != input.service_account {
        return Err(CertifyError::WrongIdentity {
            proven: format!("{}/{}", proven.namespace, proven.service_account),
            asked: format!("{}/{}", input.namespace, input.service_account),
        });
    }
    Ok(asked)
}

/// The bundle as proxies receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleView {
    pub bundle: TrustBundle,
    pub issuer_generation: u64,
}

/// The pure admission rule: which identity a request may have. A token must verify and be for
/// exactly the identity asked; without one, the claimed identity is accepted unless tokens are
/// required (local mode's default, a documented trade-off: any process that can reach the
/// discovery port can claim any identity).
pub fn admit(
    trust_domain: &str,
    input: &CertifyInput<'_>,
    tokens: &JoinTokens,
    require_token: bool,
    now: SystemTime,
) -> Result<SpiffeId, CertifyError> {
    let asked = SpiffeId::new(trust_domain, input.namespace, input.service_account)?;
    if input.join_token.is_empty() {
        return if require_token {
            Err(CertifyError::TokenRequired)
        } else {
            Ok(asked)
        };
    }
    let claims = tokens.verify(input.join_token, now)?;
    if claims.namespace != input.namespace || claims.service_account != input.service_account {
        return Err(CertifyError::WrongIdentity {
            proven: format!("{}/{}", claims.namespace, claims.service_account),
            asked: format!("{}/{}", input.namespace, input.service_account),
        });
    }
    Ok(asked)
}

/// The CA state shared by the gRPC and HTTP adapters.
#[derive(Debug)]
pub struct CaState {
    trust_domain: String,
    /// Held only for the few microseconds of a signature or a rotation step; never across an
    /// await.
    authority: RwLock<Authority>,
    bundle_tx: watch::Sender<BundleView>,
    tokens: JoinTokens,
    cert_ttl: Duration,
    require_join_token: bool,
    /// Kubernetes mode: set once the API server client exists; from then on it is the proof.
    reviewer: OnceLock<Arc<dyn TokenReviewer>>,
    pub metrics: CaMetrics,
}

fn read(path: &Path) -> Result<String, CaStartError> {
    std::fs::read_to_string(path).map_err(|source| CaStartError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl CaState {
    /// Loads the CA from `config.dir` or generates one; reads or makes the token secret.
    pub fn load(trust_domain: &str, config: &CaConfig) -> Result<Self, CaStartError> {
        let authority = match &config.dir {
            Some(dir) => {
                let root = read(&dir.join("root.pem"))?;
                let issuer = read(&dir.join("issuer.pem"))?;
                let key = read(&dir.join("issuer-key.pem"))?;
                Authority::from_pems(trust_domain, &root, &issuer, &key).map_err(|source| {
                    CaStartError::Load {
                        dir: dir.clone(),
                        source,
                    }
                })?
            }
            None => Authority::generate(trust_domain, SystemTime::now())
                .map_err(CaStartError::Generate)?,
        };
        let secret = match &config.join_token_secret {
            Some(path) => read(path)?.trim().as_bytes().to_vec(),
            None => JoinTokens::random_secret()
                .map_err(|_| CaStartError::Rng)?
                .to_vec(),
        };
        Ok(Self::new(
            authority,
            JoinTokens::new(&secret),
            config.cert_ttl,
            config.require_join_token,
        ))
    }

    pub fn new(
        authority: Authority,
        tokens: JoinTokens,
        cert_ttl: Duration,
        require_join_token: bool,
    ) -> Self {
        let view = BundleView {
            bundle: authority.bundle().clone(),
            issuer_generation: authority.issuer_generation(),
        };
        Self {
            trust_domain: authority.trust_domain().to_string(),
            authority: RwLock::new(authority),
            bundle_tx: watch::channel(view).0,
            tokens,
            cert_ttl,
            require_join_token,
            reviewer: OnceLock::new(),
            metrics: CaMetrics::default(),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Replaces the CA with `authority` (a CA the user plugged in, read at startup in
    /// Kubernetes mode) and publishes its bundle. Meant for startup, before proxies connect;
    /// a later call still works (proxies see the issuer generation move and renew), but the
    /// old root leaves the bundle at once, so it is not a rotation.
    pub fn install_authority(&self, authority: Authority) {
        let mut current = self
            .authority
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut authority = authority;
        authority.set_issuer_generation(current.issuer_generation() + 1);
        let view = BundleView {
            bundle: authority.bundle().clone(),
            issuer_generation: authority.issuer_generation(),
        };
        *current = authority;
        drop(current);
        self.bundle_tx.send_replace(view);
    }

    /// Makes `reviewer` the proof every Certify needs from now on (Kubernetes mode). Only the
    /// first call counts: the proof a control plane asks for never changes while it runs.
    pub fn use_token_reviewer(&self, reviewer: Arc<dyn TokenReviewer>) {
        if self.reviewer.set(reviewer).is_err() {
            tracing::warn!("a token reviewer is already installed; the new one is ignored");
        }
    }

    /// Admits the request (the reviewer's word when there is one, else join tokens), then
    /// signs its CSR. Counted and timed.
    pub async fn certify(
        &self,
        input: &CertifyInput<'_>,
    ) -> Result<(Issued, BundleView), CertifyError> {
        let started = Instant::now();
        let now = SystemTime::now();
        let admitted = match self.reviewer.get() {
            Some(reviewer) => admit_reviewed(&self.trust_domain, input, reviewer.as_ref()).await,
            None => admit(
                &self.trust_domain,
                input,
                &self.tokens,
                self.require_join_token,
                now,
            ),
        };
        let result = admitted.and_then(|id| {
            let authority = self
                .authority
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            Ok(authority.issue(input.csr, &id, self.cert_ttl, now)?)
        });
        self.metrics.observe(result.is_ok(), started.elapsed());
        Ok((result?, self.bundle_rx().borrow().clone()))
    }

    /// A join token for `namespace`/`service_account` (`ttl` `None`: no expiry).
    pub fn join_token(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Option<Duration>,
    ) -> Result<String, CertifyError> {
        SpiffeId::new(&self.trust_domain, namespace, service_account)?;
        Ok(self
            .tokens
            .issue(namespace, service_account, ttl, SystemTime::now()))
    }

    /// A serving certificate for the control plane's own HTTPS (the webhooks), for `names`,
    /// signed by the current issuer and trusted through the bundle's roots.
    pub fn serving_cert(
        &self,
        names: &[String],
        ttl: Duration,
    ) -> Result<trellis_identity::serving::ServingCert, CaError> {
        self.authority
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .issue_serving(names, ttl, SystemTime::now())
    }

    pub fn bundle_rx(&self) -> watch::Receiver<BundleView> {
        self.bundle_tx.subscribe()
    }

    /// When the issuer and the trust anchors expire (the expiry gauges).
    pub fn expiries(&self) -> trellis_identity::ca::CaExpiries {
        self.authority
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .expiries()
    }

    pub fn status(&self) -> CaStatus {
        self.authority
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .status()
    }

    /// One anchor-rotation step (`prepare`, `activate`, `retire`); the new bundle is published
    /// to every proxy's WatchBundle stream.
    pub fn rotate(&self, step: RotationStep) -> Result<CaStatus, CaError> {
        self.rotation_step(step, |authority| match step {
            RotationStep::Prepare => authority.prepare_rotation(SystemTime::now()),
            RotationStep::Activate => authority.activate_rotation(),
            RotationStep::Retire => authority.retire_rotation(),
        })
    }

    /// `prepare` with a CA the user brings (already checked, see [`plugged`]): its root joins
    /// the bundle and its issuer signs from `activate` on. `activate` and `retire` are the
    /// usual [`Self::rotate`] steps.
    pub fn prepare_with(&self, next: Authority) -> Result<CaStatus, CaError> {
        self.rotation_step(RotationStep::Prepare, |authority| {
            authority.prepare_rotation_to(next)
        })
    }

    /// Applies `change` under the lock and publishes the bundle it leaves.
    fn rotation_step(
        &self,
        step: RotationStep,
        change: impl FnOnce(&mut Authority) -> Result<(), CaError>,
    ) -> Result<CaStatus, CaError> {
        let (status, view) = {
            let mut authority = self
                .authority
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            change(&mut authority)?;
            let view = BundleView {
                bundle: authority.bundle().clone(),
                issuer_generation: authority.issuer_generation(),
            };
            (authority.status(), view)
        };
        tracing::info!(step = ?step, anchors = status.anchors, issuer_generation = status.issuer_generation, "trust anchor rotation step");
        self.bundle_tx.send_replace(view);
        Ok(status)
    }
}

/// The steps of an anchor rotation, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationStep {
    Prepare,
    Activate,
    Retire,
}

#[cfg(test)]
mod tests;
