//! `trellis explain`: what the mesh does with one request from one workload: the route that
//! matches, the backends and their weights, timeouts, retries, faults, mirrors, header edits
//! and per-backend policy; and the authorization decision of each workload the request lands
//! on, with the policy and rule that made it ([`authz`], the proxy's own `evaluate`).
//!
//! The config comes from directories (`--config-dir`, read as the control plane reads them)
//! plus the demo's Bookinfo Services and workloads, so `explain` answers for `trellis demo`
//! without a running mesh; or, with `--control`, from a running control plane (its registered
//! workloads, `GET /api/v1/destination`, and each destination proxy's `/config_dump` for the
//! policies it enforces). [`plan`] and [`authz`] are pure; this module parses arguments,
//! reads files or the control plane's API, and renders.

pub mod authz;
pub mod plan;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use trellis_control::store::{ConfigIndex, ConfigSnapshot};
use trellis_model::authz::{DefaultPolicy, WorkloadAuthz};
use trellis_model::{Destination, ServiceKey, Target, Workload};

use crate::bookinfo::{APPS, NAMESPACE, SERVICE_PORT};
use crate::check::parse_control;
use crate::http_client::HttpClient;
use crate::output::{self, OutputFormat};
use crate::validate::{self, InputFile};
use plan::{Action, Explanation, Request};

/// Each call to a live control plane has this deadline.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The calling workload: `NAME[.NAMESPACE]`, by workload name (`productpage-v1`) or app
    /// label (`productpage`).
    #[arg(long, value_name = "WORKLOAD[.NS]")]
    pub from: String,
    /// HTTP method.
    pub method: String,
    /// `http://HOST[:PORT]/PATH[?QUERY]`; HOST a Service (`reviews`, `reviews.default`, FQDN).
    pub url: String,
    /// A request header, `name:value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// Mesh config directories or files, read as the control plane reads them; repeatable.
    /// The demo's Bookinfo Services and workloads are always included.
    #[arg(long = "config-dir", value_name = "DIR", conflicts_with = "control")]
    pub config_dirs: Vec<PathBuf>,
    /// Explain against a running control plane instead (`http://IP:PORT` of its HTTP API): the
    /// registered workloads and the destination it compiles now.
    #[arg(long, value_name = "URL")]
    pub control: Option<String>,
    /// The mesh root namespace for AuthorizationPolicies, as `trellis-control
    /// --root-namespace` (config dirs only; with `--control` each proxy's own policies count).
    #[arg(long, value_name = "NS", default_value = trellis_control::DEFAULT_ROOT_NAMESPACE,
          conflicts_with = "control")]
    pub root_namespace: String,
    /// The default inbound policy, as `trellis-control --default-inbound-policy` (config dirs
    /// only).
    #[arg(long, value_name = "POLICY", default_value = "all-unauthenticated",
          value_parser = trellis_control::compile::authz::parse_default_policy,
          conflicts_with = "control")]
    pub default_inbound_policy: DefaultPolicy,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Bad arguments: exit 64.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("--from {0:?}: no such workload (known: {1})")]
    UnknownSource(String, String),
    #[error("invalid URL {0:?}: {1}")]
    Url(String, String),
    #[error("invalid header {0:?}: expected NAME:VALUE")]
    Header(String),
}

/// The workloads `trellis demo` registers, as their proxies register them (addresses are not
/// needed to explain routing, so they are left unspecified).
pub fn demo_workloads() -> Vec<Workload> {
    APPS.iter()
        .map(|app| {
            let service = app.service();
            let mut labels = BTreeMap::new();
            labels.insert("app".to_string(), service.name().to_string());
            labels.insert("version".to_string(), app.version().to_string());
            Workload {
                name: app.workload_name(),
                namespace: NAMESPACE.to_string(),
                service_account: service.service_account().to_string(),
                labels,
                inbound_address: SocketAddr::from(([127, 0, 0, 1], 0)),
                ports: vec![SERVICE_PORT],
                admin_address: None,
            }
        })
        .collect()
}

/// The config set: the demo's Services first (its file name sorts before any path, so a user
/// file redefining a Service loses, as the demo's own directory would not), then the user's.
pub fn snapshot(inputs: &[InputFile]) -> ConfigSnapshot {
    let mut index = ConfigIndex::default();
    let demo = "(demo)/bookinfo-services.yaml";
    let services = crate::demo::bookinfo_services();
    index.apply(
        demo,
        trellis_config::parse_documents(demo, services.as_bytes()),
    );
    for f in inputs {
        index.apply(&f.name, trellis_config::parse_documents(&f.name, &f.bytes));
    }
    index.snapshot()
}

