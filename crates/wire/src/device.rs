//! The device registration API's bodies (`azure-dps-wire.md` §1.3, §1.4).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::registration::RegistrationStatus;

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

/// `symmetricKey` in a registration result: the group the device registered through, if any.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyRegistrationResult {
    /// The enrollment group's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
}

/// `DeviceRegistrationResult`: what the device learns about its registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistrationResult {
    /// The registration id.
    pub registration_id: String,
    /// When the device first registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// The hub the device is assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// The device id on the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The status.
    pub status: RegistrationStatus,
    /// How the assignment came about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    /// Why it failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// When the state last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// The registration record's etag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The payload a custom allocation webhook returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// Present for symmetric-key devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyRegistrationResult>,
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
