#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The admin API of the managed CA (issue #4 §1, §3, §4, §5), on SQLite and on PostgreSQL, with `openssl` as the
//! independent party: it is the offline root that signs an issuing CA's CSR, the customer CA whose key proves
//! possession, the parser of every CRL, and the verifier of the trust bundle.
//!
//! Every scenario is written once as `async fn scenario(backend)` and run by two `#[tokio::test]` wrappers, each on
//! its own server (fresh data dir and database).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::HeaderMap;
use reqwest::{Method, Response};
use serde_json::{Value, json};
use zerotouch_attest::sas;
use zerotouch_tests::openssl::openssl;
use zerotouch_tests::{Api, Backend, Options, Server};

const FORBIDDEN: u64 = 403_001;
const INVALID_FIELD: u64 = 400_002;
const INVALID_HEADER: u64 = 400_005;
const NOT_FOUND: u64 = 404_202;
const CONFLICT: u64 = 409_001;
const PRECONDITION_FAILED: u64 = 412_001;

// ---------------------------------------------------------------------------------------------------------------
// Tools

/// The extensions of a CA certificate, for `openssl x509 -req -extfile`.
const CA_EXTENSIONS: &str = "basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n\
                             subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";

/// A self-signed CA made by openssl: `{name}.key`, `{name}.pem` (P-256).
fn openssl_root(dir: &Path, name: &str, cn: &str) {
    let key = format!("{name}.key");
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &key]);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            "3650",
            "-out",
            &format!("{name}.pem"),
            "-addext",
            "basicConstraints=critical,CA:true",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-addext",
            "subjectKeyIdentifier=hash",
        ],
    );
}