/// Builds the request the source's proxy would see. `known` says whether a Service exists, to
/// tell `name.namespace` from a dotted name in the caller's namespace.
pub fn request(
    args: &ExplainArgs,
    known: &dyn Fn(&ServiceKey) -> bool,
    workloads: &[Workload],
) -> Result<Request, UsageError> {
    let (name, ns) = match args.from.split_once('.') {
        Some((n, ns)) => (n, Some(ns)),
        None => (args.from.as_str(), None),
    };
    let source = workloads
        .iter()
        .filter(|w| ns.is_none_or(|ns| w.namespace == ns))
        .find(|w| w.name == name || w.labels.get("app").is_some_and(|a| a == name))
        .cloned()
        .ok_or_else(|| {
            let known: Vec<&str> = workloads.iter().map(|w| w.name.as_str()).collect();
            UsageError::UnknownSource(args.from.clone(), known.join(", "))
        })?;
    let url_err = |why: &str| UsageError::Url(args.url.clone(), why.to_string());
    let uri: http::Uri = args
        .url
        .parse()
        .map_err(|e: http::uri::InvalidUri| url_err(&e.to_string()))?;
    let authority = uri.authority().ok_or_else(|| url_err("no host"))?;
    let port = authority.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    let host = authority.host();
    let target = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Target::Address(SocketAddr::new(ip, port)),
        Err(_) => {
            // Short names resolve in the caller's namespace, as cluster DNS does.
            let mut parts = host.split('.');
            let svc = parts.next().unwrap_or(host);
            let ns = parts.next().unwrap_or(&source.namespace);
            let key = ServiceKey::new(ns, svc);
            let key = if known(&key) {
                key
            } else {
                ServiceKey::new(&source.namespace, svc)
            };
            Target::Service { service: key, port }
        }
    };
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| UsageError::Header(h.clone()))?;
        let name = http::HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| UsageError::Header(h.clone()))?;
        let value =
            http::HeaderValue::from_str(v.trim()).map_err(|_| UsageError::Header(h.clone()))?;
        headers.append(name, value);
    }
    // The identity the mesh assigns the source (its service account), as the control plane's
    // CA names it; the live mode replaces it with the one the control plane reports.
    let caller = authz::Caller {
        spiffe_id: trellis_control::compile::identity(
            trellis_identity::DEFAULT_TRUST_DOMAIN,
            &source,
        ),
        ip: Some(source.inbound_address.ip()),
    };
    Ok(Request {
        source,
        caller,
        method: args.method.to_ascii_uppercase(),
        target,
        authority: authority.as_str().to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers,
    })
}

