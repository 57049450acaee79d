//! The mesh's rustls configs and handshakes: TLS 1.3 only, aws-lc-rs only, X25519MLKEM768
//! preferred with X25519 accepted, mutual authentication against the trust bundle, and the
//! SPIFFE checks (the client checks the server is the identity discovery named; the server
//! reads the client's).
//!
//! A [`MeshTls`] is built once per leaf or bundle change and shared (`Arc`) by every
//! connection; handshakes allocate only what rustls needs. ALPN tells the peer proxy what runs
//! inside: `h2` (the multiplexed hop), `http/1.1` (upgrades) or `trellis-tcp` (opaque TCP).
//! An opaque TCP client offers `trellis-mx/1` before `trellis-tcp`: a server that selects it
//! expects the client's metadata header first (the proxy's TCP metadata exchange, see
//! docs/identity.md); a server that does not know it selects `trellis-tcp`, so proxies with and
//! without the exchange interoperate.
//!
//! Session resumption is off on both sides: every connection presents and checks certificates
//! (connections are long-lived and pooled, so the cost is small, and a rotated anchor or leaf is
//! never bypassed by an old ticket).

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::SpiffeId;
use crate::ca::TrustBundle;
use crate::client_config;
use crate::verify::ChainCheck;

/// What runs inside a mesh TLS connection, named by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshAlpn {
    /// The multiplexed HTTP/2 hop.
    H2,
    /// HTTP/1.1 (upgrades, e.g. WebSocket).
    Http1,
    /// Opaque TCP.
    Tcp,
    /// Opaque TCP preceded by the client's metadata header (workload and namespace). Offered
    /// by every opaque TCP client before `trellis-tcp`.
    TcpMx,
}

impl MeshAlpn {
    pub const fn protocol(self) -> &'static [u8] {
        match self {
            Self::H2 => b"h2",
            Self::Http1 => b"http/1.1",
            Self::Tcp => b"trellis-tcp",
            Self::TcpMx => b"trellis-mx/1",
        }
    }

    /// Whether a client that asked for `self` accepts the server's choice `chosen`: an opaque
    /// TCP client takes the stream with or without the metadata exchange.
    pub fn accepts(self, chosen: &[u8]) -> bool {
        match self {
            Self::Tcp | Self::TcpMx => {
                chosen == Self::Tcp.protocol() || chosen == Self::TcpMx.protocol()
            }
            other => chosen == other.protocol(),
        }
    }

    /// `trellis-tcp` marks a mesh ClientHello: applications never offer it. `h2` and
    /// `http/1.1` are the app's own TLS unless offered alongside it.
    pub fn from_protocol(p: &[u8]) -> Option<Self> {
        match p {
            b"h2" => Some(Self::H2),
            b"http/1.1" => Some(Self::Http1),
            b"trellis-tcp" => Some(Self::Tcp),
            b"trellis-mx/1" => Some(Self::TcpMx),
            _ => None,
        }
    }
}

/// The ALPN marker every mesh client offers last, so that the server can tell mesh TLS from an
/// application's own TLS (which is passed through untouched) before terminating anything.
pub const MESH_MARKER: &[u8] = b"trellis-mesh";

/// Why a handshake failed, as a bounded metric label.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake failed ({reason}): {source}")]
    Tls {
        reason: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the peer presented {got:?}, expected {expected}")]
    IdentityMismatch {
        expected: String,
        got: Option<String>,
    },
    #[error("the peer presented no SPIFFE identity")]
    NoIdentity,
    #[error("the peer chose no mesh protocol")]
    NoAlpn,
}

impl HandshakeError {
    /// `bad_certificate`, `no_client_cert`, `unknown_ca`, `alert`, `protocol`, `io`,
    /// `identity_mismatch`, `no_identity`, `no_alpn`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Tls { reason, .. } => reason,
            Self::IdentityMismatch { .. } => "identity_mismatch",
            Self::NoIdentity => "no_identity",
            Self::NoAlpn => "no_alpn",
        }
    }

    fn from_io(source: std::io::Error) -> Self {
        let reason = match source
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::NoCertificatesPresented) => "no_client_cert",
            Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
                "unknown_ca"
            }
            Some(rustls::Error::InvalidCertificate(_)) => "bad_certificate",
            Some(rustls::Error::AlertReceived(_)) => "alert",
            Some(_) => "protocol",
            None => "io",
        };
        Self::Tls { reason, source }
    }
}

