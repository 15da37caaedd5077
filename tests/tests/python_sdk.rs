#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real Python Azure IoT device SDK (`azure-iot-device` from PyPI, pinned in `tests/python/requirements.txt`)
//! provisions over the MQTT endpoint: symmetric keys (individual and group-derived), X.509 (individual and group,
//! certificates made by openssl), a custom payload the allocation webhook reads and answers, and a disabled
//! enrollment, which the SDK reports as it does against Azure.
//!
//! The SDK hard-codes port 8883 (`docs/protocol/device-api.md` §9), so the endpoint listens on 127.0.0.1:8883 and
//! `.config/nextest.toml` runs these tests one at a time. It checks the host name (`localhost`, in the generated
//! server certificate) and speaks TLS 1.2 only. The virtualenv is made by `./scripts/test`; without it these
//! tests fail, saying what to run, they do not skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zerotouch_attest::sas;
use zerotouch_tests::openssl::{DEVICE_EXTENSIONS, make_ca, make_certificate, make_device};
use zerotouch_tests::{Api, Backend, Options, Server};

/// Where the SDK connects: it always uses port 8883.
const MQTT_LISTEN: &str = "127.0.0.1:8883";
/// The name the device uses for the service; the generated server certificate covers it.
const HOST: &str = "localhost";
const HUB: &str = "py-hub.example.com";

/// The virtualenv's Python, with the SDK installed; fails the test, saying what to run, when it is not.
fn python() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let python = dir.join(".venv/bin/python");
    let hint = "run ./scripts/test (or `python3 -m venv tests/python/.venv && tests/python/.venv/bin/pip install \
                -r tests/python/requirements.txt`) to install the Python Azure device SDK";
    let check = Command::new(&python).args(["-c", "import azure.iot.device"]).output();
    assert!(check.is_ok_and(|o| o.status.success()), "{} cannot import azure.iot.device: {hint}", python.display());
    python
}

/// Starts a server on SQLite whose MQTT endpoint is on 127.0.0.1:8883.
async fn start() -> Server {
    let options = Options {
        // The custom allocation webhook listens on plain http on loopback.
        args: ["--mqtt-listen", MQTT_LISTEN, "--device-rate-limit", "100/10s", "--allow-insecure-outbound"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let server = Server::start_on_fixed_port(Backend::Sqlite, options)
        .await
        .unwrap_or_else(|e| panic!("cannot start zerotouch with its MQTT endpoint on {MQTT_LISTEN}: {e:#}"));
    let api = Api::new(&server, "owner");
    let response = api.put(&format!("/hubs/{HUB}"), &json!({"hostName": HUB, "kind": "none"})).await;
    assert_eq!(response.status(), 200);
    server
}

/// How the device proves itself.
enum Credential<'a> {
    Key(&'a [u8]),
    Certificate { cert: &'a Path, key: &'a Path },
}

/// What the SDK reported: its result line and whether it succeeded.
#[derive(Debug)]
struct Run {
    success: bool,
    line: Value,
    stderr: String,
}

impl Run {
    fn result(&self) -> &Value {
        assert!(self.success, "the SDK failed to provision: {}\nstderr: {}", self.line, self.stderr);
        &self.line
    }
}

/// Runs `tests/python/provision.py` for `registration_id`.
async fn provision(server: &Server, registration_id: &str, credential: Credential<'_>, payload: Option<Value>) -> Run {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/provision.py");
    let mut command = Command::new(python());
    command.arg(script).args([HOST, &server.id_scope, registration_id]).arg(server.data_dir.join("trust-bundle.pem"));
    match credential {
        Credential::Key(key) => command.args(["--key", &STANDARD.encode(key)]),
        Credential::Certificate { cert, key } => command.arg("--cert").arg(cert).arg("--cert-key").arg(key),
    };
    if let Some(payload) = payload {
        command.args(["--payload", &payload.to_string()]);
    }
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || command.output().expect("cannot run python")),
    )
    .await
    .expect("the SDK did not finish within 120 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    Run {
        success: output.status.success(),
        line: serde_json::from_str(line).unwrap_or_else(|_| Value::String(stdout.clone().into_owned())),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn symmetric_key(primary: &[u8]) -> Value {
    json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(primary)}})
}

async fn put(server: &Server, path: &str, body: Value) {
    let response = Api::new(server, "owner").put(path, &body).await;
    let status = response.status();
    assert_eq!(status, 200, "PUT {path}: {}", response.text().await.unwrap());
}

