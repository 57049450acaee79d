//! The certificate manager: makes the workload's key (it never leaves the process), asks the
//! control plane's CA for a leaf (`trellis.identity.v1.Identity/Certify`) with its join token,
//! installs the configs, and renews at half the leaf's life with jitter. A `WatchBundle`
//! stream brings trust-bundle changes (installed at once with the same leaf) and issuer
//! changes (a renewal at once).
//!
//! Startup is on the proxy's path to ready, so nothing waits that need not: the first key is
//! made while discovery registers, the manager wakes on the Welcome itself (a watch, not a
//! poll), and the CSR goes out on the discovery connection (the CA is served on the same
//! port), so no second TCP and HTTP/2 handshake comes first.
//!
//! When renewal fails the proxy keeps serving with its current leaf until it expires, retrying
//! with backoff, and says so: a warning log per failure, `last_error` on `/ready` and
//! `/config_dump`, and `trellis_identity_cert_expiry_timestamp_seconds` not moving.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use trellis_api::identity::{self as pb, identity_client::IdentityClient};
use trellis_identity::SpiffeId;
use trellis_identity::ca::TrustBundle;
use trellis_identity::tls::{LeafKey, MeshTls};

use super::MeshIdentity;
use crate::discovery::Discovery;

const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(30);
const CERTIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Who to ask and who to be.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// The control plane URL, for messages: requests go on discovery's connection (the
    /// discovery port also serves the CA).
    pub control: String,
    pub namespace: String,
    pub service_account: String,
    pub join_token: Option<String>,
    /// Read for every request (a projected token is rotated by the kubelet) and sent as the
    /// proof in place of `join_token`.
    pub identity_token_file: Option<std::path::PathBuf>,
}

/// The proof to send: the token file's content when there is one, else the join token.
async fn proof(config: &ManagerConfig) -> Result<String, String> {
    match &config.identity_token_file {
        Some(path) => tokio::fs::read_to_string(path)
            .await
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("cannot read --identity-token-file {}: {e}", path.display())),
        None => Ok(config.join_token.clone().unwrap_or_default()),
    }
}

/// When to renew a leaf valid from `issued` to `not_after`: at 40-50% of its life, drawn per
/// leaf so that proxies started together do not renew together. Never earlier than now.
pub fn renew_at(issued: SystemTime, not_after: SystemTime, draw: f64) -> Duration {
    let life = not_after.duration_since(issued).unwrap_or(Duration::ZERO);
    let fraction = 0.4 + 0.1 * draw.clamp(0.0, 1.0);
    life.mul_f64(fraction)
}

/// Starts the manager; it runs until `stop` is cancelled.
pub fn spawn(
    config: ManagerConfig,
    identity: Arc<MeshIdentity>,
    discovery: Discovery,
    stop: CancellationToken,
) {
    tokio::spawn(run(config, identity, discovery, stop));
}

/// The leaf in use and what is needed to rebuild configs when only the bundle changes.
struct Held {
    key: LeafKey,
    chain_pem: String,
    renew_at: Instant,
}

