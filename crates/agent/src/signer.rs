//! TLS client keys that sign somewhere else (a TPM, a PKCS#11 token): ECDSA P-256 with SHA-256, the one scheme
//! both offer everywhere. The key's owner hands in a function that signs a message (hashing it itself) and answers
//! a DER signature; this module makes it a rustls key and a client configuration that presents it.

use std::sync::Arc;

/// Signs a whole message: ECDSA P-256 over its SHA-256, DER.
type SignFn = dyn Fn(&[u8]) -> anyhow::Result<Vec<u8>> + Send + Sync;

/// A rustls signing key whose signatures come from `sign`.
#[derive(Clone)]
pub struct P256Signer {
    sign: Arc<SignFn>,
}

impl std::fmt::Debug for P256Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("P256Signer(..)")
    }
}

impl P256Signer {
    /// A key whose signatures `sign` makes.
    pub fn new(sign: impl Fn(&[u8]) -> anyhow::Result<Vec<u8>> + Send + Sync + 'static) -> Self {
        Self { sign: Arc::new(sign) }
    }
}

impl rustls::sign::SigningKey for P256Signer {
    fn choose_scheme(&self, offered: &[rustls::SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&rustls::SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(self.clone()) as Box<dyn rustls::sign::Signer>)
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ECDSA
    }
}

impl rustls::sign::Signer for P256Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        (self.sign)(message).map_err(|e| rustls::Error::General(format!("the key did not sign: {e:#}")))
    }

    fn scheme(&self) -> rustls::SignatureScheme {
        rustls::SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// A client that trusts the PEM `trust_bundle` only and presents `chain` (DER, leaf first) with `key`.
pub fn client(
    trust_bundle: &[u8],
    chain: Vec<Vec<u8>>,
    key: Arc<dyn rustls::sign::SigningKey>,
) -> anyhow::Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    let bundle = String::from_utf8_lossy(trust_bundle);
    for der in zerotouch_pki::certificates_from_pem(&bundle).map_err(anyhow::Error::msg)? {
        roots.add(der.into()).map_err(|e| anyhow::anyhow!("the trust bundle: {e}"))?;
    }
    let certified = rustls::sign::CertifiedKey::new(chain.into_iter().map(Into::into).collect(), key);
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(std::time::Duration::from_secs(30))
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()?)
}

/// One client certificate, whatever the server asks.
#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