/// Why a config could not be built from a leaf and bundle.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{what}: {message}")]
    Pem { what: &'static str, message: String },
    #[error("the trust bundle has no usable root")]
    EmptyBundle,
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("cannot make the key or CSR: {0}")]
    Key(#[from] rcgen::Error),
}

/// The one crypto provider of the mesh: aws-lc-rs, TLS 1.3 suites, post-quantum hybrid key
/// exchange first.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.kx_groups = vec![
        aws_lc_rs::kx_group::X25519MLKEM768,
        aws_lc_rs::kx_group::X25519,
    ];
    p.cipher_suites
        .retain(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_)));
    Arc::new(p)
}

/// A workload's private key; it never leaves the process that made it.
pub struct LeafKey {
    key: KeyPair,
}

impl fmt::Debug for LeafKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeafKey { .. }")
    }
}

impl LeafKey {
    /// A new ECDSA P-256 key.
    pub fn generate() -> Result<Self, ConfigError> {
        Ok(Self {
            key: KeyPair::generate()?,
        })
    }

    /// A PEM CSR asking for `id` as the only (URI) SAN, signed with this key.
    pub fn csr_pem(&self, id: &SpiffeId) -> Result<String, ConfigError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(rcgen::string::Ia5String::try_from(
            id.to_string(),
        )?)];
        Ok(params.serialize_request(&self.key)?.pem()?)
    }

    fn der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::Pem {
            what,
            message: e.to_string(),
        })
}

/// The roots of a bundle as a rustls store.
pub fn root_store(bundle: &TrustBundle) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for pem in &bundle.roots_pem {
        for cert in certs(pem, "trust bundle")? {
            roots.add(cert)?;
        }
    }
    if roots.is_empty() {
        return Err(ConfigError::EmptyBundle);
    }
    Ok(roots)
}

/// The URI SANs that are SPIFFE IDs of the mesh's shape, from a DER certificate.
pub fn spiffe_ids(cert_der: &[u8]) -> Vec<SpiffeId> {
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => uri.parse().ok(),
            _ => None,
        })
        .collect()
}

/// `notAfter` of a DER certificate.
pub fn not_after(cert_der: &[u8]) -> Option<SystemTime> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// Checks the server's chain against the bundle and nothing else: the SPIFFE ID is compared
/// after the handshake ([`MeshTls::connect`]), so one config serves every destination.
#[derive(Debug)]
struct MeshServerVerifier {
    check: ChainCheck,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check.chain(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered; a TLS 1.2 signature means a broken peer.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.check.schemes()
    }
}

/// The client and server configs for one leaf and one bundle.
pub struct MeshTls {
    id: SpiffeId,
    not_after: SystemTime,
    client_h2: Arc<ClientConfig>,
    client_http1: Arc<ClientConfig>,
    client_tcp: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

impl fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshTls")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A finished client or server handshake: the peer's identity and what it speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: SpiffeId,
    pub alpn: MeshAlpn,
}

pub type ClientStream<IO> = tokio_rustls::client::TlsStream<IO>;
pub type ServerStream<IO> = tokio_rustls::server::TlsStream<IO>;

