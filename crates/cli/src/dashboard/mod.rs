//! `trellis dashboard [--control URL] [--show url|open]`: prints the dashboard's URL (the
//! control plane serves it at `/` on its HTTP API) once the control plane answers, and opens it
//! with `xdg-open` unless `--show url`. Exit 1 with a message when the control plane is not
//! reachable: a URL that leads nowhere helps nobody.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::HeaderMap;

use crate::check::parse_control;
use crate::http_client::HttpClient;

const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Show {
    /// Print the URL and open it in a browser (`xdg-open`).
    #[default]
    Open,
    /// Only print the URL.
    Url,
}

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// The control plane's HTTP API (it serves the dashboard).
    #[arg(
        long,
        visible_alias = "control-plane",
        default_value = "http://127.0.0.1:15014",
        value_name = "URL"
    )]
    pub control: String,
    #[arg(long, value_enum, default_value_t = Show::Open)]
    pub show: Show,
}

/// The dashboard's URL on the control plane at `control`.
pub fn url(control: SocketAddr) -> String {
    format!("http://{control}/")
}

async fn reachable(control: SocketAddr) -> Result<(), String> {
    let reply = HttpClient::new()
        .get(control, "/live", &HeaderMap::new(), CALL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if reply.status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "GET http://{control}/live answered {}",
            reply.status
        ))
    }
}

/// Returns the exit code: 0 (the URL is on stdout), 1 when the control plane is not reachable,
/// 64 on bad usage. Failing to open a browser is not an error: the URL is printed.
pub fn run(args: &DashboardArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let control = match parse_control(&args.control) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "trellis dashboard: {e}");
            return crate::EXIT_USAGE;
        }
    };
    let checked = crate::runtime::build().and_then(|rt| rt.block_on(reachable(control)));
    if let Err(e) = checked {
        let _ = writeln!(
            err,
            "trellis dashboard: the control plane at http://{control} is not reachable ({e}); \
             start one (`trellis demo`) or pass --control"
        );
        return crate::EXIT_FAILURE;
    }
    let url = url(control);
    let _ = writeln!(out, "{url}");
    if args.show == Show::Open {
        // Not waited for: a browser may stay in the foreground; xdg-open itself returns fast.
        let opened = Command::new("xdg-open")
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = opened {
            let _ = writeln!(
                err,
                "trellis dashboard: could not open a browser (xdg-open: {e}); open the URL above"
            );
        }
    }
    0
}
