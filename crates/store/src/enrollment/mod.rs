//! Individual enrollments and enrollment groups: two tables of one shape, one repository.
//!
//! [`EnrollmentTable`] is implemented for both tables by a macro, and every operation is written once over it.
//! Writes are guarded by the etag read in the same transaction (`UPDATE ... WHERE key = ? AND etag = ?`), so a
//! concurrent writer on another connection or replica turns into a conflict rather than a lost update.
//!
//! Retiring an enrollment (deleting it, or writing it `disabled`, alone or in bulk) revokes the certificates of
//! the devices it covers in the same transaction ([`revoke_retired`]): for an individual enrollment the
//! registration with its id, for a group every registration made through it.

//!
//! The record, single writes and the repository are here; [`table`] holds the two tables behind
//! [`EnrollmentTable`], and [`bulk`] the bulk import. Devices' individual enrollments are read by the store's
//! [`DeviceReader`](crate::reader::DeviceReader).

mod bulk;
pub(crate) mod table;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::Value;
use zerotouch_wire::SymmetricKey;
use zerotouch_wire::bulk::BulkMode;
use zerotouch_wire::enrollment::{EnrollmentKind, NormalizedEnrollment, ProvisioningStatus};

use crate::audit::{self, Change};
use crate::certificate::{self, Revoking};
use crate::hub_job::{self, HubAction, Retiring};
use crate::{Actor, Page, Precondition, Store, StoreError};

pub use bulk::{BulkCall, BulkFailure, BulkItem};
use table::{EnrollmentTable, GroupTable, IndividualTable, with_table};

/// An enrollment or enrollment group as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollmentRecord {
    /// The canonical (lower-case) id.
    pub key: String,
    /// The id as the client spelled it.
    pub id: String,
    /// `symmetricKey`, `x509` or `tpm`.
    pub attestation_type: String,
    /// `enabled` or `disabled`.
    pub provisioning_status: String,
    /// The service-API document without read-only fields and keys.
    pub document: Value,
    /// The primary symmetric key.
    pub primary_key: Option<SymmetricKey>,
    /// The secondary symmetric key.
    pub secondary_key: Option<SymmetricKey>,
    /// The current etag.
    pub etag: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl EnrollmentRecord {
    fn new(n: NormalizedEnrollment, etag: String, created_at: DateTime<Utc>, updated_at: DateTime<Utc>) -> Self {
        Self {
            key: n.key,
            id: n.id,
            attestation_type: n.attestation_type.as_str().to_owned(),
            provisioning_status: n.provisioning_status.as_str().to_owned(),
            document: n.document,
            primary_key: n.primary_key,
            secondary_key: n.secondary_key,
            etag,
            created_at,
            updated_at,
        }
    }
}

fn resource_type(kind: EnrollmentKind) -> &'static str {
    match kind {
        EnrollmentKind::Individual => "enrollment",
        EnrollmentKind::Group => "enrollmentGroup",
    }
}

/// Revokes (`cessationOfOperation`), in the caller's transaction, the certificates of the devices that the
/// enrollments `keys` of `kind` cover, and queues the disabling of their hub identities; they are being deleted or
/// disabled.
async fn revoke_retired(
    db: &impl ConnectionTrait,
    kind: EnrollmentKind,
    keys: &[String],
    actor: &Actor,
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let (scope, retiring) = match kind {
        EnrollmentKind::Individual => (Revoking::Registrations(keys), Retiring::Registrations(keys)),
        EnrollmentKind::Group => (Revoking::Groups(keys), Retiring::Groups(keys)),
    };
    certificate::revoke(db, scope, certificate::CESSATION_OF_OPERATION, actor).await?;
    hub_job::retire(db, retiring, HubAction::Disable).await?;
    Ok(())
}

fn is_disabled(record: &EnrollmentRecord) -> bool {
    record.provisioning_status == ProvisioningStatus::Disabled.as_str()
}

