//! Issue #19, point 3: what Azure tooling reads from zerotouch. A custom allocation webhook that allocates by a
//! certificate property, as an Azure Function would (`deviceRuntimeContext.x509`, `docs/protocol/device-api.md`
//! §7.1), reached by devices registering with certificates made by openssl; the symmetric-key context and the
//! request shape of an older `apiVersion`; and the read-only `registrationState` and certificate `info` that
//! enrollment reads carry (§6), checked against openssl's own view of the certificates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zerotouch_tests::device::{curl_register, sas_register};
use zerotouch_tests::openssl::{DEVICE_EXTENSIONS, make_ca, make_certificate_for, openssl};
use zerotouch_tests::webhook::{Allocator, choosing};
use zerotouch_tests::{Api, Backend, Options, Server};

const LINE_1_HUB: &str = "line-1.hubs.example.com";
const LINE_2_HUB: &str = "line-2.hubs.example.com";

/// The allocation function of a factory that sends each production line's devices to its own hub, written as it
/// would be for Azure: the line is the OU of the device certificate's subject, read from the details DPS sends.
fn by_production_line(request: &Value) -> Option<String> {
    let subject = request["deviceRuntimeContext"]["x509"]["clientCertificateInfo"]["subjectName"].as_str()?;
    let line = subject.split(", ").find_map(|rdn| rdn.strip_prefix("OU="))?;
    let hub = match line {
        "Line 1" => LINE_1_HUB,
        "Line 2" => LINE_2_HUB,
        _ => return None,
    };
    request["linkedHubs"].as_array()?.iter().any(|h| h == hub).then(|| hub.to_owned())
}

/// The first hub offered.
fn first_linked(request: &Value) -> Option<String> {
    request["linkedHubs"][0].as_str().map(str::to_owned)
}

