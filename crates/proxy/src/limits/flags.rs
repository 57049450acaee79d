//! The limit flags of `trellis-proxy run`, flattened into [`crate::args::RunArgs`], and their
//! validation into [`ServerLimits`]. A bad value names its flag, like every other flag.

use std::time::Duration;

use clap::Args;

use super::{MIN_HEADER_BYTES, ServerLimits};
use crate::args::{ConfigError, parse_duration};

/// Flags for the proxy's own limits and load shedding (docs/proxy.md, "Limits and overload").
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Open connections per listener; more are closed at accept. `off`: unlimited.
    #[arg(long, value_name = "N|off", default_value = "50000", value_parser = parse_count)]
    pub max_connections: Cap,
    /// Requests in flight per direction; more get 503 `trellis-error: overloaded`.
    #[arg(long, value_name = "N|off", default_value = "10000", value_parser = parse_count)]
    pub max_concurrent_requests: Cap,
    /// Request header fields; more get 431.
    #[arg(long, value_name = "N", default_value_t = super::DEFAULT_MAX_HEADERS)]
    pub max_request_headers: usize,
    /// Bytes of request line and headers together; more get 431 (e.g. 60KiB).
    #[arg(long, value_name = "SIZE", default_value = "60KiB", value_parser = parse_size)]
    pub max_request_headers_size: u64,
    /// Bytes of request target (path and query); longer gets 414.
    #[arg(long, value_name = "SIZE", default_value = "8KiB", value_parser = parse_size)]
    pub max_uri_length: u64,
    /// Concurrent streams a client may open on one HTTP/2 connection.
    #[arg(long, value_name = "N", default_value_t = super::DEFAULT_H2_MAX_STREAMS)]
    pub h2_max_concurrent_streams: u32,
    /// Streams a client may open and reset before they are served; more: GOAWAY (rapid reset).
    #[arg(long, value_name = "N", default_value_t = super::DEFAULT_H2_MAX_PENDING_RESETS)]
    pub h2_max_pending_resets: usize,
    /// Streams the proxy may reset for client errors on one connection; more: GOAWAY.
    #[arg(long, value_name = "N", default_value_t = super::DEFAULT_H2_MAX_LOCAL_ERROR_RESETS)]
    pub h2_max_local_error_resets: usize,
    /// Time an HTTP/1 client has to send a whole request head, also the keep-alive idle time.
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Time a connection may have no request in flight before it is closed (HTTP/2: GOAWAY).
    /// `off`: never.
    #[arg(long, value_name = "DUR|off", default_value = "1h", value_parser = parse_idle)]
    pub idle_timeout: Idle,
    /// Largest request body accepted: a larger Content-Length gets 413, and a body of unknown
    /// length is cut at the limit (413 if the response has not started). Default: no limit.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_request_body_size: Option<u64>,
    /// Requests in flight per direction above which new ones get 503 with Retry-After.
    /// `off`: no load shedding.
    #[arg(long, value_name = "N|off", default_value = "2048", value_parser = parse_count)]
    pub load_shed_in_flight: Cap,
    /// How long a source address that was sent GOAWAY ENHANCE_YOUR_CALM (an HTTP/2 reset or
    /// CONTINUATION flood) may open only --abusive-peer-connections a second; the others are
    /// closed at accept. `off`: no penalty.
    #[arg(long, value_name = "DUR|off", default_value = "10s", value_parser = parse_idle)]
    pub abusive_peer_penalty: Idle,
    /// Connections a second a penalized address may still open.
    #[arg(long, value_name = "N", default_value_t = super::DEFAULT_ABUSIVE_PEER_CONNECTIONS)]
    pub abusive_peer_connections: u32,
}

/// `--idle-timeout`'s value: `None` for `off` (a newtype for the same reason as [`Cap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle(pub Option<Duration>);

/// A count flag's value: `None` for `off`. A newtype, because clap reads a bare `Option` field
/// as "the flag may be absent".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap(pub Option<u32>);

