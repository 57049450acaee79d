//! The adapters from kube-runtime watchers to the pure indexes: config objects into
//! [`ObjectIndex`] (published as [`ConfigSnapshot`]s), Pods into [`PodIndex`] (published as the
//! workloads), Namespaces into a reflector store the injector reads.
//!
//! kube-runtime's watcher lists, then watches from the list's resourceVersion, and on a 410 Gone
//! or a broken connection lists again. A re-list arrives as `Init`, `InitApply`..., `InitDone`;
//! the objects are buffered and swapped in at `InitDone`, so a resync replaces the old set in
//! one step and proxies never see a moment without it.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use trellis_model::Workload;

use super::kinds::{
    CONFIG_KINDS, CONFIG_MAP, CONFIG_MAP_FIELD_SELECTOR, ConfigKind, SECRET, SECRET_FIELD_SELECTOR,
};
use super::objects::{Object, ObjectIndex};
use super::pods::PodIndex;
use super::status::{ObjectMeta, StatusInput};

use crate::state::Shared;
use crate::store::ConfigSnapshot;

fn api_resource(kind: &ConfigKind) -> ApiResource {
    let gvk = GroupVersionKind::gvk(kind.group, kind.version, kind.kind);
    ApiResource::from_gvk_with_plural(&gvk, kind.plural)
}

/// Runs `stream` until shutdown, handing each event to `on_event`. Errors are logged when they
/// change (a missing CRD would otherwise log on every backoff step) and the watcher retries.
async fn drive<K, S>(
    what: String,
    stream: S,
    shutdown: CancellationToken,
    mut on_event: impl FnMut(Event<K>),
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut last_error: Option<String> = None;
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            next = stream.next() => next,
        };
        match next {
            Some(Ok(event)) => {
                if last_error.take().is_some() {
                    tracing::info!(watch = %what, "watch recovered");
                }
                on_event(event);
            }
            Some(Err(err)) => {
                let msg = err.to_string();
                if last_error.as_ref() != Some(&msg) {
                    tracing::warn!(watch = %what, error = %msg, "watch failed; retrying with backoff");
                    last_error = Some(msg);
                }
            }
            None => return,
        }
    }
}

/// What a config kind's watcher hands the index task.
enum ConfigEvent {
    Apply(&'static ConfigKind, Object),
    Delete {
        kind: &'static ConfigKind,
        namespace: String,
        name: String,
    },
    /// A (re-)list's objects, collected between `Init` and `InitDone`: every object of the
    /// kind, or of the kind in `namespace` for a watch of one namespace.
    Reset {
        kind: &'static ConfigKind,
        namespace: Option<String>,
        objects: Vec<Object>,
    },
}

/// The config side's outputs.
#[derive(Debug)]
pub struct ConfigWatch {
    pub snapshot_rx: watch::Receiver<Arc<ConfigSnapshot>>,
    /// The kinds whose first full list is in.
    pub listed_rx: watch::Receiver<Vec<&'static ConfigKind>>,
    pub status_rx: watch::Receiver<StatusInput>,
}

fn meta(kind: &'static ConfigKind, object: &Object, root_namespace: &str) -> ObjectMeta {
    ObjectMeta {
        kind,
        namespace: object.namespace.clone(),
        name: object.name.clone(),
        generation: object.json["metadata"]["generation"].as_i64(),
        concern: super::concern::concern_of(kind, &object.json, root_namespace),
    }
}

/// One kind's watcher (all namespaces, or the one `scope` names), its events into `events`.
fn spawn_kind_watch(
    api: Api<DynamicObject>,
    kind: &'static ConfigKind,
    scope: Option<String>,
    config: watcher::Config,
    events: &mpsc::UnboundedSender<ConfigEvent>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) {
    let api_version = kind.api_version();
    let stream = watcher::watcher(api, config).default_backoff();
    let events = events.clone();
    let what = match &scope {
        Some(namespace) => format!("{} ({api_version}) in {namespace}", kind.plural),
        None => format!("{} ({api_version})", kind.plural),
    };
    let shutdown = shutdown.clone();
    let mut buffer: Vec<Object> = Vec::new();
    let to_object = move |obj: DynamicObject| {
        let json = serde_json::to_value(&obj).ok()?;
        Object::from_json(json, &api_version, kind.kind)
    };
    tasks.spawn(async move {
        drive(what, stream, shutdown, |event| {
            let out = match event {
                Event::Apply(obj) => to_object(obj).map(|o| ConfigEvent::Apply(kind, o)),
                Event::Delete(obj) => Some(ConfigEvent::Delete {
                    kind,
                    namespace: obj.metadata.namespace.unwrap_or_else(|| "default".into()),
                    name: obj.metadata.name.unwrap_or_default(),
                }),
                Event::Init => {
                    buffer.clear();
                    None
                }
                Event::InitApply(obj) => {
                    buffer.extend(to_object(obj));
                    None
                }
                Event::InitDone => Some(ConfigEvent::Reset {
                    kind,
                    namespace: scope.clone(),
                    objects: std::mem::take(&mut buffer),
                }),
            };
            // Unbounded keeps events in order without blocking the watcher; the index task
            // drains faster than an API server sends.
            if let Some(out) = out {
                let _ = events.send(out);
            }
        })
        .await;
    });
}

/// The namespaces read beyond the cluster-wide kinds, each where `trellis install` grants a
/// namespaced Role and nowhere else.
#[derive(Clone, Copy, Debug)]
pub struct Namespaces<'a> {
    /// Certificate Secrets Gateways name.
    pub secrets: &'a [String],
    /// The MeshConfig ConfigMap `istio`: the mesh root namespace (Istio reads the one in
    /// istiod's namespace, its default root namespace; local mode reads the root namespace's).
    pub mesh_config: &'a str,
}

