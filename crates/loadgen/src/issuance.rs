//! CSR-to-certificate issuance over HTTPS, ours (EST `simpleenroll`, every certificate persisted with its audit
//! event) side by side with cfssl's `/api/v1/cfssl/sign` on the same CSRs, with a CA key of the same type
//! (ECDSA P-256); and registration with a CSR per device next to registration without one (issue #4).
//!
//! Both issuers get the same client: C workers, each on its own keep-alive HTTPS connection, sending its share
//! of the N requests one after the other. For EST each connection authenticates with its own device certificate
//! of one X.509 enrollment group, and the CSRs it sends carry that device's CN (RFC 7030 §3.3.2: the client
//! certificate identifies the requester). CSRs, keys and certificates are all made before the clock starts. A
//! sample of the answers is checked after the clock stops: a certificate with the CSR's key and CN, the clientAuth
//! EKU, signed by the issuer's CA.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use zerotouch_tests::{Backend, Options, Server};

use crate::bulk::median;
use crate::devices::{self, Report};

/// One answer in this many is checked after the run (and always the first).
const SAMPLE_EVERY: usize = 50;

/// A P-256 CSR, in the encodings both issuers take.
#[derive(Debug, Clone)]
pub(crate) struct Csr {
    cn: String,
    pub(crate) der: Vec<u8>,
    pem: String,
    spki: Vec<u8>,
}

/// `count` CSRs with fresh P-256 keys, the i-th with CN `cn_of(i)`, made on every core.
pub(crate) fn generate_csrs(count: usize, cn_of: impl Fn(usize) -> String + Sync) -> anyhow::Result<Vec<Csr>> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = count.div_ceil(threads).max(1);
    let cn_of = &cn_of;
    let parts: Vec<anyhow::Result<Vec<Csr>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| scope.spawn(move || (start..(start + chunk).min(count)).map(|i| csr(&cn_of(i))).collect()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("CSR thread panicked")))).collect()
    });
    let mut csrs = Vec::with_capacity(count);
    for part in parts {
        csrs.extend(part?);
    }
    Ok(csrs)
}

fn csr(cn: &str) -> anyhow::Result<Csr> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    let request = params.serialize_request(&key)?;
    Ok(Csr { cn: cn.to_owned(), der: request.der().to_vec(), pem: request.pem()?, spki: key.subject_public_key_info() })
}

/// A P-256 CA certificate (valid 2025-2035) and its issuer.
fn p256_ca(cn: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    Ok(CertifiedIssuer::self_signed(params, key)?)
}

/// A TLS client identity: certificate chain and PKCS#8 key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

/// The EST devices: one X.509 enrollment group's CA and a device certificate per connection.
pub(crate) struct EstFleet {
    ca_pem: String,
    identities: Vec<Identity>,
}

impl EstFleet {
    /// A group CA and `count` device certificates (v3, clientAuth EKU, CN = registration id).
    pub(crate) fn generate(count: usize) -> anyhow::Result<Self> {
        let ca = p256_ca("loadgen EST group CA")?;
        let mut identities = Vec::with_capacity(count);
        for w in 0..count {
            let id = est_device_id(w);
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, &id);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.not_before = rcgen::date_time_ymd(2025, 1, 1);
            params.not_after = rcgen::date_time_ymd(2035, 1, 1);
            let cert = params.signed_by(&key, &ca)?;
            identities.push(Identity { chain: vec![cert.der().clone()], key: key.serialize_der() });
        }
        Ok(Self { ca_pem: ca.pem(), identities })
    }
}

/// The registration id of the EST device on connection `w`.
pub(crate) fn est_device_id(w: usize) -> String {
    format!("est-device-{w:04}")
}

/// Whose answers a run collected, for the check after it.
struct Sample {
    csr_index: usize,
    certificate: Vec<u8>,
}

/// What one issuer did with the N CSRs.
struct Run {
    report: Report,
    samples: Vec<Sample>,
}

