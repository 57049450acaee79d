//! Table-driven tests of the evaluation semantics. Each case is named after the rule it checks;
//! policies are written in the wire JSON (the field names of Istio's YAML).

use std::net::IpAddr;

use serde_json::json;

use super::*;
use crate::authn::RequestAuth;

const PRODUCTPAGE: &str = "cluster.local/ns/default/sa/bookinfo-productpage";
const SLEEP: &str = "cluster.local/ns/other/sa/sleep";

/// A request as a table row describes it.
#[derive(Clone)]
struct Req {
    principal: Option<&'static str>,
    ip: &'static str,
    port: u16,
    /// `None`: TCP.
    http: Option<(&'static str, &'static str)>,
    headers: Vec<(&'static str, &'static str)>,
    auth: Option<RequestAuth>,
}

fn http(method: &'static str, path: &'static str) -> Req {
    Req {
        principal: Some(PRODUCTPAGE),
        ip: "10.0.0.7",
        port: 9080,
        http: Some((method, path)),
        headers: vec![],
        auth: None,
    }
}

fn get(path: &'static str) -> Req {
    http("GET", path)
}

impl Req {
    fn from(mut self, principal: Option<&'static str>) -> Self {
        self.principal = principal;
        self
    }
    fn tcp(mut self) -> Self {
        self.http = None;
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
    fn ip(mut self, ip: &'static str) -> Self {
        self.ip = ip;
        self
    }
    fn jwt(mut self, claims: serde_json::Value) -> Self {
        let claims = claims.as_object().cloned().unwrap_or_default();
        self.auth = Some(RequestAuth {
            principal: format!(
                "{}/{}",
                claims["iss"].as_str().unwrap(),
                claims["sub"].as_str().unwrap()
            ),
            audiences: vec!["bookinfo".into()],
            presenter: Some("web".into()),
            claims,
        });
        self
    }

    fn decide(&self, authz: &WorkloadAuthz) -> Decision {
        let mut headers = http::HeaderMap::new();
        for (k, v) in &self.headers {
            headers.append(*k, v.parse().unwrap());
        }
        let ip: IpAddr = self.ip.parse().unwrap();
        let req = Request {
            peer_principal: self.principal,
            source_namespace: self.principal.and_then(pattern::namespace_of_principal),
            source_ip: Some(ip),
            remote_ip: Some(ip),
            destination_ip: Some("10.0.0.9".parse().unwrap()),
            destination_port: self.port,
            sni: None,
            http: self.http.map(|(method, path)| HttpAttributes {
                host: "reviews.default.svc.cluster.local:9080",
                method,
                path,
                headers: &headers,
                auth: self.auth.as_ref(),
            }),
        };
        evaluate(authz, &req)
    }
}

fn policies(default: DefaultPolicy, list: serde_json::Value) -> WorkloadAuthz {
    WorkloadAuthz {
        default,
        cluster_networks: vec![],
        policies: serde_json::from_value(list).unwrap(),
    }
}

fn p(name: &str, action: &str, rules: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "action": action, "rules": rules})
}

