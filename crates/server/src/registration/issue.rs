//! Issuance: a device's CSR is checked against its registration id and its enrollment's certificate policy before
//! anything is decided (`docs/protocol/device-api.md` §8), and a certificate is issued from the active issuing
//! CA only to a device the decision assigns. The certificate logic itself is in `zerotouch-pki`.

use std::sync::Arc;

use zerotouch_pki::{CheckedCsr, IssuedCertificate};
use zerotouch_store::{CertificateRecord, CertificateStatus};
use zerotouch_wire::enrollment::CertificatePolicy;

use super::error::RegistrationError;
use crate::pki::{LoadedCa, Pki};

/// A certificate issued now, and the CA that issued it.
pub type Issued = (Arc<LoadedCa>, IssuedCertificate);

/// The register body's CSR, checked; `None` when the device sent none (or an empty one).
pub fn checked_csr(
    csr: Option<&str>,
    registration_id: &str,
    policy: &CertificatePolicy,
) -> Result<Option<CheckedCsr>, RegistrationError> {
    match csr.filter(|csr| !csr.trim().is_empty()) {
        Some(csr) => Ok(Some(Pki::check_csr(csr, registration_id, policy)?)),
        None => Ok(None),
    }
}

/// An EST request's body (base64 DER PKCS#10, RFC 7030 §4.2), checked as a register's CSR is.
pub fn checked_est_csr(
    body: &[u8],
    registration_id: &str,
    policy: &CertificatePolicy,
) -> Result<CheckedCsr, RegistrationError> {
    let der = zerotouch_pki::decode_est_base64(body)
        .map_err(|_| RegistrationError::CsrRefused("the body is not base64 DER PKCS#10 (RFC 7030 §4.2)".into()))?;
    zerotouch_pki::check_csr(&der, registration_id, &zerotouch_pki::KeyPolicy { allow_rsa: policy.allow_rsa })
        .map_err(|e| RegistrationError::CsrRefused(e.to_string()))
}

/// What the store keeps of a certificate issued to the registration `key` (the writer sets its status and time).
pub fn certificate_record(key: &str, device_id: String, (ca, issued): &Issued) -> CertificateRecord {
    CertificateRecord {
        serial: issued.serial_hex.clone(),
        registration_key: key.to_owned(),
        device_id,
        issuing_ca: ca.name.clone(),
        not_before: crate::pki::to_chrono(issued.not_before),
        not_after: crate::pki::to_chrono(issued.not_after),
        status: CertificateStatus::Active,
        thumbprint_sha256: issued.sha256_thumbprint.clone(),
        revoked_at: None,
        revocation_reason: None,
        created_at: chrono::Utc::now(),
    }
}
