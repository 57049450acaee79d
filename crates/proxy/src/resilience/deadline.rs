//! gRPC deadlines: parsing and writing `grpc-timeout` (a positive integer of up to eight digits
//! and a unit: `H`, `M`, `S`, `m`, `u`, `n`), and the effective timeout of a request: the
//! smaller of the route's timeout and the caller's deadline.

use std::time::Duration;

/// Parses a `grpc-timeout` value; `None` when malformed (the header is then ignored).
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n.checked_mul(3600)?),
        b"M" => Duration::from_secs(n.checked_mul(60)?),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes `d` as a `grpc-timeout` value in the finest unit that fits eight digits (rounded up
/// to that unit; never zero).
pub fn format_grpc_timeout(d: Duration, buf: &mut itoa_buf::Buf) -> &str {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos().max(1);
    let units: [(u128, u8); 6] = [
        (1, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ];
    let (n, unit) = units
        .iter()
        .map(|(per, unit)| (nanos.div_ceil(*per), *unit))
        .find(|(n, _)| *n <= MAX)
        .unwrap_or((MAX, b'H'));
    buf.write(n as u64, unit)
}

/// A fixed buffer for [`format_grpc_timeout`], so writing the header does not allocate.
pub mod itoa_buf {
    #[derive(Debug, Default)]
    pub struct Buf {
        bytes: [u8; 9],
        len: usize,
    }

    impl Buf {
        pub fn write(&mut self, mut n: u64, unit: u8) -> &str {
            let mut digits = [0u8; 8];
            let mut i = digits.len();
            loop {
                i -= 1;
                digits[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 || i == 0 {
                    break;
                }
            }
            let len = digits.len() - i;
            self.bytes[..len].copy_from_slice(&digits[i..]);
            self.bytes[len] = unit;
            self.len = len + 1;
            // Only ASCII digits and a unit letter were written.
            std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("1n")
        }
    }
}

/// The timeout a request runs under: the smaller of the route's and the caller's deadline.
pub fn effective(route: Option<Duration>, grpc: Option<Duration>) -> Option<Duration> {
    match (route, grpc) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_refuses_junk() {
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout(b"9n"), Some(Duration::from_nanos(9)));
        for bad in [&b""[..], b"m", b"123456789m", b"1x", b"-1S", b"1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_in_the_finest_unit_that_fits() {
        let mut buf = itoa_buf::Buf::default();
        assert_eq!(
            format_grpc_timeout(Duration::from_millis(250), &mut buf),
            "250000u"
        );
        assert_eq!(format_grpc_timeout(Duration::from_nanos(5), &mut buf), "5n");
        assert_eq!(
            format_grpc_timeout(Duration::from_secs(3600 * 24), &mut buf),
            "86400000m"
        );
        let round = parse_grpc_timeout(
            format_grpc_timeout(Duration::from_millis(1234), &mut buf).as_bytes(),
        );
        assert_eq!(round, Some(Duration::from_millis(1234)));
    }

    #[test]
    fn effective_is_the_smaller() {
        let s = Duration::from_secs;
        assert_eq!(effective(Some(s(5)), Some(s(2))), Some(s(2)));
        assert_eq!(effective(Some(s(5)), None), Some(s(5)));
        assert_eq!(effective(None, Some(s(1))), Some(s(1)));
        assert_eq!(effective(None, None), None);
    }
}
