//! End-user authentication (Istio RequestAuthentication) with the real binaries: a
//! `trellis-control` reading the policy from its config directory, a server proxy in front of
//! the HTTP echo, a client proxy calling it over mesh mTLS, and a JWKS served over HTTP on
//! 127.0.0.1 by this test. Keys are generated here (aws-lc-rs) and tokens signed here, so each
//! failure is one the test made on purpose: expired, wrong issuer, wrong audience, bad
//! signature. A key rotation at the JWKS server is picked up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
    RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use trellis_testkit::fixture::target;
use trellis_testkit::mesh::{config_dir, service_yaml};
use trellis_testkit::tools::{CurlReply, curl_http, require, run_bounded};
use trellis_testkit::{ControlPlane, HttpEcho, ManagedProcess, Proxy, ProxyBuilder, wait};

const CONVERGE: Duration = Duration::from_secs(20);
const ISSUER: &str = "https://issuer.trellis.test";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An ES256 signing key with its kid.
struct EcKey {
    kid: String,
    pair: EcdsaKeyPair,
}

impl EcKey {
    fn generate(kid: &str) -> Self {
        let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new()).unwrap();
        Self {
            kid: kid.into(),
            pair: EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap(),
        }
    }
    fn jwk(&self) -> Value {
        let p = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
               "x": b64(&p[1..33]), "y": b64(&p[33..65])})
    }
    fn sign(&self, claims: &Value) -> String {
        let input = signing_input("ES256", &self.kid, claims);
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

/// An RS256 key, for the inline `jwks` rule.
struct RsaKey {
    kid: String,
    pair: RsaKeyPair,
}

impl RsaKey {
    fn generate(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            pair: RsaKeyPair::generate(KeySize::Rsa2048).unwrap(),
        }
    }
    fn jwks(&self) -> String {
        let c = RsaPublicKeyComponents::<Vec<u8>>::from(self.pair.public_key());
        json!({"keys": [{"kty": "RSA", "kid": self.kid, "n": b64(&c.n), "e": b64(&c.e)}]})
            .to_string()
    }
    fn sign(&self, claims: &Value) -> String {
        let input = signing_input("RS256", &self.kid, claims);
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
        format!("{input}.{}", b64(&sig))
    }
}

