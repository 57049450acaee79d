//! `trellis identity rotate {prepare,activate,retire,status}`: a trust-anchor rotation driven
//! through the control plane's HTTP API (`POST /api/v1/identity/rotate/<step>`), with the check
//! the bare API leaves to the operator: before `activate` and `retire`, and after every step,
//! every connected proxy is asked (its `/config_dump`, addresses from `/api/v1/workloads`)
//! whether it holds what the next step relies on. A step that would cut off a proxy is refused
//! unless `--force`. `prepare --from-dir DIR` rotates to a CA the user brings ([`from_dir`]).
//!
//! [`report`] is pure; this module fetches, posts and waits, every call under a deadline.

pub mod from_dir;
pub mod report;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::http_client::HttpClient;
use report::{CaStatus, Goal, ProxyIdentity, ProxyRow};

/// Each HTTP call's deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a waiting step looks at the proxies again.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, clap::Args)]
pub struct IdentityArgs {
    #[command(subcommand)]
    pub command: IdentityCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum IdentityCommand {
    /// Rotate the trust anchor (root) and issuer without an outage, one checked step at a time.
    Rotate(RotateArgs),
}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    #[command(subcommand)]
    pub step: RotateStep,
    /// The control plane's HTTP API.
    #[arg(
        long,
        default_value = "http://127.0.0.1:15014",
        value_name = "URL",
        global = true
    )]
    pub control: String,
    /// How long a step waits for every proxy to catch up.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub timeout: Duration,
    /// Act even when some proxy has not caught up with the previous step (it will lose mTLS).
    #[arg(long, global = true)]
    pub force: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, clap::Subcommand)]
pub enum RotateStep {
    /// Add a new root (and make a new issuer) to the bundle; wait until every proxy trusts it.
    Prepare {
        /// Rotate to your own CA instead of a generated one: a directory with Istio's cacerts
        /// files root-cert.pem, ca-cert.pem, ca-key.pem and optionally cert-chain.pem.
        #[arg(long, value_name = "DIR")]
        from_dir: Option<PathBuf>,
    },
    /// Sign with the new issuer; wait until every proxy holds a new leaf.
    Activate,
    /// Drop the old root from the bundle; wait until every proxy has dropped it.
    Retire,
    /// Show the CA's rotation state and every proxy's anchors and issuer generation.
    Status,
}

impl RotateStep {
    fn name(&self) -> &'static str {
        match self {
            Self::Prepare { .. } => "prepare",
            Self::Activate => "activate",
            Self::Retire => "retire",
            Self::Status => "status",
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 2m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m)")),
    }
}

/// Why a step failed; printed as `trellis identity rotate <step>: <this>`.
#[derive(Debug, thiserror::Error)]
enum RotateError {
    #[error("{0}")]
    Http(String),
    #[error("the control plane refused the step: {0}")]
    Refused(String),
    #[error("--from-dir {dir}: {why}")]
    FromDir { dir: String, why: String },
    #[error(
        "not every proxy is ready for this step (use --force to act anyway; these proxies would lose mTLS):\n{0}"
    )]
    NotReady(String),
    #[error("not every proxy caught up within {timeout:?}:\n{list}")]
    Timeout { timeout: Duration, list: String },
}

