//! Proxy memory against mesh size, and proxy startup time: one real trellis-proxy that talks
//! to a few services, against a control plane that knows a small and then a large mesh.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::meshgen;
use crate::procstat::{self, Proc};
use crate::stats::Summary;

#[derive(Clone, Debug, clap::Args)]
pub struct ProxyMemArgs {
    /// Services of the small mesh (ServiceEntries, the talked-to ones included).
    #[arg(long, default_value_t = 100)]
    pub small_services: usize,
    /// Services of the large mesh.
    #[arg(long, default_value_t = 10_000)]
    pub large_services: usize,
    /// Static endpoints of each service the proxy does not talk to (10 x 10,000 = 100,000).
    #[arg(long, default_value_t = 10)]
    pub endpoints_per_service: usize,
    /// Services the proxy talks to.
    #[arg(long, default_value_t = 5)]
    pub talk_to: usize,
    /// Requests sent to each talked-to service before memory is read.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Proxy starts timed per mesh (spawn to admin /ready 200).
    #[arg(long, default_value_t = 7)]
    pub starts: usize,
    /// trellis-proxy binary (default: next to this one).
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct MeshRun {
    pub services: usize,
    pub endpoints: usize,
    pub control_ready_seconds: f64,
    pub control_rss_mib: f64,
    pub proxy_rss_mib: f64,
    pub proxy_peak_rss_mib: f64,
    pub requests_ok: usize,
    pub requests_failed: usize,
    /// Spawn to `/ready` 200 (config channel up, identity assigned, certificate issued).
    pub startup: Summary,
}

#[derive(Debug, Serialize)]
pub struct ProxyMemResult {
    pub small: MeshRun,
    pub large: MeshRun,
    /// (large - small) / small proxy RSS.
    pub proxy_rss_growth: f64,
}

pub async fn run(args: ProxyMemArgs, control_bin: PathBuf) -> Result<ProxyMemResult> {
    let proxy_bin = args
        .proxy_bin
        .clone()
        .unwrap_or_else(|| procstat::default_bin("trellis-proxy"));
    let echo = start_echo().await?;
    let small = mesh_run(&args, &control_bin, &proxy_bin, args.small_services, echo).await?;
    let large = mesh_run(&args, &control_bin, &proxy_bin, args.large_services, echo).await?;
    let growth = (large.proxy_rss_mib - small.proxy_rss_mib) / small.proxy_rss_mib;
    Ok(ProxyMemResult {
        small,
        large,
        proxy_rss_growth: growth,
    })
}

async fn mesh_run(
    args: &ProxyMemArgs,
    control_bin: &Path,
    proxy_bin: &Path,
    services: usize,
    echo: SocketAddr,
) -> Result<MeshRun> {
    let work = tempfile::tempdir()?;
    let config = work.path().join("config");
    std::fs::create_dir(&config)?;
    let bulk = services.saturating_sub(args.talk_to);
    meshgen::write_entries(
        &config,
        args.talk_to,
        echo.port(),
        bulk,
        args.endpoints_per_service,
    )?;
    let t = Instant::now();
    let control = procstat::start_control(
        control_bin,
        &config,
        work.path(),
        &["--registration-grace", "0s"],
        Duration::from_secs(180),
    )?;
    let control_ready_seconds = t.elapsed().as_secs_f64();
    eprintln!(
        "bench-cp: control plane with {services} services ready in {control_ready_seconds:.1} s"
    );
    let control_url = format!("http://{}", control.discovery);

    // The measured proxy: traffic to each talked-to service, then its memory.
    let (mut proxy, ports) =
        start_proxy(proxy_bin, &control_url, work.path(), args.talk_to, "client")?;
    let admin = ports.admin;
    wait_http_ready(admin, &mut proxy, Duration::from_secs(30)).await?;
    let (mut ok, mut failed) = (0, 0);
    for port in &ports.outbound {
        let (o, f) = requests(*port, args.requests).await;
        ok += o;
        failed += f;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss, peak) = proxy.memory_kib()?;
    let (control_rss, _) = control.proc.memory_kib()?;
    proxy.stop(Duration::from_secs(5));

    let mut startups = Vec::new();
    for n in 0..args.starts {
        let (mut p, ports) = start_proxy(
            proxy_bin,
            &control_url,
            work.path(),
            args.talk_to,
            &format!("start-{n}"),
        )?;
        let t = Instant::now();
        wait_http_ready(ports.admin, &mut p, Duration::from_secs(30)).await?;
        startups.push(t.elapsed().as_secs_f64() * 1000.0);
        p.stop(Duration::from_secs(5));
    }
    control.proc.stop(Duration::from_secs(5));
    eprintln!(
        "bench-cp: {services} services: proxy RSS {:.1} MiB, {ok} requests ok, {failed} failed",
        rss as f64 / 1024.0
    );
    Ok(MeshRun {
        services,
        endpoints: bulk * args.endpoints_per_service + args.talk_to,
        control_ready_seconds,
        control_rss_mib: control_rss as f64 / 1024.0,
        proxy_rss_mib: rss as f64 / 1024.0,
        proxy_peak_rss_mib: peak as f64 / 1024.0,
        requests_ok: ok,
        requests_failed: failed,
        startup: Summary::of(startups, args.starts),
    })
}

struct ProxyPorts {
    admin: SocketAddr,
    outbound: Vec<SocketAddr>,
}

fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

fn start_proxy(
    bin: &Path,
    control: &str,
    work: &Path,
    talk_to: usize,
    name: &str,
) -> Result<(Proc, ProxyPorts)> {
    let admin = free_port()?;
    let inbound = free_port()?;
    let outbound: Vec<SocketAddr> = (0..talk_to).map(|_| free_port()).collect::<Result<_>>()?;
    let log = std::fs::File::create(work.join(format!("proxy-{name}.log")))?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "--control",
        control,
        "--workload",
        name,
        "--labels",
        "app=bench-client",
    ])
    .args([
        "--inbound",
        &inbound.to_string(),
        "--admin",
        &admin.to_string(),
    ])
    .args(["--outbound", "none", "--log-level", "warn"]);
    for (i, listen) in outbound.iter().enumerate() {
        cmd.arg("--outbound-port")
            .arg(format!("{listen}=198.18.0.{}:80", i + 1));
    }
    cmd.stdout(Stdio::null()).stderr(log);
    let proc = Proc::spawn("trellis-proxy", &mut cmd)?;
    Ok((proc, ProxyPorts { admin, outbound }))
}

