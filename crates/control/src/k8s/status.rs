//! Status conditions on mesh config objects, written through the status subresource:
//! `Accepted` (True, or False with the reason and the config crate's message) and `Programmed`
//! (how many of the connected proxies it concerns have applied the object's current
//! generation, e.g. `programmed on 3/3 proxies`; True once all have, or when it concerns
//! none: `programmed: no proxy concerned`), so that
//! `kubectl wait --for=condition=Programmed` works.
//!
//! [`desired`] is pure: the config snapshot's rows, the objects' generations and the ACK counts
//! ([`super::programmed`]) in, the conditions per object out. The writer task patches only what
//! changed since it last wrote, so a steady mesh makes no API calls.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::kinds::ConfigKind;
use super::programmed::{Revisions, Synced};
use crate::store::{ConfigSnapshot, Status};

/// How long a failed status write waits before it is tried again without a new snapshot.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// What the writer needs to address an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub kind: &'static ConfigKind,
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    /// Which proxies it concerns (the `Programmed` count's denominator).
    pub concern: super::concern::Concern,
}

/// The snapshots and what the status writer needs to address each object.
pub type StatusInput = (Arc<ConfigSnapshot>, Arc<BTreeMap<String, ObjectMeta>>);

/// The `Accepted` condition of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub accepted: bool,
    pub reason: &'static str,
    pub message: String,
    pub generation: Option<i64>,
}

/// The `Programmed` condition of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Programmed {
    pub programmed: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Both conditions of one object, written together (a merge patch replaces the list).
#[derive(Clone, Debug, PartialEq)]
pub struct Conditions {
    pub accepted: Accepted,
    pub programmed: Programmed,
    /// Gateway API status fields written beside them (`listeners`, `parents`):
    /// `compile::gateway::status`.
    pub gateway_api: Option<serde_json::Value>,
}

/// `Programmed` from `Accepted` and (proxies that applied it, proxies it concerns).
fn programmed(accepted: &Accepted, (done, total): (usize, usize)) -> Programmed {
    match accepted.reason {
        // Not in force (or nothing in it for the mesh): nothing of this generation to apply.
        "Invalid" | "Conflicted" => Programmed {
            programmed: false,
            reason: accepted.reason,
            message: format!("not programmed: {}", accepted.reason.to_lowercase()),
        },
        "Ignored" => Programmed {
            programmed: true,
            reason: "Ignored",
            message: "nothing to program".into(),
        },
        // Nothing to wait for: `kubectl wait --for=condition=Programmed` returns, as for an
        // object every concerned proxy has.
        _ if total == 0 => Programmed {
            programmed: true,
            reason: "Programmed",
            message: "programmed: no proxy concerned".into(),
        },
        _ => Programmed {
            programmed: done == total,
            reason: if done == total {
                "Programmed"
            } else {
                "Pending"
            },
            message: format!("programmed on {done}/{total} proxies"),
        },
    }
}

/// How the Gateway API status report names `meta` (`Kind namespace/name`, the resource's own
/// reference: the kind without its group), for the Gateway API's kinds only: the report is
/// about them alone, and an Istio `Gateway` of the same namespace/name is not its object.
fn gateway_api_key(meta: &ObjectMeta) -> Option<String> {
    (meta.kind.group == super::kinds::GATEWAY_API_GROUP)
        .then(|| format!("{} {}/{}", meta.kind.kind, meta.namespace, meta.name))
}

/// The objects (keyed as in [`super::objects::object_key`]) and their conditions, for every
/// mesh config object in `snapshot` (Services get none: they are not the mesh's). `count`
/// gives, per object key, (proxies that applied it, connected proxies it concerns).
pub fn desired(
    snapshot: &ConfigSnapshot,
    objects: &BTreeMap<String, ObjectMeta>,
    count: impl Fn(&str) -> (usize, usize),
) -> BTreeMap<String, Conditions> {
    let mut out = BTreeMap::new();
    let mut gateway_api =
        crate::compile::gateway::status::report(&snapshot.gateways, &snapshot.services);
    for row in &snapshot.resources {
        let Some(meta) = objects.get(&row.file) else {
            continue;
        };
        let report_key = gateway_api_key(meta);
        // A Gateway of another controller's class is that controller's to report on.
        if meta.kind.builtin
            || report_key
                .as_ref()
                .is_some_and(|k| gateway_api.foreign.contains(k))
        {
            continue;
        }
        let (accepted, reason) = match row.status {
            Status::Accepted => (true, "Accepted"),
            Status::Ignored => (true, "Ignored"),
            Status::Conflicted => (false, "Conflicted"),
            Status::Invalid => (false, "Invalid"),
        };
        // The message names the object already; drop the index's "file" prefix (the key).
        let message = row
            .message
            .as_deref()
            .map(|m| {
                m.strip_prefix(&format!("{}: ", row.file))
                    .unwrap_or(m)
                    .to_string()
            })
            .unwrap_or_default();
        let accepted = Accepted {
            accepted,
            reason,
            message,
            generation: meta.generation,
        };
        let programmed = programmed(&accepted, count(&row.file));
        out.insert(
            row.file.clone(),
            Conditions {
                accepted,
                programmed,
                gateway_api: report_key.and_then(|k| gateway_api.fields.remove(&k)),
            },
        );
    }
    out
}

