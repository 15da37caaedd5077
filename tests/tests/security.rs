//! Attacks on the device listener (issue #16), each performed against the real binary, each shown refused with
//! nothing lost for the legitimate device. `docs/security.md` lists each threat, its control and the test here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use serde_json::{Value, json};
use zerotouch_attest::sas;
use zerotouch_tests::device::{API, curl, sas_register, sas_token};
use zerotouch_tests::{Api, BACKENDS, Backend, Server};

/// A CA (its PEM and issuer) and a device certificate under it for `cn`, with an organization name of the
/// attacker's choosing and only `serverAuth` as its extended key usage, so that the chain reaches the enrolled CA
/// and is then refused by name.
fn crafted_device(dir: &Path, cn: &str, organization: &str) -> String {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(rcgen::DnType::CommonName, "Security test factory CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut device = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    device.distinguished_name.push(rcgen::DnType::CommonName, cn);
    device.distinguished_name.push(rcgen::DnType::OrganizationName, organization);
    device.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    std::fs::write(dir.join("device.pem"), device.signed_by(&key, &issuer).unwrap().pem()).unwrap();
    std::fs::write(dir.join("device.key"), key.serialize_pem()).unwrap();
    ca_pem
}

/// Every audit event (one page is enough for these tests).
async fn audit(api: &Api<'_>) -> Vec<Value> {
    let response = api.request(reqwest::Method::GET, "/audit").header("x-ms-max-item-count", "1000").send().await;
    let events: Value = response.unwrap().json().await.unwrap();
    events.as_array().unwrap().clone()
}

/// Point 10: a certificate subject with a newline and a terminal escape cannot forge a log line or an audit
/// record: the refusal's reason carries them escaped.
#[tokio::test]
async fn certificate_subjects_cannot_inject_log_lines() {
    zerotouch_tests::init();
    let server = Server::start(Backend::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let forged = "2026-12-05T00:00:00Z  INFO zerotouch: FORGED admin login accepted";
    let ca = crafted_device(dir.path(), "inject-1", &format!("evil\n{forged}\u{1b}[2K"));
    let api = Api::new(&server, "owner");
    let group = json!({
        "enrollmentGroupId": "factory",
        "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": ca}}}},
    });
    assert!(api.put("/enrollmentGroups/factory", &group).await.status().is_success());

    let path = format!("/{}/registrations/inject-1/register?{API}", server.id_scope);
    let (status, body) = curl(
        &server,
        "PUT",
        &path,
        &dir.path().join("device.pem"),
        &dir.path().join("device.key"),
        "{}",
        "application/json",
    );
    assert_eq!(status, 401, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["errorCode"], 401014, "the chain is refused by name: {body}");

    let logs = server.logs();
    assert!(logs.contains("O=evil\\n2026-12-05T00:00:00Z"), "the refusal is logged, escaped: {logs}");
    assert!(!logs.lines().any(|line| line.starts_with(forged)), "a forged line reached the log: {logs}");
    assert!(!logs.contains('\u{1b}'), "a terminal escape reached the log");
    let refusal = audit(&api)
        .await
        .into_iter()
        .find(|e| e["resourceId"] == "inject-1" && e["action"] == "register")
        .expect("the refusal is audited");
    let detail = refusal["detail"].as_str().unwrap();
    assert!(detail.contains("O=evil\\n2026-12-05T00:00:00Z"), "{detail}");
    assert!(!detail.chars().any(char::is_control), "{detail:?}");
}

/// A symmetric-key enrollment group with a fresh key; returns the key.
async fn symmetric_group(api: &Api<'_>, id: &str) -> Vec<u8> {
    let key: [u8; 32] = rand::random();
    let group = json!({
        "enrollmentGroupId": id,
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(key), "secondaryKey": STANDARD.encode(key)}},
    });
    let response = api.put(&format!("/enrollmentGroups/{id}"), &group).await;
    assert!(response.status().is_success(), "{}", response.text().await.unwrap_or_default());
    key.to_vec()
}

