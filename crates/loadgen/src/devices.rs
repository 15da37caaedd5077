//! Simulated devices: each opens its own new TLS connection, registers with a SAS token, and polls until its
//! registration is terminal; and the machine's ceiling, new TLS handshakes each followed by one `GET /healthz`.
//! A device may carry a CSR (base64 DER PKCS#10, CN = its registration id) in its register body; then it counts
//! as assigned only when the answer holds the issued certificate chain.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Where the devices go and how they authenticate.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `https://host:port` of the device API.
    pub(crate) device_url: String,
    /// `https://host:port` of the admin API.
    pub(crate) admin_url: String,
    /// An operator (or owner) token.
    pub(crate) token: String,
    /// PEM bundle the server's certificate chains to.
    pub(crate) trust_bundle: Vec<u8>,
    /// The id scope.
    pub(crate) id_scope: String,
    /// `host:port` of the MQTT device endpoint, for the MQTT mode.
    pub(crate) mqtt_addr: Option<std::net::SocketAddr>,
}

/// A device's identity: registration id and the key it signs with, and the CSR it sends when it has one.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    registration_id: String,
    key: Vec<u8>,
    csr: Option<String>,
}

impl Device {
    /// A device that signs its SAS tokens with `key` (its individual enrollment's, or derived from its group's).
    pub(crate) fn new(registration_id: String, key: Vec<u8>) -> Self {
        Self { registration_id, key, csr: None }
    }

    /// The registration id (the CN its CSR must carry).
    pub(crate) fn registration_id(&self) -> &str {
        &self.registration_id
    }

    /// The key it signs its SAS tokens with.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    /// The CSR it sends, if any.
    pub(crate) fn csr(&self) -> Option<&str> {
        self.csr.as_deref()
    }

    /// This device, sending `csr` (base64 DER PKCS#10) in its register body.
    pub(crate) fn with_csr(self, csr: String) -> Self {
        Self { csr: Some(csr), ..self }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    /// Devices that reached `assigned`.
    pub(crate) assigned: usize,
    /// Wall time of the run.
    pub(crate) elapsed: Duration,
    /// Time to assigned of each assigned device, sorted.
    pub(crate) latencies: Vec<Duration>,
    /// Failures by what they were (`http 429 errorCode 429001`, `status failed 400208`, ...).
    pub(crate) errors: BTreeMap<String, usize>,
}

impl Report {
    pub(crate) fn collect(outcomes: Vec<Result<Duration, String>>, elapsed: Duration) -> Self {
        let mut report = Self { assigned: 0, elapsed, latencies: Vec::new(), errors: BTreeMap::new() };
        for outcome in outcomes {
            match outcome {
                Ok(latency) => {
                    report.assigned += 1;
                    report.latencies.push(latency);
                }
                Err(e) => *report.errors.entry(e).or_default() += 1,
            }
        }
        report.latencies.sort();
        report
    }

    /// Adds `other`, a later slice of the same run: its devices, time, latencies and failures.
    pub(crate) fn absorb(&mut self, other: Report) {
        self.assigned += other.assigned;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.latencies.sort();
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
    }

    /// Devices per second.
    pub(crate) fn rate(&self) -> f64 {
        self.assigned as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The `q` quantile of latency (0..=1), in milliseconds.
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[index.min(self.latencies.len() - 1)].as_secs_f64() * 1000.0
    }

    /// One line for logs and BENCHMARKS.md.
    pub(crate) fn summary(&self) -> String {
        format!(
            "assigned={} devices_per_s={:.0} p50_ms={:.1} p90_ms={:.1} p99_ms={:.1} max_ms={:.1} errors=[{}]",
            self.assigned,
            self.rate(),
            self.quantile_ms(0.5),
            self.quantile_ms(0.9),
            self.quantile_ms(0.99),
            self.quantile_ms(1.0),
            self.errors_text(),
        )
    }

    /// The failures by kind (`none` when there were none).
    pub(crate) fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "none".to_owned();
        }
        self.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    }
}

/// The runs of a benchmark that had errors. Their figures do not count: the benchmark prints everything, then
/// fails, so that a broken run cannot pass for a slow one.
#[derive(Debug, Default)]
pub(crate) struct Failures(Vec<String>);

