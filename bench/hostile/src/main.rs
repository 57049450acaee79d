//! `bench-hostile`: what hostile clients cost the other clients of a release `trellis-proxy`
//! (issue 12: "keeps serving other clients within 2x its normal p99 and its memory stays
//! bounded"), measured rather than asserted (docs/reliability.md, "Hostile clients, measured").
//!
//! For each attack (trellis_testkit::attacks, the chaos tests' own): a fresh proxy pinned to
//! one CPU (`taskset`, `--threads 1`) in front of an echo backend; a good client at a fixed rate
//! alone (the baseline), then while the same attack is aimed at a plain listener instead (the
//! control: what the attack costs the good client through the machine alone, [`control`]),
//! then while it is aimed at the proxy; the proxy's RSS and fds sampled. This process (good
//! client, attackers, backend) pins itself to another CPU, its attacker threads in the idle
//! scheduling class ([`sched`]). One JSON document on stdout; progress on stderr. Every phase
//! is bounded in time.

mod control;
mod sched;
mod victim;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Parser;
use serde::Serialize;
use trellis_testkit::HttpEcho;
use trellis_testkit::attacks::{self, Attack};
use trellis_testkit::load::{self, LoadReport};

use crate::control::{Sink, SinkStats};
use crate::sched::Policy;
use crate::victim::Victim;

#[derive(Debug, Parser)]
#[command(
    name = "bench-hostile",
    about = "A good client's latency through trellis-proxy, alone and under hostile clients"
)]
struct Cli {
    /// The trellis-proxy binary (a release build).
    #[arg(long)]
    proxy: PathBuf,
    /// The CPU the proxy is pinned to.
    #[arg(long, default_value_t = 0)]
    proxy_cpu: u32,
    /// The CPU this process (good client, attackers, backend) is pinned to.
    #[arg(long, default_value_t = 1)]
    client_cpu: u32,
    /// The good client's rate, requests a second (open loop).
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Seconds of baseline measurement per round (after 1 s of warm-up).
    #[arg(long, default_value_t = 4)]
    baseline_secs: u64,
    /// Seconds each attack runs (on the proxy, and on the control listener); the good client
    /// measures for this less 1 s.
    #[arg(long, default_value_t = 6)]
    attack_secs: u64,
    /// Rounds per attack (each a baseline, the control, then the attack, on the same proxy);
    /// medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// How the attacker threads are scheduled: `idle` (SCHED_IDLE: they run only when the
    /// client CPU has nothing else to run) or `normal` (at --attacker-nice only). They share the
    /// client CPU with the good client, and a real attacker brings its own CPU, so by default
    /// they yield it to the good client.
    #[arg(long, value_enum, default_value_t = Policy::Idle)]
    attacker_policy: Policy,
    /// The attackers' nice value (0 to 19); what lowers them under `--attacker-policy normal`
    /// (the idle class ignores it).
    #[arg(long, default_value_t = 19)]
    attacker_nice: i32,
    /// Skip the control rounds (each attack aimed at a plain listener while the good client
    /// goes through the proxy).
    #[arg(long)]
    no_control: bool,
    /// Attacks to run, comma-separated: slowloris, http2-rapid-reset, header-bomb, and the header
    /// bomb's halves alone, header-bomb-h1 and header-bomb-h2.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "slowloris,http2-rapid-reset,header-bomb"
    )]
    attacks: Vec<String>,
    /// Extra flags for every proxy, e.g. `--proxy-arg=--abusive-peer-penalty --proxy-arg=off`
    /// to measure without the abusive-peer penalty.
    #[arg(long = "proxy-arg", allow_hyphen_values = true)]
    proxy_args: Vec<String>,
}

