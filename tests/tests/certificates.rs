#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Operational certificates and X.509 attestation, with the independent clients of issue #4: `openssl` makes every
//! key, CSR and factory certificate and checks every certificate and CRL the service issues; `curl` is the X.509
//! device (`--cert/--key`) for registration and for EST renewal.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zerotouch_attest::sas;
use zerotouch_tests::device::{API, curl, curl_register, key_and_csr, now, sas_register};
use zerotouch_tests::openssl::{CA_EXTENSIONS, make_ca, make_device, openssl};
use zerotouch_tests::{Backend, Options, Server};

// ---------------------------------------------------------------------------------------------------------------
// Tools

/// Whether `openssl` succeeds, and what it printed (stdout and stderr).
fn openssl_try(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// Writes base64 DER certificates as one PEM file.
fn write_pem_chain(path: &Path, chain: &[Value]) {
    let mut pem = String::new();
    for cert in chain {
        let b64 = cert.as_str().unwrap();
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    std::fs::write(path, pem).unwrap();
}

/// The admin API as an owner.
struct Admin<'a> {
    server: &'a Server,
    token: String,
}

impl<'a> Admin<'a> {
    fn new(server: &'a Server) -> Self {
        Self { server, token: server.token("owner").unwrap() }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.server.client.request(method, self.server.url(path)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, body) = self.send(method.clone(), path, body).await;
        assert!((200..300).contains(&status), "{method} {path}: {status} {body}");
        body
    }

    async fn hub(&self, host: &str) {
        let body = json!({"hostName": host, "kind": "none", "allocationWeight": 1, "applyAllocationPolicy": true});
        self.ok(reqwest::Method::PUT, &format!("/hubs/{host}"), Some(body)).await;
    }
}

/// Fetches the trust bundle (public, no token) into `dir/bundle.pem`.
async fn fetch_bundle(server: &Server, dir: &Path) -> PathBuf {
    let pem = server.client.get(server.url("/pki/trustBundle")).send().await.unwrap().text().await.unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
    let path = dir.join("bundle.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

fn start_options() -> Options {
    Options { args: vec!["--device-rate-limit".into(), "100/10s".into()], ..Default::default() }
}

// ---------------------------------------------------------------------------------------------------------------
// Issuance from a CSR, renewal, revocation

/// A symmetric-key device sends an openssl CSR with register and gets a chain that openssl verifies against the
/// trust bundle, with the profile of issue #4 and the enrollment's validity; it renews by registering again with
/// its operational certificate (curl) and by EST simplereenroll; after revocation neither works and the CRL lists
/// the serials.
async fn issuance_renewal_and_revocation(backend: Backend) {
    let server = Server::start_with(backend, start_options()).await.unwrap();
    let admin = Admin::new(&server);
    admin.hub("hub-a.example.com").await;
    let key = [7u8; 32];
    let enrollment = json!({
        "registrationId": "Sensor-1",
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(key), "secondaryKey": STANDARD.encode([8u8; 32])}},
        "certificatePolicy": {"validityDays": 10},
    });
    admin.ok(reqwest::Method::PUT, "/enrollments/Sensor-1", Some(enrollment)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // First registration with a P-256 CSR.
    let (device_key, csr) = key_and_csr(d, "first", "Sensor-1", "prime256v1");
    let (status, op) = sas_register(&server, "Sensor-1", &key, json!({"registrationId": "Sensor-1", "csr": csr})).await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["status"], "assigned", "{op}");
    let chain = op["registrationState"]["issuedCertificateChain"].as_array().expect("issuedCertificateChain").clone();
    assert_eq!(chain.len(), 3, "leaf, issuing CA, root: {op}");
    write_pem_chain(&d.join("leaf.pem"), &chain[..1]);
    write_pem_chain(&d.join("ica.pem"), &chain[1..2]);
    write_pem_chain(&d.join("first-chain.pem"), &chain);
    let bundle = fetch_bundle(&server, d).await;
    let verified = openssl(
        d,
        &["verify", "-CAfile", bundle.to_str().unwrap(), "-untrusted", "ica.pem", "-purpose", "sslclient", "leaf.pem"],
    );
    assert!(verified.contains("leaf.pem: OK"), "{verified}");
    let text = openssl(d, &["x509", "-in", "leaf.pem", "-noout", "-text"]);
    assert!(text.contains("Subject: CN = Sensor-1"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CRL Distribution Points"), "{text}");
    assert!(openssl_try(d, &["x509", "-in", "leaf.pem", "-noout", "-checkend", &(9 * 86400).to_string()]).0);
    assert!(
        !openssl_try(d, &["x509", "-in", "leaf.pem", "-noout", "-checkend", &(11 * 86400).to_string()]).0,
        "validityDays 10"
    );
    let first_serial = openssl(d, &["x509", "-in", "leaf.pem", "-noout", "-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase();
    // The status lookup never carries the chain (§8).
    let sr = format!("{}%2Fregistrations%2FSensor-1", server.id_scope);
    let token = sas::sign(&sr, now() + 3600, &key, None);
    let lookup: Value = server
        .client
        .post(server.device(&format!("/{}/registrations/Sensor-1?{API}", server.id_scope)))
        .header("Authorization", &token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(lookup["status"], "assigned", "{lookup}");
    assert!(lookup.get("issuedCertificateChain").is_none(), "{lookup}");

    // Renewal by registering again with the operational certificate (no SAS), a P-384 key this time.
    let (_, csr2) = key_and_csr(d, "second", "Sensor-1", "secp384r1");
    let (status, op) =
        curl_register(&server, "Sensor-1", &d.join("first-chain.pem"), &device_key, json!({"csr": csr2}));
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["registrationState"]["assignedHub"], "hub-a.example.com", "keeps its hub: {op}");
    assert_eq!(op["registrationState"]["deviceId"], "Sensor-1");
    assert!(op["registrationState"]["x509"]["certificateInfo"]["sha256Thumbprint"].is_string(), "{op}");
    let chain2 = op["registrationState"]["issuedCertificateChain"].as_array().unwrap().clone();
    write_pem_chain(&d.join("second-chain.pem"), &chain2);
    write_pem_chain(&d.join("second-leaf.pem"), &chain2[..1]);
    let text = openssl(d, &["x509", "-in", "second-leaf.pem", "-noout", "-text"]);
    assert!(text.contains("NIST CURVE: P-384"), "{text}");

    // EST renewal with curl, authenticated by the second certificate.
    let (_, csr3) = key_and_csr(d, "third", "Sensor-1", "prime256v1");
    let (status, pkcs7) = curl(
        &server,
        "POST",
        "/.well-known/est/simplereenroll",
        &d.join("second-chain.pem"),
        &d.join("second.key"),
        &csr3,
        "application/pkcs10",
    );
    assert_eq!(status, 200, "{pkcs7}");
    std::fs::write(d.join("third.p7.b64"), &pkcs7).unwrap();
    openssl(d, &["base64", "-d", "-in", "third.p7.b64", "-out", "third.p7"]);
    let printed = openssl(d, &["pkcs7", "-inform", "DER", "-in", "third.p7", "-print_certs"]);
    assert!(printed.contains("subject=CN = Sensor-1"), "{printed}");
    let (status, cacerts) = curl(
        &server,
        "GET",
        "/.well-known/est/cacerts",
        &d.join("second-chain.pem"),
        &d.join("second.key"),
        "",
        "text/plain",
    );
    assert_eq!(status, 200);
    std::fs::write(d.join("ca.p7.b64"), &cacerts).unwrap();
    openssl(d, &["base64", "-d", "-in", "ca.p7.b64", "-out", "ca.p7"]);
    assert_eq!(openssl(d, &["pkcs7", "-inform", "DER", "-in", "ca.p7", "-print_certs"]).matches("subject=").count(), 2);

    // Issue #17: only the newest certificate authenticates. The first (superseded by the second) can no longer
    // register, and the second (superseded by the third) can no longer renew over EST: a copy left behind or
    // stolen mints nothing.
    std::fs::write(d.join("third-chain.pem"), printed.as_bytes()).unwrap();
    let (status, op) = curl_register(&server, "Sensor-1", &d.join("first-chain.pem"), &device_key, json!({}));
    assert_eq!((status, &op["errorCode"]), (401, &json!(401016)), "{op}");
    let (_, csr4) = key_and_csr(d, "fourth", "Sensor-1", "prime256v1");
    let est_with = |chain: &str, key: &str| {
        let (status, body) = curl(
            &server,
            "POST",
            "/.well-known/est/simplereenroll",
            &d.join(chain),
            &d.join(key),
            &csr4,
            "application/pkcs10",
        );
        (status, serde_json::from_str::<Value>(&body).map(|b| b["errorCode"].clone()).unwrap_or(Value::Null))
    };
    assert_eq!(est_with("second-chain.pem", "second.key"), (401, json!(401016)));

    // Revocation: every certificate of the device not revoked yet, under a new etag of the registration; then
    // neither renewal path works, with any of them.
    let before = admin.ok(reqwest::Method::GET, "/registrations/Sensor-1", None).await["etag"].clone();
    let revoked = admin
        .ok(reqwest::Method::POST, "/registrations/Sensor-1/revoke", Some(json!({"reason": "keyCompromise"})))
        .await;
    assert_eq!(revoked["revoked"].as_array().unwrap().len(), 3, "the superseded ones too: {revoked}");
    let after = admin.ok(reqwest::Method::GET, "/registrations/Sensor-1", None).await["etag"].clone();
    assert_ne!(after, before, "revoking gives the registration a new etag");
    assert_eq!(revoked["etag"], after, "{revoked}");
    assert_eq!(est_with("third-chain.pem", "third.key"), (401, json!(401015)));
    assert_eq!(est_with("second-chain.pem", "second.key"), (401, json!(401015)));
    let (status, op) = curl_register(&server, "Sensor-1", &d.join("third-chain.pem"), &d.join("third.key"), json!({}));
    assert_eq!((status, &op["errorCode"]), (401, &json!(401015)), "{op}");

    // The CRL (DER, as relying parties fetch it) lists the revoked serial, verified by the issuing CA.
    let crl = server.client.get(server.device("/pki/crl/development")).send().await.unwrap().bytes().await.unwrap();
    std::fs::write(d.join("crl.der"), &crl).unwrap();
    let crl_text = openssl(d, &["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text", "-CAfile", "ica.pem"]);
    let second_serial = openssl(d, &["x509", "-in", "second-leaf.pem", "-noout", "-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_owned();
    assert!(crl_text.to_ascii_lowercase().contains(&second_serial.to_ascii_lowercase()), "{crl_text}");
    assert!(crl_text.contains("Key Compromise"), "{crl_text}");
    assert_ne!(first_serial, second_serial.to_ascii_lowercase());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_renewal_and_revocation_sqlite() {
    issuance_renewal_and_revocation(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuance_renewal_and_revocation_postgres() {
    issuance_renewal_and_revocation(Backend::Postgres).await;
}

/// Every CSR the profile refuses gets 400210 naming the problem, and nothing is written: no registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_csrs_leave_nothing_written() {
    let server = Server::start_with(Backend::Sqlite, start_options()).await.unwrap();
    let admin = Admin::new(&server);
    admin.hub("hub-a.example.com").await;
    let key = [9u8; 32];
    let doc = json!({
        "registrationId": "Meter-1",
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(key), "secondaryKey": STANDARD.encode([1u8; 32])}},
    });
    admin.ok(reqwest::Method::PUT, "/enrollments/Meter-1", Some(doc)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, other_cn) = key_and_csr(d, "other", "Meter-2", "prime256v1");
    openssl(d, &["genrsa", "-out", "rsa1024.key", "1024"]);
    openssl(
        d,
        &["req", "-new", "-key", "rsa1024.key", "-subj", "/CN=Meter-1", "-outform", "DER", "-out", "rsa1024.der"],
    );
    let rsa1024 = STANDARD.encode(std::fs::read(d.join("rsa1024.der")).unwrap());
    let (_, good) = key_and_csr(d, "good", "Meter-1", "prime256v1");
    let mut corrupt = STANDARD.decode(&good).unwrap();
    let last = corrupt.len() - 3;
    corrupt[last] ^= 0x55;
    let cases = [
        ("another CN", other_cn, "Meter-2"),
        ("RSA-1024", rsa1024, "RSA"),
        ("a bad signature", STANDARD.encode(&corrupt), "signature"),
        ("not base64", "@@@".to_owned(), "base64"),
    ];
    for (what, csr, word) in cases {
        let (status, body) = sas_register(&server, "Meter-1", &key, json!({"csr": csr})).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["errorCode"], 400210, "{what}: {body}");
        assert!(body["message"].as_str().unwrap().contains(word), "{what}: {body}");
    }
    let (status, body) = admin.send(reqwest::Method::GET, "/registrations/Meter-1", None).await;
    assert_eq!(status, 404, "no registration was written: {body}");
    // The good CSR then works.
    let (status, op) = sas_register(&server, "Meter-1", &key, json!({"csr": good})).await;
    assert_eq!((status, op["status"].as_str()), (200, Some("assigned")), "{op}");
}

// ---------------------------------------------------------------------------------------------------------------
// X.509 attestation

/// X.509 devices register with curl: an individual enrollment (its certificate by thumbprint, a deviceId), a group
/// by the CA nearest the leaf in the chain the device sends; refused: an unknown CA (401012), a chain to a CA
/// whose proof of possession is not done (401013), a certificate of another device's enrollment (401002); a
/// disabled group answers `disabled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_devices_register_with_curl() {
    let server = Server::start_with(Backend::Sqlite, start_options()).await.unwrap();
    let admin = Admin::new(&server);
    admin.hub("hub-a.example.com").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "factory-root", None);
    make_ca(d, "factory-ica", Some("factory-root"));
    make_ca(d, "line-ica", Some("factory-root"));
    make_ca(d, "stranger-root", None);
    let pem = |name: &str| std::fs::read_to_string(d.join(format!("{name}.pem"))).unwrap();

    // Individual: a self-contained device certificate, matched by thumbprint.
    make_device(d, "solo", "solo-1", "factory-ica");
    let doc = json!({
        "registrationId": "solo-1", "deviceId": "solo-device",
        "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": pem("solo")}}}},
    });
    admin.ok(reqwest::Method::PUT, "/enrollments/solo-1", Some(doc)).await;
    let (status, op) = curl_register(&server, "solo-1", &d.join("solo.pem"), &d.join("solo.key"), json!({}));
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["status"], "assigned", "{op}");
    assert_eq!(op["registrationState"]["deviceId"], "solo-device");
    let info = &op["registrationState"]["x509"]["certificateInfo"];
    let fingerprint = openssl(d, &["x509", "-in", "solo.pem", "-noout", "-fingerprint", "-sha256"]);
    assert_eq!(
        fingerprint.trim().rsplit('=').next().unwrap().replace(':', ""),
        info["sha256Thumbprint"].as_str().unwrap(),
        "{op}"
    );

    // Its operational certificate names the device id (solo-device), not the registration id, and still renews.
    let (solo_op_key, csr) = key_and_csr(d, "solo-op", "solo-1", "prime256v1");
    let (status, op) = curl_register(&server, "solo-1", &d.join("solo.pem"), &d.join("solo.key"), json!({"csr": csr}));
    assert_eq!(status, 200, "{op}");
    write_pem_chain(
        &d.join("solo-op-chain.pem"),
        op["registrationState"]["issuedCertificateChain"].as_array().unwrap(),
    );
    let subject = openssl(d, &["x509", "-in", "solo-op-chain.pem", "-noout", "-subject"]);
    assert!(subject.contains("CN = solo-device"), "{subject}");
    let (solo_op2_key, csr) = key_and_csr(d, "solo-op2", "solo-1", "prime256v1");
    let (status, op) =
        curl_register(&server, "solo-1", &d.join("solo-op-chain.pem"), &solo_op_key, json!({"csr": csr}));
    assert_eq!((status, op["status"].as_str()), (200, Some("assigned")), "{op}");
    write_pem_chain(
        &d.join("solo-op2-chain.pem"),
        op["registrationState"]["issuedCertificateChain"].as_array().unwrap(),
    );
    let (_, csr) = key_and_csr(d, "solo-op3", "solo-1", "prime256v1");
    let (status, body) = curl(
        &server,
        "POST",
        "/.well-known/est/simplereenroll",
        &d.join("solo-op2-chain.pem"),
        &solo_op2_key,
        &csr,
        "application/pkcs10",
    );
    assert_eq!(status, 200, "EST finds the registration by the certificate, not its CN: {body}");

    // Group by the factory intermediate; the device sends leaf + intermediate; with a CSR it gets a certificate.
    std::fs::write(d.join("line-chain-unused"), "").unwrap();
    let group = json!({
        "enrollmentGroupId": "factory",
        "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": pem("factory-ica")}}}},
    });
    admin.ok(reqwest::Method::PUT, "/enrollmentGroups/factory", Some(group)).await;
    make_device(d, "g1", "widget-1", "factory-ica");
    std::fs::write(d.join("g1-chain.pem"), pem("g1") + &pem("factory-ica")).unwrap();
    let (_, csr) = key_and_csr(d, "g1-op", "widget-1", "prime256v1");
    let (status, op) =
        curl_register(&server, "widget-1", &d.join("g1-chain.pem"), &d.join("g1.key"), json!({"csr": csr}));
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["status"], "assigned", "{op}");
    assert_eq!(op["registrationState"]["x509"]["enrollmentGroupId"], "factory", "{op}");
    assert!(
        op["registrationState"]["x509"]["signingCertificateInfo"]["subjectName"]
            .as_str()
            .unwrap()
            .contains("factory-ica")
    );
    assert_eq!(op["registrationState"]["issuedCertificateChain"].as_array().unwrap().len(), 3);

    // EST simpleenroll with the factory certificate: a certificate for the same device, from our issuing CA.
    let (_, est_csr) = key_and_csr(d, "g1-est", "widget-1", "prime256v1");
    let (status, pkcs7) = curl(
        &server,
        "POST",
        "/.well-known/est/simpleenroll",
        &d.join("g1-chain.pem"),
        &d.join("g1.key"),
        &est_csr,
        "application/pkcs10",
    );
    assert_eq!(status, 200, "{pkcs7}");
    std::fs::write(d.join("g1-est.p7.b64"), &pkcs7).unwrap();
    openssl(d, &["base64", "-d", "-in", "g1-est.p7.b64", "-out", "g1-est.p7"]);
    let printed = openssl(d, &["pkcs7", "-inform", "DER", "-in", "g1-est.p7", "-print_certs"]);
    assert!(
        printed.contains("subject=CN = widget-1") && printed.contains("issuer=CN = zerotouch development issuing CA"),
        "{printed}"
    );
    // simplereenroll takes only an operational certificate, not the factory one.
    let (status, body) = curl(
        &server,
        "POST",
        "/.well-known/est/simplereenroll",
        &d.join("g1-chain.pem"),
        &d.join("g1.key"),
        &est_csr,
        "application/pkcs10",
    );
    assert_eq!(status, 401, "{body}");

    // The group's CA replaced: the chain that verified a moment ago (remembered for the device's next requests) is
    // refused at once, and accepted again once the CA is back.
    let mut factory = admin.ok(reqwest::Method::GET, "/enrollmentGroups/factory", None).await;
    let primary = |group: &mut Value, name: &str| {
        group["attestation"]["x509"]["signingCertificates"]["primary"] = json!({"certificate": pem(name)});
    };
    primary(&mut factory, "line-ica");
    let mut factory = admin.ok(reqwest::Method::PUT, "/enrollmentGroups/factory", Some(factory)).await;
    let (status, body) = curl_register(&server, "widget-1", &d.join("g1-chain.pem"), &d.join("g1.key"), json!({}));
    assert_eq!((status, body["errorCode"].as_u64()), (401, Some(401012)), "{body}");
    primary(&mut factory, "factory-ica");
    admin.ok(reqwest::Method::PUT, "/enrollmentGroups/factory", Some(factory)).await;
    let (status, op) = curl_register(&server, "widget-1", &d.join("g1-chain.pem"), &d.join("g1.key"), json!({}));
    assert_eq!((status, op["status"].as_str()), (200, Some("assigned")), "{op}");

    // A chain to a CA no enrollment names.
    make_device(d, "lost", "lost-1", "stranger-root");
    let (status, body) = curl_register(&server, "lost-1", &d.join("lost.pem"), &d.join("lost.key"), json!({}));
    assert_eq!((status, body["errorCode"].as_u64()), (401, Some(401012)), "{body}");
    // EST authenticates before it reads the body: that device's garbage is refused as unauthenticated, not as a CSR.
    let (status, body) = curl(
        &server,
        "POST",
        "/.well-known/est/simpleenroll",
        &d.join("lost.pem"),
        &d.join("lost.key"),
        "@@@",
        "application/pkcs10",
    );
    assert_eq!(status, 401, "{body}");

    // Another device's certificate under its own registration id: the CN must be the registration id.
    let (status, body) = curl_register(&server, "widget-2", &d.join("g1-chain.pem"), &d.join("g1.key"), json!({}));
    assert_eq!((status, body["errorCode"].as_u64()), (401, Some(401002)), "{body}");

    // A group by an uploaded CA: refused until proof of possession, then accepted.
    let (status, body) = admin
        .send(reqwest::Method::PUT, "/certificateAuthorities/line", Some(json!({"certificate": pem("line-ica")})))
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let group = json!({
        "enrollmentGroupId": "line",
        "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "line"}}},
    });
    admin.ok(reqwest::Method::PUT, "/enrollmentGroups/line", Some(group)).await;
    make_device(d, "l1", "gadget-1", "line-ica");
    std::fs::write(d.join("l1-chain.pem"), pem("l1") + &pem("line-ica")).unwrap();
    let (status, body) = curl_register(&server, "gadget-1", &d.join("l1-chain.pem"), &d.join("l1.key"), json!({}));
    assert_eq!((status, body["errorCode"].as_u64()), (401, Some(401013)), "{body}");
    let code = admin.ok(reqwest::Method::POST, "/certificateAuthorities/line/verificationCode", None).await;
    let code = code["verificationCode"].as_str().unwrap().to_owned();
    make_device(d, "proof", &code, "line-ica");
    admin
        .ok(reqwest::Method::POST, "/certificateAuthorities/line/verify", Some(json!({"certificate": pem("proof")})))
        .await;
    // Groups and CAs are cached for up to two seconds.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, op) = curl_register(&server, "gadget-1", &d.join("l1-chain.pem"), &d.join("l1.key"), json!({}));
    assert_eq!((status, op["status"].as_str()), (200, Some("assigned")), "{op}");

    // A disabled group: the device learns it is disabled.
    let mut group = admin.ok(reqwest::Method::GET, "/enrollmentGroups/factory", None).await;
    group["provisioningStatus"] = json!("disabled");
    admin.ok(reqwest::Method::PUT, "/enrollmentGroups/factory", Some(group)).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    make_device(d, "g2", "widget-2", "factory-ica");
    std::fs::write(d.join("g2-chain.pem"), pem("g2") + &pem("factory-ica")).unwrap();
    let (status, op) = curl_register(&server, "widget-2", &d.join("g2-chain.pem"), &d.join("g2.key"), json!({}));
    assert_eq!((status, op["status"].as_str()), (200, Some("disabled")), "{op}");
}