async fn start(backend: Backend) -> Server {
    let args = vec!["--allow-insecure-outbound".to_owned(), "--device-rate-limit".to_owned(), "100/10s".to_owned()];
    let server = Server::start_with(backend, Options { args, ..Default::default() }).await.unwrap();
    let api = Api::new(&server, "owner");
    for hub in [LINE_1_HUB, LINE_2_HUB] {
        let response = api.put(&format!("/hubs/{hub}"), &json!({"hostName": hub, "kind": "none"})).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    server
}

async fn ok(response: reqwest::Response) -> Value {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{body}");
    body
}

/// openssl's SHA-1 or SHA-256 fingerprint of a PEM certificate, upper-case hex without colons.
fn fingerprint(dir: &std::path::Path, pem: &str, digest: &str) -> String {
    let out = openssl(dir, &["x509", "-in", pem, "-noout", "-fingerprint", digest]);
    out.trim().rsplit_once('=').unwrap().1.replace(':', "").to_ascii_uppercase()
}

/// The DER of a PEM certificate, base64, by openssl.
fn der_base64(dir: &std::path::Path, pem: &str) -> String {
    let der_file = format!("{pem}.der");
    openssl(dir, &["x509", "-in", pem, "-outform", "DER", "-out", &der_file]);
    STANDARD.encode(std::fs::read(dir.join(der_file)).unwrap())
}

/// Devices of one enrollment group, made by openssl under a factory root and an intermediate, are sent by the
/// webhook to the hub of their production line (the OU of their certificate's subject): the webhook sees the
/// device's certificate (base64 DER, as Azure sends it) with its details, the intermediate the device presented,
/// the group's CA, and the device's payload. The group's GET shows its CA's `info` as openssl sees the CA.
#[tokio::test]
async fn a_webhook_allocates_group_devices_by_their_certificate_subject() {
    let server = start(Backend::Sqlite).await;
    let api = Api::new(&server, "owner");
    let allocator = Allocator::start(choosing(by_production_line));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "factory-root", None);
    make_certificate_for(
        d,
        "line-ca",
        "/O=Acme/CN=line-ca",
        Some("factory-root"),
        zerotouch_tests::openssl::CA_EXTENSIONS,
    );
    for (name, line) in [("widget-1", "Line 1"), ("widget-2", "Line 2"), ("widget-9", "Line 9")] {
        make_certificate_for(d, name, &format!("/C=DE/O=Acme/OU={line}/CN={name}"), Some("line-ca"), DEVICE_EXTENSIONS);
        let chain = std::fs::read_to_string(d.join(format!("{name}.pem"))).unwrap()
            + &std::fs::read_to_string(d.join("line-ca.pem")).unwrap();
        std::fs::write(d.join(format!("{name}-chain.pem")), chain).unwrap();
    }
    let root = std::fs::read_to_string(d.join("factory-root.pem")).unwrap();
    let group = json!({
        "enrollmentGroupId": "acme-lines",
        "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": root}}}},
        "allocationPolicy": "custom",
        "iotHubs": [LINE_1_HUB, LINE_2_HUB],
        "customAllocationDefinition": {"webhookUrl": allocator.url, "apiVersion": "2021-10-01"},
    });
    ok(api.put("/enrollmentGroups/acme-lines", &group).await).await;

    let payload = json!({"firmware": "4.2"});
    for (name, hub) in [("widget-1", LINE_1_HUB), ("widget-2", LINE_2_HUB)] {
        let (chain, key) = (d.join(format!("{name}-chain.pem")), d.join(format!("{name}.key")));
        let (status, done) =
            curl_register(&server, name, &chain, &key, json!({"registrationId": name, "payload": payload}));
        assert_eq!(status, 200, "{done}");
        assert_eq!(done["status"], "assigned", "{done}");
        assert_eq!(done["registrationState"]["assignedHub"], hub, "{done}");
    }
    // A line the function does not know: it answers 400, the device is failed with 400207.
    let (status, done) =
        curl_register(&server, "widget-9", &d.join("widget-9-chain.pem"), &d.join("widget-9.key"), json!({}));
    assert_eq!(status, 200, "{done}");
    assert_eq!((&done["status"], &done["registrationState"]["errorCode"]), (&json!("failed"), &json!(400207)));

    let request = allocator.request_about("widget-1");
    let context = &request["deviceRuntimeContext"];
    assert!(context.get("symmetricKey").is_none() && context.get("tpm").is_none(), "{context}");
    let x509 = &context["x509"];
    assert_eq!(x509["clientCertificate"], der_base64(d, "widget-1.pem"), "the device certificate, base64 DER");
    let info = &x509["clientCertificateInfo"];
    assert_eq!(info["subjectName"], "CN=widget-1, OU=Line 1, O=Acme, C=DE", "{info}");
    assert_eq!(info["issuerName"], "CN=line-ca, O=Acme", "{info}");
    assert_eq!(info["sha1Thumbprint"], fingerprint(d, "widget-1.pem", "-sha1"), "{info}");
    assert_eq!(info["sha256Thumbprint"], fingerprint(d, "widget-1.pem", "-sha256"), "{info}");
    // The serial's DER content bytes in hex, as .NET's `X509Certificate2.SerialNumber` gives them: openssl prints
    // the number, without the 00 byte DER puts before a serial whose top bit is set (one certificate in 256 of
    // openssl's random serials).
    let serial = openssl(d, &["x509", "-in", "widget-1.pem", "-noout", "-serial"]);
    let serial = serial.trim().trim_start_matches("serial=");
    let der_serial = if serial.starts_with(['8', '9', 'A', 'B', 'C', 'D', 'E', 'F']) {
        format!("00{serial}")
    } else {
        serial.to_owned()
    };
    assert_eq!(info["serialNumber"].as_str().unwrap(), der_serial, "{info}");
    assert_eq!(info["version"], 3, "{info}");
    assert!(info["notBeforeUtc"].as_str().unwrap().ends_with('Z'), "{info}");
    let presented = x509["caCertificates"].as_array().unwrap();
    assert_eq!(presented.len(), 1, "{x509}");
    assert_eq!(presented[0]["certificate"], der_base64(d, "line-ca.pem"), "{x509}");
    assert_eq!(presented[0]["info"]["subjectName"], "CN=line-ca, O=Acme", "{x509}");
    assert_eq!(x509["signingCertificateInfo"]["subjectName"], "CN=factory-root", "{x509}");
    assert_eq!(context["payload"], payload, "{context}");
    let enrollment = &request["enrollmentGroup"];
    assert_eq!(enrollment["enrollmentGroupId"], "acme-lines", "{request}");
    let ca_info = &enrollment["attestation"]["x509"]["signingCertificates"]["primary"]["info"];
    assert_eq!(ca_info["sha1Thumbprint"], fingerprint(d, "factory-root.pem", "-sha1"), "{request}");
    assert_eq!(
        allocator.request_about("widget-2")["deviceRuntimeContext"]["x509"]["clientCertificateInfo"]["subjectName"],
        "CN=widget-2, OU=Line 2, O=Acme, C=DE"
    );

    // The group as the admin API shows it: the CA's info, as openssl sees it; an info sent back is ignored.
    let shown = ok(api.get("/enrollmentGroups/acme-lines").await).await;
    let primary = &shown["attestation"]["x509"]["signingCertificates"]["primary"];
    assert_eq!(primary["info"]["subjectName"], "CN=factory-root", "{shown}");
    assert_eq!(primary["info"]["sha256Thumbprint"], fingerprint(d, "factory-root.pem", "-sha256"), "{shown}");
    assert!(shown.get("registrationState").is_none(), "a group has no registration state: {shown}");
    let mut sent_back = shown.clone();
    sent_back["attestation"]["x509"]["signingCertificates"]["primary"]["info"]["subjectName"] = json!("CN=forged");
    let again = ok(api.put("/enrollmentGroups/acme-lines", &sent_back).await).await;
    assert_eq!(
        again["attestation"]["x509"]["signingCertificates"]["primary"]["info"]["subjectName"],
        "CN=factory-root"
    );

    allocator.stop().await;
    server.assert_no_secret_in_logs();
}

