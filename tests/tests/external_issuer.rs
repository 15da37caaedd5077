//! An external OIDC issuer: tokens signed by the issuer's RSA, EC P-256 and Ed25519 keys (from a JWKS file or URL)
//! are accepted and mapped to a role from a nested claim; everything else, the development key included, is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use actix_web::{App, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use zerotouch_tests::{Backend, Options, Server};

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "zerotouch";
/// The secret of the JWKS's symmetric key, which the service must ignore.
const OCT_SECRET: &[u8] = b"a shared secret of 32 bytes.....";

/// The issuer's key pairs, in PEM files in a temp dir, and the JWKS file that publishes their public halves.
struct Issuer {
    dir: tempfile::TempDir,
    rsa: EncodingKey,
    ec: EncodingKey,
    ed: EncodingKey,
    jwks: Value,
}

/// Runs `openssl ARGS...` and panics with its stderr if it fails.
fn openssl(args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl").args(args).output().expect("openssl is installed");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// Generates a private key with `openssl genpkey ARGS...` into `path` and returns its PEM.
fn genpkey(path: &Path, args: &[&str]) -> Vec<u8> {
    let mut all = vec!["genpkey"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-out", path.to_str().unwrap()]);
    openssl(&all);
    std::fs::read(path).unwrap()
}

fn rsa_key(path: &Path) -> Vec<u8> {
    genpkey(path, &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
}

/// A JWK of `key`'s public half, with `kid`.
fn public_jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

impl Issuer {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rsa = EncodingKey::from_rsa_pem(&rsa_key(&dir.path().join("rsa.pem"))).unwrap();
        let ec_pem = genpkey(&dir.path().join("ec.pem"), &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
        let ec = EncodingKey::from_ec_pem(&ec_pem).unwrap();
        let ed = EncodingKey::from_ed_pem(&genpkey(&dir.path().join("ed.pem"), &["-algorithm", "ED25519"])).unwrap();
        let jwks = json!({"keys": [
            // A symmetric key: the service must ignore it (no HS* tokens).
            {"kty": "oct", "kid": "hmac-1", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(OCT_SECRET)},
            public_jwk(&rsa, Algorithm::RS256, "rsa-1"),
            public_jwk(&ec, Algorithm::ES256, "ec-1"),
            public_jwk(&ed, Algorithm::EdDSA, "ed-1"),
        ]});
        // The JWKS must parse as the service parses it.
        let _: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
        std::fs::write(dir.path().join("jwks.json"), serde_json::to_vec_pretty(&jwks).unwrap()).unwrap();
        Self { dir, rsa, ec, ed, jwks }
    }

    fn jwks_file(&self) -> PathBuf {
        self.dir.path().join("jwks.json")
    }

    /// The RSA public key as PEM (`openssl pkey -pubout`).
    fn rsa_public_pem(&self) -> Vec<u8> {
        openssl(&["pkey", "-in", self.dir.path().join("rsa.pem").to_str().unwrap(), "-pubout"])
    }

    /// Starts a server that trusts this issuer (JWKS file) and reads roles from `realm_access.roles`.
    async fn server(&self) -> Server {
        let jwks_file = self.jwks_file();
        start(&["--jwt-issuer", ISSUER, "--jwks-file", jwks_file.to_str().unwrap()]).await
    }
}

async fn start(issuer_args: &[&str]) -> Server {
    let mut args: Vec<String> = issuer_args.iter().map(|a| (*a).to_owned()).collect();
    // The JWKS is served over plain http on loopback here.
    args.extend([
        "--jwt-role-claim".to_owned(),
        "realm_access.roles".to_owned(),
        "--allow-insecure-outbound".to_owned(),
    ]);
    Server::start_with(Backend::Sqlite, Options { args, ..Default::default() }).await.unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims for `sub` with the given roles (none: no role claim at all), expiring `exp_in` seconds from now.
fn claims(sub: &str, roles: Option<&[&str]>, exp_in: i64) -> Value {
    let mut claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now(), "exp": now() + exp_in});
    if let Some(roles) = roles {
        claims["realm_access"] = json!({"roles": roles});
    }
    claims
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A token with a hand-made header, signed over exactly that header with `key` and `alg` (None: no signature).
fn forge(header: &Value, claims: &Value, signer: Option<(&EncodingKey, Algorithm)>) -> String {
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let message = format!("{}.{}", b64(header), b64(claims));
    let signature = match signer {
        Some((key, alg)) => jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap(),
        None => String::new(),
    };
    format!("{message}.{signature}")
}

async fn put_enrollment(server: &Server, token: &str, id: &str) -> reqwest::Response {
    server
        .client
        .put(server.url(&format!("/enrollments/{id}")))
        .bearer_auth(token)
        .json(&json!({"registrationId": id, "attestation": {"type": "symmetricKey"}}))
        .send()
        .await
        .unwrap()
}

async fn get_audit(server: &Server, token: &str) -> reqwest::Response {
    server
        .client
        .get(server.url("/audit"))
        .bearer_auth(token)
        .header("x-ms-max-item-count", "1000")
        .send()
        .await
        .unwrap()
}

/// Asserts a 401 with the Azure error body (errorCode 401001) and `WWW-Authenticate: Bearer`.
async fn assert_unauthenticated(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 401, "{what}");
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(challenge.as_deref(), Some("Bearer"), "{what}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], 401001, "{what}: {body}");
    assert!(body["trackingId"].is_string() && body["message"].is_string(), "{what}: {body}");
}

/// RS256, ES256 and EdDSA tokens from the issuer's JWKS are accepted, with the highest known role of a nested
/// array claim; a reader may read but not write, and a token without the role claim may do nothing.
#[tokio::test]
async fn external_issuer_tokens_of_each_algorithm_are_accepted() {
    let issuer = Issuer::new();
    let server = issuer.server().await;
    let operator = claims("alice", Some(&["offline_access", "operator"]), 300);
    let tokens = [
        ("rs256", sign(Algorithm::RS256, "rsa-1", &issuer.rsa, &operator)),
        ("es256", sign(Algorithm::ES256, "ec-1", &issuer.ec, &operator)),
        ("eddsa", sign(Algorithm::EdDSA, "ed-1", &issuer.ed, &operator)),
    ];
    for (name, token) in &tokens {
        let response = put_enrollment(&server, token, &format!("by-{name}")).await;
        assert_eq!(response.status(), 200, "{name}: {}", response.text().await.unwrap());
    }
    let response = get_audit(&server, &tokens[0].1).await;
    assert_eq!(response.status(), 200);
    let events: Vec<Value> = response.json().await.unwrap();
    for (name, _) in &tokens {
        let event = events
            .iter()
            .find(|e| e["resourceId"] == format!("by-{name}"))
            .unwrap_or_else(|| panic!("no audit event for by-{name}: {events:?}"));
        assert_eq!(
            (&event["actor"], &event["role"], &event["action"]),
            (&json!("alice"), &json!("operator"), &json!("create"))
        );
    }

    let reader = sign(Algorithm::ES256, "ec-1", &issuer.ec, &claims("bob", Some(&["reader"]), 300));
    let response = put_enrollment(&server, &reader, "by-reader").await;
    assert_eq!(response.status(), 403, "{}", response.text().await.unwrap());
    assert_eq!(get_audit(&server, &reader).await.status(), 200);

    let roleless = sign(Algorithm::RS256, "rsa-1", &issuer.rsa, &claims("carol", None, 300));
    assert_eq!(put_enrollment(&server, &roleless, "by-roleless").await.status(), 403);
    assert_eq!(get_audit(&server, &roleless).await.status(), 403);
}

/// With an issuer configured, the development key, HS256 "signed" with the public key, a header whose algorithm does
/// not fit the key, a wrong issuer or audience, expiry past the leeway, an unknown key and `alg: none` are all 401.
#[tokio::test]
async fn external_issuer_refuses_everything_else() {
    let issuer = Issuer::new();
    let server = issuer.server().await;
    let good = claims("alice", Some(&["owner"]), 300);

    // Within the 60 s leeway: accepted.
    let recently_expired = sign(Algorithm::ES256, "ec-1", &issuer.ec, &claims("alice", Some(&["reader"]), -30));
    assert_eq!(get_audit(&server, &recently_expired).await.status(), 200, "expired 30 s ago is within the leeway");

    let mut refused: Vec<(&str, String)> = Vec::new();
    // No development key exists beside an external issuer, so no development token can be minted at all.
    assert!(!server.data_dir.join("token-signing.key").exists(), "a development key was created beside the issuer");
    assert!(zerotouch_tests::admin_token(&server.data_dir, &["--role", "owner"]).is_err());
    let hs256 = EncodingKey::from_secret(&issuer.rsa_public_pem()).unwrap();
    let oct_secret = EncodingKey::from_secret(OCT_SECRET).unwrap();
    refused.push(("HS256 with the RSA public key", sign(Algorithm::HS256, "rsa-1", &hs256, &good)));
    refused.push(("HS256 with the ignored oct key", sign(Algorithm::HS256, "hmac-1", &oct_secret, &good)));
    refused.push((
        "RS256 signature, header says ES256",
        forge(&json!({"alg": "ES256", "typ": "JWT", "kid": "rsa-1"}), &good, Some((&issuer.rsa, Algorithm::RS256))),
    ));
    refused.push((
        "RS256 signature, header says PS256",
        forge(&json!({"alg": "PS256", "typ": "JWT", "kid": "rsa-1"}), &good, Some((&issuer.rsa, Algorithm::RS256))),
    ));
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    refused.push(("wrong iss", sign(Algorithm::RS256, "rsa-1", &issuer.rsa, &wrong_iss)));
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    refused.push(("wrong aud", sign(Algorithm::RS256, "rsa-1", &issuer.rsa, &wrong_aud)));
    for claim in ["iss", "aud", "exp", "sub"] {
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove(claim);
        refused.push((claim, sign(Algorithm::EdDSA, "ed-1", &issuer.ed, &missing)));
    }
    refused.push((
        "expired 120 s ago",
        sign(Algorithm::ES256, "ec-1", &issuer.ec, &claims("alice", Some(&["owner"]), -120)),
    ));
    let stranger = EncodingKey::from_rsa_pem(&rsa_key(&issuer.dir.path().join("stranger.pem"))).unwrap();
    refused.push(("a key not in the JWKS, same kid", sign(Algorithm::RS256, "rsa-1", &stranger, &good)));
    refused.push((
        "a key not in the JWKS, no kid",
        forge(&json!({"alg": "RS256"}), &good, Some((&stranger, Algorithm::RS256))),
    ));
    refused.push(("alg none", forge(&json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"}), &good, None)));
    refused.push(("garbage", "not.a.jwt".to_owned()));

    for (what, token) in &refused {
        assert_unauthenticated(get_audit(&server, token).await, what).await;
        assert_unauthenticated(put_enrollment(&server, token, "refused").await, what).await;
    }
    let missing = server.client.get(server.url("/audit")).send().await.unwrap();
    assert_unauthenticated(missing, "no Authorization header").await;
    // Nothing was written by any refused token.
    let good = sign(Algorithm::RS256, "rsa-1", &issuer.rsa, &good);
    let events: Vec<Value> = get_audit(&server, &good).await.json().await.unwrap();
    assert!(events.is_empty(), "{events:?}");
    let logs = server.logs();
    assert!(logs.contains("JWKS key skipped"), "the oct key is skipped with a warning:\n{logs}");
}

/// `zerotouch admin-token` refuses to sign a development token when an external issuer is configured.
#[test]
fn admin_token_is_refused_when_an_issuer_is_configured() {
    let issuer = Issuer::new();
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(zerotouch_tests::binary().unwrap())
        .arg("admin-token")
        .arg("--data-dir")
        .arg(data_dir.path())
        .args(["--jwt-issuer", ISSUER, "--jwks-file"])
        .arg(issuer.jwks_file())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "admin-token must fail; stdout: {}", String::from_utf8_lossy(&output.stdout));
    assert!(output.stdout.is_empty(), "no token is printed");
    assert!(stderr.contains(ISSUER), "stderr names the issuer: {stderr}");
}

/// With `--jwks-url`, the service fetches the JWKS over HTTP at start and accepts the issuer's tokens.
#[tokio::test]
async fn jwks_url_is_fetched() {
    let issuer = Issuer::new();
    let jwks = web::Data::new(issuer.jwks.clone());
    let http = HttpServer::new(move || {
        App::new().app_data(jwks.clone()).route(
            "/jwks.json",
            web::get().to(|jwks: web::Data<Value>| async move { HttpResponse::Ok().json(jwks.get_ref()) }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let address = http.addrs()[0];
    let running = http.run();
    let handle = running.handle();
    tokio::spawn(running);

    let url = format!("http://{address}/jwks.json");
    let server = start(&["--jwt-issuer", ISSUER, "--jwks-url", &url]).await;
    let token = sign(Algorithm::ES256, "ec-1", &issuer.ec, &claims("dave", Some(&["operator"]), 300));
    let response = put_enrollment(&server, &token, "by-url").await;
    assert_eq!(response.status(), 200, "{}\n{}", response.text().await.unwrap(), server.logs());
    let events: Vec<Value> = get_audit(&server, &token).await.json().await.unwrap();
    assert_eq!((&events[0]["actor"], &events[0]["role"]), (&json!("dave"), &json!("operator")), "{events:?}");
    let other_ec =
        genpkey(&issuer.dir.path().join("other-ec.pem"), &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let other_ec = EncodingKey::from_ec_pem(&other_ec).unwrap();
    let stranger = sign(Algorithm::ES256, "ec-1", &other_ec, &claims("eve", Some(&["owner"]), 300));
    assert_unauthenticated(get_audit(&server, &stranger).await, "a key not in the fetched JWKS").await;
    handle.stop(true).await;
}
