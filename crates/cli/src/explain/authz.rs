//! The authorization part of `trellis explain`: for each workload the request lands on, the
//! decision its proxy makes, computed with `trellis_model::authz::evaluate` (the function the
//! proxy's inbound side calls) on the request as that proxy receives it: the caller's mTLS
//! principal, the path and authority after the route's rewrite, the headers after its edits,
//! the application port. Which policies a workload has comes from the caller: compiled from the
//! config (`trellis_control::compile::authz::workload_authz`, as discovery does) or read from
//! the destination proxy's own `/config_dump`. Pure: no I/O here.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;
use trellis_model::authz::{
    Decision, DefaultPolicy, Hit, HttpAttributes, Reason, Request as AuthzRequest, WorkloadAuthz,
    evaluate, pattern,
};

/// Where a request lands: one endpoint workload, and the request as its proxy receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Landing {
    pub workload: String,
    pub namespace: String,
    pub address: SocketAddr,
    /// A trellis proxy answers at `address` (otherwise nothing enforces authorization).
    pub meshed: bool,
    /// The application port the calling proxy names (`trellis-target-port`).
    pub target_port: u16,
    /// The authority after the route's rewrite.
    pub authority: String,
    /// The path (no query) after the route's rewrite.
    pub path: String,
    /// The request headers after the route's and the backend's edits.
    pub headers: http::HeaderMap,
}

/// Who calls, as the destination proxy sees the connection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Caller {
    /// The SPIFFE id the mesh assigns the source workload (`spiffe://td/ns/NS/sa/SA`); `None`:
    /// the caller has no mesh identity and connects in plaintext.
    pub spiffe_id: Option<String>,
    /// The caller's address (its registered inbound address's IP).
    pub ip: Option<IpAddr>,
}

/// The `authorization` section of an explanation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Authorization {
    /// The caller's principal in Istio's form (`cluster.local/ns/NS/sa/SA`); `None`: plaintext.
    pub caller: Option<String>,
    /// Where the policies came from (`config`, or `proxy /config_dump`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// One decision per workload the request can land on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadDecision>,
    /// Why nothing was evaluated (the request reaches no workload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkloadDecision {
    pub workload: String,
    pub namespace: String,
    /// `ALLOW`, `DENY`, or `UNKNOWN` (the policies could not be read).
    pub decision: &'static str,
    /// `namespace/name` of the policy that decided; `None` when the default did.
    pub policy: Option<String>,
    /// That policy's action (`ALLOW`, `DENY`), or `DEFAULT`.
    pub action: Option<&'static str>,
    /// The index of the rule that matched, in the policy's `rules`.
    pub rule: Option<usize>,
    /// The default inbound policy of the workload.
    pub default: Option<&'static str>,
    /// The whole decision as a sentence.
    pub reason: String,
    /// What the caller gets on a denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// AUDIT matches and dry-run denials: reported by the proxy, never enforced.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Every policy that covers the workload, `namespace/name (ACTION)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

/// The request the explanation is about, as far as authorization reads it.
#[derive(Clone, Copy, Debug)]
pub struct Asked<'a> {
    pub method: &'a str,
    pub caller: &'a Caller,
}

/// Decides, for every landing, with the policies `authz_of` gives for it (`Err`: why they are
/// not known).
pub fn decide(
    asked: Asked<'_>,
    landings: &[Landing],
    source: &str,
    authz_of: &dyn Fn(&Landing) -> Result<WorkloadAuthz, String>,
) -> Authorization {
    let principal = asked
        .caller
        .spiffe_id
        .as_deref()
        .map(pattern::principal_of_spiffe);
    let workloads = landings
        .iter()
        .map(|l| {
            if !l.meshed {
                return not_meshed(l);
            }
            match authz_of(l) {
                Ok(authz) => one(asked, principal, l, &authz),
                Err(why) => unknown(l, why),
            }
        })
        .collect();
    Authorization {
        caller: principal.map(str::to_string),
        source: source.to_string(),
        workloads,
        note: None,
    }
}