/// The upper bounds of the command line, so a run always ends.
const MAX_SECS: u64 = 120;
const MAX_RATE: u32 = 20_000;
/// How long the proxy gets to close the last round's attack connections.
const SETTLE: Duration = Duration::from_secs(5);
/// How often the proxy's RSS and fds are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Serialize)]
struct Latency {
    sent: u64,
    failed: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    ok_rps: f64,
    /// Failures by kind: non-2xx statuses and errors.
    failures: Vec<String>,
}

impl From<&LoadReport> for Latency {
    fn from(r: &LoadReport) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut failures: Vec<String> = r
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        failures.extend(
            r.errors
                .iter()
                .map(|(k, (n, example))| format!("{k}: {n} ({example})")),
        );
        Self {
            sent: r.sent,
            failed: r.failed(),
            p50_ms: ms(r.p50_us),
            p99_ms: ms(r.p99_us),
            p999_ms: ms(r.p999_us),
            max_ms: ms(r.max_us),
            ok_rps: (r.ok_rate() * 10.0).round() / 10.0,
            failures,
        }
    }
}

/// One attack's figures: medians over its rounds (each round a baseline, then the attack), so
/// one unlucky baseline on a shared machine does not make the ratio.
#[derive(Debug, Serialize)]
struct AttackResult {
    attack: &'static str,
    proxy_args: Vec<String>,
    /// What the attacker did (the last round).
    what: String,
    baseline_p99_ms: f64,
    attack_p99_ms: f64,
    /// The median of the rounds' under-attack p99 over their baseline p99 (issue 12's bound: 2).
    p99_ratio: f64,
    /// The same for the control rounds (the attack aimed at a plain listener, the good client
    /// through the proxy): the machine's share of `p99_ratio`. `None` with `--no-control`.
    control_p99_ms: Option<f64>,
    control_p99_ratio: Option<f64>,
    /// The good client's failed requests under attack, all rounds.
    failures: u64,
    /// `trellis_limit_rejected_total` grew by this during the attacks (the limits engaged).
    limit_rejected: f64,
    proxy_cpu_percent: f64,
    client_cpu_percent: f64,
    /// The proxy's RSS after the warm-up, its peak over all rounds, and after the last.
    rss_before_mib: f64,
    rss_peak_mib: f64,
    rss_after_mib: f64,
    peak_fds: usize,
    rounds: Vec<Round>,
}

#[derive(Debug, Serialize)]
struct Round {
    what: String,
    /// Hostile requests, streams or frames written.
    sent: u64,
    baseline: Latency,
    /// The attack aimed at the control listener instead of the proxy (before `under_attack`).
    control: Option<ControlRound>,
    under_attack: Latency,
    p99_ratio: f64,
    limit_rejected: f64,
    /// CPU time the proxy used during the attack, percent of its one CPU (100 = saturated).
    proxy_cpu_percent: f64,
    /// CPU time this process (good client, attackers, backend) used, percent of its one CPU.
    client_cpu_percent: f64,
    rss_peak_mib: f64,
    peak_fds: usize,
}

/// The good client through the proxy while the attack is aimed at the control listener.
#[derive(Debug, Serialize)]
struct ControlRound {
    /// What the attacker did to the listener.
    what: String,
    sent: u64,
    latency: Latency,
    /// Its p99 over the round's baseline p99.
    p99_ratio: f64,
    /// CPU time this process used, percent of one CPU: the good client, the attackers and the
    /// backend on the client CPU, and the listener on the proxy CPU.
    client_cpu_percent: f64,
    listener: SinkStats,
}