/// Watches every config kind; returns the snapshots and the kinds whose first full list is in
/// (a kind whose CRD is missing never lists; its watcher retries with backoff).
pub fn watch_config(
    client: &Client,
    namespaces: Namespaces<'_>,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> ConfigWatch {
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(ConfigSnapshot::default()));
    let (listed_tx, listed_rx) = watch::channel(Vec::new());
    let (status_tx, status_rx) = watch::channel::<StatusInput>(Default::default());
    let (event_tx, mut event_rx) = mpsc::unbounded_channel::<ConfigEvent>();
    for kind in CONFIG_KINDS {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource(kind));
        spawn_kind_watch(
            api,
            kind,
            None,
            watcher::Config::default(),
            &event_tx,
            tasks,
            shutdown,
        );
    }
    // Certificate Secrets, in the namespaces granted for them only (`trellis install` gives a
    // Role there and nowhere else); service-account tokens are never fetched.
    for namespace in namespaces.secrets {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &api_resource(&SECRET));
        let config = watcher::Config::default().fields(SECRET_FIELD_SELECTOR);
        spawn_kind_watch(
            api,
            &SECRET,
            Some(namespace.clone()),
            config,
            &event_tx,
            tasks,
            shutdown,
        );
    }
    // The MeshConfig: the one ConfigMap, by name (RBAC grants no other). Its events go through
    // the same index, so a bad `mesh` key is an invalid row naming the ConfigMap and field and
    // the last good MeshConfig stays in force, as in local mode.
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespaces.mesh_config,
        &api_resource(&CONFIG_MAP),
    );
    spawn_kind_watch(
        api,
        &CONFIG_MAP,
        Some(namespaces.mesh_config.to_string()),
        watcher::Config::default().fields(CONFIG_MAP_FIELD_SELECTOR),
        &event_tx,
        tasks,
        shutdown,
    );
    drop(event_tx);
    let root_namespace = namespaces.mesh_config.to_string();
    let meta_of = move |kind, object: &Object| meta(kind, object, &root_namespace);
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        let mut index = ObjectIndex::default();
        let mut published = snapshot_tx.borrow().clone();
        let mut metas: BTreeMap<String, ObjectMeta> = BTreeMap::new();
        let mut listed: Vec<&'static ConfigKind> = Vec::new();
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = event_rx.recv() => event,
            };
            let Some(event) = event else { return };
            match event {
                ConfigEvent::Apply(kind, obj) => {
                    index.apply(&obj);
                    metas.insert(obj.key(), meta_of(kind, &obj));
                }
                ConfigEvent::Delete {
                    kind,
                    namespace,
                    name,
                } => {
                    index.delete(kind, &namespace, &name);
                    metas.remove(&kind.key(&namespace, &name));
                }
                ConfigEvent::Reset {
                    kind,
                    namespace,
                    objects,
                } => {
                    tracing::debug!(
                        kind = kind.kind,
                        group = kind.group,
                        namespace = namespace.as_deref().unwrap_or("*"),
                        count = objects.len(),
                        "config kind listed"
                    );
                    index.reset(kind, namespace.as_deref(), &objects);
                    metas.retain(|_, m| {
                        m.kind != kind || namespace.as_ref().is_some_and(|ns| *ns != m.namespace)
                    });
                    metas.extend(objects.iter().map(|o| (o.key(), meta_of(kind, o))));
                    if !listed.contains(&kind) {
                        listed.push(kind);
                        listed_tx.send_replace(listed.clone());
                    }
                }
            }
            // A new revision only when the content changed: a status write or a kind's late
            // first list changes nothing a proxy is sent, and a revision no proxy is sent
            // would never count as programmed (docs in `super::programmed`).
            let mut next = index.snapshot();
            next.revision = published.revision;
            if next != *published {
                next.revision += 1;
                published = Arc::new(next);
                snapshot_tx.send_replace(published.clone());
            }
            status_tx.send_replace((published.clone(), Arc::new(metas.clone())));
        }
    });
    ConfigWatch {
        snapshot_rx,
        listed_rx,
        status_rx,
    }
}