/// Writes conditions until `shutdown`, on every new snapshot, while `leader_rx` says this
/// replica leads (a new leader rewrites everything: it cannot know what the last one wrote).
pub async fn run(
    client: Client,
    mut rx: watch::Receiver<StatusInput>,
    mut synced_rx: watch::Receiver<Synced>,
    mut leader_rx: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let mut written: BTreeMap<String, Conditions> = BTreeMap::new();
    let mut revisions = Revisions::default();
    loop {
        // A failed write is retried after a pause even when nothing else changes: once every
        // proxy has ACKed, no new snapshot or ACK may come to carry the retry.
        let mut retry = false;
        // Every snapshot is numbered, led or not: a replica that becomes leader counts from
        // what it has seen.
        let (snapshot, objects) = rx.borrow_and_update().clone();
        revisions.observe(snapshot.revision, &objects);
        if *leader_rx.borrow_and_update() {
            let synced = synced_rx.borrow_and_update().clone();
            let want = desired(&snapshot, &objects, |key| {
                revisions.count(key, &synced, |proxy| {
                    super::programmed::concerned(&objects, key, proxy)
                })
            });
            written.retain(|key, _| want.contains_key(key));
            for (key, condition) in want {
                if written.get(&key) == Some(&condition) {
                    continue;
                }
                let Some(meta) = objects.get(&key) else {
                    continue;
                };
                match write(&client, meta, &condition).await {
                    Ok(()) => {
                        written.insert(key, condition);
                    }
                    // Deleted meanwhile, an API server too busy to answer, or no status
                    // subresource on a CRD the user installed: tried again on the next
                    // snapshot or after RETRY_AFTER, whichever comes first.
                    Err(err) => {
                        retry = true;
                        tracing::debug!(object = %key, error = %err, "cannot write status");
                    }
                }
            }
        } else {
            written.clear();
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
            changed = synced_rx.changed() => if changed.is_err() { return },
            changed = leader_rx.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RETRY_AFTER), if retry => {}
        }
    }
}

