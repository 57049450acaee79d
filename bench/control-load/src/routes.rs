//! The control-plane scenario: N simulated proxies and E registered endpoints against a real
//! trellis-control; route changes and endpoint changes timed to each proxy's ACK.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fleet;
use crate::meshgen;
use crate::procstat::{self, Control, Cpu};
use crate::sim::{self, SimWorkload, UpdateEvent};
use crate::stats::{self, Summary};

#[derive(Clone, Debug, clap::Args)]
pub struct RoutesArgs {
    #[command(flatten)]
    pub fleet: fleet::FleetArgs,
    /// Route changes to time.
    #[arg(long, default_value_t = 5)]
    pub changes: u32,
    /// trellis-control's --poll-interval: how soon it reads a changed file.
    #[arg(long, default_value = "10ms")]
    pub poll_interval: String,
    /// trellis-control's --heartbeat-interval (the proxies heartbeat at it).
    #[arg(long, default_value = "2s")]
    pub heartbeat_interval: String,
    /// Bound of each wait (initial sync, each change), in seconds.
    #[arg(long, default_value_t = 120)]
    pub wait_seconds: u64,
}

#[derive(Debug, Serialize)]
pub struct ChangeResult {
    pub change: u32,
    /// From the file's rename to each affected proxy's ACK.
    pub from_write: Summary,
    /// From the first ACK of any proxy (the push has begun) to each ACK: the fan-out alone.
    pub fan_out: Summary,
    /// Updates the change caused that were not the expected one (should be 0).
    pub other_updates: usize,
    pub bytes_per_update: f64,
    pub control_cpu_seconds: f64,
    /// Of `control_cpu_seconds`, the kernel's (its sockets: `writev`, TCP on loopback).
    pub control_cpu_system_seconds: f64,
    /// The load tool's own CPU over the same span (the simulated proxies decoding and ACKing
    /// on its side of the same cores), and the kernel's share of it.
    pub load_cpu_seconds: f64,
    pub load_cpu_system_seconds: f64,
    /// Write system calls over the same span (`/proc/PID/io`), the control plane's and the
    /// load tool's: about one per proxy is one `writev` per stream.
    pub control_writes: u64,
    pub load_writes: u64,
}

