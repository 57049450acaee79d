//! SMI TrafficSplits with `matches`, resolved against HTTPRouteGroups of other files of the
//! config set: YAML in, routes and status rows out.

use std::collections::BTreeMap;

use trellis_config::parse_documents;
use trellis_model::matching::RequestView;
use trellis_model::route::{RouteAction, select_route};

use super::*;
use crate::store::{ConfigIndex, ConfigSnapshot, Status};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/tests/fixtures");
const CLI_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/tests/fixtures/traffic");

fn read(path: String) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn snapshot(files: &[(&str, String)]) -> ConfigSnapshot {
    let mut index = ConfigIndex::default();
    for (name, yaml) in files {
        index.apply(name, parse_documents(name, yaml.as_bytes()));
    }
    index.snapshot()
}

fn bookinfo() -> Vec<(&'static str, String)> {
    vec![
        ("bookinfo.yaml", read(format!("{FIXTURES}/bookinfo.yaml"))),
        (
            "versions.yaml",
            read(format!("{FIXTURES}/bookinfo-versions.yaml")),
        ),
    ]
}

fn compile_reviews(snap: &ConfigSnapshot) -> Destination {
    let view = MeshView {
        services: &snap.services,
        traffic: &snap.traffic,
        workloads: &[],
        trust_domain: "cluster.local",
    };
    compile(view, &"reviews.default:9080".parse().unwrap()).unwrap()
}

/// The backend services the route a request selects forwards to; `None`: no route, so the
/// proxy sends it to the root service's own endpoints.
fn routed(dest: &Destination, user: Option<&str>) -> Option<Vec<String>> {
    let mut headers = http::HeaderMap::new();
    if let Some(user) = user {
        headers.insert("end-user", user.parse().unwrap());
    }
    let labels = BTreeMap::new();
    let view = RequestView {
        method: "GET",
        path: "/reviews/0",
        query: None,
        authority: "reviews:9080",
        headers: &headers,
        port: 9080,
        source_labels: &labels,
        source_namespace: "default",
    };
    let (_, route) = select_route(&dest.routes, &view)?;
    match &route.action {
        RouteAction::Forward(bs) => {
            Some(bs.iter().map(|b| b.backend.service.name.clone()).collect())
        }
        other => panic!("expected forward, got {other:?}"),
    }
}

fn row(snap: &ConfigSnapshot, name: &str) -> (Status, Option<String>) {
    let r = snap
        .resources
        .iter()
        .find(|r| r.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no status row for {name}"));
    (r.status, r.message.clone())
}

const SPLIT_JASON: &str = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: reviews-jason}\nspec:\n  service: reviews\n  matches:\n  - {kind: HTTPRouteGroup, name: reviews-users, matches: [jason]}\n  backends:\n  - {service: reviews-v2, weight: 100}\n";

#[test]
fn jason_to_v2_others_to_v3_with_the_group_in_another_file() {
    let mut files = bookinfo();
    files.push((
        "group.yaml",
        read(format!("{CLI_FIXTURES}/httproutegroup-reviews-jason.yaml")),
    ));
    files.push((
        "split.yaml",
        read(format!(
            "{CLI_FIXTURES}/trafficsplit-reviews-jason-v2-v3.yaml"
        )),
    ));
    let snap = snapshot(&files);
    for name in ["reviews-users", "reviews-jason", "reviews-others"] {
        assert_eq!(row(&snap, name), (Status::Accepted, None), "{name}");
    }
    let dest = compile_reviews(&snap);
    assert_eq!(
        routed(&dest, Some("jason")),
        Some(vec!["reviews-v2".into()])
    );
    assert_eq!(routed(&dest, Some("bob")), Some(vec!["reviews-v3".into()]));
    assert_eq!(routed(&dest, None), Some(vec!["reviews-v3".into()]));
}

#[test]
fn without_a_catch_all_split_other_requests_have_no_route() {
    let mut files = bookinfo();
    files.push((
        "group.yaml",
        read(format!("{CLI_FIXTURES}/httproutegroup-reviews-jason.yaml")),
    ));
    files.push(("split.yaml", SPLIT_JASON.to_string()));
    let dest = compile_reviews(&snapshot(&files));
    assert_eq!(
        routed(&dest, Some("jason")),
        Some(vec!["reviews-v2".into()])
    );
    // No route: the proxy sends it to reviews' own endpoints, as SMI says.
    assert_eq!(routed(&dest, None), None);
}

#[test]
fn an_unknown_group_or_match_name_is_invalid_and_routes_nothing() {
    let group = read(format!("{CLI_FIXTURES}/httproutegroup-reviews-jason.yaml"));
    let mut files = bookinfo();
    files.push(("split.yaml", SPLIT_JASON.to_string()));
    let snap = snapshot(&files);
    assert_eq!(
        row(&snap, "reviews-jason"),
        (
            Status::Invalid,
            Some("split.yaml: TrafficSplit default/reviews-jason: spec.matches[0].name: HTTPRouteGroup default/reviews-users is not defined in the config set".into())
        )
    );
    assert_eq!(routed(&compile_reviews(&snap), Some("jason")), None);

    let mut files = bookinfo();
    files.push(("group.yaml", group));
    files.push((
        "split.yaml",
        SPLIT_JASON.replace("[jason]", "[jason, mallory]"),
    ));
    let snap = snapshot(&files);
    assert_eq!(
        row(&snap, "reviews-jason"),
        (
            Status::Invalid,
            Some("split.yaml: TrafficSplit default/reviews-jason: spec.matches[0].matches[1]: HTTPRouteGroup default/reviews-users has no match named \"mallory\" (it has: jason, metrics)".into())
        )
    );
    assert_eq!(routed(&compile_reviews(&snap), Some("jason")), None);
}

#[test]
fn a_group_in_another_namespace_does_not_resolve() {
    let group = read(format!("{CLI_FIXTURES}/httproutegroup-reviews-jason.yaml")).replace(
        "name: reviews-users",
        "name: reviews-users\n  namespace: other",
    );
    let mut files = bookinfo();
    files.push(("group.yaml", group));
    files.push(("split.yaml", SPLIT_JASON.to_string()));
    let (status, _) = row(&snapshot(&files), "reviews-jason");
    assert_eq!(status, Status::Invalid);
}