/// (case name, policies, request, allowed)
fn table() -> Vec<(&'static str, WorkloadAuthz, Req, bool)> {
    let d = DefaultPolicy::AllUnauthenticated;
    let only_productpage = policies(
        d,
        json!([p(
            "default/reviews",
            "ALLOW",
            json!([{"from": [{"principals": [PRODUCTPAGE]}]}])
        )]),
    );
    let deny_ratings_get = policies(
        d,
        json!([p(
            "default/ratings",
            "DENY",
            json!([{"from": [{"namespaces": ["default"]}], "to": [{"methods": ["GET"], "paths": ["/ratings/*"]}]}])
        )]),
    );
    let not_paths = policies(
        d,
        json!([p(
            "default/np",
            "ALLOW",
            json!([{"to": [{"notPaths": ["/admin/*"]}]}])
        )]),
    );
    let allow_and_deny = policies(
        d,
        json!([
            p("default/allow-all", "ALLOW", json!([{}])),
            p(
                "default/deny-sleep",
                "DENY",
                json!([{"from": [{"principals": [SLEEP]}]}])
            )
        ]),
    );
    let two_allows = policies(
        d,
        json!([
            p("default/a", "ALLOW", json!([{"to": [{"paths": ["/a"]}]}])),
            p("default/b", "ALLOW", json!([{"to": [{"paths": ["/b"]}]}]))
        ]),
    );
    vec![
        (
            "no_policy_allows_all",
            policies(d, json!([])),
            get("/"),
            true,
        ),
        (
            "no_policy_allows_plaintext",
            policies(d, json!([])),
            get("/").from(None),
            true,
        ),
        (
            "empty_spec_allow_denies_all",
            policies(d, json!([{"name": "default/x", "action": "ALLOW"}])),
            get("/"),
            false,
        ),
        (
            "empty_spec_deny_denies_nothing",
            policies(d, json!([{"name": "default/x", "action": "DENY"}])),
            get("/"),
            true,
        ),
        (
            "rules_with_one_empty_rule_allow_all",
            policies(d, json!([p("default/x", "ALLOW", json!([{}]))])),
            get("/").from(None),
            true,
        ),
        (
            "empty_from_matches_any_source",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"from": [], "to": [{"paths": ["/ok"]}]}])
                )]),
            ),
            get("/ok").from(None),
            true,
        ),
        (
            "principal_allowed",
            only_productpage.clone(),
            get("/reviews/0"),
            true,
        ),
        (
            "other_principal_denied_by_allow",
            only_productpage.clone(),
            get("/reviews/0").from(Some(SLEEP)),
            false,
        ),
        (
            "plaintext_denied_by_principal_allow",
            only_productpage.clone(),
            get("/").from(None),
            false,
        ),
        (
            "star_principal_needs_mtls",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"from": [{"principals": ["*"]}]}])
                )]),
            ),
            get("/").from(None),
            false,
        ),
        (
            "star_principal_any_mtls_peer",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"from": [{"principals": ["*"]}]}])
                )]),
            ),
            get("/").from(Some(SLEEP)),
            true,
        ),
        (
            "principal_suffix_star",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"from": [{"principals": ["*/sa/sleep"]}]}])
                )]),
            ),
            get("/").from(Some(SLEEP)),
            true,
        ),
        (
            "principal_prefix_star",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"from": [{"principals": ["cluster.local/ns/default/*"]}]}])
                )]),
            ),
            get("/").from(Some(SLEEP)),
            false,
        ),
        (
            "not_principals_plaintext_matches",
            policies(
                d,
                json!([p(
                    "default/x",
                    "DENY",
                    json!([{"from": [{"notPrincipals": ["*"]}]}])
                )]),
            ),
            get("/").from(None),
            false,
        ),
        (
            "not_principals_mtls_passes",
            policies(
                d,
                json!([p(
                    "default/x",
                    "DENY",
                    json!([{"from": [{"notPrincipals": ["*"]}]}])
                )]),
            ),
            get("/"),
            true,
        ),
        (
            "deny_get_ratings_from_default",
            deny_ratings_get.clone(),
            get("/ratings/0"),
            false,
        ),
        (
            "deny_needs_every_field_method",
            deny_ratings_get.clone(),
            http("POST", "/ratings/0"),
            true,
        ),
        (
            "deny_needs_every_field_namespace",
            deny_ratings_get.clone(),
            get("/ratings/0").from(Some(SLEEP)),
            true,
        ),
        (
            "deny_prefix_path_not_parent",
            deny_ratings_get.clone(),
            get("/ratings"),
            true,
        ),
        (
            "not_paths_allows_others",
            not_paths.clone(),
            get("/public"),
            true,
        ),
        (
            "not_paths_denies_listed",
            not_paths.clone(),
            get("/admin/users"),
            false,
        ),
        (
            "suffix_path",
            policies(
                d,
                json!([p(
                    "default/x",
                    "DENY",
                    json!([{"to": [{"paths": ["*.php"]}]}])
                )]),
            ),
            get("/x/index.php"),
            false,
        ),
        (
            "not_methods",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"to": [{"notMethods": ["DELETE"]}]}])
                )]),
            ),
            http("DELETE", "/"),
            false,
        ),
        (
            "hosts_case_insensitive_and_port",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"to": [{"hosts": ["Reviews.default.svc.cluster.local"]}]}])
                )]),
            ),
            get("/"),
            true,
        ),
        (
            "ports_match_destination_port",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"to": [{"ports": [9090]}]}])
                )]),
            ),
            get("/"),
            false,
        ),
        (
            "not_ports",
            policies(
                d,
                json!([p(
                    "default/x",
                    "DENY",
                    json!([{"to": [{"notPorts": [9090]}]}])
                )]),
            ),
            get("/"),
            false,
        ),
        (
            "ip_blocks",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"from": [{"ipBlocks": ["10.0.0.0/24"]}]}])
                )]),
            ),
            get("/").ip("10.0.1.1"),
            false,
        ),
        (
            "not_ip_blocks",
            policies(
                d,
                json!([p(
                    "default/x",
                    "DENY",
                    json!([{"from": [{"notIpBlocks": ["10.0.0.0/8"]}]}])
                )]),
            ),
            get("/").ip("192.168.1.1"),
            false,
        ),
        (
            "remote_ip_blocks",
            policies(
                d,
                json!([p(
                    "default/x",
                    "DENY",
                    json!([{"from": [{"remoteIpBlocks": ["10.0.0.7"]}]}])
                )]),
            ),
            get("/"),
            false,
        ),
        (
            "several_policies_deny_wins_over_allow",
            allow_and_deny.clone(),
            get("/").from(Some(SLEEP)),
            false,
        ),
        (
            "several_policies_allow_when_deny_misses",
            allow_and_deny,
            get("/"),
            true,
        ),
        (
            "several_allow_policies_any_allows",
            two_allows.clone(),
            get("/b"),
            true,
        ),
        (
            "several_allow_policies_none_matches",
            two_allows,
            get("/c"),
            false,
        ),
        (
            "sources_or_fields_and",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"from": [{"principals": [SLEEP]}, {"namespaces": ["default"]}]}])
                )]),
            ),
            get("/"),
            true,
        ),
        (
            "when_header_value",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"when": [{"key": {"request_header": "end-user"}, "values": {"patterns": ["jason"]}, "not_values": {"patterns": []}}]}])
                )]),
            ),
            get("/").header("end-user", "jason"),
            true,
        ),
        (
            "when_header_absent",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"when": [{"key": {"request_header": "end-user"}, "values": {"patterns": ["*"]}, "not_values": {"patterns": []}}]}])
                )]),
            ),
            get("/"),
            false,
        ),
        (
            "when_not_values",
            policies(
                d,
                json!([p(
                    "default/x",
                    "DENY",
                    json!([{"when": [{"key": "source_namespace", "values": {"patterns": []}, "not_values": {"patterns": ["default"]}}]}])
                )]),
            ),
            get("/").from(Some(SLEEP)),
            false,
        ),
        (
            "when_source_ip",
            policies(
                d,
                json!([p(
                    "default/x",
                    "DENY",
                    json!([{"when": [{"key": "source_ip", "values": {"cidrs": ["10.0.0.0/16"]}, "not_values": {"cidrs": []}}]}])
                )]),
            ),
            get("/"),
            false,
        ),
        (
            "when_destination_port",
            policies(
                d,
                json!([p(
                    "default/x",
                    "DENY",
                    json!([{"when": [{"key": "destination_port", "values": {"patterns": ["9080"]}, "not_values": {"patterns": []}}]}])
                )]),
            ),
            get("/"),
            false,
        ),
        (
            "when_claim_matches",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"when": [{"key": {"claim": ["groups"]}, "values": {"patterns": ["admins"]}, "not_values": {"patterns": []}}]}])
                )]),
            ),
            get("/").jwt(json!({"iss": "i", "sub": "s", "groups": ["users", "admins"]})),
            true,
        ),
        (
            "when_nested_claim",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"when": [{"key": {"claim": ["realm", "role"]}, "values": {"patterns": ["ops"]}, "not_values": {"patterns": []}}]}])
                )]),
            ),
            get("/").jwt(json!({"iss": "i", "sub": "s", "realm": {"role": "ops"}})),
            true,
        ),
        (
            "when_claim_without_token",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"when": [{"key": {"claim": ["groups"]}, "values": {"patterns": ["admins"]}, "not_values": {"patterns": []}}]}])
                )]),
            ),
            get("/"),
            false,
        ),
        (
            "request_principals_star_needs_token",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"from": [{"requestPrincipals": ["*"]}]}])
                )]),
            ),
            get("/"),
            false,
        ),
        (
            "request_principals_exact",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"from": [{"requestPrincipals": ["https://issuer/alice"]}]}])
                )]),
            ),
            get("/").jwt(json!({"iss": "https://issuer", "sub": "alice"})),
            true,
        ),
        (
            "tcp_allow_rule_with_http_fields_never_matches",
            policies(
                d,
                json!([p(
                    "default/x",
                    "ALLOW",
                    json!([{"from": [{"principals": [PRODUCTPAGE]}], "to": [{"methods": ["GET"]}]}])
                )]),
            ),
            get("/").tcp(),
            false,
        ),
        (
            "tcp_allow_rule_l4_only_matches",
            only_productpage.clone(),
            get("/").tcp(),
            true,
        ),
        (
            "tcp_deny_keeps_l4_part",
            deny_ratings_get.clone(),
            get("/").tcp(),
            false,
        ),
        (
            "tcp_deny_keeps_l4_part_other_namespace",
            deny_ratings_get,
            get("/").tcp().from(Some(SLEEP)),
            true,
        ),
        (
            "tcp_deny_http_only_condition_ignored",
            policies(
                d,
                json!([p(
                    "default/x",
                    "DENY",
                    json!([{"when": [{"key": {"request_header": "x"}, "values": {"patterns": ["y"]}, "not_values": {"patterns": []}}]}])
                )]),
            ),
            get("/").tcp(),
            false,
        ),
        (
            "audit_never_blocks",
            policies(d, json!([p("default/x", "AUDIT", json!([{}]))])),
            get("/"),
            true,
        ),
        (
            "dry_run_deny_not_enforced",
            policies(
                d,
                json!([{"name": "default/x", "action": "DENY", "rules": [{}], "dry_run": true}]),
            ),
            get("/"),
            true,
        ),
        (
            "dry_run_allow_does_not_trigger_deny_all",
            policies(
                d,
                json!([{"name": "default/x", "action": "ALLOW", "rules": [{"to": [{"paths": ["/x"]}]}], "dry_run": true}]),
            ),
            get("/"),
            true,
        ),
        (
            "default_deny",
            policies(DefaultPolicy::Deny, json!([])),
            get("/"),
            false,
        ),
        (
            "default_deny_overridden_by_allow_policy",
            policies(
                DefaultPolicy::Deny,
                json!([p("default/x", "ALLOW", json!([{}]))]),
            ),
            get("/"),
            true,
        ),
        (
            "default_all_authenticated_plaintext",
            policies(DefaultPolicy::AllAuthenticated, json!([])),
            get("/").from(None),
            false,
        ),
        (
            "default_all_authenticated_mtls",
            policies(DefaultPolicy::AllAuthenticated, json!([])),
            get("/"),
            true,
        ),
        (
            "default_cluster_authenticated_outside",
            policies(DefaultPolicy::ClusterAuthenticated, json!([])),
            get("/").ip("8.8.8.8"),
            false,
        ),
        (
            "default_cluster_authenticated_inside",
            policies(DefaultPolicy::ClusterAuthenticated, json!([])),
            get("/"),
            true,
        ),
        (
            "default_audit_allows_plaintext",
            policies(DefaultPolicy::Audit, json!([])),
            get("/").from(None),
            true,
        ),
    ]
}

