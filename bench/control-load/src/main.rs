//! `bench-cp`: load and memory benchmarks of the control plane and the proxy (issue 14),
//! against real trellis-control and trellis-proxy processes on loopback. `bench/control.sh`
//! runs it; results are JSON on stdout (or `--out`).
//!
//! - `routes`: N simulated proxies (discovery streams that ACK like trellis-proxy) and E
//!   registered endpoints; route changes and endpoint changes timed to each proxy's ACK;
//!   the control plane's RSS and CPU from /proc.
//! - `proxy-mem`: one trellis-proxy talking to a few services, its RSS with a small and a
//!   large mesh known to the control plane, and its startup time (spawn to `/ready`).
//!
//! Not part of `cargo test`: it takes minutes and wants a quiet machine. Every wait is bounded.

mod fleet;
mod hold;
mod meshgen;
mod procstat;
mod proxymem;
mod routes;
mod sim;
mod stats;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "bench-cp", about = "Control-plane and proxy-memory benchmarks")]
struct Cli {
    /// trellis-control binary (default: next to this one).
    #[arg(long, global = true)]
    control_bin: Option<PathBuf>,
    /// Write the JSON result here as well as to stdout.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Tokio worker threads of the load tool (the control plane needs the other cores).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Route and endpoint changes pushed to N simulated proxies.
    Routes(routes::RoutesArgs),
    /// Proxy RSS against mesh size, and proxy startup time.
    ProxyMem(proxymem::ProxyMemArgs),
    /// Control-plane memory per connected proxy: connect, sync and hold N proxies.
    Hold(hold::HoldArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // No tracing subscriber otherwise: tracing then hands every span h2, hyper and tower make
    // for each message to the `log` fallback, about 7 % of the tool's instructions per Update
    // it reads and ACKs (callgrind). With one that wants nothing they are not made. The
    // tool's messages are its own eprintln!s.
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
    let control_bin = cli
        .control_bin
        .clone()
        .unwrap_or_else(|| procstat::default_bin("trellis-control"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let value = runtime.block_on(async move {
        anyhow::Ok(match cli.command {
            Cmd::Routes(args) => serde_json::to_value(routes::run(args, control_bin).await?)?,
            Cmd::ProxyMem(args) => serde_json::to_value(proxymem::run(args, control_bin).await?)?,
            Cmd::Hold(args) => serde_json::to_value(hold::run(args, control_bin).await?)?,
        })
    })?;
    let text = serde_json::to_string_pretty(&value)?;
    if let Some(out) = &cli.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    println!("{text}");
    // The simulated proxies' tasks are not joined: leaving is enough.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}