/// Watches Pods (and EndpointSlices, when `slices` names the served version) into the shared
/// workloads; the flag turns true after the first full list of pods.
pub fn watch_pods(
    client: &Client,
    shared: Arc<Shared>,
    slices: Option<&'static str>,
    tasks: &mut JoinSet<()>,
) -> watch::Receiver<bool> {
    let (synced_tx, synced_rx) = watch::channel(false);
    let (pods_tx, mut pods_rx) = watch::channel(Vec::<Workload>::new());
    let mut slices_rx = match slices {
        Some(version) => watch_endpoint_slices(client, version, tasks, &shared.shutdown),
        // Never changes: a closed channel would end the merge below.
        None => watch::channel(Vec::new()).1,
    };
    // Pods and slices are published as one set; a change of either republishes both.
    let merge_shared = shared.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = merge_shared.shutdown.cancelled() => return,
                changed = pods_rx.changed() => if changed.is_err() { return },
                changed = slices_rx.changed() => if changed.is_err() { return },
            }
            let mut all = pods_rx.borrow_and_update().clone();
            all.extend(slices_rx.borrow_and_update().iter().cloned());
            merge_shared.publish_external_workloads(all);
        }
    });
    let api: Api<Pod> = Api::all(client.clone());
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let shutdown = shared.shutdown.clone();
    tasks.spawn(async move {
        let mut index = PodIndex::default();
        let mut buffer: Vec<Pod> = Vec::new();
        drive("pods".into(), stream, shutdown, |event| {
            let changed = match event {
                Event::Apply(pod) => index.apply(&pod),
                Event::Delete(pod) => index.delete(&pod),
                Event::Init => {
                    buffer.clear();
                    false
                }
                Event::InitApply(pod) => {
                    buffer.push(pod);
                    false
                }
                Event::InitDone => {
                    index.reset(&std::mem::take(&mut buffer));
                    synced_tx.send_replace(true);
                    true
                }
            };
            if changed {
                pods_tx.send_replace(index.workloads());
            }
        })
        .await;
    });
    synced_rx
}

/// Watches EndpointSlices of `version` (as dynamic objects: the two versions differ only in
/// fields not read) into plain workloads (see [`super::slices`]).
fn watch_endpoint_slices(
    client: &Client,
    version: &'static str,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> watch::Receiver<Vec<Workload>> {
    let (tx, rx) = watch::channel(Vec::new());
    let gvk = GroupVersionKind::gvk(super::slices::GROUP, version, "EndpointSlice");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "endpointslices");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        let mut index = super::slices::SliceIndex::default();
        let mut buffer: Vec<serde_json::Value> = Vec::new();
        let json = |obj: DynamicObject| serde_json::to_value(obj).unwrap_or_default();
        let what = format!("endpointslices ({}/{version})", super::slices::GROUP);
        drive(what, stream, shutdown, |event| {
            let changed = match event {
                Event::Apply(s) => index.apply(&json(s)),
                Event::Delete(s) => index.delete(&json(s)),
                Event::Init => {
                    buffer.clear();
                    false
                }
                Event::InitApply(s) => {
                    buffer.push(json(s));
                    false
                }
                Event::InitDone => {
                    index.reset(&std::mem::take(&mut buffer));
                    true
                }
            };
            if changed {
                tx.send_replace(index.workloads());
            }
        })
        .await;
    });
    rx
}

/// Namespaces in a reflector store (the injector reads their labels).
pub fn watch_namespaces(
    client: &Client,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> Store<Namespace> {
    let (reader, writer) = reflector::store();
    let api: Api<Namespace> = Api::all(client.clone());
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    );
    let shutdown = shutdown.clone();
    tasks.spawn(drive("namespaces".into(), stream, shutdown, |_| {}));
    reader
}

/// The labels of namespace `name`, empty when it is not (yet) known.
pub fn namespace_labels(store: &Store<Namespace>, name: &str) -> BTreeMap<String, String> {
    store
        .get(&reflector::ObjectRef::new(name))
        .and_then(|ns| ns.metadata.labels.clone())
        .unwrap_or_default()
}
