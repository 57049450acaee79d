//! End-user authentication on the inbound path (Istio `RequestAuthentication`): finds JWTs
//! where this workload's rules say to look, validates them ([`jwt`]) against inline or fetched
//! ([`remote`]) key sets ([`keys`]), and hands authorization a
//! [`RequestAuth`](trellis_model::authn::RequestAuth) in the request's extensions.
//!
//! Semantics, as Istio (Envoy `jwt_authn` with `allow_missing`): a request with no token
//! passes unauthenticated (an AuthorizationPolicy may then require `requestPrincipals`); a
//! request with a token that fails any check gets 401 with Envoy's reason in the body; a valid
//! token's claims are copied to `outputClaimToHeaders` / `outputPayloadToHeader`, and the token
//! is removed unless `forwardOriginalToken`. Headers named by `outputClaimToHeaders` and
//! `outputPayloadToHeader` are removed from every request first, so only this proxy can set
//! them and an application may trust them.
//!
//! Dry-run policies (`trellis.io/dry-run: "true"`, [`RequestAuthentication::dry_run`]) are
//! evaluated first, on the request as it came: each token their rules find is validated, and a
//! failure is logged and counted in `trellis_authn_dry_run_rejected_total{policy,reason}`;
//! the request goes on untouched (no 401, no token removed, no output headers) and a valid
//! token gives no request principal, as Istio's dry-run has no effect on the request.
//!
//! The rules arrive from discovery as JSON ([`follow`]) and are swapped in atomically; the
//! request path reads a snapshot and waits only for a JWKS fetch it needs.

mod jwt;
mod keys;
mod remote;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use trellis_model::authn::{JwksSource, JwtRule, RequestAuth, RequestAuthentication};

pub use jwt::{CLOCK_SKEW, JwtError};
pub use keys::KeySet;
pub use remote::{MIN_REFETCH_INTERVAL, REFRESH_INTERVAL};

use crate::http::{ProxyBody, TRELLIS_ERROR};

/// Where a token is looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
}

impl Location {
    /// A rule's locations; `Authorization: Bearer` when it names none (Istio's default).
    fn of(rule: &JwtRule) -> Vec<Self> {
        if rule.from_headers.is_empty() && rule.from_params.is_empty() {
            return vec![Self::Header {
                name: header::AUTHORIZATION,
                prefix: "Bearer ".into(),
            }];
        }
        let headers = rule.from_headers.iter().filter_map(|h| {
            Some(Self::Header {
                // Validated by the config crate; an invalid one is skipped, never a panic.
                name: HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                prefix: h.prefix.clone(),
            })
        });
        let params = rule.from_params.iter().cloned().map(Self::Param);
        headers.chain(params).collect()
    }

    fn extract<B>(&self, req: &Request<B>) -> Option<String> {
        match self {
            Self::Header { name, prefix } => req.headers().get_all(name).iter().find_map(|v| {
                let v = v.to_str().ok()?.trim();
                // Prefixes compare case-insensitively ("bearer" is common in the wild).
                let head = v.get(..prefix.len())?;
                head.eq_ignore_ascii_case(prefix)
                    .then(|| v[prefix.len()..].trim().to_string())
                    .filter(|t| !t.is_empty())
            }),
            Self::Param(name) => query_pairs(req.uri())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v)
                .filter(|t| !t.is_empty()),
        }
    }

    fn remove<B>(&self, req: &mut Request<B>) {
        match self {
            Self::Header { name, .. } => {
                req.headers_mut().remove(name);
            }
            Self::Param(name) => remove_param(req, name),
        }
    }
}

/// `k=v` pairs of the query; tokens are base64url, so no percent-decoding is needed beyond
/// what JWT characters allow.
fn query_pairs(uri: &Uri) -> impl Iterator<Item = (&str, String)> {
    uri.query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k, v.to_string())
        })
}