/// Runs `csrs` over `clients.len()` connections, connection `w` sending CSRs `w, w + C, ...` through `send`.
async fn drive<F, Fut>(clients: Vec<reqwest::Client>, csrs: Arc<Vec<Csr>>, send: F) -> anyhow::Result<Run>
where
    F: Fn(reqwest::Client, Arc<Vec<Csr>>, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Vec<u8>, String>> + Send,
{
    let connections = clients.len().max(1);
    let started = Instant::now();
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(w, client)| {
            let csrs = Arc::clone(&csrs);
            let send = send.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut samples = Vec::new();
                for i in (w..csrs.len()).step_by(connections) {
                    let begun = Instant::now();
                    match send(client.clone(), Arc::clone(&csrs), i).await {
                        Ok(certificate) => {
                            outcomes.push(Ok(begun.elapsed()));
                            if i % SAMPLE_EVERY == 0 {
                                samples.push(Sample { csr_index: i, certificate });
                            }
                        }
                        Err(e) => outcomes.push(Err(e)),
                    }
                }
                (outcomes, samples)
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(csrs.len());
    let mut samples = Vec::new();
    for worker in workers {
        let (o, s) = worker.await.context("worker")?;
        outcomes.extend(o);
        samples.extend(s);
    }
    Ok(Run { report: Report::collect(outcomes, started.elapsed()), samples })
}

/// Checks the sampled certificates: the CSR's key and CN, clientAuth, signed by one of `issuers` (DER).
fn check_samples(run: &Run, csrs: &[Csr], issuers: &[Vec<u8>]) -> anyhow::Result<usize> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let issuers: Vec<X509Certificate<'_>> = issuers
        .iter()
        .map(|der| X509Certificate::from_der(der).map(|(_, c)| c).context("issuer certificate"))
        .collect::<anyhow::Result<_>>()?;
    if run.report.assigned > 0 && run.samples.is_empty() {
        bail!("no answer was sampled");
    }
    for sample in &run.samples {
        let csr = &csrs[sample.csr_index];
        let (_, cert) = X509Certificate::from_der(&sample.certificate).context("issued certificate")?;
        let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok());
        if cn != Some(csr.cn.as_str()) {
            bail!("certificate for CSR {} has CN {cn:?}, expected {:?}", sample.csr_index, csr.cn);
        }
        if cert.public_key().raw != csr.spki.as_slice() {
            bail!("certificate for CSR {} carries another public key", sample.csr_index);
        }
        let client_auth = cert.extended_key_usage().ok().flatten().is_some_and(|eku| eku.value.client_auth);
        if !client_auth {
            bail!("certificate for CSR {} lacks the clientAuth EKU", sample.csr_index);
        }
        if !issuers.iter().any(|issuer| cert.verify_signature(Some(issuer.public_key())).is_ok()) {
            bail!("certificate for CSR {} is not signed by the issuer's CA", sample.csr_index);
        }
    }
    Ok(run.samples.len())
}

/// The certificates in a base64 PKCS#7 certs-only body (RFC 7030 §4.1.3, §4.2.3).
fn pkcs7_certificates(body: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    use der::{Decode, Encode};
    let text: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let der = STANDARD.decode(text).context("base64")?;
    let info = cms::content_info::ContentInfo::from_der(&der).context("ContentInfo")?;
    let signed: cms::signed_data::SignedData = info.content.decode_as().context("SignedData")?;
    let mut certificates = Vec::new();
    for choice in signed.certificates.iter().flat_map(|set| set.0.iter()) {
        if let cms::cert::CertificateChoices::Certificate(cert) = choice {
            certificates.push(cert.to_der().context("certificate")?);
        }
    }
    Ok(certificates)
}

fn keep_alive_client(tls: rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .pool_max_idle_per_host(1)
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()?)
}

fn roots(pem: &[u8]) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert?)?;
    }
    Ok(roots)
}

// ---------------------------------------------------------------------------------------------------------------
// Ours: EST simpleenroll