impl Failures {
    /// Notes `report` of the run described by `what` if it had errors.
    pub(crate) fn note(&mut self, what: impl std::fmt::Display, report: &Report) {
        if !report.errors.is_empty() {
            self.0.push(format!("{what}: {}", report.errors_text()));
        }
    }

    /// An error naming every run that had errors, if any did.
    pub(crate) fn check(self) -> anyhow::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        bail!("runs with errors (their figures do not count):\n  {}", self.0.join("\n  "))
    }
}

/// A rustls client configuration trusting `bundle`, with session resumption off so every connection does a
/// full handshake, as a device on its first boot does.
pub(crate) fn tls_config(bundle: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &bundle[..]) {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A client whose first request opens a new TCP connection and a new TLS session.
fn fresh_client(tls: &rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls.clone())
        .pool_max_idle_per_host(1)
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// The symmetric key of the group the odd-numbered devices belong to.
pub(crate) fn group_key() -> Vec<u8> {
    (0..32u8).map(|b| b.wrapping_mul(7).wrapping_add(3)).collect()
}

/// The registration id of device `i` under `prefix`.
pub(crate) fn prepared_id(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:07}")
}

/// The devices [`enroll`] creates for `prefix` and `count`, with their keys, without creating anything.
pub(crate) fn prepared(prefix: &str, count: usize) -> Vec<Device> {
    let group_key = group_key();
    (0..count)
        .map(|i| {
            let registration_id = prepared_id(prefix, i);
            let key = if i % 2 == 1 {
                zerotouch_attest::sas::derive_device_key(&group_key, &registration_id).to_vec()
            } else {
                let mut key = vec![0u8; 32];
                key[..8].copy_from_slice(&(i as u64).to_be_bytes());
                key[8..16].copy_from_slice(b"loadgen!");
                key
            };
            Device { registration_id, key, csr: None }
        })
        .collect()
}

/// Allocation needs hubs: links three (kind `none`, weights 100, 200 and 300) when the server has none.
pub(crate) async fn link_hubs(admin: &reqwest::Client, target: &Target, prefix: &str) -> anyhow::Result<()> {
    let hubs: Value =
        admin.get(format!("{}/hubs", target.admin_url)).bearer_auth(&target.token).send().await?.json().await?;
    if hubs.as_array().is_some_and(Vec::is_empty) {
        for (i, weight) in [100, 200, 300].into_iter().enumerate() {
            let host = format!("{prefix}-hub-{i}.example.com");
            let response = admin
                .put(format!("{}/hubs/{host}", target.admin_url))
                .bearer_auth(&target.token)
                .json(&json!({"hostName": host, "kind": "none", "allocationWeight": weight}))
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("cannot link hub {host} (an owner token is needed): {}", response.status());
            }
        }
    }
    Ok(())
}

