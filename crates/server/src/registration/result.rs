//! What a device (and the admin API) is shown of a registration: the `DeviceRegistrationResult` of
//! `docs/protocol/device-api.md` §1.4, shaped by how the device attested.

use std::sync::Arc;

use zerotouch_store::RegistrationRecord;
use zerotouch_wire::device::{DeviceRegistrationResult, RegistrationOperationStatus, SymmetricKeyRegistrationResult};
use zerotouch_wire::registration::{RegistrationStatus, TpmRegistrationResult, X509RegistrationResult};

use super::enrollment::{Attestation, Enrollment};
use super::error::RegistrationError;

/// What an operation's poll is answered, serialized once: when the operation finished (and kept for the polls that
/// follow, `cache::Caches::remember_finished`), or when a poll read it from the database. Each transport sends
/// the text as it is.
#[derive(Debug, Clone)]
pub struct PollAnswer {
    /// The operation's status: a poll is answered 202 while it is `assigning`, else 200.
    pub status: RegistrationStatus,
    /// The `RegistrationOperationStatus` as JSON text.
    pub json: Arc<[u8]>,
}

impl PollAnswer {
    /// `answer` serialized.
    pub fn of(answer: &RegistrationOperationStatus) -> Result<Self, RegistrationError> {
        let json = serde_json::to_vec(answer).map_err(|e| RegistrationError::internal("encoding an operation", e))?;
        Ok(Self { status: answer.status, json: json.into() })
    }
}

/// A registration record as both APIs show it (`DeviceRegistrationState`); `None` if its status is unknown.
pub fn state_of(record: &RegistrationRecord) -> Option<DeviceRegistrationResult> {
    Some(DeviceRegistrationResult {
        registration_id: record.registration_id.clone(),
        created_date_time_utc: Some(zerotouch_wire::format_timestamp(record.created_at)),
        assigned_hub: record.assigned_hub.clone(),
        device_id: record.device_id.clone(),
        status: RegistrationStatus::parse(&record.status)?,
        substatus: record.substatus.clone(),
        error_code: record.error_code.and_then(|c| u32::try_from(c).ok()),
        error_message: record.error_message.clone(),
        last_updated_date_time_utc: Some(zerotouch_wire::format_timestamp(record.updated_at)),
        etag: Some(record.etag.clone()),
        payload: record.payload.clone(),
        symmetric_key: None,
        x509: None,
        tpm: None,
        issued_certificate_chain: None,
    })
}

/// The device's view of its registration: with `x509` for a device that presented a certificate, else with
/// `symmetricKey` (naming the group of a group device).
pub fn result_of(
    record: &RegistrationRecord,
    group_id: Option<&str>,
    x509: Option<X509RegistrationResult>,
) -> DeviceRegistrationResult {
    match state_of(record) {
        // Azure answers a disabled registration with its id and status only.
        Some(state) if state.status != RegistrationStatus::Disabled => match x509 {
            Some(x509) => DeviceRegistrationResult { x509: Some(x509), ..state },
            None => DeviceRegistrationResult {
                symmetric_key: Some(SymmetricKeyRegistrationResult {
                    enrollment_group_id: group_id.map(str::to_owned),
                }),
                ..state
            },
        },
        state => DeviceRegistrationResult {
            registration_id: record.registration_id.clone(),
            created_date_time_utc: None,
            assigned_hub: None,
            device_id: None,
            status: state.map_or(RegistrationStatus::Failed, |s| s.status),
            substatus: None,
            error_code: None,
            error_message: None,
            last_updated_date_time_utc: None,
            etag: None,
            payload: None,
            symmetric_key: None,
            x509: None,
            tpm: None,
            issued_certificate_chain: None,
        },
    }
}

/// A TPM device's register result: `tpm` (its hub key's blob) instead of `symmetricKey` (§3.1 step 4).
pub fn with_tpm(result: DeviceRegistrationResult, tpm: Option<&TpmRegistrationResult>) -> DeviceRegistrationResult {
    match tpm {
        Some(tpm) if result.status != RegistrationStatus::Disabled => {
            DeviceRegistrationResult { tpm: Some(tpm.clone()), symmetric_key: None, ..result }
        }
        _ => result,
    }
}

/// A status lookup's result: a TPM device has no `symmetricKey` (and gets no new blob either).
pub fn for_status_lookup(result: DeviceRegistrationResult, enrollment: &Enrollment) -> DeviceRegistrationResult {
    match enrollment.attestation {
        Attestation::Tpm(_) => DeviceRegistrationResult { symmetric_key: None, ..result },
        Attestation::SymmetricKey(_) | Attestation::X509(_) => result,
    }
}
