//! The Mosquitto adapter against a real Mosquitto 2 broker with dynamic security, proven with the real
//! `mosquitto_pub` and `mosquitto_sub` clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::Broker;
use zerotouch_hub::{ChangeId, Credential, DeviceId, DeviceIdentity, HubAdapter, HubError, Owner, adapter_for};
use zerotouch_wire::SymmetricKey;

const DELIVERY: Duration = Duration::from_secs(3);
const NO_DELIVERY: Duration = Duration::from_millis(700);

fn adapter(broker: &Broker) -> Box<dyn HubAdapter> {
    adapter_for("mosquitto", "broker-a", &broker.settings(), &zerotouch_outbound::OutboundPolicy::default()).unwrap()
}

fn id(text: &str) -> DeviceId {
    DeviceId::try_from(text).unwrap()
}

fn owner(registration: &str) -> Owner {
    Owner::registration(registration)
}

/// A new change, as the outbox names each job.
fn change() -> ChangeId {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    ChangeId::new(format!("change-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
}

fn cert_identity(device: &str, thumbprint: &str, enabled: bool) -> DeviceIdentity {
    DeviceIdentity {
        device_id: id(device),
        owner: owner(device),
        credential: Credential::Certificate { subject_cn: device.into(), thumbprint: thumbprint.into() },
        enabled,
        initial_twin: None,
        change: change(),
    }
}

fn key_identity(device: &str, key: &SymmetricKey, enabled: bool) -> DeviceIdentity {
    DeviceIdentity {
        device_id: id(device),
        owner: owner(device),
        credential: Credential::SymmetricKey(zerotouch_hub::SymmetricKeys::single(key.clone())),
        enabled,
        initial_twin: None,
        change: change(),
    }
}

/// A certificate device, once upserted, publishes under `devices/{id}/` and a subscriber receives it; its
/// publish under another device's topic is refused (PUBACK "not authorized") and never delivered; it may
/// subscribe to its own commands and not to another device's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_device_publishes_only_under_its_own_topics() {
    let broker = Broker::start();
    let hub = adapter(&broker);
    let (cert, key, thumbprint) = broker.client_cert("sensor-1");
    let (_, _, other_thumbprint) = broker.client_cert("sensor-2");
    hub.upsert_device(&cert_identity("sensor-1", &thumbprint, true)).await.unwrap();
    hub.upsert_device(&cert_identity("sensor-2", &other_thumbprint, true)).await.unwrap();

    let subscriber = broker.subscribe("devices/#");
    let own = broker.publish_with_cert(&cert, &key, "devices/sensor-1/telemetry", "t-own");
    assert!(own.output.contains("PUBACK (Mid: 1, RC:0)"), "{own:?}");
    assert!(subscriber.received("devices/sensor-1/telemetry", "t-own", DELIVERY), "{}", subscriber.output());

    let foreign = broker.publish_with_cert(&cert, &key, "devices/sensor-2/telemetry", "t-foreign");
    assert!(foreign.connected(), "{foreign:?}");
    assert!(foreign.output.contains("PUBACK (Mid: 1, RC:135)"), "not refused: {foreign:?}");
    let elsewhere = broker.publish_with_cert(&cert, &key, "other/topic", "t-elsewhere");
    assert!(!subscriber.received("devices/sensor-2/telemetry", "t-foreign", NO_DELIVERY), "{}", subscriber.output());
    assert!(elsewhere.output.contains("PUBACK (Mid: 1, RC:135)"), "not refused: {elsewhere:?}");

    let commands = sub_once(&broker, &cert, &key, "devices/sensor-1/commands/#");
    assert!(commands.contains("Subscribed (mid: 1): 1"), "own commands: {commands}");
    let theirs = sub_once(&broker, &cert, &key, "devices/sensor-2/commands/#");
    assert!(theirs.contains("Subscribed (mid: 1): 135"), "other commands: {theirs}");
}

/// Subscribes once as a certificate device with the real `mosquitto_sub`; its debug output.
fn sub_once(broker: &Broker, cert: &std::path::Path, key: &std::path::Path, topic: &str) -> String {
    let out = std::process::Command::new(support::require_program("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &broker.cert_port.to_string()])
        .arg("--cafile")
        .arg(broker.dir().join("ca.pem"))
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(["-t", topic, "-q", "1", "-V", "mqttv5", "-d", "-W", "1"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// A symmetric-key device logs in with its device key; disable refuses its connection; re-upsert lets it in
/// again; delete refuses it; deleting twice and disabling a missing device succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_device_disable_enable_delete() {
    let broker = Broker::start();
    let hub = adapter(&broker);
    let key = SymmetricKey::generate();
    let password = key.to_base64();
    let identity = key_identity("meter-7", &key, true);
    hub.upsert_device(&identity).await.unwrap();
    let subscriber = broker.subscribe("devices/#");

    let ok = broker.publish_with_password("meter-7", &password, "devices/meter-7/telemetry", "k1");
    assert!(ok.success, "{ok:?}");
    assert!(subscriber.received("devices/meter-7/telemetry", "k1", DELIVERY));
    let wrong = broker.publish_with_password("meter-7", "d3JvbmcgcGFzc3dvcmQ=", "devices/meter-7/telemetry", "k-wrong");
    assert!(!wrong.success && !wrong.connected(), "wrong key accepted: {wrong:?}");

    hub.disable_device(&id("meter-7"), &owner("meter-7"), &change()).await.unwrap();
    let disabled = broker.publish_with_password("meter-7", &password, "devices/meter-7/telemetry", "k2");
    assert!(!disabled.success && !disabled.connected(), "disabled device connected: {disabled:?}");

    hub.upsert_device(&identity).await.unwrap();
    let again = broker.publish_with_password("meter-7", &password, "devices/meter-7/telemetry", "k3");
    assert!(again.success, "{again:?}");
    assert!(subscriber.received("devices/meter-7/telemetry", "k3", DELIVERY));

    hub.delete_device(&id("meter-7"), &owner("meter-7"), &change()).await.unwrap();
    let deleted = broker.publish_with_password("meter-7", &password, "devices/meter-7/telemetry", "k4");
    assert!(!deleted.success && !deleted.connected(), "deleted device connected: {deleted:?}");
    assert!(!subscriber.received("devices/meter-7/telemetry", "k2", NO_DELIVERY));
    assert!(!subscriber.output().contains("k4"));
    assert!(broker.ctrl(&["listRoles"]).lines().all(|l| !l.contains("zt-device-meter-7")));

    hub.delete_device(&id("meter-7"), &owner("meter-7"), &change()).await.unwrap();
    hub.disable_device(&id("never-existed"), &owner("never-existed"), &change()).await.unwrap();
    hub.delete_device(&id("never-existed"), &owner("never-existed"), &change()).await.unwrap();
}

/// A certificate device that is disabled or deleted can still open a TLS connection (dynamic security does not
/// authenticate certificate identities) but publishes nothing; re-upsert restores it; an upsert with
/// `enabled: false` creates it cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_device_disabled_or_deleted_publishes_nothing() {
    let broker = Broker::start();
    let hub = adapter(&broker);
    let (cert, key, thumbprint) = broker.client_cert("cam-3");
    let subscriber = broker.subscribe("devices/#");

    hub.upsert_device(&cert_identity("cam-3", &thumbprint, false)).await.unwrap();
    broker.publish_with_cert(&cert, &key, "devices/cam-3/telemetry", "c0");
    hub.upsert_device(&cert_identity("cam-3", &thumbprint, true)).await.unwrap();
    let ok = broker.publish_with_cert(&cert, &key, "devices/cam-3/telemetry", "c1");
    assert!(ok.success, "{ok:?}");
    assert!(subscriber.received("devices/cam-3/telemetry", "c1", DELIVERY));

    hub.disable_device(&id("cam-3"), &owner("cam-3"), &change()).await.unwrap();
    let disabled = broker.publish_with_cert(&cert, &key, "devices/cam-3/telemetry", "c2");
    assert!(disabled.connected() && disabled.output.contains("PUBACK (Mid: 1, RC:135)"), "{disabled:?}");

    hub.upsert_device(&cert_identity("cam-3", &thumbprint, true)).await.unwrap();
    broker.publish_with_cert(&cert, &key, "devices/cam-3/telemetry", "c3");
    assert!(subscriber.received("devices/cam-3/telemetry", "c3", DELIVERY));

    hub.delete_device(&id("cam-3"), &owner("cam-3"), &change()).await.unwrap();
    broker.publish_with_cert(&cert, &key, "devices/cam-3/telemetry", "c4");
    assert!(!subscriber.received("devices/cam-3/telemetry", "c4", NO_DELIVERY));
    let output = subscriber.output();
    assert!(!output.contains(" c0") && !output.contains(" c2"), "{output}");
    hub.delete_device(&id("cam-3"), &owner("cam-3"), &change()).await.unwrap();
}

/// Upserting twice leaves one client with one role and exactly the device's ACLs; switching a device from a
/// key to a certificate makes its old key useless; a change delivered twice is applied once; a certificate whose
/// CN is not the device id is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_is_idempotent_and_replaces_the_credential() {
    let broker = Broker::start();
    let hub = adapter(&broker);
    let key = SymmetricKey::generate();
    hub.upsert_device(&key_identity("gw-1", &key, true)).await.unwrap();
    hub.upsert_device(&key_identity("gw-1", &key, true)).await.unwrap();
    let client = broker.ctrl(&["getClient", "gw-1"]);
    assert_eq!(client.matches("zt-device-gw-1").count(), 1, "{client}");
    let role = broker.ctrl(&["getRole", "zt-device-gw-1"]);
    for expected in ["devices/gw-1/#", "devices/gw-1/commands/#", "publishClientSend", "subscribePattern"] {
        assert!(role.contains(expected), "{expected} missing: {role}");
    }
    assert!(broker.publish_with_password("gw-1", &key.to_base64(), "devices/gw-1/x", "m").success);

    let (_, _, thumbprint) = broker.client_cert("gw-1");
    hub.upsert_device(&cert_identity("gw-1", &thumbprint, true)).await.unwrap();
    let old_key = broker.publish_with_password("gw-1", &key.to_base64(), "devices/gw-1/x", "m");
    assert!(!old_key.connected(), "the old key still works: {old_key:?}");

    // A change delivered again (the outbox retries when it did not learn the outcome of a delivery) is applied
    // once: the second delivery leaves the client as the first made it, even carrying other content; the next
    // change applies.
    let first_key = SymmetricKey::generate();
    let first = key_identity("gw-3", &first_key, true);
    hub.upsert_device(&first).await.unwrap();
    let replayed = DeviceIdentity { credential: key_identity("gw-3", &key, true).credential, ..first.clone() };
    hub.upsert_device(&replayed).await.unwrap();
    assert!(broker.publish_with_password("gw-3", &first_key.to_base64(), "devices/gw-3/x", "m").success);
    assert!(!broker.publish_with_password("gw-3", &key.to_base64(), "devices/gw-3/x", "m").connected());
    hub.upsert_device(&key_identity("gw-3", &key, true)).await.unwrap();
    assert!(broker.publish_with_password("gw-3", &key.to_base64(), "devices/gw-3/x", "m").success);
    assert!(!broker.publish_with_password("gw-3", &first_key.to_base64(), "devices/gw-3/x", "m").connected());

    let mismatch = DeviceIdentity {
        device_id: id("gw-2"),
        owner: owner("gw-2"),
        credential: Credential::Certificate { subject_cn: "someone-else".into(), thumbprint },
        enabled: true,
        initial_twin: None,
        change: change(),
    };
    let error = hub.upsert_device(&mismatch).await.unwrap_err();
    assert!(matches!(error, HubError::Rejected { .. }), "{error:?}");
    assert!(error.to_string().contains("broker-a") && error.to_string().contains("gw-2"), "{error}");
    hub.health().await.unwrap();
}

/// The adapter changes only identities it made for the same registration: an operator's account, the admin user
/// and another registration's device are refused (`NotManaged`, naming the hub and the device) on upsert, disable
/// and delete, and each keeps working afterwards; the admin connection keeps working throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_identities_are_left_alone() {
    let broker = Broker::start();
    let hub = adapter(&broker);
    let created = broker.ctrl(&["createClient", "ops-console", "-p", "ops-password-123"]);
    assert!(!created.to_lowercase().contains("error"), "{created}");
    broker.ctrl(&["addClientRole", "ops-console", "admin"]);
    let key = SymmetricKey::generate();
    let not_managed = |result: Result<(), HubError>, what: &str| {
        let error = result.unwrap_err();
        assert!(matches!(error, HubError::NotManaged { .. }), "{what}: {error:?}");
        assert!(!error.is_retryable(), "{what}");
        assert!(error.to_string().contains("broker-a"), "{what}: {error}");
    };
    not_managed(hub.upsert_device(&key_identity("ops-console", &key, true)).await, "upsert of an account");
    not_managed(
        hub.disable_device(&id("ops-console"), &owner("ops-console"), &change()).await,
        "disable of an account",
    );
    not_managed(hub.delete_device(&id("ops-console"), &owner("ops-console"), &change()).await, "delete of an account");
    not_managed(hub.upsert_device(&key_identity("admin", &key, true)).await, "upsert of the admin");
    not_managed(hub.upsert_device(&key_identity("ADMIN", &key, true)).await, "upsert of the admin, in capitals");
    not_managed(hub.delete_device(&id("admin"), &owner("admin"), &change()).await, "delete of the admin");
    not_managed(hub.disable_device(&id("admin"), &owner("admin"), &change()).await, "disable of the admin");
    let account = broker.publish_with_password("ops-console", "ops-password-123", "ops/x", "still-mine");
    assert!(account.connected(), "the operator's account must keep its password: {account:?}");
    assert!(!broker.ctrl(&["listRoles"]).contains("zt-device-ops-console"), "no stray role is left");
    hub.health().await.unwrap();

    // Registration r-1 owns device dev-1; registration r-2 may not take, disable or delete it.
    let mine = DeviceIdentity { owner: owner("r-1"), ..key_identity("dev-1", &key, true) };
    hub.upsert_device(&mine).await.unwrap();
    assert_eq!(description(&broker, "dev-1"), format!("zerotouch device of registration r-1; change {}", mine.change));
    let other_key = SymmetricKey::generate();
    let theirs = DeviceIdentity { owner: owner("r-2"), ..key_identity("dev-1", &other_key, true) };
    not_managed(hub.upsert_device(&theirs).await, "upsert of another registration's device");
    not_managed(
        hub.disable_device(&id("dev-1"), &owner("r-2"), &change()).await,
        "disable of another registration's device",
    );
    not_managed(
        hub.delete_device(&id("dev-1"), &owner("r-2"), &change()).await,
        "delete of another registration's device",
    );
    let still = broker.publish_with_password("dev-1", &key.to_base64(), "devices/dev-1/x", "m");
    assert!(still.success, "the owner's device keeps its key: {still:?}");
    hub.upsert_device(&mine).await.unwrap();
    hub.delete_device(&id("dev-1"), &owner("r-1"), &change()).await.unwrap();
    assert!(!broker.ctrl(&["listClients"]).lines().any(|l| l.trim() == "dev-1"));

    // A device made by zerotouch 0.1.0 (no mark, only its device role) is still ours, and gets the mark.
    broker.ctrl(&["createRole", "zt-device-old-1"]);
    broker.ctrl(&["createClient", "old-1", "-p", "old-password-123"]);
    broker.ctrl(&["addClientRole", "old-1", "zt-device-old-1"]);
    let old = key_identity("old-1", &key, true);
    hub.upsert_device(&old).await.unwrap();
    assert_eq!(description(&broker, "old-1"), format!("zerotouch device of registration old-1; change {}", old.change));
    hub.health().await.unwrap();
}

/// The `textdescription` of client `username`, from the plugin's file (`mosquitto_ctrl` 2.0 does not print it).
fn description(broker: &Broker, username: &str) -> String {
    let file = std::fs::read_to_string(broker.dir().join("dynamic-security.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&file).unwrap();
    let clients = config["clients"].as_array().unwrap();
    let client = clients.iter().find(|c| c["username"] == username).unwrap();
    client["textdescription"].as_str().unwrap_or_default().to_owned()
}

/// A broker that is down gives `Unavailable` (fast, naming the hub and operation); when it comes back, the
/// same adapter reconnects and works; when it drops again, `Unavailable` again, then recovery again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_is_unavailable_and_the_adapter_reconnects() {
    let port = support::free_port();
    let settings = serde_json::json!({
        "host": "127.0.0.1", "port": port, "username": "admin", "password": support::ADMIN_PASSWORD,
        "timeoutMs": 2000,
    });
    let hub =
        adapter_for("mosquitto", "broker-down", &settings, &zerotouch_outbound::OutboundPolicy::default()).unwrap();
    let key = SymmetricKey::generate();
    let started = Instant::now();
    let error = hub.upsert_device(&key_identity("d1", &key, true)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(error.is_retryable(), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("broker-down") && text.contains("device d1"), "{text}");
    assert!(matches!(hub.health().await, Err(HubError::Unavailable { .. })));

    let mut broker = Broker::start_on(port);
    eventually(|| hub.health()).await;
    hub.upsert_device(&key_identity("d1", &key, true)).await.unwrap();

    broker.stop();
    let error = hub.delete_device(&id("d1"), &owner("d1"), &change()).await.unwrap_err();
    assert!(matches!(error, HubError::Unavailable { .. }), "{error:?}");
    broker.restart();
    eventually(|| hub.health()).await;
    hub.delete_device(&id("d1"), &owner("d1"), &change()).await.unwrap();
}

/// Wrong admin credentials give `Unavailable` with a message that points at them and never shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_password_is_reported_without_the_password() {
    let broker = Broker::start();
    let mut settings = broker.settings();
    settings["password"] = "not-the-password-xyz".into();
    let hub = adapter_for("mosquitto", "broker-a", &settings, &zerotouch_outbound::OutboundPolicy::default()).unwrap();
    let error = hub.health().await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, HubError::Unavailable { .. }), "{error:?}");
    assert!(text.contains("username and password"), "{text}");
    assert!(!text.contains("not-the-password-xyz") && !format!("{error:?}").contains("not-the-password-xyz"));
}

async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), HubError>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("still failing: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
