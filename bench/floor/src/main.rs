//! `bench-floor`: the benchmark's reference peers (docs/benchmarks.md, issue 14).
//!
//! - `forward`: the floor forwarder, a minimal hyper forwarder (no TLS, no metrics, no routing)
//!   on one thread, the floor that a Trellis hop's latency and CPU are measured against.
//! - `grpc-server`: a tonic unary gRPC backend answering 1 KiB.
//! - `grpc-load`: a tonic unary gRPC load client, closed loop or at a fixed rate, printing
//!   requests, rate and latency percentiles as JSON.
//! - `backend` and `http-load`: a 1 KiB HTTP backend and a closed-loop HTTP/1.1 client, so the
//!   CI smoke run (bench/smoke.sh) needs neither nginx nor oha.

mod forward;
mod grpc;
mod http;
mod ready;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bench-floor",
    about = "Trellis benchmark peers: floor forwarder, gRPC backend and load"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Forward every request on LISTEN to UPSTREAM: HTTP/1.1 over a keep-alive pool, h2c (prior
    /// knowledge) over one multiplexed HTTP/2 connection, the same protocol as the request came in.
    Forward {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        /// Written once listening: `{"pid", "listen"}`.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Serve the benchmark's gRPC method (trellis.bench.v1.Echo/Unary), 1 KiB answers.
    GrpcServer {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Call trellis.bench.v1.Echo/Unary on TARGET and print a JSON summary on stdout.
    GrpcLoad(grpc::LoadArgs),
    /// Answer every HTTP/1.1 or h2c request with 1 KiB (the CI smoke run's backend).
    Backend {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Send N `GET /` on keep-alive connections, closed loop; print a JSON summary.
    HttpLoad(http::LoadArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread for everything, like `trellis-proxy --threads 1` (a current-thread runtime),
    // so that the floor and the proxy are compared on the same footing.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Forward {
                listen,
                upstream,
                ready_file,
            } => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("forward: binding --listen {listen}"))?;
                ready::write(ready_file.as_deref(), &listener)?;
                forward::serve(listener, upstream).await
            }
            Cmd::GrpcServer { listen, ready_file } => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("grpc-server: binding --listen {listen}"))?;
                ready::write(ready_file.as_deref(), &listener)?;
                grpc::serve(listener).await
            }
            Cmd::GrpcLoad(args) => {
                let report = grpc::load(&args).await?;
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }
            Cmd::Backend { listen, ready_file } => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("backend: binding --listen {listen}"))?;
                ready::write(ready_file.as_deref(), &listener)?;
                http::backend(listener).await
            }
            Cmd::HttpLoad(args) => {
                let report = http::load(&args).await?;
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }
        }
    })
}