/// Signs `{csr}` (PEM file) with the openssl CA `{ca}` into `{out}`; with the CA extensions when `as_ca`.
fn openssl_sign(dir: &Path, csr: &str, ca: &str, out: &str, as_ca: bool) {
    let mut args = vec![
        "x509".to_owned(),
        "-req".into(),
        "-in".into(),
        csr.into(),
        "-CA".into(),
        format!("{ca}.pem"),
        "-CAkey".into(),
        format!("{ca}.key"),
        "-CAcreateserial".into(),
        "-days".into(),
        "365".into(),
        "-out".into(),
        out.into(),
    ];
    if as_ca {
        std::fs::write(dir.join("ca.ext"), CA_EXTENSIONS).unwrap();
        args.extend(["-extfile".into(), "ca.ext".into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    openssl(dir, &args);
}

/// A fresh P-256 key `{name}.key` and a CSR `{name}.csr` (PEM) for `cn`.
fn openssl_key_and_csr(dir: &Path, name: &str, cn: &str) {
    let key = format!("{name}.key");
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &key]);
    openssl(dir, &["req", "-new", "-key", &key, "-subj", &format!("/CN={cn}"), "-out", &format!("{name}.csr")]);
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

/// The base64 bodies of the PEM certificates in `text`, for comparing certificates whatever their line ends.
fn pem_bodies(text: &str) -> Vec<String> {
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|block| block.split("-----END CERTIFICATE-----").next())
        .map(|b64| b64.chars().filter(|c| !c.is_whitespace()).collect())
        .collect()
}

/// Asserts the status and returns the headers and the JSON body.
async fn expect_json(response: Response, status: u16) -> (HeaderMap, Value) {
    let actual = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    assert_eq!(actual, status, "unexpected status; body: {text}");
    (headers, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// Asserts a resource answer: `status`, a body whose `etag` is the `ETag` header; returns the body.
async fn expect_resource(response: Response, status: u16) -> Value {
    let (headers, body) = expect_json(response, status).await;
    let etag = headers.get("etag").expect("an ETag header").to_str().unwrap();
    assert_eq!(format!("\"{}\"", body["etag"].as_str().unwrap()), etag, "{body}");
    body
}

/// Asserts an Azure error answer with `code` whose message contains `fragment`; returns the message.
async fn expect_error(response: Response, code: u64, fragment: &str) -> String {
    let (headers, body) = expect_json(response, u16::try_from(code / 1000).unwrap()).await;
    assert_eq!(body["errorCode"], code, "{body}");
    assert_eq!(headers.get("x-ms-error-code").unwrap().to_str().unwrap(), code.to_string());
    let message = body["message"].as_str().unwrap().to_owned();
    assert!(message.contains(fragment), "{fragment:?} is not in {message:?}");
    message
}

/// The issuing CAs by name: (name, status).
async fn issuing_cas(api: &Api<'_>) -> Vec<(String, String)> {
    let (_, list) = expect_json(api.get("/pki/issuingCAs").await, 200).await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|ca| (ca["name"].as_str().unwrap().to_owned(), ca["status"].as_str().unwrap().to_owned()))
        .collect()
}

/// Polls the public trust bundle (no token) until `accept` holds; the service reuses its CA list for up to 2 s.
async fn trust_bundle_until(server: &Server, accept: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = server.client.get(server.url("/pki/trustBundle")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let pem = response.text().await.unwrap();
        if accept(&pem) {
            return pem;
        }
        assert!(Instant::now() < deadline, "the trust bundle never became as expected:\n{pem}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Issuing CAs: the production flow

/// The production flow of issue #4 §1: the service makes a key and CSR, an openssl root signs it, the chain is
/// uploaded (a chain for another key, or in the wrong order, is refused), the CA is activated and moves `active`
/// away from the development CA (exactly one active), the trust bundle carries the root, and the new CA's CRL
/// verifies under its chain.
async fn production_flow(backend: Backend) {
    let server = Server::start(backend).await.unwrap();
    let api = Api::new(&server, "owner");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(issuing_cas(&api).await, [("development".to_owned(), "active".to_owned())]);

    // Create: a pending CA with a CSR, never a key.
    let created = expect_resource(api.post("/pki/issuingCAs", Some(&json!({"name": "ca-2026"}))).await, 201).await;
    assert_eq!(created["status"], "pending", "{created}");
    assert_eq!(created["keyAlgorithm"], "ecdsaP256", "the default: {created}");
    assert!(created.get("certificateChain").is_none() && created.get("notAfterUtc").is_none(), "{created}");
    let text = created.to_string();
    assert!(!text.contains("PRIVATE KEY") && !text.to_lowercase().contains("\"key\""), "{created}");
    std::fs::write(d.join("ca-2026.csr"), created["csr"].as_str().unwrap()).unwrap();
    let csr = openssl(d, &["req", "-in", "ca-2026.csr", "-noout", "-verify", "-subject"]);
    assert!(csr.contains("CN = zerotouch issuing CA ca-2026"), "{csr}");
    let p384 = expect_resource(
        api.post(
            "/pki/issuingCAs",
            Some(&json!({"name": "ca-p384", "keyAlgorithm": "ecdsaP384", "commonName": "Acme P-384"})),
        )
        .await,
        201,
    )
    .await;
    std::fs::write(d.join("p384.csr"), p384["csr"].as_str().unwrap()).unwrap();
    let csr = openssl(d, &["req", "-in", "p384.csr", "-noout", "-verify", "-text"]);
    assert!(csr.contains("NIST CURVE: P-384") && csr.contains("CN = Acme P-384"), "{csr}");
    expect_error(api.post("/pki/issuingCAs", Some(&json!({"name": "ca-2026"}))).await, CONFLICT, "already exists")
        .await;
    expect_error(
        api.post("/pki/issuingCAs", Some(&json!({"name": "x", "colour": "red"}))).await,
        INVALID_FIELD,
        "colour",
    )
    .await;
    expect_error(
        api.post("/pki/issuingCAs", Some(&json!({"name": "x", "keyAlgorithm": "dsa"}))).await,
        INVALID_FIELD,
        "keyAlgorithm",
    )
    .await;
    expect_error(api.post("/pki/issuingCAs", Some(&json!({"name": "Bad Name"}))).await, INVALID_FIELD, "name").await;
    expect_error(api.post("/pki/issuingCAs/ca-2026/activate", Some(&json!({}))).await, CONFLICT, "pending").await;
    let fetched = expect_resource(api.get("/pki/issuingCAs/ca-2026").await, 200).await;
    assert_eq!(fetched, created);
    expect_error(api.get("/pki/issuingCAs/nope").await, NOT_FOUND, "nope").await;

    // The offline root (openssl) signs the CSR as a CA.
    openssl_root(d, "root", "Offline Root");
    openssl_sign(d, "ca-2026.csr", "root", "ca-2026.pem", true);
    let chain = format!("{}{}", read(d, "ca-2026.pem"), read(d, "root.pem"));

    // Refused: a chain signed for another key, a chain in the wrong order, a stale If-Match.
    openssl_key_and_csr(d, "other", "Someone else");
    openssl_sign(d, "other.csr", "root", "other.pem", true);
    let foreign = format!("{}{}", read(d, "other.pem"), read(d, "root.pem"));
    let path = "/pki/issuingCAs/ca-2026";
    expect_error(api.put(path, &json!({"certificateChain": foreign})).await, INVALID_FIELD, "not for this CA key")
        .await;
    let reversed = format!("{}{}", read(d, "root.pem"), read(d, "ca-2026.pem"));
    expect_error(api.put(path, &json!({"certificateChain": reversed})).await, INVALID_FIELD, "certificateChain").await;
    expect_error(api.put_if_match(path, &json!({"certificateChain": chain}), "stale").await, PRECONDITION_FAILED, "")
        .await;

    // Upload under the etag read at creation: ready, with the chain and its expiry.
    let ready = expect_resource(
        api.put_if_match(path, &json!({"certificateChain": chain}), created["etag"].as_str().unwrap()).await,
        200,
    )
    .await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(pem_bodies(ready["certificateChain"].as_str().unwrap()), pem_bodies(&chain));
    assert!(ready["notAfterUtc"].is_string(), "{ready}");
    // The raw PEM is taken too; a document read with GET can be sent back.
    let response = api
        .request(Method::PUT, path)
        .header("Content-Type", "application/x-pem-file")
        .body(chain.clone())
        .send()
        .await
        .unwrap();
    let again = expect_resource(response, 200).await;
    assert_eq!(again["status"], "ready");
    let mut document = again.clone();
    document["certificateChain"] = json!(chain);
    expect_resource(api.put_if_match(path, &document, again["etag"].as_str().unwrap()).await, 200).await;

    // A ready CA verifies: the trust bundle carries its root, and openssl verifies the CA against the bundle.
    let root = pem_bodies(&read(d, "root.pem")).remove(0);
    let bundle = trust_bundle_until(&server, |pem| pem_bodies(pem).contains(&root)).await;
    std::fs::write(d.join("bundle.pem"), &bundle).unwrap();
    let verified = openssl(d, &["verify", "-CAfile", "bundle.pem", "ca-2026.pem"]);
    assert!(verified.contains("ca-2026.pem: OK"), "{verified}");

    // A device registered now gets its certificate from the development CA, still active.
    let key = [5u8; 32];
    enroll_with_hub(&api, &["before-rotation", "after-rotation"], &key).await;
    let before = register_with_csr_done(&server, d, "before-rotation", &key).await;
    let development = expect_resource(api.get("/pki/issuingCAs/development").await, 200).await;
    let development_chain = pem_bodies(development["certificateChain"].as_str().unwrap());

    // Activation moves `active`: exactly one CA is active, the development CA is ready.
    let active = expect_resource(api.post("/pki/issuingCAs/ca-2026/activate", Some(&json!({}))).await, 200).await;
    assert_eq!(active["status"], "active", "{active}");
    let cas = issuing_cas(&api).await;
    assert_eq!(cas.iter().filter(|(_, status)| status == "active").count(), 1, "{cas:?}");
    assert!(
        cas.contains(&("ca-2026".into(), "active".into())) && cas.contains(&("development".into(), "ready".into()))
    );
    let again = expect_resource(api.post("/pki/issuingCAs/ca-2026/activate", Some(&json!({}))).await, 200).await;
    assert_eq!(again["status"], "active", "activating the active CA changes nothing");

    // Its CRL is signed by it: openssl verifies it under the uploaded chain.
    std::fs::write(d.join("chain.pem"), &chain).unwrap();
    let der = public_crl(&server, "ca-2026").await;
    std::fs::write(d.join("ca-2026.crl"), der).unwrap();
    let crl = openssl(d, &["crl", "-inform", "DER", "-in", "ca-2026.crl", "-CAfile", "chain.pem", "-noout", "-text"]);
    assert!(crl.contains("Issuer: CN = zerotouch issuing CA ca-2026") && crl.contains("X509v3 CRL Number"), "{crl}");

    // Deletion: never the active CA; a pending one goes, under If-Match.
    expect_error(api.delete(path, None).await, CONFLICT, "active").await;
    let stale = api.delete("/pki/issuingCAs/ca-p384", Some("stale")).await;
    expect_error(stale, PRECONDITION_FAILED, "").await;
    let deleted = api.delete("/pki/issuingCAs/ca-p384", Some(p384["etag"].as_str().unwrap())).await;
    assert_eq!(deleted.status(), 204);
    expect_error(api.get("/pki/issuingCAs/ca-p384").await, NOT_FOUND, "ca-p384").await;

    // Each device's `issuedCertificateChain` is its certificate and the chain of the CA that issued it: the
    // development CA's before the rotation, the new CA's (with the offline root) after.
    let after = register_with_csr_done(&server, d, "after-rotation", &key).await;
    let issued_chain = |done: &Value| -> Vec<String> {
        let chain = done["registrationState"]["issuedCertificateChain"].as_array().expect("a chain");
        chain.iter().map(|c| c.as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(issued_chain(&before)[1..], development_chain[..], "{before}");
    assert_eq!(issued_chain(&after)[1..], pem_bodies(&chain)[..], "{after}");
    std::fs::write(d.join("development.pem"), development["certificateChain"].as_str().unwrap()).unwrap();
    for (id, done, ca) in [("before-rotation", &before, "development.pem"), ("after-rotation", &after, "chain.pem")] {
        std::fs::write(d.join(format!("{id}.der")), STANDARD.decode(&issued_chain(done)[0]).unwrap()).unwrap();
        let pem = format!("{id}.pem");
        openssl(d, &["x509", "-inform", "DER", "-in", &format!("{id}.der"), "-out", &pem]);
        let verified = openssl(d, &["verify", "-CAfile", ca, &pem]);
        assert!(verified.contains(": OK"), "{id}: {verified}");
    }

    // After a restart the answers come from the database, which keeps only the device's certificate: each poll
    // gets the same answer as before, its CA's chain included.
    let (_, server) = server.restart(backend).await.unwrap();
    for (id, done) in [("before-rotation", &before), ("after-rotation", &after)] {
        let (status, again) = poll(&server, id, &key, done["operationId"].as_str().unwrap()).await;
        assert_eq!((status, &again), (200, done), "{id}");
    }
}

/// The production flow on SQLite.
#[tokio::test]
async fn production_flow_sqlite() {
    production_flow(Backend::Sqlite).await;
}

/// The production flow on PostgreSQL.
#[tokio::test]
async fn production_flow_postgres() {
    production_flow(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Certificate authorities: proof of possession

/// Makes a proof certificate for `cn` (a fresh key) signed by the openssl CA `signer`; returns its PEM.
fn proof(dir: &Path, name: &str, cn: &str, signer: &str) -> String {
    openssl_key_and_csr(dir, name, cn);
    openssl_sign(dir, &format!("{name}.csr"), signer, &format!("{name}.pem"), false);
    read(dir, &format!("{name}.pem"))
}

/// Proof of possession with an openssl-made CA (§3): uploaded unverified; a verification code; a certificate with
/// CN = code signed by the CA key verifies it; a wrong code, a replaced code, another signer and a used code are
/// refused with the reason; replacing the certificate resets the verification; a non-CA is refused.
async fn proof_of_possession(backend: Backend) {
    let server = Server::start(backend).await.unwrap();
    let api = Api::new(&server, "owner");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl_root(d, "factory", "Acme factory CA");
    openssl_root(d, "impostor", "Acme factory CA");
    let path = "/certificateAuthorities/Acme-Factory";

    let created = expect_resource(api.put(path, &json!({"certificate": read(d, "factory.pem")})).await, 201).await;
    assert_eq!(created["name"], "Acme-Factory");
    assert_eq!(created["isVerified"], false);
    assert_eq!(created["subject"], "CN=Acme factory CA", "{created}");
    let fingerprint = openssl(d, &["x509", "-in", "factory.pem", "-noout", "-fingerprint", "-sha256"]);
    let fingerprint = fingerprint.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert_eq!(created["sha256Thumbprint"], fingerprint.as_str());
    assert_eq!(pem_bodies(created["certificate"].as_str().unwrap()), pem_bodies(&read(d, "factory.pem")));
    // Names are case-insensitive.
    let fetched = expect_resource(api.get("/certificateAuthorities/acme-factory").await, 200).await;
    assert_eq!(fetched, created);

    // Nothing to verify against before a code is issued.
    let early = proof(d, "early", "anything", "factory");
    let verify = "/certificateAuthorities/acme-factory/verify";
    expect_error(api.post(verify, Some(&json!({"certificate": early}))).await, INVALID_FIELD, "no verification code")
        .await;

    let (_, first) =
        expect_json(api.post("/certificateAuthorities/acme-factory/verificationCode", Some(&json!({}))).await, 200)
            .await;
    let code = first["verificationCode"].as_str().unwrap().to_owned();
    let expires = chrono::DateTime::parse_from_rfc3339(first["expiresDateTimeUtc"].as_str().unwrap()).unwrap();
    let in_an_hour = chrono::Utc::now() + chrono::Duration::hours(1);
    assert!((in_an_hour - expires.to_utc()).num_seconds().abs() < 60, "valid one hour: {first}");

    // Refused: another CN, another signer.
    let wrong_code = proof(d, "wrong-code", "NOT-THE-CODE", "factory");
    expect_error(api.post(verify, Some(&json!({"certificate": wrong_code}))).await, INVALID_FIELD, "verification code")
        .await;
    let wrong_signer = proof(d, "wrong-signer", &code, "impostor");
    expect_error(
        api.post(verify, Some(&json!({"certificate": wrong_signer}))).await,
        INVALID_FIELD,
        "not signed by the CA",
    )
    .await;
    // A new code replaces the old one: a proof for the old code no longer verifies.
    let (_, second) =
        expect_json(api.post("/certificateAuthorities/acme-factory/verificationCode", Some(&json!({}))).await, 200)
            .await;
    let code2 = second["verificationCode"].as_str().unwrap().to_owned();
    assert_ne!(code, code2);
    let old = proof(d, "old", &code, "factory");
    expect_error(api.post(verify, Some(&json!({"certificate": old}))).await, INVALID_FIELD, "verification code").await;
    let still = expect_resource(api.get(path).await, 200).await;
    assert_eq!(still["isVerified"], false);

    // The proof for the current code, as base64 DER this time, verifies; the code is used up.
    proof(d, "good", &code2, "factory");
    openssl(d, &["x509", "-in", "good.pem", "-outform", "DER", "-out", "good.der"]);
    let good = STANDARD.encode(std::fs::read(d.join("good.der")).unwrap());
    let verified = expect_resource(api.post(verify, Some(&json!({"certificate": good}))).await, 200).await;
    assert_eq!(verified["isVerified"], true, "{verified}");
    expect_error(api.post(verify, Some(&json!({"certificate": good}))).await, INVALID_FIELD, "no verification code")
        .await;

    // Sending the same certificate back keeps the verification; another certificate resets it.
    let same = expect_resource(api.put_if_match(path, &verified, verified["etag"].as_str().unwrap()).await, 200).await;
    assert_eq!(same["isVerified"], true, "{same}");
    openssl(d, &["x509", "-in", "impostor.pem", "-outform", "DER", "-out", "impostor.der"]);
    let other = STANDARD.encode(std::fs::read(d.join("impostor.der")).unwrap());
    expect_error(api.put_if_match(path, &json!({"certificate": other}), "stale").await, PRECONDITION_FAILED, "").await;
    let replaced = expect_resource(
        api.put_if_match(path, &json!({"certificate": other}), same["etag"].as_str().unwrap()).await,
        200,
    )
    .await;
    assert_eq!(replaced["isVerified"], false, "{replaced}");

    // Not a CA (openssl x509 -req without extensions), a CA whose keyUsage lacks keyCertSign (it could never
    // verify a device), not a certificate, unknown fields: refused at upload, naming what is wrong.
    expect_error(api.put(path, &json!({"certificate": read(d, "good.pem")})).await, INVALID_FIELD, "not a CA").await;
    openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "no-sign.key"]);
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "no-sign.key",
            "-subj",
            "/CN=Acme CRL signer",
            "-days",
            "30",
            "-out",
            "no-sign.pem",
            "-addext",
            "basicConstraints=critical,CA:true",
            "-addext",
            "keyUsage=critical,digitalSignature,cRLSign",
        ],
    );
    let text = openssl(d, &["x509", "-in", "no-sign.pem", "-noout", "-text"]);
    assert!(text.contains("CA:TRUE") && text.contains("CRL Sign") && !text.contains("Certificate Sign"), "{text}");
    let message = expect_error(
        api.put("/certificateAuthorities/no-sign", &json!({"certificate": read(d, "no-sign.pem")})).await,
        INVALID_FIELD,
        "keyCertSign",
    )
    .await;
    assert!(message.contains("\"CN=Acme CRL signer\" may not sign certificates"), "{message}");
    expect_error(api.get("/certificateAuthorities/no-sign").await, NOT_FOUND, "no-sign").await;
    expect_error(
        api.put(path, &json!({"certificate": "bm90IGEgY2VydGlmaWNhdGU="})).await,
        INVALID_FIELD,
        "certificate",
    )
    .await;
    expect_error(
        api.put(path, &json!({"certificate": read(d, "factory.pem"), "colour": 1})).await,
        INVALID_FIELD,
        "colour",
    )
    .await;

    // Listing pages through every CA once; deletion under If-Match.
    expect_resource(
        api.put("/certificateAuthorities/second", &json!({"certificate": read(d, "factory.pem")})).await,
        201,
    )
    .await;
    let (headers, page1) = expect_json(
        api.request(Method::GET, "/certificateAuthorities").header("x-ms-max-item-count", "1").send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(headers.get("x-ms-item-type").unwrap(), "certificateAuthority");
    let token = headers.get("x-ms-continuation").expect("a second page").to_str().unwrap().to_owned();
    let (headers, page2) = expect_json(
        api.request(Method::GET, "/certificateAuthorities")
            .header("x-ms-max-item-count", "1")
            .header("x-ms-continuation", token)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert!(headers.get("x-ms-continuation").is_none());
    assert_eq!((page1[0]["name"].as_str(), page2[0]["name"].as_str()), (Some("Acme-Factory"), Some("second")));
    let gone = api.delete(path, Some(replaced["etag"].as_str().unwrap())).await;
    assert_eq!(gone.status(), 204);
    expect_error(api.get(path).await, NOT_FOUND, "Acme-Factory").await;
}

/// Proof of possession on SQLite.
#[tokio::test]
async fn proof_of_possession_sqlite() {
    proof_of_possession(Backend::Sqlite).await;
}

/// Proof of possession on PostgreSQL.
#[tokio::test]
async fn proof_of_possession_postgres() {
    proof_of_possession(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Revocation, the fleet view and the CRL

/// The CRL of `ca` from the admin listener, without a token (DER).
async fn public_crl(server: &Server, ca: &str) -> Vec<u8> {
    let response = server.client.get(server.url(&format!("/pki/crl/{ca}"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get("content-type").unwrap(), "application/pkix-crl");
    response.bytes().await.unwrap().to_vec()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A hub without adapter, and an individual symmetric-key enrollment with `key` (both slots) for each of `ids`.
async fn enroll_with_hub(api: &Api<'_>, ids: &[&str], key: &[u8]) {
    let hub = json!({"hostName": "hub.example.com", "kind": "none"});
    expect_resource(api.put("/hubs/hub.example.com", &hub).await, 200).await;
    for id in ids {
        let keys = json!({"primaryKey": STANDARD.encode(key), "secondaryKey": STANDARD.encode(key)});
        let enrollment = json!({"registrationId": id, "attestation": {"type": "symmetricKey", "symmetricKey": keys}});
        expect_resource(api.put(&format!("/enrollments/{id}"), &enrollment).await, 200).await;
    }
}

/// Registers the symmetric-key device `id` with an openssl CSR; returns the serial of the certificate it got
/// (lower-case hex, as openssl prints it).
async fn register_with_csr(server: &Server, dir: &Path, id: &str, key: &[u8]) -> String {
    let done = register_with_csr_done(server, dir, id, key).await;
    let leaf = done["registrationState"]["issuedCertificateChain"][0].as_str().expect("a certificate").to_owned();
    std::fs::write(dir.join(format!("{id}.der")), STANDARD.decode(leaf).unwrap()).unwrap();
    let serial = openssl(dir, &["x509", "-inform", "DER", "-in", &format!("{id}.der"), "-noout", "-serial"]);
    serial.trim().trim_start_matches("serial=").to_ascii_lowercase()
}

const DEVICE_API: &str = "api-version=2025-07-01-preview";

/// Registers the symmetric-key device `id` with an openssl CSR and polls to the end; returns the final operation.
async fn register_with_csr_done(server: &Server, dir: &Path, id: &str, key: &[u8]) -> Value {
    openssl_key_and_csr(dir, id, id);
    openssl(dir, &["req", "-in", &format!("{id}.csr"), "-outform", "DER", "-out", &format!("{id}.csr.der")]);
    let csr = STANDARD.encode(std::fs::read(dir.join(format!("{id}.csr.der"))).unwrap());
    let url = server.device(&format!("/{}/registrations/{id}/register?{DEVICE_API}", server.id_scope));
    let body = json!({"registrationId": id, "csr": csr});
    let response = server.client.put(url).header("Authorization", device_token(server, id, key)).json(&body);
    let (_, accepted) = expect_json(response.send().await.unwrap(), 202).await;
    let operation = accepted["operationId"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, answer) = poll(server, id, key, operation).await;
        if status == 200 {
            return answer;
        }
        assert!(Instant::now() < deadline, "the operation did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A SAS token for the symmetric-key device `id`, valid for an hour.
fn device_token(server: &Server, id: &str, key: &[u8]) -> String {
    sas::sign(&format!("{}%2Fregistrations%2F{id}", server.id_scope), now() + 3600, key, None)
}

/// One poll of the operation `operation` of the symmetric-key device `id`: the status and the body.
async fn poll(server: &Server, id: &str, key: &[u8], operation: &str) -> (u16, Value) {
    let url = server.device(&format!("/{}/registrations/{id}/operations/{operation}?{DEVICE_API}", server.id_scope));
    let response = server.client.get(url).header("Authorization", device_token(server, id, key)).send().await;
    let response = response.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// `POST /registrations/{id}/revoke` revokes the device's certificate with the reason given (once: a second call
/// revokes nothing), the fleet view shows it revoked and filters by status and expiry, the CRL (openssl) lists the
/// serial, PEM on `Accept: application/x-pem-file`, on both listeners without a token.
async fn revocation_and_fleet_view(backend: Backend) {
    let options = Options { args: vec!["--device-rate-limit".into(), "100/10s".into()], ..Default::default() };
    let server = Server::start_with(backend, options).await.unwrap();
    let api = Api::new(&server, "owner");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = [9u8; 32];
    enroll_with_hub(&api, &["meter-1", "meter-2"], &key).await;
    let serial1 = register_with_csr(&server, d, "meter-1", &key).await;
    let serial2 = register_with_csr(&server, d, "meter-2", &key).await;

    // The fleet view: both active, soonest expiry first; filters by status and expiry.
    let (headers, all) = expect_json(api.get("/pki/certificates").await, 200).await;
    assert_eq!(headers.get("x-ms-item-type").unwrap(), "certificate");
    let serials: Vec<&str> = all.as_array().unwrap().iter().map(|c| c["serialNumber"].as_str().unwrap()).collect();
    assert!(serials.contains(&serial1.as_str()) && serials.contains(&serial2.as_str()), "{all}");
    let first = all.as_array().unwrap().iter().find(|c| c["serialNumber"] == serial1.as_str()).unwrap();
    assert_eq!(first["registrationId"], "meter-1");
    assert_eq!(first["deviceId"], "meter-1");
    assert_eq!(first["issuingCA"], "development");
    assert_eq!(first["status"], "active");
    assert!(first.get("revokedDateTimeUtc").is_none(), "{first}");
    let fingerprint =
        openssl(d, &["x509", "-inform", "DER", "-in", "meter-1.der", "-noout", "-fingerprint", "-sha256"]);
    let fingerprint = fingerprint.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert_eq!(first["sha256Thumbprint"], fingerprint.as_str());
    let (_, soon) = expect_json(api.get("/pki/certificates?expiringWithin=1h").await, 200).await;
    assert_eq!(soon, json!([]), "the default validity is 30 days");
    let (_, month) = expect_json(api.get("/pki/certificates?expiringWithin=31d&status=active").await, 200).await;
    assert_eq!(month.as_array().unwrap().len(), 2, "{month}");
    let (headers, page) = expect_json(
        api.request(Method::GET, "/pki/certificates").header("x-ms-max-item-count", "1").send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    let token = headers.get("x-ms-continuation").unwrap().to_str().unwrap().to_owned();
    let next = api
        .request(Method::GET, "/pki/certificates")
        .header("x-ms-max-item-count", "1")
        .header("x-ms-continuation", token)
        .send()
        .await
        .unwrap();
    let (_, page2) = expect_json(next, 200).await;
    assert_ne!(page[0]["serialNumber"], page2[0]["serialNumber"]);
    expect_error(api.get("/pki/certificates?expiringWithin=soon").await, INVALID_HEADER, "expiringWithin").await;
    expect_error(api.get("/pki/certificates?status=expired").await, INVALID_HEADER, "status").await;
    let bad = api.request(Method::GET, "/pki/certificates").header("x-ms-continuation", "bm9wZQ").send().await.unwrap();
    expect_error(bad, INVALID_HEADER, "x-ms-continuation").await;

    // Revocation.
    expect_error(
        api.post("/registrations/meter-1/revoke", Some(&json!({"reason": "stolen"}))).await,
        INVALID_FIELD,
        "reason",
    )
    .await;
    expect_error(api.post("/registrations/nobody/revoke", Some(&json!({}))).await, NOT_FOUND, "nobody").await;
    let (_, revoked) =
        expect_json(api.post("/registrations/Meter-1/revoke", Some(&json!({"reason": "keyCompromise"}))).await, 200)
            .await;
    assert_eq!(revoked["revoked"], json!([serial1]), "{revoked}");
    let (_, again) = expect_json(api.post("/registrations/meter-1/revoke", Some(&json!({}))).await, 200).await;
    assert_eq!(again["revoked"], json!([]), "nothing left to revoke: {again}");
    assert_ne!(again["etag"], revoked["etag"], "each revocation gives the registration a new etag");
    let (_, listed) = expect_json(api.get("/pki/certificates?status=revoked").await, 200).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["serialNumber"], serial1.as_str());
    assert_eq!(listed[0]["revocationReason"], "keyCompromise");
    assert!(listed[0]["revokedDateTimeUtc"].is_string(), "{listed}");

    // The CRL lists it (openssl), DER by default, PEM on request, on both listeners, without a token.
    let (_, development) = expect_json(api.get("/pki/issuingCAs/development").await, 200).await;
    std::fs::write(d.join("development.pem"), development["certificateChain"].as_str().unwrap()).unwrap();
    std::fs::write(d.join("crl.der"), public_crl(&server, "development").await).unwrap();
    let text =
        openssl(d, &["crl", "-inform", "DER", "-in", "crl.der", "-CAfile", "development.pem", "-noout", "-text"]);
    assert!(text.contains(&serial1.to_ascii_uppercase()), "{serial1} is not listed:\n{text}");
    assert!(!text.contains(&serial2.to_ascii_uppercase()), "{serial2} is listed:\n{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    for url in [server.url("/pki/crl/development"), server.device("/pki/crl/development")] {
        let response = server.client.get(&url).header("Accept", "application/x-pem-file").send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let pem = response.text().await.unwrap();
        assert!(pem.starts_with("-----BEGIN X509 CRL-----"), "{url}: {pem}");
        std::fs::write(d.join("crl.pem"), pem).unwrap();
        let text = openssl(d, &["crl", "-in", "crl.pem", "-noout", "-text"]);
        assert!(text.contains(&serial1.to_ascii_uppercase()), "{url}: {text}");
    }
    let missing = server.client.get(server.url("/pki/crl/nope")).send().await.unwrap();
    expect_error(missing, NOT_FOUND, "nope").await;
}

/// Revocation and the fleet view on SQLite.
#[tokio::test]
async fn revocation_and_fleet_view_sqlite() {
    revocation_and_fleet_view(Backend::Sqlite).await;
}

/// Revocation and the fleet view on PostgreSQL.
#[tokio::test]
async fn revocation_and_fleet_view_postgres() {
    revocation_and_fleet_view(Backend::Postgres).await;
}

/// The development CA's CRL, as a fresh install serves it: DER that `openssl crl -inform DER` parses (empty, with
/// a CRL number and a next update), and PEM on `Accept: application/x-pem-file`.
async fn development_crl_parses(backend: Backend) {
    let server = Server::start(backend).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("crl.der"), public_crl(&server, "development").await).unwrap();
    let text = openssl(d, &["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"]);
    assert!(text.contains("Issuer: CN = zerotouch development issuing CA"), "{text}");
    assert!(text.contains("X509v3 CRL Number") && text.contains("Next Update"), "{text}");
    assert!(text.contains("No Revoked Certificates"), "{text}");
    let response =
        server.client.get(server.url("/pki/crl/development")).header("Accept", "application/x-pem-file").send().await;
    let pem = response.unwrap().text().await.unwrap();
    std::fs::write(d.join("crl.pem"), &pem).unwrap();
    assert!(openssl(d, &["crl", "-in", "crl.pem", "-noout", "-text"]).contains("X509v3 CRL Number"));
}

/// The development CRL on SQLite.
#[tokio::test]
async fn development_crl_parses_sqlite() {
    development_crl_parses(Backend::Sqlite).await;
}

/// The development CRL on PostgreSQL.
#[tokio::test]
async fn development_crl_parses_postgres() {
    development_crl_parses(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Roles

/// Readers read the PKI but change nothing; operators revoke but manage no CA (403001); nobody needs a token
/// for the trust bundle and the CRL, and everything else needs one.
async fn roles(backend: Backend) {
    let server = Server::start(backend).await.unwrap();
    let reader = Api::new(&server, "reader");
    let operator = Api::new(&server, "operator");
    let owner = Api::new(&server, "owner");
    let dir = tempfile::tempdir().unwrap();
    openssl_root(dir.path(), "ca", "Role CA");
    let ca = json!({"certificate": read(dir.path(), "ca.pem")});
    let new_ca = json!({"name": "ca-roles"});

    for api in [&reader, &operator] {
        expect_error(api.post("/pki/issuingCAs", Some(&new_ca)).await, FORBIDDEN, "issuing CAs").await;
        expect_error(api.put("/pki/issuingCAs/development", &json!({"certificateChain": ""})).await, FORBIDDEN, "")
            .await;
        expect_error(api.post("/pki/issuingCAs/development/activate", Some(&json!({}))).await, FORBIDDEN, "").await;
        expect_error(api.delete("/pki/issuingCAs/development", None).await, FORBIDDEN, "").await;
        expect_error(api.put("/certificateAuthorities/ca", &ca).await, FORBIDDEN, "").await;
        expect_error(api.post("/certificateAuthorities/ca/verificationCode", Some(&json!({}))).await, FORBIDDEN, "")
            .await;
        expect_error(api.post("/certificateAuthorities/ca/verify", Some(&ca)).await, FORBIDDEN, "").await;
        expect_error(api.delete("/certificateAuthorities/ca", None).await, FORBIDDEN, "").await;
    }
    expect_error(reader.post("/registrations/dev-1/revoke", Some(&json!({}))).await, FORBIDDEN, "").await;
    // An operator may revoke (here: a registration that does not exist).
    expect_error(operator.post("/registrations/dev-1/revoke", Some(&json!({}))).await, NOT_FOUND, "dev-1").await;

    // Readers read.
    expect_json(reader.get("/pki/issuingCAs").await, 200).await;
    expect_resource(reader.get("/pki/issuingCAs/development").await, 200).await;
    expect_json(reader.get("/pki/certificates").await, 200).await;
    expect_resource(owner.put("/certificateAuthorities/ca", &ca).await, 201).await;
    expect_json(reader.get("/certificateAuthorities").await, 200).await;
    expect_resource(reader.get("/certificateAuthorities/ca").await, 200).await;

    // Tokens: none needed for the public documents, required for the rest.
    for path in ["/pki/trustBundle", "/pki/crl/development"] {
        assert_eq!(server.client.get(server.url(path)).send().await.unwrap().status(), 200, "{path}");
    }
    for path in ["/pki/issuingCAs", "/pki/certificates", "/certificateAuthorities"] {
        expect_error(server.client.get(server.url(path)).send().await.unwrap(), 401_001, "").await;
    }
}

/// Roles on SQLite.
#[tokio::test]
async fn roles_sqlite() {
    roles(Backend::Sqlite).await;
}

/// Roles on PostgreSQL.
#[tokio::test]
async fn roles_postgres() {
    roles(Backend::Postgres).await;
}
