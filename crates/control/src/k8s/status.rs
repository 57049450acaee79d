//! Status conditions on mesh config objects: `Accepted` (True, or False with the reason and the
//! config crate's message), written through the status subresource.
//!
//! [`desired`] is pure: the config snapshot's rows and the objects' generations in, one
//! condition per object out. The writer task patches only what changed since it last wrote,
//! so a steady mesh makes no API calls.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::kinds::ConfigKind;
use crate::store::{ConfigSnapshot, Status};

/// What the writer needs to address an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub kind: &'static ConfigKind,
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
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

/// The objects (keyed as in [`super::objects::object_key`]) and their condition, for every
/// mesh config object in `snapshot` (Services get none: they are not the mesh's).
pub fn desired(
    snapshot: &ConfigSnapshot,
    objects: &BTreeMap<String, ObjectMeta>,
) -> BTreeMap<String, Accepted> {
    let mut out = BTreeMap::new();
    for row in &snapshot.resources {
        let Some(meta) = objects.get(&row.file) else {
            continue;
        };
        if meta.kind.builtin {
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
        out.insert(
            row.file.clone(),
            Accepted {
                accepted,
                reason,
                message,
                generation: meta.generation,
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
    mut leader_rx: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let mut written: BTreeMap<String, Accepted> = BTreeMap::new();
    loop {
        if *leader_rx.borrow_and_update() {
            let (snapshot, objects) = rx.borrow_and_update().clone();
            let want = desired(&snapshot, &objects);
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
                    // Deleted meanwhile, or no status subresource on a CRD the user installed:
                    // tried again on the next snapshot.
                    Err(err) => tracing::debug!(object = %key, error = %err, "cannot write status"),
                }
            }
        } else {
            written.clear();
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
            changed = leader_rx.changed() => if changed.is_err() { return },
        }
    }
}

async fn write(
    client: &Client,
    meta: &ObjectMeta,
    condition: &Accepted,
) -> Result<(), kube::Error> {
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
    if let Some(generation) = condition.generation {
        cond["observedGeneration"] = json!(generation);
    }
    let patch = json!({"status": {"conditions": [cond]}});
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
            };
            objects.insert(o.key(), meta);
        }
        let want = desired(&index.snapshot(), &objects);
        let good = &want["VirtualService shop/good"];
        assert!(good.accepted);
        assert_eq!(good.generation, Some(3));
        let bad = &want["VirtualService shop/bad"];
        assert!(!bad.accepted);
        assert_eq!(bad.reason, "Invalid");
        assert!(
            bad.message
                .starts_with("VirtualService shop/bad: spec.http[0]"),
            "{}",
            bad.message
        );
    }
}
