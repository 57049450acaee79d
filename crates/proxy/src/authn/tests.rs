#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
    RSA_PSS_SHA256, RsaKeyPair, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Request;
use serde_json::{Value, json};
use trellis_model::authn::{ClaimToHeader, JwtHeader};

use super::*;

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Pss(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct TestKey {
    kid: String,
    signer: Signer,
}

impl TestKey {
    fn ec(kid: &str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let kp =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        Self {
            kid: kid.into(),
            signer: Signer::Ec(kp),
        }
    }
    fn rsa(kid: &str, pss: bool) -> Self {
        let kp = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        Self {
            kid: kid.into(),
            signer: if pss {
                Signer::Pss(kp)
            } else {
                Signer::Rsa(kp)
            },
        }
    }
    fn ed(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Self {
            kid: kid.into(),
            signer: Signer::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()),
        }
    }
    fn alg(&self) -> &'static str {
        match self.signer {
            Signer::Ec(_) => "ES256",
            Signer::Rsa(_) => "RS256",
            Signer::Pss(_) => "PS256",
            Signer::Ed(_) => "EdDSA",
        }
    }
    fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Ec(kp) => {
                let p = kp.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "x": b64(&p[1..33]), "y": b64(&p[33..65])})
            }
            Signer::Rsa(kp) | Signer::Pss(kp) => {
                let c = RsaPublicKeyComponents::<Vec<u8>>::from(kp.public_key());
                json!({"kty": "RSA", "kid": self.kid, "n": b64(&c.n), "e": b64(&c.e)})
            }
            Signer::Ed(kp) => {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "x": b64(kp.public_key().as_ref())})
            }
        }
    }
    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Ec(kp) => kp.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Rsa(kp) | Signer::Pss(kp) => {
                let enc = if matches!(self.signer, Signer::Pss(_)) {
                    &RSA_PSS_SHA256
                } else {
                    &RSA_PKCS1_SHA256
                };
                let mut sig = vec![0; kp.public_modulus_len()];
                kp.sign(enc, &rng, input.as_bytes(), &mut sig).unwrap();
                sig
            }
            Signer::Ed(kp) => kp.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&sig))
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(iss: &str, aud: &str, exp_in: i64) -> Value {
    json!({"iss": iss, "sub": "alice", "aud": aud, "exp": now() as i64 + exp_in, "iat": now(), "group": "admins", "n": 7, "nested": {"k": "v"}})
}

fn rule(issuer: &str, jwks: JwksSource) -> JwtRule {
    JwtRule {
        issuer: issuer.into(),
        audiences: vec!["web".into()],
        jwks,
        from_headers: vec![],
        from_params: vec![],
        output_payload_to_header: None,
        forward_original_token: false,
        output_claim_to_headers: vec![],
    }
}

fn authenticator(rules: Vec<JwtRule>) -> Authenticator {
    let a = Authenticator::default();
    a.apply(RequestAuthentication {
        policies: vec!["shop/jwt".into()],
        rules,
        dry_run: vec![],
    });
    a
}

fn bearer(token: &str) -> Request<()> {
    Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
}

async fn check(a: &Authenticator, token: &str) -> Result<Option<RequestAuth>, JwtError> {
    a.authenticate(&mut bearer(token))
        .await
        .map_err(|r| r.error)
}

#[tokio::test]
async fn validator_outcomes_for_each_algorithm() {
    for key in [
        TestKey::ec("ec"),
        TestKey::rsa("rsa", false),
        TestKey::rsa("pss", true),
        TestKey::ed("ed"),
    ] {
        let other = TestKey::ec("ec");
        let a = authenticator(vec![rule("iss", JwksSource::Inline(jwks(&[&key])))]);
        let alg = key.alg();
        let ok = check(&a, &key.sign(&claims("iss", "web", 600))).await;
        let auth = ok.unwrap_or_else(|e| panic!("{alg}: {e}")).unwrap();
        assert_eq!(auth.principal, "iss/alice", "{alg}");
        assert_eq!(auth.audiences, ["web"]);
        assert_eq!(auth.claims["group"], "admins");
        let cases = [
            (claims("iss", "web", -3600), JwtError::Expired),
            (claims("evil", "web", 600), JwtError::UnknownIssuer),
            (claims("iss", "api", 600), JwtError::AudienceNotAllowed),
        ];
        for (c, want) in cases {
            assert_eq!(check(&a, &key.sign(&c)).await.unwrap_err(), want, "{alg}");
        }
        // Same kid, another key: the signature does not verify.
        let forged = TestKey {
            kid: key.kid.clone(),
            signer: other.signer,
        };
        let err = check(&a, &forged.sign(&claims("iss", "web", 600))).await;
        let want = if alg == "ES256" {
            JwtError::VerificationFails
        } else {
            // An ES256 token against a non-EC key set has no key to try.
            JwtError::NoMatchingKey
        };
        assert_eq!(err.unwrap_err(), want, "{alg}");
    }
}

