//! One broken field per file under tests/fixtures/invalid/: each is refused with an error that
//! names the file, the resource and the exact field path.

#![allow(clippy::unwrap_used)]
use std::path::Path;

use trellis_config::{Outcome, parse_documents};

const EXPECTED: &[(&str, &str)] = &[
    (
        "dr-duplicate-subset.yaml",
        "dr-duplicate-subset.yaml: DestinationRule default/reviews: spec.subsets[1].name: duplicate subset \"v1\"",
    ),
    (
        "dr-ejection.yaml",
        "dr-ejection.yaml: DestinationRule default/reviews: spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be 0-100, got 150",
    ),
    (
        "dr-passthrough.yaml",
        "dr-passthrough.yaml: DestinationRule default/reviews: spec.trafficPolicy.loadBalancer.simple: PASSTHROUGH is not supported yet (it bypasses balancing and needs ServiceEntry)",
    ),
    (
        "dr-tls-mutual.yaml",
        "dr-tls-mutual.yaml: DestinationRule default/reviews: spec.subsets[0].trafficPolicy.tls.privateKey: is required with mode MUTUAL (a path to a PEM file on the proxy)",
    ),
    (
        "dr-tls-simple-san.yaml",
        "dr-tls-simple-san.yaml: DestinationRule default/reviews: spec.trafficPolicy.tls.subjectAltNames[1]: \"\" is not a DNS name, URI or IP address",
    ),
    (
        "httproute-cross-namespace.yaml",
        "httproute-cross-namespace.yaml: HTTPRoute default/reviews: spec.rules[0].backendRefs[0].namespace: a backend in another namespace on a route with a Service parent (ReferenceGrant is checked for Gateway parents only) is not supported yet",
    ),
    (
        "httproute-path.yaml",
        "httproute-path.yaml: HTTPRoute default/reviews: spec.rules[0].matches[0].path.type: must be Exact, PathPrefix or RegularExpression, got \"Prefix\"",
    ),
    (
        "httproute-weight.yaml",
        "httproute-weight.yaml: HTTPRoute default/reviews: spec.rules[0].backendRefs[0].weight: must be 0-1000000, got -1",
    ),
    (
        "httproutegroup-method.yaml",
        "httproutegroup-method.yaml: HTTPRouteGroup default/reviews-users: spec.matches[0].methods[1]: must be an HTTP method (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, CONNECT, TRACE) or *, got \"FETCH\"",
    ),
    (
        "httproutegroup-regex.yaml",
        "httproutegroup-regex.yaml: HTTPRouteGroup default/reviews-users: spec.matches[0].headers.end-user: invalid regex: unclosed character class",
    ),
    (
        "serviceprofile-not.yaml",
        "serviceprofile-not.yaml: ServiceProfile default/reviews.default.svc.cluster.local: spec.routes[0].condition.not: is not supported yet",
    ),
    (
        "trafficsplit-matches.yaml",
        "trafficsplit-matches.yaml: TrafficSplit default/reviews: spec.matches[0].kind: must be HTTPRouteGroup, got \"TCPRoute\"",
    ),
    (
        "trafficsplit-weight.yaml",
        "trafficsplit-weight.yaml: TrafficSplit default/reviews: spec.backends[0].weight: must be a non-negative integer or quantity like 900m, got \"lots\"",
    ),
    (
        "vs-abort-status.yaml",
        "vs-abort-status.yaml: VirtualService default/reviews: spec.http[0].fault.abort.httpStatus: must be 200-599, got 700",
    ),
    (
        "vs-delegate.yaml",
        "vs-delegate.yaml: VirtualService default/reviews: spec.http[0].delegate: delegation is not supported yet",
    ),
    (
        "vs-fault-percent.yaml",
        "vs-fault-percent.yaml: VirtualService default/reviews: spec.http[0].fault.delay.percentage.value: must be 0-100, got 150",
    ),
    (
        "vs-regex.yaml",
        "vs-regex.yaml: VirtualService default/reviews: spec.http[0].match[0].uri.regex: invalid regex: unclosed character class",
    ),
    (
        "vs-retry-on.yaml",
        "vs-retry-on.yaml: VirtualService default/reviews: spec.http[0].retries.retryOn: unknown retry condition \"sometimes\" (expected 5xx, gateway-error, connect-failure, refused-stream, reset, retriable-4xx, retriable-status-codes, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable, or an HTTP status)",
    ),
    (
        "vs-timeout.yaml",
        "vs-timeout.yaml: VirtualService default/reviews: spec.http[0].timeout: must be a duration like 7s, 500ms or 1h30m, got \"10 seconds\"",
    ),
    (
        "vs-unknown-field.yaml",
        "vs-unknown-field.yaml: VirtualService default/reviews: spec.http[0].rout: unknown field `rout`, expected one of `name`, `match`, `route`, `redirect`, `directResponse`, `delegate`, `rewrite`, `timeout`, `retries`, `fault`, `mirror`, `mirrorPercentage`, `mirrorPercent`, `mirrors`, `corsPolicy`, `headers`",
    ),
    (
        "vs-weight-range.yaml",
        "vs-weight-range.yaml: VirtualService default/reviews: spec.http[0].route[1].weight: must be 0-100, got 120",
    ),
    (
        "vs-weight-sum.yaml",
        "vs-weight-sum.yaml: VirtualService default/reviews: spec.http[0].route: weights must sum to 100 when there is more than one destination, got 90",
    ),
    (
        "vs-wildcard-destination.yaml",
        "vs-wildcard-destination.yaml: VirtualService default/reviews: spec.http[0].route[0].destination.host: \"*.example.com\" is a wildcard or not a DNS name: not a Service or ServiceEntry host",
    ),
];

fn error_of(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/invalid")
        .join(file);
    let docs = parse_documents(file, &std::fs::read(path).unwrap());
    assert_eq!(docs.len(), 1, "{file}");
    match &docs[0].outcome {
        Outcome::Invalid(err) => err.to_string(),
        other => panic!("{file}: expected an error, got {other:?}"),
    }
}

#[test]
fn every_invalid_fixture_has_its_exact_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut got = Vec::new();
    for file in &files {
        got.push((file.clone(), error_of(file)));
    }
    if std::env::var_os("PRINT_ERRORS").is_some() {
        for (f, e) in &got {
            println!("    ({f:?}, {e:?}),");
        }
    }
    let want: Vec<(String, String)> = EXPECTED
        .iter()
        .map(|(f, e)| (f.to_string(), e.to_string()))
        .collect();
    assert_eq!(got, want);
}