/// The human form: one `key: value` line per fact, kubectl-describe style.
pub fn render_text(e: &Explanation) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "request:        {} {}{} from {}.{}",
        e.method, e.target, e.path, e.source.workload, e.source.namespace
    );
    match &e.destination {
        Some(d) => {
            let _ = writeln!(
                s,
                "destination:    {} port {} ({})",
                d.service, d.port, d.authority
            );
        }
        None => {
            let _ = writeln!(
                s,
                "destination:    none known: the proxy answers 503 (no destination)"
            );
        }
    }
    match (&e.route, &e.action) {
        (
            Some(r),
            Action::NoRoute {
                status,
                grpc_status,
            },
        ) => {
            let answer = match grpc_status {
                Some(code) => format!("gRPC UNIMPLEMENTED ({code})"),
                None => status.to_string(),
            };
            let _ = writeln!(
                s,
                "route:          no matching route \u{2192} {answer} ({} routes this service; none of its rules matches)",
                r.resource
            );
        }
        (Some(r), _) => {
            let _ = writeln!(
                s,
                "route:          {} rule {} ({})",
                r.resource, r.index, r.name
            );
            let m = match (&r.match_index, &r.matched) {
                (Some(i), Some(m)) => format!("match {i}: {m}"),
                _ => "every request (no match conditions)".to_string(),
            };
            let _ = writeln!(s, "matched:        {m}");
        }
        (None, _) if e.destination.is_some() => {
            let _ = writeln!(s, "route:          none: the service's own endpoints");
        }
        (None, _) => {}
    }
    match &e.action {
        Action::Forward { backends } => {
            let _ = writeln!(s, "backends:");
            for b in backends {
                let labels: Vec<String> = b
                    .subset_labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let labels = if labels.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", labels.join(","))
                };
                let eps = if b.endpoints.is_empty() {
                    "none: 503 no endpoints".to_string()
                } else {
                    b.endpoints.join(", ")
                };
                let _ = writeln!(
                    s,
                    "  - {} weight {} ({}%){labels}",
                    b.backend, b.weight, b.percent
                );
                let _ = writeln!(s, "      endpoints:         {eps}");
                let _ = writeln!(s, "      load balancer:     {}", b.load_balancer);
                let _ = writeln!(s, "      connection pool:   {}", b.connection_pool);
                let _ = writeln!(s, "      outlier detection: {}", b.outlier_detection);
                let _ = writeln!(s, "      retry budget:      {}", b.retry_budget);
            }
        }
        Action::NoBackend => {
            let _ = writeln!(
                s,
                "backends:       every weight is 0: the proxy answers 500"
            );
        }
        Action::Redirect { location, status } => {
            let _ = writeln!(s, "redirect:       {status} {location}");
        }
        Action::DirectResponse { status } => {
            let _ = writeln!(s, "direct answer:  {status}");
        }
        Action::NoRoute {
            status,
            grpc_status,
        } => {
            let grpc = grpc_status
                .map(|c| format!(", grpc-status {c}"))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "answer:         {status}{grpc} from the proxy (trellis-error: no route)"
            );
        }
        Action::NoDestination => {}
    }
    let _ = writeln!(s, "timeout:        {}", e.timeout);
    let _ = writeln!(s, "retries:        {}", e.retries);
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join("; ")
        }
    };
    let _ = writeln!(s, "faults:         {}", list(&e.faults));
    let _ = writeln!(s, "mirrors:        {}", list(&e.mirrors));
    let _ = writeln!(s, "header edits:   {}", list(&e.header_edits));
    if let Some(r) = &e.rewrite {
        let _ = writeln!(s, "rewrite:        {r}");
    }
    authz::render(&e.authorization, &mut s);
    s
}

/// Why a live explanation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error("{0}")]
    Control(String),
}

#[derive(serde::Deserialize)]
struct WorkloadRow {
    name: String,
    namespace: String,
    #[serde(default)]
    service_account: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    inbound: String,
    /// The SPIFFE id the control plane assigns it.
    #[serde(default)]
    identity: Option<String>,
    /// Its proxy's admin address.
    #[serde(default)]
    admin: Option<String>,
}

async fn get_json<T: serde::de::DeserializeOwned>(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
) -> Result<T, LiveError> {
    let reply = client
        .get(addr, path, &http::HeaderMap::new(), CALL_TIMEOUT)
        .await
        .map_err(|e| LiveError::Control(e.to_string()))?;
    if !reply.status.is_success() {
        let body = String::from_utf8_lossy(&reply.body);
        return Err(LiveError::Control(format!(
            "GET http://{addr}{path}: {} {}",
            reply.status,
            body.trim()
        )));
    }
    serde_json::from_slice(&reply.body)
        .map_err(|e| LiveError::Control(format!("GET http://{addr}{path}: {e}")))
}

/// Explains against a running control plane: its registered workloads, and the destination it
/// compiles now (`GET /api/v1/destination`). Subset labels are not part of a Destination, so
/// they are not shown in this mode.
async fn explain_live(args: &ExplainArgs, control: SocketAddr) -> Result<Explanation, LiveError> {
    let client = HttpClient::new();
    let rows: Vec<WorkloadRow> = get_json(&client, control, "/api/v1/workloads").await?;
    let workloads: Vec<Workload> = rows
        .iter()
        .map(|w| Workload {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            service_account: w.service_account.clone(),
            labels: w.labels.clone(),
            inbound_address: w
                .inbound
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
            ports: Vec::new(),
            admin_address: None,
        })
        .collect();
    let mut req = request(args, &|_| true, &workloads)?;
    req.caller.spiffe_id = rows
        .iter()
        .find(|r| r.name == req.source.name && r.namespace == req.source.namespace)
        .and_then(|r| r.identity.clone());
    let path = format!("/api/v1/destination?target={}", req.target);
    let dest: Option<Destination> = get_json(&client, control, &path).await?;
    let mut out = plan::explain_destination(dest.as_ref(), &|_| BTreeMap::new(), &req);
    // Each destination proxy's policies, as it holds them now.
    let mut enforced = BTreeMap::new();
    for l in &out.landings {
        if l.meshed {
            let key = (l.namespace.clone(), l.workload.clone());
            enforced.insert(key, proxy_authz(&client, &rows, l).await);
        }
    }
    let authz_of = |l: &authz::Landing| {
        enforced
            .get(&(l.namespace.clone(), l.workload.clone()))
            .cloned()
            .unwrap_or_else(|| Err("not fetched".to_string()))
    };
    plan::authorize(&mut out, &req, "each proxy's /config_dump", &authz_of);
    Ok(out)
}

