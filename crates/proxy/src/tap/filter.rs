//! The tap's query: which rows a subscriber wants and when its stream ends. Parsed from the
//! query string of `GET /tap` (pure; unknown parameters are refused so a typo does not silently
//! show everything).

use std::time::Duration;

use super::Row;
use crate::telemetry::Direction;

/// Without `max_rows`.
pub const DEFAULT_MAX_ROWS: u64 = 100;
/// Without `max_seconds`.
pub const DEFAULT_MAX_SECONDS: u64 = 60;
/// Larger requests are clamped: a forgotten tap must end on its own.
pub const MAX_ROWS_CAP: u64 = 10_000;
pub const MAX_SECONDS_CAP: u64 = 600;

/// Which status codes a tap wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    /// `2xx`: the hundreds digit.
    Class(u16),
    Code(u16),
}

/// A parsed `GET /tap` query.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub method: Option<String>,
    /// A prefix of the path.
    pub path: Option<String>,
    /// The authority, with or without its port.
    pub authority: Option<String>,
    pub status: Option<StatusFilter>,
    pub direction: Option<Direction>,
    /// The destination: its workload, its service host, or the service's short name.
    pub to: Option<String>,
    pub max_rows: u64,
    pub max_seconds: Duration,
}

impl Default for Query {
    fn default() -> Self {
        Self {
            method: None,
            path: None,
            authority: None,
            status: None,
            direction: None,
            to: None,
            max_rows: DEFAULT_MAX_ROWS,
            max_seconds: Duration::from_secs(DEFAULT_MAX_SECONDS),
        }
    }
}

/// A query parameter the tap cannot use; the message names it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("unknown query parameter {0:?} (known: {KNOWN})")]
    Unknown(String),
    #[error("{name}={value:?}: {why}")]
    Invalid {
        name: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("query parameter {0:?} is not valid percent-encoding or UTF-8")]
    Encoding(String),
}

const KNOWN: &str = "method, path, authority, status, direction, to, max_rows, max_seconds";

impl Query {
    /// Parses `method=GET&path=/reviews&max_rows=10` (no leading `?`; empty values are ignored).
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let mut q = Query::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(raw_name).ok_or_else(|| QueryError::Encoding(raw_name.into()))?;
            let value = decode(raw_value).ok_or_else(|| QueryError::Encoding(pair.into()))?;
            if value.is_empty() {
                continue;
            }
            match name.as_str() {
                "method" => q.method = Some(value.to_ascii_uppercase()),
                "path" => q.path = Some(value),
                "authority" => q.authority = Some(value),
                "to" => q.to = Some(value),
                "status" => q.status = Some(parse_status(&value)?),
                "direction" => {
                    q.direction = Some(match value.as_str() {
                        "inbound" | "in" => Direction::Inbound,
                        "outbound" | "out" => Direction::Outbound,
                        _ => {
                            return Err(QueryError::Invalid {
                                name: "direction",
                                value,
                                why: "expected inbound or outbound",
                            });
                        }
                    })
                }
                "max_rows" => q.max_rows = positive("max_rows", value)?.min(MAX_ROWS_CAP),
                "max_seconds" => {
                    q.max_seconds =
                        Duration::from_secs(positive("max_seconds", value)?.min(MAX_SECONDS_CAP))
                }
                _ => return Err(QueryError::Unknown(name)),
            }
        }
        Ok(q)
    }

    /// Whether `row` passes every filter given.
    pub fn matches(&self, row: &Row) -> bool {
        if let Some(m) = &self.method
            && !row.method.eq_ignore_ascii_case(m)
        {
            return false;
        }
        if let Some(p) = &self.path
            && !row.path.starts_with(p.as_str())
        {
            return false;
        }
        if let Some(a) = &self.authority
            && row.authority != *a
            && host(&row.authority) != a
        {
            return false;
        }
        if let Some(d) = self.direction
            && row.direction != Some(d)
        {
            return false;
        }
        match self.status {
            Some(StatusFilter::Class(c)) if row.status / 100 != c => return false,
            Some(StatusFilter::Code(c)) if row.status != c => return false,
            _ => {}
        }
        if let Some(to) = &self.to {
            let to = to.as_str();
            let short = |host: &str| host.split('.').next() == Some(to);
            let hit = row.destination_workload == to
                || row.destination_service == to
                || (!row.destination_service.is_empty() && short(&row.destination_service))
                // Inbound rows name no service; the caller addressed it by the authority.
                || short(host(&row.authority));
            if !hit {
                return false;
            }
        }
        true
    }
}

fn parse_status(value: &str) -> Result<StatusFilter, QueryError> {
    let invalid = || QueryError::Invalid {
        name: "status",
        value: value.to_owned(),
        why: "expected a code (503) or a class (5xx)",
    };
    let lower = value.to_ascii_lowercase();
    if let Some(digit) = lower.strip_suffix("xx") {
        return match digit.parse::<u16>() {
            Ok(d @ 1..=5) => Ok(StatusFilter::Class(d)),
            _ => Err(invalid()),
        };
    }
    match lower.parse::<u16>() {
        Ok(c @ 100..=999) => Ok(StatusFilter::Code(c)),
        _ => Err(invalid()),
    }
}

fn positive(name: &'static str, value: String) -> Result<u64, QueryError> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(QueryError::Invalid {
            name,
            value,
            why: "expected a whole number above 0",
        }),
    }
}

/// `reviews:9080` → `reviews`.
fn host(authority: &str) -> &str {
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}
