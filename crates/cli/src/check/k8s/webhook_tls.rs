//! The webhooks' certificates: the caBundle holds a CA, the serving certificate of a webhook
//! with a URL chains to it (a TLS handshake trusting only the caBundle), neither near expiry.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use super::{bad, ok};
use crate::check::report::{Check, CheckResult};

/// A webhook's serving certificate closer than this to expiry is a warning (it is renewed by
/// the control plane; one this close means renewal stopped).
const LEAF_WARN: Duration = Duration::from_secs(3600);
/// A caBundle CA closer than this to expiry is a warning: replacing an anchor takes planning.
const CA_WARN: Duration = Duration::from_secs(30 * 24 * 3600);
/// The TLS handshake's deadline.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
    {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Expired: error; within `warn`: warning.
fn expiry(description: &str, not_after: SystemTime, warn: Duration, now: SystemTime) -> Check {
    let left = not_after.duration_since(now);
    match left {
        Err(_) => bad(
            description,
            CheckResult::Error,
            format!("expired at unix time {}", unix(not_after)),
            "restart the control plane (it makes a new serving certificate and patches the caBundle)",
        ),
        Ok(left) if left < warn => bad(
            description,
            CheckResult::Warning,
            format!("expires in {}s", left.as_secs()),
            "renew it before it expires",
        ),
        Ok(_) => ok(description),
    }
}

/// caBundle set and valid; the serving certificate (when the webhook has a URL) chains to it;
/// neither near expiry.
pub(super) async fn webhook_certs(conf: &Value, conf_name: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let now = SystemTime::now();
    for hook in conf["webhooks"].as_array().into_iter().flatten() {
        let hook_name = hook["name"].as_str().unwrap_or("?");
        let d_bundle = format!("{hook_name}: caBundle holds a CA certificate");
        let bundle = hook["clientConfig"]["caBundle"].as_str().unwrap_or("");
        let certs: Vec<CertificateDer<'static>> = base64_decode(bundle)
            .map(|pem| {
                CertificateDer::pem_slice_iter(&pem)
                    .filter_map(Result::ok)
                    .collect()
            })
            .unwrap_or_default();
        if certs.is_empty() {
            out.push(bad(
                &d_bundle,
                CheckResult::Error,
                format!("{conf_name}: caBundle is {}", if bundle.is_empty() { "empty" } else { "not a PEM certificate" }),
                "the control plane writes it when it starts: is it running? (`trellis check` above)",
            ));
            continue;
        }
        out.push(ok(&d_bundle));
        for c in &certs {
            if let Some(t) = trellis_identity::tls::not_after(c) {
                out.push(expiry(
                    &format!("{hook_name}: caBundle CA is not near expiry"),
                    t,
                    CA_WARN,
                    now,
                ));
                break;
            }
        }
        let d_match = format!("{hook_name}: serving certificate is signed by the caBundle");
        match hook["clientConfig"]["url"].as_str() {
            Some(url) => match handshake(url, &certs).await {
                Ok(leaf) => {
                    out.push(ok(&d_match));
                    if let Some(t) = leaf.as_deref().and_then(trellis_identity::tls::not_after) {
                        out.push(expiry(&format!("{hook_name}: serving certificate is not near expiry"), t, LEAF_WARN, now));
                    }
                }
                Err(e) => out.push(bad(
                    &d_match,
                    CheckResult::Error,
                    format!("{url}: {e}"),
                    "the API server will refuse this webhook: restart the control plane so it patches the caBundle with its CA",
                )),
            },
            None => out.push(bad(
                &d_match,
                CheckResult::Warning,
                "the webhook calls an in-cluster Service, which is not reachable from here: not checked".into(),
                "the API server's audit log or `kubectl get events` show webhook TLS failures",
            )),
        }
    }
    out
}

/// A TLS handshake with the webhook at `url` trusting only `roots`; the leaf it presented.
async fn handshake(
    url: &str,
    roots: &[CertificateDer<'static>],
) -> Result<Option<Vec<u8>>, String> {
    let rest = url.strip_prefix("https://").ok_or("not an https:// URL")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>().map_err(|e| format!("port: {e}"))?,
        ),
        _ => (authority, 443),
    };
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).map_err(|e| format!("caBundle: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(store)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let run = async {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        Ok::<_, String>(leaf)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, run)
        .await
        .map_err(|_| format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert!(base64_decode("*").is_none());
    }
}
