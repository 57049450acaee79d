//! `trellis demo`: a whole mesh on one machine, with no root and no cluster.
//!
//! It starts `trellis-control` on a private copy of Bookinfo's Services (plus the user's config
//! directory), runs the Bookinfo apps in this process, puts one `trellis-proxy` in front of each
//! workload, waits until a request travels the whole chain, then reports where everything is and
//! keeps traffic flowing until it is told to stop. Children are supervised (see [`children`]):
//! if one dies the demo stops the rest and fails; none outlives the demo.
//!
//! This module orders the steps; it must not reach into the proxy's or control plane's
//! internals: it knows them only by their flags, ready files and HTTP endpoints.

mod args;
mod binaries;
mod children;
mod dirs;
mod gateway;
mod load;
mod ready;
mod sample;
mod status;

/// Bookinfo's Services as the demo loads them; `trellis explain` reads the same YAML.
pub use sample::bookinfo_services;

use std::ffi::OsString;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use trellis_identity::{DEFAULT_TRUST_DOMAIN, SpiffeId};

pub use args::{DemoArgs, DemoConfig, MAX_LOAD_RPS, UsageError};
pub use binaries::{BIN_DIR_ENV, MissingBinary};
pub use load::LoadStats;
pub use status::{ControlStatus, DemoStatus, WorkloadStatus};

use crate::bookinfo::{self, App, NAMESPACE, RunningApp, SERVICE_PORT};
use crate::http_client::HttpClient;
use children::{ChildId, Exit, SpawnError, Supervisor};
use dirs::Dirs;
use ready::{ControlReady, ProxyReady, ReadyFile};

/// How long everything has to come up, from the first process started to a request answered.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long proxies get to drain after SIGTERM, then the control plane; the sum (plus the
/// SIGKILL reaping) stays under the 15 s the contract allows for a full stop.
const PROXY_GRACE: Duration = Duration::from_secs(6);
const CONTROL_GRACE: Duration = Duration::from_secs(3);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A child exiting in the same instant as a Ctrl-C most likely got the terminal's SIGINT too
/// (children share the demo's process group): wait this long for our own signal to arrive
/// before calling its exit unexpected.
const SIGNAL_RACE: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    MissingBinary(#[from] MissingBinary),
    #[error("cannot prepare {what} in {path}: {source}")]
    Prepare {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("cannot listen on 127.0.0.1 for {workload}: {source}")]
    Bind { workload: String, source: io::Error },
    #[error("{flag} {addr} cannot be used: {source} (choose another address, or port 0)")]
    AddressUnavailable {
        flag: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("cannot listen for signals: {0}")]
    Signals(io::Error),
    #[error("{name} (pid {pid}) exited {status}; the end of its log:\n{log}")]
    ChildExited {
        name: String,
        pid: u32,
        status: String,
        log: String,
    },
    #[error("not ready after {timeout:?}: still waiting for {waiting_for}")]
    Timeout {
        timeout: Duration,
        waiting_for: String,
    },
    #[error("the proxy of {workload} did not report an outbound port for {target}")]
    MissingOutbound { workload: String, target: String },
    #[error("cannot write the status file {path}: {source}")]
    StatusFile { path: PathBuf, source: io::Error },
    /// SIGINT or SIGTERM: not a failure.
    #[error("interrupted")]
    Interrupted,
}

/// Runs the demo until SIGINT or SIGTERM (then `Ok`) or until something fails.
pub async fn run(config: DemoConfig) -> Result<(), DemoError> {
    let interrupted = watch_signals().map_err(DemoError::Signals)?;
    preflight_bind("--entry", config.entry)?;
    preflight_bind("--dashboard", config.dashboard)?;
    let proxy_bin = binaries::locate("trellis-proxy")?;
    let control_bin = binaries::locate("trellis-control")?;
    let dirs = Dirs::create(config.config_dir.as_deref())?;

    let mut demo = Demo {
        supervisor: Supervisor::new(),
        interrupted,
        client: HttpClient::new(),
        apps_shutdown: CancellationToken::new(),
        deadline: Instant::now() + STARTUP_TIMEOUT,
        config,
        dirs,
        proxy_bin,
        control_bin,
    };
    let mut apps = Vec::new();
    let mut load = None;
    let outcome = demo.run(&mut apps, &mut load).await;

    if let Some(load) = load {
        let stats = load.stop().await;
        println!("Load: {stats}");
    }
    demo.stop_children().await;
    // Proxies drain into their apps, so the apps stop only after the proxies have.
    demo.apps_shutdown.cancel();
    drop(apps);
    let failed = !matches!(outcome, Ok(()) | Err(DemoError::Interrupted));
    // After a failure the logs are what the user needs next: keep them.
    if demo.config.keep_files || failed {
        let kept = demo.dirs.keep();
        eprintln!(
            "trellis demo: kept its logs and files in {}",
            kept.display()
        );
    }
    match outcome {
        Ok(()) | Err(DemoError::Interrupted) => {
            println!("Trellis demo stopped.");
            Ok(())
        }
        Err(err) => Err(err),
    }
}

