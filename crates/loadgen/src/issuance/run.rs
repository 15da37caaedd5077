//! A run: the client both issuers get (C keep-alive HTTPS connections sending their share of the N CSRs one after
//! the other), and the check of a sample of its answers after the clock stops.
//!
//! Its own module because EST and cfssl are measured through this same code, so that only the issuer differs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::Csr;
use crate::devices::Report;

/// One answer in this many is checked after the run (and always the first).
pub(super) const SAMPLE_EVERY: usize = 50;

/// Whose answers a run collected, for the check after it.
pub(super) struct Sample {
    pub(super) csr_index: usize,
    pub(super) certificate: Vec<u8>,
}

/// What one issuer did with the N CSRs.
pub(super) struct Run {
    pub(super) report: Report,
    pub(super) samples: Vec<Sample>,
}

/// Runs `csrs` over `clients.len()` connections, connection `w` sending CSRs `w, w + C, ...` through `send`.
pub(super) async fn drive<F, Fut>(clients: Vec<reqwest::Client>, csrs: Arc<Vec<Csr>>, send: F) -> anyhow::Result<Run>
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
pub(super) fn check_samples(run: &Run, csrs: &[Csr], issuers: &[Vec<u8>]) -> anyhow::Result<usize> {
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

pub(super) fn keep_alive_client(tls: rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .pool_max_idle_per_host(1)
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()?)
}

pub(super) fn roots(pem: &[u8]) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert?)?;
    }
    Ok(roots)
}