fn signing_input(alg: &str, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn claims(iss: &str, aud: &str, exp_in: i64) -> Value {
    json!({"iss": iss, "sub": "alice", "aud": aud, "group": "admins",
           "iat": now(), "exp": now() + exp_in})
}

/// A JWKS endpoint on 127.0.0.1: serves whatever `body` holds at any path, counts fetches.
struct JwksServer {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl JwksServer {
    fn start(body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body));
        let fetches = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, f, s) = (body.clone(), fetches.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 64 * 1024 {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                f.fetch_add(1, Ordering::SeqCst);
                let doc = b.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{doc}",
                    doc.len()
                );
            }
        });
        Self {
            addr,
            body,
            fetches,
            stop,
        }
    }

    fn set(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so the thread sees `stop`.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

fn jwks(keys: &[&EcKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

fn request_authentication(jwks_uri: &str, inline: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: echo-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  jwtRules:
  - issuer: {ISSUER}
    audiences: [echo, other]
    jwksUri: {jwks_uri}
    outputClaimToHeaders:
    - {{header: x-jwt-sub, claim: sub}}
    - {{header: x-jwt-group, claim: group}}
  - issuer: inline-issuer
    jwks: '{inline}'
    fromHeaders: [{{name: x-token}}]
    forwardOriginalToken: true
"#
    )
}

/// GET `url` with extra headers.
fn get(url: &str, headers: &[String]) -> CurlReply {
    let mut args: Vec<&str> = vec!["-s", "--max-time", "10"];
    for h in headers {
        args.extend(["-H", h.as_str()]);
    }
    args.push(url);
    curl_http(&args).unwrap()
}

fn config_dump(proxy: &Proxy) -> Value {
    let (status, body) = proxy.admin_get("/config_dump").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn bearer(token: &str) -> Vec<String> {
    vec![format!("authorization: Bearer {token}")]
}

/// The echo behind a server proxy (`app: echo`), a client proxy calling it over mesh mTLS, and
/// a control plane reading `files` beside the echo Service.
struct Mesh {
    server: Proxy,
    /// `http://<server inbound>/hello`: plaintext, straight to the server proxy.
    direct: String,
    /// `http://<client outbound port>/hello`: through the client proxy, over mesh mTLS.
    meshed: String,
    _client: Proxy,
    _control: ControlPlane,
    _config: tempfile::TempDir,
    _echo: HttpEcho,
}

fn start_mesh(files: &[(&str, String)]) -> Mesh {
    start_mesh_with_env(files, &[])
}

/// [`start_mesh`] with environment variables for the server proxy.
fn start_mesh_with_env(files: &[(&str, String)], server_env: &[(&str, &Path)]) -> Mesh {
    let echo = HttpEcho::start().unwrap();
    let mut all = vec![(
        "echo.yaml",
        service_yaml("echo", "default", 8080, echo.addr.port(), "echo"),
    )];
    all.extend(files.iter().cloned());
    let config = config_dir(&all).unwrap();
    let control = ControlPlane::start(config.path()).unwrap();
    let server = server_env
        .iter()
        .fold(ProxyBuilder::loopback("echo-0"), |b, (k, v)| b.env(k, v))
        .label("app", "echo")
        .service_account("echo")
        .control(&control.url())
        .app(echo.addr)
        .start()
        .unwrap();
    let client = ProxyBuilder::loopback("client")
        .label("app", "client")
        .service_account("client")
        .control(&control.url())
        .outbound_port(&target("echo", 8080))
        .start()
        .unwrap();
    for p in [&server, &client] {
        p.wait_ready(CONVERGE).unwrap();
    }
    Mesh {
        direct: format!("http://{}/hello", server.ready.inbound),
        meshed: format!(
            "http://{}/hello",
            client.outbound_port(&target("echo", 8080))
        ),
        server,
        _client: client,
        _control: control,
        _config: config,
        _echo: echo,
    }
}

#[test]
fn jwt_rules_enforced_by_the_inbound_proxy() {
    let k1 = EcKey::generate("k1");
    let k2 = EcKey::generate("k2");
    let rsa = RsaKey::generate("rsa-1");
    let jwks_server = JwksServer::start(jwks(&[&k1]));
    let mesh = start_mesh(&[(
        "jwt.yaml",
        request_authentication(
            &format!("http://{}/.well-known/jwks.json", jwks_server.addr),
            &rsa.jwks(),
        ),
    )]);
    let (direct, meshed) = (mesh.direct.clone(), mesh.meshed.clone());

    // The rules arrive from discovery: wait until an expired token is refused.
    let expired = k1.sign(&claims(ISSUER, "echo", -3600));
    wait::until(CONVERGE, || match get(&direct, &bearer(&expired)) {
        r if r.status == 401 => Ok(()),
        r => Err(format!("not enforced yet: {} {}", r.status, r.body)),
    })
    .unwrap();

    // A valid token passes; claims reach the app as headers; the token does not.
    let valid = k1.sign(&claims(ISSUER, "echo", 600));
    for url in [&direct, &meshed] {
        let r = get(
            url,
            &[
                format!("authorization: Bearer {valid}"),
                "x-jwt-group: forged".into(),
            ],
        );
        assert_eq!(r.status, 200, "{url}: {}", r.body);
        let seen = r.echo();
        assert_eq!(
            seen.headers.get("x-jwt-sub").map(String::as_str),
            Some("alice")
        );
        assert_eq!(
            seen.headers.get("x-jwt-group").map(String::as_str),
            Some("admins")
        );
        assert!(
            !seen.headers.contains_key("authorization"),
            "{url}: token forwarded"
        );
    }

    // The proxy shows what it enforces, with the keys it fetched for the valid token.
    let dump = config_dump(&mesh.server);
    let ra = &dump["request_authentication"];
    assert_eq!(ra["policies"], json!(["default/echo-jwt"]), "{ra}");
    assert_eq!(ra["rules"][0]["issuer"], ISSUER, "{ra}");
    assert_eq!(ra["rules"][0]["jwks"]["keys"], 1, "{ra}");
    assert_eq!(ra["rules"][1]["jwks"]["inline"]["keys"], 1, "{ra}");

    // Each bad token gets 401 with Envoy's reason, directly and through the mesh.
    // Another key claiming k1's kid: the signature cannot verify.
    let forged = EcKey {
        kid: "k1".into(),
        pair: EcKey::generate("impostor").pair,
    }
    .sign(&claims(ISSUER, "echo", 600));
    let cases = [
        (expired.clone(), "Jwt is expired"),
        (
            k1.sign(&claims("https://evil.test", "echo", 600)),
            "Jwt issuer is not configured",
        ),
        (
            k1.sign(&claims(ISSUER, "billing", 600)),
            "Audiences in Jwt are not allowed",
        ),
        (forged, "Jwt verification fails"),
        ("not-a-jwt".to_string(), "Jwt is not in the form"),
    ];
    for url in [&direct, &meshed] {
        for (token, reason) in &cases {
            let r = get(url, &bearer(token));
            assert_eq!(r.status, 401, "{url} {reason}: {}", r.body);
            assert!(
                r.body.starts_with(reason),
                "{url}: {:?} for {reason}",
                r.body
            );
        }
        // No token: passes, unauthenticated.
        let r = get(url, &[]);
        assert_eq!(r.status, 200, "{url}: {}", r.body);
        assert!(!r.echo().headers.contains_key("x-jwt-sub"));
    }

    // The 401s are requests like any other in the server proxy's metrics.
    let rejected = mesh.server.metrics().sum(
        "trellis_requests_total",
        &[("direction", "inbound"), ("status_code", "401")],
    );
    assert!(
        rejected >= (2 * cases.len()) as f64,
        "{rejected} inbound 401s counted"
    );

    // The inline RS256 rule reads its own header and forwards the token.
    let inline = rsa.sign(&claims("inline-issuer", "anything", 600));
    let r = get(&direct, &[format!("x-token: {inline}")]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.echo().headers.get("x-token"), Some(&inline));
    // ... and only that header: the same token as a Bearer names an unconfigured issuer there.
    let r = get(&direct, &bearer(&inline));
    assert_eq!(
        (r.status, r.body.as_str()),
        (401, "Jwt issuer is not configured")
    );

    // Key rotation at the issuer: a token signed with the new key is accepted once the proxy
    // refetches (on the unknown kid, at most every few seconds); the retired key's tokens fail.
    let fetches_before = jwks_server.fetches.load(Ordering::SeqCst);
    jwks_server.set(jwks(&[&k2]));
    let rotated = k2.sign(&claims(ISSUER, "other", 600));
    wait::until(CONVERGE, || match get(&direct, &bearer(&rotated)) {
        r if r.status == 200 => Ok(()),
        r => Err(format!(
            "rotated key not accepted yet: {} {}",
            r.status, r.body
        )),
    })
    .unwrap();
    assert!(jwks_server.fetches.load(Ordering::SeqCst) > fetches_before);
    let r = get(&direct, &bearer(&valid));
    assert_eq!(r.status, 401, "{}", r.body);
    let r = get(&meshed, &bearer(&rotated));
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A RequestAuthentication with an inline key and an AuthorizationPolicy that admits only
/// tokens of that issuer whose claims say so: the claims a valid token carries are what
/// `when: request.auth.claims[...]` matches (authentication runs first, authorization reads
/// its result).
#[test]
fn claims_of_a_valid_token_matched_by_authorization() {
    let key = EcKey::generate("k1");
    let authn = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: echo-jwt, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: echo}}}}\n  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{}'\n",
        jwks(&[&key])
    );
    let authz = format!(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admins-of-blue, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/*"]}}}}]
    when:
    - {{key: "request.auth.claims[group]", values: [admins]}}
    - {{key: "request.auth.claims[org][team]", values: [blue]}}
"#
    );
    let mesh = start_mesh(&[("jwt.yaml", authn), ("authz.yaml", authz)]);
    let token = |group: &str, team: &str| {
        let mut c = claims(ISSUER, "echo", 600);
        c["group"] = json!(group);
        c["org"] = json!({"team": team});
        key.sign(&c)
    };
    // Both policies arrive from discovery: wait until a request without a token is denied.
    wait::until(CONVERGE, || match get(&mesh.direct, &[]) {
        r if r.status == 403 => Ok(()),
        r => Err(format!("not enforced yet: {} {}", r.status, r.body)),
    })
    .unwrap();
    for url in [&mesh.direct, &mesh.meshed] {
        let r = get(url, &bearer(&token("admins", "blue")));
        assert_eq!(r.status, 200, "{url}: {}", r.body);
        for (group, team) in [("users", "blue"), ("admins", "red")] {
            let r = get(url, &bearer(&token(group, team)));
            assert_eq!(r.status, 403, "{url} {group}/{team}: {}", r.body);
        }
        // Authentication still answers first: an invalid token is a 401, not a 403.
        let mut expired = claims(ISSUER, "echo", -3600);
        expired["group"] = json!("admins");
        expired["org"] = json!({"team": "blue"});
        let r = get(url, &bearer(&key.sign(&expired)));
        assert_eq!(
            (r.status, r.body.as_str()),
            (401, "Jwt is expired"),
            "{url}"
        );
        let r = get(url, &[]);
        assert_eq!(r.status, 403, "{url}: no token, no request principal");
    }
}

/// A JWKS served over HTTPS by `openssl s_server -WWW` (files from its working directory)
/// with a self-signed certificate for IP 127.0.0.1, which the server proxy trusts through
/// `SSL_CERT_FILE` and nothing else.
struct HttpsJwks {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    _server: ManagedProcess,
}

impl HttpsJwks {
    fn start(jwks: &str) -> Self {
        let openssl = require("openssl", "openssl");
        let dir = tempfile::tempdir().unwrap();
        let out = run_bounded(
            Command::new(&openssl)
                .current_dir(dir.path())
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
                .args([
                    "-keyout", "key.pem", "-out", "cert.pem", "-subj", "/CN=jwks",
                ])
                .args(["-addext", "subjectAltName=IP:127.0.0.1"])
                .args(["-addext", "basicConstraints=critical,CA:FALSE"]),
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(out.status.success(), "openssl req: {out:?}");
        std::fs::write(dir.path().join("jwks.json"), jwks).unwrap();
        // A free port from the OS; s_server binds it right after.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut command = Command::new(&openssl);
        command
            .current_dir(dir.path())
            .args(["s_server", "-quiet", "-WWW", "-accept"])
            .arg(addr.to_string())
            .args(["-cert", "cert.pem", "-key", "key.pem"]);
        let server = ManagedProcess::spawn("openssl s_server", command).unwrap();
        wait::until(CONVERGE, || {
            std::net::TcpStream::connect(addr)
                .map(drop)
                .map_err(|e| format!("s_server not listening yet: {e}"))
        })
        .unwrap();
        Self {
            addr,
            dir,
            _server: server,
        }
    }

    fn cert(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }
}

#[test]
fn jwks_uri_over_https_verified_against_the_trusted_roots() {
    let key = EcKey::generate("k1");
    let https = HttpsJwks::start(&jwks(&[&key]));
    // The same server under a name its certificate does not carry: the fetch must fail.
    let rules = format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: echo-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: https://{addr}/jwks.json
  - issuer: wrong-name
    jwksUri: https://localhost:{port}/jwks.json
"#,
        addr = https.addr,
        port = https.addr.port()
    );
    let cert = https.cert();
    let mesh = start_mesh_with_env(&[("jwt.yaml", rules)], &[("SSL_CERT_FILE", &cert)]);
    let valid = key.sign(&claims(ISSUER, "echo", 600));
    wait::until(CONVERGE, || match get(&mesh.direct, &bearer(&valid)) {
        r if r.status == 200 => Ok(()),
        r => Err(format!("not accepted yet: {} {}", r.status, r.body)),
    })
    .unwrap();
    let forged = EcKey::generate("k1").sign(&claims(ISSUER, "echo", 600));
    let r = get(&mesh.direct, &bearer(&forged));
    assert_eq!((r.status, r.body.as_str()), (401, "Jwt verification fails"));
    let r = get(
        &mesh.direct,
        &bearer(&key.sign(&claims("wrong-name", "echo", 600))),
    );
    assert_eq!(
        (r.status, r.body.as_str()),
        (401, "Jwks remote fetch is failed")
    );
    let dump = config_dump(&mesh.server);
    let wrong = &dump["request_authentication"]["rules"][1]["jwks"];
    assert_eq!(wrong["keys"], Value::Null, "{wrong}");
    let error = wrong["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("localhost"), "{wrong}");
}

fn inline_authn(key: &EcKey, annotations: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: echo-jwt, namespace: default, annotations: {{{annotations}}}}}\nspec:\n  selector: {{matchLabels: {{app: echo}}}}\n  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{}'\n",
        jwks(&[key])
    )
}

/// `trellis.io/dry-run: "true"` on a RequestAuthentication: a bad token passes (200, token
/// still forwarded) and `trellis_authn_dry_run_rejected_total` counts it by policy and reason;
/// the same policy without the annotation answers 401.
#[test]
fn dry_run_request_authentication_passes_and_counts() {
    let key = EcKey::generate("k1");
    let forger = EcKey::generate("k1");
    let forged = forger.sign(&claims(ISSUER, "echo", 600));
    let expired = key.sign(&claims(ISSUER, "echo", -3600));
    let good = key.sign(&claims(ISSUER, "echo", 600));

    let mesh = start_mesh(&[(
        "jwt.yaml",
        inline_authn(&key, "\"trellis.io/dry-run\": \"true\""),
    )]);
    wait::until(CONVERGE, || {
        let dump = config_dump(&mesh.server);
        let ra = &dump["request_authentication"];
        (ra["dry_run"] == json!(["default/echo-jwt"]) && ra["rules"] == json!([]))
            .then_some(())
            .ok_or(format!("dry-run policy not in force yet: {ra}"))
    })
    .unwrap();
    let counted = |mesh: &Mesh| {
        mesh.server.metrics().sum(
            "trellis_authn_dry_run_rejected_total",
            &[("policy", "default/echo-jwt")],
        )
    };
    assert_eq!(counted(&mesh), 0.0);
    for url in [&mesh.direct, &mesh.meshed] {
        for t in [&forged, &expired, &good] {
            let r = get(url, &bearer(t));
            assert_eq!(r.status, 200, "{url}: {}", r.body);
            // Nothing is done to the request: the token reaches the app.
            let auth = r.echo().headers.get("authorization").cloned();
            assert_eq!(auth, Some(format!("Bearer {t}")), "{url}");
        }
    }
    assert_eq!(counted(&mesh), 4.0);
    let metrics = mesh.server.metrics();
    let expired_count = metrics.sum(
        "trellis_authn_dry_run_rejected_total",
        &[("policy", "default/echo-jwt"), ("reason", "expired")],
    );
    assert_eq!(expired_count, 2.0, "by reason");
    drop(mesh);

    // Enforced: the same bad tokens are 401s.
    let mesh = start_mesh(&[("jwt.yaml", inline_authn(&key, ""))]);
    wait::until(CONVERGE, || match get(&mesh.direct, &bearer(&forged)) {
        r if r.status == 401 => Ok(()),
        r => Err(format!("not enforced yet: {} {}", r.status, r.body)),
    })
    .unwrap();
    assert_eq!(get(&mesh.meshed, &bearer(&expired)).status, 401);
    assert_eq!(get(&mesh.meshed, &bearer(&good)).status, 200);
    assert_eq!(counted(&mesh), 0.0);
}
