#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Secrets at rest (issue #17), against the real binary: what an attacker who copies the database finds, what a
//! wrong master key does, rotating the master key under running replicas, and upgrading a database of 0.1.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zerotouch_tests::device::sas_register_start;
use zerotouch_tests::softhsm::{self, SoftHsm};
use zerotouch_tests::swtpm::Swtpm;
use zerotouch_tests::{Api, Backend, Options, Server, binary};

const API: &str = "api-version=2021-06-01";
const MOSQUITTO_PASSWORD: &str = "mosquitto-admin-Pa55word-at-rest";
const WEBHOOK_SECRET: &str = "webhook-secret-at-rest-0123456789";

async fn ok(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A symmetric-key device's register is accepted (202): its key was read back and verified its token.
async fn registered(server: &Server, id: &str, key: &[u8]) {
    let answer = sas_register_start(server, id, key, &json!({"registrationId": id})).await;
    assert!(answer.is_ok(), "{id}: {answer:?}");
}

/// A key of `len` bytes, none of them zero, each enrollment's own.
fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn key(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8).wrapping_mul(31) | 1).collect()
}

/// The forms a secret could take in a database: raw bytes, base64, hex, and its text.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![secret.to_vec(), STANDARD.encode(secret).into_bytes(), hex(secret).into_bytes()];
    // Base64 inside JSON escapes `/` as `\/` in some writers; its first 24 characters carry no `/` or `+` often
    // enough, and any 16 of them are as telling as the whole.
    forms.push(STANDARD.encode(secret).as_bytes()[..16].to_vec());
    forms
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of the database: the SQLite file and its WAL, or a `pg_dump` of the PostgreSQL database (every row of
/// every table, as text).
fn database_bytes(backend: Backend, url: &str) -> Vec<u8> {
    match backend {
        Backend::Sqlite => {
            let path = url.trim_start_matches("sqlite://").split('?').next().unwrap().to_owned();
            let mut bytes = Vec::new();
            for suffix in ["", "-wal"] {
                if let Ok(more) = std::fs::read(format!("{path}{suffix}")) {
                    bytes.extend(more);
                }
            }
            assert!(bytes.len() > 10_000, "the SQLite file at {path} is read");
            bytes
        }
        Backend::Postgres => {
            let out = Command::new("pg_dump").args(["--data-only", "--no-owner", url]).output().unwrap();
            assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
            assert!(contains(&out.stdout, b"COPY public.individual_enrollments"), "pg_dump dumps the rows");
            out.stdout
        }
    }
}

/// Asserts that none of `secrets` (named) appears in `bytes` in any form.
fn assert_absent(bytes: &[u8], secrets: &[(&str, Vec<u8>)], when: &str) {
    for (name, secret) in secrets {
        for form in forms(secret) {
            assert!(!contains(bytes, &form), "{when}: the {name} is in the database ({} bytes form)", form.len());
        }
    }
}

/// The text columns of one table, from the test's own connection (`zerotouch_store` entities are private).
async fn column(url: &str, sql: &str) -> Vec<String> {
    let store_url = url.to_owned();
    let output = match Backend::of_url(&store_url).unwrap() {
        Backend::Sqlite => {
            let path = store_url.trim_start_matches("sqlite://").split('?').next().unwrap().to_owned();
            Command::new("sqlite3").args([path.as_str(), sql]).output().unwrap()
        }
        Backend::Postgres => Command::new("psql").args([store_url.as_str(), "-At", "-c", sql]).output().unwrap(),
    };
    assert!(output.status.success(), "{sql}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(str::to_owned).collect()
}

/// A full run: individual and group enrollments with their keys, a Mosquitto hub with its admin password and a
/// webhook hub with its secret (neither reachable, so their jobs wait in the outbox), devices registering to them,
/// a TPM device's first leg (its challenge key stored), an issuing CA. Then the database's bytes hold none of those
/// secrets in any form, every secret column holds an envelope, and the service still works with them after a
/// restart (devices authenticate, hub settings are kept).
async fn no_secret_is_stored_in_clear(backend: Backend) {
    // The webhook hub listens on nothing on loopback, which outbound calls reach only when allowed.
    let args = vec![
        "--device-rate-limit".into(),
        "1000/10s".into(),
        "--hub-inline-timeout".into(),
        "200ms".into(),
        "--allow-insecure-outbound".into(),
    ];
    let server = Server::start_with(backend, Options { args: args.clone(), ..Default::default() }).await.unwrap();
    let api = Api::new(&server, "owner");
    let mosquitto = json!({"hostName": "mqtt.secrets.example", "kind": "mosquitto",
        "settings": {"host": "127.0.0.1", "port": 9, "username": "zerotouch-admin", "password": MOSQUITTO_PASSWORD}});
    ok(api.put("/hubs/mqtt.secrets.example", &mosquitto).await).await;
    let webhook = json!({"hostName": "hook.secrets.example", "kind": "webhook",
        "settings": {"url": "http://127.0.0.1:9/zerotouch", "secret": WEBHOOK_SECRET, "timeoutMs": 100}});
    ok(api.put("/hubs/hook.secrets.example", &webhook).await).await;

    let mut secrets: Vec<(&str, Vec<u8>)> =
        vec![("Mosquitto password", MOSQUITTO_PASSWORD.into()), ("webhook secret", WEBHOOK_SECRET.into())];
    for (i, hub) in ["mqtt.secrets.example", "hook.secrets.example"].into_iter().enumerate() {
        let id = format!("sealed-device-{i}");
        let (primary, secondary) = (key(10 + i as u8, 32), key(40 + i as u8, 64));
        let enrollment = json!({"registrationId": id, "iotHubs": [hub], "attestation": {"type": "symmetricKey",
            "symmetricKey": {"primaryKey": STANDARD.encode(&primary), "secondaryKey": STANDARD.encode(&secondary)}}});
        ok(api.put(&format!("/enrollments/{id}"), &enrollment).await).await;
        registered(&server, &id, &primary).await;
        secrets.push(("individual primary key", primary));
        secrets.push(("individual secondary key", secondary));
    }
    let (group_primary, group_secondary) = (key(90, 64), key(120, 48));
    let group = json!({"enrollmentGroupId": "sealed-fleet", "iotHubs": ["hook.secrets.example"],
        "attestation": {"type": "symmetricKey", "symmetricKey":
            {"primaryKey": STANDARD.encode(&group_primary), "secondaryKey": STANDARD.encode(&group_secondary)}}});
    ok(api.put("/enrollmentGroups/sealed-fleet", &group).await).await;
    let derived = zerotouch_attest::sas::derive_device_key(&group_primary, "fleet-device-1").to_vec();
    registered(&server, "fleet-device-1", &derived).await;
    secrets.push(("group primary key", group_primary));
    secrets.push(("group secondary key", group_secondary));
    // A generated key (the enrollment gives none): read back through attestationmechanism.
    let generated = json!({"registrationId": "sealed-generated", "attestation": {"type": "symmetricKey"}});
    ok(api.put("/enrollments/sealed-generated", &generated).await).await;
    let mechanism = ok(api.post("/enrollments/sealed-generated/attestationmechanism", None).await).await;
    let generated_key = STANDARD.decode(mechanism["symmetricKey"]["primaryKey"].as_str().unwrap()).unwrap();
    secrets.push(("generated primary key", generated_key));

    // A custom allocation webhook whose URL carries its key (as an Azure Function's does).
    let function_key = "allocation-function-key-0123456789";
    let custom = json!({"registrationId": "sealed-custom", "attestation": {"type": "symmetricKey"},
        "allocationPolicy": "custom", "iotHubs": ["hook.secrets.example"], "customAllocationDefinition":
        {"webhookUrl": format!("https://allocate.example/api/hub?code={function_key}"), "apiVersion": "2021-10-01"}});
    ok(api.put("/enrollments/sealed-custom", &custom).await).await;
    let read = ok(api.get("/enrollments/sealed-custom").await).await;
    assert_eq!(read["customAllocationDefinition"], custom["customAllocationDefinition"], "{read}");
    secrets.push(("allocation webhook key", function_key.into()));

    // Shared access policies: one with keys given, one with keys generated (read back through .../keys).
    let (policy_primary, policy_secondary) = (key(150, 32), key(180, 64));
    let policy = json!({"rights": "EnrollmentRead, EnrollmentWrite", "primaryKey": STANDARD.encode(&policy_primary),
        "secondaryKey": STANDARD.encode(&policy_secondary)});
    ok(api.put("/sharedAccessPolicies/sealed-policy", &policy).await).await;
    ok(api.put("/sharedAccessPolicies/sealed-generated", &json!({"rights": "ServiceConfig", "primaryKey": ""})).await)
        .await;
    let shown = ok(api.post("/sharedAccessPolicies/sealed-generated/keys", None).await).await;
    for field in ["primaryKey", "secondaryKey"] {
        secrets.push(("generated policy key", STANDARD.decode(shown[field].as_str().unwrap()).unwrap()));
    }
    secrets.push(("policy primary key", policy_primary));
    secrets.push(("policy secondary key", policy_secondary));

    // A TPM device's first leg: its challenge key is stored for the second leg.
    let tpm = Swtpm::start().unwrap();
    let (ek, srk) = tpm.provision_keys().unwrap();
    let enrollment = json!({"registrationId": "sealed-tpm", "attestation": {"type": "tpm", "tpm": {"endorsementKey": ek}},
        "iotHubs": ["mqtt.secrets.example"]});
    ok(api.put("/enrollments/sealed-tpm", &enrollment).await).await;
    let url = server.device(&format!("/{}/registrations/sealed-tpm/register?{API}", server.id_scope));
    let body = json!({"registrationId": "sealed-tpm", "tpm": {"endorsementKey": ek, "storageRootKey": srk}});
    let reply = server.client.put(url).json(&body).send().await.unwrap();
    assert_eq!(reply.status().as_u16(), 401, "the first leg answers a challenge");

    // The outbox holds the jobs of the unreachable hubs.
    let jobs = column(&server.database_url, "SELECT count(*) FROM hub_jobs").await;
    assert_ne!(jobs, vec!["0".to_owned()], "jobs wait for the unreachable hubs");

    let database_url = server.database_url.clone();
    let (_, server) = server.restart(backend).await.unwrap();
    assert_absent(&database_bytes(backend, &database_url), &secrets, "after a full run");

    // Every secret column holds envelopes, the TPM challenge key (which the test cannot know) included.
    for sql in [
        "SELECT primary_symmetric_key FROM individual_enrollments WHERE primary_symmetric_key IS NOT NULL",
        "SELECT secondary_symmetric_key FROM enrollment_groups",
        "SELECT hmac_key FROM tpm_challenges",
        "SELECT encrypted_key FROM issuing_cas",
        "SELECT primary_key FROM shared_access_policies",
        "SELECT secondary_key FROM shared_access_policies",
    ] {
        let values = column(&database_url, sql).await;
        assert!(!values.is_empty(), "{sql}");
        assert!(values.iter().all(|v| v.starts_with("zt-sealed:")), "{sql}: {values:?}");
    }

    // And the service reads them back: devices authenticate, the hub keeps its password (a PUT without it).
    let api = Api::new(&server, "owner");
    registered(&server, "sealed-device-1", &key(11, 32)).await;
    let mut without = mosquitto.clone();
    without["settings"].as_object_mut().unwrap().remove("password");
    ok(api.put("/hubs/mqtt.secrets.example", &without).await).await;
    // A policy's key still signs tokens the service accepts.
    let token = zerotouch_attest::sas::sign("localhost", now() + 600, &key(150, 32), Some("sealed-policy"));
    ok(server
        .client
        .get(server.url("/enrollments/sealed-custom"))
        .header("Authorization", token)
        .send()
        .await
        .unwrap())
    .await;
    assert_absent(&database_bytes(backend, &database_url), &secrets, "after the restart");
}

#[tokio::test]
async fn no_secret_is_stored_in_clear_sqlite() {
    no_secret_is_stored_in_clear(Backend::Sqlite).await;
}

#[tokio::test]
async fn no_secret_is_stored_in_clear_postgres() {
    no_secret_is_stored_in_clear(Backend::Postgres).await;
}

/// Runs `zerotouch ARGS` to completion: its status and what it printed.
fn zerotouch(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(binary().unwrap())
        .args(args)
        .env_remove("DATABASE_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn write_key(dir: &Path, name: &str, bytes: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", STANDARD.encode([bytes; 32]))).unwrap();
    path
}

/// A master key other than the database's stops the start, naming the problem and the setting, and serves nothing.
/// `rotate-master-key` rewraps the data key while a replica runs: that replica carries on (it holds the data key),
/// a new replica starts with the new key (from `ZEROTOUCH_MASTER_KEY`, which the process then no longer has) and
/// not with the old one, and a rotation given the wrong current key changes nothing.
async fn wrong_master_keys_stop_the_start_and_rotation_needs_no_downtime(backend: Backend) {
    let keys = tempfile::tempdir().unwrap();
    let (old, new, stranger) =
        (write_key(keys.path(), "old", 1), write_key(keys.path(), "new", 2), write_key(keys.path(), "stranger", 3));
    let with_key = |path: &Path| {
        vec!["--master-key-file".to_owned(), path.display().to_string(), "--device-rate-limit".into(), "100/10s".into()]
    };
    let first = Server::start_with(backend, Options { args: with_key(&old), ..Default::default() }).await.unwrap();
    let api = Api::new(&first, "operator");
    let primary = key(7, 32);
    let enrollment = json!({"registrationId": "rotating", "attestation": {"type": "symmetricKey",
        "symmetricKey": {"primaryKey": STANDARD.encode(&primary), "secondaryKey": STANDARD.encode(key(8, 32))}}});
    ok(api.put("/enrollments/rotating", &enrollment).await).await;

    let replica = |args: Vec<String>, env: Vec<(String, String)>| Options {
        database_url: Some(first.database_url.clone()),
        args: [args, vec!["--id-scope".into(), first.id_scope.clone()]].concat(),
        env,
        ..Default::default()
    };
    let err = Server::start_with(backend, replica(with_key(&stranger), vec![])).await.unwrap_err().to_string();
    assert!(err.contains("wrong master key") && err.contains("--master-key-file"), "{err}");
    assert!(!err.contains("zerotouch: admin API"), "nothing was served: {err}");

    let database = ["--database-url", first.database_url.as_str()];
    let (done, text) = zerotouch(
        &[
            &["rotate-master-key"][..],
            &database,
            &["--master-key-file", stranger.to_str().unwrap()],
            &["--new-master-key-file", new.to_str().unwrap()],
        ]
        .concat(),
        &[],
    );
    assert!(!done && text.contains("wrong master key") && text.contains("nothing was changed"), "{text}");
    let (done, text) = zerotouch(
        &[
            &["rotate-master-key"][..],
            &database,
            &["--master-key-file", old.to_str().unwrap()],
            &["--new-master-key-file", new.to_str().unwrap()],
        ]
        .concat(),
        &[],
    );
    assert!(done, "{text}");
    assert!(text.contains("rewrapped"), "{text}");

    // The running replica keeps its data key: devices still authenticate, keys are still written and read.
    registered(&first, "rotating", &primary).await;
    ok(api
        .put(
            "/enrollments/rotated-later",
            &json!({"registrationId": "rotated-later",
        "attestation": {"type": "symmetricKey"}}),
        )
        .await)
    .await;

    let err = Server::start_with(backend, replica(with_key(&old), vec![])).await.unwrap_err().to_string();
    assert!(err.contains("wrong master key"), "the old key no longer opens the database: {err}");
    let new_text = std::fs::read_to_string(&new).unwrap().trim().to_owned();
    let env = vec![("ZEROTOUCH_MASTER_KEY".to_owned(), new_text.clone())];
    let second =
        Server::start_with(backend, replica(vec!["--device-rate-limit".into(), "100/10s".into()], env)).await.unwrap();
    registered(&second, "rotating", &primary).await;
    let later =
        ok(Api::new(&second, "operator").post("/enrollments/rotated-later/attestationmechanism", None).await).await;
    assert!(later["symmetricKey"]["primaryKey"].is_string(), "{later}");
    assert!(!second.logs().contains(&new_text), "the master key reached the logs");
}

#[tokio::test]
async fn wrong_master_keys_stop_the_start_and_rotation_needs_no_downtime_sqlite() {
    wrong_master_keys_stop_the_start_and_rotation_needs_no_downtime(Backend::Sqlite).await;
}

#[tokio::test]
async fn wrong_master_keys_stop_the_start_and_rotation_needs_no_downtime_postgres() {
    wrong_master_keys_stop_the_start_and_rotation_needs_no_downtime(Backend::Postgres).await;
}

/// The fixtures of `tests/fixtures/make-0.1-databases.sh`: databases written by the 0.1 binary.
fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/0.1")
}

