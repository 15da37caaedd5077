//! The outcome write: a [`Decision`] becomes the registration state, the operation (with the answer the device's
//! polls read), the issued certificate, the audit event and, for a hub with an adapter, the outbox job that puts
//! the device there. The store writes them in one transaction, batched with other devices' attempts; this module
//! only builds them, without I/O.

use base64::Engine;
use zerotouch_store::{
    CredentialRef, HubRecord, NO_ADAPTER, NewHubJob, OperationRecord, RegistrationOutcome, RegistrationRecord, Snapshot,
};
use zerotouch_wire::device::DeviceRegistrationResult;
use zerotouch_wire::registration::RegistrationStatus;

use super::authenticate::Authenticated;
use super::decide::Decision;
use super::issue::{self, Issued};
use super::request::{DeviceRequest, Evidence};
use super::result;
use crate::hubs::HubSettings;

/// Everything one registration attempt writes from.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The device.
    pub device: &'a DeviceRequest,
    /// Who it proved to be.
    pub authenticated: &'a Authenticated,
    /// Its registration as read before deciding (`None`: supposed new).
    pub current: Option<&'a RegistrationRecord>,
    /// What was decided.
    pub decision: &'a Decision,
    /// The certificate issued now, if any.
    pub issued: Option<&'a Issued>,
    /// Every hub.
    pub hubs: &'a [HubRecord],
    /// The outbox's settings (deadline, inline delivery time).
    pub hub_settings: &'a HubSettings,
}

/// Operation ids look like Azure's (`4.{16 hex}.{uuid}`, only `[A-Za-z0-9.-]`, §1.4). The middle part is the time
/// of creation in microseconds since the Unix epoch, so that ids sort by age and each new operation lands at the
/// end of the operations' primary-key index instead of on a random leaf of it (one page rewritten per batch, not
/// one per operation). The random UUID keeps ids unique and unguessable; its bytes come from the thread's CSPRNG
/// (`rand`'s, seeded and reseeded from the operating system), which spares each registration a `getrandom` call.
fn new_operation_id() -> String {
    let micros = u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or_default();
    format!("4.{micros:016x}.{}", uuid::Builder::from_random_bytes(rand::random()).into_uuid())
}

/// The write of one attempt, and how its operation's answer is rendered from the state the store writes.
pub fn outcome(attempt: Attempt<'_>) -> (RegistrationOutcome, Snapshot) {
    let Attempt { device, authenticated, current, decision, issued, .. } = attempt;
    let key = device.registration_id.key().into_owned();
    let enrollment = &authenticated.enrollment;
    let assignment = decision.assignment();
    let hub_job = hub_job(attempt);
    // A hub with an adapter learns of the device through the outbox; until it has, the device is assigning.
    let written_status = if hub_job.is_some() { RegistrationStatus::Assigning } else { decision.status() };
    let (error_code, error_message) = match decision {
        Decision::Failed { code, message } => (i32::try_from(code.number()).ok(), Some(message.clone())),
        Decision::Disabled | Decision::Assigned(_) => (None, None),
    };
    let now = chrono::Utc::now();
    let record = RegistrationRecord {
        key: key.clone(),
        registration_id: device.registration_id.as_str().to_owned(),
        enrollment_group_key: enrollment.group_id().map(|_| enrollment.key().to_owned()),
        device_id: assignment.map(|a| a.device_id.clone()),
        assigned_hub: assignment.map(|a| a.hub.clone()),
        status: written_status.as_str().to_owned(),
        substatus: assignment.map(|a| a.substatus.clone()),
        error_code,
        error_message: error_message.clone(),
        payload: assignment.and_then(|a| a.payload.clone()),
        initial_twin: assignment.and_then(|a| a.initial_twin.clone()),
        // Recorded where the hub identity carries the symmetric key, for later changes of the enrollment's keys.
        hub_key_slot: hub_job.as_ref().and_then(|job| match CredentialRef::of_document(&job.document) {
            Ok(CredentialRef::SymmetricKey { slot }) => Some(slot),
            Ok(CredentialRef::X509 { .. } | CredentialRef::HubKey { .. }) | Err(_) => None,
        }),
        etag: String::new(),
        created_at: current.map_or(now, |c| c.created_at),
        updated_at: now,
    };
    let operation = OperationRecord {
        id: new_operation_id(),
        registration_key: key.clone(),
        status: written_status.as_str().to_owned(),
        error_code,
        error_message,
        result: None,
        created_at: now,
        updated_at: now,
    };
    let certificate = issued.map(|issued| {
        issue::certificate_record(&key, assignment.map(|a| a.device_id.clone()).unwrap_or_default(), issued)
    });
    let detail = decision.detail(enrollment.noun());
    let detail = match &certificate {
        Some(c) => format!("{detail}; certificate {} issued by {}", c.serial, c.issuing_ca),
        None => detail,
    };
    let outcome = RegistrationOutcome {
        record,
        expected_etag: current.map(|c| c.etag.clone()),
        operation,
        detail,
        certificate,
        hub_job,
        renewing: authenticated.operational.clone(),
    };
    (outcome, snapshot(authenticated, issued))
}

