//! What this crate's rustls client configs with a verifier of their own share: the builder up
//! to the client certificate, and one config per ALPN list made from a single base (same
//! verifier, same client certificate, so each differs only in what it offers). Which versions,
//! which verifier and whether a client certificate is presented stay each caller's choice.

use std::sync::Arc;

use rustls::client::WantsClientCert;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ConfigBuilder, SupportedProtocolVersion};

/// A client config builder for `versions` whose server check is `verifier` alone (the chain
/// and whichever names it wants), waiting for the client certificate or none.
pub(crate) fn verified_by(
    provider: Arc<CryptoProvider>,
    versions: &[&'static SupportedProtocolVersion],
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>, rustls::Error> {
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(verifier))
}

/// `base` offering `protocols` in ALPN, in that order.
pub(crate) fn offering(base: &ClientConfig, protocols: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = base.clone();
    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