/// Whether writing `new` over `old` gives the devices of an enrollment that stays enabled other symmetric keys
/// (compared in constant time): their hub identities must learn the new keys.
fn changes_device_keys(old: &EnrollmentRecord, new: &EnrollmentRecord) -> bool {
    let same = |a: &Option<SymmetricKey>, b: &Option<SymmetricKey>| match (a, b) {
        (Some(a), Some(b)) => a.same_as(b),
        (None, None) => true,
        _ => false,
    };
    let unchanged = same(&old.primary_key, &new.primary_key) && same(&old.secondary_key, &new.secondary_key);
    new.attestation_type == zerotouch_wire::enrollment::AttestationType::SymmetricKey.as_str()
        && !is_disabled(old)
        && !is_disabled(new)
        && !unchanged
}

/// Queues, in the caller's transaction, the hub updates of the devices of the enrollments `keys` of `kind`, whose
/// symmetric keys just changed (`hub_job::queue_key_changes`): for a group, every registration made through it.
async fn queue_key_changes(db: &impl ConnectionTrait, kind: EnrollmentKind, keys: &[String]) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let scope = match kind {
        EnrollmentKind::Individual => Retiring::Registrations(keys),
        EnrollmentKind::Group => Retiring::Groups(keys),
    };
    hub_job::queue_key_changes(db, scope).await
}

async fn put<T: EnrollmentTable>(
    store: &Store,
    kind: EnrollmentKind,
    enrollment: NormalizedEnrollment,
    precondition: &Precondition,
    actor: &Actor,
) -> Result<(EnrollmentRecord, bool), StoreError> {
    let txn = store.db.begin().await?;
    let existing = T::find(&txn, store.vault(), &enrollment.key).await?;
    if !precondition.allows(existing.as_ref().map(|e| e.etag.as_str())) {
        return Err(StoreError::PreconditionFailed);
    }
    let now = crate::now();
    let (record, old_etag, keys_changed) = match existing {
        None => {
            let record = EnrollmentRecord::new(enrollment, crate::new_etag(), now, now);
            T::insert_many(&txn, store.vault(), std::slice::from_ref(&record)).await?;
            (record, None, false)
        }
        Some(old) => {
            let mut enrollment = enrollment;
            enrollment.keep_existing_keys(old.primary_key.as_ref(), old.secondary_key.as_ref());
            let record = EnrollmentRecord::new(enrollment, crate::new_etag(), old.created_at, now);
            if !T::replace_if(&txn, store.vault(), &record, &old.etag).await? {
                return Err(StoreError::Conflict(format!("{} changed concurrently; retry", kind.noun())));
            }
            let keys_changed = changes_device_keys(&old, &record);
            (record, Some(old.etag), keys_changed)
        }
    };
    audit::record(
        &txn,
        actor,
        &[Change {
            action: if old_etag.is_some() { "update" } else { "create" },
            resource_type: resource_type(kind),
            resource_id: &record.id,
            etag_before: old_etag.as_deref(),
            etag_after: Some(&record.etag),
            detail: None,
        }],
    )
    .await?;
    if is_disabled(&record) {
        revoke_retired(&txn, kind, std::slice::from_ref(&record.key), actor).await?;
    }
    if keys_changed {
        queue_key_changes(&txn, kind, std::slice::from_ref(&record.key)).await?;
    }
    txn.commit().await?;
    Ok((record, old_etag.is_none()))
}

async fn delete<T: EnrollmentTable>(
    store: &Store,
    kind: EnrollmentKind,
    key: &str,
    precondition: &Precondition,
    actor: &Actor,
) -> Result<(), StoreError> {
    let txn = store.db.begin().await?;
    let existing = T::find(&txn, store.vault(), key).await?.ok_or(StoreError::NotFound)?;
    if !precondition.allows(Some(&existing.etag)) {
        return Err(StoreError::PreconditionFailed);
    }
    if !T::delete_if(&txn, key, &existing.etag).await? {
        return Err(StoreError::Conflict(format!("{} changed concurrently; retry", kind.noun())));
    }
    audit::record(
        &txn,
        actor,
        &[Change {
            action: "delete",
            resource_type: resource_type(kind),
            resource_id: &existing.id,
            etag_before: Some(&existing.etag),
            etag_after: None,
            detail: None,
        }],
    )
    .await?;
    revoke_retired(&txn, kind, std::slice::from_ref(&existing.key), actor).await?;
    txn.commit().await?;
    Ok(())
}

repository_with_reader! {
    /// Enrollments and enrollment groups: reads (through [`EnrollmentReader`]) and writes.
    Enrollments,
    /// Enrollments and enrollment groups, read-only.
    EnrollmentReader
}