/// EST `simpleenroll` of every CSR on a started server: creates the group, runs, checks a sample.
async fn est_run(server: &Server, fleet: &EstFleet, csrs: &Arc<Vec<Csr>>) -> anyhow::Result<(Run, usize)> {
    let target = devices::target_of(server, server.token("owner")?)?;
    let group = json!({
        "enrollmentGroupId": "loadgen-est",
        "attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": fleet.ca_pem}}}},
    });
    let response = server
        .client
        .put(server.url("/enrollmentGroups/loadgen-est"))
        .bearer_auth(&target.token)
        .json(&group)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("cannot create the X.509 enrollment group: {} {}", response.status(), response.text().await?);
    }
    let roots = roots(&target.trust_bundle)?;
    let clients = fleet
        .identities
        .iter()
        .map(|identity| {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key.clone()));
            let tls = rustls::ClientConfig::builder()
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(identity.chain.clone(), key)?;
            keep_alive_client(tls)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // EST issues to assigned devices: each device registers first, with its certificate.
    devices::link_hubs(&server.client, &target, "loadgen-est").await?;
    for (w, client) in clients.iter().enumerate() {
        devices::register_x509(client, &target, &est_device_id(w)).await?;
    }
    let url = Arc::new(format!("{}/.well-known/est/simpleenroll", target.device_url));
    let run = drive(clients, Arc::clone(csrs), move |client, csrs, i| {
        let url = Arc::clone(&url);
        async move {
            let body = STANDARD.encode(&csrs[i].der);
            let response = client
                .post(url.as_str())
                .header("Content-Type", "application/pkcs10")
                .body(body)
                .send()
                .await
                .map_err(|e| format!("est: {}", if e.is_timeout() { "timeout" } else { "connection" }))?;
            let status = response.status();
            let bytes = response.bytes().await.map_err(|_| "est: read".to_owned())?;
            if status != reqwest::StatusCode::OK {
                let code = serde_json::from_slice::<Value>(&bytes).ok().map(|b| b["errorCode"].clone());
                return Err(format!("http {} errorCode {}", status.as_u16(), code.unwrap_or(Value::Null)));
            }
            // Only a sampled answer is decoded (after the run): the client's cost stays that of cfssl's client.
            Ok(if i % SAMPLE_EVERY == 0 { bytes.to_vec() } else { Vec::new() })
        }
    })
    .await?;
    let mut run = run;
    for sample in &mut run.samples {
        let certificates = pkcs7_certificates(&sample.certificate).context("EST answer")?;
        sample.certificate = certificates.into_iter().next().context("EST answer without a certificate")?;
    }
    let cacerts = server.client.get(server.device("/.well-known/est/cacerts")).send().await?.bytes().await?;
    let issuers = pkcs7_certificates(&cacerts).context("cacerts")?;
    let checked = check_samples(&run, csrs, &issuers)?;
    Ok((run, checked))
}

// ---------------------------------------------------------------------------------------------------------------
// cfssl

/// Where cfssl keeps what it signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CfsslStore {
    /// Nothing kept (cfssl's default).
    Memory,
    /// Every certificate inserted into its certdb on SQLite (`-db-config`, with a busy timeout: without one its
    /// concurrent inserts fail with "database is locked"), as ours persists each one.
    Sqlite,
}

/// A running `cfssl serve` over HTTPS with a P-256 CA made for it; killed on drop.
struct Cfssl {
    child: tokio::process::Child,
    url: String,
    ca_der: Vec<u8>,
    tls_cert_pem: String,
    dir: tempfile::TempDir,
}

/// cfssl's certdb schema for SQLite (certdb/sqlite/migrations of cfssl 1.2).
const CFSSL_SQLITE_SCHEMA: [&str; 2] = [
    "CREATE TABLE certificates (serial_number blob NOT NULL, authority_key_identifier blob NOT NULL, \
     ca_label blob, status blob NOT NULL, reason int, expiry timestamp, revoked_at timestamp, pem blob NOT NULL, \
     PRIMARY KEY(serial_number, authority_key_identifier))",
    "CREATE TABLE ocsp_responses (serial_number blob NOT NULL, authority_key_identifier blob NOT NULL, \
     body blob NOT NULL, expiry timestamp, PRIMARY KEY(serial_number, authority_key_identifier), \
     FOREIGN KEY(serial_number, authority_key_identifier) REFERENCES certificates(serial_number, authority_key_identifier))",
];

