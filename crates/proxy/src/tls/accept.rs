//! The inbound side of mesh TLS: read the whole ClientHello (bounded in size and time) to tell
//! mesh mTLS from anything else, and run the server handshake.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use trellis_identity::gateway_tls::{Sni, peek_sni};
use trellis_identity::tls::{
    ClientHello, HandshakeError, MAX_HELLO_BYTES, MeshTls, Peer, ServerStream, peek_client_hello,
};

use super::MeshIdentity;
use crate::telemetry::Direction;

/// How long a server handshake may take once the ClientHello is in.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads into `prefix` (which already holds the detected first bytes) until it holds the whole
/// first TLS record or `timeout` passes; returns whether it is a mesh ClientHello.
pub async fn read_client_hello<I>(io: &mut I, prefix: &mut BytesMut, timeout: Duration) -> bool
where
    I: AsyncRead + Unpin,
{
    let class = read_first_record(io, prefix, timeout, |p| match peek_client_hello(p) {
        ClientHello::NeedBytes(n) => Err(n),
        hello => Ok(hello == ClientHello::Mesh),
    });
    class.await.unwrap_or(false)
}

/// Reads into `prefix` (which may hold the detected first bytes) until it holds the whole
/// ClientHello, bounded by `timeout` and its size: the server name it asks for (lowercase), if
/// any. `None`: no readable ClientHello (the peer closed, `timeout` passed, or the record is not
/// a parsable ClientHello). The gateway (which closes then) and the sidecar's TLS routes (which
/// pass the stream through all the same) each decide what that means for the connection.
pub async fn read_sni<I>(
    io: &mut I,
    prefix: &mut BytesMut,
    timeout: Duration,
) -> Option<Option<String>>
where
    I: AsyncRead + Unpin,
{
    read_first_record(io, prefix, timeout, |p| match peek_sni(p) {
        Sni::NeedBytes(n) => Err(n),
        Sni::Name(name) => Ok(Some(name)),
        Sni::Invalid => Ok(None),
    })
    .await
    .flatten()
}

/// Reads into `prefix` until `peek` can tell from it what the connection's first TLS record
/// says (`Err(n)`: it needs `n` bytes in all); `None` when the peer closes or `timeout` passes
/// first. Shared by the sidecar (mesh or not) and the gateway (which SNI).
pub async fn read_first_record<I, T>(
    io: &mut I,
    prefix: &mut BytesMut,
    timeout: Duration,
    peek: impl Fn(&[u8]) -> Result<T, usize>,
) -> Option<T>
where
    I: AsyncRead + Unpin,
{
    let read = async {
        // Bounded: each round reads at least one byte towards at most MAX_HELLO_BYTES.
        loop {
            match peek(prefix) {
                Ok(answer) => return Some(answer),
                Err(n) => {
                    prefix.reserve(n.min(MAX_HELLO_BYTES).saturating_sub(prefix.len()));
                    match io.read_buf(prefix).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}

/// Terminates mesh mTLS on `io` (its bytes start with the ClientHello); counts the outcome.
pub async fn accept<I>(
    identity: &MeshIdentity,
    tls: &MeshTls,
    io: I,
) -> Result<(ServerStream<I>, Peer), HandshakeError>
where
    I: AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(io)).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Tls {
            reason: "timeout",
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"),
        }),
    };
    match &result {
        Ok(_) => identity.metrics.handshake_ok(Direction::Inbound),
        Err(e) => {
            identity
                .metrics
                .handshake_failed(Direction::Inbound, e.reason());
            tracing::info!(reason = e.reason(), error = %e, "inbound mTLS handshake failed");
        }
    }
    result
}
