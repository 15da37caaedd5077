#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Several replicas on one PostgreSQL act as one service (issue #18, part 2): three `zerotouch serve` processes
//! configured as the Helm chart configures pods (one database migrated first, then `--no-migrate`; the same id
//! scope, server TLS certificate, master key and CA passphrase), behind HAProxy in TCP mode, driven from outside as devices
//! would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zerotouch_attest::sas;
use zerotouch_store::{CertificateFilter, CertificateStatus, Store};
use zerotouch_tests::cluster::Cluster;
use zerotouch_tests::{Api, Server, device::now};

const API: &str = "api-version=2021-06-01";
const HUB: &str = "hub-replicas.example.com";
const GROUP: &str = "replica-fleet";

/// A symmetric-key group that issues certificates, and a hub (without an adapter).
async fn enroll_group(cluster: &Cluster) -> Vec<u8> {
    let hub = json!({"hostName": HUB, "kind": "none", "allocationWeight": 1});
    enroll_group_on(cluster, hub).await
}

/// A symmetric-key group whose devices go to the hub `hub` (a hub document), linked first.
async fn enroll_group_on(cluster: &Cluster, hub: Value) -> Vec<u8> {
    let api = Api::new(cluster.first(), "owner");
    let host = hub["hostName"].as_str().unwrap().to_owned();
    let response = api.put(&format!("/hubs/{host}"), &hub).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let key = [42u8; 64];
    let group = json!({
        "enrollmentGroupId": GROUP,
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(key), "secondaryKey": STANDARD.encode([43u8; 64])}},
        "iotHubs": [host],
    });
    let response = api.put(&format!("/enrollmentGroups/{GROUP}"), &group).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    key.to_vec()
}

/// A device of the group: its id, derived key and a CSR for its id (base64 DER).
struct Device {
    id: String,
    key: Vec<u8>,
    csr: String,
}

fn device(group_key: &[u8], id: &str) -> Device {
    let key = sas::derive_device_key(group_key, id).to_vec();
    let pair = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, id);
    let csr = STANDARD.encode(params.serialize_request(&pair).unwrap().der());
    Device { id: id.to_owned(), key, csr }
}

/// The SAS token of a device, as the Python SDK signs it.
fn token(scope: &str, device: &Device) -> String {
    let sr = format!("{scope}%2Fregistrations%2F{}", device.id);
    sas::sign(&sr, now() + 3600, &device.key, None)
}

