//! Key sets fetched from a `jwksUri`: cached, refreshed in the background, and re-fetched
//! (rate-limited) when a token names a key the cache does not have. A failed fetch keeps the
//! last good keys; until a first fetch succeeds, tokens of that issuer are refused with "Jwks
//! remote fetch is failed".
//!
//! `https://` is verified against the system's roots (`trellis_identity::public_tls`, which
//! honours `SSL_CERT_FILE` / `SSL_CERT_DIR`) and the URI's host name.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use trellis_identity::public_tls::PublicTls;

use super::keys::KeySet;

/// How often a cached key set is fetched again. Istio's default (`PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`)
/// is 20 minutes: often enough to follow a planned rotation, rare enough to be no load.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(20 * 60);

/// Retry period while no fetch has succeeded yet.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// At most one fetch per URI this often on demand (unknown `kid`, no keys yet), so tokens
/// with made-up key ids cannot turn the proxy into a load generator for the issuer.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// Bound on one fetch (connect, request and body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on a JWKS document; real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("jwksUri must be http:// or https://")]
    Scheme,
    #[error("no roots to verify https:// with: {0}")]
    Roots(String),
    #[error(transparent)]
    Tls(#[from] trellis_identity::public_tls::PublicTlsError),
    #[error("jwksUri has no host")]
    NoHost,
    #[error("timed out after {FETCH_TIMEOUT:?}")]
    Timeout,
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] http::Error),
    #[error("status {0}")]
    Status(StatusCode),
    #[error("body: {0}")]
    Body(String),
    #[error(transparent)]
    Jwks(#[from] super::keys::JwksError),
}

/// One `jwksUri` and its cached keys.
#[derive(Debug)]
pub struct RemoteJwks {
    uri: String,
    keys: ArcSwapOption<KeySet>,
    /// Serializes fetches: concurrent requests needing fresh keys share one.
    fetching: tokio::sync::Mutex<()>,
    last_attempt: Mutex<Option<Instant>>,
    /// Why the last fetch failed; cleared by a success. For `/config_dump`.
    last_error: Mutex<Option<String>>,
}

impl RemoteJwks {
    /// A cache for `uri`, with its first fetch and the periodic refresh started in the
    /// background. The refresh task ends once the cache is dropped.
    pub fn spawn(uri: String) -> Arc<Self> {
        let cache = Arc::new(Self {
            uri,
            keys: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(()),
            last_attempt: Mutex::new(None),
            last_error: Mutex::new(None),
        });
        tokio::spawn(refresh_loop(Arc::downgrade(&cache)));
        cache
    }

    /// The keys as cached, if any fetch has succeeded.
    pub fn cached(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// What `/config_dump` shows of this cache.
    pub fn dump(&self) -> serde_json::Value {
        serde_json::json!({
            "uri": self.uri,
            "keys": self.cached().map(|k| k.keys.len()),
            "last_error": *self.last_error.lock().unwrap_or_else(|p| p.into_inner()),
        })
    }

    /// Fetches now unless a fetch was attempted within [`MIN_REFETCH_INTERVAL`] (then the
    /// keys are as fresh as they will get). Returns the keys after it.
    pub async fn refetch(&self) -> Option<Arc<KeySet>> {
        self.fetch().await;
        self.cached()
    }

    /// One fetch, unless another happened within [`MIN_REFETCH_INTERVAL`] (the background
    /// refresh is 20 minutes apart, so the limit only merges it with on-demand fetches).
    async fn fetch(&self) {
        let _one_at_a_time = self.fetching.lock().await;
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < MIN_REFETCH_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let result = match tokio::time::timeout(FETCH_TIMEOUT, fetch(&self.uri)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout),
        };
        let error = match result {
            Ok(keys) => {
                if self.keys.load().as_deref() != Some(&keys) {
                    tracing::info!(uri = %self.uri, keys = keys.keys.len(), "fetched JWKS");
                }
                self.keys.store(Some(Arc::new(keys)));
                None
            }
            Err(e) => {
                tracing::warn!(uri = %self.uri, error = %e, "JWKS fetch failed; keeping the last good keys");
                Some(e.to_string())
            }
        };
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }
}

async fn refresh_loop(cache: Weak<RemoteJwks>) {
    loop {
        let wait = {
            let Some(cache) = cache.upgrade() else { return };
            cache.fetch().await;
            if cache.cached().is_some() {
                REFRESH_INTERVAL
            } else {
                RETRY_INTERVAL
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The client config for `https://` key sets, loaded once (reading the system's roots is
/// file I/O, so it runs on the blocking pool).
static PUBLIC_TLS: tokio::sync::OnceCell<Result<PublicTls, String>> =
    tokio::sync::OnceCell::const_new();

async fn public_tls() -> Result<&'static PublicTls, FetchError> {
    let loaded = PUBLIC_TLS
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| PublicTls::system().map_err(|e| e.to_string()))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        })
        .await;
    loaded.as_ref().map_err(|e| FetchError::Roots(e.clone()))
}

/// One GET over HTTP/1.1 on a fresh connection: a fetch every few minutes needs no pool.
async fn fetch(uri: &str) -> Result<KeySet, FetchError> {
    let parsed: Uri = uri.parse().map_err(|_| FetchError::NoHost)?;
    let tls = match parsed.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(FetchError::Scheme),
    };
    let host = parsed.host().ok_or(FetchError::NoHost)?;
    let bare_host = host.trim_matches(['[', ']']);
    let port = parsed.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let stream = TcpStream::connect((bare_host, port))
        .await
        .map_err(FetchError::Connect)?;
    if tls {
        let stream = public_tls().await?.connect(bare_host, stream).await?;
        get(&parsed, host, stream).await
    } else {
        get(&parsed, host, stream).await
    }
}

async fn get<IO>(parsed: &Uri, host: &str, io: IO) -> Result<KeySet, FetchError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "JWKS connection ended with an error");
        }
    });
    let path = parsed.path_and_query().map_or("/", |p| p.as_str());
    let authority = parsed.authority().map_or(host, |a| a.as_str());
    let req = Request::get(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        return Err(FetchError::Status(resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| FetchError::Body(e.to_string()))?
        .to_bytes();
    Ok(KeySet::parse(&body)?)
}
