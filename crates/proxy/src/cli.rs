//! The `trellis-proxy` process: parse the command line, set up logging, build the runtime and
//! run the chosen subcommand, mapping failures to exit codes (64 for usage, 1 otherwise).

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::args::{Cli, Command};
use crate::config::{LogFormat, ProxyConfig};

/// EX_USAGE from sysexits.h.
const EXIT_USAGE: u8 = 64;

/// The binary's whole behaviour; `main` only calls this.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            // clap prints help/version to stdout and errors (naming the flag) to stderr.
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.into_command() {
        Command::Init(args) => match crate::init::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trellis-proxy init: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::WaitReady(args) => match crate::wait_ready::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("trellis-proxy wait-ready: {e}");
                ExitCode::from(1)
            }
        },
        Command::Run(args) => match args.validate() {
            Ok(config) => run(config),
            Err(e) => {
                eprintln!("trellis-proxy: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
    }
}

fn run(config: ProxyConfig) -> ExitCode {
    init_logging(&config.log_level, config.log_format);
    let runtime = if config.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trellis-proxy: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(crate::run(config));
    // Tasks still running after the drain timeout are cut here, without waiting.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-proxy: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `RUST_LOG` wins over `--log-level`, so operators can raise verbosity without new flags.
fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init fails only if a subscriber is already set (embedding); keep that one.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