/// Extensions of an attacker's CA certificate: a CA, without key identifiers (so that names alone link the chain
/// and nothing spares the verifier a signature check).
const HOSTILE_CA_EXTENSIONS: &str = "basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign\n\
                                     subjectKeyIdentifier=none\nauthorityKeyIdentifier=none\n";
/// Extensions of the attacker's device certificate: for TLS clients, without key identifiers.
const HOSTILE_DEVICE_EXTENSIONS: &str = "basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\n\
                                         extendedKeyUsage=clientAuth\nsubjectKeyIdentifier=none\n\
                                         authorityKeyIdentifier=none\n";

/// An attacker's certificate `{name}.pem` for CN `cn` with the key `{key}.key`, signed by `{signer}.key` under the
/// issuer name of `{issuer}.pem` (or self-signed by its own key when `issuer` is `None`), without key identifiers: a
/// CA certificate, or the device certificate when `issuer` is given and `cn` starts with "hostile".
fn hostile_certificate(d: &Path, name: &str, cn: &str, key: &str, issuer: Option<(&str, &str)>, serial: u32) {
    let extensions = if cn.starts_with("hostile") { HOSTILE_DEVICE_EXTENSIONS } else { HOSTILE_CA_EXTENSIONS };
    std::fs::write(d.join("hostile.ext"), extensions).unwrap();
    let (csr, pem, key) = (format!("{name}.csr"), format!("{name}.pem"), format!("{key}.key"));
    openssl(d, &["req", "-new", "-key", &key, "-subj", &format!("/CN={cn}"), "-out", &csr]);
    let serial = serial.to_string();
    let mut args = vec!["x509", "-req", "-in", &csr, "-days", "30", "-extfile", "hostile.ext", "-set_serial", &serial];
    let (issuer_pem, signer_key) = issuer.map(|(i, k)| (format!("{i}.pem"), format!("{k}.key"))).unzip();
    match (&issuer_pem, &signer_key) {
        (Some(ca), Some(ca_key)) => args.extend(["-CA", ca, "-CAkey", ca_key]),
        _ => args.extend(["-key", &key]),
    }
    args.extend(["-out", &pem]);
    openssl(d, &args);
}

