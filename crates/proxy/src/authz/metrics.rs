//! The `trellis_authz_*` counters. Each policy's counters are found (or made) once, when its
//! policies are installed, so a decision only increments atomics: no lock, no label formatting
//! on the request path. Counters outlive policy updates (a re-sent policy keeps counting).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use trellis_model::authz::{Action, DefaultPolicy};

use crate::telemetry::{family, labelled};

/// The counters of one policy (by name and action).
#[derive(Debug, Default)]
pub struct PolicyCounters {
    allowed: AtomicU64,
    denied: AtomicU64,
    audit: AtomicU64,
    dry_run_denied: AtomicU64,
}

impl PolicyCounters {
    pub fn allowed(&self) {
        self.allowed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn denied(&self) {
        self.denied.fetch_add(1, Ordering::Relaxed);
    }
    pub fn audit(&self) {
        self.audit.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dry_run_denied(&self) {
        self.dry_run_denied.fetch_add(1, Ordering::Relaxed);
    }
}

/// All of a proxy's authorization counters.
#[derive(Debug, Default)]
pub struct AuthzMetrics {
    policies: Mutex<BTreeMap<(String, &'static str), Arc<PolicyCounters>>>,
    /// Decisions of the default policy, by [`default_index`].
    defaults: [PolicyCounters; 5],
    /// Denied because ALLOW policies cover the workload and none matched.
    no_allow_matched: AtomicU64,
}

fn default_index(d: DefaultPolicy) -> usize {
    match d {
        DefaultPolicy::AllUnauthenticated => 0,
        DefaultPolicy::AllAuthenticated => 1,
        DefaultPolicy::ClusterAuthenticated => 2,
        DefaultPolicy::Deny => 3,
        DefaultPolicy::Audit => 4,
    }
}

const DEFAULTS: [DefaultPolicy; 5] = [
    DefaultPolicy::AllUnauthenticated,
    DefaultPolicy::AllAuthenticated,
    DefaultPolicy::ClusterAuthenticated,
    DefaultPolicy::Deny,
    DefaultPolicy::Audit,
];

impl AuthzMetrics {
    /// The counters of a policy, made on first use.
    pub fn policy(&self, name: &str, action: Action) -> Arc<PolicyCounters> {
        let mut map = self.policies.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry((name.to_string(), action.as_str()))
            .or_default()
            .clone()
    }

    pub fn default_allowed(&self, d: DefaultPolicy) {
        self.defaults[default_index(d)].allowed();
    }
    pub fn default_denied(&self, d: DefaultPolicy) {
        self.defaults[default_index(d)].denied();
    }
    pub fn default_audit(&self, d: DefaultPolicy) {
        self.defaults[default_index(d)].audit();
    }
    pub fn no_allow_matched(&self) {
        self.no_allow_matched.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text format. Default-policy series are labelled `policy="default:<name>"`,
    /// `action="DEFAULT"`; a denial because no ALLOW policy matched is `policy="none"`,
    /// `action="ALLOW"`. Zero series of defaults not in use are left out.
    pub fn render(&self, out: &mut String) {
        let map = self.policies.lock().unwrap_or_else(PoisonError::into_inner);
        type Pick = fn(&PolicyCounters) -> &AtomicU64;
        let families: [(&str, &str, Pick); 4] = [
            (
                "trellis_authz_allowed_total",
                "Inbound requests and connections allowed, by the policy that allowed them.",
                |c| &c.allowed,
            ),
            (
                "trellis_authz_denied_total",
                "Inbound requests and connections denied (403, PERMISSION_DENIED or closed), by the policy that denied them.",
                |c| &c.denied,
            ),
            (
                "trellis_authz_audit_total",
                "Inbound requests and connections an AUDIT rule (or the audit default) matched; never blocked.",
                |c| &c.audit,
            ),
            (
                "trellis_authz_dry_run_denied_total",
                "Inbound requests and connections a dry-run policy would have denied; allowed.",
                |c| &c.dry_run_denied,
            ),
        ];
        // `write!` into a String cannot fail; the results are ignored on purpose.
        for (name, help, pick) in families {
            let _ = family(out, name, "counter", help);
            for ((policy, action), c) in map.iter() {
                let labels = [("policy", policy.as_str()), ("action", *action)];
                let _ = labelled(out, name, &labels, pick(c).load(Ordering::Relaxed));
            }
            for d in DEFAULTS {
                let v = pick(&self.defaults[default_index(d)]).load(Ordering::Relaxed);
                if v > 0 {
                    let policy = format!("default:{}", d.as_str());
                    let labels = [("policy", policy.as_str()), ("action", "DEFAULT")];
                    let _ = labelled(out, name, &labels, v);
                }
            }
            if name == "trellis_authz_denied_total" {
                let v = self.no_allow_matched.load(Ordering::Relaxed);
                let _ = labelled(out, name, &[("policy", "none"), ("action", "ALLOW")], v);
            }
        }
    }
}
