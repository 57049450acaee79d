use std::collections::BTreeMap;

use serde::Serialize;
use trellis_config::istio::peer_authentication::PeerAuthn;
use trellis_config::istio::request_authentication::RequestAuthn;
use trellis_config::smi::Pending;
use trellis_config::traffic::{DestinationPolicy, RouteSet};
use trellis_config::{Document, Outcome, Resource};
use trellis_model::{Service, ServiceKey};

use super::traffic::{EntryId, Traffic, resolve};

/// How one document of a config file fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Status {
    /// In force.
    Accepted,
    /// Refused; the message says why. Nothing of it reaches a proxy.
    Invalid,
    /// A kind this mesh does not read (yet), or a resource with nothing for the mesh in it.
    Ignored,
    /// Valid, but another resource takes precedence wherever it would apply; the message
    /// names the winner.
    Conflicted,
}

/// One row of `GET /api/v1/config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourceStatus {
    pub file: String,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub status: Status,
    pub message: Option<String>,
}

/// What the mesh's config is at one moment: immutable, shared by `Arc`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigSnapshot {
    pub services: BTreeMap<ServiceKey, Service>,
    /// Routes and destination policies in force, by service.
    pub traffic: Traffic,
    pub resources: Vec<ResourceStatus>,
    /// Istio PeerAuthentications in force (resolved per workload by discovery).
    pub peer_authentications: Vec<PeerAuthn>,
    /// Istio RequestAuthentications in force (merged per workload by discovery).
    pub request_authentications: Vec<RequestAuthn>,
    /// Istio Telemetry resources in force (resolved per workload by discovery).
    pub telemetries: Vec<trellis_config::istio::telemetry::TelemetryPolicy>,
    /// Istio MeshConfigs (ConfigMaps `istio`); the one in the root namespace is the mesh's.
    pub mesh_configs: Vec<trellis_config::istio::mesh_config::MeshConfig>,
    /// Istio AuthorizationPolicies in force (compiled per workload by discovery).
    pub authorization_policies: Vec<trellis_config::istio::authorization_policy::AuthzPolicy>,
    /// Gateways, GatewayClasses, ReferenceGrants, TLS Secrets and routes bound to gateways
    /// (compiled per gateway workload by discovery).
    pub gateways: Vec<trellis_config::gateways::GatewayResource>,
    /// Istio WasmPlugins in force (resolved per workload by discovery).
    pub wasm_plugins: Vec<trellis_config::istio::wasm_plugin::WasmPluginPolicy>,
    /// Trellis RateLimitPolicies in force (compiled per workload by discovery).
    pub rate_limit_policies: Vec<trellis_config::trellis::ratelimit::RateLimitPolicy>,
    /// Links to other clusters and the Services exported to them (`crate::multicluster`).
    pub multicluster: crate::multicluster::MulticlusterConfig,
    /// Which published config this is, for the `Programmed` condition: the Kubernetes source
    /// numbers each snapshot whose content changed (1, 2, ...), and the adapters between it and
    /// discovery keep the number. 0 from config directories (nothing counts programmed there).
    pub revision: u64,
}

#[derive(Debug, Default)]
struct FileState {
    /// The file's latest content, as parsed.
    documents: Vec<Document>,
    /// The resources (with their document index) of the file's last version without errors:
    /// what is in force.
    in_force: Vec<(usize, Resource)>,
}

/// Config files by name. A file is applied all or nothing: if any document in it is invalid,
/// the file's last good version stays in force (so a half-edited file never takes away the
/// half that was not touched) and the errors are reported.
#[derive(Debug, Default)]
pub struct ConfigIndex {
    files: BTreeMap<String, FileState>,
}