/// Issue 16 point 6: before a device is authenticated, its chain is judged against every CA of every X.509 group,
/// so an attacker chooses how many signatures the service checks. Against four groups, a device presents the
/// longest chain allowed (a device certificate and seven CA certificates, all bearing the name of an enrolled CA,
/// without key identifiers):
/// - with RSA-8192 keys (each link verifies: the old search checked 1 + 3 x 7 = 22 signatures, 21 of them under
///   RSA-8192 keys): refused with 401014, naming the key size, before any signature check;
/// - with a different P-256 key per certificate, ordered so that at every level the certificate that verifies is
///   tried last (the old search checked 1 + 3 x 28 = 85 signatures): refused with 401014 once the search has
///   spent its 16 signature checks.
/// Both answers come quickly, and a legitimate device of one of the groups still registers before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_chains_are_refused_before_costly_signature_checks() {
    let server = Server::start_with(Backend::Sqlite, start_options()).await.unwrap();
    let admin = Admin::new(&server);
    admin.hub("hub-a.example.com").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pem = |name: &str| std::fs::read_to_string(d.join(format!("{name}.pem"))).unwrap();
    for i in 1..=4 {
        make_ca(d, &format!("fleet-ca-{i}"), None);
        let group = json!({
            "enrollmentGroupId": format!("fleet-{i}"),
            "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": pem(&format!("fleet-ca-{i}"))}}}},
        });
        admin.ok(reqwest::Method::PUT, &format!("/enrollmentGroups/fleet-{i}"), Some(group)).await;
    }
    make_device(d, "good", "good-1", "fleet-ca-2");
    let (status, op) = curl_register(&server, "good-1", &d.join("good.pem"), &d.join("good.key"), json!({}));
    assert_eq!((status, op["status"].as_str()), (200, Some("assigned")), "{op}");
    assert_eq!(op["registrationState"]["x509"]["enrollmentGroupId"], "fleet-2", "{op}");

    // The device's own key, and the attacker's RSA-8192 key (one for every CA certificate: each link verifies).
    openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "device.key"]);
    openssl(d, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:8192", "-out", "big.key"]);
    let mut chain = String::new();
    for n in 1..=7 {
        hostile_certificate(d, &format!("big-{n}"), "fleet-ca-1", "big", None, n);
    }
    hostile_certificate(d, "big-leaf", "hostile-1", "device", Some(("big-1", "big")), 100);
    chain.push_str(&pem("big-leaf"));
    for n in 1..=7 {
        chain.push_str(&pem(&format!("big-{n}")));
    }
    std::fs::write(d.join("big-chain.pem"), chain).unwrap();
    let started = Instant::now();
    let (status, body) =
        curl_register(&server, "hostile-1", &d.join("big-chain.pem"), &d.join("device.key"), json!({}));
    let big_took = started.elapsed();
    assert_eq!((status, body["errorCode"].as_u64()), (401, Some(401014)), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("RSA-8192") && message.contains("4096"), "{message}");

    // Seven P-256 keys: k0 signs the first CA certificate, k(n-1) the n-th, k7 the device certificate; presented
    // as device, 1, 2, ..., 7, the certificate that verifies is the last one tried at every level.
    for n in 0..=7 {
        openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &format!("k{n}.key")]);
    }
    hostile_certificate(d, "c0", "fleet-ca-1", "k0", None, 200);
    for n in 1..=7 {
        let previous = format!("c{}", n - 1);
        let signer = format!("k{}", n - 1);
        hostile_certificate(d, &format!("c{n}"), "fleet-ca-1", &format!("k{n}"), Some((&previous, &signer)), 200 + n);
    }
    hostile_certificate(d, "deep-leaf", "hostile-2", "device", Some(("c7", "k7")), 300);
    let mut chain = pem("deep-leaf");
    for n in 1..=7 {
        chain.push_str(&pem(&format!("c{n}")));
    }
    std::fs::write(d.join("deep-chain.pem"), chain).unwrap();
    let started = Instant::now();
    let (status, body) =
        curl_register(&server, "hostile-2", &d.join("deep-chain.pem"), &d.join("device.key"), json!({}));
    let deep_took = started.elapsed();
    assert_eq!((status, body["errorCode"].as_u64()), (401, Some(401014)), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("more than 16 signature checks"), "{message}");

    // Quickly: each answer (a curl process, a TLS handshake and the request) within two seconds on a loaded CI.
    for (what, took) in [("RSA-8192", big_took), ("deep", deep_took)] {
        assert!(took < Duration::from_secs(2), "the {what} chain took {took:?}");
    }
    // The legitimate device of a group still registers.
    make_device(d, "good2", "good-2", "fleet-ca-3");
    let (status, op) = curl_register(&server, "good-2", &d.join("good2.pem"), &d.join("good2.key"), json!({}));
    assert_eq!((status, op["status"].as_str()), (200, Some("assigned")), "{op}");
    assert_eq!(op["registrationState"]["x509"]["enrollmentGroupId"], "fleet-3", "{op}");
}

