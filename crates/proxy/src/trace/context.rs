//! Trace context on the wire: W3C `traceparent`/`tracestate`, B3 single (`b3`) and B3 multi
//! (`X-B3-TraceId`, `X-B3-SpanId`, `X-B3-ParentSpanId`, `X-B3-Sampled`, `X-B3-Flags`). Pure
//! parsing and formatting over a `HeaderMap`; no span is made here.
//!
//! Reading prefers `traceparent`, then `b3`, then the multi headers. Writing always sets
//! `traceparent` and, when the request came with B3, the same B3 format too, so a B3-only
//! application downstream keeps its trace.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Which header format a context came in, so it goes out the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    W3c,
    B3Single,
    B3Multi,
}

/// A position in a trace: the trace, the span that is the parent of what comes next, and
/// whether the trace is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes exactly `N` bytes of hex; all-zero ids are invalid in both formats.
fn hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    (out != [0u8; N]).then_some(out)
}

/// B3 trace ids may be 64-bit: left-padded with zeros to 128.
fn b3_trace_id(s: &[u8]) -> Option<[u8; 16]> {
    match s.len() {
        32 => hex::<16>(s),
        16 => {
            let low = hex::<8>(s)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            Some(id)
        }
        _ => None,
    }
}

fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[i * 2] = DIGITS[usize::from(b >> 4)];
        out[i * 2 + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// `00-<trace>-<span>-<flags>`; other versions are read by the same layout, as the spec asks.
pub fn parse_traceparent(v: &[u8]) -> Option<SpanContext> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex::<1>(&v[0..2]).map_or(0, |b| b[0]);
    if version == 0xff || (version == 0 && v.len() != 55) {
        return None;
    }
    let flags = hex_val(v[53])? << 4 | hex_val(v[54])?;
    Some(SpanContext {
        trace_id: hex::<16>(&v[3..35])?,
        span_id: hex::<8>(&v[36..52])?,
        sampled: flags & 1 == 1,
    })
}

/// `{trace}-{span}[-{sampling}[-{parent}]]`; a lone sampling decision (`0`, `1`, `d`) carries
/// no ids and starts a new trace, so it is not a context.
pub fn parse_b3_single(v: &[u8]) -> Option<SpanContext> {
    let mut parts = v.split(|b| *b == b'-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = hex::<8>(parts.next()?)?;
    let sampled = match parts.next() {
        None => true,
        Some(b"1" | b"d") => true,
        Some(b"0") => false,
        Some(_) => return None,
    };
    Some(SpanContext {
        trace_id,
        span_id,
        sampled,
    })
}

fn parse_b3_multi(h: &HeaderMap) -> Option<SpanContext> {
    let trace_id = b3_trace_id(h.get(B3_TRACE_ID)?.as_bytes())?;
    let span_id = hex::<8>(h.get(B3_SPAN_ID)?.as_bytes())?;
    let debug = h.get(B3_FLAGS).is_some_and(|v| v.as_bytes() == b"1");
    let sampled = debug
        || h.get(B3_SAMPLED)
            .is_none_or(|v| matches!(v.as_bytes(), b"1" | b"true"));
    Some(SpanContext {
        trace_id,
        span_id,
        sampled,
    })
}

/// The incoming context, if any header carries a valid one.
pub fn extract(h: &HeaderMap) -> Option<(SpanContext, Format)> {
    if let Some(c) = h
        .get(TRACEPARENT)
        .and_then(|v| parse_traceparent(v.as_bytes()))
    {
        return Some((c, Format::W3c));
    }
    if let Some(c) = h.get(B3).and_then(|v| parse_b3_single(v.as_bytes())) {
        return Some((c, Format::B3Single));
    }
    parse_b3_multi(h).map(|c| (c, Format::B3Multi))
}

/// Writes `ctx` as the parent for the next hop: `traceparent` always (keeping `tracestate`),
/// and the B3 format the request came in with.
pub fn inject(h: &mut HeaderMap, ctx: &SpanContext, format: Format) {
    let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-00";
    encode_hex(&ctx.trace_id, &mut tp[3..35]);
    encode_hex(&ctx.span_id, &mut tp[36..52]);
    tp[54] = if ctx.sampled { b'1' } else { b'0' };
    if let Ok(v) = HeaderValue::from_bytes(&tp) {
        h.insert(TRACEPARENT, v);
    }
    let mut trace = [0u8; 32];
    encode_hex(&ctx.trace_id, &mut trace);
    let mut span = [0u8; 16];
    encode_hex(&ctx.span_id, &mut span);
    let sampled: &[u8] = if ctx.sampled { b"1" } else { b"0" };
    match format {
        Format::W3c => {}
        Format::B3Single => {
            let mut v = [0u8; 32 + 1 + 16 + 2];
            v[..32].copy_from_slice(&trace);
            v[32] = b'-';
            v[33..49].copy_from_slice(&span);
            v[49] = b'-';
            v[50] = sampled[0];
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                h.insert(B3, v);
            }
        }
        Format::B3Multi => {
            for (name, value) in [(B3_TRACE_ID, &trace[..]), (B3_SPAN_ID, &span[..])] {
                if let Ok(v) = HeaderValue::from_bytes(value) {
                    h.insert(name, v);
                }
            }
            // The parent id is the one just written; Zipkin's rule says to drop the stale one.
            h.remove(B3_PARENT_SPAN_ID);
            h.remove(B3_FLAGS);
            h.insert(
                B3_SAMPLED,
                HeaderValue::from_static(if ctx.sampled { "1" } else { "0" }),
            );
        }
    }
}

