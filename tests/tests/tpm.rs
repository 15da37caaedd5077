#![allow(clippy::unwrap_used, clippy::expect_used)]
//! TPM attestation end to end (`docs/protocol/device-api.md` §3), against real TPMs: swtpm instances each test starts, and
//! tpm2-tools as the device side, an implementation independent of ours. The server gets the raw EK and SRK, answers
//! the raw activation blob, and must accept the SAS the TPM signs with the key it unwrapped.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use serde_json::{Value, json};
use zerotouch_tests::swtpm::Swtpm;
use zerotouch_tests::{Backend, Options, Server};

const API: &str = "api-version=2021-06-01";
const HUB: &str = "hub-tpm.example.com";

async fn start(backend: Backend, extra: &[&str]) -> Server {
    // The webhook receiver listens on loopback.
    let mut args = vec!["--device-rate-limit".to_owned(), "100/10s".to_owned(), "--allow-insecure-outbound".to_owned()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Server::start_with(backend, Options { args, ..Default::default() }).await.unwrap()
}

async fn admin(server: &Server, method: Method, path: &str, body: Value) -> Value {
    let token = server.token("owner").unwrap();
    let mut request = server.client.request(method.clone(), server.url(path)).bearer_auth(token);
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{method} {path}: {body}");
    body
}

/// Links the test hub.
async fn link_hub(server: &Server) {
    let hub = json!({"hostName": HUB, "kind": "none", "allocationWeight": 1});
    admin(server, Method::PUT, &format!("/hubs/{HUB}"), hub).await;
}

/// An answer: status and JSON body.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Value,
}

/// `PUT .../register` with `body`, with or without `Authorization`.
async fn register(server: &Server, id: &str, body: &Value, auth: Option<&str>) -> Reply {
    let url = server.device(&format!("/{}/registrations/{id}/register?{API}", server.id_scope));
    let mut request = server.client.put(url).json(body);
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null) }
}