/// Requests that failed in transport or with a 5xx and were sent again (what a killed replica costs the devices).
static RETRIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Of those, the answers with a 5xx status (a replica that drains answers none).
static SERVER_ERRORS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// How many registers of each device the service accepted (202): each one a change its hub is to get.
static ACCEPTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Registers `device` through `url` and polls to the end, retrying as the device SDKs do: a transport error, a
/// 429 or a 5xx sends the register again after a backoff. Returns the final operation.
async fn register_retrying(client: &reqwest::Client, url: &str, scope: &str, device: &Device) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = json!({"registrationId": device.id, "csr": device.csr});
    let mut backoff = Duration::from_millis(100);
    'register: loop {
        assert!(Instant::now() < deadline, "{} did not register within 120 s", device.id);
        let register = format!("{url}/{scope}/registrations/{}/register?{API}", device.id);
        let sent = client.put(&register).header("Authorization", token(scope, device)).json(&body).send().await;
        let operation = match sent {
            Ok(response) if response.status().as_u16() == 202 => {
                ACCEPTED.lock().unwrap().push(device.id.clone());
                let reply: Value = response.json().await.unwrap_or(Value::Null);
                reply["operationId"].as_str().unwrap().to_owned()
            }
            Ok(response) if response.status().as_u16() == 429 || response.status().is_server_error() => {
                RETRIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if response.status().is_server_error() {
                    SERVER_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    eprintln!(
                        "{}: register answered {}: {}",
                        device.id,
                        response.status(),
                        response.text().await.unwrap_or_default()
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Ok(response) => {
                let status = response.status();
                panic!("{}: register answered {status}: {}", device.id, response.text().await.unwrap());
            }
            Err(_) => {
                RETRIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let poll = format!("{url}/{scope}/registrations/{}/operations/{operation}?{API}", device.id);
            match client.get(&poll).header("Authorization", token(scope, device)).send().await {
                Ok(response) if response.status().as_u16() == 200 => return response.json().await.unwrap(),
                Ok(response) if response.status().as_u16() == 202 => {}
                Ok(response) if response.status().as_u16() == 429 || response.status().is_server_error() => {
                    RETRIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if response.status().is_server_error() {
                        SERVER_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        eprintln!(
                            "{}: poll answered {}: {}",
                            device.id,
                            response.status(),
                            response.text().await.unwrap_or_default()
                        );
                    }
                }
                Ok(response) => {
                    let status = response.status();
                    panic!("{}: poll answered {status}: {}", device.id, response.text().await.unwrap());
                }
                // The replica went away mid-poll: the operation is in the database, another replica answers.
                Err(_) => {
                    RETRIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            if Instant::now() > deadline {
                continue 'register;
            }
        }
    }
}

/// What the database holds for the group's devices: registrations, and certificates by registration.
async fn database_view(
    cluster: &Cluster,
) -> (Vec<zerotouch_store::RegistrationRecord>, Vec<zerotouch_store::CertificateRecord>) {
    let store = Store::connect(&cluster.first().database_url).await.unwrap();
    let mut registrations = Vec::new();
    let mut after = None;
    loop {
        let page = store.registrations().list_of_group(GROUP, after.as_deref(), 1000).await.unwrap();
        registrations.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut certificates = Vec::new();
    let mut after = None;
    loop {
        let page = store.certificates().list(&CertificateFilter::default(), after.as_deref(), 1000).await.unwrap();
        certificates.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    store.close().await.unwrap();
    (registrations, certificates)
}

/// Every registration of the group is `assigned`, once, with exactly one active certificate.
fn assert_one_each(
    registrations: &[zerotouch_store::RegistrationRecord],
    certificates: &[zerotouch_store::CertificateRecord],
    devices: usize,
) {
    assert_eq!(registrations.len(), devices, "one registration per device");
    let mut keys: Vec<&str> = registrations.iter().map(|r| r.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), devices, "no duplicate registration");
    for registration in registrations {
        assert_eq!(registration.status, "assigned", "{registration:?}");
        let active = certificates
            .iter()
            .filter(|c| c.registration_key == registration.key && c.status == CertificateStatus::Active)
            .count();
        assert_eq!(active, 1, "{}: one active certificate", registration.key);
    }
}

/// The same device registering through all three replicas at once (three registers in flight, each on a
/// replica of its own): one registration, every answer `assigned` to the same hub and device id, and one active
/// certificate (the others, each handed to one of the answers, superseded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_through_three_replicas_at_once_is_one_registration() {
    let cluster = Cluster::start(3).await.unwrap();
    let group_key = enroll_group(&cluster).await;
    let device = Arc::new(device(&group_key, "everywhere-1"));
    let scope = cluster.first().id_scope.clone();
    let mut answers = Vec::new();
    for replica in &cluster.replicas {
        let (client, url, scope, device) =
            (replica.client.clone(), replica.device_url.clone(), scope.clone(), Arc::clone(&device));
        answers.push(tokio::spawn(async move { register_retrying(&client, &url, &scope, &device).await }));
    }
    let mut hubs = Vec::new();
    for answer in answers {
        let done = answer.await.unwrap();
        assert_eq!(done["status"], "assigned", "{done}");
        hubs.push((done["registrationState"]["assignedHub"].clone(), done["registrationState"]["deviceId"].clone()));
    }
    hubs.dedup();
    assert_eq!(hubs, [(json!(HUB), json!("everywhere-1"))]);
    let (registrations, certificates) = database_view(&cluster).await;
    assert_one_each(&registrations, &certificates, 1);
}

/// A storm of group devices through HAProxy: 64 workers register devices one after the other, retrying as the SDKs
/// do, until `limit` devices have been taken or the storm is ended.
struct Storm {
    workers: Vec<tokio::task::JoinHandle<()>>,
    limit: usize,
    done: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Storm {
    fn start(cluster: &Cluster, group_key: &[u8], prefix: &str, limit: usize) -> Self {
        const CONCURRENCY: usize = 64;
        let scope = cluster.first().id_scope.clone();
        let devices: Arc<Vec<Device>> =
            Arc::new((0..limit).map(|i| device(group_key, &format!("{prefix}-{i:05}"))).collect());
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = Vec::new();
        for _ in 0..CONCURRENCY {
            let (client, url, scope) = (cluster.client.clone(), cluster.device_url.clone(), scope.clone());
            let (devices, next, done, stop) =
                (Arc::clone(&devices), Arc::clone(&next), Arc::clone(&done), Arc::clone(&stop));
            workers.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(device) = devices.get(i) else { return };
                    let answer = register_retrying(&client, &url, &scope, device).await;
                    assert_eq!(answer["status"], "assigned", "{}: {answer}", device.id);
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        Self { workers, limit, done, stop }
    }

    /// Devices assigned so far.
    fn done(&self) -> usize {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `n` devices finished; their count then.
    async fn finished(&self, n: usize) -> usize {
        let started = Instant::now();
        while self.done() < n {
            assert!(started.elapsed() < Duration::from_secs(120), "the storm does not progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.done()
    }

    /// Waits for every one of the `limit` devices; how many ended `assigned`.
    async fn join(self) -> usize {
        for worker in self.workers {
            worker.await.unwrap();
        }
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lets `more` devices finish from now on (so what happened before fell inside the storm, however fast the
    /// machine), then takes no new ones and waits for those under way; how many ended `assigned`.
    async fn end_after(self, more: usize) -> usize {
        let target = self.done() + more;
        assert!(target < self.limit, "the storm ran out of its {} devices", self.limit);
        self.finished(target).await;
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.join().await
    }
}

/// After a storm: every device of the group `assigned`, once, with one active certificate, and no certificate of
/// an attempt that lost.
async fn assert_storm_written_once(cluster: &Cluster, devices: usize) {
    let (registrations, certificates) = database_view(cluster).await;
    assert_one_each(&registrations, &certificates, devices);
    let storm: std::collections::HashSet<&str> = registrations.iter().map(|r| r.key.as_str()).collect();
    assert!(certificates.iter().all(|c| storm.contains(c.registration_key.as_str())));
}

/// A replica killed with SIGKILL a quarter into a storm of 5,000 devices through HAProxy: the devices retry as the
/// SDKs do and every one ends `assigned`, once, with one active certificate; nothing the killed replica was
/// writing is left half-done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_during_a_storm_loses_nothing() {
    const DEVICES: usize = 5_000;
    let mut cluster = Cluster::start(3).await.unwrap();
    let group_key = enroll_group(&cluster).await;
    let started = Instant::now();
    let storm = Storm::start(&cluster, &group_key, "storm", DEVICES);
    let killed_at = storm.finished(DEVICES / 4).await;
    cluster.replicas[1].kill().unwrap();
    assert_eq!(storm.join().await, DEVICES);
    assert!(killed_at < DEVICES, "the replica was killed during the storm");
    let retried = RETRIED.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{DEVICES} devices in {:?}; replica killed after {killed_at}; {retried} retries", started.elapsed());
    assert!(retried > 0, "the kill cost some requests, which the devices sent again");
    assert_storm_written_once(&cluster, DEVICES).await;
}

/// A rolling restart of all three replicas (SIGTERM, then a new process in its place, one after the other, as a
/// Deployment rolls) during a storm that goes on for 300 devices after the last restart: each replica drains and
/// exits cleanly, and every device ends `assigned` (retrying as the SDKs do), once, with one active certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_during_a_storm_fails_no_device() {
    const LIMIT: usize = 20_000;
    let mut cluster = Cluster::start(3).await.unwrap();
    let group_key = enroll_group(&cluster).await;
    let started = Instant::now();
    let storm = Storm::start(&cluster, &group_key, "rolling", LIMIT);
    storm.finished(300).await;
    for i in 0..cluster.replicas.len() {
        let status = cluster.restart(i).await.unwrap();
        assert!(status.success(), "replica {i} drained and exited cleanly: {status}");
    }
    let restarted_by = storm.done();
    let devices = storm.end_after(300).await;
    let server_errors = SERVER_ERRORS.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{devices} devices in {:?}; all three restarted by {restarted_by}; {} retries, {server_errors} server errors",
        started.elapsed(),
        RETRIED.load(std::sync::atomic::Ordering::Relaxed)
    );
    let logs: String = cluster.replicas.iter().map(Server::all_logs).collect();
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(server_errors, 0, "no register or poll answered a 5xx; the replicas logged:\n{}", errors.join("\n"));
    assert_storm_written_once(&cluster, devices).await;
}

/// Waits (at most 30 s) until `/readyz` of `replica` answers 200 (`ready`) or 503 (not).
async fn wait_ready(replica: &Server, ready: bool) {
    let expected = if ready { 200 } else { 503 };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = replica.client.get(replica.url("/readyz")).send().await.map(|r| r.status().as_u16());
        if status.as_ref().is_ok_and(|s| *s == expected) {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz did not answer {expected} within 30 s: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// PostgreSQL stopped (fast shutdown: connections cut) 500 devices into a storm and started again two seconds
/// later, under two replicas: `/readyz` answers 503 on both while the database is away and 200 again
/// after, without a restart of the service; the devices retry through the outage and every one ends `assigned`,
/// once, with one active certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_recover_by_themselves_when_postgresql_restarts() {
    const LIMIT: usize = 20_000;
    let postgres = zerotouch_tests::postgres::PrivatePostgres::start().unwrap();
    let options = zerotouch_tests::Options { database_url: Some(postgres.url()), ..Default::default() };
    let cluster = Cluster::start_with(2, options).await.unwrap();
    let group_key = enroll_group(&cluster).await;
    let started = Instant::now();
    let storm = Storm::start(&cluster, &group_key, "outage", LIMIT);
    let stopped_at = storm.finished(500).await;
    postgres.stop().unwrap();
    for replica in &cluster.replicas {
        wait_ready(replica, false).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.start_again().unwrap();
    for replica in &cluster.replicas {
        wait_ready(replica, true).await;
    }
    let devices = storm.end_after(500).await;
    eprintln!(
        "{devices} devices in {:?}; database stopped after {stopped_at}; {} retries, {} server errors",
        started.elapsed(),
        RETRIED.load(std::sync::atomic::Ordering::Relaxed),
        SERVER_ERRORS.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_storm_written_once(&cluster, devices).await;
}

/// Hub changes go out exactly once while replicas come and go: during a storm of 1,000 devices assigned to a real
/// Mosquitto broker (dynamic security), one replica is stopped for good and another restarted, each with SIGTERM.
/// The outbox drains, the broker holds one client for each device, and its log shows one `createClient` for each:
/// no change was lost and no client created twice, and no more `modifyClient` than the device's later changes
/// (a repeated delivery of a change would show as one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_changes_reach_mosquitto_once_while_replicas_come_and_go() {
    const DEVICES: usize = 1_000;
    let mut cluster = Cluster::start(3).await.unwrap();
    let broker = zerotouch_tests::mosquitto::Broker::start(cluster.first(), "mqtt-replicas.example.com");
    let group_key = enroll_group_on(&cluster, broker.hub_document()).await;
    let storm = Storm::start(&cluster, &group_key, "broker", DEVICES);
    let changed_from = storm.finished(DEVICES / 10).await;
    let stopped = cluster.replicas[2].stop().unwrap();
    assert!(stopped.success(), "{stopped}");
    let restarted = cluster.restart(1).await.unwrap();
    assert!(restarted.success(), "{restarted}");
    let changed_by = storm.done();
    assert_eq!(storm.join().await, DEVICES);
    eprintln!("{DEVICES} devices; a replica stopped at device {changed_from}, another restarted by {changed_by}");
    assert!(changed_by < DEVICES, "the replicas came and went during the storm");
    assert_storm_written_once(&cluster, DEVICES).await;

    // The outbox drains on the replicas that are left.
    let api = Api::new(cluster.first(), "owner");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: Value = api.get("/hubs/mqtt-replicas.example.com/status").await.json().await.unwrap();
        if status["backlog"]["depth"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the outbox kept a backlog: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let clients: std::collections::HashSet<String> = broker.clients().into_iter().collect();
    // The broker logs each dynamic-security command with the username it names; a second delivery of a device's
    // upsert would find the client and modify it.
    let log = broker.process.log();
    let commands = |command: &str, id: &str| {
        let named = format!("username={id}");
        log.lines().filter(|l| l.contains(command)).filter(|l| l.split([' ', '|']).any(|word| word == named)).count()
    };
    let accepted = ACCEPTED.lock().unwrap().clone();
    let mut delivered_again = Vec::new();
    for i in 0..DEVICES {
        let id = format!("broker-{i:05}");
        assert!(clients.contains(&id), "{id} has no client on the broker");
        assert_eq!(commands("createClient", &id), 1, "{id}: one createClient");
        let changes = accepted.iter().filter(|a| **a == id).count();
        if commands("modifyClient", &id) >= changes {
            delivered_again.push(id);
        }
    }
    // A delivery is repeated when its outcome was not learnt (an inline delivery past its timeout, a replica that
    // stopped half-way); the change id in the client's mark makes the repeat a read only.
    assert!(delivered_again.is_empty(), "changes that reached the broker more than once: {delivered_again:?}");
}