async fn run(
    config: ManagerConfig,
    identity: Arc<MeshIdentity>,
    discovery: Discovery,
    stop: CancellationToken,
) {
    // The key does not depend on the identity: made now, on a blocking thread (the runtime
    // may have only one, and discovery is connecting on it), it is ready when the Welcome
    // comes. A failure here is retried with the Certify that needs the key.
    let spare_key = tokio::spawn(new_key());
    // The trust domain is the control plane's: the Welcome carries the full SPIFFE ID.
    let mut registration_rx = discovery.registration_rx();
    let (id, mut channel): (SpiffeId, Channel) = loop {
        let welcome = tokio::select! {
            () = stop.cancelled() => return,
            welcome = registration_rx.wait_for(Option::is_some) => match welcome {
                Ok(r) => r.clone(),
                // Discovery is gone: the proxy is stopping.
                Err(_) => return,
            },
        };
        let Some(welcome) = welcome else { continue };
        match welcome.identity.parse::<SpiffeId>() {
            Ok(id) => break (id, welcome.channel),
            Err(e) => {
                tracing::warn!(identity = %welcome.identity, error = %e, "the control plane sent an unusable identity; waiting for another Welcome");
                // `wait_for` marked this one seen: wait for the next.
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = registration_rx.changed() => if changed.is_err() { return },
                }
            }
        }
    };
    let mut spare_key = match spare_key.await {
        Ok(Ok(key)) => Some(key),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot make the workload key yet");
            None
        }
        Err(_) => None,
    };
    let mut bundle = TrustBundle::default();
    let mut generation = 0u64;
    let mut held: Option<Held> = None;
    let mut retry = RETRY_MIN;
    let mut next_attempt = Instant::now();
    let mut watch: Option<tonic::Streaming<pb::Bundle>> = None;
    let mut watch_retry_at = Instant::now();

    // Bounded by `stop`: every branch below also watches it.
    loop {
        let due = held
            .as_ref()
            .map_or(next_attempt, |h| h.renew_at.min(next_attempt));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(due) => {
                match certify(channel.clone(), spare_key.take(), &config, &id).await {
                    Ok((key, resp)) => {
                        retry = RETRY_MIN;
                        next_attempt = far_future();
                        if let Some(b) = &resp.bundle {
                            bundle = TrustBundle { roots_pem: b.roots_pem.clone() };
                            generation = b.issuer_generation;
                        }
                        let now = SystemTime::now();
                        let not_after = UNIX_EPOCH
                            + Duration::from_secs(u64::try_from(resp.not_after_unix).unwrap_or(0));
                        let wait = renew_at(now, not_after, rand::rng().random());
                        match MeshTls::new(&resp.certificate_chain_pem, &key, &bundle) {
                            Ok(tls) => {
                                tracing::info!(identity = %tls.id(), renew_in = ?wait, "workload certificate installed");
                                identity.install(tls, |s| {
                                    s.renewals += 1;
                                    s.last_error = None;
                                    s.trust_anchors = bundle.roots_pem.len();
                                    s.issuer_generation = generation;
                                });
                                held = Some(Held {
                                    key,
                                    chain_pem: resp.certificate_chain_pem,
                                    renew_at: Instant::now() + wait,
                                });
                            }
                            Err(e) => failed(&identity, &mut retry, &mut next_attempt, format!("unusable certificate: {e}")),
                        }
                    }
                    Err(e) => failed(&identity, &mut retry, &mut next_attempt, e),
                }
            }
            msg = next_bundle(&mut watch), if watch.is_some() => match msg {
                Some(Ok(b)) => {
                    let new = TrustBundle { roots_pem: b.roots_pem };
                    // A new issuer, or a bundle sharing no root with ours (a control plane
                    // restarted with a freshly generated CA): our leaf no longer chains to
                    // what peers trust, so renew now rather than at half-life.
                    let replaced = !bundle.roots_pem.is_empty()
                        && !new.roots_pem.iter().any(|r| bundle.roots_pem.contains(r));
                    let renew = b.issuer_generation != generation || replaced;
                    generation = b.issuer_generation;
                    if new != bundle {
                        bundle = new;
                        rebuild(&identity, held.as_ref(), &bundle, generation);
                    }
                    if renew {
                        tracing::info!(generation, "the CA changed issuer; renewing now");
                        next_attempt = Instant::now();
                    }
                }
                other => {
                    if let Some(Err(status)) = other {
                        tracing::debug!(%status, "trust bundle stream ended");
                    }
                    watch = None;
                    watch_retry_at = Instant::now() + RETRY_MIN * 4;
                }
            },
            // Discovery reconnected: requests follow it to its new connection, and the bundle
            // stream is opened again there (it brings the current bundle at once), so that
            // nothing holds the old connection open.
            changed = registration_rx.changed() => {
                if changed.is_err() {
                    return; // discovery is gone: the proxy is stopping
                }
                if let Some(r) = &*registration_rx.borrow_and_update() {
                    channel = r.channel.clone();
                }
                if watch.take().is_some() {
                    watch_retry_at = Instant::now();
                }
            }
            // Opened once a leaf is held: the first Certify answer carries the bundle, so
            // startup waits for nothing else, and the stream's first bundle (the same) does
            // not look like an issuer change.
            () = tokio::time::sleep_until(watch_retry_at), if watch.is_none() && held.is_some() => {
                let mut c = IdentityClient::new(channel.clone());
                match tokio::time::timeout(CERTIFY_TIMEOUT, c.watch_bundle(pb::WatchBundleRequest {})).await {
                    Ok(Ok(resp)) => watch = Some(resp.into_inner()),
                    _ => watch_retry_at = Instant::now() + RETRY_MAX.min(Duration::from_secs(2)),
                }
            }
        }
    }
}