/// Polls an operation until it is terminal.
async fn poll(server: &Server, id: &str, operation: &str, auth: &str) -> Value {
    let url = server.device(&format!("/{}/registrations/{id}/operations/{operation}?{API}", server.id_scope));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = server.client.get(&url).header("Authorization", auth).send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        match status {
            200 => return body,
            202 => {}
            other => assert_eq!(other, 200, "poll: {body}"),
        }
        assert!(Instant::now() < deadline, "the operation did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The SAS token of §2.1, signed by `sign` (the TPM, or a forger) over `{sr}\n{se}`.
fn token(server: &Server, id: &str, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let sr = percent_encode(&format!("{}/registrations/{id}", server.id_scope));
    let se = now() + 3600;
    let signature = STANDARD.encode(sign(format!("{sr}\n{se}").as_bytes()));
    format!("SharedAccessSignature sr={sr}&sig={}&se={se}&skn=registration", percent_encode(&signature))
}

/// The first leg's challenge: 401 with `{message, authenticationKey, keyName}` and no `status` (§3.1); the blob.
fn challenge_blob(reply: &Reply) -> Vec<u8> {
    assert_eq!(reply.status, 401, "first leg: {}", reply.body);
    assert_eq!(reply.body["keyName"], "registration", "{}", reply.body);
    assert!(reply.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", reply.body);
    assert!(reply.body.get("status").is_none(), "a challenge has no status: {}", reply.body);
    assert!(reply.body.get("errorCode").is_none(), "a challenge is not an error body: {}", reply.body);
    STANDARD.decode(reply.body["authenticationKey"].as_str().unwrap()).unwrap()
}

/// A refusal with the Azure error body.
fn assert_refused(reply: &Reply, status: u16, code: u64) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["errorCode"], code, "{}", reply.body);
    assert!(reply.body.get("authenticationKey").is_none(), "a refusal carries no blob: {}", reply.body);
}

/// The register body of a TPM device.
fn tpm_body(id: &str, ek: &str, srk: &str) -> Value {
    json!({"registrationId": id, "tpm": {"endorsementKey": ek, "storageRootKey": srk}})
}

/// The device side with tpm2-tools: the first leg, activation in the TPM, and the SAS the TPM signs.
async fn second_leg_token(server: &Server, tpm: &Swtpm, id: &str, body: &Value) -> String {
    let blob = challenge_blob(&register(server, id, body, None).await);
    let key = tpm.activate(&blob).unwrap();
    token(server, id, |message| tpm.hmac(&key, message).unwrap())
}

/// A TPM device whose EK an individual enrollment names registers like Azure's SDKs do it: first leg without a
/// token answers the activation blob, tpm2-tools (ActivateCredential, Import, Load, HMAC) turn it into a SAS that
/// the server accepts, the device is assigned, and the assigned answer carries a second blob (the hub key) that
/// activates in the same TPM. Any replica could serve the second leg: the challenge lives in the database.
async fn tpm_tools_device_registers_by_its_endorsement_key(backend: Backend) {
    let tpm = Swtpm::start().unwrap();
    let (ek, srk) = tpm.provision_keys().unwrap();
    let server = start(backend, &[]).await;
    link_hub(&server).await;
    let enrollment = json!({"registrationId": "Tpm-Dev-1", "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek}}, "iotHubs": [HUB]});
    admin(&server, Method::PUT, "/enrollments/Tpm-Dev-1", enrollment).await;

    let body = tpm_body("Tpm-Dev-1", &ek, &srk);
    let auth = second_leg_token(&server, &tpm, "Tpm-Dev-1", &body).await;
    let reply = register(&server, "Tpm-Dev-1", &body, Some(&auth)).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let operation = reply.body["operationId"].as_str().unwrap().to_owned();
    let done = poll(&server, "Tpm-Dev-1", &operation, &auth).await;
    assert_eq!(done["status"], "assigned", "{done}");
    let state = &done["registrationState"];
    assert_eq!(state["assignedHub"], HUB, "{done}");
    assert_eq!(state["deviceId"], "Tpm-Dev-1", "{done}");
    assert!(state.get("symmetricKey").is_none(), "{done}");
    let hub_blob = STANDARD.decode(state["tpm"]["authenticationKey"].as_str().expect("tpm.authenticationKey")).unwrap();
    let hub_key = tpm.activate(&hub_blob).unwrap();
    assert_eq!(tpm.hmac(&hub_key, b"hub").unwrap().len(), 32);

    let registration = admin(&server, Method::GET, "/registrations/Tpm-Dev-1", Value::Null).await;
    assert_eq!(registration["status"], "assigned", "{registration}");
    // The status lookup with the same token: the device's registration, without a symmetricKey section.
    let url = server.device(&format!("/{}/registrations/Tpm-Dev-1?{API}", server.id_scope));
    let response = server.client.post(url).header("Authorization", &auth).json(&body).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let lookup: Value = response.json().await.unwrap();
    assert_eq!((lookup["status"].as_str(), lookup["assignedHub"].as_str()), (Some("assigned"), Some(HUB)), "{lookup}");
    assert!(lookup.get("symmetricKey").is_none(), "{lookup}");
    assert!(!server.logs().contains(&auth), "the TPM's SAS token reached the logs");
}

/// A TPM device whose enrollment allocates through a custom webhook: the webhook is told the endorsement and storage
/// root keys the device's activation was made for (`deviceRuntimeContext.tpm`, as Azure sends them), and nothing
/// of the symmetric-key or X.509 kinds.
#[tokio::test]
async fn a_custom_allocation_webhook_sees_the_tpm_keys() {
    let tpm = Swtpm::start().unwrap();
    let (ek, srk) = tpm.provision_keys().unwrap();
    let server = start(Backend::Sqlite, &[]).await;
    link_hub(&server).await;
    let allocator = zerotouch_tests::webhook::Allocator::start(zerotouch_tests::webhook::choosing(|request| {
        request["linkedHubs"][0].as_str().map(str::to_owned)
    }));
    let enrollment = json!({"registrationId": "Tpm-Alloc-1", "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek}},
        "iotHubs": [HUB], "allocationPolicy": "custom",
        "customAllocationDefinition": {"webhookUrl": allocator.url, "apiVersion": "2021-10-01"}});
    admin(&server, Method::PUT, "/enrollments/Tpm-Alloc-1", enrollment).await;

    let body = tpm_body("Tpm-Alloc-1", &ek, &srk);
    let auth = second_leg_token(&server, &tpm, "Tpm-Alloc-1", &body).await;
    let reply = register(&server, "Tpm-Alloc-1", &body, Some(&auth)).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let done = poll(&server, "Tpm-Alloc-1", reply.body["operationId"].as_str().unwrap(), &auth).await;
    assert_eq!((&done["status"], &done["registrationState"]["assignedHub"]), (&json!("assigned"), &json!(HUB)));
    let context = allocator.request_about("Tpm-Alloc-1")["deviceRuntimeContext"].clone();
    assert_eq!(context["tpm"], json!({"endorsementKey": ek, "storageRootKey": srk}), "{context}");
    assert!(context.get("symmetricKey").is_none() && context.get("x509").is_none(), "{context}");
    allocator.stop().await;
}

#[tokio::test]
async fn tpm_tools_device_registers_by_its_endorsement_key_sqlite() {
    tpm_tools_device_registers_by_its_endorsement_key(Backend::Sqlite).await;
}

#[tokio::test]
async fn tpm_tools_device_registers_by_its_endorsement_key_postgres() {
    tpm_tools_device_registers_by_its_endorsement_key(Backend::Postgres).await;
}

/// What must not work: an EK no enrollment names, and an id nobody enrolled, get a challenge-shaped 401 all the
/// same (a blob for a key nothing keeps: first legs do not tell which ids are enrolled, issue #16), whose second
/// leg fails; a blob activated on another TPM fails in that TPM; a repeated first leg answers the pending
/// challenge instead of replacing it; a SAS forged with another key and a second register with a used token are
/// refused; a malformed EK and an SRK other than the enrolled one answer 400211.
#[tokio::test]
async fn tpm_refusals() {
    let tpm = Swtpm::start().unwrap();
    let (ek, srk) = tpm.provision_keys().unwrap();
    let other = Swtpm::start().unwrap();
    let (other_ek, other_srk) = other.provision_keys().unwrap();
    let server = start(Backend::Sqlite, &[]).await;
    link_hub(&server).await;
    let enrollment = json!({"registrationId": "tpm-refused", "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek, "storageRootKey": srk}}, "iotHubs": [HUB]});
    admin(&server, Method::PUT, "/enrollments/tpm-refused", enrollment).await;
    let body = tpm_body("tpm-refused", &ek, &srk);

    // An EK nobody enrolled for this id, and an id nobody enrolled: answered like an enrolled one, and the second
    // leg of that answer fails as any bad token does.
    let decoy =
        challenge_blob(&register(&server, "tpm-refused", &tpm_body("tpm-refused", &other_ek, &other_srk), None).await);
    let key = other.activate(&decoy).unwrap();
    let decoy_token = token(&server, "tpm-refused", |message| other.hmac(&key, message).unwrap());
    let other_body = tpm_body("tpm-refused", &other_ek, &other_srk);
    assert_refused(&register(&server, "tpm-refused", &other_body, Some(&decoy_token)).await, 401, 401002);
    challenge_blob(&register(&server, "nobody", &tpm_body("nobody", &ek, &srk), None).await);

    // Malformed or unusable keys, and an SRK other than the enrolled one.
    let reply = register(&server, "tpm-refused", &tpm_body("tpm-refused", "AQID", &srk), None).await;
    assert_refused(&reply, 400, 400211);
    assert!(reply.body["message"].as_str().unwrap().contains("tpm.endorsementKey"), "{}", reply.body);
    let reply = register(&server, "tpm-refused", &json!({"tpm": {"endorsementKey": ek}}), None).await;
    assert_refused(&reply, 400, 400211);
    let reply = register(&server, "tpm-refused", &tpm_body("tpm-refused", &ek, &other_srk), None).await;
    assert_refused(&reply, 400, 400211);
    assert!(reply.body["message"].as_str().unwrap().contains("storage root key"), "{}", reply.body);

    // The blob only activates in the TPM it was made for.
    let blob = challenge_blob(&register(&server, "tpm-refused", &body, None).await);
    let error = other.activate(&blob).unwrap_err().to_string();
    assert!(error.contains("tpm2_activatecredential"), "{error}");

    // A forged SAS is refused. A repeated first leg (the device retrying, or anyone who knows its public EK)
    // answers the pending challenge: the same blob, not a new key that would void the device's.
    let forged = token(&server, "tpm-refused", |_| vec![7; 32]);
    assert_refused(&register(&server, "tpm-refused", &body, Some(&forged)).await, 401, 401002);
    let again = challenge_blob(&register(&server, "tpm-refused", &body, None).await);
    assert_eq!(again, blob, "a first leg does not replace the pending challenge");

    // A token of a blob made before the enrollment was given another EK is refused.
    let before_change = second_leg_token(&server, &tpm, "tpm-refused", &body).await;
    let changed = json!({"registrationId": "tpm-refused", "attestation": {"type": "tpm", "tpm": {"endorsementKey": other_ek}}, "iotHubs": [HUB]});
    admin(&server, Method::PUT, "/enrollments/tpm-refused", changed).await;
    assert_refused(&register(&server, "tpm-refused", &body, Some(&before_change)).await, 401, 401002);
    let restored = json!({"registrationId": "tpm-refused", "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek, "storageRootKey": srk}}, "iotHubs": [HUB]});
    admin(&server, Method::PUT, "/enrollments/tpm-refused", restored).await;
    let current = second_leg_token(&server, &tpm, "tpm-refused", &body).await;

    // The current token registers once; replayed, it is refused.
    let reply = register(&server, "tpm-refused", &body, Some(&current)).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_refused(&register(&server, "tpm-refused", &body, Some(&current)).await, 401, 401002);

    let audit = admin(&server, Method::GET, "/audit", Value::Null).await.to_string();
    assert!(audit.contains("already served a register"), "the replay is audited: {audit}");
    assert!(audit.contains("the endorsement key is not the enrolled one"), "{audit}");
    assert!(audit.contains("names another endorsement key since the first leg"), "{audit}");
}

/// A second leg after the key of its blob expired (`--tpm-challenge-ttl`) is refused, although the TPM signed it
/// correctly; a fresh first leg works again.
#[tokio::test]
async fn tpm_second_leg_after_expiry_is_refused() {
    let tpm = Swtpm::start().unwrap();
    let (ek, srk) = tpm.provision_keys().unwrap();
    let server = start(Backend::Sqlite, &["--tpm-challenge-ttl", "2s"]).await;
    link_hub(&server).await;
    let enrollment = json!({"registrationId": "tpm-late", "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek}}, "iotHubs": [HUB]});
    admin(&server, Method::PUT, "/enrollments/tpm-late", enrollment).await;
    let body = tpm_body("tpm-late", &ek, &srk);
    let late = second_leg_token(&server, &tpm, "tpm-late", &body).await;
    // Waiting out the expiry is the point of this test.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_refused(&register(&server, "tpm-late", &body, Some(&late)).await, 401, 401002);
    let audit = admin(&server, Method::GET, "/audit", Value::Null).await.to_string();
    assert!(audit.contains("expired"), "{audit}");

    let fresh = second_leg_token(&server, &tpm, "tpm-late", &body).await;
    assert_eq!(register(&server, "tpm-late", &body, Some(&fresh)).await.status, 202);
}

/// A TPM enrollment group (our extension) lists the manufacturer's CAs; a device of that manufacturer sends its EK
/// certificate (here written by `swtpm_setup --create-ek-cert`, signed by a local CA) and registers without an
/// individual enrollment (here under ids of its choosing: the group opts into `firstToClaim`). An EK certificate from a CA the group does not list is refused (401012; 401014 when that
/// CA bears a listed CA's name), and one that is not the EK's (another TPM's certificate) answers 401017.
#[tokio::test]
async fn tpm_group_admits_devices_by_ek_certificate() {
    let tpm = Swtpm::manufactured(None).unwrap();
    let (ek, srk) = tpm.provision_keys().unwrap();
    let certificate = STANDARD.encode(tpm.ek_certificate().unwrap());
    let sibling = Swtpm::manufactured(Some(&tpm.file("ca"))).unwrap();
    let (sibling_ek, sibling_srk) = sibling.provision_keys().unwrap();
    let sibling_certificate = STANDARD.encode(sibling.ek_certificate().unwrap());
    let stranger = Swtpm::manufactured(None).unwrap();
    let (stranger_ek, stranger_srk) = stranger.provision_keys().unwrap();
    let stranger_certificate = STANDARD.encode(stranger.ek_certificate().unwrap());

    let server = start(Backend::Sqlite, &[]).await;
    link_hub(&server).await;
    let read = |name: &str| std::fs::read_to_string(tpm.file("ca").join(name)).unwrap();
    let group = json!({
        "enrollmentGroupId": "tpm-factory",
        "attestation": {"type": "tpm", "tpm": {"manufacturerCertificates": [read("issuercert.pem"), read("swtpm-localca-rootca-cert.pem")], "registrationIdPolicy": "firstToClaim"}},
        "iotHubs": [HUB],
    });
    admin(&server, Method::PUT, "/enrollmentGroups/tpm-factory", group).await;

    let with_cert = |id: &str, ek: &str, srk: &str, cert: &str| json!({"registrationId": id, "tpm": {"endorsementKey": ek, "storageRootKey": srk, "endorsementKeyCertificate": cert}});
    // Two devices of the manufacturer register through the group.
    for (device, id, ek, srk, cert) in [
        (&tpm, "factory-1", &ek, &srk, &certificate),
        (&sibling, "factory-2", &sibling_ek, &sibling_srk, &sibling_certificate),
    ] {
        let body = with_cert(id, ek, srk, cert);
        let auth = second_leg_token(&server, device, id, &body).await;
        let reply = register(&server, id, &body, Some(&auth)).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        let done = poll(&server, id, reply.body["operationId"].as_str().unwrap(), &auth).await;
        assert_eq!(done["status"], "assigned", "{done}");
        assert!(done["registrationState"]["tpm"]["authenticationKey"].is_string(), "{done}");
        let registration = admin(&server, Method::GET, &format!("/registrations/{id}"), Value::Null).await;
        assert_eq!(registration["status"], "assigned");
    }
    let listed = admin(&server, Method::POST, "/registrations/tpm-factory/query", Value::Null).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // A registration id of the group stays with the TPM that registered it: the sibling cannot take it over.
    // Its first leg is answered like any other (a blob for a key nothing keeps), and the refusal audited.
    let reply =
        register(&server, "factory-1", &with_cert("factory-1", &sibling_ek, &sibling_srk, &sibling_certificate), None)
            .await;
    challenge_blob(&reply);

    // Issue #17: the bindings are listed; deleting a registration releases its id (the sibling then registers it),
    // and an admin releases a binding without touching the registration.
    let bindings = admin(&server, Method::GET, "/tpmBindings", Value::Null).await;
    let ids: Vec<&str> = bindings.as_array().unwrap().iter().map(|b| b["registrationId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["factory-1", "factory-2"], "{bindings}");
    assert_eq!(bindings[0]["endorsementKey"], ek.as_str(), "{bindings}");
    let token = server.token("owner").unwrap();
    let delete = |path: &str| server.client.delete(server.url(path)).bearer_auth(&token).send();
    assert_eq!(delete("/registrations/factory-1").await.unwrap().status().as_u16(), 204);
    let body = with_cert("factory-1", &sibling_ek, &sibling_srk, &sibling_certificate);
    let auth = second_leg_token(&server, &sibling, "factory-1", &body).await;
    let reply = register(&server, "factory-1", &body, Some(&auth)).await;
    assert_eq!(reply.status, 202, "the released id is the sibling's now: {}", reply.body);
    assert_eq!(delete("/tpmBindings/factory-2").await.unwrap().status().as_u16(), 204);
    assert_eq!(delete("/tpmBindings/factory-2").await.unwrap().status().as_u16(), 404);
    admin(&server, Method::GET, "/registrations/factory-2", Value::Null).await;
    let bindings = admin(&server, Method::GET, "/tpmBindings", Value::Null).await;
    assert_eq!(bindings.as_array().map(Vec::len), Some(1), "{bindings}");
    assert_eq!(bindings[0]["endorsementKey"], sibling_ek.as_str(), "{bindings}");

    // A TPM from a CA the group does not list. Every swtpm local CA is named "swtpm-localca", so the path finds the
    // listed CA by name and its key refuses the signature (401014); a CA of another name answers 401012 (below).
    let reply =
        register(&server, "stranger", &with_cert("stranger", &stranger_ek, &stranger_srk, &stranger_certificate), None)
            .await;
    assert_refused(&reply, 401, 401014);
    assert!(reply.body["message"].as_str().unwrap().contains("signature"), "{}", reply.body);
    // A certificate of another TPM; no certificate at all; not a certificate.
    let reply =
        register(&server, "borrowed", &with_cert("borrowed", &stranger_ek, &stranger_srk, &certificate), None).await;
    assert_refused(&reply, 401, 401017);
    challenge_blob(&register(&server, "bare", &tpm_body("bare", &ek, &srk), None).await);
    let reply = register(&server, "garbled", &with_cert("garbled", &ek, &srk, "AQID"), None).await;
    assert_refused(&reply, 401, 401017);

    // Once the group lists only another manufacturer's CA, the first TPM's certificate leads nowhere: 401012.
    let other_ca = foreign_root_pem(&stranger);
    let group = json!({
        "enrollmentGroupId": "tpm-factory",
        "attestation": {"type": "tpm", "tpm": {"manufacturerCertificates": [other_ca], "registrationIdPolicy": "firstToClaim"}},
        "iotHubs": [HUB],
    });
    admin(&server, Method::PUT, "/enrollmentGroups/tpm-factory", group).await;
    let reply = register(&server, "factory-3", &with_cert("factory-3", &ek, &srk, &certificate), None).await;
    assert_refused(&reply, 401, 401012);
}

/// The SHA-256 (hex) of an EK's `TPM2B_PUBLIC` and the registration id the Azure device SDKs derive from it
/// (lower-case RFC 4648 base32 of that hash, without `=`), computed apart from our code: `openssl dgst` and
/// coreutils `base32` over the bytes.
fn ek_hash_and_derived_id(tpm: &Swtpm, ek_base64: &str) -> (String, String) {
    let file = tpm.file("ek-for-hash.pub");
    std::fs::write(&file, STANDARD.decode(ek_base64).unwrap()).unwrap();
    let sh = |script: &str| {
        let output = std::process::Command::new("sh").arg("-c").arg(script).arg("sh").arg(&file).output().unwrap();
        assert!(output.status.success(), "{script}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let hash = sh(r#"openssl dgst -sha256 -r "$1" | cut -d' ' -f1"#);
    let derived = sh(r#"openssl dgst -sha256 -binary "$1" | base32 -w0 | tr -d = | tr A-Z a-z"#);
    (hash, derived)
}

/// Point 3 of issue #16: a TPM group bounds which registration ids its TPMs may claim. By default a TPM of the
/// listed manufacturers registers only under the id derived from its own EK, so it can claim neither an id of its
/// choosing (squatting a device's future id) nor a sibling's; with an allow-list, only listed EKs register, under
/// ids of their choosing. Every refused first leg is answered like a challenge (its second leg fails with 401002)
/// and audited with the reason; the devices the policy admits register and stay registered.
#[tokio::test]
async fn tpm_group_bounds_the_ids_a_tpm_may_claim() {
    let tpm = Swtpm::manufactured(None).unwrap();
    let (ek, srk) = tpm.provision_keys().unwrap();
    let sibling = Swtpm::manufactured(Some(&tpm.file("ca"))).unwrap();
    let (sibling_ek, sibling_srk) = sibling.provision_keys().unwrap();
    let (hash, derived) = ek_hash_and_derived_id(&tpm, &ek);
    let (_, sibling_derived) = ek_hash_and_derived_id(&sibling, &sibling_ek);
    let certificate = STANDARD.encode(tpm.ek_certificate().unwrap());
    let sibling_certificate = STANDARD.encode(sibling.ek_certificate().unwrap());
    let with_cert = |id: &str, ek: &str, srk: &str, cert: &str| json!({"registrationId": id, "tpm": {"endorsementKey": ek, "storageRootKey": srk, "endorsementKeyCertificate": cert}});

    let server = start(Backend::Postgres, &[]).await;
    link_hub(&server).await;
    let issuer = std::fs::read_to_string(tpm.file("ca").join("issuercert.pem")).unwrap();
    let group = json!({
        "enrollmentGroupId": "tpm-line",
        "attestation": {"type": "tpm", "tpm": {"manufacturerCertificates": [issuer]}},
        "iotHubs": [HUB],
    });
    let stored = admin(&server, Method::PUT, "/enrollmentGroups/tpm-line", group).await;
    assert_eq!(stored["attestation"]["tpm"]["registrationIdPolicy"], "derivedFromEndorsementKey", "{stored}");

    // Each TPM registers under the id derived from its EK.
    let registered = async |device: &Swtpm, id: &str, body: &Value| {
        let auth = second_leg_token(&server, device, id, body).await;
        let reply = register(&server, id, body, Some(&auth)).await;
        assert_eq!(reply.status, 202, "{id}: {}", reply.body);
        let done = poll(&server, id, reply.body["operationId"].as_str().unwrap(), &auth).await;
        assert_eq!(done["status"], "assigned", "{done}");
    };
    registered(&tpm, &derived, &with_cert(&derived, &ek, &srk, &certificate)).await;
    registered(
        &sibling,
        &sibling_derived,
        &with_cert(&sibling_derived, &sibling_ek, &sibling_srk, &sibling_certificate),
    )
    .await;
    let before = admin(&server, Method::GET, &format!("/registrations/{derived}"), Value::Null).await;

    // The attacks: the sibling claims an id of its choosing, and the first TPM's id. Both first legs are answered
    // with a blob the sibling can activate (nothing tells it the id is out of bounds), and the second legs fail.
    for id in ["ceo-laptop", derived.as_str()] {
        let body = with_cert(id, &sibling_ek, &sibling_srk, &sibling_certificate);
        let auth = second_leg_token(&server, &sibling, id, &body).await;
        assert_refused(&register(&server, id, &body, Some(&auth)).await, 401, 401002);
    }
    let after = admin(&server, Method::GET, &format!("/registrations/{derived}"), Value::Null).await;
    assert_eq!(after, before, "the first TPM's registration is untouched");
    let response = server
        .client
        .get(server.url("/registrations/ceo-laptop"))
        .bearer_auth(server.token("owner").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404, "no registration was made for the squatted id");
    let audit = admin(&server, Method::GET, "/audit", Value::Null).await.to_string();
    assert!(audit.contains("only under the registration id derived from its endorsement key"), "{audit}");

    // An allow-list of EK hashes (computed with openssl): the listed TPM registers under an id of its choosing, the
    // sibling (a TPM of the same manufacturer, not listed) under none.
    let group = json!({
        "enrollmentGroupId": "tpm-line",
        "attestation": {"type": "tpm", "tpm": {"manufacturerCertificates": [std::fs::read_to_string(tpm.file("ca").join("issuercert.pem")).unwrap()], "registrationIdPolicy": "endorsementKeyAllowList", "allowedEndorsementKeyHashes": [hash.to_ascii_uppercase()]}},
        "iotHubs": [HUB],
    });
    let stored = admin(&server, Method::PUT, "/enrollmentGroups/tpm-line", group).await;
    assert_eq!(stored["attestation"]["tpm"]["allowedEndorsementKeyHashes"], json!([hash]), "{stored}");
    registered(&tpm, "line-7-gateway", &with_cert("line-7-gateway", &ek, &srk, &certificate)).await;
    let body = with_cert("line-7-sensor", &sibling_ek, &sibling_srk, &sibling_certificate);
    let auth = second_leg_token(&server, &sibling, "line-7-sensor", &body).await;
    assert_refused(&register(&server, "line-7-sensor", &body, Some(&auth)).await, 401, 401002);
    let audit = admin(&server, Method::GET, "/audit", Value::Null).await.to_string();
    assert!(audit.contains("is not in the group's allow-list"), "{audit}");

    // A policy tightened between the legs holds at the second: a challenge issued under the allow-list is refused
    // once the group admits derived ids only.
    let body = with_cert("line-7-camera", &ek, &srk, &certificate);
    let auth = second_leg_token(&server, &tpm, "line-7-camera", &body).await;
    let group = json!({
        "enrollmentGroupId": "tpm-line",
        "attestation": {"type": "tpm", "tpm": {"manufacturerCertificates": [std::fs::read_to_string(tpm.file("ca").join("issuercert.pem")).unwrap()]}},
        "iotHubs": [HUB],
    });
    admin(&server, Method::PUT, "/enrollmentGroups/tpm-line", group).await;
    assert_refused(&register(&server, "line-7-camera", &body, Some(&auth)).await, 401, 401002);
}

/// The root CA of another swtpm manufacturer ("swtpm-localca-rootca": not the issuer of any EK certificate).
fn foreign_root_pem(tpm: &Swtpm) -> String {
    std::fs::read_to_string(tpm.file("ca").join("swtpm-localca-rootca-cert.pem")).unwrap()
}

// ---------------------------------------------------------------------------------------------------------------
// The device agent (crates/agent, tss-esapi) on swtpm

/// Runs `zerotouch-agent ARGS...`; its status, stdout as JSON (Null if not JSON) and stderr.
fn agent(args: &[&str]) -> (bool, Value, String) {
    let output = std::process::Command::new(zerotouch_tests::agent_binary().unwrap()).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (
        output.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `zerotouch-agent provision` against `server` with the TPM `tpm`, and extra arguments.
/// Without `id`, the agent derives the registration id from the TPM's EK.
fn agent_provision(server: &Server, tpm: &Swtpm, id: Option<&str>, extra: &[&str]) -> (bool, Value, String) {
    let trust = server.data_dir.join("trust-bundle.pem");
    let tcti = tpm.tcti();
    let mut args = vec![
        "provision",
        "--tpm",
        &tcti,
        "--url",
        &server.device_url,
        "--id-scope",
        &server.id_scope,
        "--trust-bundle",
        trust.to_str().unwrap(),
    ];
    if let Some(id) = id {
        args.extend_from_slice(&["--registration-id", id]);
    }
    args.extend_from_slice(extra);
    agent(&args)
}

/// Nothing transient is left in the TPM (swtpm has no resource manager: the agent must flush what it loads).
fn assert_nothing_transient_left(tpm: &Swtpm) {
    for kind in ["handles-transient", "handles-loaded-session"] {
        let listing = String::from_utf8(tpm.tool("tpm2_getcap", &[kind]).unwrap()).unwrap();
        assert!(listing.trim().is_empty(), "{kind} left in the TPM: {listing}");
    }
}

/// The agent on an empty TPM: `keys` creates and persists the EK and SRK and prints them; the admin enrolls the EK;
/// `provision` with a CSR runs both legs with the key inside the TPM, and prints the assigned operation with the
/// hub and an operational certificate for the registration id. The imported key stays at 0x81000100 and no
/// transient object or session is left behind.
#[tokio::test]
async fn agent_provisions_a_tpm_device_with_a_certificate() {
    let tpm = Swtpm::start().unwrap();
    let (ok, keys, stderr) = agent(&["keys", "--tpm", &tpm.tcti()]);
    assert!(ok, "agent keys: {stderr}");
    assert!(tpm.has_persistent("0x81010001").unwrap() && tpm.has_persistent("0x81000001").unwrap());
    // The same keys as tpm2-tools reads from the persistent handles.
    assert_eq!(keys["endorsementKey"], tpm.public_base64("0x81010001").unwrap());
    assert_eq!(keys["storageRootKey"], tpm.public_base64("0x81000001").unwrap());

    let server = start(Backend::Sqlite, &[]).await;
    link_hub(&server).await;
    let enrollment = json!({"registrationId": "agent-dev-1", "attestation": {"type": "tpm", "tpm": {"endorsementKey": keys["endorsementKey"]}}, "iotHubs": [HUB]});
    admin(&server, Method::PUT, "/enrollments/agent-dev-1", enrollment).await;

    let key = tpm.file("device.key");
    let csr = tpm.file("device.csr");
    let openssl = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=agent-dev-1",
        ])
        .arg("-keyout")
        .arg(&key)
        .args(["-outform", "DER", "-out"])
        .arg(&csr)
        .output()
        .unwrap();
    assert!(openssl.status.success(), "{}", String::from_utf8_lossy(&openssl.stderr));

    let started = Instant::now();
    let (ok, done, stderr) = agent_provision(&server, &tpm, Some("agent-dev-1"), &["--csr", csr.to_str().unwrap()]);
    assert!(ok, "agent provision: {stderr}\n{done}");
    eprintln!("agent provision took {:?}", started.elapsed());
    assert_eq!(done["status"], "assigned", "{done}");
    let state = &done["registrationState"];
    assert_eq!(state["assignedHub"], HUB, "{done}");
    let chain = state["issuedCertificateChain"].as_array().expect("issuedCertificateChain");
    assert!(chain.len() >= 2, "{done}");
    let leaf = STANDARD.decode(chain[0].as_str().unwrap()).unwrap();
    std::fs::write(tpm.file("leaf.der"), &leaf).unwrap();
    let subject = std::process::Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-subject", "-in"])
        .arg(tpm.file("leaf.der"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&subject.stdout).contains("agent-dev-1"), "{subject:?}");
    assert!(tpm.has_persistent("0x81000100").unwrap(), "the hub key is kept at 0x81000100");
    assert_nothing_transient_left(&tpm);

    // Provisioning again (a new first leg, a new blob) works on the same TPM, replacing the kept key.
    let (ok, done, stderr) = agent_provision(&server, &tpm, Some("agent-dev-1"), &[]);
    assert!(ok, "second provision: {stderr}\n{done}");
    assert_nothing_transient_left(&tpm);
}

/// The agent on a TPM manufactured with an EK certificate registers through a TPM enrollment group, sending the
/// certificate from NV, under the registration id it derives from the EK (computed here apart, with openssl and
/// coreutils, as the Azure SDKs derive it); without a group that lists its CA it is refused and exits non-zero.
#[tokio::test]
async fn agent_provisions_through_a_tpm_group() {
    let tpm = Swtpm::manufactured(None).unwrap();
    let (ek, _) = tpm.provision_keys().unwrap();
    let (_, derived) = ek_hash_and_derived_id(&tpm, &ek);
    let server = start(Backend::Postgres, &[]).await;
    link_hub(&server).await;

    let (ok, _, stderr) = agent_provision(&server, &tpm, None, &["--ek-certificate"]);
    assert!(!ok, "no group lists the CA yet");
    assert!(stderr.contains("401"), "{stderr}");

    let read = |name: &str| std::fs::read_to_string(tpm.file("ca").join(name)).unwrap();
    let group = json!({
        "enrollmentGroupId": "agent-factory",
        "attestation": {"type": "tpm", "tpm": {"manufacturerCertificates": [read("issuercert.pem")]}},
        "iotHubs": [HUB],
    });
    admin(&server, Method::PUT, "/enrollmentGroups/agent-factory", group).await;
    let (ok, done, stderr) = agent_provision(&server, &tpm, None, &["--ek-certificate"]);
    assert!(ok, "agent provision: {stderr}\n{done}");
    assert_eq!(done["registrationState"]["assignedHub"], HUB, "{done}");
    assert_eq!(done["registrationState"]["registrationId"], derived.as_str(), "{done}");
    assert_nothing_transient_left(&tpm);
}

/// Two replicas on one PostgreSQL database: the first leg on one, the second leg and the poll on the other. The
/// challenge lives in the database, not in a replica's memory.
#[tokio::test]
async fn tpm_second_leg_on_another_replica() {
    let tpm = Swtpm::start().unwrap();
    let (ek, srk) = tpm.provision_keys().unwrap();
    let first = start(Backend::Postgres, &[]).await;
    let mut options = first.replica_options();
    options.args.extend(["--id-scope".into(), first.id_scope.clone(), "--device-rate-limit".into(), "100/10s".into()]);
    let second = Server::start_with(Backend::Postgres, options).await.unwrap();
    link_hub(&first).await;
    let enrollment = json!({"registrationId": "tpm-replicas", "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek}}, "iotHubs": [HUB]});
    admin(&first, Method::PUT, "/enrollments/tpm-replicas", enrollment).await;

    let body = tpm_body("tpm-replicas", &ek, &srk);
    let auth = second_leg_token(&first, &tpm, "tpm-replicas", &body).await;
    let reply = register(&second, "tpm-replicas", &body, Some(&auth)).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let done = poll(&first, "tpm-replicas", reply.body["operationId"].as_str().unwrap(), &auth).await;
    assert_eq!(done["status"], "assigned", "{done}");
}

/// A TPM device assigned to a hub with an adapter (a webhook receiver here) is created there with the hub key its
/// answer delivers: the key the receiver gets computes the same HMAC as the key the device's TPM unwrapped.
#[tokio::test]
async fn tpm_device_hub_gets_the_key_its_tpm_holds() {
    use hmac::Mac;
    let tpm = Swtpm::start().unwrap();
    let (ek, srk) = tpm.provision_keys().unwrap();
    let server = start(Backend::Sqlite, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = zerotouch_tests::mosquitto::make_server_certificate(dir.path());
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let secret = "a-webhook-secret-for-the-tpm-test";
    let receiver =
        zerotouch_tests::webhook::Receiver::start(&read("certs/broker.pem"), &read("certs/broker.key"), secret);
    let hub = json!({"hostName": "hooks.example.com", "kind": "webhook",
                     "settings": {"url": receiver.url, "secret": secret, "ca": std::fs::read_to_string(&ca).unwrap()}});
    admin(&server, Method::PUT, "/hubs/hooks.example.com", hub).await;
    let enrollment = json!({"registrationId": "Tpm-Hub-1", "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek}},
                            "iotHubs": ["hooks.example.com"]});
    admin(&server, Method::PUT, "/enrollments/Tpm-Hub-1", enrollment).await;

    let body = tpm_body("Tpm-Hub-1", &ek, &srk);
    let auth = second_leg_token(&server, &tpm, "Tpm-Hub-1", &body).await;
    let reply = register(&server, "Tpm-Hub-1", &body, Some(&auth)).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let operation = reply.body["operationId"].as_str().unwrap().to_owned();
    let done = poll(&server, "Tpm-Hub-1", &operation, &auth).await;
    assert_eq!(done["status"], "assigned", "{done}");
    let hub_blob = STANDARD.decode(done["registrationState"]["tpm"]["authenticationKey"].as_str().unwrap()).unwrap();
    let hub_key = tpm.activate(&hub_blob).unwrap();
    let in_tpm = tpm.hmac(&hub_key, b"hub").unwrap();

    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0].0.as_str(), seen[0].1.as_str()), ("POST", "Tpm-Hub-1"));
    assert_eq!(seen[0].2["credential"]["type"], "symmetricKey", "{}", seen[0].2);
    let key = STANDARD.decode(seen[0].2["credential"]["key"].as_str().unwrap()).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(b"hub");
    assert_eq!(mac.finalize().into_bytes().to_vec(), in_tpm, "the hub's key is the one in the TPM");
    assert!(!server.logs().contains(seen[0].2["credential"]["key"].as_str().unwrap()), "the hub key reached a log");
    receiver.stop().await;
}

/// Issue #16 points 4 and 8: strangers' first legs for a device's id (with keys of their own, or with the device's
/// public EK) neither use up its first-leg budget, nor replace its pending challenge, nor tell them which ids are
/// enrolled: every one of them is answered with a challenge-shaped 401, and the device then registers at once.
#[tokio::test]
async fn strangers_first_legs_neither_lock_out_nor_replace_a_device() {
    let tpm = Swtpm::start().unwrap();
    let (ek, srk) = tpm.provision_keys().unwrap();
    let stranger = Swtpm::start().unwrap();
    let (stranger_ek, stranger_srk) = stranger.provision_keys().unwrap();
    // The default per-device rate (5 requests per 10 s), which the strangers' first legs below exceed.
    let server = Server::start(Backend::Sqlite).await.unwrap();
    link_hub(&server).await;
    let enrollment = json!({"registrationId": "tpm-target", "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek}}, "iotHubs": [HUB]});
    admin(&server, Method::PUT, "/enrollments/tpm-target", enrollment).await;
    let body = tpm_body("tpm-target", &ek, &srk);

    // The device starts; then strangers send twice the per-device rate of first legs for its id (5 per 10 s by
    // default): with their own TPM's keys, and with the device's own public EK and SRK.
    let blob = challenge_blob(&register(&server, "tpm-target", &body, None).await);
    for _ in 0..5 {
        let theirs = register(&server, "tpm-target", &tpm_body("tpm-target", &stranger_ek, &stranger_srk), None).await;
        challenge_blob(&theirs);
        let replayed = challenge_blob(&register(&server, "tpm-target", &body, None).await);
        assert_eq!(replayed, blob, "the device's pending challenge is kept");
    }
    // An id nobody enrolled answers the same way.
    challenge_blob(&register(&server, "tpm-nobody", &tpm_body("tpm-nobody", &stranger_ek, &stranger_srk), None).await);

    // The device finishes with the blob it got first.
    let key = tpm.activate(&blob).unwrap();
    let auth = token(&server, "tpm-target", |message| tpm.hmac(&key, message).unwrap());
    let reply = register(&server, "tpm-target", &body, Some(&auth)).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let done = poll(&server, "tpm-target", reply.body["operationId"].as_str().unwrap(), &auth).await;
    assert_eq!(done["status"], "assigned", "{done}");
    let audit = admin(&server, Method::GET, "/audit", Value::Null).await.to_string();
    assert!(audit.contains("the endorsement key is not the enrolled one"), "the strangers are audited: {audit}");
}
