//! The TCP metadata exchange: on a mesh mTLS connection for opaque TCP where the server proxy
//! selected ALPN `trellis-mx/1`, the client proxy writes one small header naming its workload
//! and namespace, and the port the stream is for, before the stream's bytes. The server proxy
//! reads it (bounded in size and time) to label its `trellis_tcp_*` series with the caller's
//! workload, as HTTP's `trellis-source-workload` header does for requests, and, when the
//! connection has no original destination, to hand the stream to the port it is for (a
//! gateway's listener, a pod's declared port), as `trellis-target-port` does for requests.
//! Who the caller is for authorization is the verified SPIFFE ID, never this header.
//!
//! Frame: `version: u8` (1), `length: u16` big-endian (of the body, at most [`MAX_BODY`]),
//! then the body: fields of `key: u8`, `length: u8`, value. Keys: 1 workload (UTF-8),
//! 2 namespace (UTF-8), 3 target port (`u16` big-endian, 1-65535: the endpoint's target port,
//! the port the client was routed to behind the peer proxy). Unknown keys are skipped, so
//! later version-1 writers may add fields: a reader from before key 3 ignores it.

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
const KEY_TARGET_PORT: u8 = 3;

/// What the calling proxy said about its workload. Empty strings (and `None`) when it did not
/// say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMetadata {
    pub workload: String,
    pub namespace: String,
    /// The endpoint's target port the stream was routed to (the application port behind this
    /// proxy), as HTTP's `trellis-target-port` names it.
    pub target_port: Option<u16>,
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
    #[error("metadata header field target port is not a port 1-65535 ({0} bytes)")]
    BadPort(usize),
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
    if let Some(port) = meta.target_port.filter(|p| *p != 0) {
        body.push(KEY_TARGET_PORT);
        body.push(2);
        body.extend_from_slice(&port.to_be_bytes());
    }
    // Two fields of at most 257 bytes and one of 4: always within MAX_BODY and u16.
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
        if *key == KEY_TARGET_PORT {
            let port = <[u8; 2]>::try_from(value)
                .map(u16::from_be_bytes)
                .ok()
                .filter(|p| *p != 0)
                .ok_or(MxError::BadPort(len))?;
            meta.target_port = Some(port);
            continue;
        }
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

/// Client side, right after the handshake: writes this workload's header, with the endpoint's
/// `target_port` when it has one, when the server selected `trellis-mx/1` (one small write per
/// connection), nothing otherwise.
pub async fn announce<IO>(
    tls: &mut ClientStream<IO>,
    local: &LocalWorkload,
    target_port: Option<u16>,
) -> io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if tls.get_ref().1.alpn_protocol() != Some(MeshAlpn::TcpMx.protocol()) {
        return Ok(());
    }
    let frame = encode(&PeerMetadata {
        workload: local.workload.clone(),
        namespace: local.namespace.clone(),
        target_port,
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
            target_port: None,
        }
    }

    fn with_port(m: PeerMetadata, port: u16) -> PeerMetadata {
        PeerMetadata {
            target_port: Some(port),
            ..m
        }
    }

    #[test]
    fn roundtrip() {
        for m in [
            meta("productpage-v1", "bookinfo"),
            meta("", ""),
            meta("é", ""),
            with_port(meta("sleep", "default"), 8443),
            with_port(meta("", ""), 1),
            with_port(meta("", ""), u16::MAX),
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

    /// This module's `decode_body` as it was before key 3 (the first release of version 1),
    /// unchanged: how a proxy of that release reads a newer client's header.
    fn old_decode_body(mut body: &[u8]) -> Result<(String, String), MxError> {
        let (mut workload, mut namespace) = (String::new(), String::new());
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
                KEY_WORKLOAD => ("workload", &mut workload),
                KEY_NAMESPACE => ("namespace", &mut namespace),
                _ => continue,
            };
            *slot = std::str::from_utf8(value)
                .map_err(|_| MxError::NotUtf8(name))?
                .to_owned();
        }
        Ok((workload, namespace))
    }

    #[test]
    fn the_target_port_is_skipped_by_a_reader_from_before_it() {
        let frame = encode(&with_port(meta("sleep", "default"), 8443));
        let head: [u8; HEAD] = frame[..HEAD].try_into().unwrap();
        let len = decode_head(head).unwrap();
        assert_eq!(len, frame.len() - HEAD);
        let old = old_decode_body(&frame[HEAD..]).unwrap();
        assert_eq!(old, ("sleep".to_string(), "default".to_string()));
        // Whatever the order of the fields.
        let mut body = vec![KEY_TARGET_PORT, 2, 0x20, 0xfb];
        body.extend_from_slice(&[KEY_NAMESPACE, 2, b'n', b's']);
        assert_eq!(
            old_decode_body(&body).unwrap(),
            (String::new(), "ns".into())
        );
        let mut frame = vec![VERSION, 0, body.len() as u8];
        frame.extend_from_slice(&body);
        assert_eq!(decode(&frame).unwrap().0, with_port(meta("", "ns"), 8443));
    }

    #[test]
    fn a_bad_target_port_is_refused_and_port_zero_is_not_sent() {
        for value in [&[][..], &[1], &[0, 0], &[0, 1, 2]] {
            let mut frame = vec![VERSION, 0, 2 + value.len() as u8, KEY_TARGET_PORT];
            frame.push(value.len() as u8);
            frame.extend_from_slice(value);
            assert_eq!(
                decode(&frame),
                Err(MxError::BadPort(value.len())),
                "{value:?}"
            );
        }
        let frame = encode(&with_port(meta("a", ""), 0));
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
            announce(&mut c, &local, Some(9000)).await.unwrap();
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
        assert_eq!(m, with_port(meta("web-v1", "front"), 9000));
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
