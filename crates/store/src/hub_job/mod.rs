//! The hub outbox: the changes downstream hubs still have to learn, written in the transaction of the change that
//! causes them, claimed by workers, and deleted once the hub has them.
//!
//! - A registration assigned to a hub with an adapter writes an `upsert` job with its state (`assigning`); the
//!   job's success makes the registration and its operation `assigned` ([`HubJobs::finish`]), and only then
//!   queues the `delete` of the device's identity on the hub it leaves (create there first, then remove here).
//!   An upsert past its deadline, or refused by the hub, makes them `failed` instead.
//! - Retiring a device queues a job for the hub it is on: `disable` when its enrollment is disabled or deleted or
//!   its certificates are revoked, `delete` when its registration is deleted. These jobs never expire: a hub must
//!   not keep a retired device.
//! - Jobs of one device on one hub run one at a time, in creation order, so a later change is never overtaken
//!   by an earlier one; a job claimed by a worker is leased (`claimed_until`) and taken again if the worker dies.

//!
//! The records and their rows are here; [`queue`] writes jobs inside the transactions of the changes that cause
//! them, [`delivery`] claims and finishes them for the workers, and [`backlog`] measures what waits.

mod backlog;
mod delivery;
mod queue;

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use serde::Deserialize;
use serde_json::Value;

use crate::StoreError;
use crate::entity::hub_job;
use crate::secrets::Vault;

pub use backlog::HubBacklog;
pub use delivery::HubJobOutcome;
pub(crate) use queue::{Retiring, insert_upserts, queue_credential_updates, queue_key_changes, retire};

/// What a job asks of the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubAction {
    /// Create or update the device's identity (enabled).
    Upsert,
    /// Cut the device off, keeping its identity.
    Disable,
    /// Remove the device's identity.
    Delete,
}

impl HubAction {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upsert => "upsert",
            Self::Disable => "disable",
            Self::Delete => "delete",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "upsert" => Some(Self::Upsert),
            "disable" => Some(Self::Disable),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// What an upsert job stores of the identity to create: a reference to the credential; a secret only where nothing
/// else holds it (a TPM device's hub key).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "type")]
pub enum CredentialRef {
    /// The device's certificate (an operational certificate of ours, or its own X.509 certificate).
    #[serde(rename = "x509", rename_all = "camelCase")]
    X509 {
        /// Its subject CN.
        subject_name: String,
        /// Hex SHA-256 of its DER.
        thumbprint: String,
    },
    /// The device's symmetric keys, read from its enrollment when the job is delivered, and which one it
    /// authenticated with (absent in jobs written before the slot was recorded: the primary).
    #[serde(rename = "symmetricKey")]
    SymmetricKey {
        /// The key the device authenticated with.
        #[serde(default)]
        slot: zerotouch_wire::KeySlot,
    },
    /// A key made for the hub alone (a TPM device's hub key, which only its TPM and the hub hold): kept in the job
    /// until the hub has it, as the enrollment has no copy.
    #[serde(rename = "hubKey")]
    HubKey {
        /// The key (base64 in the document; redacted in `Debug`).
        key: zerotouch_wire::SymmetricKey,
    },
}

impl CredentialRef {
    /// The document of an upsert job: the credential and the initial twin.
    pub fn document(&self, initial_twin: Option<&Value>) -> Value {
        serde_json::json!({ "credential": self, "initialTwin": initial_twin })
    }

