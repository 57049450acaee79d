//! JWT and JWKS parsing in the authn path (`trellis_proxy::authn`): a token from any bytes, in
//! the `Authorization` header or the `access_token` query parameter, through the whole
//! `Authenticator` with an inline Ed25519 JWKS; and any bytes as a JWKS document (what a
//! `jwksUri` fetch returns).
//!
//! Checked: nothing panics; a token is only ever accepted with a genuine signature from the
//! configured key and the configured issuer; and for tokens built from the input's choices
//! (algorithm, `kid`, `iss`, `aud`, `exp`, `nbf`, signed or not), acceptance is exactly what an
//! independent reading of the rules (Istio/Envoy `jwt_authn`, 60 s clock skew) says.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, Request};
use serde_json::{Value, json};
use trellis_model::authn::{
    ClaimToHeader, DryRunAuthentication, JwksSource, JwtRule, RequestAuthentication,
};
use trellis_proxy::authn::{Authenticator, KeySet};

use crate::input::Input;

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "web";

struct Fixture {
    key: Ed25519KeyPair,
    authn: Authenticator,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .ok()
            .and_then(|doc| Ed25519KeyPair::from_pkcs8(doc.as_ref()).ok());
        let Some(key) = key else {
            panic!("cannot make an Ed25519 key");
        };
        let x = URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
        let jwks = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "use": "sig"},
            // A key the proxy cannot use: skipped, never fatal.
            {"kty": "oct", "k": "c2VjcmV0", "kid": "k2"},
        ]})
        .to_string();
        let rule = JwtRule {
            issuer: ISSUER.into(),
            audiences: vec![AUDIENCE.into()],
            jwks: JwksSource::Inline(jwks),
            from_headers: Vec::new(),
            from_params: Vec::new(),
            output_payload_to_header: Some("x-jwt-payload".into()),
            forward_original_token: false,
            output_claim_to_headers: vec![ClaimToHeader {
                header: "x-sub".into(),
                claim: "sub".into(),
            }],
        };
        let mut by_param = rule.clone();
        by_param.from_params = vec!["access_token".into()];
        let authn = Authenticator::default();
        authn.apply(RequestAuthentication {
            policies: vec!["shop/jwt".into()],
            rules: vec![rule.clone(), by_param],
            dry_run: vec![DryRunAuthentication {
                policy: "shop/dry".into(),
                rules: vec![rule],
            }],
        });
        Fixture { key, authn }
    })
}

pub fn check_jwt(data: &[u8]) {
    let f = fixture();
    let _ = KeySet::parse(data);
    let raw = String::from_utf8_lossy(data);
    check_token(f, raw.trim(), None);
    let (token, expected) = built_token(f, data);
    check_token(f, &token, Some(expected));
}

/// Authenticates `token` from the header and from the query; an accepted one must carry a
/// genuine signature, and when `expected` is known, acceptance must equal it.
fn check_token(f: &Fixture, token: &str, expected: Option<bool>) {
    let mut requests = Vec::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        let mut req = Request::new(());
        req.headers_mut().insert(http::header::AUTHORIZATION, v);
        requests.push(req);
    }
    if let Ok(req) = Request::get(format!("/x?access_token={token}")).body(()) {
        requests.push(req);
    }
    for mut req in requests {
        let result = crate::runtime().block_on(f.authn.authenticate(&mut req));
        let accepted = match &result {
            Ok(Some(auth)) => {
                assert!(
                    genuine(f, token),
                    "accepted a token without our signature: {token}"
                );
                assert!(
                    auth.principal.starts_with(ISSUER),
                    "principal {}",
                    auth.principal
                );
                true
            }
            // Tokens the rules cannot find (an empty one) pass unauthenticated.
            Ok(None) => false,
            Err(rejection) => {
                assert_eq!(
                    rejection.response().status(),
                    http::StatusCode::UNAUTHORIZED
                );
                false
            }
        };
        if let Some(expected) = expected {
            assert_eq!(accepted, expected, "token {token}");
        }
    }
}

