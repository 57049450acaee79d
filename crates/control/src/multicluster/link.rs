//! The link adapter: between the config store and discovery, fetches every linked cluster's
//! exports (`GET <controlPlane>/api/v1/multicluster/exports`) and puts them into the snapshot
//! as `traffic.remote`.
//!
//! Each link is fetched at once when it appears and then every `refreshInterval`; a fetch is
//! bounded by [`FETCH_TIMEOUT`] and a body by [`MAX_BODY`]. A failed fetch (remote down,
//! unreachable, a bad answer) is logged and the link's last good answer stays: a remote
//! control plane restarting must not take its endpoints away, while its east-west gateway may
//! well still serve them. A link removed from the config takes its endpoints with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trellis_config::multicluster::Link;

use super::{Exports, RemoteServices};
use crate::store::ConfigSnapshot;

/// How long one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest exports document read.
const MAX_BODY: usize = 4 << 20;
/// The path served by every control plane's HTTP listener.
pub const EXPORTS_PATH: &str = "/api/v1/multicluster/exports";

/// Why a fetch failed (logged; the last good answer stays).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: not a valid URL")]
    Url { url: String },
    #[error("{url}: timed out after {FETCH_TIMEOUT:?}")]
    Timeout { url: String },
    #[error("{url}: {source}")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url}: answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: reading the body: {message}")]
    Body { url: String, message: String },
    #[error("{url}: not an exports document: {source}")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Fetches one link's exports.
pub async fn fetch(client: &HttpClient, link: &Link) -> Result<Exports, FetchError> {
    let url = format!("{}{EXPORTS_PATH}", link.control_plane);
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| FetchError::Url { url: url.clone() })?;
    let request = async {
        let response = client
            .get(uri)
            .await
            .map_err(|source| FetchError::Request {
                url: url.clone(),
                source,
            })?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status {
                url: url.clone(),
                status,
            });
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| FetchError::Body {
                url: url.clone(),
                message: e.to_string(),
            })?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|source| FetchError::Json {
            url: url.clone(),
            source,
        })
    };
    tokio::time::timeout(FETCH_TIMEOUT, request)
        .await
        .map_err(|_| FetchError::Timeout { url: url.clone() })?
}

/// One link's state: its config, when it is next due and its last good answer.
struct LinkState {
    link: Link,
    due: Instant,
    answer: Option<Exports>,
}

/// Starts the adapter: returns the receiver discovery reads, fed from `upstream` with the
/// linked clusters' exports filled in. Without links a snapshot passes through unchanged.
pub fn spawn(
    mut upstream: watch::Receiver<Arc<ConfigSnapshot>>,
    shutdown: CancellationToken,
) -> watch::Receiver<Arc<ConfigSnapshot>> {
    let first = upstream.borrow_and_update().clone();
    let (tx, rx) = watch::channel(first.clone());
    tokio::spawn(async move {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let mut links: BTreeMap<String, LinkState> = BTreeMap::new();
        let mut current = first;
        loop {
            sync_links(&mut links, &current);
            let now = Instant::now();
            for state in links.values_mut().filter(|s| s.due <= now) {
                state.due = now + state.link.refresh;
                match fetch(&client, &state.link).await {
                    Ok(exports) => {
                        if state.answer.as_ref() != Some(&exports) {
                            tracing::info!(cluster = %state.link.cluster, services = exports.services.len(), "linked cluster's exports changed");
                        }
                        state.answer = Some(exports);
                    }
                    Err(e) => {
                        tracing::warn!(cluster = %state.link.cluster, error = %e, "cannot fetch a linked cluster's exports; keeping the last good answer")
                    }
                }
            }
            let remote = RemoteServices::from_exports(
                links
                    .values()
                    .filter_map(|s| Some((&s.link, s.answer.as_ref()?))),
            );
            let with_remote = with_remote(&current, remote);
            tx.send_if_modified(|published| {
                let changed = !Arc::ptr_eq(published, &with_remote) && **published != *with_remote;
                if changed {
                    *published = with_remote;
                }
                changed
            });
            let next_due = links.values().map(|s| s.due).min();
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = upstream.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    current = upstream.borrow_and_update().clone();
                }
                () = sleep_until(next_due) => {}
            }
        }
    });
    rx
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Follows the snapshot's links: new ones are due at once, changed ones keep nothing of the
/// old remote (it may be another cluster now), removed ones go.
fn sync_links(links: &mut BTreeMap<String, LinkState>, snapshot: &ConfigSnapshot) {
    let wanted = &snapshot.multicluster.links;
    links.retain(|name, state| wanted.get(name) == Some(&state.link));
    for (name, link) in wanted {
        links.entry(name.clone()).or_insert_with(|| LinkState {
            link: link.clone(),
            due: Instant::now(),
            answer: None,
        });
    }
}

/// The snapshot with `remote` as its remote endpoints; the same `Arc` when nothing changes.
fn with_remote(snapshot: &Arc<ConfigSnapshot>, remote: RemoteServices) -> Arc<ConfigSnapshot> {
    if snapshot.traffic.remote == remote {
        return snapshot.clone();
    }
    let mut out = (**snapshot).clone();
    out.traffic.remote = remote;
    Arc::new(out)
}
