//! The TCP metadata exchange: on a mesh mTLS connection for opaque TCP where the server proxy
//! selected ALPN `trellis-mx/1`, the client proxy writes one small header naming its workload
//! and namespace before the stream's bytes, and the server proxy reads it (bounded in size and
//! time) to label its `trellis_tcp_*` series with the caller's workload, as HTTP's
//! `trellis-source-workload` header does for requests. Metrics only: authorization never reads
//! it (the verified SPIFFE ID is what policy uses).
//!
//! Frame: `version: u8` (1), `length: u16` big-endian (of the body, at most [`MAX_BODY`]),
//! then the body: fields of `key: u8`, `length: u8`, UTF-8 value. Keys: 1 workload,
//! 2 namespace; unknown keys are skipped, so later version-1 writers may add fields.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use trellis_identity::tls::{ClientStream, MeshAlpn};

use crate::telemetry::exchange::LocalWorkload;

/// The only header version this proxy writes and reads.
pub const VERSION: u8 = 1;
/// The largest body accepted (and written): a header is a few dozen bytes in practice.
pub const MAX_BODY: usize = 1024;
const HEAD: usize = 3;
const KEY_WORKLOAD: u8 = 1;
const KEY_NAMESPACE: u8 = 2;

/// What the calling proxy said about its workload. Empty strings when it did not say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMetadata {
    pub workload: String,
    pub namespace: String,
}

/// Why a header was refused; the connection is then closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MxError {
    #[error("metadata header version {0} is not supported (this proxy reads version {VERSION})")]
    UnknownVersion(u8),
    #[error("metadata header body of {0} bytes exceeds the {MAX_BODY}-byte limit")]
    Oversize(usize),
    #[error("metadata header truncated in {0}")]
    Truncated(&'static str),
    #[error("metadata header field {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("reading the metadata header: {0}")]
    Io(io::ErrorKind),
    #[error("the metadata header did not arrive within {0:?}")]
    Timeout(Duration),
}

/// The whole frame for `meta`. A value longer than a field can hold (255 bytes, more than a
/// Kubernetes name) is left out rather than cut inside a character.
pub fn encode(meta: &PeerMetadata) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + meta.workload.len() + meta.namespace.len());
    for (key, value) in [
        (KEY_WORKLOAD, &meta.workload),
        (KEY_NAMESPACE, &meta.namespace),
    ] {
        if let Ok(len) = u8::try_from(value.len())
            && len > 0
        {
            body.push(key);
            body.push(len);
            body.extend_from_slice(value.as_bytes());
        }
    }
    // Two fields of at most 257 bytes each: always within MAX_BODY and u16.
    let mut frame = Vec::with_capacity(HEAD + body.len());
    frame.push(VERSION);
    frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Reads the frame's head: its version must be known and its body length within bounds.
fn decode_head(head: [u8; HEAD]) -> Result<usize, MxError> {
    if head[0] != VERSION {
        return Err(MxError::UnknownVersion(head[0]));
    }
    let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
    if len > MAX_BODY {
        return Err(MxError::Oversize(len));
    }
    Ok(len)
}

/// Decodes a body's fields.
pub fn decode_body(mut body: &[u8]) -> Result<PeerMetadata, MxError> {
    let mut meta = PeerMetadata::default();
    // Bounded: each round consumes at least two bytes of a body of at most MAX_BODY.
    while !body.is_empty() {
        let [key, len, rest @ ..] = body else {
            return Err(MxError::Truncated("a field's key and length"));
        };
        let len = usize::from(*len);
        let Some((value, rest)) = rest.split_at_checked(len) else {
            return Err(MxError::Truncated("a field's value"));
        };
        body = rest;
        let (name, slot) = match *key {
            KEY_WORKLOAD => ("workload", &mut meta.workload),
            KEY_NAMESPACE => ("namespace", &mut meta.namespace),
            _ => continue,
        };
        *slot = std::str::from_utf8(value)
            .map_err(|_| MxError::NotUtf8(name))?
            .to_owned();
    }
    Ok(meta)
}

/// Decodes one whole frame at the start of `buf`; returns it and the bytes it took.
pub fn decode(buf: &[u8]) -> Result<(PeerMetadata, usize), MxError> {
    let head: [u8; HEAD] = buf
        .get(..HEAD)
        .and_then(|h| h.try_into().ok())
        .ok_or(MxError::Truncated("the header's version and length"))?;
    let len = decode_head(head)?;
    let body = buf
        .get(HEAD..HEAD + len)
        .ok_or(MxError::Truncated("the header's body"))?;
    Ok((decode_body(body)?, HEAD + len))
}

/// Reads one frame from `io` within `timeout`, and nothing past it (the stream's own bytes
/// follow).
pub async fn read<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> Result<PeerMetadata, MxError> {
    let read = async {
        let mut head = [0u8; HEAD];
        read_exact(io, &mut head, "the header's version and length").await?;
        let mut body = vec![0u8; decode_head(head)?];
        read_exact(io, &mut body, "the header's body").await?;
        decode_body(&body)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| MxError::Timeout(timeout))?
}

async fn read_exact<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), MxError> {
    match io.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(MxError::Truncated(what)),
        Err(e) => Err(MxError::Io(e.kind())),
    }
}