/// Registers a device that authenticates by the certificate its `client` presents, and polls until its
/// registration is `assigned`.
pub(crate) async fn register_x509(
    client: &reqwest::Client,
    target: &Target,
    registration_id: &str,
) -> anyhow::Result<()> {
    let base = format!("{}/{}/registrations/{registration_id}", target.device_url, target.id_scope);
    let body: Value = client
        .put(format!("{base}/register?api-version=2021-06-01"))
        .json(&json!({"registrationId": registration_id}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let operation = body["operationId"].as_str().context("no operationId")?.to_owned();
    for _ in 0..100 {
        let body: Value =
            client.get(format!("{base}/operations/{operation}?api-version=2021-06-01")).send().await?.json().await?;
        match body["status"].as_str() {
            Some("assigned") => return Ok(()),
            Some("assigning") => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => bail!("{registration_id} did not register: {body}"),
        }
    }
    bail!("{registration_id} stayed assigning")
}

/// Creates `count` enrollments: even-numbered devices get individual enrollments, odd-numbered ones belong to one
/// symmetric-key group (their keys derived from the group key); links three hubs if the server has none.
/// Returns the devices.
pub(crate) async fn enroll(target: &Target, prefix: &str, count: usize) -> anyhow::Result<Vec<Device>> {
    let admin = reqwest::Client::builder().use_preconfigured_tls(tls_config(&target.trust_bundle)?).build()?;
    link_hubs(&admin, target, prefix).await?;
    create_group(&admin, target, &format!("{prefix}-group")).await?;
    let devices = prepared(prefix, count);
    let individual: Vec<&Device> = devices.iter().step_by(2).collect();
    for chunk in individual.chunks(1000) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|d| {
                json!({
                    "registrationId": d.registration_id,
                    "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(&d.key)}},
                })
            })
            .collect();
        let response = admin
            .post(format!("{}/enrollments", target.admin_url))
            .bearer_auth(&target.token)
            .json(&json!({"mode": "create", "enrollments": items}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() || body["isSuccessful"] != json!(true) {
            bail!("bulk enrollment failed: {status} {body}");
        }
    }
    Ok(devices)
}

/// Creates the symmetric-key enrollment group `group_id` with [`group_key`].
pub(crate) async fn create_group(admin: &reqwest::Client, target: &Target, group_id: &str) -> anyhow::Result<()> {
    let attestation = json!({"type": "symmetricKey", "symmetricKey": {"primaryKey": STANDARD.encode(group_key())}});
    put_group(admin, target, group_id, attestation).await
}

/// Creates (or replaces) the enrollment group `group_id` that attests by `attestation`.
pub(crate) async fn put_group(
    admin: &reqwest::Client,
    target: &Target,
    group_id: &str,
    attestation: Value,
) -> anyhow::Result<()> {
    let group = json!({"enrollmentGroupId": group_id, "attestation": attestation});
    let response = admin
        .put(format!("{}/enrollmentGroups/{group_id}", target.admin_url))
        .bearer_auth(&target.token)
        .json(&group)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("cannot create the enrollment group {group_id}: {} {}", response.status(), response.text().await?);
    }
    Ok(())
}

/// The device's SAS token (C SDK style: `sr` percent-encoded, `skn=registration`), valid an hour.
pub(crate) fn sas_token(target: &Target, device: &Device) -> String {
    let resource = format!("{}/registrations/{}", target.id_scope, device.registration_id);
    let encoded: String =
        percent_encoding::utf8_percent_encode(&resource, percent_encoding::NON_ALPHANUMERIC).collect();
    let expiry = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0) + 3600;
    zerotouch_attest::sas::sign(&encoded, expiry, &device.key, Some("registration"))
}

/// A register's body: the registration id, and the CSR when the device has one.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RegisterBody<'a> {
    registration_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    csr: Option<&'a str>,
}

impl<'a> RegisterBody<'a> {
    pub(crate) fn of(device: &'a Device) -> Self {
        Self { registration_id: &device.registration_id, csr: device.csr.as_deref() }
    }
}

/// What a device reads of the service's answers (an operation, or an error body); every other field is skipped
/// without being kept, as a device's SDK reads only what it uses. Parsing whole answers into JSON trees cost the
/// load generator a few µs per device that the TLS ceiling's phase does not pay, on the machine it measures.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Answer {
    pub(crate) operation_id: Option<String>,
    pub(crate) status: Option<String>,
    /// An error body's code.
    pub(crate) error_code: Option<Value>,
    pub(crate) registration_state: Option<AnswerState>,
}

/// What a device reads of an answer's `registrationState`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AnswerState {
    pub(crate) error_code: Option<Value>,
    /// The issued certificate chain's entries, counted and not kept.
    pub(crate) issued_certificate_chain: Option<Vec<serde::de::IgnoredAny>>,
}

impl Answer {
    /// Whether an `assigned` answer carries an issued certificate with its CA's chain (at least the issuing CA).
    pub(crate) fn carries_issued_chain(&self) -> bool {
        self.registration_state.as_ref().and_then(|s| s.issued_certificate_chain.as_ref()).is_some_and(|c| c.len() >= 2)
    }

    /// The error code of a failed registration.
    pub(crate) fn registration_error_code(&self) -> &Value {
        self.registration_state.as_ref().and_then(|s| s.error_code.as_ref()).unwrap_or(&Value::Null)
    }

    /// An unexpected answer, for the report: transport status and error code.
    pub(crate) fn describe(&self, transport: &str, status: u16) -> String {
        format!("{transport} {status} errorCode {}", self.error_code.as_ref().unwrap_or(&Value::Null))
    }
}

