//! The device's TLS identity, for HTTPS and MQTT alike: none, a certificate and key from files, or a key that signs
//! somewhere else (a TPM, a PKCS#11 token: ECDSA P-256 with SHA-256, the one scheme both offer everywhere). Such a
//! key's owner hands in a function that signs a message (hashing it itself) and answers a DER signature.

use std::sync::Arc;

use anyhow::Context;
use zeroize::Zeroizing;

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

/// What the device presents in a TLS handshake.
pub enum ClientKey {
    /// Nothing (a SAS token authenticates, or the first TPM leg).
    None,
    /// A certificate chain and its key, PEM (secret).
    Pem(Zeroizing<Vec<u8>>),
    /// A certificate chain (DER, leaf first) and a key that signs elsewhere.
    Remote(Vec<Vec<u8>>, Arc<dyn rustls::sign::SigningKey>),
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "ClientKey::None",
            Self::Pem(_) => "ClientKey::Pem(..)",
            Self::Remote(..) => "ClientKey::Remote(..)",
        })
    }
}

/// A TLS client configuration that trusts the PEM `trust_bundle` only and presents `key`.
pub fn tls_config(trust_bundle: &[u8], key: &ClientKey) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let bundle = String::from_utf8_lossy(trust_bundle);
    for der in zerotouch_pki::certificates_from_pem(&bundle).map_err(anyhow::Error::msg)? {
        roots.add(der.into()).map_err(|e| anyhow::anyhow!("the trust bundle: {e}"))?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    Ok(match key {
        ClientKey::None => builder.with_no_client_auth(),
        ClientKey::Pem(pem) => {
            let chain = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .context("the client certificate is not PEM")?;
            let key = rustls_pemfile::private_key(&mut pem.as_slice())
                .context("the client key is not PEM")?
                .context("no private key beside the client certificate")?;
            builder.with_client_auth_cert(chain, key).context("the client certificate and key")?
        }
        ClientKey::Remote(chain, key) => {
            let certified =
                rustls::sign::CertifiedKey::new(chain.iter().cloned().map(Into::into).collect(), Arc::clone(key));
            builder.with_client_cert_resolver(Arc::new(Fixed(Arc::new(certified))))
        }
    })
}

/// An HTTPS client that trusts the PEM `trust_bundle` only and presents `key`.
pub fn https_client(trust_bundle: &[u8], key: &ClientKey) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls_config(trust_bundle, key)?)
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
