//! Inbound authorization: the workload's policies (Istio AuthorizationPolicy and the mesh
//! default, compiled by the control plane) enforced on each inbound HTTP request and TCP
//! connection. The decision itself is `trellis_model::authz::evaluate`; this module describes
//! the request for it, answers a denial (403 `RBAC: access denied`, gRPC `PERMISSION_DENIED`,
//! or a closed connection), and counts and logs what was decided.
//!
//! The policies arrive as JSON in the discovery `InboundPolicy` and are swapped in atomically
//! ([`follow`]); the hot path reads a snapshot and never waits. A JSON the proxy cannot read is
//! logged and the last good policies stay in force. It runs after authentication, whose
//! `RequestAuth` it reads from the request's extensions.

mod metrics;
mod respond;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Request;
use trellis_model::authn::RequestAuth;
use trellis_model::authz::{
    Decision, HttpAttributes, Reason, Request as AuthzRequest, WorkloadAuthz, evaluate, pattern,
};

use crate::http::{ProxyBody, TARGET_PORT};
use crate::route::Dest;
use crate::tls::PeerIdentity;

pub use metrics::AuthzMetrics;

/// One proxy's authorization: the policies in force and their counters.
#[derive(Debug, Default)]
pub struct Authz {
    policies: ArcSwap<Compiled>,
    metrics: AuthzMetrics,
}

/// The policies in force, with each policy's counters found once (at install, not per request).
#[derive(Debug, Default)]
struct Compiled {
    authz: WorkloadAuthz,
    counters: Vec<Arc<metrics::PolicyCounters>>,
    /// No policy and the permissive default: every request is allowed without evaluation.
    allow_all: bool,
}

impl Authz {
    /// Installs new policies (from the control plane's JSON; empty: none).
    pub fn install(&self, authz: WorkloadAuthz) {
        let counters = authz
            .policies
            .iter()
            .map(|p| self.metrics.policy(&p.name, p.action))
            .collect();
        let allow_all = authz.policies.is_empty()
            && authz.default == trellis_model::authz::DefaultPolicy::AllUnauthenticated;
        self.policies.store(Arc::new(Compiled {
            authz,
            counters,
            allow_all,
        }));
    }

    /// The policies in force, for `/config_dump`.
    pub fn current(&self) -> WorkloadAuthz {
        self.policies.load().authz.clone()
    }

