//! The gRPC peers: a unary backend that answers 1 KiB, and a load client for it.
//!
//! The load client keeps `streams` calls in flight on each of `conns` HTTP/2 connections. Closed
//! loop by default (each call starts when the previous one on its stream ends); with `--rate`
//! each stream sends on a fixed schedule and a call's latency counts from when it was due, not
//! when it was sent, so a stall is charged to the calls queued behind it (no coordinated
//! omission), as oha's `--latency-correction` does for the HTTP runs.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

pub mod pb {
    tonic::include_proto!("trellis.bench.v1");
}

use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};

/// The answer's size: the HTTP runs' body size.
const ANSWER_BYTES: usize = 1024;

#[derive(Debug)]
struct Backend {
    answer: Vec<u8>,
}

#[tonic::async_trait]
impl Echo for Backend {
    async fn unary(
        &self,
        _req: tonic::Request<pb::Payload>,
    ) -> Result<tonic::Response<pb::Payload>, tonic::Status> {
        Ok(tonic::Response::new(pb::Payload {
            body: self.answer.clone(),
        }))
    }
}

pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(Backend {
            answer: vec![b'x'; ANSWER_BYTES],
        }))
        .serve_with_incoming(incoming)
        .await
        .context("grpc-server")
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The server or proxy to call: host:port (plaintext HTTP/2).
    #[arg(long)]
    target: SocketAddr,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    conns: u32,
    /// Calls in flight per connection.
    #[arg(long, default_value_t = 4)]
    streams: u32,
    /// How long to send, seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Calls per second over all streams; closed loop when absent.
    #[arg(long)]
    rate: Option<f64>,
}

#[derive(Debug, Default)]
struct StreamResult {
    latencies_us: Vec<u32>,
    errors: u64,
}

pub async fn load(args: &LoadArgs) -> anyhow::Result<serde_json::Value> {
    if args.conns == 0 || args.streams == 0 || !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        anyhow::bail!("grpc-load: --conns and --streams must be > 0, --seconds in (0, 3600]");
    }
    let uri = format!("http://{}", args.target);
    let mut channels = Vec::new();
    for _ in 0..args.conns {
        // One Endpoint::connect per connection: each Channel is its own HTTP/2 connection.
        let channel = Endpoint::from_shared(uri.clone())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("grpc-load: connecting to {uri}"))?;
        channels.push(channel);
    }
    let total_streams = args.conns * args.streams;
    let interval = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(f64::from(total_streams) / r));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for (c, channel) in channels.iter().enumerate() {
        for s in 0..args.streams {
            let client = EchoClient::new(channel.clone());
            // Spread the streams' schedules over one interval so they do not fire together.
            let index = c as u32 * args.streams + s;
            let offset = interval.map(|i| i.mul_f64(f64::from(index) / f64::from(total_streams)));
            tasks.spawn(run_stream(client, start, deadline, interval, offset));
        }
    }
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.context("grpc-load: a stream task failed")?;
        latencies.extend(result.latencies_us);
        errors += result.errors;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |q: f64| -> Option<f64> {
        if latencies.is_empty() {
            return None;
        }
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        Some(f64::from(latencies[i]) / 1e3)
    };
    Ok(serde_json::json!({
        "requests": latencies.len(),
        "errors": errors,
        "seconds": elapsed,
        "rps": latencies.len() as f64 / elapsed,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "conns": args.conns,
        "streams": args.streams,
        "rate": args.rate,
    }))
}

async fn run_stream(
    mut client: EchoClient<Channel>,
    start: Instant,
    deadline: Instant,
    interval: Option<Duration>,
    offset: Option<Duration>,
) -> StreamResult {
    let mut result = StreamResult::default();
    let mut due = start + offset.unwrap_or_default();
    loop {
        let sent_at = match interval {
            Some(step) => {
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due).await;
                let at = due;
                due += step;
                at
            }
            None => {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                now
            }
        };
        let call = client.unary(pb::Payload {
            body: b"bench".to_vec(),
        });
        // A call stuck past the run's end plus 10 s counts as an error, so the run ends.
        match tokio::time::timeout_at(deadline + Duration::from_secs(10), call).await {
            Ok(Ok(_)) => {
                let us = sent_at.elapsed().as_micros();
                result
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Ok(Err(_)) | Err(_) => result.errors += 1,
        }
    }
    result
}