#[tokio::test]
async fn time_checks_allow_the_clock_skew() {
    let key = TestKey::ec("k");
    let a = authenticator(vec![rule("iss", JwksSource::Inline(jwks(&[&key])))]);
    let skew = CLOCK_SKEW.as_secs() as i64;
    let mut c = claims("iss", "web", -(skew / 2));
    assert!(
        check(&a, &key.sign(&c)).await.is_ok(),
        "expired within skew"
    );
    c["exp"] = json!(now() as i64 - 2 * skew);
    assert_eq!(
        check(&a, &key.sign(&c)).await.unwrap_err(),
        JwtError::Expired
    );
    let mut c = claims("iss", "web", 600);
    c["nbf"] = json!(now() + 10 * skew as u64);
    assert_eq!(
        check(&a, &key.sign(&c)).await.unwrap_err(),
        JwtError::NotYetValid
    );
    c["nbf"] = json!(now() + (skew / 2) as u64);
    assert!(check(&a, &key.sign(&c)).await.is_ok(), "nbf within skew");
}

#[tokio::test]
async fn malformed_tokens_and_audience_rules() {
    let key = TestKey::ec("k");
    let mut r = rule("iss", JwksSource::Inline(jwks(&[&key])));
    let a = authenticator(vec![r.clone()]);
    for (token, want) in [
        ("abc", JwtError::BadFormat),
        ("a.b.c.d", JwtError::BadFormat),
        ("e30.e30.!!", JwtError::BadHeader),
        (
            &format!("{}.e30.AA", b64(br#"{"alg":"HS256"}"#)),
            JwtError::UnsupportedAlg,
        ),
        (
            &format!("{}.bm90IGpzb24.AA", b64(br#"{"alg":"ES256"}"#)),
            JwtError::BadPayload,
        ),
    ] {
        assert_eq!(check(&a, token).await.unwrap_err(), want, "{token}");
    }
    // Any of several audiences matches; scheme and trailing slash do not matter (Envoy).
    let mut c = claims("iss", "x", 600);
    c["aud"] = json!(["other", "https://web/"]);
    assert!(check(&a, &key.sign(&c)).await.is_ok());
    // No audiences configured: any audience.
    r.audiences.clear();
    let a = authenticator(vec![r]);
    assert!(
        check(&a, &key.sign(&claims("iss", "anything", 600)))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn no_token_passes_and_no_rules_pass() {
    let key = TestKey::ec("k");
    let a = authenticator(vec![rule("iss", JwksSource::Inline(jwks(&[&key])))]);
    let mut req = Request::get("/").body(()).unwrap();
    assert_eq!(a.authenticate(&mut req).await.unwrap(), None);
    // A non-Bearer Authorization header is no JWT.
    let mut req = Request::get("/")
        .header("authorization", "Basic dTpw")
        .body(())
        .unwrap();
    assert_eq!(a.authenticate(&mut req).await.unwrap(), None);
    let none = Authenticator::default();
    assert_eq!(check(&none, "garbage").await.unwrap(), None);
}

#[tokio::test]
async fn locations_outputs_and_token_removal() {
    let key = TestKey::ec("k");
    let mut r = rule("iss", JwksSource::Inline(jwks(&[&key])));
    r.from_headers = vec![JwtHeader {
        name: "x-jwt".into(),
        prefix: "Token ".into(),
    }];
    r.from_params = vec!["access_token".into()];
    r.output_claim_to_headers = vec![
        ClaimToHeader {
            header: "x-group".into(),
            claim: "group".into(),
        },
        ClaimToHeader {
            header: "x-n".into(),
            claim: "n".into(),
        },
        ClaimToHeader {
            header: "x-nested".into(),
            claim: "nested.k".into(),
        },
    ];
    r.output_payload_to_header = Some("x-payload".into());
    let a = authenticator(vec![r.clone()]);
    let token = key.sign(&claims("iss", "web", 600));

    // From the header: claims copied, token removed, spoofed output header replaced.
    let mut req = Request::get("/p")
        .header("x-jwt", format!("Token {token}"))
        .header("x-group", "spoofed")
        .body(())
        .unwrap();
    let auth = a.authenticate(&mut req).await.unwrap().unwrap();
    let h = req.headers();
    assert_eq!(h["x-group"], "admins");
    assert_eq!(h["x-n"], "7");
    assert_eq!(h["x-nested"], "v");
    assert!(h.get("x-jwt").is_none(), "token removed");
    let payload = URL_SAFE_NO_PAD.decode(h["x-payload"].as_bytes()).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap()["sub"],
        "alice"
    );
    assert_eq!(req.extensions().get::<RequestAuth>(), Some(&auth));

    // The default location is not used once fromHeaders/fromParams are set.
    let mut req = bearer(&token);
    assert_eq!(a.authenticate(&mut req).await.unwrap(), None);

    // From a query parameter; the parameter is removed, others kept.
    let mut req = Request::get(format!("/p?a=1&access_token={token}&b=2"))
        .header("x-group", "spoofed")
        .body(())
        .unwrap();
    assert!(a.authenticate(&mut req).await.unwrap().is_some());
    assert_eq!(req.uri().to_string(), "/p?a=1&b=2");

    // Without a token, output headers a client sent are still removed.
    let mut req = Request::get("/p")
        .header("x-group", "spoofed")
        .body(())
        .unwrap();
    assert_eq!(a.authenticate(&mut req).await.unwrap(), None);
    assert!(req.headers().get("x-group").is_none());

    // forwardOriginalToken keeps it.
    r.forward_original_token = true;
    let a = authenticator(vec![r]);
    let mut req = Request::get("/p")
        .header("x-jwt", format!("Token {token}"))
        .body(())
        .unwrap();
    assert!(a.authenticate(&mut req).await.unwrap().is_some());
    assert!(req.headers().get("x-jwt").is_some());
}

#[tokio::test]
async fn several_issuers_each_with_its_keys() {
    let k1 = TestKey::ec("one");
    let k2 = TestKey::ec("two");
    let a = authenticator(vec![
        rule("iss-1", JwksSource::Inline(jwks(&[&k1]))),
        rule("iss-2", JwksSource::Inline(jwks(&[&k2]))),
    ]);
    assert!(
        check(&a, &k1.sign(&claims("iss-1", "web", 600)))
            .await
            .is_ok()
    );
    assert!(
        check(&a, &k2.sign(&claims("iss-2", "web", 600)))
            .await
            .is_ok()
    );
    // iss-2's token signed by iss-1's key: no key with kid "one" in iss-2's set.
    assert_eq!(
        check(&a, &k1.sign(&claims("iss-2", "web", 600)))
            .await
            .unwrap_err(),
        JwtError::NoMatchingKey
    );
}

#[test]
fn jwks_parsing_skips_unusable_keys() {
    let k = TestKey::ec("k");
    let doc = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0"},
        {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
        {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
        k.jwk(),
    ]});
    let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
    assert_eq!(set.keys.len(), 1);
    assert!(KeySet::parse(br#"{"keys": [{"kty": "oct"}]}"#).is_err());
    assert!(KeySet::parse(b"[]").is_err());
}

/// A one-route HTTP server on 127.0.0.1 serving whatever `body` holds, counting requests.
async fn jwks_server(
    body: Arc<Mutex<String>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (body, hits) = (body.clone(), hits.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let b = body.lock().unwrap().clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(b))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}/jwks.json")
}

#[tokio::test]
async fn remote_jwks_fetched_cached_and_rotated_on_unknown_kid() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let k1 = TestKey::ec("k1");
    let k2 = TestKey::ec("k2");
    let body = Arc::new(Mutex::new(jwks(&[&k1])));
    let hits = Arc::new(AtomicUsize::new(0));
    let uri = jwks_server(body.clone(), hits.clone()).await;
    let a = authenticator(vec![rule("iss", JwksSource::Uri(uri.clone()))]);
    assert!(
        check(&a, &k1.sign(&claims("iss", "web", 600)))
            .await
            .is_ok()
    );
    assert!(
        check(&a, &k1.sign(&claims("iss", "web", 600)))
            .await
            .is_ok()
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "cached");

    // The issuer rotates to k2. A k2 token right away is inside the refetch rate limit.
    *body.lock().unwrap() = jwks(&[&k2]);
    let t2 = k2.sign(&claims("iss", "web", 600));
    assert_eq!(check(&a, &t2).await.unwrap_err(), JwtError::NoMatchingKey);
    tokio::time::sleep(MIN_REFETCH_INTERVAL + Duration::from_millis(200)).await;
    assert!(check(&a, &t2).await.is_ok(), "unknown kid refetched");
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // A rules update with the same URI keeps the cache (no refetch).
    a.apply(RequestAuthentication {
        policies: vec![],
        rules: vec![rule("iss", JwksSource::Uri(uri))],
        dry_run: vec![],
    });
    assert!(check(&a, &t2).await.is_ok());
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unreachable_jwks_uri_is_a_fetch_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}/jwks", listener.local_addr().unwrap());
    drop(listener);
    let key = TestKey::ec("k");
    let a = authenticator(vec![rule("iss", JwksSource::Uri(uri))]);
    assert_eq!(
        check(&a, &key.sign(&claims("iss", "web", 600)))
            .await
            .unwrap_err(),
        JwtError::JwksFetchFailed
    );
}

#[tokio::test]
async fn a_failed_fetch_keeps_the_last_good_keys() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let k1 = TestKey::ec("k1");
    let body = Arc::new(Mutex::new(jwks(&[&k1])));
    let hits = Arc::new(AtomicUsize::new(0));
    let uri = jwks_server(body.clone(), hits.clone()).await;
    let a = authenticator(vec![rule("iss", JwksSource::Uri(uri))]);
    let t1 = k1.sign(&claims("iss", "web", 600));
    assert!(check(&a, &t1).await.is_ok());
    // The issuer now serves garbage; a token with an unknown kid makes the proxy refetch.
    *body.lock().unwrap() = "<html>maintenance</html>".into();
    tokio::time::sleep(MIN_REFETCH_INTERVAL + Duration::from_millis(200)).await;
    let unknown = TestKey::ec("k9").sign(&claims("iss", "web", 600));
    assert_eq!(
        check(&a, &unknown).await.unwrap_err(),
        JwtError::NoMatchingKey
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2, "refetched");
    assert!(
        check(&a, &t1).await.is_ok(),
        "last good keys still in force"
    );
    let dump = a.dump();
    let jwks = &dump["rules"][0]["jwks"];
    assert_eq!(jwks["keys"], 1, "{jwks}");
    assert!(
        jwks["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("JWKS")),
        "{jwks}"
    );
}

/// Seeded random mutations of a valid token (the bytes a client controls): the validator never
/// panics, and no token that differs from the signed one is accepted.
#[tokio::test]
async fn mutated_tokens_are_never_accepted() {
    use rand::{Rng, SeedableRng};
    let key = TestKey::ec("k");
    let a = authenticator(vec![rule("iss", JwksSource::Inline(jwks(&[&key])))]);
    let token = key.sign(&claims("iss", "web", 600));
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x007e_1115);
    for i in 0..3000 {
        let mut bytes = token.clone().into_bytes();
        for _ in 0..rng.random_range(1..4) {
            match rng.random_range(0..3) {
                0 if !bytes.is_empty() => {
                    let at = rng.random_range(0..bytes.len());
                    bytes[at] = alphabet[rng.random_range(0..alphabet.len())];
                }
                1 if !bytes.is_empty() => {
                    bytes.remove(rng.random_range(0..bytes.len()));
                }
                _ => {
                    let at = rng.random_range(0..=bytes.len());
                    bytes.insert(at, alphabet[rng.random_range(0..alphabet.len())]);
                }
            }
        }
        let Ok(mutated) = String::from_utf8(bytes) else {
            continue;
        };
        let result = check(&a, &mutated).await;
        if mutated.trim() != token {
            assert!(
                !matches!(result, Ok(Some(_))),
                "case {i}: mutated token accepted: {mutated}"
            );
        }
    }
}

/// A dry-run policy never rejects, never removes the token, gives no principal; its failures
/// are counted by policy and reason. Enforced rules beside it keep working.
#[tokio::test]
async fn dry_run_policy_counts_and_passes() {
    let key = TestKey::ec("k");
    let other = TestKey::ec("k");
    let a = Authenticator::default();
    a.apply(RequestAuthentication {
        policies: vec![],
        rules: vec![],
        dry_run: vec![trellis_model::authn::DryRunAuthentication {
            policy: "shop/trial".into(),
            rules: vec![rule("iss", JwksSource::Inline(jwks(&[&key])))],
        }],
    });
    let good = key.sign(&claims("iss", "web", 600));
    let forged = other.sign(&claims("iss", "web", 600));
    let expired = key.sign(&claims("iss", "web", -3600));
    let mut req = bearer(&good);
    assert_eq!(a.authenticate(&mut req).await.unwrap(), None);
    assert!(req.extensions().get::<RequestAuth>().is_none());
    for t in [&forged, &expired, &forged] {
        let mut req = bearer(t);
        assert_eq!(a.authenticate(&mut req).await.unwrap(), None);
        assert!(req.headers().contains_key("authorization"), "token kept");
    }
    let mut out = String::new();
    a.render(&mut out);
    assert!(
        out.contains("trellis_authn_dry_run_rejected_total{policy=\"shop/trial\",reason=\"")
            && out
                .lines()
                .filter(|l| l.starts_with("trellis_authn_dry_run_rejected_total{"))
                .count()
                == 2,
        "{out}"
    );
    let total: u64 = out
        .lines()
        .filter(|l| l.starts_with("trellis_authn_dry_run_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(total, 3, "{out}");

    // The same policy enforced: the forged token is a 401.
    let enforced = authenticator(vec![rule("iss", JwksSource::Inline(jwks(&[&key])))]);
    assert!(check(&enforced, &forged).await.is_err());
    assert!(check(&enforced, &good).await.unwrap().is_some());
}
