//! Device registration states (one per registration id) and their operations.

//!
//! The records and the repository are here; [`writer`] writes registration attempts in batches (group commit), and
//! [`first_registrations`] writes a batch of devices' first registrations in one round trip, [`certificates_alone`] a
//! batch of certificates issued outside a registration (EST).

mod certificates_alone;
mod first_registrations;
mod writer;

#[cfg(feature = "test-support")]
use chrono::SubsecRound;
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::oneshot;
use zerotouch_wire::registration::DeviceRegistrationState;

use crate::audit::{self, Change};
use crate::certificate::{self as certificates, CertificateRecord, Revoking};
use crate::entity::operation;
use crate::entity::registration::{self, Column, Entity};
use crate::{Actor, Page, Precondition, StoreError};

pub(crate) use writer::RegistrationWriter;
use writer::{Pending, PendingCertificate, Work};

/// A device's registration state as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationRecord {
    /// The canonical registration id.
    pub key: String,
    /// The registration id as the device spelled it.
    pub registration_id: String,
    /// The canonical id of the enrollment group the device registered through, if any.
    pub enrollment_group_key: Option<String>,
    /// The device id on the hub.
    pub device_id: Option<String>,
    /// The hub the device is assigned to.
    pub assigned_hub: Option<String>,
    /// `assigning`, `assigned`, `failed` or `disabled`.
    pub status: String,
    /// How the assignment came about.
    pub substatus: Option<String>,
    /// Why it failed.
    pub error_code: Option<i32>,
    /// Why it failed, in words.
    pub error_message: Option<String>,
    /// The custom allocation payload.
    pub payload: Option<Value>,
    /// The twin the hub should apply (from the enrollment or the webhook, per `docs/protocol/device-api.md` §7).
    pub initial_twin: Option<Value>,
    /// Which enrollment key the device's hub identity carries, when its hub credential is its symmetric key (the
    /// one it authenticated with): key changes re-send that slot's new key to the hub.
    pub hub_key_slot: Option<zerotouch_wire::KeySlot>,
    /// The current etag.
    pub etag: String,
    /// When the device first registered.
    pub created_at: DateTime<Utc>,
    /// When the state last changed.
    pub updated_at: DateTime<Utc>,
}

