//! Every config adapter, YAML in, model out: `trellis_config::parse_documents` over any bytes
//! (each kind's translation into the model runs inside it: Service, VirtualService,
//! DestinationRule, HTTPRoute, GRPCRoute, ServiceProfile, TrafficSplit, HTTPRouteGroup,
//! PeerAuthentication, AuthorizationPolicy, RequestAuthentication, Telemetry, and whatever
//! kinds are added later), then the rules that combine resources of a config set: SMI match
//! resolution, the inbound mTLS mode, the JWT rules and the telemetry settings a workload gets.
//!
//! Checked: nothing panics; an error names the file it came from, and a field when it names
//! one (`file: resource: field: message`, never an empty message).

use std::collections::BTreeMap;

use trellis_config::istio::{peer_authentication, request_authentication, telemetry};
use trellis_config::smi::{self, Pending};
use trellis_config::{ConfigError, Outcome, Resource, parse_documents};

/// The name every input is parsed under; errors must carry it.
const FILE: &str = "fuzz/config.yaml";

pub fn check_config(data: &[u8]) {
    let documents = parse_documents(FILE, data);
    let mut resources = Vec::new();
    for doc in &documents {
        match &doc.outcome {
            Outcome::Invalid(e) => check_error(e),
            Outcome::Ignored { reason } => assert!(!reason.is_empty(), "ignored without reason"),
            Outcome::Resource(r) => resources.push((doc.resource.document, r)),
        }
    }
    combine(&resources);
}

fn check_error(e: &ConfigError) {
    assert_eq!(e.file, FILE, "error without its file: {e}");
    assert!(!e.message.is_empty(), "error without a message: {e:?}");
    if let Some(field) = &e.field {
        assert!(!field.is_empty(), "empty field name: {e:?}");
    }
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("{FILE}: ")),
        "error does not start with its file: {shown}"
    );
}

/// The cross-resource rules the control plane applies to a config set, for each workload the
/// set's own selectors and namespaces describe.
fn combine(resources: &[(usize, &Resource)]) {
    let mut groups = Vec::new();
    let mut splits = Vec::new();
    let mut peer = Vec::new();
    let mut request = Vec::new();
    let mut telemetry_policies = Vec::new();
    let mut workloads: Vec<(String, BTreeMap<String, String>)> =
        vec![("default".into(), BTreeMap::new())];
    for (document, r) in resources {
        match r {
            Resource::Smi(p) => match p.as_ref() {
                Pending::RouteGroup(g) => groups.push(g),
                Pending::Split(s) => splits.push((*document, s)),
            },
            Resource::PeerAuthentication(p) => {
                workloads.push((
                    p.source.namespace.clone(),
                    p.selector.clone().unwrap_or_default(),
                ));
                peer.push(p.as_ref());
            }
            Resource::RequestAuthentication(p) => {
                workloads.push((
                    p.source.namespace.clone(),
                    p.selector.clone().unwrap_or_default(),
                ));
                request.push(p.as_ref().clone());
            }
            Resource::Telemetry(p) => {
                workloads.push((
                    p.source.namespace.clone(),
                    p.selector.clone().unwrap_or_default(),
                ));
                telemetry_policies.push(p.as_ref().clone());
            }
            _ => {}
        }
    }
    let group_refs: Vec<_> = groups.iter().map(|g| &**g).collect();
    for (document, split) in splits {
        if let Err(e) = smi::resolve(split, &group_refs, FILE, document) {
            check_error(&e);
        }
    }
    // Bounded: a document can name many workloads, and each costs a pass over the policies.
    for (namespace, labels) in workloads.iter().take(16) {
        let _ = peer_authentication::inbound_mtls(&peer, "istio-system", namespace, labels);
        let _ = peer_authentication::inbound_mtls_dry_run(&peer, "istio-system", namespace, labels);
        let _ = request_authentication::jwt_rules_for(
            &request,
            "istio-system",
            namespace,
            labels,
            &BTreeMap::new(),
        );
        let _ = telemetry::effective(&telemetry_policies, "istio-system", namespace, labels);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::check_config;
    use crate::input::Rng;

    /// The seed corpus (fuzz/corpus/config_adapters): the config crate's own fixtures, some of
    /// the shared Bookinfo corpus, and seeds of the security, telemetry and GRPCRoute kinds.
    fn seeds() -> Vec<Vec<u8>> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        let dir = root.join("corpus/config_adapters");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            panic!("no seed directory {}", dir.display());
        };
        for entry in entries.flatten() {
            files.push(entry.path());
        }
        files.sort();
        files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
    }

    /// Values that have broken parsers before, one a line: the config crate's robustness test
    /// reads the same file.
    const HOSTILE: &str = include_str!("../../crates/config/tests/hostile-values.txt");

    #[test]
    fn seeded_random_inputs() {
        let seeds = seeds();
        assert!(seeds.len() >= 30, "only {} seeds", seeds.len());
        let mut rng = Rng(0xc0f1_6ad4_2026_0012);
        let hostile: Vec<&str> = HOSTILE.lines().collect();
        // Bounded: about 6,000 parses of small files, a few seconds in debug.
        for seed in &seeds {
            check_config(seed);
            let text = String::from_utf8_lossy(seed);
            let lines: Vec<&str> = text.lines().collect();
            for _ in 0..60 {
                let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                let at = rng.below(out.len());
                match rng.below(4) {
                    0 if !out.is_empty() => {
                        out.remove(at);
                    }
                    1 if !out.is_empty() => {
                        if let Some((key, _)) = out[at].split_once(": ") {
                            out[at] = format!("{key}: {}", hostile[rng.below(hostile.len())]);
                        }
                    }
                    2 if !out.is_empty() => {
                        let copy = out[rng.below(out.len())].clone();
                        out.insert(at, copy);
                    }
                    _ => {
                        let bytes = rng.mutate(out.join("\n").as_bytes());
                        check_config(&bytes);
                        continue;
                    }
                }
                check_config(out.join("\n").as_bytes());
            }
        }
    }

    #[test]
    fn several_kinds_in_one_file() {
        let all: Vec<u8> = seeds().join(&b"\n---\n"[..]);
        check_config(&all);
    }
}
