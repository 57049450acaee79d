//! Golden files: real-world YAML in, the translated model out.
//!
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p trellis-config --test golden` and review the
//! diff. Fixtures are Istio's Bookinfo sample (Apache-2.0), copied so the tests stand alone.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
use std::path::Path;

use serde_json::{Value, json};
use trellis_config::{Outcome, Resource, parse_documents};

fn render(file: &str, bytes: &[u8]) -> Value {
    let docs = parse_documents(file, bytes);
    Value::Array(
        docs.into_iter()
            .map(|doc| {
                let r = &doc.resource;
                let head = json!({
                    "document": r.document, "kind": r.kind, "namespace": r.namespace, "name": r.name,
                });
                let tail = match doc.outcome {
                    Outcome::Resource(Resource::Service(svc)) => {
                        json!({"status": "Accepted", "service": svc})
                    }
                    Outcome::Resource(Resource::Routes(routes)) => {
                        json!({"status": "Accepted", "routes": routes})
                    }
                    Outcome::Resource(Resource::DestinationPolicy(policy)) => {
                        json!({"status": "Accepted", "destination_policy": policy})
                    }
                    Outcome::Resource(Resource::PeerAuthentication(policy)) => {
                        json!({"status": "Accepted", "peer_authentication": policy})
                    }
                    Outcome::Resource(Resource::AuthorizationPolicy(policy)) => {
                        json!({"status": "Accepted", "authorization_policy": policy})
                    }
                    Outcome::Resource(Resource::RequestAuthentication(policy)) => {
                        json!({"status": "Accepted", "request_authentication": policy})
                    }
                    Outcome::Resource(Resource::Telemetry(policy)) => {
                        json!({"status": "Accepted", "telemetry": policy})
                    }
                    Outcome::Resource(Resource::RateLimitPolicy(policy)) => {
                        json!({"status": "Accepted", "rate_limit_policy": policy})
                    }
                    Outcome::Resource(Resource::WasmPlugin(plugin)) => {
                        json!({"status": "Accepted", "wasm_plugin": plugin})
                    }
                    Outcome::Resource(Resource::ServiceEntry(entry)) => {
                        json!({"status": "Accepted", "service_entry": entry})
                    }
                    Outcome::Resource(Resource::Smi(pending)) => {
                        json!({"status": "Accepted", "smi": pending})
                    }
                    Outcome::Resource(Resource::Gateway(gateway)) => {
                        json!({"status": "Accepted", "gateway": gateway})
                    }
                    Outcome::Resource(Resource::MeshConfig(mesh)) => {
                        json!({"status": "Accepted", "mesh_config": mesh})
                    }
                    Outcome::Resource(Resource::Multicluster(r)) => {
                        json!({"status": "Accepted", "multicluster": format!("{r:?}")})
                    }
                    Outcome::Ignored { reason } => json!({"status": "Ignored", "reason": reason}),
                    Outcome::Invalid(err) => json!({"status": "Invalid", "error": err.to_string()}),
                };
                let mut out = head;
                if let (Some(o), Some(t)) = (out.as_object_mut(), tail.as_object()) {
                    o.extend(t.clone());
                }
                out
            })
            .collect(),
    )
}

fn check(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let input = std::fs::read(dir.join("fixtures").join(format!("{name}.yaml"))).unwrap();
    let file = Path::new(name).file_name().unwrap().to_string_lossy();
    let got = render(&format!("{file}.yaml"), &input);
    let golden = dir.join("golden").join(format!("{name}.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: Value = serde_json::from_slice(&std::fs::read(&golden).unwrap()).unwrap();
    assert_eq!(
        got,
        want,
        "{name}: output differs from {}",
        golden.display()
    );
}

#[test]
fn bookinfo() {
    check("bookinfo");
}

#[test]
fn bookinfo_versions() {
    check("bookinfo-versions");
}

/// Every file of a fixture directory against its golden file.
fn check_dir(sub: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(sub);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".yaml").map(str::to_string))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no fixtures in {}", dir.display());
    for name in names {
        check(&format!("{sub}/{name}"));
    }
}

#[test]
fn bookinfo_networking() {
    check_dir("networking");
}

#[test]
fn bookinfo_gateway_api() {
    check_dir("gateway-api");
}

#[test]
fn traffic() {
    check_dir("traffic");
}

/// SMI TrafficSplit `matches` resolved against the HTTPRouteGroups of the fixture, as the
/// control plane resolves them across the config set.
#[test]
fn smi_matches_resolved() {
    use trellis_config::smi::{Pending, resolve};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let file = "smi-matches.yaml";
    let input = std::fs::read(dir.join("fixtures/traffic").join(file)).unwrap();
    let docs = parse_documents(file, &input);
    let pending = |d: &trellis_config::Document| match &d.outcome {
        Outcome::Resource(Resource::Smi(p)) => Some((d.resource.document, (**p).clone())),
        _ => None,
    };
    let all: Vec<(usize, Pending)> = docs.iter().filter_map(pending).collect();
    let groups: Vec<_> = all
        .iter()
        .filter_map(|(_, p)| match p {
            Pending::RouteGroup(g) => Some(g),
            Pending::Split(_) => None,
        })
        .collect();
    let resolved: Vec<Value> = all
        .iter()
        .filter_map(|(doc, p)| match p {
            Pending::Split(s) => Some(json!(resolve(s, &groups, file, *doc).unwrap())),
            Pending::RouteGroup(_) => None,
        })
        .collect();
    assert_eq!(resolved.len(), 2, "two splits with matches in {file}");
    let got = Value::Array(resolved);
    let golden = dir.join("golden/traffic/smi-matches.resolved.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: Value = serde_json::from_slice(&std::fs::read(&golden).unwrap()).unwrap();
    assert_eq!(got, want, "output differs from {}", golden.display());
}