#[derive(Debug)]
struct Demo {
    supervisor: Supervisor,
    interrupted: CancellationToken,
    client: HttpClient,
    apps_shutdown: CancellationToken,
    deadline: Instant,
    config: DemoConfig,
    dirs: Dirs,
    proxy_bin: PathBuf,
    control_bin: PathBuf,
}

/// The ingress gateway: where its Gateway listener and its admin answer.
#[derive(Debug)]
struct Gateway {
    listener: SocketAddr,
    admin: SocketAddr,
}

/// One Bookinfo workload with its sidecar.
#[derive(Debug)]
struct Meshed {
    app: App,
    app_addr: SocketAddr,
    proxy: ChildId,
    ready: ProxyReady,
}

impl Demo {
    async fn run(
        &mut self,
        apps: &mut Vec<RunningApp>,
        load: &mut Option<load::LoadGenerator>,
    ) -> Result<(), DemoError> {
        let (control_id, control_ready) = self.start_control()?;
        let control: ControlReady = self.wait_ready_file(control_id, &control_ready).await?;

        // Each app listens before its proxy starts (the proxy forwards to it), and learns its
        // upstream addresses only from its proxy's ready file.
        let mut proxies = Vec::new();
        for app in bookinfo::APPS {
            let running = bookinfo::bind(app, self.client.clone(), self.apps_shutdown.clone())
                .await
                .map_err(|source| DemoError::Bind {
                    workload: app.workload_name(),
                    source,
                })?;
            let (proxy, ready_file) = self.start_proxy(app, running.addr, control.discovery)?;
            proxies.push((proxy, ready_file, running.addr));
            apps.push(running);
        }
        let mut meshed = Vec::new();
        for (running, (proxy, ready_file, app_addr)) in apps.iter().zip(proxies) {
            let ready: ProxyReady = self.wait_ready_file(proxy, &ready_file).await?;
            for service in running.app.upstreams() {
                let target = service.target();
                let addr = ready.outbound_ports.get(&target).copied().ok_or_else(|| {
                    DemoError::MissingOutbound {
                        workload: running.app.workload_name(),
                        target,
                    }
                })?;
                running.upstreams.set(*service, addr);
            }
            meshed.push(Meshed {
                app: running.app,
                app_addr,
                proxy,
                ready,
            });
        }

        let gateway = self.start_gateway(control.discovery).await?;
        self.wait_answers(&control, &meshed, &gateway).await?;
        let entry = entry_of(&meshed).unwrap_or(self.config.entry);
        let status = self.status(&control, control_id, entry, &meshed, &gateway);
        self.print_summary(&status);
        if let Some(path) = &self.config.status_file {
            status::write_json_atomic(path, &status).map_err(|source| DemoError::StatusFile {
                path: path.clone(),
                source,
            })?;
        }
        if let Some(rps) = self.config.load_rps {
            *load = Some(load::LoadGenerator::start(self.client.clone(), entry, rps));
        }

        tokio::select! {
            biased;
            () = self.interrupted.cancelled() => Err(DemoError::Interrupted),
            exit = self.supervisor.next_exit() => Err(self.unexpected_exit(exit).await),
        }
    }

    /// Starts the control plane; returns it and the ready file it will write.
    fn start_control(&mut self) -> Result<(ChildId, PathBuf), DemoError> {
        let ready_file = self.dirs.run.join("control.ready.json");
        let mut args: Vec<OsString> = Vec::new();
        for dir in [&self.dirs.services, &self.dirs.config] {
            args.push("--config-dir".into());
            args.push(dir.into());
        }
        args.extend(flags(&[
            ("--discovery", "127.0.0.1:0".into()),
            ("--http", self.config.dashboard.to_string()),
            ("--log-level", self.config.log_level.clone()),
        ]));
        args.push("--ready-file".into());
        args.push(ready_file.clone().into());
        let log = self.dirs.run.join("control.log");
        let id = self
            .supervisor
            .spawn("trellis-control", &self.control_bin, &args, &log)?;
        Ok((id, ready_file))
    }

