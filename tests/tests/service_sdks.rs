#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Microsoft's service clients, as shipped, manage zerotouch unchanged (issue #19): the Node
//! `azure-iot-provisioning-service` (pinned in `tests/node/package.json`) and the Python
//! `azure-iot-deviceprovisioning` (pinned in `tests/python/requirements.txt`), each with a connection string of a
//! shared access policy and with a bearer token (Node's `TokenCredential` hook, Python's `credential=`). The
//! drivers (`tests/node/service.js`, `tests/python/service.py`) make every call the clients have (enrollment and
//! group CRUD with etags, attestation mechanisms, bulk operations, the three queries paged, registration state get,
//! delete and query) and assert each result.
//!
//! Node's connection string cannot carry a port (its `HostName` goes to `https.request` as a host), so the admin
//! API listens on 127.0.0.2:443 here (127.0.0.1:443 is the device SDK tests' own, `node_sdk.rs`), and the service's
//! `--hostname` is 127.0.0.2, which its generated certificate then covers. Python's connection string names the
//! port (`HostName=127.0.0.2:443`), which its SAS then signs. Both database backends, one after the other. `.config/nextest.toml` keeps fixed-port tests apart.
//! The clients are installed by `./scripts/test`; without them this test fails, it does not skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zerotouch_attest::sas;
use zerotouch_tests::device::sas_register;
use zerotouch_tests::openssl::{make_ca, make_device};
use zerotouch_tests::{Api, BACKENDS, Backend, Options, Server};

/// Where the admin API listens: port 443, the only one the Node client reaches.
const SERVICE_LISTEN: &str = "127.0.0.2:443";
/// The service's host name, as the clients name it.
const HOST: &str = "127.0.0.2";
const HUB: &str = "sdk-hub.example.com";

fn node_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
    let path = dir.join("node_modules/azure-iot-provisioning-service/package.json");
    assert!(path.is_file(), "{} is missing: run ./scripts/test (or `npm ci --prefix tests/node`)", path.display());
    dir
}

fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/.venv/bin/python");
    let check = Command::new(&python).args(["-c", "import azure.iot.deviceprovisioning"]).output();
    assert!(
        check.is_ok_and(|o| o.status.success()),
        "{} cannot import azure.iot.deviceprovisioning: run ./scripts/test (it installs tests/python/requirements.txt)",
        python.display()
    );
    python
}

async fn start(backend: Backend) -> Server {
    let options = Options {
        args: ["--service-listen", SERVICE_LISTEN, "--hostname", HOST, "--device-rate-limit", "100/10s"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    Server::start_on_fixed_port(backend, options)
        .await
        .unwrap_or_else(|e| panic!("cannot start zerotouch with its admin API on {SERVICE_LISTEN}: {e:#}"))
}

async fn ok(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A group of `count` devices that registered (for the registration state calls); their ids.
async fn fleet(server: &Server, api: &Api<'_>, group: &str, count: usize) -> Vec<String> {
    let key: [u8; 32] = rand::random();
    let body = json!({"enrollmentGroupId": group, "iotHubs": [HUB],
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(key)}}});
    ok(api.put(&format!("/enrollmentGroups/{group}"), &body).await).await;
    let mut ids = Vec::new();
    for i in 0..count {
        let id = format!("{group}-device-{i}");
        let device_key = sas::derive_device_key(&key, &id);
        let (status, reply) = sas_register(server, &id, device_key.as_slice(), json!({"registrationId": id})).await;
        assert_eq!((status, reply["status"].as_str()), (200, Some("assigned")), "{reply}");
        ids.push(id);
    }
    ids
}

/// Runs a driver; its stdout lines, or a failure with both streams.
fn run(mut command: Command, what: &str) -> Vec<Value> {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what} failed:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_eq!(lines.last().map(|l| &l["done"]), Some(&json!(true)), "{what} did not finish:\n{stdout}\n{stderr}");
    lines
}

struct Setup {
    connection_string: String,
    token: String,
    certificate: String,
}

