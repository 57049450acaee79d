//! JSON Web Key Sets (RFC 7517) parsed into keys aws-lc-rs can verify with. Keys of a type or
//! curve the proxy cannot use are skipped, not fatal: a JWKS often holds keys for other
//! consumers (encryption keys, newer algorithms), and one unusable key must not take the
//! others down.

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// The JWS algorithms the proxy verifies (RFC 7518 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::EdDsa,
            _ => return None,
        })
    }

    fn rsa_params(self) -> Option<&'static signature::RsaParameters> {
        Some(match self {
            Self::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Self::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Self::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Self::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Self::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Self::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed SEC1 point (0x04 || x || y) on P-256.
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// One usable public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub kid: Option<String>,
    /// The key's `alg`, when the JWKS pins one.
    alg: Option<String>,
    material: Material,
}

impl Key {
    /// Whether this key can check a signature made with `alg` (`alg_name` as in the token).
    pub fn fits(&self, alg: Alg, alg_name: &str) -> bool {
        if self.alg.as_deref().is_some_and(|a| a != alg_name) {
            return false;
        }
        matches!(
            (&self.material, alg),
            (
                Material::Rsa { .. },
                Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
            ) | (Material::P256(_), Alg::Es256)
                | (Material::P384(_), Alg::Es384)
                | (Material::Ed25519(_), Alg::EdDsa)
        )
    }

    /// Whether `sig` is a valid signature of `message` by this key with `alg`.
    pub fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        match (&self.material, alg) {
            (Material::Rsa { n, e }, _) => alg.rsa_params().is_some_and(|params| {
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }),
            (Material::P256(point), Alg::Es256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (Material::P384(point), Alg::Es384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (Material::Ed25519(x), Alg::EdDsa) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
            _ => false,
        }
    }
}

/// The usable keys of one JWKS document.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWKS document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no usable key (RSA, EC P-256/P-384 or Ed25519 signing keys) in the JWKS")]
    NoUsableKey,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<RawKey>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn b64(v: Option<&String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(v?.trim_end_matches('=').as_bytes())
        .ok()
}

fn material(k: &RawKey) -> Option<Material> {
    match (k.kty.as_str(), k.crv.as_deref()) {
        ("RSA", _) => {
            let strip = |v: Vec<u8>| {
                let start = v.iter().position(|b| *b != 0).unwrap_or(v.len());
                v[start..].to_vec()
            };
            Some(Material::Rsa {
                n: strip(b64(k.n.as_ref())?),
                e: strip(b64(k.e.as_ref())?),
            })
        }
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let (x, y) = (b64(k.x.as_ref())?, b64(k.y.as_ref())?);
            let len = if crv == "P-256" { 32 } else { 48 };
            if x.len() != len || y.len() != len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Some(if crv == "P-256" {
                Material::P256(point)
            } else {
                Material::P384(point)
            })
        }
        ("OKP", Some("Ed25519")) => Some(Material::Ed25519(b64(k.x.as_ref())?)),
        _ => None,
    }
}

impl KeySet {
    /// Parses a JWKS document; keys the proxy cannot use are skipped (see the module docs).
    pub fn parse(doc: &[u8]) -> Result<Self, JwksError> {
        let raw: RawSet = serde_json::from_slice(doc)?;
        let keys: Vec<Key> = raw
            .keys
            .iter()
            .filter(|k| k.use_.as_deref().is_none_or(|u| u == "sig"))
            .filter_map(|k| {
                Some(Key {
                    kid: k.kid.clone(),
                    alg: k.alg.clone(),
                    material: material(k)?,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(Self { keys })
    }

    /// Keys that may have signed a token with this `kid` and `alg`. A token without a `kid`
    /// may have been signed by any key of the right type.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Alg,
        alg_name: &'a str,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.fits(alg, alg_name) && (kid.is_none() || k.kid.as_deref() == kid))
    }
}
