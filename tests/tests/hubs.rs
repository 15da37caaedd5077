#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Downstream hubs (issue #5) against real Mosquitto brokers set up as `docs/hubs/mosquitto.md` says, with the
//! real `mosquitto_pub`/`mosquitto_sub` as devices and subscriber, and a real HTTPS webhook receiver.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use serde_json::{Value, json};
use zerotouch_tests::device::{curl, key_and_csr, sas_poll, sas_register, sas_register_start};
use zerotouch_tests::mosquitto::{Broker, Subscriber, make_server_certificate};
use zerotouch_tests::webhook::Receiver;
use zerotouch_tests::{Api, Backend, Options, Server};

async fn start(backend: Backend, extra: &[&str]) -> Server {
    // Webhook receivers listen on loopback here.
    let mut args: Vec<String> =
        vec!["--device-rate-limit".into(), "1000/10s".into(), "--allow-insecure-outbound".into()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Server::start_with(backend, Options { args, ..Default::default() }).await.unwrap()
}

async fn ok(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Links `broker` as the guide's step 4 says.
async fn link(api: &Api<'_>, broker: &Broker) {
    broker.link(api).await;
}

/// Waits until `host` has no outbox job left.
async fn drained(api: &Api<'_>, host: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = ok(api.get(&format!("/hubs/{host}/status")).await).await;
        if status["backlog"]["depth"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{host} kept a backlog: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn individual(id: &str, key: &[u8], hub: &str, status: &str) -> Value {
    zerotouch_tests::device::symmetric_key_enrollment(id, key, hub, status)
}

/// Writes the leaf of an issued chain (base64 DER, leaf first) as PEM.
fn write_leaf(dir: &Path, name: &str, chain: &Value) -> PathBuf {
    let der = STANDARD.decode(chain[0].as_str().unwrap()).unwrap();
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n")))
        .unwrap();
    path
}

/// Registers `id` with a fresh CSR; returns (certificate file, key file) once it is assigned to `hub`.
async fn register_with_csr(
    server: &Server,
    dir: &Path,
    id: &str,
    key: &[u8],
    hub: &str,
    round: u32,
) -> (PathBuf, PathBuf) {
    let (key_file, csr) = key_and_csr(dir, &format!("{id}-{round}"), id, "prime256v1");
    let (status, done) = sas_register(server, id, key, json!({"registrationId": id, "csr": csr})).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "assigned", "{done}");
    assert_eq!(done["registrationState"]["assignedHub"], hub, "{done}");
    let cert = write_leaf(dir, &format!("{id}-{round}"), &done["registrationState"]["issuedCertificateChain"]);
    (cert, key_file)
}

fn heard(subscriber: &Subscriber, message: &str) -> bool {
    subscriber.wait_for(message, Duration::from_secs(3))
}

/// Two brokers: a certificate device and a key device land on broker A and talk only under their own topics;
/// broker B does not take them; disabling in zerotouch cuts them off, re-enabling (and registering again) brings
/// them back; reprovisioning to B moves the certificate device; deleting its registration removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_reach_their_broker_and_follow_zerotouch() {
    let server = start(Backend::Sqlite, &[]).await;
    let api = Api::new(&server, "owner");
    let a = Broker::start(&server, "mqtt-a.example.com");
    let b = Broker::start(&server, "mqtt-b.example.com");
    link(&api, &a).await;
    link(&api, &b).await;
    let dir = tempfile::tempdir().unwrap();
    let (meter_key, sensor_key) = ([1u8; 32], [2u8; 32]);
    ok(api.put("/enrollments/meter-1", &individual("meter-1", &meter_key, &a.host_name, "enabled")).await).await;
    ok(api.put("/enrollments/sensor-1", &individual("sensor-1", &sensor_key, &a.host_name, "enabled")).await).await;

    // A certificate device: registered on A by the time the device learns it is assigned.
    let (cert, key) = register_with_csr(&server, dir.path(), "meter-1", &meter_key, &a.host_name, 1).await;
    assert!(a.clients().contains(&"meter-1".to_owned()), "{:?}", a.clients());
    let on_a = a.subscribe("devices/#");
    let own = a.publish_with_cert(&cert, &key, "devices/meter-1/telemetry", "meter-own-1");
    assert!(own.accepted(), "{own:?}\n{}", a.log());
    assert!(heard(&on_a, "meter-own-1"), "{}", on_a.output());
    let other = a.publish_with_cert(&cert, &key, "devices/sensor-1/telemetry", "meter-foreign-1");
    assert!(!heard(&on_a, "meter-foreign-1"), "another device's topic must be denied: {other:?}");
    // Broker B has no such client: nothing the device sends there reaches anyone.
    let on_b = b.subscribe("devices/#");
    let stray = b.publish_with_cert(&cert, &key, "devices/meter-1/telemetry", "meter-on-b-1");
    assert!(!heard(&on_b, "meter-on-b-1"), "broker B must not take the device: {stray:?}");
    assert!(!b.clients().contains(&"meter-1".to_owned()));

    // A symmetric-key device without a certificate: username and password on A's password listener.
    let (status, done) = sas_register(&server, "sensor-1", &sensor_key, json!({})).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("assigned")), "{done}");
    let password = STANDARD.encode(sensor_key);
    let own = a.publish_with_password("sensor-1", &password, "devices/sensor-1/telemetry", "sensor-own-1");
    assert!(own.accepted(), "{own:?}");
    assert!(heard(&on_a, "sensor-own-1"));
    let refused = b.publish_with_password("sensor-1", &password, "devices/sensor-1/telemetry", "sensor-on-b-1");
    assert!(!refused.success, "broker B must refuse the key device: {refused:?}");
    let wrong = a.publish_with_password("sensor-1", &STANDARD.encode([7u8; 32]), "devices/sensor-1/x", "wrong-key");
    assert!(!wrong.success, "a wrong key must be refused: {wrong:?}");

    // Disable both in zerotouch: the key device is refused at CONNECT, the certificate device can send nothing.
    let meter = ok(api.get("/enrollments/meter-1").await).await;
    let mut disabled = individual("meter-1", &meter_key, &a.host_name, "disabled");
    disabled["etag"] = meter["etag"].clone();
    ok(api.put("/enrollments/meter-1", &disabled).await).await;
    ok(api.put("/enrollments/sensor-1", &individual("sensor-1", &sensor_key, &a.host_name, "disabled")).await).await;
    drained(&api, &a.host_name).await;
    let refused = a.publish_with_password("sensor-1", &password, "devices/sensor-1/telemetry", "sensor-disabled");
    assert!(!refused.success, "a disabled key device must be refused: {refused:?}");
    let cut_off = a.publish_with_cert(&cert, &key, "devices/meter-1/telemetry", "meter-disabled");
    assert!(!heard(&on_a, "meter-disabled"), "a disabled certificate device must send nothing: {cut_off:?}");

    // Re-enable: the devices register again (the certificate device's old certificate was revoked) and are back.
    ok(api.put("/enrollments/sensor-1", &individual("sensor-1", &sensor_key, &a.host_name, "enabled")).await).await;
    ok(api.put("/enrollments/meter-1", &individual("meter-1", &meter_key, &a.host_name, "enabled")).await).await;
    let (status, done) = sas_register(&server, "sensor-1", &sensor_key, json!({})).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("assigned")), "{done}");
    let back = a.publish_with_password("sensor-1", &password, "devices/sensor-1/telemetry", "sensor-back");
    assert!(back.accepted() && heard(&on_a, "sensor-back"), "{back:?}");
    let (cert, key) = register_with_csr(&server, dir.path(), "meter-1", &meter_key, &a.host_name, 2).await;
    let back = a.publish_with_cert(&cert, &key, "devices/meter-1/telemetry", "meter-back");
    assert!(back.accepted() && heard(&on_a, "meter-back"), "{back:?}");

    // Reprovision the certificate device from A to B: on B first, then gone from A.
    ok(api.put("/enrollments/meter-1", &individual("meter-1", &meter_key, &b.host_name, "enabled")).await).await;
    let (cert, key) = register_with_csr(&server, dir.path(), "meter-1", &meter_key, &b.host_name, 3).await;
    let moved = b.publish_with_cert(&cert, &key, "devices/meter-1/telemetry", "meter-on-b-2");
    assert!(moved.accepted() && heard(&on_b, "meter-on-b-2"), "{moved:?}");
    drained(&api, &a.host_name).await;
    assert!(!a.clients().contains(&"meter-1".to_owned()), "{:?}", a.clients());
    let left = a.publish_with_cert(&cert, &key, "devices/meter-1/telemetry", "meter-left-a");
    assert!(!heard(&on_a, "meter-left-a"), "broker A must no longer take the device: {left:?}");

    // Deleting the registration deletes the identity.
    let registration = ok(api.get("/registrations/meter-1").await).await;
    let etag = registration["etag"].as_str().unwrap().to_owned();
    assert_eq!(api.delete("/registrations/meter-1", Some(&etag)).await.status(), 204);
    drained(&api, &b.host_name).await;
    assert!(!b.clients().contains(&"meter-1".to_owned()), "{:?}", b.clients());
    server.assert_no_secret_in_logs();
    assert!(!server.logs().contains("CHANGE-ME-admin-password"), "the broker's admin password reached a log");
}

