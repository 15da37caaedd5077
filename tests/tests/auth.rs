//! Admin authentication and authorization, as a caller meets them (SQLite is enough: nothing here touches the
//! database engine).
//!
//! Refusals: every token that must not verify (none, garbage, expired beyond the 60 s leeway, wrong audience or
//! issuer, `alg: none`, HS256 "signed" with the public key, a forged signature, another key) gets the same 401
//! Azure error. Roles: reader reads, operator changes enrollments, owner changes hubs, no role does nothing.
//! The external issuer is tested in `external_issuer.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Response;
use serde_json::{Value, json};
use zerotouch_tests::{Backend, Server};

const DEV_ISSUER: &str = "zerotouch-dev";
const DEV_KID: &str = "zerotouch-dev";
const AUDIENCE: &str = "zerotouch";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Development-issuer claims for `sub`, with `role` (None: no role claim), expiring `exp_in` seconds from now.
fn dev_claims(role: Option<&str>, exp_in: i64) -> Value {
    let mut claims = json!({"iss": DEV_ISSUER, "aud": AUDIENCE, "sub": "tester", "iat": now(), "exp": now() + exp_in});
    if let Some(role) = role {
        claims["role"] = json!(role);
    }
    claims
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// The development signing key of the server's data dir (what `zerotouch admin-token` signs with).
fn dev_key(server: &Server) -> EncodingKey {
    EncodingKey::from_ec_pem(&std::fs::read(server.data_dir.join("token-signing.key")).unwrap()).unwrap()
}

/// A token signed with the development key.
fn dev_token(server: &Server, claims: &Value) -> String {
    sign(Algorithm::ES256, DEV_KID, &dev_key(server), claims)
}

async fn get(server: &Server, path: &str, token: Option<&str>) -> Response {
    let mut request = server.client.get(server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn put(server: &Server, path: &str, token: Option<&str>, body: &Value) -> Response {
    let mut request = server.client.put(server.url(path)).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

fn enrollment(id: &str) -> Value {
    json!({"registrationId": id, "attestation": {"type": "symmetricKey"}})
}

fn hub(host: &str) -> Value {
    json!({"hostName": host, "kind": "none"})
}

/// Asserts an Azure error with `status` and `code` and returns its message.
async fn expect_error(response: Response, status: u16, code: u64, what: &str) -> String {
    let actual = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "{what}: {text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    assert_eq!(body["errorCode"], code, "{what}: {body}");
    assert_eq!(headers.get("x-ms-error-code").and_then(|v| v.to_str().ok()), Some(code.to_string().as_str()), "{what}");
    assert!(body["trackingId"].as_str().is_some_and(|t| !t.is_empty()), "{what}: {body}");
    let at = body["timestampUtc"].as_str().unwrap_or_else(|| panic!("{what}: timestampUtc in {body}"));
    chrono::DateTime::parse_from_rfc3339(at).unwrap();
    if status == 401 {
        assert_eq!(headers.get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"), "{what}");
    }
    body["message"].as_str().unwrap_or_else(|| panic!("{what}: message in {body}")).to_owned()
}

async fn expect_status(response: Response, status: u16, what: &str) {
    let actual = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "{what}: {text}");
}

/// A token with a hand-made header and an empty signature.
fn unsigned(header: &Value, claims: &Value) -> String {
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!("{}.{}.", b64(header), b64(claims))
}

/// `token` with some characters of its signature changed (not the last one, whose low bits may be padding).
fn with_forged_signature(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut chars: Vec<char> = signature.chars().collect();
    let n = chars.len();
    for i in [n / 2, n - 4, n - 3, n - 2] {
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    }
    let forged: String = chars.into_iter().collect();
    assert_ne!(forged, signature);
    format!("{signed}.{forged}")
}

/// Every token that must be refused gets 401 with the same Azure body, on reads and on writes alike.
#[tokio::test]
async fn invalid_tokens_are_refused_with_401() {
    let server = Server::start(Backend::Sqlite).await.unwrap();
    let valid = dev_token(&server, &dev_claims(Some("owner"), 300));
    let public_pem = std::fs::read(server.data_dir.join("token-signing.pub.pem")).unwrap();
    let other_key = EncodingKey::from_ec_pem(rcgen::KeyPair::generate().unwrap().serialize_pem().as_bytes()).unwrap();

    let mut expired = dev_claims(Some("owner"), 0);
    expired["exp"] = json!(now() - 120);
    let mut wrong_audience = dev_claims(Some("owner"), 300);
    wrong_audience["aud"] = json!("someone-else");
    let mut wrong_issuer = dev_claims(Some("owner"), 300);
    wrong_issuer["iss"] = json!("https://evil.example");
    let mut not_yet = dev_claims(Some("owner"), 300);
    not_yet["nbf"] = json!(now() + 600);
    let mut no_subject = dev_claims(Some("owner"), 300);
    no_subject.as_object_mut().unwrap().remove("sub");
    let mut no_expiry = dev_claims(Some("owner"), 300);
    no_expiry.as_object_mut().unwrap().remove("exp");

    let refused: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("garbage", Some("not-a-jwt".into())),
        ("three garbage parts", Some("abc.def.ghi".into())),
        ("expired 120 s ago", Some(dev_token(&server, &expired))),
        ("wrong audience", Some(dev_token(&server, &wrong_audience))),
        ("wrong issuer", Some(dev_token(&server, &wrong_issuer))),
        ("not valid for 10 minutes", Some(dev_token(&server, &not_yet))),
        ("no sub", Some(dev_token(&server, &no_subject))),
        ("no exp", Some(dev_token(&server, &no_expiry))),
        ("alg none", Some(unsigned(&json!({"alg": "none"}), &dev_claims(Some("owner"), 300)))),
        (
            "alg none with the kid",
            Some(unsigned(&json!({"alg": "none", "kid": DEV_KID}), &dev_claims(Some("owner"), 300))),
        ),
        (
            "HS256 keyed with the public key",
            Some(sign(
                Algorithm::HS256,
                DEV_KID,
                &EncodingKey::from_secret(&public_pem).unwrap(),
                &dev_claims(Some("owner"), 300),
            )),
        ),
        ("forged signature", Some(with_forged_signature(&valid))),
        ("signature stripped", Some(format!("{}.", valid.rsplit_once('.').unwrap().0))),
        ("another EC key", Some(sign(Algorithm::ES256, DEV_KID, &other_key, &dev_claims(Some("owner"), 300)))),
        (
            "another EC key, no kid",
            Some(
                jsonwebtoken::encode(&Header::new(Algorithm::ES256), &dev_claims(Some("owner"), 300), &other_key)
                    .unwrap(),
            ),
        ),
    ];

    let mut messages = Vec::new();
    for (what, token) in &refused {
        messages.push(expect_error(get(&server, "/hubs", token.as_deref()).await, 401, 401001, what).await);
        let response = put(&server, "/enrollments/probe", token.as_deref(), &enrollment("probe")).await;
        messages.push(expect_error(response, 401, 401001, what).await);
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "every refusal reads the same to the client: {messages:?}");

    // The unforged token works, and none of the refused writes happened.
    expect_status(get(&server, "/hubs", Some(&valid)).await, 200, "the valid token").await;
    expect_error(get(&server, "/enrollments/probe", Some(&valid)).await, 404, 404202, "probe").await;
    // An unknown scheme or a bare token is no bearer token.
    let basic = server.client.get(server.url("/hubs")).header("Authorization", format!("Basic {valid}"));
    expect_error(basic.send().await.unwrap(), 401, 401001, "Basic scheme").await;
    let bare = server.client.get(server.url("/hubs")).header("Authorization", valid.clone());
    expect_error(bare.send().await.unwrap(), 401, 401001, "no scheme").await;
}

/// Reader reads, operator changes enrollments but not hubs, owner changes hubs; no role, or an unknown one, is 403.
#[tokio::test]
async fn roles_decide_what_a_caller_may_do() {
    let server = Server::start(Backend::Sqlite).await.unwrap();
    let reader = server.token("reader").unwrap();
    let operator = server.token("operator").unwrap();
    let owner = server.token("owner").unwrap();

    expect_status(get(&server, "/hubs", Some(&reader)).await, 200, "reader GET /hubs").await;
    expect_status(get(&server, "/audit", Some(&reader)).await, 200, "reader GET /audit").await;
    let message = expect_error(
        put(&server, "/enrollments/r-1", Some(&reader), &enrollment("r-1")).await,
        403,
        403001,
        "reader PUT",
    )
    .await;
    assert!(message.contains("reader") && message.contains("operator"), "names the role and the one needed: {message}");
    let keys = server.client.post(server.url("/enrollments/r-1/attestationmechanism")).bearer_auth(&reader);
    expect_error(keys.send().await.unwrap(), 403, 403001, "reader reads keys").await;

    expect_status(put(&server, "/enrollments/op-1", Some(&operator), &enrollment("op-1")).await, 200, "operator PUT")
        .await;
    expect_status(get(&server, "/enrollments/op-1", Some(&reader)).await, 200, "reader GET enrollment").await;
    let message = expect_error(
        put(&server, "/hubs/hub-1.example.com", Some(&operator), &hub("hub-1.example.com")).await,
        403,
        403001,
        "operator PUT hub",
    )
    .await;
    assert!(message.contains("operator") && message.contains("owner"), "{message}");
    expect_error(get(&server, "/hubs/hub-1.example.com", Some(&owner)).await, 404, 404202, "no hub was made").await;
    expect_status(
        put(&server, "/hubs/hub-1.example.com", Some(&owner), &hub("hub-1.example.com")).await,
        200,
        "owner PUT hub",
    )
    .await;
    expect_status(put(&server, "/enrollments/own-1", Some(&owner), &enrollment("own-1")).await, 200, "owner PUT").await;

    // A valid token without a role, or with one the service does not know, may not even read.
    for (what, claims) in [
        ("no role", dev_claims(None, 300)),
        ("unknown role", dev_claims(Some("admin"), 300)),
        ("role with other case", dev_claims(Some("Owner"), 300)),
    ] {
        let token = dev_token(&server, &claims);
        let message = expect_error(get(&server, "/hubs", Some(&token)).await, 403, 403001, what).await;
        assert!(message.contains("reader"), "{what}: {message}");
    }
}

/// Clock skew: a token that expired 30 s ago is still accepted (60 s leeway); 90 s ago it is not.
#[tokio::test]
async fn expiry_allows_60_seconds_of_clock_skew() {
    let server = Server::start(Backend::Sqlite).await.unwrap();
    let mut claims = dev_claims(Some("reader"), 0);
    claims["exp"] = json!(now() - 30);
    expect_status(get(&server, "/hubs", Some(&dev_token(&server, &claims))).await, 200, "expired 30 s ago").await;
    claims["exp"] = json!(now() - 90);
    expect_error(get(&server, "/hubs", Some(&dev_token(&server, &claims))).await, 401, 401001, "expired 90 s ago")
        .await;
    let mut early = dev_claims(Some("reader"), 300);
    early["nbf"] = json!(now() + 30);
    expect_status(get(&server, "/hubs", Some(&dev_token(&server, &early))).await, 200, "valid in 30 s").await;
}

// ---------------------------------------------------------------------------------------------------------------
// External issuer

// The external issuer (JWKS file and URL, RS256/ES256/EdDSA, nested role claim) is tested in external_issuer.rs.