#[test]
fn semantics_table() {
    let mut failed = Vec::new();
    for (name, authz, req, want) in table() {
        let got = req.decide(&authz);
        if got.allowed != want {
            failed.push(format!("{name}: want allowed={want}, got {got:?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn decision_names_policy_and_rule() {
    let authz = policies(
        DefaultPolicy::AllUnauthenticated,
        json!([
            p(
                "default/a",
                "ALLOW",
                json!([{"to": [{"paths": ["/x"]}]}, {"to": [{"paths": ["/y"]}]}])
            ),
            p(
                "default/audit",
                "AUDIT",
                json!([{"to": [{"paths": ["/nope"]}]}, {}])
            ),
            p("default/d", "DENY", json!([{"to": [{"paths": ["/z"]}]}]))
        ]),
    );
    let d = get("/y").decide(&authz);
    assert_eq!(d.reason, Reason::Allowed(Hit { policy: 0, rule: 1 }));
    assert_eq!(d.audits, vec![Hit { policy: 1, rule: 1 }]);
    let d = get("/z").decide(&authz);
    assert_eq!(d.reason, Reason::Denied(Hit { policy: 2, rule: 0 }));
    let d = get("/q").decide(&authz);
    assert_eq!(d.reason, Reason::NoAllowMatched { first_allow: 0 });
}

#[test]
fn dry_run_reports_what_would_be_denied() {
    let authz = policies(
        DefaultPolicy::AllUnauthenticated,
        json!([{"name": "default/x", "action": "DENY", "rules": [{"to": [{"paths": ["/z"]}]}], "dry_run": true}]),
    );
    let d = get("/z").decide(&authz);
    assert!(d.allowed);
    assert_eq!(
        d.dry_run_denied,
        Some(Reason::Denied(Hit { policy: 0, rule: 0 }))
    );
    assert_eq!(get("/a").decide(&authz).dry_run_denied, None);
}

#[test]
fn default_audit_reports_unauthenticated() {
    let authz = policies(DefaultPolicy::Audit, json!([]));
    assert!(get("/").from(None).decide(&authz).default_audit);
    assert!(!get("/").decide(&authz).default_audit);
}

#[test]
fn scope_mesh_namespace_selector_and_target_refs() {
    let labels = |app: &str| [("app".to_string(), app.to_string())].into();
    let services = [crate::ServiceKey::new("default", "reviews")];
    let mesh = Scope {
        namespace: "trellis-system".into(),
        ..Scope::default()
    };
    assert!(mesh.covers("trellis-system", "default", &labels("x"), &[]));
    let ns = Scope {
        namespace: "default".into(),
        ..Scope::default()
    };
    assert!(ns.covers("trellis-system", "default", &labels("x"), &[]));
    assert!(!ns.covers("trellis-system", "other", &labels("x"), &[]));
    let sel = Scope {
        namespace: "default".into(),
        selector: Some(labels("reviews")),
        services: vec![],
    };
    assert!(sel.covers("trellis-system", "default", &labels("reviews"), &[]));
    assert!(!sel.covers("trellis-system", "default", &labels("ratings"), &[]));
    let root_sel = Scope {
        namespace: "trellis-system".into(),
        ..sel.clone()
    };
    assert!(root_sel.covers("trellis-system", "other", &labels("reviews"), &[]));
    let target = Scope {
        namespace: "default".into(),
        selector: None,
        services: vec!["reviews".into()],
    };
    assert!(target.covers("trellis-system", "default", &labels("x"), &services));
    assert!(!target.covers("trellis-system", "default", &labels("x"), &[]));
}

#[test]
fn wire_json_round_trips() {
    let authz = policies(
        DefaultPolicy::Deny,
        json!([p(
            "default/a",
            "ALLOW",
            json!([{"from": [{"ipBlocks": ["10.0.0.0/8"]}], "when": [{"key": "source_ip", "values": {"cidrs": ["1.2.3.4/32"]}, "not_values": {"cidrs": []}}]}])
        )]),
    );
    let text = serde_json::to_string(&authz).unwrap();
    let back: WorkloadAuthz = serde_json::from_str(&text).unwrap();
    assert_eq!(back, authz);
}