// ---------------------------------------------------------------------------------------------------------------
// Rotation, expiry, disabled devices

/// Signs `{name}.csr.pem` (a CA CSR from the service) with the openssl root `root` into `{name}.pem`.
fn sign_ca_csr(dir: &Path, name: &str, root: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), CA_EXTENSIONS).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr.pem"),
            "-CA",
            &format!("{root}.pem"),
            "-CAkey",
            &format!("{root}.key"),
            "-CAcreateserial",
            "-days",
            "60",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// Rotation (issue #4): a certificate issued under the development CA; a second issuing CA made by the service,
/// signed by an openssl root, uploaded and activated; the old certificate still renews (EST), and the new
/// certificate comes from the second CA; the trust bundle holds both roots; the first CA's CRL is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_certificates_renewing() {
    let server = Server::start_with(Backend::Sqlite, start_options()).await.unwrap();
    let admin = Admin::new(&server);
    admin.hub("hub-a.example.com").await;
    let key = [5u8; 32];
    let doc = json!({
        "registrationId": "Rotor-1",
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(key), "secondaryKey": STANDARD.encode([6u8; 32])}},
    });
    admin.ok(reqwest::Method::PUT, "/enrollments/Rotor-1", Some(doc)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (device_key, csr) = key_and_csr(d, "one", "Rotor-1", "prime256v1");
    let (status, op) = sas_register(&server, "Rotor-1", &key, json!({"csr": csr})).await;
    assert_eq!(status, 200, "{op}");
    write_pem_chain(&d.join("one-chain.pem"), op["registrationState"]["issuedCertificateChain"].as_array().unwrap());

    make_ca(d, "offline-root", None);
    let created = admin
        .ok(reqwest::Method::POST, "/pki/issuingCAs", Some(json!({"name": "ca-2", "keyAlgorithm": "ecdsaP384"})))
        .await;
    std::fs::write(d.join("ca-2.csr.pem"), created["csr"].as_str().unwrap()).unwrap();
    sign_ca_csr(d, "ca-2", "offline-root");
    let chain = std::fs::read_to_string(d.join("ca-2.pem")).unwrap()
        + &std::fs::read_to_string(d.join("offline-root.pem")).unwrap();
    admin.ok(reqwest::Method::PUT, "/pki/issuingCAs/ca-2", Some(json!({"certificateChain": chain}))).await;
    admin.ok(reqwest::Method::POST, "/pki/issuingCAs/ca-2/activate", None).await;
    let listed = admin.ok(reqwest::Method::GET, "/pki/issuingCAs", None).await;
    let active: Vec<&str> = listed
        .as_array()
        .or_else(|| listed["value"].as_array())
        .or_else(|| listed["items"].as_array())
        .unwrap()
        .iter()
        .filter(|ca| ca["status"] == "active")
        .map(|ca| ca["name"].as_str().unwrap())
        .collect();
    assert_eq!(active, ["ca-2"], "{listed}");

    // The old certificate (development CA) renews by EST; the new one comes from ca-2.
    let (_, csr2) = key_and_csr(d, "two", "Rotor-1", "prime256v1");
    let (status, pkcs7) = curl(
        &server,
        "POST",
        "/.well-known/est/simplereenroll",
        &d.join("one-chain.pem"),
        &device_key,
        &csr2,
        "application/pkcs10",
    );
    assert_eq!(status, 200, "{pkcs7}");
    std::fs::write(d.join("two.p7.b64"), &pkcs7).unwrap();
    openssl(d, &["base64", "-d", "-in", "two.p7.b64", "-out", "two.p7"]);
    openssl(d, &["pkcs7", "-inform", "DER", "-in", "two.p7", "-print_certs", "-out", "two.pem"]);
    let issuer = openssl(d, &["x509", "-in", "two.pem", "-noout", "-issuer"]);
    assert!(issuer.contains("zerotouch issuing CA ca-2"), "{issuer}");
    let bundle = fetch_bundle(&server, d).await;
    let verified = openssl(d, &["verify", "-CAfile", bundle.to_str().unwrap(), "-untrusted", "ca-2.pem", "two.pem"]);
    assert!(verified.contains("OK"), "{verified}");
    let bundle_text = std::fs::read_to_string(&bundle).unwrap();
    assert!(bundle_text.matches("BEGIN CERTIFICATE").count() >= 4, "both chains: {bundle_text}");
    let crl = server.client.get(server.device("/pki/crl/development")).send().await.unwrap();
    assert_eq!(crl.status().as_u16(), 200, "the retired CA's CRL is still served");
}

