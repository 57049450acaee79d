//! The checks: a config set (files read together) in, findings out. Pure.
//!
//! Parsing and precedence are the control plane's own (`trellis_config::parse_documents`, then
//! `trellis_control::store::ConfigIndex`), so a resource validate calls conflicted is exactly
//! one the control plane would refuse to apply. Cross-resource checks run on what would be in
//! force; the raw YAML is consulted only to name the field at fault.

use std::collections::BTreeMap;

use serde_yaml::Value;
use trellis_config::{Document, Outcome, Resource};
use trellis_control::store::traffic::named_backends;
use trellis_control::store::{ConfigIndex, Status};
use trellis_model::route::RouteAction;

use super::raw::{self, KnownWorkload};
use super::{Code, Finding};

/// One input file: its name as the user gave it, and its bytes.
#[derive(Clone, Debug)]
pub struct InputFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

struct Parsed {
    documents: Vec<Document>,
    raw: BTreeMap<usize, Value>,
}

/// Every problem in the config set, ordered by file, then document, then code.
pub fn analyze(files: &[InputFile]) -> Vec<Finding> {
    // By name, as the control plane's index orders files: its status rows follow this order.
    let mut parsed: BTreeMap<&str, Parsed> = BTreeMap::new();
    let mut index = ConfigIndex::default();
    for file in files {
        let documents = trellis_config::parse_documents(&file.name, &file.bytes);
        index.apply(&file.name, documents.clone());
        let raw = raw::documents(&file.bytes);
        parsed.insert(&file.name, Parsed { documents, raw });
    }
    let snapshot = index.snapshot();
    let workloads: Vec<KnownWorkload> = parsed
        .values()
        .flat_map(|p| p.raw.values().filter_map(raw::workload))
        .collect();

    // The SMI HTTPRouteGroups in force (files without errors, as the index applies them), to
    // name the reference at fault when a TrafficSplit's `matches` do not resolve.
    let route_groups: Vec<&trellis_config::smi::HttpRouteGroup> = parsed
        .values()
        .filter(|p| !p.documents.iter().any(Document::is_invalid))
        .flat_map(|p| &p.documents)
        .filter_map(|d| match &d.outcome {
            Outcome::Resource(Resource::Smi(p)) => match &**p {
                trellis_config::smi::Pending::RouteGroup(g) => Some(g),
                trellis_config::smi::Pending::Split(_) => None,
            },
            _ => None,
        })
        .collect();

    let mut out = Vec::new();
    let mut rows = snapshot.resources.iter();
    for (file, p) in &parsed {
        let file_invalid = p.documents.iter().any(Document::is_invalid);
        for doc in &p.documents {
            // Invariant: `snapshot()` emits one row per document in this same order.
            let row = rows.next();
            let raw_doc = p.raw.get(&doc.resource.document);
            let at = |code: Code, field: Option<String>, message: String| Finding {
                code,
                severity: code.severity(),
                file: file.to_string(),
                document: doc.resource.document + 1,
                kind: doc.resource.kind.clone(),
                namespace: doc.resource.namespace.clone(),
                name: doc.resource.name.clone(),
                field,
                message,
                hint: code.hint().to_string(),
            };
            match &doc.outcome {
                Outcome::Invalid(err) => {
                    out.push(at(Code::Field, err.field.clone(), err.message.clone()));
                    continue;
                }
                Outcome::Ignored { reason } => {
                    out.push(at(Code::Ignored, None, reason.clone()));
                    continue;
                }
                // Reported once, on the invalid document.
                Outcome::Resource(_) if file_invalid => continue,
                Outcome::Resource(_) => {}
            }
            let Outcome::Resource(resource) = &doc.outcome else {
                continue;
            };
            let status = row.map(|r| (r.status, r.message.clone()));
            if let Some((Status::Conflicted | Status::Invalid, message)) = status {
                let field = match resource {
                    Resource::Service(_) => Some("metadata.name".to_string()),
                    Resource::Routes(set) => set.parents.first().and_then(|parent| {
                        raw_doc.and_then(|d| raw::parent_field(d, &parent.service))
                    }),
                    Resource::DestinationPolicy(_) => Some("spec.host".to_string()),
                    Resource::PeerAuthentication(_) | Resource::Telemetry(_) => None,
                    Resource::RequestAuthentication(_) => None,
                    Resource::WasmPlugin(_) => None,
                    Resource::AuthorizationPolicy(_) => None,
                    Resource::ServiceEntry(_) => Some("spec.hosts".to_string()),
                    Resource::Gateway(_) => None,
                    Resource::RateLimitPolicy(_) => None,
                    Resource::Multicluster(_) => None,
                    Resource::MeshConfig(_) => None,
                    // An SMI TrafficSplit whose `matches` do not resolve: the message names
                    // the reference at fault; it is a field error, not a conflict.
                    Resource::Smi(p) => {
                        if let trellis_config::smi::Pending::Split(split) = &**p
                            && let Err(err) = trellis_config::smi::resolve(
                                split,
                                &route_groups,
                                file,
                                doc.resource.document,
                            )
                        {
                            out.push(at(Code::Field, err.field, err.message));
                            continue;
                        }
                        None
                    }
                };
                out.push(at(Code::Conflict, field, message.unwrap_or_default()));
                continue;
            }
            let notes = match resource {
                Resource::Routes(set) => set.notes.clone(),
                Resource::DestinationPolicy(p) => p.notes.clone(),
                Resource::PeerAuthentication(p) => p.notes.clone(),
                Resource::Telemetry(t) => t.notes.clone(),
                Resource::WasmPlugin(p) => p.notes.clone(),
                Resource::RequestAuthentication(p) => p.notes.clone(),
                Resource::AuthorizationPolicy(p) => p.notes.clone(),
                Resource::RateLimitPolicy(p) => p.notes.clone(),
                Resource::Smi(p) => p.notes().to_vec(),
                Resource::Service(_) => Vec::new(),
                Resource::ServiceEntry(se) => se.notes.clone(),
                Resource::Gateway(g) => g.notes().to_vec(),
                Resource::Multicluster(_) => Vec::new(),
                Resource::MeshConfig(m) => m.notes.clone(),
            };
            for note in notes {
                out.push(at(Code::Note, None, note));
            }
            let field_in = |f: &dyn Fn(&Value) -> Option<String>| raw_doc.and_then(f);
            match resource {
                Resource::Routes(set) => {
                    for parent in &set.parents {
                        if !snapshot.services.contains_key(&parent.service) {
                            let field = field_in(&|d| raw::parent_field(d, &parent.service));
                            out.push(at(
                                Code::UnknownHost,
                                field,
                                format!(
                                    "host {} is not a Service in this config set: the routes apply to nothing",
                                    parent.service
                                ),
                            ));
                        }
                    }
                    let mut seen = Vec::new();
                    for b in named_backends(set) {
                        if seen.contains(&b) {
                            continue;
                        }
                        seen.push(b);
                        if !snapshot.services.contains_key(&b.service) {
                            let field = field_in(&|d| raw::backend_field(d, &b.service));
                            out.push(at(
                                Code::UnknownHost,
                                field,
                                format!(
                                    "backend {} is not a Service in this config set: requests routed there get 503 (no endpoints)",
                                    b.service
                                ),
                            ));
                            continue;
                        }
                        let Some(subset) = &b.subset else { continue };
                        let defined = snapshot
                            .traffic
                            .policies
                            .get(&b.service)
                            .is_some_and(|p| p.subset(subset).is_some());
                        if !defined {
                            let field = field_in(&|d| raw::subset_field(d, &b.service, subset));
                            out.push(at(
                                Code::UnknownSubset,
                                field,
                                format!(
                                    "subset {subset:?} of {} is not defined by the DestinationRule in force: requests routed there get 503 (no endpoints)",
                                    b.service
                                ),
                            ));
                        }
                    }
                    let zero_lists = raw_doc.map(raw::zero_weight_lists).unwrap_or_default();
                    let zero_routes = set.http.iter().filter(|r| {
                        matches!(&r.action, RouteAction::Forward(bs)
                            if !bs.is_empty() && bs.iter().all(|b| b.weight == 0))
                    });
                    for (i, route) in zero_routes.enumerate() {
                        out.push(at(
                            Code::ZeroWeights,
                            zero_lists.get(i).cloned(),
                            format!(
                                "every backend of route {} has weight 0: each request it matches fails with 500",
                                route.name
                            ),
                        ));
                    }
                }
                Resource::DestinationPolicy(policy) => {
                    let service = snapshot.services.get(&policy.host);
                    if service.is_none() {
                        out.push(at(
                            Code::UnknownHost,
                            Some("spec.host".into()),
                            format!(
                                "host {} is not a Service in this config set: the policy applies to nothing",
                                policy.host
                            ),
                        ));
                    }
                    if workloads.is_empty() {
                        continue;
                    }
                    for (i, subset) in policy.subsets.iter().enumerate() {
                        let selected = workloads.iter().any(|w| {
                            w.namespace == policy.host.namespace
                                && service.is_none_or(|s| s.selects(&w.labels))
                                && subset
                                    .labels
                                    .iter()
                                    .all(|(k, v)| w.labels.get(k) == Some(v))
                        });
                        if !selected {
                            out.push(at(
                                Code::SubsetSelectsNothing,
                                Some(format!("spec.subsets[{i}].labels")),
                                format!(
                                    "subset {:?} (labels {}) matches no workload of {} in this config set",
                                    subset.name,
                                    labels(&subset.labels),
                                    policy.host
                                ),
                            ));
                        }
                    }
                }
                Resource::PeerAuthentication(pa) => {
                    let Some(selector) = &pa.selector else {
                        continue;
                    };
                    if workloads.is_empty() {
                        continue;
                    }
                    let selected = workloads.iter().any(|w| {
                        w.namespace == pa.source.namespace
                            && selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
                    });
                    if !selected {
                        out.push(at(
                            Code::PolicySelectsNothing,
                            Some("spec.selector.matchLabels".into()),
                            format!(
                                "selector {} matches no workload in namespace {}",
                                labels(selector),
                                pa.source.namespace
                            ),
                        ));
                    }
                }
                Resource::Service(svc) => {
                    // A Service without a selector is fed by hand (external endpoints): fine.
                    if workloads.is_empty() || svc.selector.is_empty() {
                        continue;
                    }
                    let selected = workloads
                        .iter()
                        .any(|w| w.namespace == svc.key.namespace && svc.selects(&w.labels));
                    if !selected {
                        out.push(at(
                            Code::ServiceSelectsNothing,
                            Some("spec.selector".into()),
                            format!(
                                "selector {} matches no workload in namespace {}: the Service has no endpoints",
                                labels(&svc.selector),
                                svc.key.namespace
                            ),
                        ));
                    }
                }
                Resource::Telemetry(_) => {}
                Resource::WasmPlugin(_) => {}
                Resource::RequestAuthentication(_) => {}
                Resource::AuthorizationPolicy(_) => {}
                Resource::ServiceEntry(_) => {}
                Resource::Gateway(_) => {}
                Resource::RateLimitPolicy(_) => {}
                Resource::Multicluster(_) => {}
                Resource::MeshConfig(_) => {}
                Resource::Smi(p) => {
                    // A TrafficSplit with `matches` that resolved (one that did not is reported above):
                    // its backends are checked as a plain split's are.
                    let trellis_config::smi::Pending::Split(split) = &**p else {
                        continue;
                    };
                    let mut seen = Vec::new();
                    for b in named_backends(&split.routes) {
                        if seen.contains(&b) || snapshot.services.contains_key(&b.service) {
                            continue;
                        }
                        seen.push(b);
                        let field = field_in(&|d| raw::backend_field(d, &b.service));
                        out.push(at(
                            Code::UnknownHost,
                            field,
                            format!(
                                "backend {} is not a Service in this config set: requests routed there get 503 (no endpoints)",
                                b.service
                            ),
                        ));
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.file, a.document, a.code).cmp(&(&b.file, b.document, b.code)));
    out
}

fn labels(labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {name: users}\nspec:\n  matches:\n  - name: jason\n    headers: {end-user: jason}\n";
    const SPLIT: &str = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: reviews-jason}\nspec:\n  service: reviews\n  matches: [{kind: HTTPRouteGroup, name: users, matches: [NAME]}]\n  backends: [{service: reviews, weight: 1}]\n";
    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec:\n  selector: {app: reviews}\n  ports: [{port: 9080, name: http}]\n";

    fn input(name: &str, text: &str) -> InputFile {
        InputFile {
            name: name.into(),
            bytes: text.as_bytes().to_vec(),
        }
    }

    /// The TrafficSplit's findings for a split naming match `name` of a group in another file.
    fn split_findings(name: &str) -> Vec<(Code, Option<String>, String)> {
        let files = [
            input("group.yaml", GROUP),
            input("split.yaml", &SPLIT.replace("NAME", name)),
            input("svc.yaml", SERVICE),
        ];
        analyze(&files)
            .into_iter()
            .filter(|f| f.file == "split.yaml")
            .map(|f| (f.code, f.field, f.message))
            .collect()
    }

    #[test]
    fn smi_split_with_matches_names_an_unknown_backend() {
        let files = [
            input("group.yaml", GROUP),
            input(
                "split.yaml",
                &SPLIT
                    .replace("NAME", "jason")
                    .replace("service: reviews, weight", "service: reviews-v9, weight"),
            ),
            input("svc.yaml", SERVICE),
        ];
        let found: Vec<(Code, Option<String>)> = analyze(&files)
            .into_iter()
            .filter(|f| f.file == "split.yaml")
            .map(|f| (f.code, f.field))
            .collect();
        assert_eq!(
            found,
            [(
                Code::UnknownHost,
                Some("spec.backends[0].service".to_string())
            )]
        );
    }

    #[test]
    fn smi_matches_resolve_across_files_or_name_the_reference() {
        assert_eq!(split_findings("jason"), []);
        assert_eq!(
            split_findings("mallory"),
            [(
                Code::Field,
                Some("spec.matches[0].matches[0]".to_string()),
                "HTTPRouteGroup default/users has no match named \"mallory\" (it has: jason)"
                    .to_string()
            )]
        );
    }
}