    /// The credential of an upsert job's document.
    pub fn of_document(document: &Value) -> Result<Self, serde_json::Error> {
        Self::deserialize(document.get("credential").unwrap_or(&Value::Null))
    }
}

/// The hub kind whose hubs have no adapter (assignments are only recorded).
pub const NO_ADAPTER: &str = "none";

/// An upsert job a registration attempt writes with its state (see [`crate::RegistrationOutcome::hub_job`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewHubJob {
    /// The job id (a fresh random id).
    pub id: String,
    /// The hub the device is assigned to.
    pub hub: String,
    /// The device id there.
    pub device_id: String,
    /// The identity to create: credential and initial twin, as the delivering code reads it.
    pub document: Value,
    /// When the registration gives up on the hub and fails.
    pub deadline_at: DateTime<Utc>,
    /// How long the attempt that writes it keeps it to deliver it at once (nobody else takes it meanwhile).
    pub inline_lease: std::time::Duration,
    /// The hub and device id the device leaves, whose identity is deleted once this job succeeds.
    pub previous: Option<(String, String)>,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct HubJobRecord {
    /// The job id.
    pub id: String,
    /// The hub.
    pub hub: String,
    /// The device id on the hub.
    pub device_id: String,
    /// The registration (canonical id) the job belongs to.
    pub registration_key: String,
    /// What to do.
    pub action: HubAction,
    /// For upserts: the identity to create.
    pub document: Option<Value>,
    /// For upserts a registration waits for: its operation (none for a credential update after an EST renewal).
    pub operation_id: Option<String>,
    /// For upserts: the registration state's etag when the job was written (a newer state has its own job).
    pub registration_etag: Option<String>,
    /// For upserts: where the device's identity is deleted once the job succeeds.
    pub previous: Option<(String, String)>,
    /// Deliveries tried so far.
    pub attempts: u32,
    /// Why the last delivery failed.
    pub last_error: Option<String>,
    /// When the job is due.
    pub next_attempt_at: DateTime<Utc>,
    /// Until when a worker (or the registration that wrote it) holds it.
    pub claimed_until: Option<DateTime<Utc>>,
    /// For upserts: when the registration fails if the hub still does not have the device.
    pub deadline_at: Option<DateTime<Utc>>,
    /// When the job was written.
    pub created_at: DateTime<Utc>,
}

/// A job as stored, its document's hub key opened (`crate::secrets`).
fn to_record(vault: &Vault, m: hub_job::Model) -> Result<HubJobRecord, StoreError> {
    let action = HubAction::parse(&m.action)
        .ok_or_else(|| StoreError::Corrupt(format!("hub job {} has the action {:?}", m.id, m.action)))?;
    let document = m.document.map(|d| vault.open_job_document(&m.id, d)).transpose()?;
    Ok(HubJobRecord {
        id: m.id,
        hub: m.hub,
        device_id: m.device_id,
        registration_key: m.registration_key,
        action,
        document,
        operation_id: m.operation_id,
        registration_etag: m.registration_etag,
        previous: m.previous_hub.zip(m.previous_device_id),
        attempts: u32::try_from(m.attempts).unwrap_or(0),
        last_error: m.last_error,
        next_attempt_at: m.next_attempt_at,
        claimed_until: m.claimed_until,
        deadline_at: m.deadline_at,
        created_at: m.created_at,
    })
}

/// The row of a job, its document's hub key sealed.
fn to_active(vault: &Vault, r: &HubJobRecord) -> Result<hub_job::ActiveModel, StoreError> {
    let (previous_hub, previous_device_id) = r.previous.clone().unzip();
    Ok(hub_job::ActiveModel {
        id: Set(r.id.clone()),
        hub: Set(r.hub.clone()),
        device_id: Set(r.device_id.clone()),
        registration_key: Set(r.registration_key.clone()),
        action: Set(r.action.as_str().to_owned()),
        document: Set(r.document.as_ref().map(|d| vault.seal_job_document(&r.id, d)).transpose()?),
        operation_id: Set(r.operation_id.clone()),
        registration_etag: Set(r.registration_etag.clone()),
        previous_hub: Set(previous_hub),
        previous_device_id: Set(previous_device_id),
        attempts: Set(i32::try_from(r.attempts).unwrap_or(i32::MAX)),
        last_error: Set(r.last_error.clone()),
        next_attempt_at: Set(r.next_attempt_at),
        claimed_until: Set(r.claimed_until),
        deadline_at: Set(r.deadline_at.map(crate::at_store_precision)),
        created_at: Set(r.created_at),
    })
}

/// The row of a job that holds no secret (a disable or delete, a certificate reference): with the vault locked, a
/// document that did carry a hub key fails to be written rather than being written in clear.
fn to_active_without_key(r: &HubJobRecord) -> Result<hub_job::ActiveModel, StoreError> {
    to_active(&Vault::default(), r)
}

/// A job with nothing tried yet, due now.
fn fresh_job(id: String, hub: String, device_id: String, registration_key: String, action: HubAction) -> HubJobRecord {
    let now = crate::now();
    HubJobRecord {
        id,
        hub,
        device_id,
        registration_key,
        action,
        document: None,
        operation_id: None,
        registration_etag: None,
        previous: None,
        attempts: 0,
        last_error: None,
        next_attempt_at: now,
        claimed_until: None,
        deadline_at: None,
        created_at: now,
    }
}

fn new_job_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

repository! {
    /// The hub outbox: claiming, finishing and measuring the jobs that deliver device identities to hubs.
    HubJobs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A credential survives the job document, and the document holds no key.
    #[test]
    fn credential_documents_round_trip() {
        for credential in [
            CredentialRef::X509 { subject_name: "dev-1".into(), thumbprint: "ab".repeat(32) },
            CredentialRef::SymmetricKey { slot: zerotouch_wire::KeySlot::Primary },
            CredentialRef::SymmetricKey { slot: zerotouch_wire::KeySlot::Secondary },
        ] {
            let document = credential.document(Some(&serde_json::json!({"tags": {"site": "x"}})));
            assert_eq!(CredentialRef::of_document(&document).unwrap(), credential);
            assert_eq!(document["initialTwin"]["tags"]["site"], "x");
        }
        let document = CredentialRef::SymmetricKey { slot: zerotouch_wire::KeySlot::Secondary }.document(None);
        assert_eq!(document["credential"], serde_json::json!({"type": "symmetricKey", "slot": "secondary"}));
        // A job written before the slot was recorded means the primary key.
        let old = serde_json::json!({"credential": {"type": "symmetricKey"}});
        let primary = CredentialRef::SymmetricKey { slot: zerotouch_wire::KeySlot::Primary };
        assert_eq!(CredentialRef::of_document(&old).unwrap(), primary);
        let x509 = CredentialRef::X509 { subject_name: "d".into(), thumbprint: "00".into() }.document(None);
        assert_eq!(x509["credential"], serde_json::json!({"type": "x509", "subjectName": "d", "thumbprint": "00"}));
        assert!(CredentialRef::of_document(&serde_json::json!({})).is_err());
        let key = zerotouch_wire::SymmetricKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhM=").unwrap();
        let hub_key = CredentialRef::HubKey { key };
        let document = hub_key.document(None);
        assert_eq!(document["credential"]["type"], "hubKey");
        assert_eq!(CredentialRef::of_document(&document).unwrap(), hub_key);
        assert!(!format!("{hub_key:?}").contains("AAECAwQF"), "a hub key is redacted in Debug");
    }

    /// Actions round-trip through their stored names.
    #[test]
    fn actions_parse_their_names() {
        for action in [HubAction::Upsert, HubAction::Disable, HubAction::Delete] {
            assert_eq!(HubAction::parse(action.as_str()), Some(action));
        }
        assert_eq!(HubAction::parse("remove"), None);
    }
}
