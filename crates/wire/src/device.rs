//! The device registration API's bodies (`azure-dps-wire.md` §1.3, §1.4).

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
    pub tpm: Option<Value>,
    /// A CSR (base64 DER PKCS#10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
    /// A custom payload for the allocation webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
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