/// One device's life: new connection, register, poll until terminal. Returns the time to `assigned`.
async fn provision(target: &Target, tls: &rustls::ClientConfig, device: &Device) -> Result<Duration, String> {
    let started = Instant::now();
    let client = fresh_client(tls).map_err(|e| format!("client: {e}"))?;
    let token = sas_token(target, device);
    let base = format!("{}/{}/registrations/{}", target.device_url, target.id_scope, device.registration_id);
    let response = client
        .put(format!("{base}/register?api-version=2021-06-01"))
        .header("Authorization", &token)
        .json(&RegisterBody::of(device))
        .send()
        .await
        .map_err(|e| format!("register: {}", if e.is_timeout() { "timeout" } else { "connection" }))?;
    let status = response.status();
    let answer: Answer = response.json().await.map_err(|_| format!("http {} (not an answer)", status.as_u16()))?;
    if status != reqwest::StatusCode::ACCEPTED {
        return Err(answer.describe("http", status.as_u16()));
    }
    let operation = answer.operation_id.ok_or("no operationId")?;
    // Polls soon (the service normally has the answer at once), then less often while the device is assigning (a
    // hub with an adapter may take a while), until the service's own deadline for hubs has long passed.
    let mut wait = Duration::from_millis(20);
    let give_up = Instant::now() + Duration::from_secs(15 * 60);
    while Instant::now() < give_up {
        let response = client
            .get(format!("{base}/operations/{operation}?api-version=2021-06-01"))
            .header("Authorization", &token)
            .send()
            .await
            .map_err(|_| "poll: connection".to_owned())?;
        let status = response.status();
        let answer: Answer = response.json().await.map_err(|_| format!("http {} (not an answer)", status.as_u16()))?;
        match (status.as_u16(), answer.status.as_deref()) {
            (200, Some("assigned")) => {
                if device.csr.is_some() && !answer.carries_issued_chain() {
                    return Err("assigned without issuedCertificateChain (certificate and CA)".into());
                }
                return Ok(started.elapsed());
            }
            (200, Some(other)) => return Err(format!("status {other} {}", answer.registration_error_code())),
            (202, _) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(500));
            }
            _ => return Err(answer.describe("http", status.as_u16())),
        }
    }
    Err("never assigned".into())
}

