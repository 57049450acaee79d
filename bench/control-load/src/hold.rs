//! `bench-cp hold`: the control plane's memory per connected proxy. N simulated proxies
//! connect, sync (every Subscribe answered) and stay connected, heartbeating, for a while;
//! the control plane's resident memory is read from /proc at each phase. No changes are
//! pushed, so what grows between "endpoints registered" and "proxies synced" is what a
//! connected proxy costs (its HTTP/2 connection, its stream, its session and registry entry).
//!
//! To weigh the parts, run it with one setting changed at a time (an environment variable
//! such as `MALLOC_ARENA_MAX` reaches the control plane, which inherits the environment), or
//! with `--control-bin` naming a wrapper that runs trellis-control under a heap profiler.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fleet;
use crate::procstat::{self, Proc};

#[derive(Clone, Debug, clap::Args)]
pub struct HoldArgs {
    #[command(flatten)]
    pub fleet: fleet::FleetArgs,
    /// How long the proxies stay connected after syncing before the last reading.
    #[arg(long, default_value_t = 5)]
    pub hold_seconds: u64,
    /// trellis-control's --heartbeat-interval (the proxies heartbeat at it).
    #[arg(long, default_value = "2s")]
    pub heartbeat_interval: String,
    /// Bound of each wait (registration, initial sync), in seconds.
    #[arg(long, default_value_t = 120)]
    pub wait_seconds: u64,
}

/// The control plane's memory at one phase, MiB.
#[derive(Debug, Serialize)]
pub struct Phase {
    pub phase: &'static str,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// Anonymous resident memory (heap and stacks): what connections add to.
    pub anon_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct HoldResult {
    pub proxies: usize,
    pub services: usize,
    pub endpoints: usize,
    pub subscriptions_per_proxy: usize,
    pub connect_proxies_seconds: f64,
    pub phases: Vec<Phase>,
    /// (RSS once synced − RSS with the endpoints registered) / proxies, KiB.
    pub rss_kib_per_proxy: f64,
    /// The same for anonymous memory.
    pub anon_kib_per_proxy: f64,
}

pub async fn run(args: HoldArgs, control_bin: PathBuf) -> Result<HoldResult> {
    args.fleet.validate()?;
    let work = tempfile::tempdir().context("temp dir")?;
    let config = fleet::write_config(work.path(), args.fleet.services)?;
    let control = procstat::start_control(
        &control_bin,
        &config,
        work.path(),
        &[
            &["--heartbeat-interval", &args.heartbeat_interval],
            &fleet::ENDPOINTS_STAY[..],
        ]
        .concat(),
        Duration::from_secs(60),
    )?;
    let result = drive(&args, &control.proc, &control.discovery).await;
    let _ = std::fs::copy(
        work.path().join("control.log"),
        std::env::temp_dir().join("bench-cp-control.log"),
    );
    // A graceful stop, so that a heap profiler wrapping the control plane writes its file.
    control.proc.stop(Duration::from_secs(20));
    result
}

async fn drive(args: &HoldArgs, control: &Proc, discovery: &str) -> Result<HoldResult> {
    let wait = Duration::from_secs(args.wait_seconds);
    let mut phases = vec![phase("started", control)?];
    tokio::time::timeout(
        wait,
        fleet::register_endpoints(discovery, args.fleet.endpoints, args.fleet.services),
    )
    .await
    .context("registering the endpoints took too long")??;
    // Let the paced registry publication settle before reading: wait until the control plane
    // is idle (no CPU tick in 100 ms; /proc counts CPU in 10 ms ticks), bounded.
    let settled = control
        .wait_idle(
            Duration::from_millis(100),
            Duration::from_millis(10),
            Duration::from_secs(10),
        )
        .await?;
    eprintln!(
        "bench-cp: control plane idle {} ms after the last registration",
        settled.as_millis()
    );
    let registered = phase("endpoints registered", control)?;
    phases.push(registered);

    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let started = Instant::now();
    let expected = fleet::connect_proxies(&args.fleet, discovery, events_tx, stop.clone()).await?;
    let deadline = started + wait;
    let mut seen = 0;
    while seen < expected {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(_)) => seen += 1,
            Ok(None) | Err(_) => bail!("only {seen} of {expected} initial Updates within {wait:?}"),
        }
    }
    let connect_proxies_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "bench-cp: {} proxies synced in {connect_proxies_seconds:.1} s",
        args.fleet.proxies
    );
    // Late Updates (registrations published after a first answer) drain before reading.
    let quiet_until = Instant::now() + wait;
    while Instant::now() < quiet_until {
        match tokio::time::timeout(Duration::from_millis(500), events.recv()).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let synced = phase("proxies synced", control)?;
    tokio::time::sleep(Duration::from_secs(args.hold_seconds)).await;
    let held = phase("held", control)?;
    let per =
        |f: fn(&Phase) -> f64| (f(&synced) - f(&phases[1])) * 1024.0 / args.fleet.proxies as f64;
    let (rss_kib_per_proxy, anon_kib_per_proxy) = (per(|p| p.rss_mib), per(|p| p.anon_mib));
    phases.push(synced);
    phases.push(held);
    Ok(HoldResult {
        proxies: args.fleet.proxies,
        services: args.fleet.services,
        endpoints: args.fleet.endpoints,
        subscriptions_per_proxy: args.fleet.subscriptions,
        connect_proxies_seconds,
        phases,
        rss_kib_per_proxy,
        anon_kib_per_proxy,
    })
}

fn phase(name: &'static str, control: &Proc) -> Result<Phase> {
    let (rss, peak) = control.memory_kib()?;
    let path = format!("/proc/{}/status", control.pid());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let anon = text
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .with_context(|| format!("{path}: no RssAnon"))?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let p = Phase {
        phase: name,
        rss_mib: mib(rss),
        peak_rss_mib: mib(peak),
        anon_mib: mib(anon),
    };
    eprintln!(
        "bench-cp: {name}: RSS {:.1} MiB (peak {:.1}, anonymous {:.1})",
        p.rss_mib, p.peak_rss_mib, p.anon_mib
    );
    Ok(p)
}
