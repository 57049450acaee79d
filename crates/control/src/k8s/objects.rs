//! The pure index of config objects read from the API server: each object is one "file" of the
//! same [`ConfigIndex`] local mode uses, so translation, precedence and last-good behaviour are
//! the same in both modes.
//!
//! Watch events map onto it one to one: apply, delete, and a restart (re-list after a 410 Gone
//! or a reconnect) that replaces all objects of one kind at once, so a resync never shows a
//! moment without them.
//!
//! Keys are `Kind namespace/name`, the kind qualified with its API group where two watched
//! kinds share a name ([`super::kinds::key_kind`]: Istio's and the Gateway API's `Gateway`), so
//! every object has a key of its own and messages keep the short form everywhere else.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use trellis_config::parse_documents;

use super::kinds::{ConfigKind, key_kind};
use crate::store::{ConfigIndex, ConfigSnapshot};

/// `kind` (of API `group`) + `namespace/name`: the object's "file" name in the index, also
/// used in messages: `VirtualService shop/reviews`, `Gateway.networking.istio.io shop/web`.
pub fn object_key(group: &str, kind: &str, namespace: &str, name: &str) -> String {
    format!("{} {namespace}/{name}", key_kind(group, kind))
}

/// The API group of an `apiVersion` (`""` for the core `v1`).
fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// Config objects by key, and which keys each kind holds (for restarts), by (group, kind).
#[derive(Debug, Default)]
pub struct ObjectIndex {
    index: ConfigIndex,
    by_kind: BTreeMap<(String, String), BTreeSet<String>>,
}

/// An object as the watcher delivers it: `apiVersion`/`kind` set (list items lack them).
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// The API group the object was read as (`""`: core).
    pub group: String,
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
            group: group_of(api_version).to_string(),
            kind: kind.to_string(),
            namespace,
            name,
            json,
        })
    }

    pub fn key(&self) -> String {
        object_key(&self.group, &self.kind, &self.namespace, &self.name)
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

/// The namespace in a key made by [`object_key`] (Kubernetes names hold no space or slash).
fn namespace_of_key(key: &str) -> Option<&str> {
    let (_, namespaced) = key.split_once(' ')?;
    Some(namespaced.split_once('/')?.0)
}

fn by_kind_key(kind: &ConfigKind) -> (String, String) {
    (kind.group.to_string(), kind.kind.to_string())
}

impl ObjectIndex {
    pub fn apply(&mut self, object: &Object) {
        let key = object.key();
        // JSON is YAML: the same parser reads what the API server sends.
        let bytes = serde_json::to_vec(&object.json).unwrap_or_default();
        self.index.apply(&key, parse_documents(&key, &bytes));
        self.by_kind
            .entry((object.group.clone(), object.kind.clone()))
            .or_default()
            .insert(key);
    }

    pub fn delete(&mut self, kind: &ConfigKind, namespace: &str, name: &str) {
        let key = kind.key(namespace, name);
        self.index.remove(&key);
        if let Some(keys) = self.by_kind.get_mut(&by_kind_key(kind)) {
            keys.remove(&key);
        }
    }

    /// Replaces every object of `kind` (only those in `namespace`, for a watch of one
    /// namespace) with `objects` (a watch restart's full list).
    pub fn reset(&mut self, kind: &ConfigKind, namespace: Option<&str>, objects: &[Object]) {
        let fresh: BTreeSet<String> = objects.iter().map(Object::key).collect();
        let held = self.by_kind.entry(by_kind_key(kind)).or_default();
        let gone: Vec<String> = held
            .iter()
            .filter(|key| !fresh.contains(*key))
            .filter(|key| namespace.is_none_or(|ns| namespace_of_key(key) == Some(ns)))
            .cloned()
            .collect();
        for key in &gone {
            held.remove(key);
            self.index.remove(key);
        }
        for object in objects {
            self.apply(object);
        }
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
        let kind = crate::k8s::kinds::find("", "Service").unwrap();
        index.delete(kind, "shop", "ratings");
        assert_eq!(index.snapshot().services.len(), 1);
        // A restart lists reviews (changed) and details: ratings stays gone, reviews is updated.
        index.reset(
            kind,
            None,
            &[service("reviews", 9090), service("details", 9080)],
        );
        let snap = index.snapshot();
        let keys: Vec<_> = snap.services.keys().map(ToString::to_string).collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        let reviews = &snap.services[&ServiceKey::new("shop", "reviews")];
        assert_eq!(reviews.ports[0].port, 9090);
        index.reset(kind, None, &[]);
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

    fn gateway(api_version: &str, kind_port: u16) -> Object {
        let spec = if api_version.starts_with("networking.istio.io") {
            json!({"selector": {"istio": "ingressgateway"},
                   "servers": [{"port": {"number": kind_port, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]})
        } else {
            json!({"gatewayClassName": "trellis",
                   "listeners": [{"name": "http", "port": kind_port, "protocol": "HTTP"}]})
        };
        let json = json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": spec});
        Object::from_json(json, api_version, "Gateway").unwrap()
    }

    #[test]
    fn istio_and_gateway_api_gateways_of_one_name_are_two_objects() {
        use crate::k8s::kinds::find;
        let istio = gateway("networking.istio.io/v1beta1", 80);
        let api = gateway("gateway.networking.k8s.io/v1", 8080);
        assert_eq!(istio.key(), "Gateway.networking.istio.io shop/web");
        assert_eq!(api.key(), "Gateway.gateway.networking.k8s.io shop/web");
        assert_eq!(
            service("reviews", 9080).key(),
            "Service shop/reviews",
            "unshared kinds keep the short name"
        );
        let mut index = ObjectIndex::default();
        index.apply(&istio);
        index.apply(&api);
        let gateways = |index: &ObjectIndex| -> Vec<String> {
            let snap = index.snapshot();
            let mut rows: Vec<String> = snap
                .resources
                .iter()
                .map(|r| format!("{} {:?}", r.file, r.status))
                .collect();
            rows.sort();
            rows
        };
        assert_eq!(
            gateways(&index),
            [
                "Gateway.gateway.networking.k8s.io shop/web Accepted",
                "Gateway.networking.istio.io shop/web Accepted"
            ]
        );
        assert_eq!(index.snapshot().gateways.len(), 2);
        // Deleting one, or a re-list of one kind that no longer has it, leaves the other.
        let istio_kind = find("networking.istio.io", "Gateway").unwrap();
        let api_kind = find(GATEWAY_API, "Gateway").unwrap();
        index.delete(istio_kind, "shop", "web");
        assert_eq!(
            gateways(&index),
            ["Gateway.gateway.networking.k8s.io shop/web Accepted"]
        );
        index.apply(&istio);
        index.reset(api_kind, None, &[]);
        assert_eq!(
            gateways(&index),
            ["Gateway.networking.istio.io shop/web Accepted"]
        );
    }

    const GATEWAY_API: &str = crate::k8s::kinds::GATEWAY_API_GROUP;
}