/// Whether `token`'s third part is our key's signature over the first two, as sent.
fn genuine(f: &Fixture, token: &str) -> bool {
    let Some((input, sig)) = token.rsplit_once('.') else {
        return false;
    };
    URL_SAFE_NO_PAD
        .decode(sig)
        .is_ok_and(|sig| sig == f.key.sign(input.as_bytes()).as_ref())
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A token from the input's choices, and whether the rules must accept it.
fn built_token(f: &Fixture, data: &[u8]) -> (String, bool) {
    let mut input = Input::new(data);
    let mut ok = true;
    let mut header = serde_json::Map::new();
    let alg = input.pick(&["EdDSA", "EdDSA", "ES256", "RS256", "none", "eddsa", "HS256"]);
    ok &= alg == "EdDSA";
    header.insert("alg".into(), json!(alg));
    match input.below(4) {
        0 => {
            header.insert("kid".into(), json!("k2"));
            ok = false;
        }
        1 => {
            header.insert("kid".into(), json!("k1"));
        }
        2 => {
            header.insert("kid".into(), json!(7));
            ok = false;
        }
        _ => {}
    }
    let mut claims = serde_json::Map::new();
    match input.below(5) {
        0 => ok = false,
        1 => {
            claims.insert("iss".into(), json!("https://other.example"));
            ok = false;
        }
        2 => {
            claims.insert("iss".into(), json!(1));
            ok = false;
        }
        _ => {
            claims.insert("iss".into(), json!(ISSUER));
        }
    }
    let aud: Option<Value> = match input.below(6) {
        0 => None,
        1 => Some(json!("https://web/")),
        2 => Some(json!(["x", AUDIENCE])),
        3 => Some(json!(AUDIENCE)),
        4 => Some(json!([1, "x"])),
        _ => Some(json!("webs")),
    };
    ok &= input_audience_ok(aud.as_ref());
    if let Some(aud) = aud {
        claims.insert("aud".into(), aud);
    }
    // Times well away from the skew's edge, so that the run's own clock cannot flip a case.
    let t = now();
    match input.below(6) {
        0 => {
            claims.insert("exp".into(), json!(t - 3600.0));
            ok = false;
        }
        1 => {
            claims.insert("exp".into(), json!(t + 3600.0));
        }
        2 => {
            claims.insert("exp".into(), json!("tomorrow"));
        }
        3 => {
            claims.insert("nbf".into(), json!(t + 3600.0));
            ok = false;
        }
        4 => {
            claims.insert("exp".into(), json!(1e308));
        }
        _ => {}
    }
    let sub = String::from_utf8_lossy(input.bytes(8)).into_owned();
    claims.insert("sub".into(), json!(sub));
    let h = URL_SAFE_NO_PAD.encode(Value::Object(header).to_string());
    let p = URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string());
    let signing_input = format!("{h}.{p}");
    let sig = match input.below(4) {
        0 => {
            ok = false;
            URL_SAFE_NO_PAD.encode(input.bytes(64))
        }
        1 => {
            ok = false;
            "!!".to_string()
        }
        _ => URL_SAFE_NO_PAD.encode(f.key.sign(signing_input.as_bytes())),
    };
    (format!("{signing_input}.{sig}"), ok)
}

/// Envoy compares audiences without the scheme and a trailing slash; any one listed will do.
fn input_audience_ok(aud: Option<&Value>) -> bool {
    let norm = |a: &str| {
        let a = a
            .strip_prefix("https://")
            .or_else(|| a.strip_prefix("http://"))
            .unwrap_or(a);
        a.strip_suffix('/').unwrap_or(a).to_string()
    };
    let listed: Vec<String> = match aud {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    listed.iter().any(|a| norm(a) == AUDIENCE)
}

#[cfg(test)]
mod tests {
    use super::check_jwt;
    use crate::input::Rng;

    #[test]
    fn seeded_random_inputs() {
        let mut rng = Rng(0x0a77_4e77_2026_0012);
        // Bounded: 3,000 inputs, each two requests per token and one Ed25519 signature.
        for _ in 0..3_000 {
            let len = rng.below(48);
            check_jwt(&rng.bytes(len));
        }
    }

    #[test]
    fn hostile_tokens_and_key_sets() {
        for case in [
            "a.b.c",
            "..",
            "e30.e30.",
            "eyJhbGciOiJFZERTQSJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIn0.",
            "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"\",\"e\":\"\"}]}",
            "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AA\",\"y\":\"\"}]}",
            "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\"}]}",
            "{\"keys\":{}}",
        ] {
            check_jwt(case.as_bytes());
        }
    }
}