/// Nothing reaches a workload (`why`).
pub fn not_reached(caller: &Caller, why: &str) -> Authorization {
    Authorization {
        caller: caller
            .spiffe_id
            .as_deref()
            .map(|id| pattern::principal_of_spiffe(id).to_string()),
        source: String::new(),
        workloads: Vec::new(),
        note: Some(format!("not evaluated: {why}")),
    }
}

fn one(
    asked: Asked<'_>,
    principal: Option<&str>,
    l: &Landing,
    authz: &WorkloadAuthz,
) -> WorkloadDecision {
    // Described as the proxy's `check_http` describes an inbound request.
    let request = AuthzRequest {
        peer_principal: principal,
        source_namespace: principal.and_then(pattern::namespace_of_principal),
        source_ip: asked.caller.ip,
        remote_ip: asked.caller.ip,
        destination_ip: Some(l.address.ip()),
        destination_port: l.target_port,
        sni: None,
        http: Some(HttpAttributes {
            host: &l.authority,
            method: asked.method,
            path: &l.path,
            headers: &l.headers,
            // explain sends no JWT: request principals and claims are absent.
            auth: None,
        }),
    };
    let d = evaluate(authz, &request);
    let name = |i: usize| authz.policies.get(i).map(|p| p.name.clone());
    let action_of = |i: usize| authz.policies.get(i).map(|p| p.action.as_str());
    let default = authz.default.as_str();
    let (policy, action, rule, reason) = match d.reason {
        Reason::Denied(Hit { policy, rule }) => (
            name(policy),
            action_of(policy),
            Some(rule),
            format!(
                "DENY by AuthorizationPolicy {} rule {rule} (a DENY rule matched)",
                name(policy).unwrap_or_default()
            ),
        ),
        Reason::Allowed(Hit { policy, rule }) => (
            name(policy),
            action_of(policy),
            Some(rule),
            format!(
                "ALLOW by AuthorizationPolicy {} rule {rule}",
                name(policy).unwrap_or_default()
            ),
        ),
        Reason::NoAllowMatched { first_allow } => {
            let allows: Vec<&str> = authz
                .policies
                .iter()
                .filter(|p| p.action == trellis_model::authz::Action::Allow && !p.dry_run)
                .map(|p| p.name.as_str())
                .collect();
            (
                name(first_allow),
                Some("ALLOW"),
                None,
                format!(
                    "DENY: no rule of the ALLOW policies covering the workload matched ({})",
                    allows.join(", ")
                ),
            )
        }
        Reason::Default(def) => {
            let enforced = authz.policies.iter().any(|p| !p.dry_run);
            let reason = match (d.allowed, enforced) {
                (true, false) => format!("allowed: no policy applies (default {default})"),
                (true, true) => format!(
                    "allowed: no DENY rule matched and no ALLOW policy covers the workload (default {default})"
                ),
                (false, _) => format!(
                    "DENY by the default inbound policy {} ({})",
                    def.as_str(),
                    default_needs(def)
                ),
            };
            (None, Some("DEFAULT"), None, reason)
        }
    };
    WorkloadDecision {
        workload: l.workload.clone(),
        namespace: l.namespace.clone(),
        decision: if d.allowed { "ALLOW" } else { "DENY" },
        policy,
        action,
        rule,
        default: Some(default),
        reason,
        answer: (!d.allowed).then(|| denial_answer(&l.headers)),
        notes: notes(authz, &d),
        policies: authz
            .policies
            .iter()
            .map(|p| {
                let dry = if p.dry_run { ", dry run" } else { "" };
                format!("{} ({}{dry})", p.name, p.action.as_str())
            })
            .collect(),
    }
}

fn default_needs(d: DefaultPolicy) -> &'static str {
    match d {
        DefaultPolicy::AllAuthenticated => "only mesh mTLS peers",
        DefaultPolicy::ClusterAuthenticated => "only mesh mTLS peers from the cluster networks",
        DefaultPolicy::Deny => "nothing is allowed",
        DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => "everything is allowed",
    }
}

