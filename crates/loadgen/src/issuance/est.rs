//! Ours: EST `simpleenroll` (RFC 7030) on a started server, each connection authenticated by its own device
//! certificate of one X.509 enrollment group.
//!
//! Its own module because EST needs its own setup (the group, the devices' registrations) and its own answer
//! format (PKCS#7 certs-only) before the shared run can measure it.

use std::ops::Range;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use zerotouch_tests::Server;

use super::run::{Run, SAMPLE_EVERY, check_samples, drive, keep_alive_client, roots};
use super::{Csr, EstFleet, est_device_id};
use crate::devices;

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

/// EST `simpleenroll` on a started server, made ready: the group, a registered device per connection, the
/// connections, and the CA certificates the answers are checked against.
pub(super) struct Est {
    clients: Vec<reqwest::Client>,
    url: Arc<String>,
    issuers: Vec<Vec<u8>>,
}

impl Est {
    /// Creates the group on `server`, registers each of `fleet`'s devices over its own connection.
    pub(super) async fn prepare(server: &Server, fleet: &EstFleet) -> anyhow::Result<Self> {
        let target = devices::target_of(server, server.token("owner")?)?;
        let signing = json!({"primary": {"certificate": fleet.ca_pem}});
        let attestation = json!({"type": "x509", "x509": {"signingCertificates": signing}});
        devices::put_group(&server.client, &target, "loadgen-est", attestation).await?;
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
        let cacerts = server.client.get(server.device("/.well-known/est/cacerts")).send().await?.bytes().await?;
        let issuers = pkcs7_certificates(&cacerts).context("cacerts")?;
        Ok(Self { clients, url: Arc::new(format!("{}/.well-known/est/simpleenroll", target.device_url)), issuers })
    }

    /// Enrolls CSRs `range` of `csrs`, each over the connection of the device it names.
    pub(super) async fn run(&self, csrs: &Arc<Vec<Csr>>, range: Range<usize>) -> anyhow::Result<Run> {
        let url = Arc::clone(&self.url);
        let mut run = drive(&self.clients, csrs, range, move |client, csrs, i| {
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
                // Only a sampled answer is decoded (after the slice): the client's cost stays that of cfssl's.
                Ok(if i % SAMPLE_EVERY == 0 { bytes.to_vec() } else { Vec::new() })
            }
        })
        .await?;
        for sample in &mut run.samples {
            let certificates = pkcs7_certificates(&sample.certificate).context("EST answer")?;
            sample.certificate = certificates.into_iter().next().context("EST answer without a certificate")?;
        }
        Ok(run)
    }

    /// Checks the sample of `run`'s answers (all its slices); returns how many were checked.
    pub(super) fn check(&self, run: &Run, csrs: &[Csr]) -> anyhow::Result<usize> {
        check_samples(run, csrs, &self.issuers)
    }
}