    fn start_proxy(
        &mut self,
        app: App,
        app_addr: SocketAddr,
        discovery: SocketAddr,
    ) -> Result<(ChildId, PathBuf), DemoError> {
        let workload = app.workload_name();
        let service = app.service();
        let inbound = match app {
            App::Productpage => self.config.entry,
            _ => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        };
        let mut pairs = vec![
            ("--workload", workload.clone()),
            ("--namespace", NAMESPACE.to_string()),
            ("--service-account", service.service_account().to_string()),
            ("--label", format!("app={}", service.name())),
            ("--label", format!("version={}", app.version())),
            ("--control", format!("http://{discovery}")),
            ("--inbound", inbound.to_string()),
            ("--app", app_addr.to_string()),
            // The port peers know (Bookinfo's containerPort, the Services' targetPort); the
            // proxy still delivers to --app, wherever the app really listens.
            ("--app-port", SERVICE_PORT.to_string()),
            ("--outbound", "none".to_string()),
            // Within PROXY_GRACE, so a proxy drains by itself before the demo kills it.
            ("--drain-timeout", "5s".to_string()),
            ("--admin", "127.0.0.1:0".to_string()),
            ("--log-level", self.config.log_level.clone()),
        ];
        // Peers must be told a connectable address, not 0.0.0.0.
        if inbound.ip().is_unspecified() && inbound.port() != 0 {
            pairs.push((
                "--advertise",
                SocketAddr::from((Ipv4Addr::LOCALHOST, inbound.port())).to_string(),
            ));
        }
        for upstream in app.upstreams() {
            pairs.push((
                "--outbound-port",
                format!("127.0.0.1:0={}", upstream.target()),
            ));
        }
        let mut args = flags(&pairs);
        args.push("--ready-file".into());
        let ready_file = self.dirs.run.join(format!("{workload}.ready.json"));
        args.push(ready_file.clone().into());
        let log = self.dirs.run.join(format!("{workload}.log"));
        let name = format!("trellis-proxy ({workload})");
        let id = self.supervisor.spawn(&name, &self.proxy_bin, &args, &log)?;
        Ok((id, ready_file))
    }

    /// Starts the ingress gateway (docs/gateways.md) with Bookinfo's Gateway port on a port
    /// the OS picks, waits for its ready file, then for the port to be bound (its admin's
    /// `/config_dump` says where).
    async fn start_gateway(&mut self, discovery: SocketAddr) -> Result<Gateway, DemoError> {
        let mut pairs = vec![
            ("--workload", gateway::WORKLOAD.to_string()),
            ("--namespace", NAMESPACE.to_string()),
            ("--service-account", gateway::WORKLOAD.to_string()),
            ("--control", format!("http://{discovery}")),
            ("--mode", "gateway".to_string()),
            (
                "--gateway-port",
                format!("{}=127.0.0.1:0", gateway::GATEWAY_PORT),
            ),
            ("--inbound", "127.0.0.1:0".to_string()),
            ("--outbound", "none".to_string()),
            ("--drain-timeout", "5s".to_string()),
            ("--admin", "127.0.0.1:0".to_string()),
            ("--log-level", self.config.log_level.clone()),
        ];
        for (k, v) in gateway::LABELS {
            pairs.push(("--label", format!("{k}={v}")));
        }
        let mut args = flags(&pairs);
        args.push("--ready-file".into());
        let ready_file = self
            .dirs
            .run
            .join(format!("{}.ready.json", gateway::WORKLOAD));
        args.push(ready_file.clone().into());
        let log = self.dirs.run.join(format!("{}.log", gateway::WORKLOAD));
        let name = format!("trellis-proxy ({})", gateway::WORKLOAD);
        let proxy = self.supervisor.spawn(&name, &self.proxy_bin, &args, &log)?;
        let ready: ProxyReady = self.wait_ready_file(proxy, &ready_file).await?;
        let listener = self.wait_gateway_listener(ready.admin).await?;
        Ok(Gateway {
            listener,
            admin: ready.admin,
        })
    }