/// A symmetric-key enrollment (`attestation`) with these two keys, on `hub`.
fn keyed(id_field: (&str, &str), primary: &[u8], secondary: &[u8], hub: &str) -> Value {
    json!({
        id_field.0: id_field.1,
        "attestation": {"type": "symmetricKey",
                        "symmetricKey": {"primaryKey": STANDARD.encode(primary), "secondaryKey": STANDARD.encode(secondary)}},
        "iotHubs": [hub],
        "allocationPolicy": "static",
    })
}

/// Whether `id` can log in to `broker` with `key` and publish under its own topic.
fn logs_in(broker: &Broker, id: &str, key: &[u8], message: &str) -> bool {
    broker.publish_with_password(id, &STANDARD.encode(key), &format!("devices/{id}/telemetry"), message).accepted()
}

/// Issue #17, point 3, on a real Mosquitto broker: a device that authenticates with its secondary key logs in to
/// its hub with that key (dynamic security holds one password per client: the key the device registered with);
/// when its enrollment's keys change (PUT of the enrollment, or of its group for every device of the group), its
/// hub identity gets the new key of the same slot and the old key stops working. A device whose hub credential is
/// a certificate gets no key on its hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_identities_follow_enrollment_key_changes() {
    let server = start(Backend::Sqlite, &[]).await;
    let api = Api::new(&server, "owner");
    let broker = Broker::start(&server, "mqtt-keys.example.com");
    link(&api, &broker).await;
    let hub = broker.host_name.clone();

    // An individual enrollment whose device registers with its secondary key.
    let (p1, s1, p2, s2) = ([21u8; 32], [22u8; 32], [23u8; 32], [24u8; 32]);
    ok(api.put("/enrollments/dual-1", &keyed(("registrationId", "dual-1"), &p1, &s1, &hub)).await).await;
    let (status, done) = sas_register(&server, "dual-1", &s1, json!({})).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("assigned")), "{done}");
    assert!(logs_in(&broker, "dual-1", &s1, "dual-s1"), "the secondary key it registered with does not log in");
    assert!(!logs_in(&broker, "dual-1", &p1, "dual-p1"), "one password per client: the key it registered with");

    // A group: one device registers with the derived primary key, another with the derived secondary.
    let derive = |key: &[u8], id: &str| zerotouch_attest::sas::derive_device_key(key, id).to_vec();
    let (gp1, gs1, gp2, gs2) = ([31u8; 32], [32u8; 32], [33u8; 32], [34u8; 32]);
    ok(api.put("/enrollmentGroups/dual-group", &keyed(("enrollmentGroupId", "dual-group"), &gp1, &gs1, &hub)).await)
        .await;
    for (id, key) in [("grp-p", derive(&gp1, "grp-p")), ("grp-s", derive(&gs1, "grp-s"))] {
        let (status, done) = sas_register(&server, id, &key, json!({})).await;
        assert_eq!((status, done["status"].as_str()), (200, Some("assigned")), "{done}");
        assert!(logs_in(&broker, id, &key, &format!("{id}-before")), "{id}");
    }

    // New keys for both: the hub identities follow, each with the new key of its slot.
    ok(api.put("/enrollments/dual-1", &keyed(("registrationId", "dual-1"), &p2, &s2, &hub)).await).await;
    ok(api.put("/enrollmentGroups/dual-group", &keyed(("enrollmentGroupId", "dual-group"), &gp2, &gs2, &hub)).await)
        .await;
    drained(&api, &hub).await;
    assert!(logs_in(&broker, "dual-1", &s2, "dual-s2"), "the new secondary key does not log in");
    assert!(!logs_in(&broker, "dual-1", &s1, "dual-s1-old"), "the old key still logs in");
    assert!(logs_in(&broker, "grp-p", &derive(&gp2, "grp-p"), "grp-p-after"));
    assert!(!logs_in(&broker, "grp-p", &derive(&gp1, "grp-p"), "grp-p-old"));
    assert!(logs_in(&broker, "grp-s", &derive(&gs2, "grp-s"), "grp-s-after"));
    assert!(!logs_in(&broker, "grp-s", &derive(&gs1, "grp-s"), "grp-s-old"));
    // The same keys written again change nothing on the hub (no job: the backlog stays empty at once).
    ok(api.put("/enrollments/dual-1", &keyed(("registrationId", "dual-1"), &p2, &s2, &hub)).await).await;
    let status = ok(api.get(&format!("/hubs/{hub}/status")).await).await;
    assert_eq!(status["backlog"]["depth"], 0, "{status}");
    server.assert_no_secret_in_logs();
}