/// Copies a fixture data dir, with the modes the service demands of its key files (git keeps no modes).
fn copy_data_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target).unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let private = name.ends_with(".key") || name == "ca-passphrase" || name == "zerotouch.db";
        let mode = if private { 0o600 } else { 0o644 };
        std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
}

/// What the fixture wrote: secrets.txt, base64 per line.
fn fixture_secrets() -> Vec<(&'static str, Vec<u8>)> {
    let names = [
        "individual primary key",
        "individual secondary key",
        "group primary key",
        "group secondary key",
        "Mosquitto password",
        "webhook secret",
    ];
    let text = std::fs::read_to_string(fixture().join("secrets.txt")).unwrap();
    names.into_iter().zip(text.lines().map(|l| STANDARD.decode(l).unwrap())).collect()
}

/// A database written by 0.1 (enrollment keys, hub password and webhook secret in clear; the issuing CA's key
/// encrypted with the data dir's passphrase) is sealed on the first start with a master key: the secrets are gone
/// from the database's bytes, the devices still authenticate with their keys, the CA still signs, and the passphrase
/// is not needed any more. The test checks first that the secrets are in the 0.1 database, so that it could fail.
async fn a_database_of_0_1_is_sealed_on_first_start(backend: Backend) {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let (database_url, _database) = match backend {
        Backend::Sqlite => {
            copy_data_dir(&fixture().join("sqlite/data"), &data);
            (format!("sqlite://{}?mode=rwc", data.join("zerotouch.db").display()), None)
        }
        Backend::Postgres => {
            copy_data_dir(&fixture().join("postgres/data"), &data);
            let database = zerotouch_store::test_support::TestDatabase::create(backend).await.unwrap();
            let (done, text) = zerotouch(&["migrate", "--database-url", &database.url], &[]);
            assert!(done, "{text}");
            let rows = fixture().join("postgres/rows.sql");
            let loaded = Command::new("psql")
                .args([database.url.as_str(), "-q", "-v", "ON_ERROR_STOP=1", "-f", rows.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
            (database.url.clone(), Some(database))
        }
    };
    let secrets = fixture_secrets();
    let before = database_bytes(backend, &database_url);
    for (name, secret) in &secrets[4..] {
        assert!(contains(&before, secret), "the 0.1 database holds the {name} in clear");
    }
    assert!(contains(&before, &STANDARD.encode(&secrets[0].1).into_bytes()), "and the enrollment keys, base64");

    let options =
        Options { data_dir: Some(data.clone()), database_url: Some(database_url.clone()), ..Default::default() };
    let server = Server::start_with(backend, options.clone()).await.unwrap();
    let logs = server.logs();
    assert!(logs.contains("stored in clear were sealed in place"), "{logs}");
    assert!(logs.contains("sealed 1 issuing CA key(s) of 0.1"), "{logs}");
    registered(&server, "legacy-device", &secrets[0].1).await;
    let derived = zerotouch_attest::sas::derive_device_key(&secrets[2].1, "legacy-fleet-device").to_vec();
    registered(&server, "legacy-fleet-device", &derived).await;
    let crl = server.client.get(server.url("/pki/crl/development")).send().await.unwrap();
    assert_eq!(crl.status().as_u16(), 200, "the development CA's key opens and signs a CRL");
    let mut server = server;
    server.stop().unwrap();
    assert_absent(&database_bytes(backend, &database_url), &secrets, "after the upgrade");
    let sealed = column(&database_url, "SELECT encrypted_key FROM issuing_cas").await;
    assert!(sealed.iter().all(|k| k.starts_with("zt-sealed:")), "{sealed:?}");

    // The passphrase has done its work: the service starts without it.
    std::fs::remove_file(data.join("ca-passphrase")).unwrap();
    let again = Server::start_with(backend, options).await.unwrap();
    registered(&again, "legacy-device", &secrets[0].1).await;
}

#[tokio::test]
async fn a_database_of_0_1_is_sealed_on_first_start_sqlite() {
    a_database_of_0_1_is_sealed_on_first_start(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_database_of_0_1_is_sealed_on_first_start_postgres() {
    a_database_of_0_1_is_sealed_on_first_start(Backend::Postgres).await;
}

/// The flags naming the master key `label` in `hsm`'s token, with the PIN file `pin`.
fn master_key_args(hsm: &SoftHsm, pin: &str, label: &str) -> Vec<String> {
    [
        "--master-key-pkcs11-module",
        softhsm::MODULE,
        "--master-key-pkcs11-token",
        softhsm::TOKEN,
        "--master-key-pkcs11-pin-file",
        &hsm.file(pin).display().to_string(),
        "--master-key-pkcs11-label",
        label,
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect()
}

/// The master key in a PKCS#11 token (SoftHSM2): generated there on the first start (non-extractable, so no key
/// file appears), unwrapping the data key inside the token on every start; a wrong PIN stops the start naming the
/// PIN file; rotation to another key of the token works without downtime like rotation between files.
#[tokio::test]
async fn a_master_key_in_a_pkcs11_token_wraps_the_data_key() {
    let hsm = SoftHsm::new();
    let options = |args: Vec<String>| Options { args, env: hsm.env(), ..Default::default() };
    let server =
        Server::start_with(Backend::Sqlite, options(master_key_args(&hsm, "pin", "zt-master-1"))).await.unwrap();
    assert!(!server.data_dir.join("master-key").exists(), "no key file with a token");
    let primary = key(3, 32);
    let enrollment = json!({"registrationId": "hsm-device", "attestation": {"type": "symmetricKey",
        "symmetricKey": {"primaryKey": STANDARD.encode(&primary), "secondaryKey": STANDARD.encode(key(4, 32))}}});
    ok(Api::new(&server, "operator").put("/enrollments/hsm-device", &enrollment).await).await;
    assert_absent(&database_bytes(Backend::Sqlite, &server.database_url), &[("key", primary.clone())], "with a token");

    let replica = |args: Vec<String>| Options {
        database_url: Some(server.database_url.clone()),
        args: [args, vec!["--id-scope".into(), server.id_scope.clone()]].concat(),
        env: hsm.env(),
        ..Default::default()
    };
    let err = Server::start_with(Backend::Sqlite, replica(master_key_args(&hsm, "wrong-pin", "zt-master-1")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--master-key-pkcs11-pin-file"), "{err}");
    let again =
        Server::start_with(Backend::Sqlite, replica(master_key_args(&hsm, "pin", "zt-master-1"))).await.unwrap();
    registered(&again, "hsm-device", &primary).await;

    let token_args = master_key_args(&hsm, "pin", "zt-master-1");
    let rotate = [
        &["rotate-master-key", "--database-url", server.database_url.as_str()][..],
        &token_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &["--new-master-key-pkcs11-label", "zt-master-2"],
    ]
    .concat();
    let env = hsm.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (done, text) = zerotouch(&rotate, &env);
    assert!(done, "{text}");
    registered(&server, "hsm-device", &primary).await;
    let err =
        Server::start_with(Backend::Sqlite, replica(master_key_args(&hsm, "pin", "zt-master-1"))).await.unwrap_err();
    assert!(err.to_string().contains("wrong master key"), "{err}");
    let rotated =
        Server::start_with(Backend::Sqlite, replica(master_key_args(&hsm, "pin", "zt-master-2"))).await.unwrap();
    registered(&rotated, "hsm-device", &primary).await;
}

/// A production install (here: its own TLS certificate) writes no development root key, and warns when its master
/// key is a file in its data dir (generated there because none was given); with the key kept elsewhere, no warning.
#[tokio::test]
async fn a_production_install_keeps_no_root_key_and_warns_of_keys_in_its_data_dir() {
    let development = Server::start(Backend::Sqlite).await.unwrap();
    let tls = tempfile::tempdir().unwrap();
    let (cert, key_file) = (tls.path().join("server.pem"), tls.path().join("server.key"));
    std::fs::copy(development.data_dir.join("server.pem"), &cert).unwrap();
    std::fs::copy(development.data_dir.join("server.key"), &key_file).unwrap();
    let start = |extra: Vec<String>| {
        let data = tls.path().join(format!("data-{}", extra.len()));
        std::fs::create_dir_all(&data).unwrap();
        // The kit's client trusts the data dir's bundle; this install's certificate chains to the other's root.
        std::fs::copy(development.data_dir.join("trust-bundle.pem"), data.join("trust-bundle.pem")).unwrap();
        let mut args = vec!["--tls-cert".to_owned(), cert.display().to_string(), "--tls-key".into()];
        args.push(key_file.display().to_string());
        Options { data_dir: Some(data), args: [args, extra].concat(), ..Default::default() }
    };
    let warned = Server::start_with(Backend::Sqlite, start(vec![])).await.unwrap();
    assert!(!warned.data_dir.join("root-ca.key").exists(), "no development root key in production");
    let logs = warned.logs();
    assert!(logs.contains("master-key is in the data dir of a production install"), "{logs}");

    let outside = write_key(tls.path(), "master-key-elsewhere", 9);
    let quiet =
        Server::start_with(Backend::Sqlite, start(vec!["--master-key-file".into(), outside.display().to_string()]))
            .await
            .unwrap();
    assert!(!quiet.data_dir.join("master-key").exists());
    assert!(!quiet.logs().contains("production install"), "{}", quiet.logs());
}