impl MeshTls {
    /// Builds every config for the leaf chain `chain_pem` (leaf first) with `key`, trusting
    /// `bundle`.
    pub fn new(chain_pem: &str, key: &LeafKey, bundle: &TrustBundle) -> Result<Self, ConfigError> {
        let chain = certs(chain_pem, "certificate chain")?;
        let leaf = chain.first().ok_or(ConfigError::Pem {
            what: "certificate chain",
            message: "empty".into(),
        })?;
        let id = spiffe_ids(leaf)
            .into_iter()
            .next()
            .ok_or(ConfigError::Pem {
                what: "certificate chain",
                message: "the leaf has no SPIFFE URI SAN".into(),
            })?;
        let not_after = not_after(leaf).ok_or(ConfigError::Pem {
            what: "certificate chain",
            message: "the leaf has no readable notAfter".into(),
        })?;
        let provider = provider();
        let roots = root_store(bundle)?;

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider.clone())
                .build()?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.der())?;
        // Server preference order: `trellis-mx/1` before `trellis-tcp`.
        server.alpn_protocols = [
            MeshAlpn::H2,
            MeshAlpn::Http1,
            MeshAlpn::TcpMx,
            MeshAlpn::Tcp,
        ]
        .iter()
        .map(|a| a.protocol().to_vec())
        .collect();
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        let verifier = Arc::new(MeshServerVerifier {
            check: ChainCheck::new(roots, provider.signature_verification_algorithms),
        });
        let mut client =
            client_config::verified_by(provider, &[&rustls::version::TLS13], verifier)?
                .with_client_auth_cert(chain, key.der())?;
        client.resumption = Resumption::disabled();
        let offering = |protocols: &[&[u8]]| client_config::offering(&client, protocols);
        Ok(Self {
            id,
            not_after,
            client_h2: offering(&[MeshAlpn::H2.protocol(), MESH_MARKER]),
            client_http1: offering(&[MeshAlpn::Http1.protocol(), MESH_MARKER]),
            // The exchange first: a server that knows it prefers it, one that does not falls
            // back to plain `trellis-tcp`.
            client_tcp: offering(&[
                MeshAlpn::TcpMx.protocol(),
                MeshAlpn::Tcp.protocol(),
                MESH_MARKER,
            ]),
            server: Arc::new(server),
        })
    }

    /// These configs as a proxy from before the TCP metadata exchange has them: the server never
    /// selects `trellis-mx/1` and the client does not offer it. For interoperability tests.
    #[doc(hidden)]
    pub fn without_metadata_exchange(mut self) -> Self {
        let mx = MeshAlpn::TcpMx.protocol();
        let mut server = (*self.server).clone();
        server.alpn_protocols.retain(|p| p != mx);
        self.server = Arc::new(server);
        let mut client = (*self.client_tcp).clone();
        client.alpn_protocols.retain(|p| p != mx);
        self.client_tcp = Arc::new(client);
        self
    }

    /// This workload's own identity, from its leaf.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Client handshake over `io` offering `alpn`; succeeds only when the server's chain
    /// verifies against the bundle and its SPIFFE ID is `expected`.
    pub async fn connect<IO>(
        &self,
        io: IO,
        alpn: MeshAlpn,
        expected: &str,
    ) -> Result<ClientStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.connect_with_sni(io, alpn, expected, None).await
    }

    /// [`MeshTls::connect`], sending `sni` in the ClientHello: an east-west gateway on the way
    /// routes the connection by it without terminating TLS (see docs/multicluster.md). The
    /// server's identity is checked the same way; the name itself is not verified.
    pub async fn connect_with_sni<IO>(
        &self,
        io: IO,
        alpn: MeshAlpn,
        expected: &str,
        sni: Option<&str>,
    ) -> Result<ClientStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = match alpn {
            MeshAlpn::H2 => &self.client_h2,
            MeshAlpn::Http1 => &self.client_http1,
            MeshAlpn::Tcp | MeshAlpn::TcpMx => &self.client_tcp,
        };
        // No SNI is needed between sidecars (the identity is checked from the certificate); an
        // IP address as the name sends none and keeps the config shared.
        let name =
            match sni.and_then(|s| ServerName::try_from(s.to_string()).ok()) {
                Some(name) => name,
                None => ServerName::IpAddress(rustls::pki_types::IpAddr::from(
                    std::net::IpAddr::from([0, 0, 0, 0]),
                )),
            };
        let stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, io)
            .await
            .map_err(HandshakeError::from_io)?;
        let (_, conn) = stream.get_ref();
        let ids = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| spiffe_ids(c))
            .unwrap_or_default();
        if !ids.iter().any(|id| id.to_string() == expected) {
            return Err(HandshakeError::IdentityMismatch {
                expected: expected.to_string(),
                got: ids.first().map(ToString::to_string),
            });
        }
        if !conn.alpn_protocol().is_some_and(|p| alpn.accepts(p)) {
            return Err(HandshakeError::NoAlpn);
        }
        Ok(stream)
    }

    /// Server handshake over `io` (the ClientHello is still in it): requires a client
    /// certificate that verifies against the bundle and returns the client's identity and the
    /// protocol agreed.
    pub async fn accept<IO>(&self, io: IO) -> Result<(ServerStream<IO>, Peer), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = tokio_rustls::TlsAcceptor::from(self.server.clone())
            .accept(io)
            .await
            .map_err(HandshakeError::from_io)?;
        let (_, conn) = stream.get_ref();
        let alpn = conn
            .alpn_protocol()
            .and_then(MeshAlpn::from_protocol)
            .ok_or(HandshakeError::NoAlpn)?;
        let id = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| spiffe_ids(c).into_iter().next())
            .ok_or(HandshakeError::NoIdentity)?;
        Ok((stream, Peer { id, alpn }))
    }
}

