//! A run: the client both issuers get (C keep-alive HTTPS connections sending their share of the N CSRs one after
//! the other), and the check of a sample of its answers after the clock stops.
//!
//! Its own module because EST and cfssl are measured through this same code, so that only the issuer differs.

use std::ops::Range;
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

/// What one issuer did with its CSRs (a slice of the N, or all of them).
#[derive(Default)]
pub(super) struct Run {
    pub(super) report: Report,
    pub(super) samples: Vec<Sample>,
}

/// Runs CSRs `range` of `csrs` over `clients.len()` connections, connection `w` sending the CSRs of the range whose
/// index is `w` modulo the connections, one after the other, through `send` (an EST device's CSRs carry the CN of
/// the connection's certificate, and so always go over that connection).
pub(super) async fn drive<F, Fut>(
    clients: &[reqwest::Client],
    csrs: &Arc<Vec<Csr>>,
    range: Range<usize>,
    send: F,
) -> anyhow::Result<Run>
where
    F: Fn(reqwest::Client, Arc<Vec<Csr>>, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Vec<u8>, String>> + Send,
{
    let connections = clients.len().max(1);
    let started = Instant::now();
    let workers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(w, client)| {
            let (client, csrs, range) = (client.clone(), Arc::clone(csrs), range.clone());
            let send = send.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut samples = Vec::new();
                for i in share(range.start..range.end.min(csrs.len()), w, connections) {
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
    let mut outcomes = Vec::with_capacity(range.len());
    let mut samples = Vec::new();
    for worker in workers {
        let (o, s) = worker.await.context("worker")?;
        outcomes.extend(o);
        samples.extend(s);
    }
    Ok(Run { report: Report::collect(outcomes, started.elapsed()), samples })
}

/// The indexes of `range` that connection `w` of `connections` sends: those equal to `w` modulo `connections`.
fn share(range: Range<usize>, w: usize, connections: usize) -> impl Iterator<Item = usize> {
    let first = range.start + (w + connections - range.start % connections) % connections;
    (first..range.end).step_by(connections)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::slice_ranges;

    /// Sliced or not, each CSR is sent once, over the connection of its index modulo the connections.
    #[test]
    fn each_csr_goes_once_over_its_own_connection() {
        for (count, connections, slices) in [(20, 4, 1), (20, 4, 3), (7, 3, 5), (5, 8, 2), (0, 2, 3), (100, 64, 5)] {
            let mut sent = vec![0; count];
            for range in slice_ranges(count, slices) {
                for w in 0..connections {
                    for i in share(range.clone(), w, connections) {
                        assert!(range.contains(&i), "{i} outside {range:?}");
                        assert_eq!(i % connections, w, "CSR {i} on connection {w}");
                        sent[i] += 1;
                    }
                }
            }
            assert!(sent.iter().all(|n| *n == 1), "{count} CSRs, {connections} connections, {slices} slices: {sent:?}");
        }
    }
}