/// Runs `work` on every item, `concurrency` at a time, each as a task of its own (as independent devices are, so
/// that a device and its connection run on one worker thread); returns the outcomes and the wall time.
pub(crate) async fn each_as_task<I, F, Fut>(
    items: I,
    concurrency: usize,
    work: F,
) -> (Vec<Result<Duration, String>>, Duration)
where
    I: IntoIterator,
    F: Fn(I::Item) -> Fut,
    Fut: Future<Output = Result<Duration, String>> + Send + 'static,
{
    let started = Instant::now();
    let outcomes = futures_util::stream::iter(items)
        .map(|item| {
            let task = tokio::spawn(work(item));
            async move { task.await.unwrap_or_else(|e| Err(format!("task: {e}"))) }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    (outcomes, started.elapsed())
}

/// Runs `devices` at `concurrency`, each on its own new TLS connection.
pub(crate) async fn run(target: &Target, devices: &[Device], concurrency: usize) -> anyhow::Result<Report> {
    let tls = Arc::new(tls_config(&target.trust_bundle)?);
    let target = Arc::new(target.clone());
    let (outcomes, elapsed) = each_as_task(devices.iter().cloned(), concurrency, |device| {
        let (target, tls) = (Arc::clone(&target), Arc::clone(&tls));
        async move { provision(&target, &tls, &device).await }
    })
    .await;
    Ok(Report::collect(outcomes, elapsed))
}

/// `count` new TLS connections, each with `requests` `GET /healthz` one after another: with one, the TLS-handshake
/// ceiling; with two, the same plus a second exchange on the connection, as a device's register and poll.
pub(crate) async fn healthz_connections(
    target: &Target,
    count: usize,
    concurrency: usize,
    requests: usize,
) -> anyhow::Result<Report> {
    let tls = Arc::new(tls_config(&target.trust_bundle)?);
    let url = Arc::new(format!("{}/healthz", target.device_url));
    let (outcomes, elapsed) = each_as_task(0..count, concurrency, |_| {
        let (tls, url) = (Arc::clone(&tls), Arc::clone(&url));
        async move {
            let begun = Instant::now();
            let client = fresh_client(&tls).map_err(|e| e.to_string())?;
            for _ in 0..requests.max(1) {
                let response = client.get(url.as_str()).send().await.map_err(|_| "connection".to_owned())?;
                if !response.status().is_success() {
                    return Err(format!("http {}", response.status().as_u16()));
                }
                response.bytes().await.map_err(|_| "read".to_owned())?;
            }
            Ok(begun.elapsed())
        }
    })
    .await;
    Ok(Report::collect(outcomes, elapsed))
}

/// Reads a target from a started test-kit server.
pub(crate) fn target_of(server: &zerotouch_tests::Server, token: String) -> anyhow::Result<Target> {
    let trust_bundle = std::fs::read(server.data_dir.join("trust-bundle.pem")).context("trust bundle")?;
    Ok(Target {
        device_url: server.device_url.clone(),
        admin_url: server.admin_url.clone(),
        token,
        trust_bundle,
        id_scope: server.id_scope.clone(),
        mqtt_addr: Some(server.mqtt_addr),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Slices of a run add up: devices, time, latencies (kept sorted, for the quantiles) and failures by kind.
    #[test]
    fn slices_of_a_run_add_up() {
        let ms = Duration::from_millis;
        let mut run = Report::collect(vec![Ok(ms(30)), Err("http 503".into()), Ok(ms(10))], Duration::from_secs(2));
        run.absorb(Report::collect(vec![Ok(ms(20)), Err("http 503".into())], Duration::from_secs(1)));
        assert_eq!(run.assigned, 3);
        assert_eq!(run.elapsed, Duration::from_secs(3));
        assert_eq!(run.latencies, vec![ms(10), ms(20), ms(30)]);
        assert_eq!(run.errors_text(), "http 503: 2");
        assert!((run.rate() - 1.0).abs() < 1e-9);
    }

    /// A device reads the fields it needs of an answer, whatever else the answer holds: the operation id and
    /// status, a failure's code, whether an issued certificate came with its CA's chain.
    #[test]
    fn answers_are_read_field_by_field() {
        let read = |text: &str| serde_json::from_str::<Answer>(text).unwrap();
        let assigned = read(
            r#"{"operationId":"4.a.b","status":"assigned","registrationState":{"registrationId":"d","assignedHub":"h",
                "issuedCertificateChain":["bGVhZg==","Y2E="],"payload":{"x":[1,2]},"etag":"e"}}"#,
        );
        assert_eq!((assigned.operation_id.as_deref(), assigned.status.as_deref()), (Some("4.a.b"), Some("assigned")));
        assert!(assigned.carries_issued_chain());
        let leaf_alone = read(r#"{"status":"assigned","registrationState":{"issuedCertificateChain":["bGVhZg=="]}}"#);
        assert!(!leaf_alone.carries_issued_chain(), "the device's certificate without its CA's");
        assert!(!read(r#"{"status":"assigned","registrationState":{}}"#).carries_issued_chain());
        let failed = read(r#"{"status":"failed","registrationState":{"errorCode":400207,"errorMessage":"m"}}"#);
        assert_eq!(failed.registration_error_code(), &json!(400207));
        let refused = read(r#"{"errorCode":401002,"trackingId":"t","message":"m","timestampUtc":"now"}"#);
        assert_eq!(refused.describe("http", 401), "http 401 errorCode 401002");
        assert_eq!(Answer::default().describe("mqtt", 500), "mqtt 500 errorCode null");
    }

    /// A register's body names the device, and carries its CSR only when it has one.
    #[test]
    fn a_register_body_carries_the_csr_only_when_there_is_one() {
        let device = Device::new("dev-1".into(), vec![1; 32]);
        assert_eq!(serde_json::to_value(RegisterBody::of(&device)).unwrap(), json!({"registrationId": "dev-1"}));
        let device = device.with_csr("Q1NS".into());
        assert_eq!(
            serde_json::to_value(RegisterBody::of(&device)).unwrap(),
            json!({"registrationId": "dev-1", "csr": "Q1NS"})
        );
    }
}