pub(crate) fn to_record(m: registration::Model) -> RegistrationRecord {
    RegistrationRecord {
        key: m.key,
        registration_id: m.registration_id,
        enrollment_group_key: m.enrollment_group_key,
        device_id: m.device_id,
        assigned_hub: m.assigned_hub,
        status: m.status,
        substatus: m.substatus,
        error_code: m.error_code,
        error_message: m.error_message,
        payload: m.payload,
        initial_twin: m.initial_twin,
        hub_key_slot: m.hub_key_slot.as_deref().and_then(zerotouch_wire::KeySlot::parse),
        etag: m.etag,
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

fn to_active(r: &RegistrationRecord) -> registration::ActiveModel {
    registration::ActiveModel {
        key: Set(r.key.clone()),
        registration_id: Set(r.registration_id.clone()),
        enrollment_group_key: Set(r.enrollment_group_key.clone()),
        device_id: Set(r.device_id.clone()),
        assigned_hub: Set(r.assigned_hub.clone()),
        status: Set(r.status.clone()),
        substatus: Set(r.substatus.clone()),
        error_code: Set(r.error_code),
        error_message: Set(r.error_message.clone()),
        payload: Set(r.payload.clone()),
        initial_twin: Set(r.initial_twin.clone()),
        hub_key_slot: Set(r.hub_key_slot.map(|slot| slot.as_str().to_owned())),
        etag: Set(r.etag.clone()),
        created_at: Set(r.created_at),
        updated_at: Set(r.updated_at),
    }
}

async fn find(db: &impl ConnectionTrait, key: &str) -> Result<Option<RegistrationRecord>, StoreError> {
    Ok(crate::unique(Entity::find_by_id(key.to_owned()), db).await?.map(to_record))
}

repository_with_reader! {
    /// Device registration states and operations: reads (through [`RegistrationReader`]), the registration
    /// writer's batched attempts, deletes, and the audit of refused device requests.
    Registrations,
    /// Device registration states and operations, read-only.
    RegistrationReader
}

impl<'a> RegistrationReader<'a> {
    /// Reads one registration state (through the [`DeviceReader`](crate::reader::DeviceReader), in batches).
    pub async fn get(self, key: &str) -> Result<RegistrationRecord, StoreError> {
        self.store.devices.registration(key).await?.ok_or(StoreError::NotFound)
    }

    /// Lists the registrations of an enrollment group in key order, `limit` at a time.
    pub async fn list_of_group(
        self,
        group_key: &str,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Page<RegistrationRecord>, StoreError> {
        let limit = limit.clamp(1, crate::MAX_PAGE_SIZE);
        let mut query = Entity::find().filter(Column::EnrollmentGroupKey.eq(group_key));
        if let Some(after) = after {
            query = query.filter(Column::Key.gt(after));
        }
        let rows: Vec<RegistrationRecord> = query
            .order_by_asc(Column::Key)
            .limit(limit + 1)
            .all(&self.store.read)
            .await?
            .into_iter()
            .map(to_record)
            .collect();
        Ok(Page::from_overfetch(rows, limit, |r| r.key.clone()))
    }

    /// The registration states of the individual enrollments `keys` (registrations made through a group under the
    /// same id are not theirs), by key: one query per [`crate::MAX_PAGE_SIZE`] keys, so a page of enrollments costs
    /// one query, not one per enrollment.
    pub async fn of_individual_enrollments(
        self,
        keys: &[&str],
    ) -> Result<std::collections::HashMap<String, RegistrationRecord>, StoreError> {
        let mut found = std::collections::HashMap::new();
        for chunk in keys.chunks(usize::try_from(crate::MAX_PAGE_SIZE).unwrap_or(1000)) {
            let rows = Entity::find()
                .filter(Column::Key.is_in(chunk.iter().map(|k| (*k).to_owned())))
                .filter(Column::EnrollmentGroupKey.is_null())
                .all(&self.store.read)
                .await?;
            found.extend(rows.into_iter().map(|m| (m.key.clone(), to_record(m))));
        }
        Ok(found)
    }

    /// The registrations that hold any of `device_ids` (compared case-insensitively) on any hub, at most `limit`.
    pub async fn holding_device_ids(
        self,
        device_ids: &[&str],
        limit: u64,
    ) -> Result<Vec<RegistrationRecord>, StoreError> {
        if device_ids.is_empty() {
            return Ok(Vec::new());
        }
        use sea_orm::sea_query::{Expr, ExprTrait, Func};
        let lowered: Vec<String> = device_ids.iter().map(|id| id.to_lowercase()).collect();
        let rows = Entity::find()
            .filter(Expr::expr(Func::lower(Expr::col(Column::DeviceId))).is_in(lowered))
            .filter(Column::AssignedHub.is_not_null())
            .order_by_asc(Column::Key)
            .limit(limit)
            .all(&self.store.read)
            .await?;
        Ok(rows.into_iter().map(to_record).collect())
    }

    /// Reads the operation `id` of the registration `registration_key`; another device's operation is not found.
    pub async fn operation(self, registration_key: &str, id: &str) -> Result<OperationRecord, StoreError> {
        let select = operation::Entity::find_by_id(id.to_owned())
            .filter(operation::Column::RegistrationKey.eq(registration_key));
        let model = crate::unique(select, &self.store.read).await?.ok_or(StoreError::NotFound)?;
        Ok(OperationRecord {
            id: model.id,
            registration_key: model.registration_key,
            status: model.status,
            error_code: model.error_code,
            error_message: model.error_message,
            result: stored_result(model.result.as_ref()),
            created_at: model.created_at,
            updated_at: model.updated_at,
        })
    }
}

impl<'a> Registrations<'a> {
    /// Writes a registration state (insert or replace by key); returns it with a fresh etag.
    #[cfg(feature = "test-support")]
    pub async fn save(self, mut record: RegistrationRecord) -> Result<RegistrationRecord, StoreError> {
        let txn = self.store.db.begin().await?;
        let existing = find(&txn, &record.key).await?;
        record.etag = crate::new_etag();
        record.updated_at = crate::now();
        match existing {
            None => {
                // Keep what both databases keep (PostgreSQL stores microseconds), so the record returned is the
                // record stored.
                record.created_at = record.created_at.trunc_subsecs(6);
                Entity::insert(to_active(&record))
                    .exec_without_returning(&txn)
                    .await
                    .map_err(|e| StoreError::from_insert(e, "the registration"))?;
            }
            Some(old) => {
                record.created_at = old.created_at;
                let result = Entity::update_many()
                    .set(to_active(&record))
                    .filter(Column::Key.eq(record.key.clone()))
                    .filter(Column::Etag.eq(old.etag))
                    .exec(&txn)
                    .await?;
                if result.rows_affected != 1 {
                    return Err(StoreError::Conflict("the registration changed concurrently; retry".into()));
                }
            }
        }
        txn.commit().await?;
        Ok(record)
    }

    /// Deletes a registration state (and its operations) under `precondition`, and revokes its certificates
    /// (`cessationOfOperation`) and releases its TPM binding in the same transaction.
    pub async fn delete(self, key: &str, precondition: &Precondition, actor: &Actor) -> Result<(), StoreError> {
        let txn = self.store.db.begin().await?;
        let existing = find(&txn, key).await?.ok_or(StoreError::NotFound)?;
        if !precondition.allows(Some(&existing.etag)) {
            return Err(StoreError::PreconditionFailed);
        }
        // While the state still says which hub the device is on.
        crate::hub_job::retire(
            &txn,
            crate::hub_job::Retiring::Registrations(&[key.to_owned()]),
            crate::HubAction::Delete,
        )
        .await?;
        operation::Entity::delete_many().filter(operation::Column::RegistrationKey.eq(key)).exec(&txn).await?;
        let result = Entity::delete_many()
            .filter(Column::Key.eq(key))
            .filter(Column::Etag.eq(existing.etag.clone()))
            .exec(&txn)
            .await?;
        if result.rows_affected != 1 {
            return Err(StoreError::Conflict("the registration changed concurrently; retry".into()));
        }
        // After the guarded delete: an attempt of this device still in flight now loses (its etag is gone), so no
        // certificate can be issued to it after this revocation.
        certificates::revoke(
            &txn,
            Revoking::Registrations(&[key.to_owned()]),
            certificates::CESSATION_OF_OPERATION,
            actor,
        )
        .await?;
        // A TPM group's id is free again with its registration.
        crate::tpm_binding::release(&txn, key).await?;
        let change = Change::deletion("registration", &existing.registration_id, &existing.etag);
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Writes a registration attempt: the state (guarded by `expected_etag`), the operation and the audit event,
    /// in one transaction (shared with the attempts of other devices arriving meanwhile). A concurrent attempt that
    /// changed the state first makes this one a [`StoreError::Conflict`]; the caller decides again on the new
    /// state.
    ///
    /// `snapshot` renders the operation's result from the state as written (with its etag and times).
    pub async fn commit(self, outcome: RegistrationOutcome, snapshot: Snapshot) -> Result<Committed, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the registration writer has stopped".into());
        self.store.registrations.send(Work::Register(Box::new(Pending { outcome, snapshot, reply }))).await?;
        answer.await.map_err(|_| stopped())?
    }

    /// Records a certificate issued outside a registration (EST) for the registration it names: the device's
    /// previous active certificate becomes superseded, in the same transaction, with an audit event (`action`).
    /// Written in batches with the registration attempts (see [`Registrations::commit`]), and only if the
    /// registration still has `expected_etag` ([`StoreError::Conflict`]), its enrollment is still enabled and the
    /// certificate `renewing` (the device authenticated with) is still its active one
    /// ([`StoreError::NoLongerAuthorized`]).
    pub async fn record_certificate(
        self,
        certificate: CertificateRecord,
        guard: CertificateGuard,
        action: &str,
        actor: &Actor,
    ) -> Result<CertificateRecord, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the registration writer has stopped".into());
        let pending = PendingCertificate { certificate, guard, action: action.to_owned(), actor: actor.clone(), reply };
        self.store.registrations.send(Work::Certificate(Box::new(pending))).await?;
        answer.await.map_err(|_| stopped())?
    }

    /// Deletes operations created before `cutoff`; returns how many.
    pub async fn delete_operations_before(self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let result = operation::Entity::delete_many()
            .filter(operation::Column::CreatedAt.lt(cutoff))
            .exec(&self.store.db)
            .await?;
        Ok(result.rows_affected)
    }

    /// Records a refused device request (bad credentials, unknown device, ...) with its reason.
    pub async fn audit_refused_device(
        self,
        registration_id: &str,
        action: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let actor = Actor { subject: format!("device:{registration_id}"), role: "device".into() };
        let change = Change {
            action,
            resource_type: "registration",
            resource_id: registration_id,
            etag_before: None,
            etag_after: None,
            detail: Some(reason),
        };
        audit::record(&self.store.db, &actor, &[change]).await
    }
}

/// A registration operation (one per register call), as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationRecord {
    /// The operation id.
    pub id: String,
    /// The canonical registration id it belongs to.
    pub registration_key: String,
    /// `assigning`, `assigned`, `failed` or `disabled`.
    pub status: String,
    /// Why it failed.
    pub error_code: Option<i32>,
    /// Why it failed, in words.
    pub error_message: Option<String>,
    /// The registration result the operation answers with (a snapshot taken when it was written).
    pub result: Option<DeviceRegistrationState>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

fn operation_active(o: &OperationRecord) -> operation::ActiveModel {
    operation::ActiveModel {
        id: Set(o.id.clone()),
        registration_key: Set(o.registration_key.clone()),
        status: Set(o.status.clone()),
        error_code: Set(o.error_code),
        error_message: Set(o.error_message.clone()),
        result: Set(result_to_store(o.result.as_ref())),
        created_at: Set(o.created_at),
        updated_at: Set(o.updated_at),
    }
}

/// What a registration attempt writes: the device's new state, its operation, and the audit event.
#[derive(Debug, Clone)]
pub struct RegistrationOutcome {
    /// The new registration state. The store sets its etag and `updated_at`, and `created_at` when it inserts;
    /// on an update `created_at` is kept as given (copy it from the state the decision was made on).
    pub record: RegistrationRecord,
    /// The etag the state had when the decision was made (`None`: there was no state).
    pub expected_etag: Option<String>,
    /// The operation to create.
    pub operation: OperationRecord,
    /// What the audit event says happened.
    pub detail: String,
    /// The certificate issued in this attempt, if any: stored `active` (its registration key, status and times
    /// set by the store) only if the attempt wins, after the registration's previous active certificates are
    /// marked `superseded`, in the same transaction.
    pub certificate: Option<CertificateRecord>,
    /// The hub job that registers the device on its hub, if the hub has an adapter: written only if the attempt
    /// wins, in the same transaction. The state is then written `assigning` and becomes `assigned` when the job
    /// succeeds.
    pub hub_job: Option<crate::NewHubJob>,
    /// The serial of the operational certificate the device authenticated with, if it renews with one: the attempt
    /// is written only if that certificate is still the registration's active one (a concurrent revocation or
    /// renewal wins), as it is only if the enrollment is still enabled.
    pub renewing: Option<String>,
}

/// What must still hold when a certificate issued outside a registration (EST) is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateGuard {
    /// The registration's etag when the certificate was decided on.
    pub expected_etag: String,
    /// The serial of the operational certificate the device authenticated with, if any.
    pub renewing: Option<String>,
}

/// What a winning registration attempt wrote: the state, the operation, and its hub job.
pub type Committed = (RegistrationRecord, OperationRecord, Option<crate::HubJobRecord>);

/// Renders an operation's result from the registration state as written.
pub type Snapshot = Box<dyn Fn(&RegistrationRecord) -> DeviceRegistrationState + Send + Sync>;

/// An operation's stored result as the device is shown it; one that cannot be read is shown as none.
pub(crate) fn stored_result(result: Option<&Value>) -> Option<DeviceRegistrationState> {
    result.and_then(|r| DeviceRegistrationState::deserialize(r).ok())
}

/// An operation's result as it is stored, the reverse of [`stored_result`]. (Serializing it cannot fail: its keys
/// are strings; if it did, no result would be stored, and a poll would be shown none.)
pub(crate) fn result_to_store(result: Option<&DeviceRegistrationState>) -> Option<Value> {
    result.and_then(|r| serde_json::to_value(r).ok())
}