fn cfssl_binary() -> PathBuf {
    std::env::var_os("CFSSL_BIN").map_or_else(|| PathBuf::from("cfssl"), PathBuf::from)
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

impl Cfssl {
    async fn start(store: CfsslStore) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let ca = p256_ca("cfssl bench CA")?;
        let ca_pem = write(d, "ca.pem", &ca.pem())?;
        let ca_key = write(d, "ca-key.pem", &ca.key().serialize_pem())?;
        // The same profile as ours: digitalSignature, clientAuth, 30 days.
        let config = write(
            d,
            "config.json",
            &json!({"signing": {"default": {"usages": ["digital signature", "client auth"], "expiry": "720h"}}})
                .to_string(),
        )?;
        let tls_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
        let tls_cert = params.self_signed(&tls_key)?;
        let tls_cert_path = write(d, "tls.pem", &tls_cert.pem())?;
        let tls_key_path = write(d, "tls-key.pem", &tls_key.serialize_pem())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut command = tokio::process::Command::new(cfssl_binary());
        command
            .arg("serve")
            .args(["-address", "127.0.0.1", "-port", &port.to_string(), "-loglevel", "2"])
            .arg("-ca")
            .arg(&ca_pem)
            .arg("-ca-key")
            .arg(&ca_key)
            .arg("-config")
            .arg(&config)
            .arg("-tls-cert")
            .arg(&tls_cert_path)
            .arg("-tls-key")
            .arg(&tls_key_path);
        if store == CfsslStore::Sqlite {
            let db_path = d.join("certs.db");
            let db = sea_orm::Database::connect(format!("sqlite://{}?mode=rwc", db_path.display())).await?;
            for statement in CFSSL_SQLITE_SCHEMA {
                sea_orm::ConnectionTrait::execute_unprepared(&db, statement).await.context("cfssl certdb schema")?;
            }
            db.close().await?;
            let db_config = write(
                d,
                "db.json",
                &json!({"driver": "sqlite3", "data_source": format!("file:{}?_busy_timeout=10000", db_path.display())})
                    .to_string(),
            )?;
            command.arg("-db-config").arg(db_config);
        }
        command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(d.join("stdout"))?)
            .stderr(std::fs::File::create(d.join("stderr"))?)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {} (apt-get install golang-cfssl)", cfssl_binary().display()))?;
        let mut cfssl = Self {
            child,
            url: format!("https://127.0.0.1:{port}/api/v1/cfssl/sign"),
            ca_der: ca.der().to_vec(),
            tls_cert_pem: tls_cert.pem(),
            dir,
        };
        cfssl.wait_until_serving().await?;
        Ok(cfssl)
    }

    fn logs(&self) -> String {
        ["stdout", "stderr"]
            .iter()
            .map(|name| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn wait_until_serving(&mut self) -> anyhow::Result<()> {
        let client = keep_alive_client(self.tls()?)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("cfssl exited with {status} before serving:\n{}", self.logs());
            }
            if client.get(&self.url).send().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("cfssl did not answer within 30 s:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn tls(&self) -> anyhow::Result<rustls::ClientConfig> {
        Ok(rustls::ClientConfig::builder()
            .with_root_certificates(roots(self.tls_cert_pem.as_bytes())?)
            .with_no_client_auth())
    }

    /// Signs every CSR at `concurrency` connections and checks a sample.
    async fn run(&self, csrs: &Arc<Vec<Csr>>, concurrency: usize) -> anyhow::Result<(Run, usize)> {
        let clients =
            (0..concurrency.max(1)).map(|_| keep_alive_client(self.tls()?)).collect::<anyhow::Result<Vec<_>>>()?;
        let url = Arc::new(self.url.clone());
        let mut run = drive(clients, Arc::clone(csrs), move |client, csrs, i| {
            let url = Arc::clone(&url);
            async move {
                let response = client
                    .post(url.as_str())
                    .json(&json!({"certificate_request": csrs[i].pem}))
                    .send()
                    .await
                    .map_err(|e| format!("cfssl: {}", if e.is_timeout() { "timeout" } else { "connection" }))?;
                let status = response.status();
                let body: Value = response.json().await.map_err(|_| format!("http {} (not JSON)", status.as_u16()))?;
                let certificate = body["result"]["certificate"].as_str();
                match (status.as_u16(), body["success"].as_bool(), certificate) {
                    (200, Some(true), Some(pem)) => {
                        Ok(if i % SAMPLE_EVERY == 0 { pem.as_bytes().to_vec() } else { Vec::new() })
                    }
                    _ => Err(format!("http {} cfssl errors {}", status.as_u16(), body["errors"])),
                }
            }
        })
        .await?;
        for sample in &mut run.samples {
            let pem = std::mem::take(&mut sample.certificate);
            let der = rustls_pemfile::certs(&mut &pem[..]).next().context("cfssl answer without a certificate")??;
            sample.certificate = der.to_vec();
        }
        let checked = check_samples(&run, csrs, std::slice::from_ref(&self.ca_der))?;
        Ok((run, checked))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The benchmark

/// What `bench-issuance` measures.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The databases ours runs on.
    pub(crate) backends: Vec<Backend>,
    /// CSRs signed per issuer and run.
    pub(crate) csrs: usize,
    /// Devices per registration run (0: no registration runs).
    pub(crate) devices: usize,
    /// Connections (EST, cfssl) and devices in flight (registration).
    pub(crate) concurrency: usize,
    /// Runs (medians reported).
    pub(crate) runs: usize,
    /// cfssl configurations to compare with.
    pub(crate) cfssl: Vec<CfsslStore>,
}

/// A fresh service for a benchmark run: quiet logs, no per-device or in-flight limit that could throttle the load.
pub(crate) fn server_options() -> Options {
    Options {
        env: vec![("ZEROTOUCH_LOG".into(), "warn".into())],
        args: vec![
            "--device-max-in-flight".into(),
            "4096".into(),
            // One device certificate per connection sends N / C requests: no per-device limit may throttle it.
            "--device-rate-limit".into(),
            "1000000000/1s".into(),
        ],
        ..Default::default()
    }
}

fn line(report: &Report, noun: &str) -> String {
    format!(
        "{noun}={} per_s={:.0} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} errors=[{}]",
        report.assigned,
        report.rate(),
        report.quantile_ms(0.5),
        report.quantile_ms(0.99),
        report.quantile_ms(1.0),
        report.errors_text(),
    )
}

/// Medians of the runs of one configuration.
#[derive(Debug, Default)]
struct Series {
    rates: Vec<f64>,
    p50s: Vec<f64>,
    p99s: Vec<f64>,
    errors: usize,
}

impl Series {
    fn push(&mut self, report: &Report) {
        self.rates.push(report.rate());
        self.p50s.push(report.quantile_ms(0.5));
        self.p99s.push(report.quantile_ms(0.99));
        self.errors += report.errors.values().sum::<usize>();
    }

    fn rate(&self) -> f64 {
        median(self.rates.clone())
    }

    fn text(&self) -> String {
        let runs = self.rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
        format!(
            "median_per_s={:.0} median_p50_ms={:.1} median_p99_ms={:.1} errors={} runs=[{runs}]",
            self.rate(),
            median(self.p50s.clone()),
            median(self.p99s.clone()),
            self.errors
        )
    }
}

async fn registration_once(
    backend: Backend,
    devices: &[devices::Device],
    prefix: &str,
    concurrency: usize,
) -> anyhow::Result<Report> {
    let server = Server::start_with(backend, server_options()).await?;
    let target = devices::target_of(&server, server.token("owner")?)?;
    let enrolled = devices::enroll(&target, prefix, devices.len()).await?;
    // `enroll` derives the same ids and keys for the same prefix: the prepared devices (with CSRs) match.
    if enrolled.iter().zip(devices).any(|(a, b)| a.registration_id() != b.registration_id()) {
        bail!("prepared devices do not match the enrollments");
    }
    devices::run(&target, devices, concurrency).await
}

/// Runs the whole benchmark and prints a `RESULT` line per configuration.
pub(crate) async fn bench(settings: &Settings) -> anyhow::Result<()> {
    let c = settings.concurrency.max(1);
    let began = Instant::now();
    let csrs = Arc::new(generate_csrs(settings.csrs, |i| est_device_id(i % c))?);
    let fleet = EstFleet::generate(c)?;
    // Registration: the same ids `devices::enroll` makes, each with a CSR for its own registration id.
    let plain_prefix = "bench";
    let csr_prefix = "bench-csr";
    let plain: Vec<devices::Device> = devices::prepared(plain_prefix, settings.devices);
    let reg_csrs = generate_csrs(settings.devices, |i| devices::prepared_id(csr_prefix, i))?;
    let with_csr: Vec<devices::Device> = devices::prepared(csr_prefix, settings.devices)
        .into_iter()
        .zip(&reg_csrs)
        .map(|(device, csr)| device.with_csr(STANDARD.encode(&csr.der)))
        .collect();
    println!(
        "  prepared {} P-256 CSRs, {c} EST device certificates and {} registration CSRs in {:.1} s (not timed)",
        settings.csrs,
        settings.devices,
        began.elapsed().as_secs_f64()
    );
    let mut cfssl: BTreeMap<&str, Series> = BTreeMap::new();
    let mut ours: BTreeMap<String, Series> = BTreeMap::new();
    let mut registrations: BTreeMap<String, (Series, Series)> = BTreeMap::new();
    let mut failures = devices::Failures::default();
    for run in 1..=settings.runs {
        for &store in &settings.cfssl {
            let name = match store {
                CfsslStore::Memory => "memory",
                CfsslStore::Sqlite => "sqlite",
            };
            let server = Cfssl::start(store).await.with_context(|| format!("cfssl ({name})"))?;
            let (result, checked) = server.run(&csrs, c).await.with_context(|| format!("cfssl ({name}), run {run}"))?;
            println!(
                "  cfssl ({name}, https): run {run}: {} (sample of {checked} checked)",
                line(&result.report, "certificates")
            );
            failures.note(format!("cfssl ({name}) run {run}"), &result.report);
            cfssl.entry(name).or_default().push(&result.report);
        }
        for &backend in &settings.backends {
            let server = Server::start_with(backend, server_options()).await?;
            let (result, checked) =
                est_run(&server, &fleet, &csrs).await.with_context(|| format!("EST on {backend:?}, run {run}"))?;
            println!(
                "  zerotouch EST ({backend:?}, https): run {run}: {} (sample of {checked} checked)",
                line(&result.report, "certificates")
            );
            failures.note(format!("EST on {backend:?} run {run}"), &result.report);
            ours.entry(format!("{backend:?}")).or_default().push(&result.report);
            drop(server);
            if settings.devices > 0 {
                let without = registration_once(backend, &plain, plain_prefix, c).await?;
                println!("  {backend:?}: run {run}: registration without CSR: {}", without.summary());
                let with = registration_once(backend, &with_csr, csr_prefix, c).await?;
                println!("  {backend:?}: run {run}: registration with CSR: {}", with.summary());
                failures.note(format!("registration without CSR on {backend:?} run {run}"), &without);
                failures.note(format!("registration with CSR on {backend:?} run {run}"), &with);
                let entry = registrations.entry(format!("{backend:?}")).or_default();
                entry.0.push(&without);
                entry.1.push(&with);
            }
        }
    }
    let n = settings.csrs;
    for (name, series) in &cfssl {
        println!(
            "RESULT issuance issuer=cfssl store={name} transport=https csrs={n} concurrency={c} {}",
            series.text()
        );
    }
    for (backend, series) in &ours {
        let ratios: String = cfssl
            .iter()
            .map(|(name, baseline)| {
                format!(" ratio_vs_cfssl_{name}={:.1}", series.rate() / baseline.rate().max(f64::EPSILON))
            })
            .collect();
        println!(
            "RESULT issuance issuer=zerotouch backend={backend} transport=https-est csrs={n} concurrency={c} {}{ratios}",
            series.text()
        );
    }
    for (backend, (without, with)) in &registrations {
        println!(
            "RESULT registration backend={backend} devices={} concurrency={c} with_csr: {} | without_csr: {} | ratio={:.2}",
            settings.devices,
            with.text(),
            without.text(),
            with.rate() / without.rate().max(f64::EPSILON)
        );
    }
    failures.check()
}