#[derive(Debug, Serialize)]
pub struct EndpointChange {
    pub kind: &'static str,
    pub from_change: Summary,
    /// Encoded Update size each affected proxy received, median and max.
    pub bytes_per_stream_median: f64,
    pub bytes_per_stream_max: f64,
    pub endpoints_after: usize,
    pub control_cpu_seconds: f64,
    /// The load tool's own CPU over the same span.
    pub load_cpu_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct RoutesResult {
    pub proxies: usize,
    pub services: usize,
    pub endpoints: usize,
    pub subscriptions_per_proxy: usize,
    pub register_endpoints_seconds: f64,
    pub connect_proxies_seconds: f64,
    pub route_changes: Vec<ChangeResult>,
    /// Every change's samples pooled.
    pub route_change_pooled: Summary,
    pub route_change_fan_out_pooled: Summary,
    pub endpoint_changes: Vec<EndpointChange>,
    pub control_rss_mib_after_setup: f64,
    pub control_rss_mib_end: f64,
    pub control_peak_rss_mib: f64,
    pub control_cpu_seconds_setup: f64,
    pub control_cpu_seconds_total: f64,
}

pub async fn run(args: RoutesArgs, control_bin: PathBuf) -> Result<RoutesResult> {
    args.fleet.validate()?;
    let work = tempfile::tempdir().context("temp dir")?;
    let config = fleet::write_config(work.path(), args.fleet.services)?;
    let wait = Duration::from_secs(args.wait_seconds);
    let mut control = procstat::start_control(
        &control_bin,
        &config,
        work.path(),
        &[
            &[
                "--poll-interval",
                &args.poll_interval,
                "--heartbeat-interval",
                &args.heartbeat_interval,
            ],
            &fleet::ENDPOINTS_STAY[..],
        ]
        .concat(),
        Duration::from_secs(60),
    )?;
    let result = drive(&args, &mut control, &config, wait).await;
    let _ = std::fs::copy(
        work.path().join("control.log"),
        std::env::temp_dir().join("bench-cp-control.log"),
    );
    control.proc.stop(Duration::from_secs(5));
    result
}

async fn drive(
    args: &RoutesArgs,
    control: &mut Control,
    config: &std::path::Path,
    wait: Duration,
) -> Result<RoutesResult> {
    let started = Instant::now();
    fleet::register_endpoints(
        &control.discovery,
        args.fleet.endpoints,
        args.fleet.services,
    )
    .await?;
    let register_endpoints_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "bench-cp: {} endpoints registered in {register_endpoints_seconds:.1} s",
        args.fleet.endpoints
    );

    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let started = Instant::now();
    // Every proxy's every Subscribe is answered once; then wait for quiet.
    let expected =
        fleet::connect_proxies(&args.fleet, &control.discovery, events_tx, stop.clone()).await?;
    let mut answered = 0;
    let initial = collect_until(&mut events, Instant::now() + wait, |_| {
        answered += 1;
        answered >= expected
    })
    .await;
    if initial.len() < expected {
        bail!(
            "only {} of {expected} initial Updates arrived within {wait:?}",
            initial.len()
        );
    }
    let connect_proxies_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "bench-cp: {} proxies synced in {connect_proxies_seconds:.1} s",
        args.fleet.proxies
    );
    let settled = quiet(&mut events, Duration::from_millis(500), wait).await;
    let svc0 = meshgen::service_name(0);
    // The last svc-0 Update, once quiet: a proxy's first answer may predate the last few
    // registrations (the control plane publishes them on a short pace), which follow it.
    let base_endpoints = initial
        .iter()
        .chain(&settled)
        .rev()
        .find(|e| e.service == svc0)
        .map(|e| e.endpoints)
        .context("no Update for svc-0")?;

    let (rss_setup, _) = control.proc.memory_kib()?;
    let cpu_setup = control.proc.cpu_seconds()?;

    let mut route_changes = Vec::new();
    let (mut pooled, mut pooled_fan) = (Vec::new(), Vec::new());
    for change in 1..=args.changes {
        let (cpu0, own0) = (control.proc.cpu()?, Cpu::own()?);
        let pid = Some(control.proc.pid());
        let (writes0, own_writes0) = (
            procstat::write_syscalls(pid)?,
            procstat::write_syscalls(None)?,
        );
        let t0 = Instant::now();
        meshgen::write_atomic(
            config,
            fleet::ROUTE_FILE,
            &meshgen::virtual_service_yaml(change),
        )?;
        let carries = |e: &UpdateEvent| e.service == svc0 && e.marker == Some(change);
        let mut reached = HashSet::new();
        let seen = collect_until(&mut events, t0 + wait, |e| {
            if carries(e) {
                reached.insert(e.proxy);
            }
            reached.len() >= args.fleet.proxies
        })
        .await;
        quiet(&mut events, Duration::from_millis(300), wait).await;
        // Read before anything else runs: the quiet wait above costs next to nothing.
        let (cpu, own) = (control.proc.cpu()?.since(&cpu0), Cpu::own()?.since(&own0));
        let control_writes = procstat::write_syscalls(pid)? - writes0;
        let load_writes = procstat::write_syscalls(None)? - own_writes0;
        let firsts = per_proxy_first(&seen, carries);
        let hits: Vec<&UpdateEvent> = firsts.values().copied().collect();
        let first_ack = hits.iter().map(|e| e.acked_at).min().unwrap_or(t0);
        let from_write: Vec<f64> = hits.iter().map(|e| ms(e.acked_at - t0)).collect();
        let fan: Vec<f64> = hits.iter().map(|e| ms(e.acked_at - first_ack)).collect();
        let bytes = stats::median(hits.iter().map(|e| e.bytes as f64).collect());
        pooled.extend(from_write.iter().copied());
        pooled_fan.extend(fan.iter().copied());
        let result = ChangeResult {
            change,
            from_write: Summary::of(from_write, args.fleet.proxies),
            fan_out: Summary::of(fan, args.fleet.proxies),
            other_updates: seen.len() - hits.len(),
            bytes_per_update: bytes,
            control_cpu_seconds: cpu.total(),
            control_cpu_system_seconds: cpu.system,
            load_cpu_seconds: own.total(),
            load_cpu_system_seconds: own.system,
            control_writes,
            load_writes,
        };
        eprintln!(
            "bench-cp: route change {change}: {}/{} acked, p50 {:.1} p90 {:.1} max {:.1} ms from write; CPU control {:.0} ms ({:.0} kernel), bench-cp {:.0} ms ({:.0} kernel); writes control {}, bench-cp {}",
            result.from_write.count,
            args.fleet.proxies,
            result.from_write.p50_ms,
            result.from_write.p90_ms,
            result.from_write.max_ms,
            cpu.total() * 1e3,
            cpu.system * 1e3,
            own.total() * 1e3,
            own.system * 1e3,
            control_writes,
            load_writes,
        );
        route_changes.push(result);
    }

    let endpoint_changes = endpoint_changes(
        control,
        &mut events,
        args.fleet.proxies,
        base_endpoints,
        wait,
    )
    .await?;
    let (rss_end, peak) = control.proc.memory_kib()?;
    Ok(RoutesResult {
        proxies: args.fleet.proxies,
        services: args.fleet.services,
        endpoints: args.fleet.endpoints,
        subscriptions_per_proxy: args.fleet.subscriptions,
        register_endpoints_seconds,
        connect_proxies_seconds,
        route_change_pooled: Summary::of(pooled, args.fleet.proxies * args.changes as usize),
        route_change_fan_out_pooled: Summary::of(
            pooled_fan,
            args.fleet.proxies * args.changes as usize,
        ),
        route_changes,
        endpoint_changes,
        control_rss_mib_after_setup: mib(rss_setup),
        control_rss_mib_end: mib(rss_end),
        control_peak_rss_mib: mib(peak),
        control_cpu_seconds_setup: cpu_setup,
        control_cpu_seconds_total: control.proc.cpu_seconds()?,
    })
}

