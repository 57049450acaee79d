//! The `trellis` command line: parses arguments, sets up logging and runs one command.
//!
//! Each command lives in its own module: `demo`; `install` (also `uninstall`), `upgrade`;
//! `inject` (also `uninject`); `validate` (also `analyze`), `explain`; `check` (local mode,
//! `--proxy`, and `--pre` / `--kubernetes` for a cluster); `proxy-config`, `stat`, `tap`,
//! `top`, `dashboard`; `identity` (trust anchor rotation); see docs/cli.md. Commands that
//! observe a running mesh talk to it only through its binaries and public HTTP/JSON APIs (the
//! cluster commands through the Kubernetes API server, as kubectl does), never through the
//! proxy's or control plane's internals, so they keep working against a mesh built from
//! another commit. Commands that compute what the mesh would do (`validate`, `explain`) instead
//! link the control plane's pure parse/precedence/compile functions and the model's route
//! matching and authorization decision, so their answers cannot drift from the mesh's.

pub mod bookinfo;
pub mod check;
pub mod dashboard;
pub mod demo;
pub mod explain;
#[cfg(test)]
mod golden;
mod http_client;
pub mod identity;
pub mod inject;
pub mod install;
pub mod multicluster;
pub mod output;
pub mod proxyconfig;
mod runtime;
pub mod stat;
pub mod tap;
pub mod top;
pub mod upgrade;
pub mod validate;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `EX_USAGE` from sysexits(3): the command was used incorrectly.
pub const EXIT_USAGE: u8 = 64;
/// Any failure after the arguments were accepted.
pub const EXIT_FAILURE: u8 = 1;

/// Trellis: a service mesh in Rust.
#[derive(Debug, Parser)]
#[command(name = "trellis", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole mesh on this machine: control plane, one proxy per workload, the Bookinfo
    /// sample apps, steady traffic and the dashboard. No root, no cluster.
    Demo(demo::DemoArgs),
    /// Print the manifests that install the mesh on Kubernetes (`| kubectl apply -f -`).
    Install(install::InstallArgs),
    /// Print what to delete to remove the mesh (`| kubectl delete -f -`).
    Uninstall(install::InstallArgs),
    /// Diff what installing this version would change in the cluster; applies nothing.
    Upgrade(upgrade::UpgradeArgs),
    /// Add the proxy to the pods in YAML (files or stdin), as the injection webhook does.
    Inject(inject::InjectArgs),
    /// Remove what `inject` added.
    Uninject(inject::InjectArgs),
    /// Check config files and directories as one config set; report each problem with its
    /// field, a fix, a severity and a stable code.
    #[command(visible_alias = "analyze")]
    Validate(validate::ValidateArgs),
    /// Show what the mesh does with one request: route, backends, timeouts, retries, faults
    /// and policy, computed with the proxy's matching code.
    Explain(explain::ExplainArgs),
    /// Check that the mesh is healthy: control plane, config, every proxy; local mode, or a
    /// cluster with `--kubernetes` / `--pre`.
    Check(check::CheckArgs),
    /// Show one proxy's listeners, routes, clusters and endpoints (from its `/config_dump`).
    ProxyConfig(proxyconfig::ProxyConfigArgs),
    /// Per-workload success rate, request rate, latency percentiles and TCP connections.
    Stat(stat::StatArgs),
    /// Stream one line per request a workload's proxies finish, with filters.
    Tap(tap::TapArgs),
    /// A live full-screen view of a workload's most-called paths (`q` quits).
    Top(top::TopArgs),
    /// Print the dashboard's URL and open it in a browser.
    Dashboard(dashboard::DashboardArgs),
    /// Workload identity: rotate the trust anchor and issuer with every proxy checked.
    Identity(identity::IdentityArgs),
    /// Multi-cluster: link this cluster's control plane to another cluster's.
    Multicluster(multicluster::MulticlusterArgs),
}

/// Parses `args` (including the program name), runs the command and maps the outcome to the
/// process exit code: 0 on success, 64 on bad usage, 1 on any other failure.
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            // `--help` and `--version` arrive as "errors" that clap prints to stdout.
            let code = if err.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Demo(args) => run_demo(args),
        Command::Install(args) => run_install(&args, false),
        Command::Uninstall(args) => run_install(&args, true),
        Command::Upgrade(args) => stdio(|out, err| upgrade::run(&args, out, err)),
        Command::Inject(args) => run_inject(&args, false),
        Command::Uninject(args) => run_inject(&args, true),
        Command::Validate(args) => stdio(|out, err| validate::run(&args, out, err)),
        Command::Stat(args) => stdio(|out, err| stat::run(&args, out, err)),
        Command::ProxyConfig(args) => stdio(|out, err| proxyconfig::run(&args, out, err)),
        Command::Check(args) => stdio(|out, err| check::run(&args, out, err)),
        Command::Explain(args) => stdio(|out, err| explain::run(&args, out, err)),
        Command::Tap(args) => stdio(|out, err| tap::run(&args, out, err)),
        Command::Top(args) => ExitCode::from(top::ui::run(&args, &mut std::io::stderr().lock())),
        Command::Dashboard(args) => stdio(|out, err| dashboard::run(&args, out, err)),
        Command::Identity(args) => stdio(|out, err| identity::run(&args, out, err)),
        Command::Multicluster(args) => stdio(|out, err| multicluster::run(&args, out, err)),
    }
}

/// Runs a command that writes to stdout and stderr; its return value is the exit code.
fn stdio(run: impl FnOnce(&mut dyn std::io::Write, &mut dyn std::io::Write) -> u8) -> ExitCode {
    ExitCode::from(run(
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    ))
}

fn run_install(args: &install::InstallArgs, uninstall: bool) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let result = if uninstall {
        install::uninstall(args, &mut out)
    } else {
        install::install(args, &mut out)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("trellis: {err}");
            ExitCode::from(if err.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            })
        }
    }
}

fn run_inject(args: &inject::InjectArgs, remove: bool) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match inject::run(args, remove, &mut std::io::stdin().lock(), &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("trellis: {err}");
            ExitCode::from(if err.is_usage() {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            })
        }
    }
}

fn run_demo(args: demo::DemoArgs) -> ExitCode {
    let config = match args.validate() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("trellis demo: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(&config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("trellis demo: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let outcome = runtime.block_on(demo::run(config));
    // Dropping the runtime drops every task, and with them any child still supervised (each
    // is spawned with kill_on_drop), so no child outlives an error path.
    drop(runtime);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("trellis demo: {err}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (tests calling main_with_args twice) is harmless: keep the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
