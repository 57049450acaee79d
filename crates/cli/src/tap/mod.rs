//! `trellis tap <workload> [-n NS] [filters] [-o table|wide|json]`: a live line per request a
//! workload's proxies finish, from the control plane's `GET /api/v1/tap` (which fans in from
//! each proxy's admin `/tap`). Like Linkerd's `tap`: `table` is one `key=value` line per request,
//! `wide` adds identities, route, bytes and time, `json` passes the NDJSON rows through, `yaml`
//! writes each row as its own YAML document (`---` before each, the same fields as JSON).
//!
//! [`TapArgs::query`] and [`render_line`] are pure; the adapter only reads the stream. The
//! stream ends at `--max-rows` or `--max-seconds` (the control plane and proxies enforce both).

pub mod stream;

use std::io::Write;
use std::net::SocketAddr;

use serde::Deserialize;

/// `-o` for tap: a stream of rows, so `yaml` is one document per row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TapOutput {
    #[default]
    Table,
    /// More fields per line: identities, service, route, bytes, duration, time.
    Wide,
    /// The rows as they come, one JSON object per line.
    Json,
    /// One YAML document per row (`---` before each), the same fields as `json`.
    Yaml,
}

#[derive(Debug, clap::Args)]
pub struct TapArgs {
    /// The workload (`productpage-v1`), its app (`reviews`: every version), or `deploy/NAME`.
    pub target: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Only this HTTP method.
    #[arg(long)]
    pub method: Option<String>,
    /// Only paths starting with this.
    #[arg(long)]
    pub path: Option<String>,
    /// Only this authority (`reviews` or `reviews:9080`).
    #[arg(long)]
    pub authority: Option<String>,
    /// Only requests to this workload or service (`reviews`, `reviews-v2`).
    #[arg(long)]
    pub to: Option<String>,
    /// Only this status code (`503`) or class (`5xx`).
    #[arg(long)]
    pub status: Option<String>,
    /// Only requests arriving at (`inbound`) or leaving (`outbound`) the workload.
    #[arg(long)]
    pub direction: Option<String>,
    /// Stop after this many requests (at most 10000).
    #[arg(long, default_value_t = 100)]
    pub max_rows: u64,
    /// Stop after this many seconds (at most 600).
    #[arg(long, default_value_t = 60)]
    pub max_seconds: u64,
    /// The control plane's HTTP API.
    #[arg(
        long,
        visible_alias = "control-plane",
        default_value = "http://127.0.0.1:15014",
        value_name = "URL"
    )]
    pub control: String,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = TapOutput::Table)]
    pub output: TapOutput,
}

impl TapArgs {
    /// The control plane's query string for these arguments.
    pub fn query(&self) -> String {
        let mut q = format!(
            "workload={}&namespace={}&max_rows={}&max_seconds={}",
            stream::encode(&self.target),
            stream::encode(&self.namespace),
            self.max_rows,
            self.max_seconds
        );
        let filters = [
            ("method", &self.method),
            ("path", &self.path),
            ("authority", &self.authority),
            ("to", &self.to),
            ("status", &self.status),
            ("direction", &self.direction),
        ];
        for (name, value) in filters {
            if let Some(v) = value {
                q.push_str(&format!("&{name}={}", stream::encode(v)));
            }
        }
        q
    }
}

/// One tap row as the proxies send it (every field optional, so a newer proxy's extra or a
/// missing field does not break an older CLI).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct TapRow {
    pub time: String,
    pub direction: String,
    pub method: String,
    pub authority: String,
    pub path: String,
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub response_class: String,
    pub latency_ms: f64,
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub source_workload: String,
    pub source_namespace: String,
    pub source_identity: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub destination_identity: String,
    pub destination_service: String,
    pub tls: bool,
    pub route: String,
    pub error: Option<String>,
}

impl TapRow {
    /// Who called: the workload, else its identity, else `-` (a caller outside the mesh).
    pub fn source(&self) -> &str {
        first_of(&[&self.source_workload, &self.source_identity])
    }

    /// Who answered: the workload, else the service, else the authority.
    pub fn destination(&self) -> &str {
        first_of(&[
            &self.destination_workload,
            &self.destination_service,
            &self.authority,
        ])
    }

