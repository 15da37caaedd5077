#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real Node Azure IoT device SDK (`azure-iot-provisioning-device` + `-http` + `azure-iot-security-symmetric-key`,
//! pinned in `tests/node/package-lock.json`) provisions against the service over HTTPS.
//!
//! The SDK hard-codes port 443, so the service's device API listens on 127.0.0.1:443 here, and the device trusts the
//! data dir's trust bundle through `NODE_EXTRA_CA_CERTS`. It signs its SAS token the Node way (`sr` not
//! URL-encoded, `skn=registration`, `docs/protocol/device-api.md` §2.1, §9). Only one process can hold port 443, so one test
//! runs both backends one after the other (and `.config/nextest.toml` keeps fixed-port tests apart).
//!
//! The SDK is installed by `./scripts/test` (`npm ci --prefix tests/node`); without it this test fails, it does
//! not skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zerotouch_attest::sas;
use zerotouch_tests::{BACKENDS, Backend, Options, Server};

/// Where the SDK connects: it always uses port 443.
const DEVICE_LISTEN: &str = "127.0.0.1:443";
/// The name the device uses for the service; the generated server certificate covers it.
const HOST: &str = "localhost";
const HUB: &str = "node-hub.example.com";

/// `tests/node`, with the SDK installed; fails the test, saying what to run, when it is not.
fn node_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
    let hint = "run ./scripts/test (or `npm ci --prefix tests/node`) to install the Node Azure device SDK";
    for package in
        ["azure-iot-provisioning-device", "azure-iot-provisioning-device-http", "azure-iot-security-symmetric-key"]
    {
        let path = dir.join("node_modules").join(package).join("package.json");
        assert!(path.is_file(), "{} is missing: {hint}", path.display());
    }
    let node = Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "`node` cannot be run: {hint} (it installs Node.js too)");
    dir
}

/// Starts a server on `backend` whose device API is on 127.0.0.1:443.
async fn start(backend: Backend) -> Server {
    let options = Options {
        args: ["--device-listen", DEVICE_LISTEN, "--device-rate-limit", "100/10s"].map(String::from).to_vec(),
        ..Default::default()
    };
    Server::start_on_fixed_port(backend, options).await.unwrap_or_else(|e| {
        panic!(
            "cannot start zerotouch with its device API on {DEVICE_LISTEN} (binding port 443 needs root or \
             CAP_NET_BIND_SERVICE): {e:#}"
        )
    })
}

/// What the SDK reported.
#[derive(Debug)]
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The result line of a successful run.
    fn result(&self) -> Value {
        assert!(self.success, "the SDK failed to provision:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON result line ({e}): {}", self.stdout))
    }
}

/// `node tests/node/provision.js HOST SCOPE REGISTRATION_ID KEY`, trusting the server's trust bundle.
async fn provision(node_dir: &Path, server: &Server, registration_id: &str, key: &[u8]) -> Run {
    let mut command = Command::new("node");
    command
        .arg(node_dir.join("provision.js"))
        .args([HOST, &server.id_scope, registration_id, &STANDARD.encode(key)])
        .env("NODE_EXTRA_CA_CERTS", server.data_dir.join("trust-bundle.pem"))
        // `localhost` may resolve to ::1 first, where nothing listens; Node 18 (Debian's) does not fall back.
        .env("NODE_OPTIONS", "--dns-result-order=ipv4first")
        .env("PROVISION_TIMEOUT_MS", "60000")
        .env_remove("DEBUG");
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("cannot run node");
    Run {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// PUT `path` on the admin API as owner; must answer 200.
async fn put(server: &Server, token: &str, path: &str, body: Value) {
    let response = server.client.put(server.url(path)).bearer_auth(token).json(&body).send().await.unwrap();
    let status = response.status();
    assert_eq!(status, 200, "PUT {path}: {}", response.text().await.unwrap());
}

fn new_key() -> [u8; 32] {
    rand::random()
}

fn symmetric_key(primary: &[u8]) -> Value {
    json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(primary)}})
}