impl ConfigIndex {
    pub fn apply(&mut self, file: &str, documents: Vec<Document>) {
        let state = self.files.entry(file.to_string()).or_default();
        if !documents.iter().any(Document::is_invalid) {
            state.in_force = documents
                .iter()
                .filter_map(|d| match &d.outcome {
                    Outcome::Resource(r) => Some((d.resource.document, r.clone())),
                    _ => None,
                })
                .collect();
        }
        state.documents = documents;
    }

    /// Forgets a file; its resources leave the mesh. Returns whether it was known.
    pub fn remove(&mut self, file: &str) -> bool {
        self.files.remove(file).is_some()
    }

    /// The message of a file whose only document is a read error, to avoid re-reporting it.
    pub fn read_error(&self, file: &str) -> Option<&String> {
        match self.files.get(file)?.documents.as_slice() {
            [
                Document {
                    outcome: Outcome::Invalid(err),
                    ..
                },
            ] if err.field.is_none() => Some(&err.message),
            _ => None,
        }
    }

    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// The services in force and a status row per document. Where two documents define the
    /// same Service, the one in the first file by name (then the first in the file) wins and
    /// the other is reported Invalid, so the outcome does not depend on the order of events.
    pub fn snapshot(&self) -> ConfigSnapshot {
        let mut services: BTreeMap<ServiceKey, Service> = BTreeMap::new();
        let mut owner: BTreeMap<ServiceKey, &str> = BTreeMap::new();
        let mut routes: Vec<(EntryId, &RouteSet)> = Vec::new();
        let mut policies: Vec<(EntryId, &DestinationPolicy)> = Vec::new();
        let mut peer_authentications = Vec::new();
        let mut request_authentications = Vec::new();
        let mut wasm_plugins = Vec::new();
        let mut telemetries = Vec::new();
        let mut mesh_configs = Vec::new();
        let mut service_entries: Vec<&trellis_config::istio::service_entry::ServiceEntry> =
            Vec::new();
        let mut authorization_policies = Vec::new();
        let mut gateways = Vec::new();
        let mut rate_limit_policies = Vec::new();
        let mut multicluster = crate::multicluster::MulticlusterConfig::default();
        // SMI TrafficSplits with `matches` resolve against the HTTPRouteGroups in force.
        let mut route_groups: Vec<&trellis_config::smi::HttpRouteGroup> = Vec::new();
        let mut matched_splits: Vec<(EntryId, &trellis_config::smi::MatchedSplit)> = Vec::new();
        for (file, state) in &self.files {
            for (doc, resource) in &state.in_force {
                let id = (file.clone(), *doc);
                match resource {
                    Resource::Service(svc) => {
                        if !services.contains_key(&svc.key) {
                            services.insert(svc.key.clone(), svc.clone());
                            owner.insert(svc.key.clone(), file);
                        }
                    }
                    Resource::Routes(set) => routes.push((id, set)),
                    Resource::DestinationPolicy(p) => policies.push((id, p)),
                    Resource::PeerAuthentication(p) => peer_authentications.push((**p).clone()),
                    Resource::RequestAuthentication(p) => {
                        request_authentications.push((**p).clone())
                    }
                    Resource::Telemetry(t) => telemetries.push((**t).clone()),
                    Resource::MeshConfig(m) => mesh_configs.push((**m).clone()),
                    Resource::ServiceEntry(se) => service_entries.push(&**se),
                    Resource::WasmPlugin(p) => wasm_plugins.push((**p).clone()),
                    Resource::AuthorizationPolicy(p) => authorization_policies.push((**p).clone()),
                    Resource::Gateway(g) => {
                        // A route bound to `mesh` too routes the mesh like any other.
                        if let trellis_config::gateways::GatewayResource::Routes(r) = &**g
                            && let Some(mesh) = &r.mesh
                        {
                            routes.push((id, mesh));
                        }
                        gateways.push((**g).clone());
                    }
                    Resource::RateLimitPolicy(p) => rate_limit_policies.push((**p).clone()),
                    Resource::Multicluster(r) => multicluster.add(r),
                    Resource::Smi(p) => match &**p {
                        Pending::RouteGroup(g) => route_groups.push(g),
                        Pending::Split(s) => matched_splits.push((id, s)),
                    },
                }
            }
        }
        let mut resolved_splits: Vec<(EntryId, RouteSet)> = Vec::new();
        let mut unresolved: BTreeMap<EntryId, String> = BTreeMap::new();
        for ((file, doc), split) in matched_splits {
            match trellis_config::smi::resolve(split, &route_groups, &file, doc) {
                Ok(set) => resolved_splits.push(((file, doc), set)),
                Err(err) => {
                    unresolved.insert((file, doc), err.to_string());
                }
            }
        }
        routes.extend(resolved_splits.iter().map(|(id, set)| (id.clone(), set)));
        // ServiceEntry hosts join the registry before routes resolve, so routes may name them.
        let entries = crate::compile::service_entry::register(service_entries, &mut services);
        let (mut traffic, verdicts) = resolve(&routes, &policies, &|k| services.contains_key(k));
        traffic.service_entries.by_key = entries;
        let mut resources = Vec::new();
        for (file, state) in &self.files {
            let file_invalid = state.documents.iter().any(Document::is_invalid);
            let mut seen_in_file: Vec<&ServiceKey> = Vec::new();
            for doc in &state.documents {
                let (status, message) = match &doc.outcome {
                    Outcome::Invalid(err) => (Status::Invalid, Some(err.to_string())),
                    Outcome::Ignored { reason } => (Status::Ignored, Some(reason.clone())),
                    Outcome::Resource(_) if file_invalid => (
                        Status::Invalid,
                        Some(format!(
                            "not applied: another document in {file} is invalid; the file's last good version stays in force"
                        )),
                    ),
                    Outcome::Resource(Resource::Service(svc)) => {
                        let dup_in_file = seen_in_file.contains(&&svc.key);
                        seen_in_file.push(&svc.key);
                        match owner.get(&svc.key) {
                            Some(winner) if *winner != file || dup_in_file => (
                                Status::Invalid,
                                Some(format!(
                                    "Service {} is already defined in {winner}, which takes precedence",
                                    svc.key
                                )),
                            ),
                            _ => (Status::Accepted, None),
                        }
                    }
                    Outcome::Resource(Resource::Smi(_))
                        if unresolved.contains_key(&(file.clone(), doc.resource.document)) =>
                    {
                        (
                            Status::Invalid,
                            unresolved
                                .get(&(file.clone(), doc.resource.document))
                                .cloned(),
                        )
                    }
                    Outcome::Resource(r) => {
                        let notes: &[String] = match r {
                            Resource::Routes(set) => &set.notes,
                            Resource::DestinationPolicy(p) => &p.notes,
                            Resource::PeerAuthentication(p) => &p.notes,
                            Resource::RequestAuthentication(p) => &p.notes,
                            Resource::Telemetry(t) => &t.notes,
                            Resource::MeshConfig(m) => &m.notes,
                            Resource::ServiceEntry(se) => &se.notes,
                            Resource::WasmPlugin(p) => &p.notes,
                            Resource::AuthorizationPolicy(p) => &p.notes,
                            Resource::Gateway(g) => g.notes(),
                            Resource::RateLimitPolicy(p) => &p.notes,
                            Resource::Smi(p) => p.notes(),
                            Resource::Service(_) | Resource::Multicluster(_) => &[],
                        };
                        let verdict = verdicts
                            .get(&(file.clone(), doc.resource.document))
                            .cloned()
                            .unwrap_or_default();
                        let mut messages = verdict.messages.clone();
                        messages.extend(notes.iter().cloned());
                        let status = if verdict.conflicted() {
                            Status::Conflicted
                        } else {
                            Status::Accepted
                        };
                        (status, (!messages.is_empty()).then(|| messages.join("; ")))
                    }
                };
                resources.push(ResourceStatus {
                    file: file.clone(),
                    kind: doc.resource.kind.clone(),
                    namespace: doc.resource.namespace.clone(),
                    name: doc.resource.name.clone(),
                    status,
                    message,
                });
            }
        }
        ConfigSnapshot {
            services,
            traffic,
            resources,
            peer_authentications,
            request_authentications,
            telemetries,
            mesh_configs,
            authorization_policies,
            gateways,
            wasm_plugins,
            rate_limit_policies,
            multicluster,
            revision: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use trellis_config::parse_documents;

    use super::*;

    fn svc_yaml(name: &str, port: u32) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: {port}}}]\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}}}\n"
        )
    }

    fn apply(index: &mut ConfigIndex, file: &str, yaml: &str) {
        index.apply(file, parse_documents(file, yaml.as_bytes()));
    }

    fn ports(snap: &ConfigSnapshot, name: &str) -> Vec<u16> {
        let svc = snap.services.get(&ServiceKey::new("default", name));
        svc.map(|s| s.ports.iter().map(|p| p.port).collect())
            .unwrap_or_default()
    }

    #[test]
    fn apply_and_remove() {
        let mut index = ConfigIndex::default();
        apply(&mut index, "a.yaml", &svc_yaml("reviews", 9080));
        apply(&mut index, "b.yaml", &svc_yaml("ratings", 9080));
        let snap = index.snapshot();
        assert_eq!(snap.services.len(), 2);
        let statuses: Vec<_> = snap.resources.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [
                Status::Accepted,
                Status::Ignored,
                Status::Accepted,
                Status::Ignored
            ]
        );
        assert!(index.remove("a.yaml"));
        assert!(!index.remove("a.yaml"));
        assert_eq!(index.snapshot().services.len(), 1);
    }

    #[test]
    fn invalid_file_keeps_last_good() {
        let mut index = ConfigIndex::default();
        apply(&mut index, "a.yaml", &svc_yaml("reviews", 9080));
        apply(&mut index, "a.yaml", &svc_yaml("reviews", 0));
        let snap = index.snapshot();
        assert_eq!(ports(&snap, "reviews"), [9080], "last good stays in force");
        let row = &snap.resources[0];
        assert_eq!(row.status, Status::Invalid);
        let msg = row.message.as_deref().unwrap();
        assert!(
            msg.contains("spec.ports[0].port: must be 1-65535, got 0"),
            "{msg}"
        );
        // Fixed: the new version takes effect.
        apply(&mut index, "a.yaml", &svc_yaml("reviews", 9090));
        assert_eq!(ports(&index.snapshot(), "reviews"), [9090]);
    }

    #[test]
    fn new_invalid_file_contributes_nothing_and_valid_siblings_wait() {
        let mut index = ConfigIndex::default();
        let yaml = format!(
            "{}---\n{}",
            svc_yaml("details", 9080),
            svc_yaml("ratings", 0)
        );
        apply(&mut index, "a.yaml", &yaml);
        let snap = index.snapshot();
        assert!(snap.services.is_empty());
        assert_eq!(snap.resources[0].status, Status::Invalid);
        assert!(
            snap.resources[0]
                .message
                .as_deref()
                .unwrap()
                .starts_with("not applied")
        );
    }

    #[test]
    fn duplicates_first_file_wins() {
        let mut index = ConfigIndex::default();
        apply(&mut index, "b.yaml", &svc_yaml("reviews", 9090));
        apply(&mut index, "a.yaml", &svc_yaml("reviews", 9080));
        let snap = index.snapshot();
        assert_eq!(ports(&snap, "reviews"), [9080]);
        let b = snap
            .resources
            .iter()
            .find(|r| r.file == "b.yaml" && r.kind.as_deref() == Some("Service"));
        let b = b.unwrap();
        assert_eq!(b.status, Status::Invalid);
        assert!(
            b.message
                .as_deref()
                .unwrap()
                .contains("already defined in a.yaml")
        );
    }
}
