//! `trellis-testkit-load`: the testkit's fixed-rate load generator as a process, for sending
//! load from inside a pod's network namespace. Prints a `LoadReport` as JSON on stdout.

use std::time::Duration;

use clap::Parser;
use trellis_testkit::load::{LoadSpec, run_async};

#[derive(Debug, Parser)]
struct Args {
    /// The URL to GET.
    #[arg(long)]
    url: String,
    /// Requests per second.
    #[arg(long)]
    rate: u32,
    /// How long to send, milliseconds.
    #[arg(long)]
    duration_ms: u64,
    /// Per-request deadline, milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut spec = LoadSpec::new(args.url, args.rate, Duration::from_millis(args.duration_ms));
    spec.timeout = Duration::from_millis(args.timeout_ms);
    let report = run_async(&spec).await.map_err(anyhow::Error::msg)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