/// What the first bytes of a TLS connection say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientHello {
    /// More bytes are needed: at least this many in total.
    NeedBytes(usize),
    /// A ClientHello offering the mesh marker: terminate it.
    Mesh,
    /// Another ClientHello (the application's own TLS): pass it through.
    Other,
    /// Not a parsable ClientHello.
    Invalid,
}

/// The largest first record a ClientHello may take (a TLS record's maximum plus its header).
pub const MAX_HELLO_BYTES: usize = 16 * 1024 + 5;

/// The first TLS record at the start of a connection, read as a ClientHello without consuming
/// it: what [`peek_client_hello`] and [`crate::gateway_tls::peek_sni`] each take their answer
/// from.
pub(crate) enum FirstRecord<T> {
    /// More bytes are needed: at least this many in total.
    NeedBytes(usize),
    /// A ClientHello, as the caller's `read` saw it.
    Hello(T),
    /// Larger than a ClientHello may be, or not a parsable one.
    Invalid,
}

/// Reads the first record of `prefix` (at most [`MAX_HELLO_BYTES`]) as a ClientHello and hands
/// it to `read` (`None`: a ClientHello that spans more than this record).
pub(crate) fn first_record<T>(
    prefix: &[u8],
    read: impl FnOnce(Option<rustls::server::Accepted>) -> T,
) -> FirstRecord<T> {
    let Some(header) = prefix.get(..5) else {
        return FirstRecord::NeedBytes(5);
    };
    let len = 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > MAX_HELLO_BYTES {
        return FirstRecord::Invalid;
    }
    if prefix.len() < len {
        return FirstRecord::NeedBytes(len);
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut record = &prefix[..len];
    if acceptor.read_tls(&mut record).is_err() {
        return FirstRecord::Invalid;
    }
    match acceptor.accept() {
        Ok(accepted) => FirstRecord::Hello(read(accepted)),
        Err(_) => FirstRecord::Invalid,
    }
}

/// Classifies the start of a TLS connection from its first record, without consuming it.
pub fn peek_client_hello(prefix: &[u8]) -> ClientHello {
    let record = first_record(prefix, |accepted| match accepted {
        Some(accepted) => {
            let mesh = accepted
                .client_hello()
                .alpn()
                .is_some_and(|mut protocols| protocols.any(|p| p == MESH_MARKER));
            if mesh {
                ClientHello::Mesh
            } else {
                ClientHello::Other
            }
        }
        // A ClientHello spread over several records: not what a mesh client sends.
        None => ClientHello::Other,
    });
    match record {
        FirstRecord::NeedBytes(n) => ClientHello::NeedBytes(n),
        FirstRecord::Hello(hello) => hello,
        FirstRecord::Invalid => ClientHello::Invalid,
    }
}

#[cfg(test)]
mod tests;