/// On a webhook hub the receiver gets both keys and the one the device registered with, again after a key change;
/// a device whose hub credential is its certificate gets no key when its enrollment's keys change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_hubs_get_both_keys_and_their_changes() {
    let server = start(Backend::Sqlite, &[]).await;
    let api = Api::new(&server, "owner");
    let (dir, ca, mut receivers) = receivers(1);
    let receiver = receivers.remove(0);
    let hub = "hooks.example.com";
    ok(api
        .put(
            &format!("/hubs/{hub}"),
            &json!({"hostName": hub, "kind": "webhook",
                                                  "settings": {"url": receiver.url, "secret": HOOK_SECRET, "ca": ca}}),
        )
        .await)
    .await;
    let (p1, s1, p2, s2) = ([41u8; 32], [42u8; 32], [43u8; 32], [44u8; 32]);
    ok(api.put("/enrollments/hook-key", &keyed(("registrationId", "hook-key"), &p1, &s1, hub)).await).await;
    ok(api.put("/enrollments/hook-cert", &keyed(("registrationId", "hook-cert"), &p1, &s1, hub)).await).await;
    let (status, done) = sas_register(&server, "hook-key", &s1, json!({})).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("assigned")), "{done}");
    register_with_csr(&server, dir.path(), "hook-cert", &p1, hub, 1).await;
    let credential = |n: usize| receiver.seen.lock().unwrap()[n].2["credential"].clone();
    assert_eq!(
        credential(0),
        json!({"type": "symmetricKey", "key": STANDARD.encode(s1), "primaryKey": STANDARD.encode(p1),
               "secondaryKey": STANDARD.encode(s1)})
    );
    assert_eq!(credential(1)["type"], "x509");

    ok(api.put("/enrollments/hook-key", &keyed(("registrationId", "hook-key"), &p2, &s2, hub)).await).await;
    ok(api.put("/enrollments/hook-cert", &keyed(("registrationId", "hook-cert"), &p2, &s2, hub)).await).await;
    drained(&api, hub).await;
    assert_eq!(receiver.summary()[2..], [("POST".to_owned(), "hook-key".to_owned())], "{:?}", receiver.summary());
    assert_eq!(
        credential(2),
        json!({"type": "symmetricKey", "key": STANDARD.encode(s2), "primaryKey": STANDARD.encode(p2),
               "secondaryKey": STANDARD.encode(s2)})
    );
    receiver.stop().await;
}

