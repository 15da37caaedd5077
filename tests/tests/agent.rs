#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The device agent (issue #20, `docs/agent.md`) against the real server, real Mosquitto brokers set up from
//! `docs/hubs/mosquitto.md`, and swtpm: `zerotouch-agent run` provisions, renews certificates that live a minute,
//! starts over when its certificate is refused, follows moves, and drives a real MQTT client (`mosquitto_pub`,
//! restarted by the agent's hook) that publishes to the hub the whole time.
//!
//! Build the agent first: `cargo build -p zerotouch-agent` (scripts/test builds the whole workspace).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zerotouch_tests::mosquitto::{Broker, Subscriber};
use zerotouch_tests::softhsm::{self, SoftHsm};
use zerotouch_tests::swtpm::Swtpm;
use zerotouch_tests::{Api, Backend, Options, Server};

/// Certificates live a minute (the shortest `certificatePolicy.validitySeconds`).
const LIFETIME: u64 = 60;

async fn start(extra: &[&str]) -> Server {
    let mut args: Vec<String> = vec!["--device-rate-limit".into(), "1000/10s".into()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Server::start_with(Backend::Sqlite, Options { args, ..Default::default() }).await.unwrap()
}

async fn ok(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// An individual symmetric-key enrollment on `hub` whose certificates live [`LIFETIME`].
fn enrollment(id: &str, key: &[u8], hub: &str, status: &str) -> Value {
    let mut document = zerotouch_tests::device::symmetric_key_enrollment(id, key, hub, status);
    document["certificatePolicy"] = json!({"validitySeconds": LIFETIME});
    document
}

/// A server and a broker linked to it as `mqtt-a.example.com`.
async fn server_and_broker() -> (Server, Broker) {
    let server = start(&[]).await;
    let broker = Broker::start(&server, "mqtt-a.example.com");
    broker.link(&Api::new(&server, "owner")).await;
    (server, broker)
}

/// Waits until `device` (registration id `id`) renewed once, then checks that its client published to the broker
/// and that every certificate the hook got is one zerotouch issued to it.
async fn renews_and_publishes(device: &Device, api: &Api<'_>, subscriber: &Subscriber, id: &str) {
    device.wait_for("renewed", Duration::from_secs(60), |e| e.iter().any(|e| e.event == "renewed")).await;
    let topic = format!("devices/{id}/telemetry");
    assert!(subscriber.received(&topic, "", Duration::from_secs(10)), "{}", subscriber.output());
    let issued = issued_thumbprints(api, id).await;
    for event in device.events() {
        assert!(issued.contains(&event.sha256), "{event:?} {issued:?}");
    }
}

/// The hook: records each event (event, thumbprint, hub, time), stops the previous MQTT client and, unless the
/// identity was dropped, starts a new one that publishes a timestamp every 100 ms to the hub it was given.
const HOOK: &str = r#"#!/bin/bash
set -u
dir="$(dirname "$0")"
echo "$ZEROTOUCH_EVENT ${ZEROTOUCH_CERT_SHA256:--} ${ZEROTOUCH_HUB:--} $(date +%s.%N)" >> "$dir/hook.log"
if [ -f "$dir/publisher.pid" ]; then
    kill -TERM -- "-$(cat "$dir/publisher.pid")" 2>/dev/null
    rm -f "$dir/publisher.pid"
fi
[ "$ZEROTOUCH_EVENT" = dropped ] && exit 0
read -r port ca < <(awk -v h="$ZEROTOUCH_HUB" '$1 == h {print $2, $3}' "$dir/hubs")
setsid bash -c 'while true; do date +%s.%N; sleep 0.1; done | exec mosquitto_pub -h 127.0.0.1 -p "$0" --cafile "$1" --cert "$2" --key "$3" -t "devices/$4/telemetry" -l -q 1' \
    "$port" "$ca" "$ZEROTOUCH_CERT_FILE" "$ZEROTOUCH_KEY_FILE" "$ZEROTOUCH_DEVICE_ID" >> "$dir/publisher.log" 2>&1 &
echo $! > "$dir/publisher.pid"
"#;

/// One line of the hook's log.
#[derive(Debug, Clone)]
struct HookEvent {
    event: String,
    sha256: String,
    hub: String,
}

/// A device running `zerotouch-agent run` in its own directory (configuration, state, hook, MQTT client).
struct Device {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    runs: u32,
    /// Extra environment of the agent.
    env: Vec<(String, String)>,
}

impl Device {
    /// A device of `server` with `attestation` (a TOML `[attestation]` table) and `extra` TOML (`[renewal]`...),
    /// whose hook reaches `brokers`.
    fn new(
        server: &Server,
        registration_id: Option<&str>,
        attestation: &str,
        extra: &str,
        brokers: &[&Broker],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let id = registration_id.map(|id| format!("registration_id = \"{id}\"\n")).unwrap_or_default();
        let hook = dir.path().join("hook.sh");
        std::fs::write(&hook, HOOK).unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        let hubs: String =
            brokers.iter().map(|b| format!("{} {} {}\n", b.host_name, b.cert_port, b.server_ca.display())).collect();
        std::fs::write(dir.path().join("hubs"), hubs).unwrap();
        let config = format!(
            "state_dir = \"{state}\"\n[service]\nurl = \"{url}\"\nid_scope = \"{scope}\"\n{id}trust_bundle = \"{trust}\"\n\
             timeout = \"30s\"\n{attestation}\n[hook]\ncommand = [\"{hook}\"]\n{extra}\n",
            state = dir.path().join("state").display(),
            url = server.device_url,
            scope = server.id_scope,
            trust = server.data_dir.join("trust-bundle.pem").display(),
            hook = hook.display(),
        );
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, config).unwrap();
        Self { dir, config: path, child: None, runs: 0, env: Vec::new() }
    }

    fn start(&mut self) {
        self.runs += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("agent-{}.log", self.runs))).unwrap();
        let child = Command::new(zerotouch_tests::agent_binary().unwrap())
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .args(["--log-format", "json"])
            .env("ZEROTOUCH_AGENT_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Stops the agent with SIGTERM (as systemd does) and waits for it; it must exit cleanly.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "the agent exited with {status} on SIGTERM:\n{}", self.log());
                return;
            }
            assert!(Instant::now() < deadline, "the agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the MQTT client the hook started.
    fn stop_publisher(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("publisher.pid")) {
            let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", pid.trim())]).status();
        }
    }

    /// `zerotouch-agent status`.
    fn status(&self) -> Value {
        let out = Command::new(zerotouch_tests::agent_binary().unwrap())
            .arg("status")
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn events(&self) -> Vec<HookEvent> {
        std::fs::read_to_string(self.dir.path().join("hook.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(' ');
                Some(HookEvent {
                    event: fields.next()?.to_owned(),
                    sha256: fields.next()?.to_owned(),
                    hub: fields.next()?.to_owned(),
                })
            })
            .collect()
    }

    fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|e| e.event == event).count()
    }

    /// Waits up to `timeout` for `condition` on the hook's events.
    /// Waits until the agent has recorded its hook as done (`hookPending` null). The hook writes its event before
    /// it exits: an agent stopped in between stops the hook too and runs it again when it starts (`docs/agent.md`).
    async fn wait_for_hook_done(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.status()["hookPending"].is_null() {
            assert!(Instant::now() < deadline, "the hook stays pending: {}\n{}", self.status(), self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for(&self, what: &str, timeout: Duration, condition: impl Fn(&[HookEvent]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !condition(&self.events()) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; events {:?}\nstatus {}\n{}",
                self.events(),
                self.status(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log(&self) -> String {
        (1..=self.runs)
            .map(|run| std::fs::read_to_string(self.dir.path().join(format!("agent-{run}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restarted ---\n")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stop_publisher();
    }
}

/// The timestamps the subscriber received from `device_id`, in arrival order.
fn received(subscriber: &Subscriber, device_id: &str) -> Vec<f64> {
    let prefix = format!("devices/{device_id}/telemetry ");
    subscriber.output().lines().filter_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok()).collect()
}

/// The longest time between two consecutive messages.
fn longest_gap(times: &[f64]) -> f64 {
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

/// The SHA-256 thumbprints of every certificate zerotouch issued to `registration_id` (admin API).
async fn issued_thumbprints(api: &Api<'_>, registration_id: &str) -> Vec<String> {
    let list = ok(api.get("/pki/certificates?pageSize=1000").await).await;
    let items = list.as_array().cloned().or_else(|| list["items"].as_array().cloned()).unwrap_or_default();
    items
        .iter()
        .filter(|c| c["registrationId"].as_str().is_some_and(|r| r.eq_ignore_ascii_case(registration_id)))
        .filter_map(|c| Some(c["sha256Thumbprint"].as_str()?.to_ascii_lowercase()))
        .collect()
}

/// An X.509 enrollment group `id` of the factory CA `ca_pem` on `broker`, whose certificates live [`LIFETIME`].
async fn enroll_factory(api: &Api<'_>, id: &str, ca_pem: &str, broker: &Broker) {
    let group = json!({
        "enrollmentGroupId": id,
        "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": ca_pem}}}},
        "iotHubs": [broker.host_name],
        "allocationPolicy": "static",
        "certificatePolicy": {"validitySeconds": LIFETIME},
    });
    ok(api.put(&format!("/enrollmentGroups/{id}"), &group).await).await;
}

/// Enrolls the TPM `tpm` (its EK as `zerotouch-agent keys` prints it) as `id` on `broker`, with certificates that
/// live [`LIFETIME`]; returns the agent's `[attestation]` for it.
async fn enroll_tpm(api: &Api<'_>, tpm: &Swtpm, id: &str, broker: &Broker) -> String {
    let keys =
        Command::new(zerotouch_tests::agent_binary().unwrap()).args(["keys", "--tpm", &tpm.tcti()]).output().unwrap();
    assert!(keys.status.success(), "{}", String::from_utf8_lossy(&keys.stderr));
    let keys: Value = serde_json::from_slice(&keys.stdout).unwrap();
    let document = json!({
        "registrationId": id,
        "attestation": {"type": "tpm", "tpm": {"endorsementKey": keys["endorsementKey"]}},
        "iotHubs": [broker.host_name],
        "allocationPolicy": "static",
        "certificatePolicy": {"validitySeconds": LIFETIME},
    });
    ok(api.put(&format!("/enrollments/{id}"), &document).await).await;
    format!("[attestation]\nmethod = \"tpm\"\ntcti = \"{}\"\n", tpm.tcti())
}

/// A symmetric-key enrollment group `id` of `key` on `hub` whose certificates live [`LIFETIME`].
fn key_group(id: &str, key: &[u8], hub: &str, status: &str) -> Value {
    json!({
        "enrollmentGroupId": id,
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(key), "secondaryKey": STANDARD.encode([5u8; 32])}},
        "iotHubs": [hub],
        "allocationPolicy": "static",
        "provisioningStatus": status,
        "certificatePolicy": {"validitySeconds": LIFETIME},
    })
}

fn symmetric_key_attestation(dir: &Path, key: &[u8], group: bool) -> String {
    let file = dir.join(if group { "group.key" } else { "device.key" });
    std::fs::write(&file, STANDARD.encode(key)).unwrap();
    format!("[attestation]\nmethod = \"symmetric_key\"\nkey_file = \"{}\"\ngroup = {group}\n", file.display())
}

/// (a) Certificates valid a minute, renewed at about 40 % of it: over several renewal cycles the MQTT client the
/// hook restarts keeps publishing to its broker with no gap longer than a restart, every certificate it used is
/// one zerotouch issued to this device, and the previous pair is gone once the hook took the new one. Two devices
/// side by side: one with its own symmetric key, one with a key derived on the device from its group's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_renews_short_lived_certificates_while_the_device_keeps_publishing() {
    let (server, broker) = server_and_broker().await;
    let api = Api::new(&server, "owner");
    let key = [1u8; 32];
    ok(api.put("/enrollments/meter-1", &enrollment("meter-1", &key, &broker.host_name, "enabled")).await).await;
    let group_key = [6u8; 32];
    ok(api.put("/enrollmentGroups/meters", &key_group("meters", &group_key, &broker.host_name, "enabled")).await).await;
    let keys = tempfile::tempdir().unwrap();
    let renewal = "[renewal]\nfraction = 0.4\njitter = 0.05\nbackoff_initial = \"1s\"\nbackoff_max = \"5s\"\n";
    let ids = ["meter-1", "meter-2"];
    let mut devices = [
        Device::new(&server, Some(ids[0]), &symmetric_key_attestation(keys.path(), &key, false), renewal, &[&broker]),
        Device::new(
            &server,
            Some(ids[1]),
            &symmetric_key_attestation(keys.path(), &group_key, true),
            renewal,
            &[&broker],
        ),
    ];
    let subscriber = broker.subscribe("devices/#");
    let started = Instant::now();
    for device in &mut devices {
        device.start();
    }
    for device in &devices {
        device.wait_for("provisioned", Duration::from_secs(30), |e| e.iter().any(|e| e.event == "provisioned")).await;
    }
    eprintln!("provisioned after {:?}", started.elapsed());
    for device in &devices {
        device
            .wait_for("three renewals", Duration::from_secs(120), |e| {
                e.iter().filter(|e| e.event == "renewed").count() >= 3
            })
            .await;
    }
    eprintln!("three renewals each after {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    for device in &mut devices {
        device.stop();
        device.stop_publisher();
    }

    for (device, id) in devices.iter().zip(ids) {
        let times = received(&subscriber, id);
        let gap = longest_gap(&times);
        eprintln!("{id}: {} messages, longest gap {gap:.3} s", times.len());
        assert!(times.len() > 300, "{id} published too little: {}", times.len());
        // A restart is the hook's bash, a new mosquitto_pub and its TLS connection: about a second here (1.14 s
        // measured); the bound leaves room for a loaded CI machine, and a renewal that stopped the client would
        // exceed it.
        assert!(gap < 3.0, "{id}: a publishing gap of {gap:.3} s, longer than a restart of the client");

        let events = device.events();
        let issued = issued_thumbprints(&api, id).await;
        assert!(issued.len() >= 4, "{id}: {issued:?}");
        for event in &events {
            assert_eq!(event.hub, broker.host_name, "{events:?}");
            assert!(
                issued.contains(&event.sha256),
                "the hook got a certificate zerotouch did not issue to {id}: {event:?}"
            );
        }
        let thumbprints: std::collections::HashSet<&str> = events.iter().map(|e| e.sha256.as_str()).collect();
        assert_eq!(thumbprints.len(), events.len(), "each change brings a new certificate: {events:?}");

        let status = device.status();
        assert_eq!(status["status"], "assigned", "{status}");
        assert_eq!(status["hub"], broker.host_name);
        assert_eq!(status["certificate"]["sha256"], events.last().unwrap().sha256.as_str());
        assert!(status["previous"].is_null() && status["hookPending"].is_null(), "{status}");
        assert_eq!(status["failures"], 0, "{status}");
        // Only the current pair is on disk, its key private; a new key for every certificate.
        let identity = device.path("state/identity");
        let pairs: Vec<_> = std::fs::read_dir(&identity)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_dir() && e.file_name() != "current")
            .collect();
        assert_eq!(pairs.len(), 1, "{pairs:?}");
        let key_file = identity.join("current/key.pem");
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    server.assert_no_secret_in_logs();
}

/// (b) The agent is stopped across its certificate's expiry. Without a renewal grace the device comes back by
/// registering again with its onboarding credential; with `--renewal-grace` (and the agent's `grace`) by EST. Each
/// server has three devices: an individual symmetric key, a key derived on the device from its group's key, and a
/// TPM on swtpm whose operational key lives in the TPM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_stopped_across_an_expiry_recovers_by_registration_or_within_the_grace_by_est() {
    let strict = start(&[]).await;
    let graceful = start(&["--renewal-grace", "10m"]).await;
    let mut devices = Vec::new();
    let mut brokers = Vec::new();
    let mut tpms = Vec::new();
    let keys = tempfile::tempdir().unwrap();
    for (server, grace) in [(&strict, "0s"), (&graceful, "10m")] {
        let api = Api::new(server, "owner");
        let broker = Broker::start(server, "mqtt-a.example.com");
        broker.link(&api).await;
        let key = [2u8; 32];
        ok(api.put("/enrollments/sleeper-1", &enrollment("sleeper-1", &key, &broker.host_name, "enabled")).await).await;
        let group_key = [7u8; 32];
        ok(api
            .put("/enrollmentGroups/sleepers", &key_group("sleepers", &group_key, &broker.host_name, "enabled"))
            .await)
        .await;
        let tpm = Swtpm::start().unwrap();
        let tpm_attestation = enroll_tpm(&api, &tpm, "sleeper-3", &broker).await;
        tpms.push(tpm);
        let renewal = format!(
            "[renewal]\nfraction = 0.9\njitter = 0.0\nbackoff_initial = \"1s\"\nbackoff_max = \"5s\"\ngrace = \"{grace}\"\n"
        );
        for (id, attestation, extra) in [
            ("sleeper-1", symmetric_key_attestation(keys.path(), &key, false), String::new()),
            ("sleeper-2", symmetric_key_attestation(keys.path(), &group_key, true), String::new()),
            ("sleeper-3", tpm_attestation, "[identity]\nkey_type = \"tpm\"\n".to_owned()),
        ] {
            let mut device = Device::new(server, Some(id), &attestation, &format!("{extra}{renewal}"), &[&broker]);
            device.start();
            devices.push(device);
        }
        brokers.push(broker);
    }
    for device in &mut devices {
        device.wait_for("provisioned", Duration::from_secs(30), |e| e.iter().any(|e| e.event == "provisioned")).await;
        device.wait_for_hook_done().await;
        device.stop();
    }
    let not_after: Vec<chrono::DateTime<chrono::Utc>> =
        devices.iter().map(|d| d.status()["certificate"]["notAfter"].as_str().unwrap().parse().unwrap()).collect();
    let latest = *not_after.iter().max().unwrap();
    let wait = (latest - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(2);
    eprintln!("waiting {wait:?} for the certificates to expire");
    tokio::time::sleep(wait).await;

    for device in &mut devices {
        device.start();
    }
    let (strict_devices, graceful_devices) = devices.split_at(3);
    for device in strict_devices {
        device
            .wait_for("registered again", Duration::from_secs(30), |e| {
                e.iter().filter(|e| e.event == "provisioned").count() == 2
            })
            .await;
        assert_eq!(device.count("renewed"), 0, "{:?}", device.events());
        // The strict server would refuse the expired certificate: the agent does not even try, its grace is 0.
        assert!(!device.log().contains("renewing by EST"), "{}", device.log());
    }
    for device in graceful_devices {
        device.wait_for("renewed by EST", Duration::from_secs(30), |e| e.iter().any(|e| e.event == "renewed")).await;
        assert_eq!(device.count("provisioned"), 1, "{:?}", device.events());
    }
    for (device, server) in devices.iter().zip([&strict, &strict, &strict, &graceful, &graceful, &graceful]) {
        let status = device.status();
        assert_eq!(status["status"], "assigned", "{status}");
        let not_after: chrono::DateTime<chrono::Utc> =
            status["certificate"]["notAfter"].as_str().unwrap().parse().unwrap();
        assert!(not_after > chrono::Utc::now(), "{status}");
        let id = status["registrationId"].as_str().unwrap().to_owned();
        let issued = issued_thumbprints(&Api::new(server, "owner"), &id).await;
        for event in device.events() {
            assert!(issued.contains(&event.sha256), "{id}: {event:?} {issued:?}");
        }
    }
    // The TPM devices' new keys are TPM keys at the other handle: the expired one was not reused.
    for device in [&devices[2], &devices[5]] {
        let status = device.status();
        assert_eq!(status["certificate"]["keyHandle"], "0x81000102", "{status}");
        assert!(!device.path("state/identity/current/key.pem").exists(), "the key never leaves the TPM");
    }
}

/// (c) The enrollment is moved to another broker: the agent's next check follows the move, and its MQTT client,
/// restarted by the hook with the new hub, publishes there; the old broker loses the device. The same with a
/// device key derived on the device from its group's key, registering over the MQTT device API, and with a TPM
/// device whose operational key lives in the TPM (its hook is told the new hub; `mosquitto_pub` cannot use a key
/// inside a TPM, so that device publishes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_device_lands_on_the_new_broker_unaided_also_with_a_group_derived_key_over_mqtt() {
    let server = start(&[]).await;
    let api = Api::new(&server, "owner");
    let a = Broker::start(&server, "mqtt-a.example.com");
    let b = Broker::start(&server, "mqtt-b.example.com");
    a.link(&api).await;
    b.link(&api).await;
    let keys = tempfile::tempdir().unwrap();
    let renewal = "[renewal]\ncheck_interval = \"2s\"\nbackoff_initial = \"1s\"\nbackoff_max = \"5s\"\n";
    let key = [3u8; 32];
    ok(api.put("/enrollments/mover-1", &enrollment("mover-1", &key, &a.host_name, "enabled")).await).await;
    let group_key = [4u8; 32];
    let group = |hub: &str| {
        json!({
            "enrollmentGroupId": "movers",
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(group_key), "secondaryKey": STANDARD.encode([5u8; 32])}},
            "iotHubs": [hub],
            "allocationPolicy": "static",
            "certificatePolicy": {"validitySeconds": 600},
        })
    };
    ok(api.put("/enrollmentGroups/movers", &group(&a.host_name)).await).await;
    // mover-2 registers and checks over the MQTT device API (its SAS token, then its certificate).
    let over_mqtt = format!(
        "transport = \"mqtt\"\nmqtt_address = \"{}\"\n{}",
        server.mqtt_addr,
        symmetric_key_attestation(keys.path(), &group_key, true)
    );
    let tpm = Swtpm::start().unwrap();
    let tpm_attestation = enroll_tpm(&api, &tpm, "mover-3", &a).await;
    let in_tpm = format!("[identity]\nkey_type = \"tpm\"\n{renewal}");
    let mut devices = [
        Device::new(&server, Some("mover-1"), &symmetric_key_attestation(keys.path(), &key, false), renewal, &[&a, &b]),
        Device::new(&server, Some("mover-2"), &over_mqtt, renewal, &[&a, &b]),
        Device::new(&server, Some("mover-3"), &tpm_attestation, &in_tpm, &[&a, &b]),
    ];
    for device in &mut devices {
        device.start();
    }
    let ids = ["mover-1", "mover-2", "mover-3"];
    let publishing = ["mover-1", "mover-2"];
    let on_a = a.subscribe("devices/#");
    for (device, id) in devices.iter().zip(ids) {
        device.wait_for("provisioned", Duration::from_secs(30), |e| e.iter().any(|e| e.event == "provisioned")).await;
        if publishing.contains(&id) {
            let topic = format!("devices/{id}/telemetry");
            assert!(on_a.received(&topic, "", Duration::from_secs(10)), "{}", on_a.output());
        }
    }

    let on_b = b.subscribe("devices/#");
    let moved = Instant::now();
    ok(api.put("/enrollments/mover-1", &enrollment("mover-1", &key, &b.host_name, "enabled")).await).await;
    let current = ok(api.get("/enrollmentGroups/movers").await).await;
    ok(api.put_if_match("/enrollmentGroups/movers", &group(&b.host_name), current["etag"].as_str().unwrap()).await)
        .await;
    let mut tpm_enrollment = ok(api.get("/enrollments/mover-3").await).await;
    tpm_enrollment["iotHubs"] = json!([b.host_name]);
    let etag = tpm_enrollment["etag"].as_str().unwrap().to_owned();
    ok(api.put_if_match("/enrollments/mover-3", &tpm_enrollment, &etag).await).await;
    for (device, id) in devices.iter().zip(ids) {
        device
            .wait_for("moved to B", Duration::from_secs(30), |e| {
                e.last().is_some_and(|e| e.event == "moved" && e.hub == b.host_name)
            })
            .await;
        if publishing.contains(&id) {
            let topic = format!("devices/{id}/telemetry");
            assert!(on_b.received(&topic, "", Duration::from_secs(10)), "{}", on_b.output());
        }
        assert_eq!(device.status()["hub"], b.host_name);
    }
    // The TPM device's key stayed in the TPM through the move.
    assert!(!devices[2].path("state/identity/current/key.pem").exists());
    eprintln!("the devices follow to B {:?} after the move", moved.elapsed());
    // The application says its hub refused it: the agent registers again with its onboarding key.
    let out = Command::new(zerotouch_tests::agent_binary().unwrap())
        .arg("reprovision")
        .arg("--config")
        .arg(&devices[0].config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    devices[0]
        .wait_for("provisioned again", Duration::from_secs(10), |e| {
            e.iter().filter(|e| e.event == "provisioned").count() == 2 && e.last().is_some_and(|e| e.hub == b.host_name)
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.clients().iter().any(|c| c.starts_with("mover-")) {
        assert!(Instant::now() < deadline, "broker A kept the devices: {:?}", a.clients());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // mover-2 never used HTTPS (no renewal was due), mover-1 only HTTPS.
    assert!(devices[0].log().contains("reqwest::connect"));
    assert!(!devices[1].log().contains("reqwest::connect"), "{}", devices[1].log());
    for device in &mut devices {
        device.stop();
    }
}

/// (d) Revoked: the agent's next check is refused, it drops the certificate at once (the hook is told, with no
/// files, and stops the client), `status` names the dropped certificate and why, and the agent registers again
/// with its onboarding credential (a new certificate, a new key). Disabled: the same, but the registration ends
/// disabled: no certificate, `status` says so, and the retries back off instead of looping (counted by the
/// server). Each with an individual symmetric key, a group-derived key, and a TPM-resident key on swtpm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_drops_its_certificate_and_a_disabled_one_backs_off() {
    let (server, broker) = server_and_broker().await;
    let api = Api::new(&server, "owner");
    let key = [6u8; 32];
    ok(api.put("/enrollments/lost-1", &enrollment("lost-1", &key, &broker.host_name, "enabled")).await).await;
    let group_key = [8u8; 32];
    ok(api.put("/enrollmentGroups/lost", &key_group("lost", &group_key, &broker.host_name, "enabled")).await).await;
    let tpm = Swtpm::start().unwrap();
    let tpm_attestation = enroll_tpm(&api, &tpm, "lost-3", &broker).await;
    let keys = tempfile::tempdir().unwrap();
    let renewal = "[renewal]\ncheck_interval = \"2s\"\nbackoff_initial = \"1s\"\nbackoff_max = \"4s\"\n";
    let ids = ["lost-1", "lost-2", "lost-3"];
    let mut devices = Vec::new();
    for (id, attestation, extra) in [
        ("lost-1", symmetric_key_attestation(keys.path(), &key, false), ""),
        ("lost-2", symmetric_key_attestation(keys.path(), &group_key, true), ""),
        ("lost-3", tpm_attestation, "[identity]\nkey_type = \"tpm\"\n"),
    ] {
        let mut device = Device::new(&server, Some(id), &attestation, &format!("{extra}{renewal}"), &[&broker]);
        device.start();
        devices.push(device);
    }
    let mut first = Vec::new();
    for device in &devices {
        device.wait_for("provisioned", Duration::from_secs(30), |e| e.iter().any(|e| e.event == "provisioned")).await;
        let status = device.status();
        first.push((
            status["certificate"]["sha256"].as_str().unwrap().to_owned(),
            status["certificate"]["serial"].as_str().unwrap().to_owned(),
        ));
    }

    for id in ids {
        ok(api.post(&format!("/registrations/{id}/revoke"), Some(&json!({"reason": "keyCompromise"}))).await).await;
    }
    for (device, (first_sha256, first_serial)) in devices.iter().zip(&first) {
        device
            .wait_for("provisioned again", Duration::from_secs(30), |e| {
                e.iter().filter(|e| e.event == "provisioned").count() == 2
            })
            .await;
        let events = device.events();
        let n = events.len();
        // The hook was told, and given no certificate (no thumbprint, no hub): the client stopped.
        assert_eq!(events[n - 2].event, "dropped", "{events:?}");
        assert_eq!((events[n - 2].sha256.as_str(), events[n - 2].hub.as_str()), ("-", "-"), "{events:?}");
        let status = device.status();
        assert_ne!(status["certificate"]["sha256"].as_str().unwrap(), first_sha256, "{status}");
        assert!(!device.path(&format!("state/identity/{first_serial}")).exists());
        // `status` says which certificate was dropped, and why.
        let dropped = &status["lastDropped"];
        assert_eq!(dropped["serial"], first_serial.as_str(), "{status}");
        assert_eq!(dropped["sha256"], first_sha256.as_str(), "{status}");
        assert_eq!(dropped["action"], "check", "{status}");
        assert!(dropped["reason"].as_str().unwrap().contains("refused"), "{status}");
    }

    for id in ids {
        let path = if id == "lost-2" { "/enrollmentGroups/lost".to_owned() } else { format!("/enrollments/{id}") };
        let mut current = ok(api.get(&path).await).await;
        current["provisioningStatus"] = json!("disabled");
        let etag = current["etag"].as_str().unwrap().to_owned();
        ok(api.put_if_match(&path, &current, &etag).await).await;
    }
    for device in &devices {
        device.wait_for("dropped", Duration::from_secs(30), |e| e.last().is_some_and(|e| e.event == "dropped")).await;
    }
    // Let them try a few times, then count, on the server and on each device.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before: Vec<Value> = devices.iter().map(Device::status).collect();
    let served_before = device_requests(&server).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let served = device_requests(&server).await - served_before;
    let after: Vec<Value> = devices.iter().map(Device::status).collect();
    // Backoff from 1 s to 4 s, half of it random: at most 8 attempts in 15 s, each at most 4 requests (a TPM's
    // two legs and polls); a device looping hot would send hundreds.
    eprintln!("the server answered {served} device requests in 15 s while the devices were disabled");
    assert!((3..=3 * 8 * 4).contains(&served), "{served} requests in 15 s");
    for ((device, before), after) in devices.iter().zip(&before).zip(&after) {
        let attempts = after["requests"].as_u64().unwrap() - before["requests"].as_u64().unwrap();
        eprintln!("{attempts} attempts in 15 s while disabled; status {after}");
        assert!((1..=8).contains(&attempts), "{attempts} attempts in 15 s: {after}");
        assert_eq!(after["status"], "disabled", "{after}");
        assert!(after["certificate"].is_null() && after["hub"].is_null(), "{after}");
        assert_eq!(after["lastError"]["action"], "provision", "{after}");
        assert!(after["lastError"]["message"].as_str().unwrap().contains("disabled"), "{after}");
        // The certificate dropped last is the second one, the one the registration had when it was disabled.
        let second = before["lastDropped"]["serial"].as_str().unwrap();
        assert!(first.iter().all(|(_, serial)| serial != second), "{after}");
        assert!(!device.path("state/identity/current").exists());
        assert!(!device.path("publisher.pid").exists(), "the hook stopped the client");
    }
    for device in &mut devices {
        device.stop();
    }
}

/// The number of requests the server's device listener answered (its `zerotouch_http_requests_total`).
async fn device_requests(server: &Server) -> u64 {
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with("zerotouch_http_requests_total{") && l.contains("listener=\"device\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// (e) A TPM device on swtpm: the agent provisions with TPM attestation (the TPM imports the service's key and
/// signs the token), generates its operational key, and renews by EST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_device_provisions_and_renews_with_the_agent() {
    let (server, broker) = server_and_broker().await;
    let api = Api::new(&server, "owner");
    let tpm = Swtpm::start().unwrap();
    let attestation = enroll_tpm(&api, &tpm, "tpm-agent-1", &broker).await;
    let renewal = "[renewal]\nfraction = 0.3\njitter = 0.0\nbackoff_initial = \"1s\"\nbackoff_max = \"5s\"\n";
    let mut device = Device::new(&server, Some("tpm-agent-1"), &attestation, renewal, &[&broker]);
    let subscriber = broker.subscribe("devices/#");
    device.start();
    renews_and_publishes(&device, &api, &subscriber, "tpm-agent-1").await;
    device.stop();
}

/// (e) The operational key inside the TPM (`key_type = "tpm"`): the TPM makes it under the SRK and signs the CSR,
/// and the TLS handshakes of EST renewal and of the checks; a renewal puts the new key at the other handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_resident_key_is_made_renewed_and_used_in_the_tpm() {
    let (server, broker) = server_and_broker().await;
    let api = Api::new(&server, "owner");
    let tpm = Swtpm::start().unwrap();
    let attestation = enroll_tpm(&api, &tpm, "tpm-key-1", &broker).await;
    let extra = "[identity]\nkey_type = \"tpm\"\n[renewal]\nfraction = 0.3\njitter = 0.0\ncheck_interval = \"3s\"\n\
                 backoff_initial = \"1s\"\nbackoff_max = \"5s\"\n";
    let mut device = Device::new(&server, Some("tpm-key-1"), &attestation, extra, &[&broker]);
    device.start();
    device.wait_for("provisioned", Duration::from_secs(30), |e| e.iter().any(|e| e.event == "provisioned")).await;
    let first = device.status();
    assert_eq!(first["certificate"]["keyHandle"], "0x81000101", "{first}");
    assert_eq!(std::fs::read_to_string(device.path("state/identity/current/key.tpm")).unwrap(), "handle:0x81000101\n");
    assert!(!device.path("state/identity/current/key.pem").exists(), "the key never leaves the TPM");
    device.wait_for("renewed", Duration::from_secs(40), |e| e.iter().any(|e| e.event == "renewed")).await;
    let renewed = device.status();
    assert_eq!(renewed["certificate"]["keyHandle"], "0x81000102", "{renewed}");
    // Checks with the renewed certificate (TLS signed in the TPM) succeed.
    let requests = renewed["requests"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = device.status();
        if status["requests"].as_u64().unwrap() >= requests + 2 {
            assert_eq!(status["failures"], 0, "{status}\n{}", device.log());
            assert!(status["lastError"].is_null(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "no check after the renewal: {status}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let issued = issued_thumbprints(&api, "tpm-key-1").await;
    for event in device.events() {
        assert!(issued.contains(&event.sha256), "{event:?} {issued:?}");
    }
    device.stop();
    // The certificate's key is the one at the handle.
    let pem = std::fs::read_to_string(device.path("state/identity/current/cert.pem")).unwrap();
    let cert_key = zerotouch_tests::openssl::openssl(
        device.path("state").as_path(),
        &["x509", "-noout", "-pubkey", "-in", "identity/current/cert.pem"],
    );
    assert!(pem.contains("CERTIFICATE") && cert_key.contains("PUBLIC KEY"));
    assert!(tpm.has_persistent("0x81000102").unwrap());
}

/// A device with a factory certificate (X.509 enrollment group of the factory CA): the agent registers with it as
/// its TLS identity, with a P-384 operational key born on the device, then renews by EST with the operational
/// certificate; the factory certificate is never what the hook gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_certificate_device_provisions_and_renews_with_a_p384_key() {
    let (server, broker) = server_and_broker().await;
    let api = Api::new(&server, "owner");
    let factory = tempfile::tempdir().unwrap();
    zerotouch_tests::openssl::make_ca(factory.path(), "factory-ca", None);
    zerotouch_tests::openssl::make_device(factory.path(), "line-7", "line-7", "factory-ca");
    let ca_pem = std::fs::read_to_string(factory.path().join("factory-ca.pem")).unwrap();
    let device_pem = std::fs::read_to_string(factory.path().join("line-7.pem")).unwrap();
    let chain = factory.path().join("line-7-chain.pem");
    std::fs::write(&chain, format!("{device_pem}{ca_pem}")).unwrap();
    enroll_factory(&api, "factory", &ca_pem, &broker).await;
    let attestation = format!(
        "[attestation]\nmethod = \"x509\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        chain.display(),
        factory.path().join("line-7.key").display()
    );
    let extra = "[identity]\nkey_type = \"p384\"\n[renewal]\nfraction = 0.2\njitter = 0.0\nbackoff_initial = \"1s\"\nbackoff_max = \"5s\"\n";
    let mut device = Device::new(&server, Some("line-7"), &attestation, extra, &[&broker]);
    let subscriber = broker.subscribe("devices/#");
    device.start();
    renews_and_publishes(&device, &api, &subscriber, "line-7").await;
    let key = std::fs::read_to_string(device.path("state/identity/current/key.pem")).unwrap();
    let parsed = zerotouch_tests::openssl::openssl(
        &device.path("state/identity/current"),
        &["pkey", "-in", "key.pem", "-noout", "-text"],
    );
    assert!(parsed.contains("P-384") || parsed.contains("secp384r1"), "{parsed}");
    assert!(key.contains("PRIVATE KEY"));
    device.stop();
}

/// Every configuration example of `docs/agent.md` is taken by the real binary (`status` reads and checks the
/// configuration), and a bad key is refused with its name.
#[test]
fn the_documented_configurations_are_valid() {
    let examples = zerotouch_tests::mosquitto::fenced_blocks(include_str!("../../docs/agent.md"), "toml");
    assert!(examples.len() >= 3, "docs/agent.md shows a full file and the other attestations");
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let state = dir.path().join("state");
        let text = text.replace("/var/lib/zerotouch-agent", &state.display().to_string());
        let text =
            if text.contains("state_dir") { text } else { format!("state_dir = \"{}\"\n{text}", state.display()) };
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        Command::new(zerotouch_tests::agent_binary().unwrap())
            .arg("status")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap()
    };
    for example in &examples {
        let out = check(example);
        assert!(out.status.success(), "{example}\n{}", String::from_utf8_lossy(&out.stderr));
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["status"], "unprovisioned");
    }
    let out = check(&examples[0].replace("fraction = 0.6667", "fraction = 2"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("renewal.fraction"), "{out:?}");
}

/// The systemd unit is one `systemd-analyze verify` takes (with `ExecStart` pointed at this build's binary), runs
/// `run` with JSON logs, and carries the hardening `docs/agent.md` promises.
#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = include_str!("../../deploy/agent/zerotouch-agent.service");
    assert!(
        unit.contains("ExecStart=/usr/bin/zerotouch-agent run --config /etc/zerotouch/agent.toml --log-format json")
    );
    for option in [
        "ProtectSystem=strict",
        "StateDirectory=zerotouch-agent",
        "StateDirectoryMode=0700",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
    ] {
        assert!(unit.lines().any(|l| l == option), "the unit lacks {option}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zerotouch-agent.service");
    let binary = zerotouch_tests::agent_binary().unwrap();
    std::fs::write(&path, unit.replace("/usr/bin/zerotouch-agent", &binary.display().to_string())).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("zerotouch-agent.service"), "{stderr}");
}

/// The factory key in a PKCS#11 token (SoftHSM2), never in a file: the token signs the TLS handshake of the
/// registration; the operational key is then the agent's own, renewed by EST. A wrong PIN stops the agent at
/// start, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_key_in_a_pkcs11_token_provisions_the_device() {
    let (server, broker) = server_and_broker().await;
    let api = Api::new(&server, "owner");
    let factory = tempfile::tempdir().unwrap();
    zerotouch_tests::openssl::make_ca(factory.path(), "factory-ca", None);
    zerotouch_tests::openssl::make_device(factory.path(), "hsm-9", "hsm-9", "factory-ca");
    let hsm = SoftHsm::new();
    hsm.import_key(&factory.path().join("hsm-9.key"), "factory-key");
    std::fs::remove_file(factory.path().join("hsm-9.key")).unwrap();
    let ca_pem = std::fs::read_to_string(factory.path().join("factory-ca.pem")).unwrap();
    enroll_factory(&api, "hsm-factory", &ca_pem, &broker).await;
    let attestation = |pin: &str| {
        format!(
            "[attestation]\nmethod = \"x509\"\ncert_file = \"{}\"\n[attestation.pkcs11]\nmodule = \"{}\"\n\
             token = \"{}\"\nlabel = \"factory-key\"\npin_file = \"{}\"\n",
            factory.path().join("hsm-9.pem").display(),
            softhsm::MODULE,
            softhsm::TOKEN,
            hsm.file(pin).display()
        )
    };
    let extra = "[renewal]\nfraction = 0.2\njitter = 0.0\nbackoff_initial = \"1s\"\nbackoff_max = \"5s\"\n";
    let wrong = Device::new(&server, Some("hsm-9"), &attestation("wrong-pin"), extra, &[&broker]);
    let out = Command::new(zerotouch_tests::agent_binary().unwrap())
        .arg("run")
        .arg("--config")
        .arg(&wrong.config)
        .envs(hsm.env())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("attestation.pkcs11.pin_file"), "{out:?}");

    let mut device = Device::new(&server, Some("hsm-9"), &attestation("pin"), extra, &[&broker]);
    device.env = hsm.env();
    let subscriber = broker.subscribe("devices/#");
    device.start();
    renews_and_publishes(&device, &api, &subscriber, "hsm-9").await;
    assert!(!factory.path().join("hsm-9.key").exists(), "the factory key is only in the token");
    device.stop();
}