async fn write(
    client: &Client,
    meta: &ObjectMeta,
    conditions: &Conditions,
) -> Result<(), kube::Error> {
    let condition = &conditions.accepted;
    let kind = meta.kind;
    let gvk = GroupVersionKind::gvk(kind.group, kind.version, kind.kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, kind.plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &meta.namespace, &resource);
    let now = serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).unwrap_or_default();
    let mut cond = json!({
        "type": "Accepted",
        "status": if condition.accepted { "True" } else { "False" },
        "reason": condition.reason,
        "message": condition.message,
        "lastTransitionTime": now,
    });
    let p = &conditions.programmed;
    let mut programmed = json!({
        "type": "Programmed",
        "status": if p.programmed { "True" } else { "False" },
        "reason": p.reason,
        "message": p.message,
        "lastTransitionTime": now,
    });
    if let Some(generation) = condition.generation {
        cond["observedGeneration"] = json!(generation);
        programmed["observedGeneration"] = json!(generation);
    }
    let mut status = json!({"conditions": [cond, programmed]});
    if let Some(serde_json::Value::Object(fields)) = &conditions.gateway_api {
        for (k, v) in fields {
            let mut v = v.clone();
            crate::compile::gateway::status::stamp(&mut v, &now, condition.generation);
            status[k] = v;
        }
    }
    let patch = json!({ "status": status });
    api.patch_status(&meta.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;
    use crate::k8s::kinds::CONFIG_KINDS;
    use crate::k8s::objects::{Object, ObjectIndex};

    fn vs(name: &str, port: u16) -> Object {
        let json = json!({
            "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "shop", "generation": 3},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "port": {"number": port}}}]}]},
        });
        Object::from_json(json, "networking.istio.io/v1beta1", "VirtualService").unwrap()
    }

    #[test]
    fn accepted_and_invalid_with_the_config_message() {
        let vs_kind = CONFIG_KINDS
            .iter()
            .find(|k| k.kind == "VirtualService")
            .unwrap();
        let mut index = ObjectIndex::default();
        let mut objects = BTreeMap::new();
        for o in [vs("good", 9080), vs("bad", 0)] {
            index.apply(&o);
            let meta = ObjectMeta {
                kind: vs_kind,
                namespace: o.namespace.clone(),
                name: o.name.clone(),
                generation: Some(3),
                concern: crate::k8s::concern::Concern::All,
            };
            objects.insert(o.key(), meta);
        }
        let want = desired(&index.snapshot(), &objects, |_| (2, 3));
        let good = &want["VirtualService shop/good"];
        assert!(good.accepted.accepted);
        assert_eq!(good.accepted.generation, Some(3));
        assert_eq!(
            good.programmed,
            Programmed {
                programmed: false,
                reason: "Pending",
                message: "programmed on 2/3 proxies".into()
            }
        );
        let none = desired(&index.snapshot(), &objects, |_| (0, 0));
        assert_eq!(
            none["VirtualService shop/good"].programmed,
            Programmed {
                programmed: true,
                reason: "Programmed",
                message: "programmed: no proxy concerned".into()
            },
            "nothing to wait for"
        );
        let all = desired(&index.snapshot(), &objects, |_| (3, 3));
        assert!(all["VirtualService shop/good"].programmed.programmed);
        assert_eq!(
            all["VirtualService shop/bad"].programmed.reason, "Invalid",
            "an invalid generation is never programmed"
        );
        let bad = &want["VirtualService shop/bad"].accepted;
        assert!(!bad.accepted);
        assert_eq!(bad.reason, "Invalid");
        assert!(
            bad.message
                .starts_with("VirtualService shop/bad: spec.http[0]"),
            "{}",
            bad.message
        );
    }

    #[test]
    fn an_istio_gateway_and_a_gateway_api_gateway_of_one_name_each_get_their_own() {
        use crate::k8s::kinds::{GATEWAY_API_GROUP, find};
        let istio = |name: &str, protocol: &str| {
            let json = json!({
                "metadata": {"name": name, "namespace": "shop", "generation": 1},
                "spec": {"selector": {"istio": "ingressgateway"},
                         "servers": [{"port": {"number": 80, "name": "http", "protocol": protocol}, "hosts": ["*"]}]},
            });
            Object::from_json(json, "networking.istio.io/v1beta1", "Gateway").unwrap()
        };
        let api = json!({
            "metadata": {"name": "web", "namespace": "shop", "generation": 1},
            "spec": {"gatewayClassName": "trellis", "listeners": [{"name": "http", "port": 8080, "protocol": "HTTP"}]},
        });
        let api = Object::from_json(api, "gateway.networking.k8s.io/v1", "Gateway").unwrap();
        let mut index = ObjectIndex::default();
        let mut objects = BTreeMap::new();
        for (o, group) in [
            (istio("web", "HTTP"), "networking.istio.io"),
            (istio("bad", "SCTP"), "networking.istio.io"),
            (api, GATEWAY_API_GROUP),
        ] {
            index.apply(&o);
            let meta = ObjectMeta {
                kind: find(group, "Gateway").unwrap(),
                namespace: o.namespace.clone(),
                name: o.name.clone(),
                generation: Some(1),
                concern: crate::k8s::concern::Concern::All,
            };
            objects.insert(o.key(), meta);
        }
        let want = desired(&index.snapshot(), &objects, |_| (0, 0));
        let istio_web = &want["Gateway.networking.istio.io shop/web"];
        assert!(istio_web.accepted.accepted, "{istio_web:?}");
        assert!(istio_web.programmed.programmed);
        assert_eq!(
            istio_web.gateway_api, None,
            "the Gateway API's listener status is not the Istio Gateway's"
        );
        let api_web = &want["Gateway.gateway.networking.k8s.io shop/web"];
        assert!(api_web.accepted.accepted, "{api_web:?}");
        let listeners = &api_web.gateway_api.as_ref().unwrap()["listeners"];
        assert_eq!(listeners[0]["name"], "http", "{listeners}");
        // The message names the object as the user wrote it; the key's prefix is dropped.
        let bad = &want["Gateway.networking.istio.io shop/bad"].accepted;
        assert_eq!(bad.reason, "Invalid");
        assert!(
            bad.message.starts_with("Gateway shop/bad: spec.servers[0]"),
            "{}",
            bad.message
        );
    }
}