fn list(laggards: &[(&str, String)]) -> String {
    laggards
        .iter()
        .map(|(w, why)| format!("  {w}: {why}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `GET` or `POST` `path` (a POST carries `body`, JSON) on loopback; the status and body.
async fn call(
    client: &HttpClient,
    method: Method,
    addr: SocketAddr,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes), String> {
    if method == Method::GET {
        let reply = client
            .get(addr, path, &HeaderMap::new(), CALL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        return Ok((reply.status, reply.body));
    }
    // The shared client only GETs; a POST is rare enough here for a one-off connection.
    let post = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| format!("POST http://{addr}{path}: {e}"))?;
    let send = async {
        let response = post
            .request(request)
            .await
            .map_err(|e| format!("POST http://{addr}{path}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("POST http://{addr}{path}: reading the body: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(CALL_TIMEOUT, send)
        .await
        .map_err(|_| format!("POST http://{addr}{path}: no answer within {CALL_TIMEOUT:?}"))?
}

async fn get_json<T: serde::de::DeserializeOwned>(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
) -> Result<T, String> {
    let (status, body) = call(client, Method::GET, addr, path, Bytes::new()).await?;
    if !status.is_success() {
        return Err(format!(
            "GET http://{addr}{path}: {status} {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET http://{addr}{path}: {e}"))
}

#[derive(serde::Deserialize)]
struct WorkloadJson {
    name: String,
    namespace: String,
    #[serde(default)]
    admin: Option<String>,
    #[serde(default)]
    connected: bool,
}

/// Every connected proxy's identity status.
async fn proxies(client: &HttpClient, control: SocketAddr) -> Result<Vec<ProxyRow>, String> {
    let workloads: Vec<WorkloadJson> = get_json(client, control, "/api/v1/workloads").await?;
    let mut rows = Vec::new();
    for w in workloads.into_iter().filter(|w| w.connected) {
        let identity = match w.admin.as_deref().map(str::parse::<SocketAddr>) {
            Some(Ok(admin)) => get_json::<serde_json::Value>(client, admin, "/config_dump")
                .await
                .and_then(|dump| {
                    serde_json::from_value::<ProxyIdentity>(dump["identity"].clone())
                        .map_err(|e| format!("/config_dump identity: {e}"))
                }),
            Some(Err(_)) | None => Err("no admin address registered".into()),
        };
        rows.push(ProxyRow {
            workload: format!("{}/{}", w.namespace, w.name),
            identity,
        });
    }
    Ok(rows)
}

async fn ca_status(client: &HttpClient, control: SocketAddr) -> Result<CaStatus, String> {
    get_json(client, control, "/api/v1/identity").await
}

/// Polls until every proxy reaches `goal` or `timeout` passes.
async fn wait(
    client: &HttpClient,
    control: SocketAddr,
    goal: Goal,
    timeout: Duration,
) -> Result<Vec<ProxyRow>, RotateError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let rows = proxies(client, control).await.map_err(RotateError::Http)?;
        let laggards = goal.laggards(&rows);
        if laggards.is_empty() {
            return Ok(rows);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RotateError::Timeout {
                timeout,
                list: list(&laggards),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn step(
    args: &RotateArgs,
    control: SocketAddr,
    out: &mut dyn Write,
) -> Result<(), RotateError> {
    let client = HttpClient::new();
    let before = ca_status(&client, control)
        .await
        .map_err(RotateError::Http)?;
    // What must hold before acting: the previous step's goal, for every proxy.
    let precondition = match args.step {
        RotateStep::Status => {
            let rows = proxies(&client, control).await.map_err(RotateError::Http)?;
            let _ = out.write_all(report::render(&before, &rows, now_unix()).as_bytes());
            return Ok(());
        }
        RotateStep::Prepare { .. } => None,
        RotateStep::Activate => Some(Goal::HoldsBundle {
            anchors: before.anchors,
        }),
        RotateStep::Retire => Some(Goal::Reissued {
            generation: before.issuer_generation,
        }),
    };
    if let Some(goal) = precondition
        && !args.force
    {
        let rows = proxies(&client, control).await.map_err(RotateError::Http)?;
        let laggards = goal.laggards(&rows);
        if !laggards.is_empty() {
            return Err(RotateError::NotReady(list(&laggards)));
        }
    }
    // Read before anything is sent: a file that cannot be read leaves the control plane as is.
    let (request, dir_error) = match &args.step {
        RotateStep::Prepare {
            from_dir: Some(dir),
        } => {
            let dir_error = |why| RotateError::FromDir {
                dir: dir.display().to_string(),
                why,
            };
            (
                Bytes::from(from_dir::body(dir).map_err(dir_error)?),
                Some(dir_error),
            )
        }
        _ => (Bytes::from_static(b"{}"), None),
    };
    let path = format!("/api/v1/identity/rotate/{}", args.step.name());
    let (status, body) = call(&client, Method::POST, control, &path, request)
        .await
        .map_err(RotateError::Http)?;
    // 400 is the control plane's verdict on the CA brought (it names the file).
    if status == StatusCode::BAD_REQUEST
        && let Some(dir_error) = dir_error
    {
        return Err(dir_error(format!(
            "the control plane refused this CA: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    if !status.is_success() {
        return Err(RotateError::Refused(
            String::from_utf8_lossy(&body).trim().to_string(),
        ));
    }
    let after: CaStatus = serde_json::from_slice(&body)
        .map_err(|e| RotateError::Http(format!("POST {path}: {e}")))?;
    let _ = writeln!(
        out,
        "{}: done on the control plane; waiting for every proxy",
        args.step.name()
    );
    let goal = match args.step {
        RotateStep::Activate => Goal::Reissued {
            generation: after.issuer_generation,
        },
        _ => Goal::HoldsBundle {
            anchors: after.anchors,
        },
    };
    let rows = wait(&client, control, goal, args.timeout).await?;
    let _ = out.write_all(report::render(&after, &rows, now_unix()).as_bytes());
    Ok(())
}

/// Runs the command; returns the exit code (0 done, 1 failed or timed out, 64 bad usage).
pub fn run(args: &IdentityArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let IdentityCommand::Rotate(args) = &args.command;
    let prefix = format!("trellis identity rotate {}", args.step.name());
    let (control, runtime) = match crate::runtime::control_and_start(&args.control, &prefix, err) {
        Ok(started) => started,
        Err(code) => return code,
    };
    match runtime.block_on(step(args, control, out)) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "{prefix}: {e}");
            crate::EXIT_FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3h").is_err());
    }
}
