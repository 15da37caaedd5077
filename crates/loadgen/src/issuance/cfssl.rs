//! The baseline: cfssl's `/api/v1/cfssl/sign` over HTTPS, started for a run with a P-256 CA of its own and, if
//! asked, a SQLite certdb.
//!
//! Its own module because it manages an external process (configuration files, start, readiness, logs) that has
//! nothing to do with how ours is driven.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use serde_json::{Value, json};

use super::Csr;
use super::credentials::p256_ca;
use super::run::{Run, SAMPLE_EVERY, check_samples, drive, keep_alive_client, roots};

/// Where cfssl keeps what it signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum CfsslStore {
    /// Nothing kept (cfssl's default).
    Memory,
    /// Every certificate inserted into its certdb on SQLite (`-db-config`, with a busy timeout: without one its
    /// concurrent inserts fail with "database is locked"), as ours persists each one.
    Sqlite,
}

/// A running `cfssl serve` over HTTPS with a P-256 CA made for it, and the benchmark's keep-alive connections to
/// it; killed on drop.
pub(super) struct Cfssl {
    child: tokio::process::Child,
    clients: Vec<reqwest::Client>,
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
    /// Starts cfssl and opens `concurrency` clients to it.
    pub(super) async fn start(store: CfsslStore, concurrency: usize) -> anyhow::Result<Self> {
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
            clients: Vec::new(),
            url: format!("https://127.0.0.1:{port}/api/v1/cfssl/sign"),
            ca_der: ca.der().to_vec(),
            tls_cert_pem: tls_cert.pem(),
            dir,
        };
        cfssl.wait_until_serving().await?;
        cfssl.clients =
            (0..concurrency.max(1)).map(|_| keep_alive_client(cfssl.tls()?)).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(cfssl)
    }

    /// The process id of `cfssl serve`, while it runs.
    pub(super) fn pid(&self) -> Option<u32> {
        self.child.id()
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

    /// Signs CSRs `range` of `csrs` over the connections.
    pub(super) async fn run(&self, csrs: &Arc<Vec<Csr>>, range: Range<usize>) -> anyhow::Result<Run> {
        let url = Arc::new(self.url.clone());
        let mut run = drive(&self.clients, csrs, range, move |client, csrs, i| {
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
        Ok(run)
    }

    /// Checks the sample of `run`'s answers (all its slices); returns how many were checked.
    pub(super) fn check(&self, run: &Run, csrs: &[Csr]) -> anyhow::Result<usize> {
        check_samples(run, csrs, std::slice::from_ref(&self.ca_der))
    }
}
