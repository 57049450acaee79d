//! The start the commands that talk to a running mesh share: `--control` parsed and a
//! current-thread tokio runtime built (one command, one task at a time: no worker threads to
//! spawn), each failure written to `err` as `<prefix>: …` and turned into its exit code.

use std::io::Write;
use std::net::SocketAddr;

use tokio::runtime::Runtime;

use crate::check::parse_control;

/// A current-thread runtime with I/O and timers; the error says what failed, for callers that
/// fold it into their own error type.
pub fn build() -> Result<Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// [`build`], or the failure written as `<prefix>: …` and [`crate::EXIT_FAILURE`].
pub fn start(prefix: &str, err: &mut dyn Write) -> Result<Runtime, u8> {
    build().map_err(|e| {
        let _ = writeln!(err, "{prefix}: {e}");
        crate::EXIT_FAILURE
    })
}

/// The `--control` address (a bad one: `<prefix>: …` and [`crate::EXIT_USAGE`]) and then
/// [`start`]'s runtime, in that order, so a usage mistake is reported before anything starts.
pub fn control_and_start(
    control: &str,
    prefix: &str,
    err: &mut dyn Write,
) -> Result<(SocketAddr, Runtime), u8> {
    let addr = parse_control(control).map_err(|e| {
        let _ = writeln!(err, "{prefix}: {e}");
        crate::EXIT_USAGE
    })?;
    Ok((addr, start(prefix, err)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_control_is_a_usage_error_named_by_the_command() {
        let mut err = Vec::new();
        let code = control_and_start("http://localhost", "trellis tap", &mut err).err();
        assert_eq!(code, Some(crate::EXIT_USAGE));
        let err = String::from_utf8(err).unwrap();
        assert!(
            err.starts_with(
                "trellis tap: --control \"http://localhost\": expected http://IP:PORT ("
            ),
            "{err}"
        );

        let mut err = Vec::new();
        let (addr, runtime) =
            control_and_start("http://127.0.0.1:15014/", "trellis tap", &mut err).unwrap();
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], 15014)));
        assert_eq!(runtime.block_on(async { 7 }), 7);
        assert!(err.is_empty());
    }
}