async fn scenarios(node_dir: &Path, server: &Server, backend: Backend) {
    let owner = server.token("owner").unwrap();
    put(server, &owner, &format!("/hubs/{HUB}"), json!({"hostName": HUB, "kind": "none"})).await;

    // An individual enrollment with a known key and a device id of its own.
    let (id, device_id, key) = ("node-individual-1", "node-thing-1", new_key());
    let enrollment = json!({
        "registrationId": id,
        "deviceId": device_id,
        "attestation": symmetric_key(&key),
        "iotHubs": [HUB],
    });
    put(server, &owner, &format!("/enrollments/{id}"), enrollment).await;
    let result = provision(node_dir, server, id, &key).await.result();
    assert_eq!(result["status"], "assigned", "{backend:?}: {result}");
    assert_eq!(result["assignedHub"], HUB, "{backend:?}: {result}");
    assert_eq!(result["deviceId"], device_id, "{backend:?}: {result}");
    assert_eq!(result["registrationId"], id, "{backend:?}: {result}");
    assert_eq!(result["substatus"], "initialAssignment", "{backend:?}: {result}");

    // A group enrollment: the device signs with the key derived from the group key (§2.2).
    let (group, group_key, member) = ("node-group", new_key(), "node-group-device-1");
    let enrollment = json!({"enrollmentGroupId": group, "attestation": symmetric_key(&group_key), "iotHubs": [HUB]});
    put(server, &owner, &format!("/enrollmentGroups/{group}"), enrollment).await;
    let device_key = sas::derive_device_key(&group_key, member);
    let result = provision(node_dir, server, member, device_key.as_slice()).await.result();
    assert_eq!(result["status"], "assigned", "{backend:?}: {result}");
    assert_eq!(result["assignedHub"], HUB, "{backend:?}: {result}");
    assert_eq!(result["deviceId"], member, "{backend:?}: {result}");
    assert_eq!(result["registrationId"], member, "{backend:?}: {result}");

    // A wrong key: the SDK fails, the service assigns nothing and audits the refusal.
    let refused = "node-refused-1";
    let enrollment = json!({"registrationId": refused, "attestation": symmetric_key(&new_key()), "iotHubs": [HUB]});
    put(server, &owner, &format!("/enrollments/{refused}"), enrollment).await;
    let run = provision(node_dir, server, refused, &new_key()).await;
    assert!(!run.success, "{backend:?}: a wrong key provisioned: {}", run.stdout);
    assert!(run.stderr.contains("\"statusCode\":401"), "{backend:?}: not refused with 401: {}", run.stderr);
    let registration = server.client.get(server.url(&format!("/registrations/{refused}"))).bearer_auth(&owner);
    assert_eq!(registration.send().await.unwrap().status(), 404, "{backend:?}: a refused device has a registration");
    let audit: Vec<Value> =
        server.client.get(server.url("/audit")).bearer_auth(&owner).send().await.unwrap().json().await.unwrap();
    let attempts: Vec<&Value> = audit.iter().filter(|e| e["resourceId"] == refused && e["role"] == "device").collect();
    assert!(
        attempts.iter().any(|e| e["actor"] == format!("device:{refused}")
            && e["action"] == "register"
            && e["resourceType"] == "registration"
            && e["detail"].as_str().is_some_and(|d| d.contains("sas"))
            && e.get("etagAfter").is_none()),
        "{backend:?}: the refused attempt is not in the audit log: {attempts:?}\n{}",
        server.logs()
    );
}

/// The Node SDK provisions an individual and a group symmetric-key device over HTTPS and is refused with a wrong
/// key, on SQLite, then on PostgreSQL.
#[tokio::test]
async fn node_sdk_provisions_over_https() {
    let node_dir = node_dir();
    for backend in BACKENDS {
        let mut server = start(backend).await;
        scenarios(&node_dir, &server, backend).await;
        let status = server.stop().unwrap();
        assert!(status.success(), "{backend:?}: exit status {status}");
    }
}
