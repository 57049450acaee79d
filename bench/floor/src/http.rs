//! Plain HTTP peers for the CI smoke run (bench/smoke.py), so it needs no nginx or oha: a
//! backend answering every request with 1 KiB, and a closed-loop HTTP/1.1 load client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

/// The benchmark's response body size (bench/bench.py's BODY_BYTES).
const BODY: &[u8] = &[b'x'; 1024];

pub async fn backend(listener: TcpListener) -> anyhow::Result<()> {
    let server = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                eprintln!("bench-floor backend: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
            });
            let _ = server.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// host:port to send `GET /` to.
    #[arg(long)]
    target: SocketAddr,
    /// Requests in all, split over the connections.
    #[arg(long)]
    requests: u64,
    /// Keep-alive connections, one request in flight on each.
    #[arg(long, default_value_t = 1)]
    conns: u64,
}

/// Sends `requests` GETs over `conns` keep-alive connections, closed loop; prints how many were
/// answered 200 with the full body, how many failed, and the wall time.
pub async fn load(args: &LoadArgs) -> anyhow::Result<serde_json::Value> {
    if args.conns == 0 || args.requests == 0 || args.requests > 10_000_000 {
        anyhow::bail!("http-load: --conns must be > 0 and --requests in 1..=10000000");
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..args.conns {
        let share = args.requests / args.conns + u64::from(c < args.requests % args.conns);
        let target = args.target;
        tasks.spawn(async move { one_connection(target, share).await });
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    while let Some(joined) = tasks.join_next().await {
        let (o, f) = joined.context("http-load: a connection task failed")??;
        ok += o;
        failed += f;
    }
    Ok(serde_json::json!({
        "ok": ok,
        "failed": failed,
        "seconds": start.elapsed().as_secs_f64(),
    }))
}

async fn one_connection(target: SocketAddr, requests: u64) -> anyhow::Result<(u64, u64)> {
    let stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("http-load: connecting to {target}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("http-load: HTTP/1.1 handshake")?;
    tokio::spawn(conn);
    let host = target.to_string();
    let (mut ok, mut failed) = (0u64, 0u64);
    for _ in 0..requests {
        let req = Request::get("/")
            .header(http::header::HOST, host.as_str())
            .body(Empty::<Bytes>::new())?;
        // A request that fails ends this connection's run: the proxy closed it.
        let resp = match sender.send_request(req).await {
            Ok(resp) => resp,
            Err(_) => {
                failed += 1;
                break;
            }
        };
        let status = resp.status();
        let len = resp.into_body().collect().await.map(|b| b.to_bytes().len());
        if status == 200 && matches!(len, Ok(n) if n == BODY.len()) {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    Ok((ok, failed))
}