#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    proxy: String,
    proxy_cpu: u32,
    client_cpu: u32,
    attacker_policy: Policy,
    attacker_nice: i32,
    /// Whether each round had a control (see `ControlRound`).
    control: bool,
    /// The attackers' source address (the good client's is 127.0.0.1).
    attacker_source: String,
    rounds: u32,
    rate_rps: u32,
    baseline_secs: u64,
    attack_secs: u64,
    /// /proc/loadavg when the run started: other work on the machine shows here.
    loadavg_at_start: String,
    attacks: Vec<AttackResult>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.baseline_secs == 0
        || cli.baseline_secs > MAX_SECS
        || cli.attack_secs < 2
        || cli.attack_secs > MAX_SECS
    {
        bail!("--baseline-secs must be 1..={MAX_SECS} and --attack-secs 2..={MAX_SECS}");
    }
    if cli.rounds == 0 || cli.rounds > 10 {
        bail!("--rounds must be 1..=10");
    }
    if !(0..=19).contains(&cli.attacker_nice) {
        bail!("--attacker-nice must be 0..=19");
    }
    if cli.rate == 0 || cli.rate > MAX_RATE {
        bail!("--rate must be 1..={MAX_RATE}");
    }
    let attacks = cli
        .attacks
        .iter()
        .map(|a| Attack::parse(a).ok_or_else(|| anyhow!("--attacks: unknown attack {a:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !cli.proxy.is_file() {
        bail!("--proxy {}: no such file", cli.proxy.display());
    }
    // Before any thread starts, so every later thread inherits the CPU.
    pin(std::process::id(), cli.client_cpu)?;
    let loadavg_at_start = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    let echo = HttpEcho::start().context("starting the echo backend")?;

    let mut results = Vec::new();
    for attack in attacks {
        eprintln!("bench-hostile: {}", attack.name());
        results.push(run_one(&cli, attack, &echo)?);
    }
    let report = Report {
        benchmark: "hostile",
        proxy: cli.proxy.display().to_string(),
        proxy_cpu: cli.proxy_cpu,
        client_cpu: cli.client_cpu,
        attacker_policy: cli.attacker_policy,
        attacker_nice: cli.attacker_nice,
        control: !cli.no_control,
        attacker_source: attacks::ATTACKER_SOURCE.to_string(),
        rounds: cli.rounds,
        rate_rps: cli.rate,
        baseline_secs: cli.baseline_secs,
        attack_secs: cli.attack_secs,
        loadavg_at_start,
        attacks: results,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Pins every thread of `pid` to `cpu`.
fn pin(pid: u32, cpu: u32) -> anyhow::Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .output()
        .context("running taskset (util-linux)")?;
    if !out.status.success() {
        bail!(
            "taskset -a -p -c {cpu} {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_one(cli: &Cli, attack: Attack, echo: &HttpEcho) -> anyhow::Result<AttackResult> {
    let proxy_args: Vec<String> = attack
        .proxy_args()
        .iter()
        .map(|a| a.to_string())
        .chain(cli.proxy_args.iter().cloned())
        .collect();
    let v = Victim::start(&cli.proxy, cli.proxy_cpu, echo.addr, &proxy_args)?;
    let pid = v.ready.pid;
    attacks::good_client(v.ready.inbound, cli.rate, Duration::from_secs(1))
        .map_err(|e| anyhow!("good client (warm-up): {e}"))?;
    let rss_before = load::rss_bytes(pid).map_err(|e| anyhow!("proxy RSS: {e}"))?;
    let fds_idle = load::fd_count(pid).map_err(|e| anyhow!("proxy fds: {e}"))?;
    let mut rounds = Vec::new();
    for n in 0..cli.rounds {
        if n > 0 {
            settle(pid, fds_idle);
        }
        let r = round(cli, attack, &v)?;
        let control = r
            .control
            .as_ref()
            .map(|c| {
                format!(
                    ", {:.2} ms with the attack on the control",
                    c.latency.p99_ms
                )
            })
            .unwrap_or_default();
        eprintln!(
            "bench-hostile: {} round {}: p99 {:.2} ms alone{control}, {:.2} ms under attack",
            attack.name(),
            n + 1,
            r.baseline.p99_ms,
            r.under_attack.p99_ms
        );
        rounds.push(r);
    }
    let rss_after = load::rss_bytes(pid).map_err(|e| anyhow!("proxy RSS: {e}"))?;
    let median = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let last = rounds.last().ok_or_else(|| anyhow!("--rounds is 0"))?;
    let with_control = !cli.no_control;
    Ok(AttackResult {
        attack: attack.name(),
        proxy_args,
        what: last.what.clone(),
        baseline_p99_ms: median(&|r| r.baseline.p99_ms),
        attack_p99_ms: median(&|r| r.under_attack.p99_ms),
        p99_ratio: median(&|r| r.p99_ratio),
        control_p99_ms: with_control
            .then(|| median(&|r| r.control.as_ref().map_or(f64::NAN, |c| c.latency.p99_ms))),
        control_p99_ratio: with_control
            .then(|| median(&|r| r.control.as_ref().map_or(f64::NAN, |c| c.p99_ratio))),
        failures: rounds.iter().map(|r| r.under_attack.failed).sum(),
        limit_rejected: rounds.iter().map(|r| r.limit_rejected).sum(),
        proxy_cpu_percent: median(&|r| r.proxy_cpu_percent),
        client_cpu_percent: median(&|r| r.client_cpu_percent),
        rss_before_mib: mib(rss_before),
        rss_peak_mib: rounds
            .iter()
            .map(|r| r.rss_peak_mib)
            .fold(mib(rss_before), f64::max),
        rss_after_mib: mib(rss_after),
        peak_fds: rounds.iter().map(|r| r.peak_fds).max().unwrap_or(0),
        rounds,
    })
}

/// Waits (at most [`SETTLE`]) until the proxy holds no more descriptors than when idle plus a
/// few: the next round's baseline then measures a proxy done with the last attack's
/// connections, not one still closing them.
fn settle(pid: u32, fds_idle: usize) {
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        match load::fd_count(pid) {
            Ok(n) if n <= fds_idle + 8 => break,
            Ok(_) => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => break,
        }
    }
    // And a moment for the scheduler's and allocator's after-effects.
    std::thread::sleep(Duration::from_millis(500));
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0
}

/// The attack as `measure_under` runs it, aimed at `target` (not the address it is given),
/// its thread and the threads it starts lowered first ([`sched::lower_this_thread`]).
fn attacker(
    cli: &Cli,
    attack: Attack,
    target: std::net::SocketAddr,
) -> impl FnOnce(std::net::SocketAddr, Instant) -> (String, u64) + Send {
    let (policy, nice) = (cli.attacker_policy, cli.attacker_nice);
    move |_, deadline| {
        // Best effort: a failure only means the attack competes with the good client.
        if let Err(e) = sched::lower_this_thread(policy, nice) {
            eprintln!("bench-hostile: attacker {policy:?}, nice {nice}: {e}");
        }
        attack.run(target, deadline)
    }
}

/// The good client through the proxy at `addr` while the attack is aimed at a fresh control
/// listener on the proxy's CPU.
fn control_round(
    cli: &Cli,
    attack: Attack,
    addr: std::net::SocketAddr,
    baseline_p99_us: u64,
) -> anyhow::Result<ControlRound> {
    let sink = Sink::start(cli.proxy_cpu)?;
    let started = Instant::now();
    let before = cpu_ticks(std::process::id());
    let measured = attacks::measure_under(
        addr,
        cli.rate,
        Duration::from_secs(cli.attack_secs),
        attacker(cli, attack, sink.addr),
    );
    let client_cpu_percent = busy_percent(before, cpu_ticks(std::process::id()), started);
    let listener = sink.stop()?;
    let measured = measured.map_err(|e| anyhow!("{} (control): {e}", attack.name()))?;
    Ok(ControlRound {
        what: measured.what.clone(),
        sent: measured.sent,
        p99_ratio: ratio(measured.report.p99_us, baseline_p99_us),
        latency: Latency::from(&measured.report),
        client_cpu_percent,
        listener,
    })
}

/// `p99` over `baseline`, to two decimals.
fn ratio(p99_us: u64, baseline_us: u64) -> f64 {
    (p99_us as f64 / baseline_us.max(1) as f64 * 100.0).round() / 100.0
}

/// CPU ticks between two readings as percent of one CPU over the time since `started`.
fn busy_percent(before: Option<u64>, after: Option<u64>, started: Instant) -> f64 {
    let secs = started.elapsed().as_secs_f64();
    match (before, after) {
        // Ticks are USER_HZ, 100 a second on Linux: ticks a second are percent.
        (Some(b), Some(a)) if secs > 0.0 => {
            (a.saturating_sub(b) as f64 / secs * 10.0).round() / 10.0
        }
        _ => f64::NAN,
    }
}

/// One round on a running proxy: the good client alone, with the attack on the control
/// listener, then with the attack on the proxy.
fn round(cli: &Cli, attack: Attack, v: &Victim) -> anyhow::Result<Round> {
    let (addr, pid) = (v.ready.inbound, v.ready.pid);
    let baseline = attacks::good_client(addr, cli.rate, Duration::from_secs(cli.baseline_secs))
        .map_err(|e| anyhow!("good client: {e}"))?;
    // Before the attack on the proxy, which leaves the proxy closing connections and its
    // attacker penalized; the control leaves nothing behind (its listener is closed).
    let control = if cli.no_control {
        None
    } else {
        Some(control_round(cli, attack, addr, baseline.p99_us)?)
    };
    let rejected_before = v.metrics()?.sum("trellis_limit_rejected_total", &[]);
    let rss_before = load::rss_bytes(pid).map_err(|e| anyhow!("proxy RSS: {e}"))?;

    let stop = AtomicBool::new(false);
    let (measured, (proxy_cpu_percent, client_cpu_percent), samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples = Vec::new();
            // Bounded: the measurement is, and this stops when it returns.
            while !stop.load(Ordering::Relaxed) {
                if let (Ok(rss), Ok(fds)) = (load::rss_bytes(pid), load::fd_count(pid)) {
                    samples.push((rss, fds));
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            samples
        });
        let started = Instant::now();
        let cpu_before = (cpu_ticks(pid), cpu_ticks(std::process::id()));
        let measured = attacks::measure_under(
            addr,
            cli.rate,
            Duration::from_secs(cli.attack_secs),
            attacker(cli, attack, addr),
        );
        stop.store(true, Ordering::Relaxed);
        let cpu = (
            busy_percent(cpu_before.0, cpu_ticks(pid), started),
            busy_percent(cpu_before.1, cpu_ticks(std::process::id()), started),
        );
        (measured, cpu, sampler.join().unwrap_or_default())
    });
    let measured = measured.map_err(|e| anyhow!("{}: {e}", attack.name()))?;
    let rejected = v.metrics()?.sum("trellis_limit_rejected_total", &[]) - rejected_before;
    let peak = samples
        .iter()
        .map(|(r, _)| *r)
        .max()
        .unwrap_or(rss_before)
        .max(rss_before);
    let report = &measured.report;
    Ok(Round {
        what: measured.what.clone(),
        sent: measured.sent,
        p99_ratio: ratio(report.p99_us, baseline.p99_us),
        baseline: Latency::from(&baseline),
        control,
        under_attack: Latency::from(report),
        limit_rejected: rejected,
        proxy_cpu_percent,
        client_cpu_percent,
        rss_peak_mib: mib(peak),
        peak_fds: samples.iter().map(|(_, f)| *f).max().unwrap_or(0),
    })
}

/// User plus system CPU time of a process, in USER_HZ ticks (`/proc/PID/stat` fields 14, 15).
fn cpu_ticks(pid: u32) -> Option<u64> {
    cpu_ticks_at(&format!("/proc/{pid}/stat"))
}

/// User plus system CPU time from a `stat` file of /proc (a process' or a thread's).
fn cpu_ticks_at(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces; the fields after it follow its closing ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is fields[N - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}