async fn setup(server: &Server, dir: &Path) -> Setup {
    let owner = Api::new(server, "owner");
    ok(owner.put(&format!("/hubs/{HUB}"), &json!({"hostName": HUB, "kind": "none"})).await).await;
    // A policy with every right the clients' calls need, as an Azure user's `provisioningserviceowner`.
    let rights = "ServiceConfig, EnrollmentRead, EnrollmentWrite, RegistrationStatusRead, RegistrationStatusWrite";
    ok(owner.put("/sharedAccessPolicies/sdk-owner", &json!({"rights": rights})).await).await;
    let keys = ok(owner.post("/sharedAccessPolicies/sdk-owner/keys", None).await).await;
    let key = keys["primaryKey"].as_str().unwrap();
    make_ca(dir, "sdk-ca", None);
    make_device(dir, "sdk-device", "sdk-x509-device", "sdk-ca");
    Setup {
        connection_string: format!("HostName={HOST};SharedAccessKeyName=sdk-owner;SharedAccessKey={key}"),
        token: server.token("operator").unwrap(),
        certificate: std::fs::read_to_string(dir.join("sdk-device.pem")).unwrap(),
    }
}

/// Runs `driver` (the client's script, given its config as its one argument) for each of `credentials`, each
/// with a registered fleet of its own, and checks it made at least `steps` calls and finished.
async fn drive(
    server: &Server,
    setup: &Setup,
    credentials: [(&'static str, Value); 2],
    steps: usize,
    driver: impl Fn(&str) -> Command,
) {
    let api = Api::new(server, "owner");
    for (prefix, credential) in credentials {
        let group = format!("{prefix}-fleet");
        let ids = fleet(server, &api, &group, 3).await;
        let mut config = credential;
        config["prefix"] = json!(prefix);
        config["certificate"] = json!(setup.certificate);
        config["fleetGroup"] = json!(group);
        config["fleet"] = json!(ids);
        let command = driver(&config.to_string());
        let lines = tokio::task::spawn_blocking(move || run(command, prefix)).await.unwrap();
        assert!(lines.len() > steps, "{prefix}: {lines:?}");
    }
}

/// Every call of the Node service client, with a connection string and with a bearer token.
async fn node_runs(server: &Server, setup: &Setup) {
    let script = node_dir().join("service.js");
    let credentials = [
        ("node-cs", json!({"connectionString": setup.connection_string})),
        ("node-token", json!({"host": HOST, "token": setup.token})),
    ];
    drive(server, setup, credentials, 16, |config| {
        let mut command = Command::new("node");
        command
            .arg(&script)
            .arg(config)
            .env("NODE_EXTRA_CA_CERTS", server.data_dir.join("trust-bundle.pem"))
            .env_remove("DEBUG");
        command
    })
    .await;
}

/// Every call of the Python service client, with a connection string (port included) and with a token credential.
async fn python_runs(server: &Server, setup: &Setup) {
    let python = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/service.py");
    let with_port = setup.connection_string.replace(&format!("HostName={HOST};"), &format!("HostName={HOST}:443;"));
    let credentials = [
        ("py-cs", json!({"connectionString": with_port})),
        ("py-token", json!({"endpoint": format!("https://{HOST}:443"), "token": setup.token})),
    ];
    drive(server, setup, credentials, 11, |config| {
        let mut command = Command::new(&python);
        command.arg(&script).arg(config).env("REQUESTS_CA_BUNDLE", server.data_dir.join("trust-bundle.pem"));
        command
    })
    .await;
}

/// Both clients, both credentials, every call, on SQLite and then on PostgreSQL; and the audit log names the policy
/// for the connection strings' writes.
#[tokio::test]
async fn the_azure_service_clients_manage_zerotouch_unchanged() {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let mut server = start(backend).await;
        let setup = setup(&server, dir.path()).await;
        node_runs(&server, &setup).await;
        python_runs(&server, &setup).await;
        let owner = Api::new(&server, "owner");
        let audit = owner.request(reqwest::Method::GET, "/audit").header("x-ms-max-item-count", "1000");
        let audit = ok(audit.send().await.unwrap()).await;
        let by_policy =
            audit.as_array().unwrap().iter().filter(|e| e["actor"] == "sharedAccessPolicy:sdk-owner").count();
        assert!(by_policy > 0, "{backend:?}: no audit event names the policy: {audit}");
        let status = server.stop().unwrap();
        assert!(status.success(), "{backend:?}: exit status {status}");
    }
}
