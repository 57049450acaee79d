//! Kubernetes `v1 Secret`s that hold a certificate: what an Istio Gateway's `credentialName`
//! and a Gateway API listener's `certificateRefs` name. In local mode they are read from the
//! config directory like every other kind. Keys: `tls.crt`/`tls.key` (type
//! `kubernetes.io/tls`), or Istio's generic `cert`/`key`; `ca.crt` or `cacert` for client roots.
//! Other Secrets are Ignored (the mesh has nothing to do with them).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::document::{Resource, Translated};
use crate::gateways::{GatewayResource, TlsSecret};
use crate::kube::FieldError;
use crate::traffic::{Meta, from_value};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Secret {
    metadata: Meta,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    string_data: BTreeMap<String, String>,
}

pub(crate) fn translate(value: serde_yaml::Value) -> Result<Translated, FieldError> {
    let secret: Secret = from_value(value)?;
    let source = secret.metadata.reference("Secret")?;
    // `stringData` wins over `data` for the same key, as the API server merges them.
    let get = |key: &str| -> Result<Option<String>, FieldError> {
        if let Some(v) = secret.string_data.get(key) {
            return Ok(Some(v.clone()));
        }
        match secret.data.get(key) {
            None => Ok(None),
            Some(b64) => {
                let bytes = decode_base64(b64)
                    .ok_or_else(|| FieldError::new(format!("data.{key}"), "is not valid base64"))?;
                String::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| FieldError::new(format!("data.{key}"), "is not UTF-8 PEM text"))
            }
        }
    };
    let pair = match (get("tls.crt")?, get("tls.key")?) {
        (Some(c), Some(k)) => Some((c, k)),
        _ => match (get("cert")?, get("key")?) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        },
    };
    let Some((cert_chain, private_key)) = pair else {
        if secret.kind.as_deref() == Some("kubernetes.io/tls") {
            return Err(FieldError::new(
                "data",
                "a kubernetes.io/tls Secret needs tls.crt and tls.key",
            ));
        }
        return Ok(Translated::Ignored(
            "not a certificate Secret (no tls.crt/tls.key or cert/key): the mesh does not read it"
                .into(),
        ));
    };
    for (key, pem, marker) in [
        ("tls.crt", &cert_chain, "-----BEGIN CERTIFICATE-----"),
        ("tls.key", &private_key, "PRIVATE KEY-----"),
    ] {
        if !pem.contains(marker) {
            return Err(FieldError::new(
                format!("data.{key}"),
                "is not PEM (no BEGIN line)",
            ));
        }
    }
    let ca = match get("ca.crt")? {
        Some(ca) => Some(ca),
        None => get("cacert")?,
    };
    Ok(Translated::Resource(Resource::Gateway(Box::new(
        GatewayResource::Secret(TlsSecret {
            source,
            cert_chain,
            private_key,
            ca,
        }),
    ))))
}

/// Standard base64 with padding (what Kubernetes writes); whitespace is skipped, as a
/// hand-written manifest may wrap a long value over lines.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let compact: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    STANDARD.decode(compact).ok()
}

#[cfg(test)]
mod tests {
    use super::decode_base64;

    #[test]
    fn decodes_padded_base64() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs\nbG8h").unwrap(), b"hello!");
        assert!(decode_base64("a$b").is_none());
        assert!(
            decode_base64("aGVsbG8=xyz").is_none(),
            "data after the padding"
        );
    }
}