/// An individual symmetric-key device with a device id of its own provisions; the registration is the one the
/// admin API shows, and the endpoint's log holds no token.
#[tokio::test]
async fn python_sdk_individual_symmetric_key() {
    let server = start().await;
    let (id, key) = ("py-individual-1", rand::random::<[u8; 32]>());
    let enrollment =
        json!({"registrationId": id, "deviceId": "py-thing-1", "attestation": symmetric_key(&key), "iotHubs": [HUB]});
    put(&server, &format!("/enrollments/{id}"), enrollment).await;
    let run = provision(&server, id, Credential::Key(&key), None).await;
    let result = run.result();
    assert_eq!(result["status"], "assigned", "{result}");
    assert_eq!(result["assignedHub"], HUB, "{result}");
    assert_eq!(result["deviceId"], "py-thing-1", "{result}");
    assert_eq!(result["substatus"], "initialAssignment", "{result}");
    let registration: Value =
        Api::new(&server, "owner").get(&format!("/registrations/{id}")).await.json().await.unwrap();
    assert_eq!(registration["assignedHub"], HUB, "{registration}");

    // A wrong key: refused at CONNACK, which the SDK reports as a failed connection.
    let run = provision(&server, id, Credential::Key(&rand::random::<[u8; 32]>()), None).await;
    assert!(!run.success, "a wrong key provisioned: {}", run.line);
}

/// A device of a symmetric-key group signs with the key derived from the group key (§2.2) and provisions.
#[tokio::test]
async fn python_sdk_group_derived_key() {
    let server = start().await;
    let (group, group_key, member) = ("py-group", rand::random::<[u8; 32]>(), "py-group-device-1");
    let enrollment = json!({"enrollmentGroupId": group, "attestation": symmetric_key(&group_key), "iotHubs": [HUB]});
    put(&server, &format!("/enrollmentGroups/{group}"), enrollment).await;
    let device_key = sas::derive_device_key(&group_key, member);
    let run = provision(&server, member, Credential::Key(device_key.as_slice()), None).await;
    let result = run.result();
    assert_eq!(
        (&result["status"], &result["assignedHub"], &result["deviceId"]),
        (&json!("assigned"), &json!(HUB), &json!(member))
    );
}

/// An X.509 device of an individual enrollment (its certificate enrolled) provisions with no password.
#[tokio::test]
async fn python_sdk_x509_individual() {
    let server = start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let id = "py-x509-solo";
    make_certificate(d, "solo", id, None, DEVICE_EXTENSIONS);
    let pem = std::fs::read_to_string(d.join("solo.pem")).unwrap();
    let enrollment = json!({
        "registrationId": id,
        "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": pem}}}},
        "iotHubs": [HUB],
    });
    put(&server, &format!("/enrollments/{id}"), enrollment).await;
    let run =
        provision(&server, id, Credential::Certificate { cert: &d.join("solo.pem"), key: &d.join("solo.key") }, None)
            .await;
    let result = run.result();
    assert_eq!(
        (&result["status"], &result["assignedHub"], &result["deviceId"]),
        (&json!("assigned"), &json!(HUB), &json!(id))
    );
}

/// An X.509 device whose certificate an enrolled CA signed (through an intermediate it sends) provisions in its
/// group; a device of a CA no group trusts is refused.
#[tokio::test]
async fn python_sdk_x509_group() {
    let server = start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "factory-root", None);
    make_ca(d, "factory-ica", Some("factory-root"));
    let id = "py-x509-member-1";
    make_device(d, "member", id, "factory-ica");
    let chain = std::fs::read_to_string(d.join("member.pem")).unwrap()
        + &std::fs::read_to_string(d.join("factory-ica.pem")).unwrap();
    std::fs::write(d.join("member-chain.pem"), chain).unwrap();
    let root = std::fs::read_to_string(d.join("factory-root.pem")).unwrap();
    let group = json!({
        "enrollmentGroupId": "py-x509-group",
        "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": root}}}},
        "iotHubs": [HUB],
    });
    put(&server, "/enrollmentGroups/py-x509-group", group).await;
    let credential = Credential::Certificate { cert: &d.join("member-chain.pem"), key: &d.join("member.key") };
    let run = provision(&server, id, credential, None).await;
    let result = run.result();
    assert_eq!(
        (&result["status"], &result["assignedHub"], &result["deviceId"]),
        (&json!("assigned"), &json!(HUB), &json!(id))
    );

    let stranger = "py-x509-stranger";
    make_ca(d, "other-root", None);
    make_device(d, "stranger", stranger, "other-root");
    let credential = Credential::Certificate { cert: &d.join("stranger.pem"), key: &d.join("stranger.key") };
    let run = provision(&server, stranger, credential, None).await;
    assert!(!run.success, "a device of an unknown CA provisioned: {}", run.line);
    assert_eq!(Api::new(&server, "owner").get(&format!("/registrations/{stranger}")).await.status(), 404);
}