    /// Waits until the gateway at `admin` has bound Bookinfo's Gateway port (once the
    /// control plane has sent it the Gateway) and returns where.
    async fn wait_gateway_listener(&mut self, admin: SocketAddr) -> Result<SocketAddr, DemoError> {
        loop {
            self.check_alive().await?;
            let last = match self
                .client
                .get(admin, "/config_dump", &HeaderMap::new(), PROBE_TIMEOUT)
                .await
            {
                Ok(reply) => match gateway::bound_listener(&reply.body) {
                    Some(addr) => return Ok(addr),
                    None => "it has not bound the port yet".to_string(),
                },
                Err(err) => err.to_string(),
            };
            if Instant::now() >= self.deadline {
                return Err(self.timeout(format!(
                    "the ingress gateway's port {} at http://{admin}/config_dump ({last})",
                    gateway::GATEWAY_PORT
                )));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Fails if a child exited or a signal arrived; called between polls while starting.
    async fn check_alive(&mut self) -> Result<(), DemoError> {
        if self.interrupted.is_cancelled() {
            return Err(DemoError::Interrupted);
        }
        match self.supervisor.try_exit() {
            Some(exit) => Err(self.unexpected_exit(exit).await),
            None => Ok(()),
        }
    }

    async fn unexpected_exit(&mut self, exit: Exit) -> DemoError {
        if tokio::time::timeout(SIGNAL_RACE, self.interrupted.cancelled())
            .await
            .is_ok()
        {
            return DemoError::Interrupted;
        }
        let status = exit
            .status
            .map_or_else(|| "(status unknown)".to_string(), |s| s.to_string());
        DemoError::ChildExited {
            name: self.supervisor.name(exit.id).to_string(),
            pid: self.supervisor.pid(exit.id),
            status,
            log: self.supervisor.log_tail(exit.id, 20),
        }
    }

    async fn wait_ready_file<T: serde::de::DeserializeOwned>(
        &mut self,
        child: ChildId,
        path: &Path,
    ) -> Result<T, DemoError> {
        loop {
            self.check_alive().await?;
            let last = match ready::read::<T>(path) {
                ReadyFile::Ready(value) => return Ok(value),
                ReadyFile::Missing => "it was not written".to_string(),
                ReadyFile::Invalid(detail) => {
                    format!("it does not have the agreed shape: {detail}")
                }
            };
            if Instant::now() >= self.deadline {
                let name = self.supervisor.name(child).to_string();
                return Err(
                    self.timeout(format!("{name}'s ready file {} ({last})", path.display()))
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the control plane's API, every proxy's `/ready` and the whole Bookinfo chain
    /// (entry -> productpage -> reviews) answer.
    async fn wait_answers(
        &mut self,
        control: &ControlReady,
        meshed: &[Meshed],
        gateway: &Gateway,
    ) -> Result<(), DemoError> {
        let mut probes: Vec<(String, SocketAddr, &str)> = vec![(
            "the control plane's API".into(),
            control.http,
            "/api/v1/services",
        )];
        for m in meshed {
            probes.push((
                format!("{}'s proxy /ready", m.app.workload_name()),
                m.ready.admin,
                "/ready",
            ));
        }
        if let Some(entry) = entry_of(meshed) {
            probes.push(("Bookinfo at the entry".into(), entry, load::LOAD_PATH));
        }
        probes.push((
            "the ingress gateway's proxy /ready".into(),
            gateway.admin,
            "/ready",
        ));
        probes.push((
            "Bookinfo through the ingress gateway".into(),
            gateway.listener,
            "/productpage",
        ));
        self.wait_endpoints_known(meshed).await?;
        for (what, addr, path) in probes {
            loop {
                self.check_alive().await?;
                let answered = self
                    .client
                    .get(addr, path, &HeaderMap::new(), PROBE_TIMEOUT)
                    .await;
                let last = match answered {
                    Ok(reply) if reply.status == StatusCode::OK => break,
                    Ok(reply) => format!("it answers {}", reply.status),
                    Err(err) => err.to_string(),
                };
                if Instant::now() >= self.deadline {
                    return Err(self.timeout(format!("{what} at http://{addr}{path} ({last})")));
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
        Ok(())
    }

    /// Waits until every client proxy's own discovery state holds all the endpoints of each
    /// service its app calls. Without this the demo could report ready while, say, reviews-v3
    /// had registered but not yet reached productpage's sidecar, and early requests would never
    /// see v3.
    async fn wait_endpoints_known(&mut self, meshed: &[Meshed]) -> Result<(), DemoError> {
        for m in meshed {
            for upstream in m.app.upstreams() {
                let want = bookinfo::APPS
                    .iter()
                    .filter(|a| a.service() == *upstream)
                    .count();
                let target = format!("{}.{}:{}", upstream.name(), NAMESPACE, SERVICE_PORT);
                loop {
                    self.check_alive().await?;
                    let have = match self
                        .client
                        .get(
                            m.ready.admin,
                            "/config_dump",
                            &HeaderMap::new(),
                            PROBE_TIMEOUT,
                        )
                        .await
                    {
                        Ok(reply) if reply.status == StatusCode::OK => {
                            known_endpoints(&reply.body, &target)
                        }
                        _ => 0,
                    };
                    if have >= want {
                        break;
                    }
                    if Instant::now() >= self.deadline {
                        return Err(self.timeout(format!(
                            "{}'s proxy to learn {want} endpoints of {target} (it has {have})",
                            m.app.workload_name()
                        )));
                    }
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        }
        Ok(())
    }

    fn timeout(&self, waiting_for: String) -> DemoError {
        DemoError::Timeout {
            timeout: STARTUP_TIMEOUT,
            waiting_for,
        }
    }

    fn status(
        &self,
        control: &ControlReady,
        control_id: ChildId,
        entry: SocketAddr,
        meshed: &[Meshed],
        gateway: &Gateway,
    ) -> DemoStatus {
        let workloads = meshed
            .iter()
            .map(|m| {
                let service = m.app.service();
                WorkloadStatus {
                    name: service.name().into(),
                    version: m.app.version().into(),
                    workload: m.app.workload_name(),
                    namespace: NAMESPACE.into(),
                    service_account: service.service_account().into(),
                    identity: identity(service.service_account()),
                    app: m.app_addr,
                    inbound: m.ready.inbound,
                    admin: m.ready.admin,
                    pid: self.supervisor.pid(m.proxy),
                }
            })
            .collect();
        DemoStatus {
            entry,
            dashboard: format!("http://{}/", control.http),
            control: ControlStatus {
                address: control.discovery,
                http: control.http,
                pid: self.supervisor.pid(control_id),
            },
            workloads,
            gateways: vec![serde_json::json!({
                "name": gateway::WORKLOAD,
                "address": gateway.listener.to_string(),
            })],
            config_dir: self.dirs.config.clone(),
        }
    }

    fn print_summary(&self, status: &DemoStatus) {
        let entry = status.entry;
        println!("Trellis demo is running; Ctrl-C stops it.\n");
        println!("  Bookinfo     http://{entry}/productpage");
        println!(
            "               http://{entry}/api/v1/products/0/reviews  (try -H 'end-user: jason')"
        );
        for g in &status.gateways {
            if let Some(address) = g["address"].as_str() {
                println!("  Gateway      http://{address}/productpage  (Istio bookinfo-gateway)");
            }
        }
        println!("  Dashboard    {}", status.dashboard);
        println!(
            "  Mesh config  {}  (watched: edit it and watch the dashboard)",
            status.config_dir.display()
        );
        println!(
            "  Control      discovery {}, http {}, pid {}",
            status.control.address, status.control.http, status.control.pid
        );
        println!(
            "\n  {:<16} {:<22} {:<22} {:>8}",
            "workload", "proxy inbound", "proxy admin", "pid"
        );
        for w in &status.workloads {
            println!(
                "  {:<16} {:<22} {:<22} {:>8}",
                w.workload,
                w.inbound,
                format!("http://{}", w.admin),
                w.pid
            );
        }
        println!("\n  Logs         {}", self.dirs.run.display());
        match self.config.load_rps {
            Some(rps) => println!(
                "  Load         {rps} requests/s to {}, every third as end-user: jason",
                load::LOAD_PATH
            ),
            None => println!("  Load         off (--no-load)"),
        }
        println!();
    }

    /// Stops proxies first (they drain into the apps and stop reporting to the control plane),
    /// then the control plane.
    async fn stop_children(&mut self) {
        let all = self.supervisor.ids();
        let (control, proxies) = all
            .split_first()
            .map_or((&[][..], &[][..]), |(c, p)| (std::slice::from_ref(c), p));
        let mut killed = self.supervisor.stop(proxies, PROXY_GRACE).await;
        killed.extend(self.supervisor.stop(control, CONTROL_GRACE).await);
        if !killed.is_empty() {
            eprintln!(
                "trellis demo: killed after the grace period: {}",
                killed.join(", ")
            );
        }
    }
}

/// Fails early, with the flag's name, when a fixed address is taken (another demo still running
/// is the usual cause), rather than later with a child's log. The listener is closed at once, so
/// the child can bind the same address; a race with a third party remains possible and shows up
/// as that child's exit.
fn preflight_bind(flag: &'static str, addr: SocketAddr) -> Result<(), DemoError> {
    if addr.port() == 0 {
        return Ok(());
    }
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| DemoError::AddressUnavailable { flag, addr, source })
}

/// The entry as productpage's proxy bound it (the flag may say port 0).
fn entry_of(meshed: &[Meshed]) -> Option<SocketAddr> {
    meshed
        .iter()
        .find(|m| m.app == App::Productpage)
        .map(|m| m.ready.inbound)
}

fn identity(service_account: &str) -> String {
    // The namespace and account names are constants known to be valid SPIFFE path segments.
    SpiffeId::new(DEFAULT_TRUST_DOMAIN, NAMESPACE, service_account)
        .map_or_else(|_| String::new(), |id| id.to_string())
}

fn flags(pairs: &[(&str, String)]) -> Vec<OsString> {
    pairs
        .iter()
        .flat_map(|(flag, value)| [OsString::from(flag), OsString::from(value)])
        .collect()
}

/// Cancels the returned token on the first SIGINT, SIGTERM or SIGHUP (a closed terminal must
/// not orphan the children either). A second one gives up on a graceful stop: every child is
/// killed at once and the demo exits 130.
fn watch_signals() -> io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        for round in 0..2 {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {}
            }
            if round == 0 {
                eprintln!("trellis demo: stopping (signal again to kill everything at once)");
                cancel.cancel();
            }
        }
        children::kill_all_now();
        std::process::exit(130);
    });
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_spiffe_ids() {
        assert_eq!(
            identity("bookinfo-reviews"),
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
    }

    #[test]
    fn taken_addresses_are_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = preflight_bind("--entry", addr).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("--entry {addr} cannot be used")),
            "{err}"
        );
        assert!(preflight_bind("--entry", "127.0.0.1:0".parse().unwrap()).is_ok());
        drop(taken);
        assert!(preflight_bind("--entry", addr).is_ok());
    }

    #[test]
    fn flags_pair_up() {
        let args = flags(&[("--a", "1".into()), ("--b", "x=y".into())]);
        assert_eq!(args, ["--a", "1", "--b", "x=y"].map(OsString::from));
    }
}

/// How many endpoints a proxy's `/config_dump` lists for `target` (0 when it has none yet).
fn known_endpoints(config_dump: &[u8], target: &str) -> usize {
    let Ok(dump) = serde_json::from_slice::<serde_json::Value>(config_dump) else {
        return 0;
    };
    dump.pointer("/discovery/dump/targets")
        .and_then(|t| t.as_array())
        .and_then(|targets| {
            targets
                .iter()
                .find(|t| t.get("target").and_then(|v| v.as_str()) == Some(target))
        })
        .and_then(|t| t.pointer("/destination/endpoints"))
        .and_then(|e| e.as_array())
        .map_or(0, Vec::len)
}

#[cfg(test)]
mod endpoint_tests {
    use super::known_endpoints;

    #[test]
    fn counts_the_endpoints_a_proxy_knows() {
        let dump = br#"{"discovery":{"dump":{"targets":[
            {"target":"details.default:9080","state":"found","destination":{"endpoints":[{}]}},
            {"target":"reviews.default:9080","state":"found","destination":{"endpoints":[{},{},{}]}}
        ]}}}"#;
        assert_eq!(known_endpoints(dump, "reviews.default:9080"), 3);
        assert_eq!(known_endpoints(dump, "details.default:9080"), 1);
        assert_eq!(known_endpoints(dump, "ratings.default:9080"), 0);
        assert_eq!(known_endpoints(b"not json", "reviews.default:9080"), 0);
    }
}