/// Client side, right after the handshake: writes this workload's header when the server
/// selected `trellis-mx/1` (one small write per connection), nothing otherwise.
pub async fn announce<IO>(tls: &mut ClientStream<IO>, local: &LocalWorkload) -> io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if tls.get_ref().1.alpn_protocol() != Some(MeshAlpn::TcpMx.protocol()) {
        return Ok(());
    }
    let frame = encode(&PeerMetadata {
        workload: local.workload.clone(),
        namespace: local.namespace.clone(),
    });
    tls.write_all(&frame).await?;
    // Sent now, not with the application's first bytes: a server-first protocol would
    // otherwise wait on a header the client never flushes.
    tls.flush().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn meta(workload: &str, namespace: &str) -> PeerMetadata {
        PeerMetadata {
            workload: workload.into(),
            namespace: namespace.into(),
        }
    }

    #[test]
    fn roundtrip() {
        for m in [
            meta("productpage-v1", "bookinfo"),
            meta("", ""),
            meta("é", ""),
        ] {
            let frame = encode(&m);
            assert_eq!(decode(&frame).unwrap(), (m, frame.len()));
        }
    }

    #[test]
    fn a_value_too_long_for_a_field_is_left_out() {
        let long = "w".repeat(256);
        let (m, _) = decode(&encode(&meta(&long, "ns"))).unwrap();
        assert_eq!(m, meta("", "ns"));
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let body = [9, 2, b'x', b'y', KEY_WORKLOAD, 1, b'a'];
        let mut frame = vec![VERSION, 0, body.len() as u8];
        frame.extend_from_slice(&body);
        assert_eq!(decode(&frame).unwrap().0, meta("a", ""));
    }

    #[test]
    fn oversize_unknown_version_truncated_and_bad_utf8_are_refused() {
        let big = (MAX_BODY as u16 + 1).to_be_bytes();
        assert_eq!(
            decode(&[VERSION, big[0], big[1]]),
            Err(MxError::Oversize(MAX_BODY + 1))
        );
        assert_eq!(decode(&[2, 0, 0]), Err(MxError::UnknownVersion(2)));
        let frame = encode(&meta("reviews", "shop"));
        for cut in 0..frame.len() {
            assert!(
                matches!(decode(&frame[..cut]), Err(MxError::Truncated(_))),
                "cut at {cut}"
            );
        }
        // The body says a field is longer than the body.
        assert_eq!(
            decode(&[VERSION, 0, 3, KEY_WORKLOAD, 5, b'a']),
            Err(MxError::Truncated("a field's value"))
        );
        assert_eq!(
            decode(&[VERSION, 0, 3, KEY_NAMESPACE, 1, 0xff]),
            Err(MxError::NotUtf8("namespace"))
        );
    }

    #[tokio::test]
    async fn read_takes_the_header_and_leaves_the_stream() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let mut bytes = encode(&meta("web", "front"));
        bytes.extend_from_slice(b"payload");
        a.write_all(&bytes).await.unwrap();
        let m = read(&mut b, Duration::from_secs(5)).await.unwrap();
        assert_eq!(m, meta("web", "front"));
        let mut rest = [0u8; 7];
        b.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"payload");
    }

    /// A real mTLS pair: `old_server` emulates a proxy from before the exchange.
    async fn announce_over_mtls(old_server: bool) -> (MeshAlpn, Vec<u8>) {
        use std::time::SystemTime;
        use trellis_identity::SpiffeId;
        use trellis_identity::ca::{Authority, DEFAULT_LEAF_TTL};
        use trellis_identity::tls::{LeafKey, MeshTls};

        let ca = Authority::generate("cluster.local", SystemTime::now()).unwrap();
        let tls = |sa: &str| {
            let id = SpiffeId::new("cluster.local", "default", sa).unwrap();
            let key = LeafKey::generate().unwrap();
            let csr = key.csr_pem(&id).unwrap();
            let issued = ca
                .issue(csr.as_bytes(), &id, DEFAULT_LEAF_TTL, SystemTime::now())
                .unwrap();
            MeshTls::new(&issued.chain_pem, &key, ca.bundle()).unwrap()
        };
        let client = tls("web");
        let server = match old_server {
            true => tls("api").without_metadata_exchange(),
            false => tls("api"),
        };
        let (a, b) = tokio::io::duplex(64 * 1024);
        let local = LocalWorkload::new("web-v1", "front");
        let client_side = async {
            let expected = "spiffe://cluster.local/ns/default/sa/api";
            let mut c = client.connect(a, MeshAlpn::Tcp, expected).await.unwrap();
            announce(&mut c, &local).await.unwrap();
            c.write_all(b"ping").await.unwrap();
            c.shutdown().await.unwrap();
        };
        let server_side = async {
            let (mut s, peer) = server.accept(b).await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            (peer.alpn, all)
        };
        tokio::join!(client_side, server_side).1
    }

    #[tokio::test]
    async fn the_client_announces_only_to_a_server_that_selected_the_exchange() {
        let (alpn, bytes) = announce_over_mtls(false).await;
        assert_eq!(alpn, MeshAlpn::TcpMx);
        let (m, used) = decode(&bytes).unwrap();
        assert_eq!(m, meta("web-v1", "front"));
        assert_eq!(&bytes[used..], b"ping");
        // A server without the exchange gets the stream's bytes only.
        let (alpn, bytes) = announce_over_mtls(true).await;
        assert_eq!(alpn, MeshAlpn::Tcp);
        assert_eq!(bytes, b"ping");
    }

    #[tokio::test]
    async fn a_slow_or_cut_header_fails() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        // Half a head, then silence.
        a.write_all(&[VERSION, 0]).await.unwrap();
        let t = Duration::from_millis(100);
        assert_eq!(read(&mut b, t).await, Err(MxError::Timeout(t)));
        // Half a body, then the peer closes.
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(&[VERSION, 0, 10, KEY_WORKLOAD]).await.unwrap();
        drop(a);
        assert_eq!(
            read(&mut b, Duration::from_secs(5)).await,
            Err(MxError::Truncated("the header's body"))
        );
    }
}
