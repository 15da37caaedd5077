//! rustls client configurations for the adapters (aws-lc-rs provider, so no process-wide default is needed).

use std::sync::Arc;

use rustls::RootCertStore;

use crate::error::SettingsError;

/// A client configuration trusting the CA certificates in `ca_pem`, or the platform's roots when `None`.
pub(crate) fn client_config(
    setting: &'static str,
    ca_pem: Option<&str>,
) -> Result<Arc<rustls::ClientConfig>, SettingsError> {
    let invalid = |reason: String| SettingsError::Invalid { setting, reason };
    let mut roots = RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            let mut reader = pem.as_bytes();
            for cert in rustls_pemfile::certs(&mut reader) {
                let cert = cert.map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
                roots.add(cert).map_err(|e| invalid(format!("unusable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(invalid("holds no PEM certificate".into()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(invalid("no CA given and the platform has no usable root certificates".into()));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