/// The policies the proxy of `l`'s workload enforces: `authorization` of its `/config_dump`.
async fn proxy_authz(
    client: &HttpClient,
    rows: &[WorkloadRow],
    l: &authz::Landing,
) -> Result<WorkloadAuthz, String> {
    let admin = rows
        .iter()
        .find(|r| r.name == l.workload && r.namespace == l.namespace)
        .and_then(|r| r.admin.as_deref())
        .ok_or_else(|| {
            format!(
                "{}.{} has no admin address registered with the control plane",
                l.workload, l.namespace
            )
        })?;
    let addr: SocketAddr = admin
        .parse()
        .map_err(|e| format!("admin address {admin:?} of {}: {e}", l.workload))?;
    let dump: serde_json::Value = get_json(client, addr, "/config_dump")
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_value(dump["authorization"].clone())
        .map_err(|e| format!("GET http://{addr}/config_dump: authorization: {e}"))
}

/// Runs the command; returns the exit code.
pub fn run(args: &ExplainArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let explanation = match &args.control {
        Some(url) => {
            let control = match parse_control(url) {
                Ok(c) => c,
                Err(e) => {
                    let _ = writeln!(err, "trellis explain: {e}");
                    return crate::EXIT_USAGE;
                }
            };
            let outcome = crate::runtime::build()
                .map_err(LiveError::Control)
                .and_then(|rt| rt.block_on(explain_live(args, control)));
            match outcome {
                Ok(e) => e,
                Err(e) => {
                    let _ = writeln!(err, "trellis explain: {e}");
                    return match e {
                        LiveError::Usage(_) => crate::EXIT_USAGE,
                        LiveError::Control(_) => crate::EXIT_FAILURE,
                    };
                }
            }
        }
        None => match explain_local(args, err) {
            Ok(e) => e,
            Err(code) => return code,
        },
    };
    let text = if args.output.is_structured() {
        match output::structured(args.output, &explanation) {
            Ok(text) => text,
            Err(e) => {
                let _ = writeln!(err, "trellis explain: {e}");
                return crate::EXIT_FAILURE;
            }
        }
    } else {
        render_text(&explanation)
    };
    let _ = out.write_all(text.as_bytes());
    0
}

/// Explains against the config dirs and the demo's Services and workloads; `Err` is the exit
/// code after the message was written.
fn explain_local(args: &ExplainArgs, err: &mut dyn Write) -> Result<Explanation, u8> {
    let inputs = match validate::read_inputs(&args.config_dirs) {
        Ok(inputs) => inputs,
        Err(e) => {
            let _ = writeln!(err, "trellis explain: {e}");
            return Err(validate::EXIT_UNREADABLE);
        }
    };
    let snapshot = snapshot(&inputs);
    for r in &snapshot.resources {
        if r.status == trellis_control::store::Status::Invalid {
            let _ = writeln!(
                err,
                "trellis explain: warning: {}: {} (run `trellis validate`)",
                r.file,
                r.message.as_deref().unwrap_or("invalid")
            );
        }
    }
    let workloads = demo_workloads();
    let known = |k: &ServiceKey| snapshot.services.contains_key(k);
    let req = match request(args, &known, &workloads) {
        Ok(req) => req,
        Err(e) => {
            let _ = writeln!(err, "trellis explain: {e}");
            return Err(crate::EXIT_USAGE);
        }
    };
    let settings = plan::AuthzSettings {
        root_namespace: &args.root_namespace,
        default: args.default_inbound_policy,
    };
    Ok(plan::explain(&snapshot, &workloads, &req, settings))
}