/// The custom allocation webhook's requests, and its answer: the hub the device asks for in its payload, and a
/// payload that echoes the device's.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Value>>>);

async fn webhook(body: web::Json<Value>, seen: web::Data<Seen>) -> HttpResponse {
    let request = body.into_inner();
    seen.0.lock().unwrap().push(request.clone());
    let device_payload = request["deviceRuntimeContext"]["payload"].clone();
    let hub = device_payload["preferredHub"].as_str().unwrap_or_default().to_owned();
    HttpResponse::Ok().json(json!({"iotHubHostName": hub, "payload": {"echo": device_payload, "from": "webhook"}}))
}

/// A device sends a custom payload; the custom-allocation webhook reads it (choosing the hub it names) and
/// answers with a payload the SDK hands back to the device.
#[tokio::test]
async fn python_sdk_custom_payload_reaches_the_webhook() {
    let server = start().await;
    let other_hub = "py-hub-2.example.com";
    put(&server, &format!("/hubs/{other_hub}"), json!({"hostName": other_hub, "kind": "none"})).await;
    let seen = Seen::default();
    let data = web::Data::new(seen.clone());
    let http = HttpServer::new(move || App::new().app_data(data.clone()).route("/allocate", web::post().to(webhook)))
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
    let url = format!("http://{}/allocate", http.addrs()[0]);
    let running = http.run();
    let handle = running.handle();
    tokio::spawn(running);

    let (id, key) = ("py-custom-1", rand::random::<[u8; 32]>());
    let enrollment = json!({
        "registrationId": id,
        "attestation": symmetric_key(&key),
        "allocationPolicy": "custom",
        "iotHubs": [HUB, other_hub],
        "customAllocationDefinition": {"webhookUrl": url, "apiVersion": "2021-10-01"},
    });
    put(&server, &format!("/enrollments/{id}"), enrollment).await;
    let payload = json!({"preferredHub": other_hub, "model": "thermostat-v2"});
    let run = provision(&server, id, Credential::Key(&key), Some(payload.clone())).await;
    let result = run.result();
    assert_eq!(result["status"], "assigned", "{result}");
    assert_eq!(result["assignedHub"], other_hub, "{result}");
    assert_eq!(result["payload"], json!({"echo": payload, "from": "webhook"}), "{result}");
    let requests = seen.0.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0]["deviceRuntimeContext"]["payload"], payload);
    assert_eq!(requests[0]["deviceRuntimeContext"]["registrationId"], id);
    handle.stop(false).await;
}

/// A disabled enrollment: the operation ends `disabled`, which the SDK (like against Azure) reports as an
/// error naming that status (the registration records it).
#[tokio::test]
async fn python_sdk_disabled_enrollment() {
    let server = start().await;
    let (id, key) = ("py-disabled-1", rand::random::<[u8; 32]>());
    let enrollment = json!({"registrationId": id, "attestation": symmetric_key(&key), "iotHubs": [HUB], "provisioningStatus": "disabled"});
    put(&server, &format!("/enrollments/{id}"), enrollment).await;
    let run = provision(&server, id, Credential::Key(&key), None).await;
    assert!(!run.success, "a disabled device provisioned: {}", run.line);
    // azure-iot-device 2.14 raises ClientError("Unexpected failure") caused by the ServiceError below.
    assert_eq!(run.line["error"], "ClientError", "{run:?}");
    let cause = run.line["cause"].as_str().unwrap_or_default();
    assert!(cause.starts_with("ServiceError") && cause.contains("invalid registration status disabled"), "{run:?}");
    let registration: Value =
        Api::new(&server, "owner").get(&format!("/registrations/{id}")).await.json().await.unwrap();
    assert_eq!(registration["status"], "disabled", "{registration}");
}
