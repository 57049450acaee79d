//! Protocol detection: which protocol a client speaks, judged from the first bytes it sends.
//!
//! [`classify`] is a pure function over a byte prefix (fuzz-friendly: any input, no panics) that
//! says `NeedMore` until it can decide; [`detect`] is the bounded read loop around it. The bytes
//! read are returned so the caller can replay them (see [`crate::transport::PrefixedIo`]). This
//! module must not decide where traffic goes.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::telemetry::DetectOutcome;

/// The HTTP/2 connection preface a prior-knowledge (h2c) client sends first.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much is read at most before giving up on finding an HTTP/1 request line's end; a longer
/// line with a method-like start is still treated as HTTP/1 (hyper then judges it).
pub const MAX_PREFIX: usize = 4096;

/// The longest method token accepted (`PROPPATCH`, `UNSUBSCRIBE`, extension methods).
const MAX_METHOD: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classification {
    /// The prefix is consistent with more than one answer.
    NeedMore,
    Http1,
    Http2,
    Tls,
    Opaque,
}

/// The protocol a connection will be served as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// Passed through as opaque TCP for now; mTLS termination comes with identity.
    Tls,
    Opaque,
}

/// Classifies a byte prefix.
pub fn classify(buf: &[u8]) -> Classification {
    if buf.is_empty() {
        return Classification::NeedMore;
    }
    // TLS record: handshake (0x16), legacy version major 3, minor <= 4.
    if buf[0] == 0x16 {
        return match buf.get(1..3) {
            None if buf.get(1).is_none_or(|b| *b == 0x03) => Classification::NeedMore,
            Some([0x03, minor]) if *minor <= 0x04 => Classification::Tls,
            _ => Classification::Opaque,
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Classification::Http2
        } else {
            Classification::NeedMore
        };
    }
    classify_http1(buf)
}

/// `METHOD SP request-target SP HTTP/1.x CRLF`.
fn classify_http1(buf: &[u8]) -> Classification {
    let method_len = buf
        .iter()
        .take(MAX_METHOD + 1)
        .take_while(|b| is_method_char(**b))
        .count();
    if method_len == 0 || method_len > MAX_METHOD {
        return Classification::Opaque;
    }
    match buf.get(method_len) {
        None => return Classification::NeedMore,
        Some(b' ') => {}
        Some(_) => return Classification::Opaque,
    }
    let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
        return if buf.len() >= MAX_PREFIX {
            Classification::Http1
        } else {
            Classification::NeedMore
        };
    };
    let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
    let version = line.rsplit(|b| *b == b' ').next().unwrap_or_default();
    if version.starts_with(b"HTTP/1.") {
        Classification::Http1
    } else {
        Classification::Opaque
    }
}

fn is_method_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

/// What [`detect`] found, and the bytes it consumed (to be replayed).
#[derive(Debug)]
pub struct Detected {
    pub protocol: Protocol,
    pub outcome: DetectOutcome,
    pub prefix: BytesMut,
}

/// Reads from `io` until [`classify`] decides, the peer stops sending (EOF) or `timeout` passes.
/// A timeout or an undecidable prefix means opaque TCP. Errors reading are returned.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> std::io::Result<Detected> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut prefix = BytesMut::with_capacity(512);
    // Each successful read adds at least one byte, so MAX_PREFIX bounds the loop.
    while prefix.len() < MAX_PREFIX {
        let limit = (MAX_PREFIX - prefix.len()) as u64;
        let read =
            tokio::time::timeout_at(deadline, (&mut *io).take(limit).read_buf(&mut prefix)).await;
        let decided = match read {
            Err(_elapsed) => Some((Protocol::Opaque, DetectOutcome::Timeout)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) if prefix.is_empty() => Some((Protocol::Opaque, DetectOutcome::Empty)),
            // EOF after some bytes: whatever the prefix is, no more will come.
            Ok(Ok(0)) => Some(
                decided(classify(&prefix)).unwrap_or((Protocol::Opaque, DetectOutcome::Opaque)),
            ),
            Ok(Ok(_)) => decided(classify(&prefix)),
        };
        if let Some((protocol, outcome)) = decided {
            return Ok(Detected {
                protocol,
                outcome,
                prefix,
            });
        }
    }
    let (protocol, outcome) =
        decided(classify(&prefix)).unwrap_or((Protocol::Opaque, DetectOutcome::Opaque));
    Ok(Detected {
        protocol,
        outcome,
        prefix,
    })
}

