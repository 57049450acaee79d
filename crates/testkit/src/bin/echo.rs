//! `trellis-testkit-echo`: the testkit's HTTP and TCP echo servers as a process, for running an
//! app inside a pod's network namespace (a namespace is a property of a process).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use trellis_testkit::servers::{EchoStats, serve_http, serve_tcp};

#[derive(Debug, Parser)]
struct Args {
    /// Where to serve the HTTP echo (HTTP/1.1, h2c, WebSocket).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Where to serve the TCP echo.
    #[arg(long)]
    tcp: Option<SocketAddr>,
    /// Written atomically once listening: `{"pid","http","tcp"}`.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let shutdown = CancellationToken::new();
    let stats = Arc::new(EchoStats::default());
    let mut ready = serde_json::json!({ "pid": std::process::id() });
    let mut tasks = Vec::new();
    if let Some(addr) = args.http {
        let listener = TcpListener::bind(addr).await?;
        ready["http"] = listener.local_addr()?.to_string().into();
        tasks.push(tokio::spawn(serve_http(
            listener,
            stats.clone(),
            shutdown.clone(),
        )));
    }
    if let Some(addr) = args.tcp {
        let listener = TcpListener::bind(addr).await?;
        ready["tcp"] = listener.local_addr()?.to_string().into();
        tasks.push(tokio::spawn(serve_tcp(
            listener,
            stats.clone(),
            shutdown.clone(),
        )));
    }
    if let Some(path) = &args.ready_file {
        // Write then rename, so a reader never sees half a file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&ready)?)?;
        std::fs::rename(&tmp, path)?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}