async fn next_bundle(
    watch: &mut Option<tonic::Streaming<pb::Bundle>>,
) -> Option<Result<pb::Bundle, tonic::Status>> {
    match watch {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// Rebuilds the configs for a new bundle with the leaf in hand.
fn rebuild(identity: &MeshIdentity, held: Option<&Held>, bundle: &TrustBundle, generation: u64) {
    let Some(held) = held else {
        return;
    };
    match MeshTls::new(&held.chain_pem, &held.key, bundle) {
        Ok(tls) => {
            tracing::info!(anchors = bundle.roots_pem.len(), "trust bundle updated");
            identity.install(tls, |s| {
                s.trust_anchors = bundle.roots_pem.len();
                s.issuer_generation = generation;
            });
        }
        Err(e) => tracing::warn!(error = %e, "refusing a trust bundle; keeping the current one"),
    }
}

fn failed(identity: &MeshIdentity, retry: &mut Duration, next: &mut Instant, error: String) {
    let expires_in = identity.current().map(|t| {
        t.not_after()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    });
    tracing::warn!(error = %error, ?expires_in, retry_in = ?*retry, "cannot get a workload certificate; serving with the current one until it expires");
    identity.with_status(|s| s.last_error = Some(error));
    *next = Instant::now() + *retry;
    *retry = (*retry * 2).min(RETRY_MAX);
}

/// A new ECDSA P-256 key, made on a blocking thread so that the proxy's (possibly only)
/// runtime thread keeps serving meanwhile.
async fn new_key() -> Result<LeafKey, String> {
    let key = tokio::task::spawn_blocking(LeafKey::generate)
        .await
        .map_err(|e| format!("cannot make a key: {e}"))?
        .map_err(|e| format!("cannot make a key: {e}"))?;
    tracing::debug!("workload key made");
    Ok(key)
}

/// One Certify on `channel` with the CSR of `key` (a new key when `None`); the key comes
/// back with the answer.
async fn certify(
    channel: Channel,
    key: Option<LeafKey>,
    config: &ManagerConfig,
    id: &SpiffeId,
) -> Result<(LeafKey, pb::CertifyResponse), String> {
    let key = match key {
        Some(key) => key,
        None => new_key().await?,
    };
    let csr_pem = key.csr_pem(id).map_err(|e| e.to_string())?;
    let request = pb::CertifyRequest {
        namespace: config.namespace.clone(),
        service_account: config.service_account.clone(),
        csr_pem,
        join_token: proof(config).await?,
    };
    tracing::debug!(control = %config.control, identity = %id, "Certify sent");
    let mut client = IdentityClient::new(channel);
    match tokio::time::timeout(CERTIFY_TIMEOUT, client.certify(request)).await {
        Ok(Ok(resp)) => Ok((key, resp.into_inner())),
        Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
        Err(_) => Err("Certify timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_lands_before_half_life() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let end = t0 + Duration::from_secs(100);
        assert_eq!(renew_at(t0, end, 0.0), Duration::from_secs(40));
        assert_eq!(renew_at(t0, end, 1.0), Duration::from_secs(50));
        assert_eq!(renew_at(t0, end, 7.0), Duration::from_secs(50));
        assert_eq!(renew_at(end, t0, 0.5), Duration::ZERO);
    }
}