/// Adds one endpoint to svc-0 (a workload registers), then removes it (it re-registers with
/// another app label); times each and weighs the Updates.
async fn endpoint_changes(
    control: &Control,
    events: &mut mpsc::UnboundedReceiver<UpdateEvent>,
    proxies: usize,
    base: usize,
    wait: Duration,
) -> Result<Vec<EndpointChange>> {
    let svc0 = meshgen::service_name(0);
    let extra = SimWorkload {
        name: "ep-extra".into(),
        app: svc0.clone(),
        inbound: "127.255.255.1:15006".into(),
        extra_labels: vec![],
    };
    let channel = sim::connect(&control.discovery).await?;
    let stream = sim::open(channel, vec![]).await?;
    let mut out = Vec::new();
    for (kind, app, want) in [
        ("add", svc0.clone(), base + 1),
        ("remove", "gone".to_string(), base),
    ] {
        let (cpu0, own0) = (control.proc.cpu_seconds()?, Cpu::own()?);
        let t0 = Instant::now();
        let w = SimWorkload {
            app,
            ..extra.clone()
        };
        stream
            .tx
            .send(w.hello("ep-extra"))
            .await
            .ok()
            .context("stream closed")?;
        let carries = |e: &UpdateEvent| e.service == svc0 && e.endpoints == want;
        let mut reached = HashSet::new();
        let seen = collect_until(events, t0 + wait, |e| {
            if carries(e) {
                reached.insert(e.proxy);
            }
            reached.len() >= proxies
        })
        .await;
        quiet(events, Duration::from_millis(300), wait).await;
        let (cpu, own) = (control.proc.cpu_seconds()? - cpu0, Cpu::own()?.since(&own0));
        let firsts = per_proxy_first(&seen, carries);
        let bytes: Vec<f64> = firsts.values().map(|e| e.bytes as f64).collect();
        let max = bytes.iter().copied().fold(f64::NAN, f64::max);
        let change = EndpointChange {
            kind,
            from_change: Summary::of(
                firsts.values().map(|e| ms(e.acked_at - t0)).collect(),
                proxies,
            ),
            bytes_per_stream_median: stats::median(bytes),
            bytes_per_stream_max: max,
            endpoints_after: want,
            control_cpu_seconds: cpu,
            load_cpu_seconds: own.total(),
        };
        eprintln!(
            "bench-cp: endpoint {kind}: {}/{proxies} acked, {:.0} bytes per stream, p90 {:.1} ms",
            change.from_change.count, change.bytes_per_stream_median, change.from_change.p90_ms
        );
        out.push(change);
    }
    drop(stream);
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The first event per proxy that `pred` accepts.
fn per_proxy_first(
    seen: &[UpdateEvent],
    pred: impl Fn(&UpdateEvent) -> bool,
) -> HashMap<u32, &UpdateEvent> {
    let mut out = HashMap::new();
    for e in seen.iter().filter(|e| pred(e)) {
        out.entry(e.proxy).or_insert(e);
    }
    out
}

/// Collects events until `done`, told of each as it arrives, says so, or the deadline passes.
/// `done` keeps its own count: it used to be handed everything seen after each batch and
/// rescan it (a map of the first event per proxy), O(N²) in events while the fan-out ran,
/// on the load tool's main thread, on the cores the control plane was being timed on.
async fn collect_until(
    events: &mut mpsc::UnboundedReceiver<UpdateEvent>,
    deadline: Instant,
    mut done: impl FnMut(&UpdateEvent) -> bool,
) -> Vec<UpdateEvent> {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) => {
                let enough = done(&e);
                seen.push(e);
                if enough {
                    return seen;
                }
            }
            Ok(None) | Err(_) => return seen,
        }
    }
}

/// Drops events until none arrived for `gap` (bounded by `limit`).
/// Returns the events it drained.
async fn quiet(
    events: &mut mpsc::UnboundedReceiver<UpdateEvent>,
    gap: Duration,
    limit: Duration,
) -> Vec<UpdateEvent> {
    let deadline = Instant::now() + limit;
    let mut drained = Vec::new();
    while Instant::now() < deadline {
        match tokio::time::timeout(gap, events.recv()).await {
            Ok(Some(e)) => drained.push(e),
            Ok(None) | Err(_) => break,
        }
    }
    drained
}
