//! Renewal by EST (RFC 7030 §4.2.2, `simplereenroll`): the device authenticates with its current operational
//! certificate in the TLS handshake and sends a CSR for a new key; the service answers the new certificate as a
//! base64 certs-only PKCS#7 (the server's side is `crates/server/src/http/est.rs`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::provision::ServiceError;

/// Renews: `client` carries the current certificate and key as its TLS identity; `csr_der` is the new key's CSR.
/// Returns the new certificate (DER).
pub async fn simplereenroll(client: &reqwest::Client, url: &str, csr_der: &[u8]) -> Result<Vec<u8>, ServiceError> {
    let endpoint = format!("{}/.well-known/est/simplereenroll", url.trim_end_matches('/'));
    let response = client
        .post(endpoint)
        .header("Content-Type", "application/pkcs10")
        .header("Content-Transfer-Encoding", "base64")
        .body(STANDARD.encode(csr_der))
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.bytes().await?;
    if status != 200 {
        return Err(ServiceError::Answered { status, body: String::from_utf8_lossy(&body).into_owned() });
    }
    let local = |message: String| ServiceError::Local(anyhow::anyhow!("the EST answer: {message}"));
    let pkcs7 = zerotouch_pki::decode_est_base64(&body).map_err(local)?;
    let certificates = zerotouch_pki::certificates_of_pkcs7(&pkcs7).map_err(|e| local(e.to_string()))?;
    // RFC 7030 §4.2.3: the issued certificate; the service sends it alone.
    certificates.into_iter().next().ok_or_else(|| local("no certificate".into()))
}