    /// Appends the `trellis_authz_*` series in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        self.metrics.render(out);
    }

    /// Checks one inbound HTTP request; `Some(response)` is the denial to answer with.
    pub fn check_http<B>(
        &self,
        req: &Request<B>,
        peer: Option<SocketAddr>,
        dest: &Dest,
    ) -> Option<http::Response<ProxyBody>> {
        let compiled = self.policies.load();
        if compiled.allow_all {
            self.metrics.default_allowed(compiled.authz.default);
            return None;
        }
        let principal = req
            .extensions()
            .get::<PeerIdentity>()
            .map(|id| pattern::principal_of_spiffe(&id.0));
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or_default();
        let requested_port = req
            .headers()
            .get(TARGET_PORT)
            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok());
        let (destination_ip, destination_port) = destination(dest, requested_port);
        let request = AuthzRequest {
            peer_principal: principal,
            source_namespace: principal.and_then(pattern::namespace_of_principal),
            source_ip: peer.map(|p| p.ip()),
            // No hop is trusted to name the original client (Istio's numTrustedProxies: 0).
            remote_ip: peer.map(|p| p.ip()),
            destination_ip,
            destination_port,
            sni: None,
            http: Some(HttpAttributes {
                host,
                method: req.method().as_str(),
                path: req.uri().path(),
                headers: req.headers(),
                auth: req.extensions().get::<RequestAuth>(),
            }),
        };
        let decision = evaluate(&compiled.authz, &request);
        self.report(&compiled, &decision, &request, peer);
        (!decision.allowed).then(|| respond::denied(req.headers()))
    }

    /// Checks one inbound TCP connection (opaque, or a mesh `trellis-tcp` stream); `false`
    /// means close it. `peer_id` is the mTLS peer's SPIFFE id.
    pub fn allow_tcp(
        &self,
        peer: Option<SocketAddr>,
        peer_id: Option<&str>,
        dest: &Dest,
        dest_port: u16,
    ) -> bool {
        let compiled = self.policies.load();
        if compiled.allow_all {
            self.metrics.default_allowed(compiled.authz.default);
            return true;
        }
        let principal = peer_id.map(pattern::principal_of_spiffe);
        let (destination_ip, port) = destination(dest, None);
        let request = AuthzRequest {
            peer_principal: principal,
            source_namespace: principal.and_then(pattern::namespace_of_principal),
            source_ip: peer.map(|p| p.ip()),
            remote_ip: peer.map(|p| p.ip()),
            destination_ip,
            destination_port: if port == 0 { dest_port } else { port },
            sni: None,
            http: None,
        };
        let decision = evaluate(&compiled.authz, &request);
        self.report(&compiled, &decision, &request, peer);
        decision.allowed
    }

    /// Counts and logs a decision: every deny, audit and dry-run deny names the policy and rule.
    fn report(
        &self,
        compiled: &Compiled,
        d: &Decision,
        req: &AuthzRequest<'_>,
        peer: Option<SocketAddr>,
    ) {
        let name = |i: usize| {
            compiled
                .authz
                .policies
                .get(i)
                .map_or("", |p| p.name.as_str())
        };
        let (method, path) = req.http.map_or(("", ""), |h| (h.method, h.path));
        let principal = req.peer_principal.unwrap_or("");
        for hit in &d.audits {
            if let Some(c) = compiled.counters.get(hit.policy) {
                c.audit();
            }
            tracing::info!(
                policy = name(hit.policy),
                rule = hit.rule,
                action = "AUDIT",
                ?peer,
                principal,
                method,
                path,
                "authorization audit"
            );
        }
        if d.default_audit {
            self.metrics.default_audit(compiled.authz.default);
            tracing::info!(
                policy = compiled.authz.default.as_str(),
                action = "DEFAULT",
                ?peer,
                method,
                path,
                "authorization audit: unauthenticated request (default policy audit)"
            );
        }
        if let Some(shadow) = d.dry_run_denied {
            let (policy, rule) = match shadow {
                Reason::Denied(h) | Reason::Allowed(h) => (h.policy, Some(h.rule)),
                Reason::NoAllowMatched { first_allow } => (first_allow, None),
                Reason::Default(_) => (usize::MAX, None),
            };
            if let Some(c) = compiled.counters.get(policy) {
                c.dry_run_denied();
            }
            tracing::info!(
                policy = name(policy),
                rule,
                ?peer,
                principal,
                method,
                path,
                "authorization dry-run: would deny"
            );
        }
        match d.reason {
            Reason::Allowed(hit) => {
                if let Some(c) = compiled.counters.get(hit.policy) {
                    c.allowed();
                }
            }
            Reason::Denied(hit) => {
                if let Some(c) = compiled.counters.get(hit.policy) {
                    c.denied();
                }
                tracing::info!(
                    policy = name(hit.policy),
                    rule = hit.rule,
                    action = "DENY",
                    ?peer,
                    principal,
                    method,
                    path,
                    "authorization denied: a DENY rule matched"
                );
            }
            Reason::NoAllowMatched { first_allow } => {
                self.metrics.no_allow_matched();
                tracing::info!(
                    policy = name(first_allow),
                    action = "ALLOW",
                    ?peer,
                    principal,
                    method,
                    path,
                    "authorization denied: no ALLOW policy matched"
                );
            }
            Reason::Default(default) => {
                if d.allowed {
                    self.metrics.default_allowed(default);
                } else {
                    self.metrics.default_denied(default);
                    tracing::info!(
                        policy = default.as_str(),
                        action = "DEFAULT",
                        ?peer,
                        principal,
                        method,
                        path,
                        "authorization denied by the default inbound policy"
                    );
                }
            }
        }
    }
}

/// The destination address and port the request was meant for: the original destination, or
/// (without one) the app port a peer proxy named, else `--app`'s.
fn destination(dest: &Dest, requested_port: Option<u16>) -> (Option<IpAddr>, u16) {
    match dest {
        Dest::Fixed(orig) => (Some(orig.ip()), orig.port()),
        Dest::Local {
            app,
            ports,
            local_ip,
        } => {
            let port = requested_port
                .filter(|p| ports.contains(p))
                .or(app.map(|a| a.port()))
                .unwrap_or(0);
            (Some(*local_ip), port)
        }
        Dest::Service { .. } | Dest::Address { .. } => (None, 0),
    }
}

/// Installs each authorization JSON discovery receives, until `stop`. A JSON that does not
/// decode is logged and the last good policies stay.
pub async fn follow(
    mut json_rx: tokio::sync::watch::Receiver<Arc<str>>,
    authz: Arc<Authz>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let json = json_rx.borrow_and_update().clone();
        match decode(&json) {
            Ok(policies) => {
                tracing::info!(
                    default = policies.default.as_str(),
                    policies = policies.policies.len(),
                    "inbound authorization policies"
                );
                authz.install(policies);
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable authorization policies; keeping the last good ones");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = json_rx.changed() => if changed.is_err() { return },
        }
    }
}

/// The wire JSON; empty (an older control plane, or none sent yet) is "no policy".
pub fn decode(json: &str) -> Result<WorkloadAuthz, serde_json::Error> {
    if json.trim().is_empty() {
        return Ok(WorkloadAuthz::default());
    }
    serde_json::from_str(json)
}
