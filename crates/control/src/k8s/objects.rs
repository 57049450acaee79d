//! The pure index of config objects read from the API server: each object is one "file" of the
//! same [`ConfigIndex`] local mode uses, so translation, precedence and last-good behaviour are
//! the same in both modes.
//!
//! Watch events map onto it one to one: apply, delete, and a restart (re-list after a 410 Gone
//! or a reconnect) that replaces all objects of one kind at once, so a resync never shows a
//! moment without them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use trellis_config::parse_documents;

use crate::store::{ConfigIndex, ConfigSnapshot};

/// `kind` + `namespace/name`: the object's "file" name in the index, also used in messages.
pub fn object_key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind} {namespace}/{name}")
}

/// Config objects by key, and which keys each kind holds (for restarts).
#[derive(Debug, Default)]
pub struct ObjectIndex {
    index: ConfigIndex,
    by_kind: BTreeMap<String, BTreeSet<String>>,
}

/// An object as the watcher delivers it: `apiVersion`/`kind` set (list items lack them).
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub json: Value,
}

impl Object {
    /// From a dynamic object's JSON; `api_version`/`kind` are filled in when absent. Returns
    /// `None` for an object without a name (the API server never sends one).
    pub fn from_json(mut json: Value, api_version: &str, kind: &str) -> Option<Self> {
        let map = json.as_object_mut()?;
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(api_version.into()));
        map.entry("kind")
            .or_insert_with(|| Value::String(kind.into()));
        // managedFields is large and of no use to translation.
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
        if kind == "Service" {
            select_endpoint_slices(&mut json);
        }
        let meta = &json["metadata"];
        let name = meta["name"].as_str()?.to_string();
        let namespace = meta["namespace"].as_str().unwrap_or("default").to_string();
        Some(Self {
            kind: kind.to_string(),
            namespace,
            name,
            json,
        })
    }

    pub fn key(&self) -> String {
        object_key(&self.kind, &self.namespace, &self.name)
    }
}

/// A Service without a selector takes its endpoints from EndpointSlices someone else writes:
/// give it a selector on the label the slices' workloads carry (`slices::SERVICE_LABEL`), so
/// compile selects them as it selects pods. ExternalName Services have no endpoints.
fn select_endpoint_slices(service: &mut Value) {
    let Some(name) = service["metadata"]["name"].as_str().map(str::to_string) else {
        return;
    };
    let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let has_selector = spec
        .get("selector")
        .and_then(Value::as_object)
        .is_some_and(|s| !s.is_empty());
    if has_selector || spec.get("type").and_then(Value::as_str) == Some("ExternalName") {
        return;
    }
    spec.insert(
        "selector".into(),
        serde_json::json!({ super::slices::SERVICE_LABEL: name }),
    );
}

impl ObjectIndex {
    pub fn apply(&mut self, object: &Object) {
        let key = object.key();
        // JSON is YAML: the same parser reads what the API server sends.
        let bytes = serde_json::to_vec(&object.json).unwrap_or_default();
        self.index.apply(&key, parse_documents(&key, &bytes));
        self.by_kind
            .entry(object.kind.clone())
            .or_default()
            .insert(key);
    }

    pub fn delete(&mut self, kind: &str, namespace: &str, name: &str) {
        let key = object_key(kind, namespace, name);
        self.index.remove(&key);
        if let Some(keys) = self.by_kind.get_mut(kind) {
            keys.remove(&key);
        }
    }

    /// Replaces every object of `kind` with `objects` (a watch restart's full list).
    pub fn reset(&mut self, kind: &str, objects: &[Object]) {
        let fresh: BTreeSet<String> = objects.iter().map(Object::key).collect();
        let old = self.by_kind.remove(kind).unwrap_or_default();
        for gone in old.difference(&fresh) {
            self.index.remove(gone);
        }
        for object in objects {
            self.apply(object);
        }
        self.by_kind.entry(kind.to_string()).or_default();
    }

    pub fn snapshot(&self) -> ConfigSnapshot {
        self.index.snapshot()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;
    use trellis_model::ServiceKey;

    use super::*;
    use crate::store::Status;

    fn service(name: &str, port: u16) -> Object {
        // As in a list response: no apiVersion/kind on items.
        let json = json!({
            "metadata": {"name": name, "namespace": "shop", "managedFields": [{}]},
            "spec": {"selector": {"app": name}, "ports": [{"port": port}], "clusterIP": "10.96.0.7"},
            "status": {"loadBalancer": {}},
        });
        Object::from_json(json, "v1", "Service").unwrap()
    }

    #[test]
    fn a_service_without_a_selector_selects_its_endpoint_slices() {
        let plain = json!({"metadata": {"name": "db", "namespace": "shop"}, "spec": {"ports": [{"port": 5432}]}});
        let o = Object::from_json(plain, "v1", "Service").unwrap();
        assert_eq!(
            o.json["spec"]["selector"],
            json!({"trellis.io/endpoint-slice-service": "db"})
        );
        assert_eq!(
            service("reviews", 9080).json["spec"]["selector"],
            json!({"app": "reviews"}),
            "a selector of its own is kept"
        );
        let external = json!({"metadata": {"name": "x", "namespace": "shop"}, "spec": {"type": "ExternalName", "externalName": "example.org"}});
        let o = Object::from_json(external, "v1", "Service").unwrap();
        assert!(o.json["spec"].get("selector").is_none());
    }

    #[test]
    fn apply_delete_and_reset_without_a_gap() {
        let mut index = ObjectIndex::default();
        index.apply(&service("reviews", 9080));
        index.apply(&service("ratings", 9080));
        let snap = index.snapshot();
        assert_eq!(snap.services.len(), 2);
        assert!(
            snap.services
                .contains_key(&ServiceKey::new("shop", "reviews"))
        );
        index.delete("Service", "shop", "ratings");
        assert_eq!(index.snapshot().services.len(), 1);
        // A restart lists reviews (changed) and details: ratings stays gone, reviews is updated.
        index.reset(
            "Service",
            &[service("reviews", 9090), service("details", 9080)],
        );
        let snap = index.snapshot();
        let keys: Vec<_> = snap.services.keys().map(ToString::to_string).collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        let reviews = &snap.services[&ServiceKey::new("shop", "reviews")];
        assert_eq!(reviews.ports[0].port, 9090);
        index.reset("Service", &[]);
        assert!(index.snapshot().services.is_empty());
    }

    #[test]
    fn invalid_objects_are_reported_with_the_config_message() {
        let mut index = ObjectIndex::default();
        let vs = json!({
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "VirtualService",
            "metadata": {"name": "bad", "namespace": "shop"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "port": {"number": 0}}}]}]},
        });
        index.apply(
            &Object::from_json(vs, "networking.istio.io/v1beta1", "VirtualService").unwrap(),
        );
        let snap = index.snapshot();
        let row = &snap.resources[0];
        assert_eq!(row.status, Status::Invalid);
        let message = row.message.as_deref().unwrap();
        assert!(
            message.starts_with("VirtualService shop/bad: VirtualService shop/bad: "),
            "{message}"
        );
    }
}