/// Renders the device's answer from the state as the store writes it. Of `issuedCertificateChain` the store keeps
/// only the device's certificate: the issuing CA's part, the same for every device it issued to, is added when a
/// poll is answered (`RegistrationService::answer`).
fn snapshot(authenticated: &Authenticated, issued: Option<&Issued>) -> Snapshot {
    let group_id = authenticated.enrollment.group_id().map(str::to_owned);
    let x509 = authenticated.x509.clone();
    let tpm = authenticated.tpm.as_ref().map(|t| t.result.clone());
    let chain: Option<Vec<String>> =
        issued.map(|(_, issued)| vec![base64::engine::general_purpose::STANDARD.encode(&issued.der)]);
    Box::new(move |record: &RegistrationRecord| DeviceRegistrationResult {
        issued_certificate_chain: chain.clone(),
        ..result::with_tpm(result::result_of(record, group_id.as_deref(), x509.clone()), tpm.as_ref())
    })
}

/// The outbox job that puts an assigned device on its hub, if the hub has an adapter. The device's credential
/// there is the certificate issued now, else the certificate it authenticated with, else its symmetric key (for a
/// TPM device, the hub key its answer carries); the identity it leaves (another hub, or another device id) is
/// deleted once the new one exists.
fn hub_job(attempt: Attempt<'_>) -> Option<NewHubJob> {
    let assignment = attempt.decision.assignment()?;
    let (hub, device_id) = (&assignment.hub, &assignment.device_id);
    let record = attempt.hubs.iter().find(|h| &h.hub.host_name == hub)?;
    if record.hub.kind == NO_ADAPTER {
        return None;
    }
    let presented = match &attempt.device.evidence {
        Evidence::Certificates(chain) => chain.first(),
        Evidence::Sas(_) | Evidence::None => None,
    };
    let credential = match (attempt.issued, presented) {
        (Some((_, issued)), _) => {
            Some(CredentialRef::X509 { subject_name: device_id.clone(), thumbprint: issued.sha256_thumbprint.clone() })
        }
        // Authentication read this CN already (it is the registration id).
        (None, Some(leaf)) => Some(CredentialRef::X509 {
            subject_name: zerotouch_pki::subject_cn(leaf)
                .unwrap_or_else(|_| attempt.device.registration_id.as_str().to_owned()),
            thumbprint: zerotouch_pki::thumbprint_sha256_hex(leaf),
        }),
        // A TPM device: the hub key the answer delivers into its TPM.
        (None, None) => Some(match &attempt.authenticated.tpm {
            Some(tpm) => CredentialRef::HubKey { key: tpm.hub_key.clone() },
            None => CredentialRef::SymmetricKey { slot: attempt.authenticated.key_slot.unwrap_or_default() },
        }),
    }?;
    let previous = attempt
        .current
        .and_then(|c| c.assigned_hub.clone().zip(c.device_id.clone()))
        .filter(|(old_hub, old_device)| old_hub != hub || old_device != device_id);
    let settings = attempt.hub_settings;
    Some(NewHubJob {
        id: uuid::Uuid::new_v4().simple().to_string(),
        hub: hub.clone(),
        device_id: device_id.clone(),
        document: credential.document(assignment.initial_twin.as_ref()),
        deadline_at: chrono::Utc::now() + chrono::Duration::from_std(settings.deadline).unwrap_or_default(),
        inline_lease: settings.inline_timeout + std::time::Duration::from_secs(30),
        previous,
    })
}

#[cfg(test)]
mod tests {
    use super::new_operation_id;

    #[test]
    fn operation_ids_sort_by_creation_and_keep_azures_shape() {
        let ids: Vec<String> = (0..200)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_micros(2));
                new_operation_id()
            })
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids, "ids made one after another sort in the order they were made");
        let randoms: std::collections::HashSet<&str> = ids.iter().filter_map(|id| id.rsplit('.').next()).collect();
        assert_eq!(randoms.len(), ids.len(), "every id has a random part of its own");
        for id in &ids {
            let parts: Vec<&str> = id.splitn(3, '.').collect();
            assert_eq!(parts[0], "4", "{id}");
            assert_eq!(parts[1].len(), 16, "{id}");
            assert!(parts[1].bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            let random = uuid::Uuid::parse_str(parts[2]).unwrap();
            assert_eq!(random.get_version(), Some(uuid::Version::Random), "{id}");
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