/// Point 3: a registration belongs to the enrollment that created it. A device of another group (whose key
/// derives a valid token for any id) can neither take it over nor read it; the owner keeps registering.
#[tokio::test]
async fn another_group_cannot_take_over_a_registration() {
    zerotouch_tests::init();
    for backend in BACKENDS {
        let server = Server::start(backend).await.unwrap();
        let api = Api::new(&server, "owner");
        let hub =
            json!({"hostName": "hub-a.example", "kind": "none", "allocationWeight": 1, "applyAllocationPolicy": true});
        let linked = api.put("/hubs/hub-a.example", &hub).await;
        assert!(linked.status().is_success(), "{}", linked.text().await.unwrap_or_default());
        let owner_key = sas::derive_device_key(&symmetric_group(&api, "line-a").await, "sensor-1").to_vec();
        let other_key = sas::derive_device_key(&symmetric_group(&api, "line-b").await, "sensor-1").to_vec();

        let (status, owned) = sas_register(&server, "sensor-1", &owner_key, json!({})).await;
        assert_eq!((status, owned["status"].as_str()), (200, Some("assigned")), "{owned}");
        let before: Value = api.get("/registrations/sensor-1").await.json().await.unwrap();
        assert_eq!(before["symmetricKey"]["enrollmentGroupId"], Value::Null, "{before}");

        let (status, refused) = sas_register(&server, "sensor-1", &other_key, json!({})).await;
        assert_eq!((status, refused["errorCode"].as_u64()), (401, Some(401002)), "{refused}");
        let lookup = server
            .client
            .post(server.device(&format!("/{}/registrations/sensor-1?{API}", server.id_scope)))
            .header("Authorization", sas_token(&server, "sensor-1", &other_key))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(lookup.status(), 401, "the other group's device cannot read the registration either");

        let after: Value = api.get("/registrations/sensor-1").await.json().await.unwrap();
        assert_eq!(after["etag"], before["etag"], "the registration is untouched: {after}");
        let refusal = audit(&api).await.into_iter().find(|e| {
            e["resourceId"] == "sensor-1"
                && e["detail"].as_str().is_some_and(|d| d.contains("belongs to enrollment group"))
        });
        assert!(refusal.is_some(), "the takeover attempt is audited");

        let (status, again) = sas_register(&server, "sensor-1", &owner_key, json!({})).await;
        assert_eq!((status, again["status"].as_str()), (200, Some("assigned")), "the owner still registers: {again}");
        assert_eq!(again["registrationState"]["symmetricKey"]["enrollmentGroupId"], "line-a", "{again}");
    }
}

/// Point 8: a certificate's refusal does not tell whether its CN is an enrolled registration id. A certificate
/// for an id that an individual X.509 enrollment names (but not this certificate), and one for an id nobody
/// enrolled, are answered with the same status, code and message.
#[tokio::test]
async fn x509_refusals_do_not_tell_which_ids_are_enrolled() {
    use zerotouch_tests::openssl::{DEVICE_EXTENSIONS, make_ca, make_certificate, make_device};
    zerotouch_tests::init();
    let server = Server::start(Backend::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "factory", None);
    make_device(d, "enrolled", "enrolled-1", "factory");
    let api = Api::new(&server, "owner");
    let pem = std::fs::read_to_string(d.join("enrolled.pem")).unwrap();
    let enrollment = json!({
        "registrationId": "enrolled-1",
        "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": pem}}}},
    });
    assert!(api.put("/enrollments/enrolled-1", &enrollment).await.status().is_success());
    let sas_enrollment = json!({"registrationId": "keyed-1", "attestation": {"type": "symmetricKey"}});
    assert!(api.put("/enrollments/keyed-1", &sas_enrollment).await.status().is_success());

    let mut answers = Vec::new();
    for id in ["enrolled-1", "keyed-1", "nobody-1"] {
        // A self-made certificate for the id, as an attacker would present.
        make_certificate(d, id, id, None, DEVICE_EXTENSIONS);
        let path = format!("/{}/registrations/{id}/register?{API}", server.id_scope);
        let (status, body) = curl(
            &server,
            "PUT",
            &path,
            &d.join(format!("{id}.pem")),
            &d.join(format!("{id}.key")),
            "{}",
            "application/json",
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        answers.push((id, status, body["errorCode"].clone(), body["message"].clone()));
    }
    let (_, status, code, message) = &answers[2];
    assert_eq!(*status, 401, "{answers:?}");
    for (id, other_status, other_code, other_message) in &answers[..2] {
        assert_eq!((other_status, other_code, other_message), (status, code, message), "{id}: {answers:?}");
    }
    // The enrolled device itself still registers.
    let linked = api
        .put(
            "/hubs/hub-x.example",
            &json!({"hostName": "hub-x.example", "kind": "none", "applyAllocationPolicy": true}),
        )
        .await;
    assert!(linked.status().is_success());
    let path = format!("/{}/registrations/enrolled-1/register?{API}", server.id_scope);
    let (status, body) =
        curl(&server, "PUT", &path, &d.join("enrolled.pem"), &d.join("enrolled.key"), "{}", "application/json");
    assert_eq!(status, 202, "{body}");
}

