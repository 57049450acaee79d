//! TLS routes on the sidecar's outbound path (Istio `tls[]` for the mesh): an application's
//! own TLS connection is routed by the SNI of its ClientHello, then passed through
//! unterminated (`crate::serve::serve_opaque_sni`), over mesh mTLS when the chosen endpoint is
//! meshed (an egress gateway).
//!
//! This module only learns the SNI; the choice of route is the plan's
//! (`Plan::tcp_backend_for`, over `TcpRoute::admits`). It must not terminate or alter the
//! application's TLS: the bytes read here are replayed to the upstream as they came.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncRead;

use crate::transport::PrefixedIo;

/// Reads the rest of the ClientHello whose first bytes detection left in `prefix` (bounded by
/// `timeout` and the ClientHello size limit) and returns the stream that replays every byte
/// read, with the SNI it names. A ClientHello without SNI, unparsable, or not complete in time
/// gives `None`: the connection is still passed through, by the routes that need no SNI.
pub async fn read_sni<I: AsyncRead + Unpin>(
    mut io: I,
    mut prefix: BytesMut,
    timeout: Duration,
) -> (PrefixedIo<I>, Option<String>) {
    let sni = crate::tls::accept::read_sni(&mut io, &mut prefix, timeout)
        .await
        .flatten();
    tracing::trace!(sni = ?sni, "outbound TLS connection");
    (PrefixedIo::new(prefix, io), sni)
}

#[cfg(test)]
mod tests;