/// The proxy's denial (docs/authorization.md, "Denials").
fn denial_answer(headers: &http::HeaderMap) -> String {
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        "200 grpc-status 7 (PERMISSION_DENIED) RBAC: access denied".to_string()
    } else {
        "403 RBAC: access denied".to_string()
    }
}

fn notes(authz: &WorkloadAuthz, d: &Decision) -> Vec<String> {
    let name = |i: usize| authz.policies.get(i).map_or("", |p| p.name.as_str());
    let mut out: Vec<String> = d
        .audits
        .iter()
        .map(|h| {
            format!(
                "AUDIT: {} rule {} matched (logged and counted, never enforced)",
                name(h.policy),
                h.rule
            )
        })
        .collect();
    if d.default_audit {
        out.push(
            "AUDIT: the default policy audit reports this unauthenticated request".to_string(),
        );
    }
    if let Some(shadow) = d.dry_run_denied {
        let what = match shadow {
            Reason::Denied(h) | Reason::Allowed(h) => format!("{} rule {}", name(h.policy), h.rule),
            Reason::NoAllowMatched { first_allow } => {
                format!("{} (no ALLOW rule matched)", name(first_allow))
            }
            Reason::Default(def) => format!("the default {}", def.as_str()),
        };
        out.push(format!(
            "dry run: would be denied by {what} if the dry-run policies were enforced"
        ));
    }
    out
}

fn not_meshed(l: &Landing) -> WorkloadDecision {
    WorkloadDecision {
        workload: l.workload.clone(),
        namespace: l.namespace.clone(),
        decision: "ALLOW",
        policy: None,
        action: None,
        rule: None,
        default: None,
        reason: "allowed: not meshed (no trellis proxy at this endpoint enforces authorization)"
            .to_string(),
        answer: None,
        notes: Vec::new(),
        policies: Vec::new(),
    }
}

fn unknown(l: &Landing, why: String) -> WorkloadDecision {
    WorkloadDecision {
        workload: l.workload.clone(),
        namespace: l.namespace.clone(),
        decision: "UNKNOWN",
        policy: None,
        action: None,
        rule: None,
        default: None,
        reason: format!("unknown: {why}"),
        answer: None,
        notes: Vec::new(),
        policies: Vec::new(),
    }
}

/// Applies a route's (or backend's) request header edits, as the calling proxy does.
pub fn apply_edits(m: &trellis_model::route::HeaderModifier, headers: &mut http::HeaderMap) {
    let parse = |k: &str, v: &str| {
        Some((
            http::HeaderName::from_bytes(k.as_bytes()).ok()?,
            http::HeaderValue::from_str(v).ok()?,
        ))
    };
    for (k, v) in &m.set {
        if let Some((k, v)) = parse(k, v) {
            headers.insert(k, v);
        }
    }
    for (k, v) in &m.add {
        if let Some((k, v)) = parse(k, v) {
            headers.append(k, v);
        }
    }
    for k in &m.remove {
        headers.remove(k.as_str());
    }
}

/// The text lines under `authorization:`.
pub fn render(a: &Authorization, s: &mut String) {
    use std::fmt::Write as _;
    let caller = match &a.caller {
        Some(p) => format!("caller {p} (mTLS)"),
        None => "caller without a mesh identity (plaintext)".to_string(),
    };
    if let Some(note) = &a.note {
        let _ = writeln!(s, "authorization:  {note}; {caller}");
        return;
    }
    let _ = writeln!(s, "authorization:  {caller}; policies from {}", a.source);
    for w in &a.workloads {
        let answer = w
            .answer
            .as_deref()
            .map(|a| format!(" \u{2192} {a}"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  - {}.{}: {}{answer}",
            w.workload, w.namespace, w.reason
        );
        for n in &w.notes {
            let _ = writeln!(s, "      {n}");
        }
    }
}