fn decided(c: Classification) -> Option<(Protocol, DetectOutcome)> {
    match c {
        Classification::NeedMore => None,
        Classification::Http1 => Some((Protocol::Http1, DetectOutcome::Http1)),
        Classification::Http2 => Some((Protocol::Http2, DetectOutcome::Http2)),
        Classification::Tls => Some((Protocol::Tls, DetectOutcome::Tls)),
        Classification::Opaque => Some((Protocol::Opaque, DetectOutcome::Opaque)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Classification::*;

    #[test]
    fn http1_request_lines() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Http1);
        assert_eq!(classify(b"POST /a?b=c HTTP/1.0\r\n"), Http1);
        assert_eq!(classify(b"GET / HTTP/1.1\n"), Http1);
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1\r\n"), Http1);
    }

    #[test]
    fn partial_inputs_need_more() {
        let full = b"GET /index.html HTTP/1.1\r\n";
        for i in 1..full.len() - 1 {
            assert_eq!(classify(&full[..i]), NeedMore, "prefix {i}");
        }
        for i in 1..H2_PREFACE.len() {
            assert_eq!(classify(&H2_PREFACE[..i]), NeedMore, "preface prefix {i}");
        }
        assert_eq!(classify(&[0x16]), NeedMore);
        assert_eq!(classify(&[0x16, 0x03]), NeedMore);
        assert_eq!(classify(b""), NeedMore);
    }

    #[test]
    fn h2_preface_and_tls() {
        assert_eq!(classify(H2_PREFACE), Http2);
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 6, 4]);
        assert_eq!(classify(&more), Http2);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), Tls);
        assert_eq!(classify(&[0x16, 0x03, 0x09]), Opaque);
        assert_eq!(classify(&[0x16, 0x02]), Opaque);
    }

    #[test]
    fn opaque_inputs() {
        assert_eq!(classify(b"\x00\x01binary"), Opaque);
        assert_eq!(classify(b"get / HTTP/1.1\r\n"), Opaque);
        assert_eq!(classify(b"GET / SPDY/3\r\n"), Opaque);
        assert_eq!(classify(b"HELLO\r\n"), Opaque);
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Http1);
        assert_eq!(classify(&[b'A'; 40]), Opaque);
    }

    #[test]
    fn long_request_lines_are_http1() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_PREFIX, b'a');
        assert_eq!(classify(&line), Http1);
    }

    #[test]
    fn never_panics_on_arbitrary_prefixes() {
        // A cheap stand-in for a fuzzer: every short byte string over an alphabet of interest.
        let alphabet = [
            0x16u8, 0x03, b'G', b'E', b'T', b' ', b'\r', b'\n', b'P', b'R', b'I', 0,
        ];
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    let _ = classify(&[a, b, c]);
                    let _ = classify(&[a, b]);
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn detect_times_out_to_opaque() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GE")
            .await
            .unwrap();
        let d = detect(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(d.outcome, DetectOutcome::Timeout);
        assert_eq!(d.protocol, Protocol::Opaque);
        assert_eq!(&d.prefix[..], b"GE");
    }

    #[tokio::test(start_paused = true)]
    async fn detect_reads_across_chunks_and_eof() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let task = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            client.write_all(b"GET / ").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"HTTP/1.1\r\n").await.unwrap();
            client
        });
        let d = detect(&mut server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(d.outcome, DetectOutcome::Http1);
        assert_eq!(&d.prefix[..], b"GET / HTTP/1.1\r\n");
        drop(task.await.unwrap());
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert_eq!(
            detect(&mut server, Duration::from_secs(1))
                .await
                .unwrap()
                .outcome,
            DetectOutcome::Empty
        );
    }
}