/// 1,000 devices register while their broker is down: they stay `assigning` (no failure, nothing lost); when the
/// broker is back every one becomes `assigned` and exists exactly once on the broker.
async fn broker_down_storm(backend: Backend) {
    let server = start(backend, &["--hub-inline-timeout", "300ms"]).await;
    let api = Api::new(&server, "owner");
    let mut broker = Broker::start(&server, "mqtt-storm.example.com");
    link(&api, &broker).await;
    let group_key = [5u8; 32];
    let group = keyed(("enrollmentGroupId", "storm"), &group_key, &[6u8; 32], &broker.host_name);
    ok(api.put("/enrollmentGroups/storm", &group).await).await;
    broker.process.stop();

    const DEVICES: usize = 1000;
    let ids: Vec<String> = (0..DEVICES).map(|n| format!("storm-{n:04}")).collect();
    let keys: Vec<Vec<u8>> =
        ids.iter().map(|id| zerotouch_attest::sas::derive_device_key(&group_key, id).to_vec()).collect();
    let server_ref = &server;
    let operations: Vec<String> = futures_util::stream::iter(ids.iter().zip(&keys))
        .map(|(id, key)| async move {
            sas_register_start(server_ref, id, key, &json!({})).await.unwrap_or_else(|e| panic!("{id}: {e:?}"))
        })
        .buffered(32)
        .collect()
        .await;
    for (n, ((id, key), operation)) in ids.iter().zip(&keys).zip(&operations).enumerate().step_by(97) {
        let (status, body) = sas_poll(&server, id, key, operation).await;
        assert_eq!(status, 202, "device {n} must stay assigning while the broker is down: {body}");
    }
    let status = ok(api.get(&format!("/hubs/{}/status", broker.host_name)).await).await;
    assert_eq!(status["health"]["status"], "unhealthy", "{status}");
    assert_eq!(status["backlog"]["depth"], DEVICES, "{status}");

    broker.process.restart();
    let deadline = Instant::now() + Duration::from_secs(120);
    for ((id, key), operation) in ids.iter().zip(&keys).zip(&operations) {
        loop {
            let (status, body) = sas_poll(&server, id, key, operation).await;
            if status == 200 {
                assert_eq!(body["status"], "assigned", "{body}");
                assert_eq!(body["registrationState"]["assignedHub"], broker.host_name.as_str());
                break;
            }
            assert_eq!(status, 202, "{body}");
            if Instant::now() > deadline {
                let status = ok(api.get(&format!("/hubs/{}/status", broker.host_name)).await).await;
                let log = broker.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!("{id} was not assigned within 2 minutes of the broker's return: {status}\n{tail:#?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    drained(&api, &broker.host_name).await;
    let mut clients = broker.clients();
    clients.retain(|c| c.starts_with("storm-"));
    let total = clients.len();
    clients.sort();
    clients.dedup();
    assert_eq!((total, clients.len()), (DEVICES, DEVICES), "each device exactly once on the broker");
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("zerotouch_hub_failures_total{action=\"upsert\",hub=\"mqtt-storm.example.com\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_storm_sqlite() {
    broker_down_storm(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_storm_postgres() {
    broker_down_storm(Backend::Postgres).await;
}

const HOOK_SECRET: &str = "a-webhook-secret-for-the-e2e-test";

/// `count` of the kit's HTTPS webhook receivers (checking signatures with [`HOOK_SECRET`]), with a certificate of a
/// CA made in the returned directory, and that CA's PEM for the hub's `ca` setting.
fn receivers(count: usize) -> (tempfile::TempDir, String, Vec<Receiver>) {
    let dir = tempfile::tempdir().unwrap();
    let ca = std::fs::read_to_string(make_server_certificate(dir.path())).unwrap();
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let started = (0..count)
        .map(|_| Receiver::start(&read("certs/broker.pem"), &read("certs/broker.key"), HOOK_SECRET))
        .collect();
    (dir, ca, started)
}

/// Issue #17, point 3: a hub's write-only secret is kept when an update leaves it out only while the hub stays
/// where it is. An update that moves a webhook hub (`url`) or a Mosquitto hub (`host`, `port`) without sending the
/// secret again is refused with 400006 naming both settings, and nothing changes: the stored secret is never sent
/// to an address of the caller's choosing (here a second receiver, which hears nothing). Sent again, the move
/// is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_secrets_are_not_sent_to_a_new_address() {
    let server = start(Backend::Sqlite, &[]).await;
    let api = Api::new(&server, "owner");
    let (_dir, ca, mut receivers) = receivers(2);
    let (receiver, elsewhere) = (receivers.remove(0), receivers.remove(0));
    let hub = json!({"hostName": "hooks.example.com", "kind": "webhook",
                     "settings": {"url": receiver.url, "secret": HOOK_SECRET, "ca": ca}});
    ok(api.put("/hubs/hooks.example.com", &hub).await).await;

    let mut moved = hub.clone();
    moved["settings"] = json!({"url": elsewhere.url, "ca": ca});
    let response = api.put("/hubs/hooks.example.com", &moved).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], 400006, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("settings.secret") && message.contains("settings.url"), "{message}");
    let stored = ok(api.get("/hubs/hooks.example.com").await).await;
    assert_eq!(stored["settings"]["url"], receiver.url.as_str(), "{stored}");
    let status = ok(api.get("/hubs/hooks.example.com/status").await).await;
    assert_eq!(status["health"]["status"], "healthy", "{status}");
    // Other settings still change without the secret.
    let mut slower = hub.clone();
    slower["settings"] = json!({"url": receiver.url, "ca": ca, "timeoutMs": 2000});
    ok(api.put("/hubs/hooks.example.com", &slower).await).await;
    // Moved with the secret sent again: taken.
    moved["settings"]["secret"] = json!(HOOK_SECRET);
    let stored = ok(api.put("/hubs/hooks.example.com", &moved).await).await;
    assert_eq!(stored["settings"]["url"], elsewhere.url.as_str(), "{stored}");
    assert!(elsewhere.summary().is_empty() && receiver.summary().is_empty());

    let broker = json!({"hostName": "broker.example.com", "kind": "mosquitto",
                        "settings": {"host": "127.0.0.1", "port": 1883, "username": "zt-admin", "password": "pw-1"}});
    ok(api.put("/hubs/broker.example.com", &broker).await).await;
    for (setting, value) in [("host", json!("127.0.0.9")), ("port", json!(1884))] {
        let mut moved = broker.clone();
        moved["settings"].as_object_mut().unwrap().remove("password");
        moved["settings"][setting] = value;
        let response = api.put("/hubs/broker.example.com", &moved).await;
        assert_eq!(response.status(), 400, "{setting}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errorCode"], 400006, "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("settings.password") && message.contains(&format!("settings.{setting}")), "{message}");
    }
    let mut renamed = broker.clone();
    renamed["settings"].as_object_mut().unwrap().remove("password");
    renamed["settings"]["reservedDeviceIds"] = json!(["ops"]);
    ok(api.put("/hubs/broker.example.com", &renamed).await).await;
    receiver.stop().await;
    elsewhere.stop().await;
}

/// A webhook hub: a real HTTPS receiver sees each device's create (with its certificate's thumbprint, or its
/// key), its disable and its delete, every one signed; a receiver that refuses a device fails its registration
/// at once with 400209, one that keeps failing fails it at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receiver_sees_every_change() {
    let server = start(Backend::Sqlite, &["--hub-deadline", "3s"]).await;
    let api = Api::new(&server, "owner");
    let dir = tempfile::tempdir().unwrap();
    let ca = make_server_certificate(dir.path());
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let receiver = Receiver::start(&read("certs/broker.pem"), &read("certs/broker.key"), HOOK_SECRET);
    let hub = json!({
        "hostName": "hooks.example.com",
        "kind": "webhook",
        "settings": {"url": receiver.url, "secret": HOOK_SECRET, "ca": std::fs::read_to_string(&ca).unwrap(), "timeoutMs": 1000},
    });
    let stored = ok(api.put("/hubs/hooks.example.com", &hub).await).await;
    assert!(stored["settings"].get("secret").is_none(), "the webhook secret is write-only: {stored}");
    // Written again without the secret: it is kept.
    let mut again = hub.clone();
    again["settings"].as_object_mut().unwrap().remove("secret");
    ok(api.put("/hubs/hooks.example.com", &again).await).await;
    let status = ok(api.get("/hubs/hooks.example.com/status").await).await;
    assert_eq!(status["health"]["status"], "healthy", "{status}");

    let keys: Vec<(&str, [u8; 32])> =
        vec![("hooked-1", [11; 32]), ("hooked-2", [12; 32]), ("bad-400", [13; 32]), ("fail-500", [14; 32])];
    for (id, key) in &keys {
        ok(api.put(&format!("/enrollments/{id}"), &individual(id, key, "hooks.example.com", "enabled")).await).await;
    }
    let (cert, first_key) =
        register_with_csr(&server, dir.path(), "hooked-1", &keys[0].1, "hooks.example.com", 1).await;
    let (status, done) = sas_register(&server, "hooked-2", &keys[1].1, json!({})).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("assigned")), "{done}");
    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(receiver.summary(), [("POST".into(), "hooked-1".into()), ("POST".into(), "hooked-2".into())]);
    let der = zerotouch_tests::openssl::openssl(
        dir.path(),
        &["x509", "-in", cert.to_str().unwrap(), "-outform", "DER", "-out", "leaf.der"],
    );
    assert!(der.is_empty());
    let thumbprint = zerotouch_tests::openssl::openssl(dir.path(), &["dgst", "-sha256", "-r", "leaf.der"]);
    let thumbprint = thumbprint.split_whitespace().next().unwrap();
    assert_eq!(seen[0].2["credential"], json!({"type": "x509", "subjectName": "hooked-1", "thumbprint": thumbprint}));
    assert_eq!(seen[0].2["enabled"], true);
    // The key it registered with (the primary), and both keys of its enrollment (`individual` gives [9; 32]).
    let both = json!({"type": "symmetricKey", "key": STANDARD.encode(keys[1].1), "primaryKey": STANDARD.encode(keys[1].1),
                      "secondaryKey": STANDARD.encode([9u8; 32])});
    assert_eq!(seen[1].2["credential"], both);

    // EST renewal (simplereenroll with the operational certificate, curl as the device): the hub gets the new
    // certificate's thumbprint.
    let (_, csr) = key_and_csr(dir.path(), "hooked-1-renewed", "hooked-1", "prime256v1");
    let est = "/.well-known/est/simplereenroll";
    let (status, body) = curl(&server, "POST", est, &cert, &first_key, &csr, "application/pkcs10");
    assert_eq!(status, 200, "{body}");
    drained(&api, "hooks.example.com").await;
    let renewed = receiver.seen.lock().unwrap().clone();
    assert_eq!(renewed.len(), 3, "{:?}", receiver.summary());
    assert_eq!((renewed[2].0.as_str(), renewed[2].1.as_str()), ("POST", "hooked-1"));
    let new_thumbprint = renewed[2].2["credential"]["thumbprint"].as_str().unwrap().to_owned();
    assert_ne!(new_thumbprint, thumbprint, "the renewed certificate is another one");
    assert_eq!(renewed[2].2["credential"]["subjectName"], "hooked-1");

    // Disable one, delete the other's registration: the receiver hears both.
    ok(api.put("/enrollments/hooked-1", &individual("hooked-1", &keys[0].1, "hooks.example.com", "disabled")).await)
        .await;
    let registration = ok(api.get("/registrations/hooked-2").await).await;
    let etag = registration["etag"].as_str().unwrap().to_owned();
    assert_eq!(api.delete("/registrations/hooked-2", Some(&etag)).await.status(), 204);
    drained(&api, "hooks.example.com").await;
    // Two devices' changes arrive in either order: the worker delivers them side by side.
    let mut summary = receiver.summary().split_off(3);
    summary.sort();
    assert_eq!(summary, [("DELETE".into(), "hooked-2".into()), ("PUT".into(), "hooked-1".into())]);
    let mut disabled = receiver.seen.lock().unwrap()[3..].iter().find(|(method, ..)| method == "PUT").cloned().unwrap();
    // Every change carries its id (the outbox job's), for the receiver to apply it once.
    let change = disabled.2.as_object_mut().unwrap().remove("changeId").unwrap();
    assert!(change.as_str().is_some_and(|c| c.len() == 32 && c.bytes().all(|b| b.is_ascii_hexdigit())), "{change}");
    assert_eq!(disabled.2, json!({"operation": "disable", "deviceId": "hooked-1", "enabled": false}));

    // Refused by the receiver: failed at once; the device learns which hub, never the receiver's words (issue #17),
    // which the operator finds in the log.
    let (status, done) = sas_register(&server, "bad-400", &keys[2].1, json!({})).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["registrationState"]["errorCode"], 400209, "{done}");
    let message = done["registrationState"]["errorMessage"].as_str().unwrap();
    assert!(message.contains("hooks.example.com") && !message.contains("no such device model"), "{message}");
    assert!(!message.contains("400"), "the receiver's status reached the device: {message}");
    assert!(server.logs().contains("no such device model"), "the receiver's reason is not in the log");
    assert!(done["registrationState"].get("assignedHub").is_none(), "{done}");
    // Unavailable until the deadline (3 s here): failed then, and nothing left in the outbox.
    let started = Instant::now();
    let (status, done) = sas_register(&server, "fail-500", &keys[3].1, json!({})).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("failed")), "{done}");
    assert_eq!(done["registrationState"]["errorCode"], 400209, "{done}");
    assert!(started.elapsed() >= Duration::from_secs(2), "failed before the deadline: {:?}", started.elapsed());
    let state = ok(api.get("/registrations/fail-500").await).await;
    assert_eq!(state["status"], "failed", "{state}");
    drained(&api, "hooks.example.com").await;
    server.assert_no_secret_in_logs();
    assert!(!server.logs().contains(HOOK_SECRET), "the webhook secret reached a log");
    receiver.stop().await;
}