/// An expired factory certificate is refused with 401010; after its enrollment is disabled, a device's operational
/// certificate is revoked and can no longer renew (401015).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_disabled_devices_are_refused() {
    let server = Server::start_with(Backend::Sqlite, start_options()).await.unwrap();
    let admin = Admin::new(&server);
    admin.hub("hub-a.example.com").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "plant-root", None);
    let group = json!({
        "enrollmentGroupId": "plant",
        "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": std::fs::read_to_string(d.join("plant-root.pem")).unwrap()}}}},
    });
    admin.ok(reqwest::Method::PUT, "/enrollmentGroups/plant", Some(group)).await;

    // An expired device certificate, signed by the plant root's key (rcgen: openssl 3.0 cannot back-date).
    openssl(d, &["pkcs8", "-topk8", "-nocrypt", "-in", "plant-root.key", "-out", "plant-root.p8"]);
    let root_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(d.join("plant-root.p8")).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(d.join("plant-root.pem")).unwrap(), root_key).unwrap();
    let device_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "old-1");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.signed_by(&device_key, &issuer).unwrap();
    std::fs::write(d.join("old.pem"), cert.pem()).unwrap();
    std::fs::write(d.join("old.key"), device_key.serialize_pem()).unwrap();
    let (status, body) = curl_register(&server, "old-1", &d.join("old.pem"), &d.join("old.key"), json!({}));
    assert_eq!((status, body["errorCode"].as_u64()), (401, Some(401010)), "{body}");

    // A device of the group gets an operational certificate; the group is disabled; renewal is refused.
    make_device(d, "p1", "press-1", "plant-root");
    let (op_key, csr) = key_and_csr(d, "p1-op", "press-1", "prime256v1");
    let (status, op) = curl_register(&server, "press-1", &d.join("p1.pem"), &d.join("p1.key"), json!({"csr": csr}));
    assert_eq!((status, op["status"].as_str()), (200, Some("assigned")), "{op}");
    write_pem_chain(&d.join("p1-op-chain.pem"), op["registrationState"]["issuedCertificateChain"].as_array().unwrap());
    let mut group = admin.ok(reqwest::Method::GET, "/enrollmentGroups/plant", None).await;
    group["provisioningStatus"] = json!("disabled");
    admin.ok(reqwest::Method::PUT, "/enrollmentGroups/plant", Some(group)).await;
    let (_, csr2) = key_and_csr(d, "p1-op2", "press-1", "prime256v1");
    let (status, body) = curl(
        &server,
        "POST",
        "/.well-known/est/simplereenroll",
        &d.join("p1-op-chain.pem"),
        &op_key,
        &csr2,
        "application/pkcs10",
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["errorCode"], 401015, "{body}");
}