/// Lower-case hex of an id, for logs.
pub fn hex_string(id: &[u8]) -> String {
    let mut out = vec![0u8; id.len() * 2];
    encode_hex(id, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_and_writes_traceparent() {
        let c = parse_traceparent(TP.as_bytes()).unwrap();
        assert!(c.sampled);
        assert_eq!(hex_string(&c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut h = HeaderMap::new();
        inject(&mut h, &c, Format::W3c);
        assert_eq!(h[TRACEPARENT], TP);
        assert!(
            parse_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            parse_traceparent(b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            !parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .sampled
        );
        // A later version may append fields.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn reads_b3_single_and_multi() {
        let c = parse_b3_single(
            b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )
        .unwrap();
        assert!(c.sampled);
        assert_eq!(hex_string(&c.span_id), "e457b5a2e4d86bd1");
        let c64 = parse_b3_single(b"64fe8b2a57d3eff7-e457b5a2e4d86bd1-0").unwrap();
        assert!(!c64.sampled);
        assert_eq!(
            hex_string(&c64.trace_id),
            "000000000000000064fe8b2a57d3eff7"
        );
        assert!(parse_b3_single(b"0").is_none());

        let mut h = HeaderMap::new();
        h.insert(
            B3_TRACE_ID,
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7"),
        );
        h.insert(B3_SPAN_ID, HeaderValue::from_static("e457b5a2e4d86bd1"));
        h.insert(B3_SAMPLED, HeaderValue::from_static("0"));
        let (c, f) = extract(&h).unwrap();
        assert_eq!((c.sampled, f), (false, Format::B3Multi));
    }

    #[test]
    fn traceparent_wins_and_b3_goes_out_as_it_came() {
        let mut h = HeaderMap::new();
        h.insert(
            B3,
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        let (c, f) = extract(&h).unwrap();
        assert_eq!(f, Format::B3Single);
        let next = SpanContext {
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            ..c
        };
        inject(&mut h, &next, f);
        assert_eq!(h[B3], "80f198ee56343ba864fe8b2a57d3eff7-0102030405060708-1");
        assert_eq!(
            h[TRACEPARENT],
            "00-80f198ee56343ba864fe8b2a57d3eff7-0102030405060708-01"
        );
        let (again, f) = extract(&h).unwrap();
        assert_eq!((again, f), (next, Format::W3c));

        let mut m = HeaderMap::new();
        inject(&mut m, &next, Format::B3Multi);
        assert_eq!(m[B3_SPAN_ID], "0102030405060708");
        assert_eq!(m[B3_SAMPLED], "1");
    }
}