/// `individual` naming the device id the hub gets.
fn individual_as(id: &str, key: &[u8], hub: &str, device_id: &str) -> Value {
    let mut enrollment = individual(id, key, hub, "enabled");
    enrollment["deviceId"] = Value::from(device_id);
    enrollment
}

/// Registers `id` (with a CSR when `csr` is set) and expects the registration to fail with `code`: no hub, no
/// device id, no certificate, in the device's answer and in the admin API's registration state.
async fn refused(server: &Server, api: &Api<'_>, dir: &Path, id: &str, key: &[u8], csr: bool, code: u32) -> String {
    let body = if csr {
        let (_, csr) = key_and_csr(dir, id, id, "prime256v1");
        json!({"registrationId": id, "csr": csr})
    } else {
        json!({})
    };
    let (status, done) = sas_register(server, id, key, body).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("failed")), "{id}: {done}");
    let state = &done["registrationState"];
    assert_eq!(state["errorCode"], code, "{id}: {done}");
    for absent in ["assignedHub", "deviceId", "issuedCertificateChain"] {
        assert!(state.get(absent).is_none(), "{id}: {absent} in {done}");
    }
    let stored = ok(api.get(&format!("/registrations/{id}")).await).await;
    assert_eq!((stored["status"].as_str(), &stored["errorCode"]), (Some("failed"), &json!(code)), "{stored}");
    state["errorMessage"].as_str().unwrap_or_default().to_owned()
}