    /// Linkerd's classification when the proxy did not say: 5xx and gRPC errors fail.
    pub fn is_success(&self) -> bool {
        match self.response_class.as_str() {
            "success" => true,
            "failure" => false,
            _ => self.status < 500 && self.grpc_status.is_none_or(|c| c == 0),
        }
    }
}

fn first_of<'a>(candidates: &[&'a String]) -> &'a str {
    candidates
        .iter()
        .find(|s| !s.is_empty())
        .map_or("-", |s| s.as_str())
}

/// `3.1ms` below 10 ms, `42ms` above, `1.2s` past a second.
pub fn format_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.1}s", ms / 1000.0)
    } else if ms < 10.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// One request as a `table` or `wide` line.
pub fn render_line(row: &TapRow, wide: bool) -> String {
    let proxy = match row.direction.as_str() {
        "inbound" => "in",
        "outbound" => "out",
        other => dash(other),
    };
    let mut line = format!(
        "rsp proxy={proxy} src={} dst={} tls={} :method={} :authority={} :path={} :status={} latency={}",
        row.source(),
        row.destination(),
        row.tls,
        dash(&row.method),
        dash(&row.authority),
        dash(&row.path),
        row.status,
        format_ms(row.latency_ms),
    );
    if let Some(g) = row.grpc_status {
        line.push_str(&format!(" grpc-status={g}"));
    }
    if let Some(e) = &row.error {
        line.push_str(&format!(" error={e:?}"));
    }
    if wide {
        line.push_str(&format!(
            " src_ns={} src_id={} dst_ns={} dst_id={} dst_svc={} route={} duration={} req_bytes={} rsp_bytes={} time={}",
            dash(&row.source_namespace),
            dash(&row.source_identity),
            dash(&row.destination_namespace),
            dash(&row.destination_identity),
            dash(&row.destination_service),
            dash(&row.route),
            format_ms(row.duration_ms),
            row.request_bytes,
            row.response_bytes,
            dash(&row.time),
        ));
    }
    line
}

/// One NDJSON row as a YAML document starting with `---`: the row's own fields (a field this
/// CLI does not know is kept, as `-o json` keeps it), keys sorted.
pub fn yaml_document(line: &str) -> Result<String, String> {
    let row: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("a row that is not JSON: {e}"))?;
    let body = serde_yaml::to_string(&row).map_err(|e| format!("cannot write YAML: {e}"))?;
    Ok(format!("---\n{}", body.trim_end()))
}

/// Streams rows to `out` until the bound; returns the exit code (0; 1 when the control plane
/// cannot be reached or has no such workload; 64 on bad usage, including a filter the control
/// plane refused).
pub fn run(args: &TapArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let (control, runtime) =
        match crate::runtime::control_and_start(&args.control, "trellis tap", err) {
            Ok(started) => started,
            Err(code) => return code,
        };
    runtime.block_on(stream_rows(args, control, out, err))
}

async fn stream_rows(
    args: &TapArgs,
    control: SocketAddr,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let mut tap = match stream::open(control, &args.query()).await {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "trellis tap: {e}");
            return match e {
                stream::OpenError::Refused { status, .. } if status.as_u16() == 400 => {
                    crate::EXIT_USAGE
                }
                _ => crate::EXIT_FAILURE,
            };
        }
    };
    if !tap.proxies.is_empty() {
        let _ = writeln!(err, "tapping {}", tap.proxies.join(", "));
    }
    loop {
        let line = match tap.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return 0,
            Err(e) => {
                let _ = writeln!(err, "trellis tap: {e}");
                return crate::EXIT_FAILURE;
            }
        };
        let text = match args.output {
            TapOutput::Json => line,
            TapOutput::Yaml => match yaml_document(&line) {
                Ok(doc) => doc,
                Err(e) => {
                    let _ = writeln!(err, "trellis tap: skipping {e}");
                    continue;
                }
            },
            TapOutput::Table | TapOutput::Wide => match serde_json::from_str::<TapRow>(&line) {
                Ok(row) => render_line(&row, args.output == TapOutput::Wide),
                Err(e) => {
                    let _ = writeln!(err, "trellis tap: skipping a row that is not JSON: {e}");
                    continue;
                }
            },
        };
        // A closed pipe (`| head`) ends the tap quietly.
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return 0;
        }
    }
}

#[cfg(test)]
mod tests;
