//! TLS for the listeners: rustls with TLS 1.2 and 1.3, the server certificate from the data dir or the operator.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// Installs the process-wide crypto provider (aws-lc-rs). Two providers are compiled in (sqlx brings ring), so
/// rustls cannot pick one by itself; every binary and test harness calls this first.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Reads a PEM certificate chain and its private key into a server configuration.
pub fn server_config(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let cert_pem = std::fs::read(cert_path).with_context(|| format!("cannot read {}", cert_path.display()))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert_path.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{} holds no certificate", cert_path.display());
    }
    let key_pem =
        Zeroizing::new(std::fs::read(key_path).with_context(|| format!("cannot read {}", key_path.display()))?);
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{} is not a PEM private key", key_path.display()))?
        .with_context(|| format!("{} holds no private key", key_path.display()))?;
    let mut config = ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the server certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