impl<'a> EnrollmentReader<'a> {
    /// Every enrollment group whose attestation is `attestation_type`, by key (for symmetric-key devices, whose
    /// group is known only by the key their token verifies with).
    pub async fn groups_by_attestation(self, attestation_type: &str) -> Result<Vec<EnrollmentRecord>, StoreError> {
        use crate::entity::enrollment_group::{Column, Entity};
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
        Entity::find()
            .filter(Column::AttestationType.eq(attestation_type))
            .order_by_asc(Column::Key)
            .all(&self.store.read)
            .await?
            .into_iter()
            .map(|m| GroupTable::to_record(self.store.vault(), m))
            .collect()
    }

    /// Reads one enrollment of `kind` by its canonical key. Individual enrollments, which every authenticating
    /// device reads, go through the [`DeviceReader`](crate::reader::DeviceReader) (in batches, on a kept
    /// connection).
    pub async fn get(self, kind: EnrollmentKind, key: &str) -> Result<EnrollmentRecord, StoreError> {
        let found = match kind {
            EnrollmentKind::Individual => self.store.devices.individual(key).await?,
            EnrollmentKind::Group => GroupTable::find(&self.store.read, self.store.vault(), key).await?,
        };
        found.ok_or(StoreError::NotFound)
    }

    /// Lists enrollments in key order, `limit` at a time, after the continuation token `after`.
    pub async fn list(
        self,
        kind: EnrollmentKind,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Page<EnrollmentRecord>, StoreError> {
        let limit = limit.clamp(1, crate::MAX_PAGE_SIZE);
        let rows = with_table!(kind, T => T::page_after(&self.store.read, self.store.vault(), after, limit + 1).await?);
        Ok(Page::from_overfetch(rows, limit, |r| r.key.clone()))
    }
}

impl<'a> Enrollments<'a> {
    /// Creates or replaces an enrollment under `precondition`; returns the record and whether it was created. A
    /// `disabled` enrollment revokes the certificates of the devices it covers, in the same transaction.
    pub async fn put(
        self,
        kind: EnrollmentKind,
        enrollment: NormalizedEnrollment,
        precondition: &Precondition,
        actor: &Actor,
    ) -> Result<(EnrollmentRecord, bool), StoreError> {
        let result = with_table!(kind, T => put::<T>(self.store, kind, enrollment, precondition, actor).await);
        self.note_group_change(kind, result.is_ok());
        result
    }

    /// Deletes an enrollment under `precondition`, revoking the certificates of the devices it covers in the same
    /// transaction.
    pub async fn delete(
        self,
        kind: EnrollmentKind,
        key: &str,
        precondition: &Precondition,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let result = with_table!(kind, T => delete::<T>(self.store, kind, key, precondition, actor).await);
        self.note_group_change(kind, result.is_ok());
        result
    }

    /// Begins a bulk call: one transaction, which the caller applies a part at a time ([`BulkCall::apply`], which
    /// returns the part's items that failed, by index, in order) and commits ([`BulkCall::commit`]).
    ///
    /// Items that fail are reported and skipped; the others are applied together. A database failure applies none.
    /// Deleted and `disabled` items revoke the certificates of the devices they cover, as single writes do.
    pub async fn begin_bulk(
        self,
        kind: EnrollmentKind,
        mode: BulkMode,
        actor: &'a Actor,
    ) -> Result<BulkCall<'a>, StoreError> {
        BulkCall::begin(self.store, kind, mode, actor).await
    }

    fn note_group_change(self, kind: EnrollmentKind, changed: bool) {
        if changed && kind == EnrollmentKind::Group {
            self.store.note_reference_change();
        }
    }

    /// Records that `actor` read the keys of an enrollment (the `attestationmechanism` call).
    pub async fn audit_key_read(
        self,
        kind: EnrollmentKind,
        record: &EnrollmentRecord,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let change = Change {
            action: "readAttestationMechanism",
            resource_type: resource_type(kind),
            resource_id: &record.id,
            etag_before: Some(&record.etag),
            etag_after: Some(&record.etag),
            detail: None,
        };
        audit::record(&self.store.db, actor, &[change]).await
    }
}
