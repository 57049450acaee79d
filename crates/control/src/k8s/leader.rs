//! Leader election with a `coordination.k8s.io/v1` Lease, so that with several replicas one
//! writes status. Every replica serves discovery and webhooks; only writes need a leader.
//!
//! [`decide`] is pure (the lease as read, who I am, the time); the loop is the adapter. Updates
//! carry the lease's resourceVersion, so two replicas racing for an expired lease cannot both
//! win: the API server refuses the second write with a conflict.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a lease holds without renewal; renewals come at a third of it.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const LEASE_NAME: &str = "trellis-control";

/// What to do with the lease as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Mine: renew it.
    Renew,
    /// Free or expired: take it (a new holder, a transition).
    Take,
    /// Another replica holds it.
    Follow,
}

pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Action {
    let Some(spec) = spec else {
        return Action::Take;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Action::Renew;
    }
    if holder.is_empty() {
        return Action::Take;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match &spec.renew_time {
        Some(MicroTime(renewed)) if *renewed + SignedDuration::from_secs(duration) > now => {
            Action::Follow
        }
        _ => Action::Take,
    }
}

fn spec(me: &str, now: Timestamp, previous: Option<&LeaseSpec>, release: bool) -> LeaseSpec {
    let taking = previous.is_none_or(|p| p.holder_identity.as_deref() != Some(me));
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: (!release).then(|| me.to_string()),
        lease_duration_seconds: Some(i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(15)),
        acquire_time: if taking {
            Some(MicroTime(now))
        } else {
            previous.and_then(|p| p.acquire_time.clone())
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if taking && previous.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..LeaseSpec::default()
    }
}

/// Runs the election until `shutdown` (then releases the lease if held); `leader_tx` says
/// whether this replica leads.
pub async fn run(
    client: Client,
    namespace: String,
    me: String,
    leader_tx: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let mut logged_error = false;
    loop {
        match step(&api, &me).await {
            Ok(leading) => {
                logged_error = false;
                if leader_tx.send_replace(leading) != leading {
                    tracing::info!(%me, leading, "leadership changed");
                }
            }
            Err(err) => {
                // Not knowing is not leading: another replica may hold it.
                leader_tx.send_replace(false);
                if !logged_error {
                    tracing::warn!(%namespace, error = %err, "leader election failed; retrying");
                    logged_error = true;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(LEASE_DURATION / 3) => {}
        }
    }
    if *leader_tx.borrow() {
        // Hand over at once rather than make the next leader wait out the lease.
        if let Ok(mut lease) = api.get(LEASE_NAME).await {
            lease.spec = Some(spec(&me, Timestamp::now(), lease.spec.as_ref(), true));
            let _ = api
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await;
        }
    }
}

async fn step(api: &Api<Lease>, me: &str) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(LEASE_NAME).await?;
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                ..ObjectMeta::default()
            },
            spec: Some(spec(me, now, None, false)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        };
    };
    match decide(lease.spec.as_ref(), me, now) {
        Action::Follow => Ok(false),
        Action::Renew | Action::Take => {
            lease.spec = Some(spec(me, now, lease.spec.as_ref(), false));
            // `replace` sends the resourceVersion read above: a conflict means someone else won.
            match api
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(err) => Err(err),
            }
        }
    }
}

/// This process's identity in the lease: the pod name when set, else host and pid.
pub fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "trellis-control".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn held(by: &str, renewed_secs_ago: i64) -> LeaseSpec {
        let now = Timestamp::now();
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "a", now), Action::Take);
        assert_eq!(decide(Some(&held("a", 1)), "a", now), Action::Renew);
        assert_eq!(decide(Some(&held("b", 1)), "a", now), Action::Follow);
        assert_eq!(
            decide(Some(&held("b", 16)), "a", now),
            Action::Take,
            "expired"
        );
        assert_eq!(
            decide(Some(&held("", 1)), "a", now),
            Action::Take,
            "released"
        );
    }

    #[test]
    fn transitions_count_new_holders_only() {
        let now = Timestamp::now();
        let first = spec("a", now, None, false);
        assert_eq!(first.lease_transitions, Some(0));
        let renewed = spec("a", now, Some(&first), false);
        assert_eq!(renewed.lease_transitions, Some(0));
        assert_eq!(renewed.acquire_time, first.acquire_time);
        let taken = spec("b", now, Some(&renewed), false);
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(spec("b", now, Some(&taken), true).holder_identity, None);
    }
}