/// An individual X.509 enrollment whose webhook speaks `2018-11-01` gets the device's certificate but not its
/// payload (device payloads came with `2019-03-31`); a symmetric-key device's context is `symmetricKey: {}` and
/// never a key. Enrollment GET and query then show each enrolled device's `registrationState` (none for an
/// enrollment whose device never registered) and the client certificate's `info`.
async fn individual_enrollments_show_their_devices_state_and_older_api_versions_get_their_shape(backend: Backend) {
    let server = start(backend).await;
    let api = Api::new(&server, "owner");
    let allocator = Allocator::start(choosing(first_linked));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certificate_for(d, "meter-1", "/O=Acme/OU=Meters/CN=meter-1", None, DEVICE_EXTENSIONS);
    let certificate = std::fs::read_to_string(d.join("meter-1.pem")).unwrap();
    let custom = |api_version: &str| {
        json!({"allocationPolicy": "custom", "iotHubs": [LINE_2_HUB],
               "customAllocationDefinition": {"webhookUrl": allocator.url, "apiVersion": api_version}})
    };
    let mut meter = json!({"registrationId": "meter-1",
        "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": certificate}}}}});
    meter.as_object_mut().unwrap().extend(custom("2018-11-01").as_object().unwrap().clone());
    ok(api.put("/enrollments/meter-1", &meter).await).await;
    let key = rand::random::<[u8; 32]>();
    let mut keyed = json!({"registrationId": "keyed-1", "attestation": {"type": "symmetricKey", "symmetricKey": {
        "primaryKey": STANDARD.encode(key), "secondaryKey": STANDARD.encode(rand::random::<[u8; 32]>())}}});
    keyed.as_object_mut().unwrap().extend(custom("2021-10-01").as_object().unwrap().clone());
    ok(api.put("/enrollments/keyed-1", &keyed).await).await;
    let idle = json!({"registrationId": "idle-1", "attestation": {"type": "symmetricKey"}});
    ok(api.put("/enrollments/idle-1", &idle).await).await;

    let payload = json!({"model": "m-3"});
    let (status, done) = curl_register(
        &server,
        "meter-1",
        &d.join("meter-1.pem"),
        &d.join("meter-1.key"),
        json!({"registrationId": "meter-1", "payload": payload}),
    );
    assert_eq!((status, &done["status"]), (200, &json!("assigned")), "{done}");
    let (status, done) =
        sas_register(&server, "keyed-1", &key, json!({"registrationId": "keyed-1", "payload": payload})).await;
    assert_eq!((status, &done["status"]), (200, &json!("assigned")), "{done}");

    let meter_request = allocator.request_about("meter-1");
    let context = &meter_request["deviceRuntimeContext"];
    assert_eq!(context["x509"]["clientCertificate"], der_base64(d, "meter-1.pem"), "{context}");
    assert_eq!(context["x509"]["caCertificates"], json!([]), "{context}");
    assert!(context["x509"].get("signingCertificateInfo").is_none(), "no group CA: {context}");
    assert!(context.get("payload").is_none(), "2018-11-01 knew no device payloads: {context}");
    let enrolled = &meter_request["individualEnrollment"]["attestation"]["x509"]["clientCertificates"]["primary"];
    assert_eq!(enrolled["info"]["subjectName"], "CN=meter-1, OU=Meters, O=Acme", "{meter_request}");
    let keyed_request = allocator.request_about("keyed-1");
    let context = &keyed_request["deviceRuntimeContext"];
    assert_eq!(context["symmetricKey"], json!({}), "{context}");
    assert!(context.get("x509").is_none() && context.get("tpm").is_none(), "{context}");
    assert_eq!(context["payload"], payload, "{context}");
    assert!(!keyed_request.to_string().contains(&STANDARD.encode(key)), "the webhook got the key");

    let shown = ok(api.get("/enrollments/meter-1").await).await;
    let state = &shown["registrationState"];
    assert_eq!(state["registrationId"], "meter-1", "{shown}");
    assert_eq!((&state["status"], &state["assignedHub"]), (&json!("assigned"), &json!(LINE_2_HUB)), "{shown}");
    assert_eq!(state["deviceId"], "meter-1", "{shown}");
    let registration = ok(api.get("/registrations/meter-1").await).await;
    assert_eq!(state["etag"], registration["etag"], "the registration's own state: {shown}");
    let info = &shown["attestation"]["x509"]["clientCertificates"]["primary"]["info"];
    assert_eq!(info["sha1Thumbprint"], fingerprint(d, "meter-1.pem", "-sha1"), "{shown}");
    assert_eq!(info["issuerName"], "CN=meter-1, OU=Meters, O=Acme", "self-signed: {shown}");

    let page = ok(api.post("/enrollments/query", Some(&json!({"query": "SELECT * FROM enrollments"}))).await).await;
    let by_id = |id: &str| page.as_array().unwrap().iter().find(|e| e["registrationId"] == id).cloned().unwrap();
    assert_eq!(by_id("meter-1")["registrationState"]["status"], "assigned", "{page}");
    assert_eq!(by_id("keyed-1")["registrationState"]["assignedHub"], LINE_2_HUB, "{page}");
    assert!(by_id("idle-1").get("registrationState").is_none(), "never registered: {page}");
    assert!(by_id("meter-1")["attestation"]["x509"]["clientCertificates"]["primary"]["info"].is_object(), "{page}");

    // A GET's document sent back (registrationState and info included) is accepted, and they are not stored.
    let response = api.put("/enrollments/meter-1", &shown).await;
    let again = ok(response).await;
    assert!(again.get("registrationState").is_none(), "PUT answers the stored document: {again}");
    allocator.stop().await;
}

#[tokio::test]
async fn individual_enrollments_show_their_devices_state_sqlite() {
    individual_enrollments_show_their_devices_state_and_older_api_versions_get_their_shape(Backend::Sqlite).await;
}

#[tokio::test]
async fn individual_enrollments_show_their_devices_state_postgres() {
    individual_enrollments_show_their_devices_state_and_older_api_versions_get_their_shape(Backend::Postgres).await;
}