impl LimitArgs {
    /// Checks relations clap cannot, and builds the limits.
    pub fn validate(self) -> Result<ServerLimits, ConfigError> {
        let positive = |flag: &'static str, v: u64| {
            if v == 0 {
                Err(ConfigError::new(flag, "must be positive"))
            } else {
                Ok(())
            }
        };
        positive("--max-request-headers", self.max_request_headers as u64)?;
        positive("--max-uri-length", self.max_uri_length)?;
        positive(
            "--h2-max-concurrent-streams",
            self.h2_max_concurrent_streams.into(),
        )?;
        positive("--h2-max-pending-resets", self.h2_max_pending_resets as u64)?;
        positive(
            "--h2-max-local-error-resets",
            self.h2_max_local_error_resets as u64,
        )?;
        positive(
            "--abusive-peer-connections",
            self.abusive_peer_connections.into(),
        )?;
        if self.header_read_timeout.is_zero() {
            return Err(ConfigError::new(
                "--header-read-timeout",
                "must be positive",
            ));
        }
        let header_bytes = usize::try_from(self.max_request_headers_size).unwrap_or(usize::MAX);
        // hyper's HTTP/1 buffer reads at least this much at once; a smaller limit could not
        // be enforced as written.
        if header_bytes < MIN_HEADER_BYTES {
            return Err(ConfigError::new(
                "--max-request-headers-size",
                format!("{header_bytes} bytes is below the minimum of {MIN_HEADER_BYTES}"),
            ));
        }
        // The HTTP/2 header list size travels as a u32 SETTINGS value.
        if u32::try_from(header_bytes).is_err() {
            return Err(ConfigError::new(
                "--max-request-headers-size",
                format!("{header_bytes} bytes is above the maximum of {}", u32::MAX),
            ));
        }
        let uri_bytes = usize::try_from(self.max_uri_length).unwrap_or(usize::MAX);
        if uri_bytes > header_bytes {
            return Err(ConfigError::new(
                "--max-uri-length",
                format!(
                    "{uri_bytes} bytes is above --max-request-headers-size ({header_bytes}), which includes the request line"
                ),
            ));
        }
        if let (Cap(Some(shed)), Cap(Some(max))) =
            (self.load_shed_in_flight, self.max_concurrent_requests)
            && shed > max
        {
            return Err(ConfigError::new(
                "--load-shed-in-flight",
                format!(
                    "{shed} is above --max-concurrent-requests ({max}): shedding would never start"
                ),
            ));
        }
        Ok(ServerLimits {
            max_connections: self.max_connections.0,
            max_concurrent_requests: self.max_concurrent_requests.0,
            max_headers: self.max_request_headers,
            max_header_bytes: header_bytes,
            max_uri_bytes: uri_bytes,
            h2_max_concurrent_streams: self.h2_max_concurrent_streams,
            h2_max_pending_resets: self.h2_max_pending_resets,
            h2_max_local_error_resets: self.h2_max_local_error_resets,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout.0,
            max_request_body_bytes: self.max_request_body_size,
            load_shed_in_flight: self.load_shed_in_flight.0,
            abusive_peer_penalty: self.abusive_peer_penalty.0,
            abusive_peer_connections: self.abusive_peer_connections,
        })
    }
}

/// A positive duration, or `off` (`--idle-timeout`, `--abusive-peer-penalty`).
fn parse_idle(s: &str) -> Result<Idle, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Idle(None));
    }
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be positive (or off)".into()),
        d => Ok(Idle(Some(d))),
    }
}

/// A positive count, or `off` for no limit.
fn parse_count(s: &str) -> Result<Cap, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Cap(None));
    }
    match s.trim().parse::<u32>() {
        Ok(0) => Err("must be positive (use off for no limit)".into()),
        Ok(n) => Ok(Cap(Some(n))),
        Err(_) => Err(format!("{s:?} is not a count or off")),
    }
}

/// Bytes: `4096`, `60KiB`, `1MiB` (also `K`/`KB` and `M`/`MB`, as binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4096, 60KiB or 1MiB"))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" => 1024,
        "M" | "MB" | "MiB" => 1024 * 1024,
        _ => return Err(format!("{s:?} has an unknown unit (use KiB or MiB)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};

    fn run(args: &[&str]) -> Result<ServerLimits, ConfigError> {
        let cli = <Cli as clap::Parser>::try_parse_from(
            std::iter::once("trellis-proxy").chain(args.iter().copied()),
        )
        .map_err(|e| ConfigError::new("clap", e.to_string()))?;
        match cli.into_command() {
            Command::Run(r) => r.validate().map(|c| c.limits),
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn defaults_flags_and_bad_values() {
        assert_eq!(run(&[]).unwrap(), ServerLimits::default());
        let l = run(&[
            "--max-connections",
            "off",
            "--load-shed-in-flight",
            "off",
            "--max-request-body-size",
            "1MiB",
            "--max-uri-length",
            "2KiB",
            "--idle-timeout",
            "off",
        ])
        .unwrap();
        assert_eq!(l.idle_timeout, None);
        assert_eq!(
            run(&["--abusive-peer-penalty", "off"])
                .unwrap()
                .abusive_peer_penalty,
            None
        );
        assert_eq!(
            run(&["--idle-timeout", "90s"]).unwrap().idle_timeout,
            Some(Duration::from_secs(90))
        );
        assert_eq!(l.max_connections, None);
        assert_eq!(l.load_shed_in_flight, None);
        assert_eq!(l.max_request_body_bytes, Some(1 << 20));
        assert_eq!(l.max_uri_bytes, 2048);
        for (args, flag) in [
            (&["--max-connections", "0"][..], "--max-connections"),
            (
                &["--max-request-headers-size", "100"][..],
                "--max-request-headers-size",
            ),
            (&["--max-uri-length", "100KiB"][..], "--max-uri-length"),
            (
                &["--load-shed-in-flight", "20000"][..],
                "--load-shed-in-flight",
            ),
            (
                &["--header-read-timeout", "0s"][..],
                "--header-read-timeout",
            ),
            (
                &["--h2-max-concurrent-streams", "0"][..],
                "--h2-max-concurrent-streams",
            ),
            (&["--idle-timeout", "0s"][..], "--idle-timeout"),
            (&["--idle-timeout", "soon"][..], "--idle-timeout"),
            (
                &["--abusive-peer-connections", "0"][..],
                "--abusive-peer-connections",
            ),
            (
                &["--abusive-peer-penalty", "0s"][..],
                "--abusive-peer-penalty",
            ),
        ] {
            let err = run(args).unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn sizes_and_counts() {
        assert_eq!(parse_size("60KiB"), Ok(61_440));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("1GiB").is_err());
        assert!(parse_size("KiB").is_err());
        assert_eq!(parse_count("off"), Ok(Cap(None)));
        assert_eq!(parse_count("7"), Ok(Cap(Some(7))));
        assert!(parse_count("0").is_err());
        assert!(parse_count("-1").is_err());
    }
}