/// Polls `GET /ready` every 2 ms until 200 (bounded).
async fn wait_http_ready(admin: SocketAddr, proc: &mut Proc, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Ok(200)) =
            tokio::time::timeout(Duration::from_millis(200), get_status(admin, "/ready")).await
        {
            return Ok(());
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            bail!("trellis-proxy exited ({status}) before it was ready");
        }
        if Instant::now() > deadline {
            bail!("trellis-proxy at {admin} not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn get_status(addr: SocketAddr, path: &str) -> Result<u16> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes())
        .await?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await?;
    status_of(&line)
}

fn status_of(line: &str) -> Result<u16> {
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP status line: {line:?}"))
}

/// `count` keep-alive GETs on one connection; (ok, failed).
async fn requests(addr: SocketAddr, count: usize) -> (usize, usize) {
    let Ok(Ok(stream)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
    else {
        return (0, count);
    };
    let mut s = BufReader::new(stream);
    let mut ok = 0;
    for _ in 0..count {
        match tokio::time::timeout(Duration::from_secs(5), one_request(&mut s)).await {
            Ok(Ok(200)) => ok += 1,
            _ => return (ok, count - ok),
        }
    }
    (ok, count - ok)
}

async fn one_request(s: &mut BufReader<TcpStream>) -> Result<u16> {
    s.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")
        .await?;
    let mut line = String::new();
    s.read_line(&mut line).await?;
    let status = status_of(&line)?;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if s.read_line(&mut h).await? == 0 {
            bail!("connection closed in the head");
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().context("content-length")?;
        }
    }
    let mut body = vec![0; length];
    s.read_exact(&mut body).await?;
    Ok(status)
}

/// A plain HTTP/1.1 server on loopback answering every request with 1 KiB (keep-alive).
async fn start_echo() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_echo(stream));
        }
    });
    Ok(addr)
}

async fn serve_echo(stream: TcpStream) {
    let mut s = BufReader::new(stream);
    let body = [b'x'; 1024];
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n",
        body.len()
    );
    // Bounded by the peer: the loop ends when it closes or sends something unreadable.
    loop {
        let mut length = 0usize;
        let mut first = true;
        loop {
            let mut line = String::new();
            match s.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                if first {
                    continue;
                }
                break;
            }
            first = false;
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        if length > 0 {
            let mut skip = vec![0; length.min(1 << 20)];
            if s.read_exact(&mut skip).await.is_err() {
                return;
            }
        }
        let w = s.get_mut();
        if w.write_all(head.as_bytes()).await.is_err() || w.write_all(&body).await.is_err() {
            return;
        }
    }
}