fn remove_param<B>(req: &mut Request<B>, name: &str) {
    let Some(query) = req.uri().query() else {
        return;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| p.split_once('=').map_or(*p, |(k, _)| k) != name)
        .collect();
    let path = req.uri().path();
    let pq = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

#[derive(Debug)]
enum Keys {
    /// An inline `jwks` the proxy could not use: every token of this issuer fails.
    Unusable,
    Inline(Arc<KeySet>),
    Remote(Arc<remote::RemoteJwks>),
}

#[derive(Debug)]
struct CompiledRule {
    rule: JwtRule,
    locations: Vec<Location>,
    keys: Keys,
}

#[derive(Debug, Default)]
struct Compiled {
    policies: Vec<String>,
    rules: Vec<CompiledRule>,
    /// Headers only this proxy may set (see the module docs).
    output_headers: Vec<HeaderName>,
    /// Dry-run policies, each with its own rules: `(namespace/name, rules)`.
    dry_run: Vec<(String, Vec<CompiledRule>)>,
}

/// The workload's JWT rules and key caches, shared by every inbound connection.
#[derive(Debug, Default)]
pub struct Authenticator {
    compiled: ArcSwap<Compiled>,
    /// Caches by `jwksUri`, kept across rule updates so that a config push does not refetch.
    remotes: Mutex<HashMap<String, Arc<remote::RemoteJwks>>>,
    /// `trellis_authn_dry_run_rejected_total` by (policy, reason). A mutex is enough: only
    /// requests carrying a token a dry-run policy rejects take it.
    dry_run_rejected: Mutex<BTreeMap<(String, &'static str), u64>>,
}

/// A 401 (or the header rewrite failed in a way the client caused).
#[derive(Debug)]
pub struct Rejection {
    pub error: JwtError,
}

impl Rejection {
    /// The response the client gets: 401, Envoy's reason as the body, and a Bearer challenge
    /// (RFC 6750).
    pub fn response(&self) -> Response<ProxyBody> {
        let body = Full::new(Bytes::from(self.error.to_string()))
            .map_err(|never| match never {})
            .boxed();
        let mut resp = Response::new(body);
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        let h = resp.headers_mut();
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"trellis\", error=\"invalid_token\""),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(TRELLIS_ERROR, HeaderValue::from_static("jwt_authn"));
        resp
    }
}

impl Authenticator {
    /// Replaces the rules (from discovery). Key caches of URIs still in use are kept.
    pub fn apply(&self, rules: RequestAuthentication) {
        let mut remotes = self.remotes.lock().unwrap_or_else(|p| p.into_inner());
        let mut in_use = HashMap::new();
        let mut output_headers = Vec::new();
        let compiled = compile_rules(rules.rules, &remotes, &mut in_use, &mut output_headers);
        // Dry-run rules never write headers, so their output headers are not reserved.
        let dry_run: Vec<(String, Vec<CompiledRule>)> = rules
            .dry_run
            .into_iter()
            .map(|d| {
                let rules = compile_rules(d.rules, &remotes, &mut in_use, &mut Vec::new());
                (d.policy, rules)
            })
            .collect();
        *remotes = in_use;
        tracing::info!(policies = ?rules.policies, rules = compiled.len(), dry_run = ?dry_run.iter().map(|(p, _)| p).collect::<Vec<_>>(), "request authentication rules");
        self.compiled.store(Arc::new(Compiled {
            policies: rules.policies,
            rules: compiled,
            output_headers,
            dry_run,
        }));
    }

    /// Appends `trellis_authn_dry_run_rejected_total` in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let counts = self
            .dry_run_rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let _ = crate::telemetry::family(
            out,
            "trellis_authn_dry_run_rejected_total",
            "counter",
            "Requests a dry-run RequestAuthentication would have rejected with 401.",
        );
        for ((policy, reason), n) in counts.iter() {
            let _ = writeln!(
                out,
                // Policy names are `namespace/name` of DNS labels: nothing to escape.
                "trellis_authn_dry_run_rejected_total{{policy=\"{policy}\",reason=\"{reason}\"}} {n}"
            );
        }
    }

    /// The rules in force and the state of their key sets, for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        let compiled = self.compiled.load();
        let rules: Vec<serde_json::Value> = compiled
            .rules
            .iter()
            .map(|r| {
                let jwks = match &r.keys {
                    Keys::Unusable => serde_json::json!({"inline": "unusable"}),
                    Keys::Inline(set) => serde_json::json!({"inline": {"keys": set.keys.len()}}),
                    Keys::Remote(cache) => cache.dump(),
                };
                let locations: Vec<String> = r
                    .locations
                    .iter()
                    .map(|l| match l {
                        Location::Header { name, prefix } => format!("header {name}: {prefix}"),
                        Location::Param(p) => format!("param {p}"),
                    })
                    .collect();
                serde_json::json!({
                    "issuer": r.rule.issuer,
                    "audiences": r.rule.audiences,
                    "jwks": jwks,
                    "locations": locations,
                    "forward_original_token": r.rule.forward_original_token,
                    "output_claim_to_headers": r.rule.output_claim_to_headers,
                    "output_payload_to_header": r.rule.output_payload_to_header,
                })
            })
            .collect();
        let dry_run: Vec<&String> = compiled.dry_run.iter().map(|(p, _)| p).collect();
        serde_json::json!({"policies": compiled.policies, "rules": rules, "dry_run": dry_run})
    }

    /// Authenticates one inbound request: `Ok(None)` without a token, `Ok(Some(_))` for a
    /// valid one (also put into the request's extensions), `Err` for a 401.
    pub async fn authenticate<B>(
        &self,
        req: &mut Request<B>,
    ) -> Result<Option<RequestAuth>, Rejection> {
        let compiled = self.compiled.load_full();
        let now = SystemTime::now();
        // Before the enforced rules remove any token: dry-run sees the request as it came.
        for (policy, rules) in &compiled.dry_run {
            self.dry_run(policy, rules, req, now).await;
        }
        if compiled.rules.is_empty() {
            return Ok(None);
        }
        for name in &compiled.output_headers {
            req.headers_mut().remove(name);
        }
        let mut found: Vec<(&Location, String)> = Vec::new();
        for rule in &compiled.rules {
            for loc in &rule.locations {
                if let Some(token) = loc.extract(req)
                    && !found.iter().any(|(l, t)| *l == loc && *t == token)
                {
                    found.push((loc, token));
                }
            }
        }
        let mut auth = None;
        let mut outputs: Vec<(HeaderName, String)> = Vec::new();
        let mut remove: Vec<&Location> = Vec::new();
        for (loc, token) in &found {
            let (rule, parsed) = match self.validate(&compiled.rules, loc, token, now).await {
                Ok(ok) => ok,
                Err(error) => {
                    tracing::info!(reason = error.reason(), policies = ?compiled.policies, uri = %req.uri(), "rejecting a request with an invalid JWT");
                    return Err(Rejection { error });
                }
            };
            for c in &rule.rule.output_claim_to_headers {
                if let (Some(v), Ok(name)) = (
                    parsed.claim_text(&c.claim),
                    HeaderName::from_bytes(c.header.as_bytes()),
                ) {
                    outputs.push((name, v));
                }
            }
            if let Some(h) = &rule.rule.output_payload_to_header
                && let Ok(name) = HeaderName::from_bytes(h.as_bytes())
            {
                outputs.push((name, parsed.payload_b64.to_string()));
            }
            if !rule.rule.forward_original_token {
                remove.push(loc);
            }
            // Several tokens: the first one found names the principal (Istio leaves this
            // undefined; first is at least stable).
            auth.get_or_insert_with(|| parsed.request_auth());
        }
        for loc in remove {
            loc.remove(req);
        }
        for (name, value) in outputs {
            if let Ok(v) = HeaderValue::from_str(&value) {
                req.headers_mut().insert(name, v);
            }
        }
        if let Some(a) = &auth {
            req.extensions_mut().insert(a.clone());
        }
        Ok(auth)
    }

    /// Validates the tokens one dry-run policy's rules find; a failure is logged and counted,
    /// and changes nothing about the request.
    async fn dry_run<B>(
        &self,
        policy: &str,
        rules: &[CompiledRule],
        req: &Request<B>,
        now: SystemTime,
    ) {
        let mut found: Vec<(&Location, String)> = Vec::new();
        for rule in rules {
            for loc in &rule.locations {
                if let Some(token) = loc.extract(req)
                    && !found.iter().any(|(l, t)| *l == loc && *t == token)
                {
                    found.push((loc, token));
                }
            }
        }
        for (loc, token) in &found {
            if let Err(error) = self.validate(rules, loc, token, now).await {
                tracing::info!(policy, reason = error.reason(), uri = %req.uri(), "dry run: a request with an invalid JWT would be rejected (401); passed");
                *self
                    .dry_run_rejected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((policy.to_string(), error.reason()))
                    .or_default() += 1;
            }
        }
    }

    /// The rule a token found at `loc` satisfies: one of its issuer that looks there.
    async fn validate<'t, 'c>(
        &self,
        rules: &'c [CompiledRule],
        loc: &Location,
        token: &'t str,
        now: SystemTime,
    ) -> Result<(&'c CompiledRule, jwt::Token<'t>), JwtError> {
        let parsed = jwt::parse(token)?;
        let issuer = parsed.issuer().ok_or(JwtError::UnknownIssuer)?;
        let mut last = JwtError::UnknownIssuer;
        for rule in rules
            .iter()
            .filter(|r| r.rule.issuer == issuer && r.locations.contains(loc))
        {
            let checked = parsed
                .check_time(now)
                .and_then(|()| parsed.check_audiences(&rule.rule));
            let result = match checked {
                Ok(()) => check_signature(&parsed, &rule.keys).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok((rule, parsed)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Compiles rules, reusing the key caches of `remotes` (recording those used in `in_use`) and
/// collecting the headers their outputs write into `output_headers`.
fn compile_rules(
    rules: Vec<JwtRule>,
    remotes: &HashMap<String, Arc<remote::RemoteJwks>>,
    in_use: &mut HashMap<String, Arc<remote::RemoteJwks>>,
    output_headers: &mut Vec<HeaderName>,
) -> Vec<CompiledRule> {
    rules
        .into_iter()
        .map(|rule| {

        let keys = match &rule.jwks {
            JwksSource::Inline(doc) => match KeySet::parse(doc.as_bytes()) {
                Ok(k) => Keys::Inline(Arc::new(k)),
                Err(e) => {
                    tracing::warn!(issuer = %rule.issuer, error = %e, "inline jwks unusable; tokens of this issuer will fail");
                    Keys::Unusable
                }
            },
            JwksSource::Uri(uri) => {
                let cache = remotes
                    .get(uri)
                    .cloned()
                    .unwrap_or_else(|| remote::RemoteJwks::spawn(uri.clone()));
                in_use.insert(uri.clone(), cache.clone());
                Keys::Remote(cache)
            }
        };
        let names = rule
            .output_claim_to_headers
            .iter()
            .map(|c| c.header.as_str())
            .chain(rule.output_payload_to_header.as_deref());
        for name in names {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
                && !output_headers.contains(&name)
            {
                output_headers.push(name);
            }
        }
        CompiledRule {
            locations: Location::of(&rule),
            rule,
            keys,
        }
        })
        .collect()
}

async fn check_signature(parsed: &jwt::Token<'_>, keys: &Keys) -> Result<(), JwtError> {
    match keys {
        Keys::Unusable => Err(JwtError::VerificationFails),
        Keys::Inline(set) => parsed.verify(set),
        Keys::Remote(cache) => {
            let cached = match cache.cached() {
                Some(set) => Some(set),
                None => cache.refetch().await,
            };
            let Some(set) = cached else {
                return Err(JwtError::JwksFetchFailed);
            };
            match parsed.verify(&set) {
                // A key the cache does not know yet: the issuer may have rotated. Fetch again
                // (rate-limited) and retry once.
                Err(JwtError::NoMatchingKey) => match cache.refetch().await {
                    Some(fresh) if !Arc::ptr_eq(&fresh, &set) => parsed.verify(&fresh),
                    _ => Err(JwtError::NoMatchingKey),
                },
                other => other,
            }
        }
    }
}

/// Applies each rule set discovery receives (`InboundPolicy.request_authentication_json`)
/// until `stop`. An undecodable one is logged and the last good rules stay in force.
pub async fn follow(
    mut rules_rx: tokio::sync::watch::Receiver<Arc<str>>,
    authn: Arc<Authenticator>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let json = rules_rx.borrow_and_update().clone();
        let rules = if json.is_empty() {
            Ok(RequestAuthentication::default())
        } else {
            serde_json::from_str::<RequestAuthentication>(&json)
        };
        match rules {
            Ok(rules) => authn.apply(rules),
            Err(e) => {
                tracing::warn!(error = %e, "undecodable request authentication rules; keeping the last good ones")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = rules_rx.changed() => if changed.is_err() { return },
        }
    }
}