/// Point 5: refused requests with fresh registration ids (each its own per-id audit budget) write a bounded number
/// of audit rows, however many a stranger sends; every one is still refused, and a legitimate device registers.
#[tokio::test]
async fn refusals_with_fresh_ids_write_a_bounded_number_of_audit_rows() {
    zerotouch_tests::init();
    let server = Server::start(Backend::Sqlite).await.unwrap();
    let api = Api::new(&server, "owner");
    let hub =
        json!({"hostName": "hub-a.example", "kind": "none", "allocationWeight": 1, "applyAllocationPolicy": true});
    assert!(api.put("/hubs/hub-a.example", &hub).await.status().is_success());
    let group_key = symmetric_group(&api, "line-a").await;
    let started = std::time::Instant::now();
    let sent = 1500;
    let requests = (0..sent).map(|i| {
        let id = format!("fresh-{i}");
        let token = sas_token(&server, &id, &[7u8; 32]);
        let url = server.device(&format!("/{}/registrations/{id}/register?{API}", server.id_scope));
        let request = server.client.put(url).header("Authorization", token).json(&json!({"registrationId": id}));
        async move { request.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    });
    let refused: Vec<u16> = futures_util::stream::iter(requests).buffer_unordered(32).collect().await;
    let elapsed = started.elapsed().as_secs_f64();
    let answered: std::collections::BTreeSet<u16> = refused.iter().copied().collect();
    assert!(answered.iter().all(|status| *status == 401 || *status == 429), "every request is refused: {answered:?}");
    let audited = audit(&api).await.into_iter().filter(|e| e["action"] == "register").count();
    let bound = (100.0 + 100.0 * elapsed.ceil()) as usize;
    assert!(audited <= bound, "{audited} refusals audited in {elapsed:.1} s; at most {bound} may be");
    assert!(audited > 0, "refusals are still audited, up to the bound");
    let (status, done) =
        sas_register(&server, "sensor-1", &sas::derive_device_key(&group_key, "sensor-1")[..], json!({})).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("assigned")), "{done}");
}

/// Point 5: audit events older than `--audit-retention` are deleted (at start, then every hour).
#[tokio::test]
async fn audit_events_older_than_the_retention_are_deleted() {
    zerotouch_tests::init();
    let mut first = Server::start(Backend::Sqlite).await.unwrap();
    symmetric_group(&Api::new(&first, "owner"), "old-group").await;
    assert!(audit(&Api::new(&first, "owner")).await.iter().any(|e| e["resourceId"] == "old-group"));
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    first.stop().unwrap();
    // The same data dir and database, now with a retention the event has outlived.
    let options = zerotouch_tests::Options {
        data_dir: Some(first.data_dir.clone()),
        database_url: Some(first.database_url.clone()),
        args: vec!["--audit-retention".into(), "2s".into()],
        ..Default::default()
    };
    let server = Server::start_with(Backend::Sqlite, options).await.unwrap();
    let api = Api::new(&server, "owner");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while audit(&api).await.iter().any(|e| e["resourceId"] == "old-group") {
        assert!(std::time::Instant::now() < deadline, "the old event outlived --audit-retention");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    symmetric_group(&api, "new-group").await;
    assert!(audit(&api).await.iter().any(|e| e["resourceId"] == "new-group"), "new events are kept");
}
