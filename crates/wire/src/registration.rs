//! A device's registration state (`DeviceRegistrationState`, `docs/protocol/device-api.md` §1.4 and §6).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a device's registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RegistrationStatus {
    /// Not assigned (only ever seen in a TPM challenge).
    Unassigned,
    /// Being assigned.
    Assigning,
    /// Assigned to a hub.
    Assigned,
    /// Failed; `errorCode` and `errorMessage` say why.
    Failed,
    /// The enrollment is disabled.
    Disabled,
}

impl RegistrationStatus {
    /// The name used on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unassigned => "unassigned",
            Self::Assigning => "assigning",
            Self::Assigned => "assigned",
            Self::Failed => "failed",
            Self::Disabled => "disabled",
        }
    }

    /// Parses the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Unassigned, Self::Assigning, Self::Assigned, Self::Failed, Self::Disabled]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// `symmetricKey` in a registration result: the group the device registered through, if any.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyRegistrationResult {
    /// The enrollment group's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
}

/// `TpmRegistrationResult`: what an `assigned` TPM device imports next (§3.1, step 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmRegistrationResult {
    /// Base64 of an activation blob carrying the device's hub key.
    pub authentication_key: String,
}

/// `X509CertificateInfo` (§1.4): what a registration result says about a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509CertificateInfo {
    /// The subject's distinguished name.
    pub subject_name: String,
    /// SHA-1 thumbprint, upper-case hex (as Azure shows it).
    pub sha1_thumbprint: String,
    /// SHA-256 thumbprint, upper-case hex.
    pub sha256_thumbprint: String,
    /// The issuer's distinguished name.
    pub issuer_name: String,
    /// Start of validity.
    pub not_before_utc: String,
    /// End of validity.
    pub not_after_utc: String,
    /// The serial number, upper-case hex.
    pub serial_number: String,
    /// The X.509 version (3 for v3).
    pub version: u32,
}

/// `x509` in a registration result: the device certificate, and the group and CA it matched.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509RegistrationResult {
    /// The device's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_info: Option<X509CertificateInfo>,
    /// The enrollment group the device registered through, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
    /// The group's CA certificate the device's chain ended at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_certificate_info: Option<X509CertificateInfo>,
}

/// The registration state of one device: `DeviceRegistrationState` of the service API, and (with `symmetricKey`)
/// `DeviceRegistrationResult` of the device API, which share their fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistrationState {
    /// The registration id.
    pub registration_id: String,
    /// When the device first registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// The hub the device is assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// The device id on that hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The status.
    pub status: RegistrationStatus,
    /// How the assignment came about (`initialAssignment`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    /// Why the registration failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    /// Why the registration failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// When the state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// The record's etag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The payload returned by a custom allocation webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// Device API only: present for symmetric-key devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyRegistrationResult>,
    /// Device API only: present for X.509 devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509RegistrationResult>,
    /// TPM devices: the activation blob of the device's hub key (§3.1 step 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmRegistrationResult>,
    /// Device API only, register operations only: the certificate issued from the device's CSR, base64 DER, leaf
    /// first, then the issuing CA(s), then the root (§8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_certificate_chain: Option<Vec<String>>,
}
