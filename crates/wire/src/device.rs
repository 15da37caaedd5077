//! The device registration API's bodies (`docs/protocol/device-api.md` §1.3, §1.4).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::registration::RegistrationStatus;
pub use crate::registration::{DeviceRegistrationState as DeviceRegistrationResult, SymmetricKeyRegistrationResult};

/// The body of `PUT .../register` and `POST .../registrations/{id}` (`DeviceRegistration`).
///
/// Every field is optional: C# over MQTT sends an empty body, Python sends `"payload": null`, and the
/// registration id is taken from the URL (§1.3). Unknown fields are ignored, as Azure does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistration {
    /// The registration id; when present it must equal the one in the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
    /// TPM keys (TPM attestation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<DeviceTpm>,
    /// A CSR (base64 DER PKCS#10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
    /// A custom payload for the allocation webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// The `tpm` of a register body (§1.3 `TpmAttestation`), plus our extension for TPM enrollment groups.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTpm {
    /// Base64 of the EK's marshalled `TPM2B_PUBLIC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endorsement_key: Option<String>,
    /// Base64 of the SRK's marshalled `TPM2B_PUBLIC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_root_key: Option<String>,
    /// Our extension: base64 DER of the EK certificate (for TPM enrollment groups; Azure has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endorsement_key_certificate: Option<String>,
}

/// The 401 body of a TPM first leg (§3.1): the activation blob and the key name to sign with. No `status`: the
/// C SDK tells the challenge from an error by its absence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TpmChallenge {
    /// Why the device gets a 401.
    pub message: String,
    /// Base64 of the activation blob.
    pub authentication_key: String,
    /// Always `registration`.
    pub key_name: String,
}

/// `RegistrationOperationStatus`: the answer to register and to an operation poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationOperationStatus {
    /// The operation id (`[A-Za-z0-9.-]`, §1.4).
    pub operation_id: String,
    /// The operation's status.
    pub status: RegistrationStatus,
    /// The registration, once the operation is terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<DeviceRegistrationResult>,
}