/// Issue 16, point 1, against a real Mosquitto broker set up from the guide: a device id can no longer take over
/// a hub account. Each attack is refused with its own code, and nothing is lost for legitimate devices (the admin
/// connection keeps working, registered devices keep their identities, new devices still register):
/// - an enrollment whose deviceId is the broker's admin user (in any case, with a CSR, through a group, or on
///   another hub whose certificate the broker would still map to the admin) fails with 400213 and gets no
///   certificate;
/// - one whose deviceId is an operator's account on the broker fails with 400215, the account untouched; once the
///   hub lists it in `reservedDeviceIds`, with 400213;
/// - one whose deviceId another registration holds on the hub fails with 400214;
/// - hub settings that would reserve a device id a registration holds are refused with 409002;
/// - deleting or disabling a registration that (from before the fix) holds the admin's or an account's name
///   leaves the broker's client alone.
async fn hub_accounts_cannot_be_taken_over(backend: Backend) {
    let server = start(backend, &[]).await;
    let api = Api::new(&server, "owner");
    let a = Broker::start(&server, "mqtt-guard.example.com");
    link(&api, &a).await;
    ok(api.put("/hubs/plain.example.com", &json!({"hostName": "plain.example.com", "kind": "none"})).await).await;
    let admin = a.admin.username.clone();
    let dir = tempfile::tempdir().unwrap();
    let key = [21u8; 32];
    let admin_works = |when: &str| {
        assert!(a.clients().contains(&admin), "{when}: the admin connection stopped working: {:?}", a.clients());
    };

    // A legitimate certificate device, before any attack.
    ok(api.put("/enrollments/meter-1", &individual("meter-1", &key, &a.host_name, "enabled")).await).await;
    let (cert, cert_key) = register_with_csr(&server, dir.path(), "meter-1", &key, &a.host_name, 1).await;
    let on_a = a.subscribe("devices/#");

    // The admin user as a device id, with a CSR: refused before any certificate or hub change.
    let attacks = [
        ("steal-admin", admin.clone(), a.host_name.clone()),
        ("steal-admin-caps", admin.to_uppercase(), a.host_name.clone()),
        ("steal-admin-elsewhere", admin.clone(), "plain.example.com".to_owned()),
    ];
    for (id, device_id, hub) in &attacks {
        ok(api.put(&format!("/enrollments/{id}"), &individual_as(id, &key, hub, device_id)).await).await;
        let message = refused(&server, &api, dir.path(), id, &key, true, 400213).await;
        assert!(message.contains("reserved"), "{message}");
    }
    // Through a group: the registration id is the device id.
    let group_key = [22u8; 32];
    let group = keyed(("enrollmentGroupId", "fleet"), &group_key, &[23u8; 32], &a.host_name);
    ok(api.put("/enrollmentGroups/fleet", &group).await).await;
    let derived = zerotouch_attest::sas::derive_device_key(&group_key, &admin).to_vec();
    refused(&server, &api, dir.path(), &admin, &derived, true, 400213).await;
    let store = zerotouch_store::Store::connect(&server.database_url).await.unwrap();
    for id in ["steal-admin", "steal-admin-caps", "steal-admin-elsewhere", admin.as_str()] {
        let issued = store.certificates().of_registration(&id.to_lowercase()).await.unwrap();
        assert!(issued.is_empty(), "a certificate was issued to {id}: {issued:?}");
    }
    admin_works("after the admin-name attacks");

    // An operator's own account on the broker: zerotouch did not create it, so it is left alone.
    a.admin.ctrl(&["createClient", "ops-console", "-p", "ops-password-123"]);
    ok(api.put("/enrollments/steal-ops", &individual_as("steal-ops", &key, &a.host_name, "ops-console")).await).await;
    let message = refused(&server, &api, dir.path(), "steal-ops", &key, false, 400215).await;
    assert!(message.contains(&a.host_name) && message.contains("ops-console"), "{message}");
    let account = a.publish_with_password("ops-console", "ops-password-123", "ops/x", "m");
    assert!(account.connected(), "the operator's account lost its password: {account:?}");
    // Listed as reserved, it is refused before the hub is asked, on any hub.
    let mut document = a.hub_document();
    document["settings"]["reservedDeviceIds"] = json!(["ops-console"]);
    ok(api.put(&format!("/hubs/{}", a.host_name), &document).await).await;
    let elsewhere = individual_as("steal-ops-2", &key, "plain.example.com", "ops-console");
    ok(api.put("/enrollments/steal-ops-2", &elsewhere).await).await;
    refused(&server, &api, dir.path(), "steal-ops-2", &key, true, 400213).await;

    // Another registration's device id on the same hub.
    ok(api.put("/enrollments/steal-meter", &individual_as("steal-meter", &key, &a.host_name, "METER-1")).await).await;
    let message = refused(&server, &api, dir.path(), "steal-meter", &key, true, 400214).await;
    assert!(message.contains(&a.host_name), "{message}");
    let meter = ok(api.get("/registrations/meter-1").await).await;
    assert_eq!((meter["status"].as_str(), meter["deviceId"].as_str()), (Some("assigned"), Some("meter-1")));
    let own = a.publish_with_cert(&cert, &cert_key, "devices/meter-1/telemetry", "meter-still-here");
    assert!(own.accepted() && heard(&on_a, "meter-still-here"), "{own:?}");

    // Hub settings that would reserve a device id a registration holds.
    let mut document = a.hub_document();
    document["settings"]["reservedDeviceIds"] = json!(["ops-console", "Meter-1"]);
    let response = api.put(&format!("/hubs/{}", a.host_name), &document).await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], 409002, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("reservedDeviceIds") && message.contains("meter-1"), "{message}");
    let mut other = a.hub_document();
    other["hostName"] = Value::from("mqtt-other.example.com");
    other["settings"]["username"] = Value::from("meter-1");
    let response = api.put("/hubs/mqtt-other.example.com", &other).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errorCode"], 409002, "{body}");
    assert!(body["message"].as_str().unwrap().contains("settings.username"), "{body}");

    // A database from before the fix, where registrations hold the admin's and the account's names: disabling
    // and deleting them leaves the broker's clients alone.
    let saved = |key: &str, device_id: &str| {
        zerotouch_store::test_support::assigned_registration(key, None, device_id, &a.host_name)
    };
    ok(api.put("/enrollments/legacy-ops", &individual("legacy-ops", &key, &a.host_name, "enabled")).await).await;
    store.registrations().save(saved("legacy-ops", "ops-console")).await.unwrap();
    store.registrations().save(saved("legacy-admin", &admin)).await.unwrap();
    ok(api.put("/enrollments/legacy-ops", &individual("legacy-ops", &key, &a.host_name, "disabled")).await).await;
    drained(&api, &a.host_name).await;
    let account = a.publish_with_password("ops-console", "ops-password-123", "ops/x", "m");
    assert!(account.connected(), "disabling the registration disabled the operator's account: {account:?}");
    for id in ["legacy-ops", "legacy-admin"] {
        let registration = ok(api.get(&format!("/registrations/{id}")).await).await;
        let etag = registration["etag"].as_str().unwrap().to_owned();
        assert_eq!(api.delete(&format!("/registrations/{id}"), Some(&etag)).await.status(), 204);
    }
    drained(&api, &a.host_name).await;
    assert!(a.clients().contains(&"ops-console".to_owned()), "{:?}", a.clients());
    admin_works("after deleting registrations that held the admin's name");
    assert!(server.logs().contains("hub identity left alone"), "the refusals are logged");

    // Legitimate devices still register, and the first one is still there.
    ok(api.put("/enrollments/meter-2", &individual("meter-2", &[24u8; 32], &a.host_name, "enabled")).await).await;
    let (cert2, key2) = register_with_csr(&server, dir.path(), "meter-2", &[24u8; 32], &a.host_name, 1).await;
    let own = a.publish_with_cert(&cert2, &key2, "devices/meter-2/telemetry", "meter-2-here");
    assert!(own.accepted() && heard(&on_a, "meter-2-here"), "{own:?}");
    let status = ok(api.get(&format!("/hubs/{}/status", a.host_name)).await).await;
    assert_eq!(status["health"]["status"], "healthy", "{status}");
    assert!(a.clients().contains(&"meter-1".to_owned()), "{:?}", a.clients());
    store.close().await.unwrap();
    server.assert_no_secret_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_accounts_cannot_be_taken_over_sqlite() {
    hub_accounts_cannot_be_taken_over(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_accounts_cannot_be_taken_over_postgres() {
    hub_accounts_cannot_be_taken_over(Backend::Postgres).await;
}

/// Issue 16, point 1, on a webhook hub: two registrations cannot share a device id (the second, in any case,
/// fails with 400214 and the receiver never hears of it), and once the holder's registration is deleted the id
/// is free for the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_device_ids_belong_to_one_registration() {
    let server = start(Backend::Sqlite, &[]).await;
    let api = Api::new(&server, "owner");
    let dir = tempfile::tempdir().unwrap();
    let ca = make_server_certificate(dir.path());
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let receiver = Receiver::start(&read("certs/broker.pem"), &read("certs/broker.key"), HOOK_SECRET);
    let hub = json!({
        "hostName": "hooks.example.com",
        "kind": "webhook",
        "settings": {"url": receiver.url, "secret": HOOK_SECRET, "ca": std::fs::read_to_string(&ca).unwrap()},
    });
    ok(api.put("/hubs/hooks.example.com", &hub).await).await;
    let (first, second, third) = ([31u8; 32], [32u8; 32], [33u8; 32]);
    ok(api.put("/enrollments/pump-7", &individual("pump-7", &first, "hooks.example.com", "enabled")).await).await;
    ok(api.put("/enrollments/imposter", &individual_as("imposter", &second, "hooks.example.com", "pump-7")).await)
        .await;
    ok(api.put("/enrollments/imposter-2", &individual_as("imposter-2", &third, "hooks.example.com", "PUMP-7")).await)
        .await;
    let (status, done) = sas_register(&server, "pump-7", &first, json!({})).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("assigned")), "{done}");
    refused(&server, &api, dir.path(), "imposter", &second, true, 400214).await;
    refused(&server, &api, dir.path(), "imposter-2", &third, false, 400214).await;
    drained(&api, "hooks.example.com").await;
    assert_eq!(receiver.summary(), [("POST".into(), "pump-7".into())], "the receiver heard only the holder");
    let seen = receiver.seen.lock().unwrap().clone();
    assert_eq!(seen[0].2["credential"]["key"], STANDARD.encode(first), "the holder's key, not an imposter's");

    // The holder leaves; the id is free.
    let registration = ok(api.get("/registrations/pump-7").await).await;
    let etag = registration["etag"].as_str().unwrap().to_owned();
    assert_eq!(api.delete("/registrations/pump-7", Some(&etag)).await.status(), 204);
    let (status, done) = sas_register(&server, "imposter", &second, json!({})).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("assigned")), "{done}");
    drained(&api, "hooks.example.com").await;
    let mut summary = receiver.summary();
    summary.sort();
    assert_eq!(
        summary,
        [("DELETE".into(), "pump-7".into()), ("POST".into(), "pump-7".into()), ("POST".into(), "pump-7".into())]
    );
    receiver.stop().await;
}
