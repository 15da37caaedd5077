//! Individual enrollments and enrollment groups: two tables of one shape, one repository.
//!
//! [`EnrollmentTable`] is implemented for both tables by a macro, and every operation is written once over it.
//! Writes are guarded by the etag read in the same transaction (`UPDATE ... WHERE key = ? AND etag = ?`), so a
//! concurrent writer on another connection or replica turns into a conflict rather than a lost update.
//!
//! Retiring an enrollment (deleting it, or writing it `disabled`, alone or in bulk) revokes the certificates of
//! the devices it covers in the same transaction ([`revoke_retired`]): for an individual enrollment the
//! registration with its id, for a group every registration made through it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, FromQueryResult, TransactionTrait};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use zerotouch_wire::SymmetricKey;
use zerotouch_wire::bulk::BulkMode;
use zerotouch_wire::enrollment::{EnrollmentKind, NormalizedEnrollment, ProvisioningStatus};

use crate::audit::{self, Change};
use crate::batch::Batches;
use crate::certificate::{self, Revoking};
use crate::held::{HeldConnection, Sql};
use crate::hub_job::{self, HubAction, Retiring};
use crate::{Actor, Page, Precondition, Store, StoreError};

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

/// The table operations every enrollment operation is written over.
pub(crate) trait EnrollmentTable {
    async fn find(db: &impl ConnectionTrait, key: &str) -> Result<Option<EnrollmentRecord>, StoreError>;
    async fn find_many(db: &impl ConnectionTrait, keys: &[String]) -> Result<Vec<EnrollmentRecord>, StoreError>;
    async fn page_after(
        db: &impl ConnectionTrait,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<EnrollmentRecord>, StoreError>;
    async fn insert_many(db: &impl ConnectionTrait, records: &[EnrollmentRecord]) -> Result<(), StoreError>;
    /// Replaces the row whose key and etag are `expected_etag`; returns whether it did.
    async fn replace_if(
        db: &impl ConnectionTrait,
        record: &EnrollmentRecord,
        expected_etag: &str,
    ) -> Result<bool, StoreError>;
    /// Deletes the row whose etag is `expected_etag`; returns whether it did.
    async fn delete_if(db: &impl ConnectionTrait, key: &str, expected_etag: &str) -> Result<bool, StoreError>;
}

macro_rules! enrollment_table {
    ($table:ident, $module:ident) => {
        pub(crate) struct $table;

        impl $table {
            fn to_record(m: crate::entity::$module::Model) -> Result<EnrollmentRecord, StoreError> {
                let key = |text: Option<String>| {
                    text.map(|t| SymmetricKey::from_base64(&t))
                        .transpose()
                        .map_err(|e| StoreError::Corrupt(format!("symmetric key of {:?}: {e}", m.key)))
                };
                Ok(EnrollmentRecord {
                    primary_key: key(m.primary_symmetric_key.clone())?,
                    secondary_key: key(m.secondary_symmetric_key.clone())?,
                    key: m.key,
                    id: m.id,
                    attestation_type: m.attestation_type,
                    provisioning_status: m.provisioning_status,
                    document: m.document,
                    etag: m.etag,
                    created_at: m.created_at,
                    updated_at: m.updated_at,
                })
            }

            fn to_active(r: &EnrollmentRecord) -> crate::entity::$module::ActiveModel {
                use sea_orm::ActiveValue::Set;
                crate::entity::$module::ActiveModel {
                    key: Set(r.key.clone()),
                    id: Set(r.id.clone()),
                    attestation_type: Set(r.attestation_type.clone()),
                    provisioning_status: Set(r.provisioning_status.clone()),
                    document: Set(r.document.clone()),
                    primary_symmetric_key: Set(r.primary_key.as_ref().map(|k| k.to_base64().to_string())),
                    secondary_symmetric_key: Set(r.secondary_key.as_ref().map(|k| k.to_base64().to_string())),
                    etag: Set(r.etag.clone()),
                    created_at: Set(r.created_at),
                    updated_at: Set(r.updated_at),
                }
            }
        }

        impl EnrollmentTable for $table {
            async fn find(db: &impl ConnectionTrait, key: &str) -> Result<Option<EnrollmentRecord>, StoreError> {
                use sea_orm::EntityTrait;
                crate::unique(crate::entity::$module::Entity::find_by_id(key.to_owned()), db)
                    .await?
                    .map(Self::to_record)
                    .transpose()
            }

            async fn find_many(
                db: &impl ConnectionTrait,
                keys: &[String],
            ) -> Result<Vec<EnrollmentRecord>, StoreError> {
                use crate::entity::$module::{Column, Entity};
                use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
                let mut out = Vec::with_capacity(keys.len());
                for chunk in keys.chunks(1000) {
                    let rows = Entity::find().filter(Column::Key.is_in(chunk.iter().cloned())).all(db).await?;
                    for row in rows {
                        out.push(Self::to_record(row)?);
                    }
                }
                Ok(out)
            }

            async fn page_after(
                db: &impl ConnectionTrait,
                after: Option<&str>,
                limit: u64,
            ) -> Result<Vec<EnrollmentRecord>, StoreError> {
                use crate::entity::$module::{Column, Entity};
                use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
                let mut query = Entity::find();
                if let Some(after) = after {
                    query = query.filter(Column::Key.gt(after));
                }
                query.order_by_asc(Column::Key).limit(limit).all(db).await?.into_iter().map(Self::to_record).collect()
            }

            async fn insert_many(db: &impl ConnectionTrait, records: &[EnrollmentRecord]) -> Result<(), StoreError> {
                use sea_orm::EntityTrait;
                // 10 columns per row: 1,000 rows (10,000 parameters) stay below SQLite's (32,766) and PostgreSQL's
                // (65,535) parameter limits.
                for chunk in records.chunks(1000) {
                    crate::entity::$module::Entity::insert_many(chunk.iter().map(Self::to_active))
                        .exec_without_returning(db)
                        .await
                        .map_err(|e| StoreError::from_insert(e, "an enrollment"))?;
                }
                Ok(())
            }

            async fn replace_if(
                db: &impl ConnectionTrait,
                record: &EnrollmentRecord,
                expected_etag: &str,
            ) -> Result<bool, StoreError> {
                use crate::entity::$module::{Column, Entity};
                use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
                let result = Entity::update_many()
                    .set(Self::to_active(record))
                    .filter(Column::Key.eq(record.key.clone()))
                    .filter(Column::Etag.eq(expected_etag))
                    .exec(db)
                    .await?;
                Ok(result.rows_affected == 1)
            }

            async fn delete_if(db: &impl ConnectionTrait, key: &str, expected_etag: &str) -> Result<bool, StoreError> {
                use crate::entity::$module::{Column, Entity};
                use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
                let result = Entity::delete_many()
                    .filter(Column::Key.eq(key))
                    .filter(Column::Etag.eq(expected_etag))
                    .exec(db)
                    .await?;
                Ok(result.rows_affected == 1)
            }
        }
    };
}

enrollment_table!(IndividualTable, individual_enrollment);
enrollment_table!(GroupTable, enrollment_group);

/// Runs `$body` with `$t` bound to the table of `$kind`.
macro_rules! with_table {
    ($kind:expr, $t:ident => $body:expr) => {
        match $kind {
            EnrollmentKind::Individual => {
                type $t = IndividualTable;
                $body
            }
            EnrollmentKind::Group => {
                type $t = GroupTable;
                $body
            }
        }
    };
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

/// One item of a bulk call, already checked.
#[derive(Debug, Clone)]
pub struct BulkItem {
    /// The item's position in the request.
    pub index: usize,
    /// The canonical id.
    pub key: String,
    /// The document (for create and update modes; `None` for delete).
    pub enrollment: Option<NormalizedEnrollment>,
    /// The item's `etag` (for `updateIfMatchETag`, and `delete` when given).
    pub etag: Option<String>,
}

/// Why one bulk item was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkFailure {
    /// The id already exists (create) or appears twice in the call.
    Conflict(String),
    /// The id does not exist.
    NotFound,
    /// The item's etag does not match.
    PreconditionFailed,
}

async fn put<T: EnrollmentTable>(
    store: &Store,
    kind: EnrollmentKind,
    enrollment: NormalizedEnrollment,
    precondition: &Precondition,
    actor: &Actor,
) -> Result<(EnrollmentRecord, bool), StoreError> {
    let txn = store.db.begin().await?;
    let existing = T::find(&txn, &enrollment.key).await?;
    if !precondition.allows(existing.as_ref().map(|e| e.etag.as_str())) {
        return Err(StoreError::PreconditionFailed);
    }
    let now = crate::now();
    let (record, old_etag) = match existing {
        None => {
            let record = EnrollmentRecord::new(enrollment, crate::new_etag(), now, now);
            T::insert_many(&txn, std::slice::from_ref(&record)).await?;
            (record, None)
        }
        Some(old) => {
            let mut enrollment = enrollment;
            enrollment.keep_existing_keys(old.primary_key.as_ref(), old.secondary_key.as_ref());
            let record = EnrollmentRecord::new(enrollment, crate::new_etag(), old.created_at, now);
            if !T::replace_if(&txn, &record, &old.etag).await? {
                return Err(StoreError::Conflict(format!("{} changed concurrently; retry", kind.noun())));
            }
            (record, Some(old.etag))
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
    let existing = T::find(&txn, key).await?.ok_or(StoreError::NotFound)?;
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

async fn bulk<T: EnrollmentTable>(
    store: &Store,
    kind: EnrollmentKind,
    mode: BulkMode,
    items: Vec<BulkItem>,
    actor: &Actor,
) -> Result<Vec<(usize, BulkFailure)>, StoreError> {
    let txn = store.db.begin().await?;
    let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
    let mut existing: HashMap<String, EnrollmentRecord> =
        T::find_many(&txn, &keys).await?.into_iter().map(|r| (r.key.clone(), r)).collect();
    let now = crate::now();
    let mut failures = Vec::new();
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut inserts = Vec::new();
    let mut replaces = Vec::new();
    let mut deletes = Vec::new();
    for item in items {
        if !seen.insert(item.key.clone()) {
            failures.push((item.index, BulkFailure::Conflict("the id appears more than once in this call".into())));
            continue;
        }
        let old = existing.remove(&item.key);
        let etag_matches = |old: &EnrollmentRecord| item.etag.as_deref().is_none_or(|e| e == old.etag);
        match (mode, old, item.enrollment) {
            (BulkMode::Delete, None, _) => failures.push((item.index, BulkFailure::NotFound)),
            (BulkMode::Delete, Some(old), _) if !etag_matches(&old) => {
                failures.push((item.index, BulkFailure::PreconditionFailed))
            }
            (BulkMode::Delete, Some(old), _) => deletes.push(old),
            (_, _, None) => failures.push((item.index, BulkFailure::NotFound)),
            (BulkMode::Create, Some(_), Some(_)) => {
                failures.push((item.index, BulkFailure::Conflict(format!("the {} already exists", kind.noun()))))
            }
            (BulkMode::UpdateIfMatchETag, None, Some(_)) => {
                failures.push((item.index, BulkFailure::PreconditionFailed))
            }
            (BulkMode::UpdateIfMatchETag, Some(old), Some(_)) if item.etag.as_deref() != Some(old.etag.as_str()) => {
                failures.push((item.index, BulkFailure::PreconditionFailed))
            }
            (_, None, Some(new)) => inserts.push(EnrollmentRecord::new(new, crate::new_etag(), now, now)),
            (_, Some(old), Some(mut new)) => {
                new.keep_existing_keys(old.primary_key.as_ref(), old.secondary_key.as_ref());
                let record = EnrollmentRecord::new(new, crate::new_etag(), old.created_at, now);
                replaces.push((old, record));
            }
        }
    }

    T::insert_many(&txn, &inserts).await?;
    for (old, record) in &replaces {
        if !T::replace_if(&txn, record, &old.etag).await? {
            return Err(StoreError::Conflict(format!("{} {:?} changed concurrently; retry", kind.noun(), old.id)));
        }
    }
    for old in &deletes {
        if !T::delete_if(&txn, &old.key, &old.etag).await? {
            return Err(StoreError::Conflict(format!("{} {:?} changed concurrently; retry", kind.noun(), old.id)));
        }
    }
    let resource_type = resource_type(kind);
    let changes: Vec<Change<'_>> = inserts
        .iter()
        .map(|r| Change {
            action: "create",
            resource_type,
            resource_id: &r.id,
            etag_before: None,
            etag_after: Some(&r.etag),
            detail: None,
        })
        .chain(replaces.iter().map(|(old, r)| Change {
            action: "update",
            resource_type,
            resource_id: &r.id,
            etag_before: Some(&old.etag),
            etag_after: Some(&r.etag),
            detail: None,
        }))
        .chain(deletes.iter().map(|old| Change {
            action: "delete",
            resource_type,
            resource_id: &old.id,
            etag_before: Some(&old.etag),
            etag_after: None,
            detail: None,
        }))
        .collect();
    audit::record(&txn, actor, &changes).await?;
    let retired: Vec<String> = inserts
        .iter()
        .chain(replaces.iter().map(|(_, r)| r))
        .filter(|r| is_disabled(r))
        .chain(&deletes)
        .map(|r| r.key.clone())
        .collect();
    revoke_retired(&txn, kind, &retired, actor).await?;
    txn.commit().await?;
    failures.sort_by_key(|(index, _)| *index);
    Ok(failures)
}

/// Most keys one [`IndividualReader`] query carries.
const MAX_LOOKUPS: usize = 256;

/// Individual enrollments by key: the keys arrive as one JSON array of strings.
const INDIVIDUALS_BY_KEY: Sql = Sql {
    postgres: "SELECT * FROM individual_enrollments WHERE key = ANY(ARRAY(SELECT jsonb_array_elements_text($1)))",
    sqlite: "SELECT * FROM individual_enrollments WHERE key IN (SELECT value FROM json_each(?1))",
};

/// A device's lookup of its individual enrollment, waiting for the reader.
struct Lookup {
    key: String,
    reply: oneshot::Sender<Result<Option<EnrollmentRecord>, StoreError>>,
}

/// Reads the individual enrollments of authenticating devices: every device reads one, the busiest read of the
/// service. The keys asked for while a query is in flight (and, while busy, within a millisecond more: see
/// [`Batches`]) go together in the next query, on a connection the reader holds ([`HeldConnection`]): one round trip
/// for a batch of devices instead of two for each.
#[derive(Debug, Clone)]
pub(crate) struct IndividualReader {
    queue: mpsc::Sender<Lookup>,
}

impl IndividualReader {
    /// Starts the reader task on the current runtime, reading from `pool` (keeping a connection of it if `keep`,
    /// see [`HeldConnection::new`]); it ends when the last store holding it is dropped or the pool is closed.
    pub(crate) fn start(pool: sea_orm::DatabaseConnection, keep: bool) -> Self {
        let (queue, receiver) = mpsc::channel::<Lookup>(4 * MAX_LOOKUPS);
        tokio::spawn(async move {
            let mut connection = HeldConnection::new(pool, keep);
            let closed = connection.closed();
            tokio::pin!(closed);
            let mut batches = Batches::new(receiver, MAX_LOOKUPS);
            let mut batch = Vec::with_capacity(MAX_LOOKUPS);
            while batches.next(&mut batch, &mut closed).await {
                let keys: Value = batch.iter().map(|lookup| Value::from(lookup.key.as_str())).collect();
                let found = connection.fetch_all(INDIVIDUALS_BY_KEY, &keys).await.and_then(|rows| {
                    rows.iter()
                        .map(|row| {
                            let model = crate::entity::individual_enrollment::Model::from_query_result(row, "")?;
                            Ok((model.key.clone(), model))
                        })
                        .collect::<Result<HashMap<_, _>, StoreError>>()
                });
                batches.done();
                match found {
                    Ok(found) => {
                        for lookup in batch.drain(..) {
                            let record = found.get(&lookup.key).cloned().map(IndividualTable::to_record).transpose();
                            let _ = lookup.reply.send(record);
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        for lookup in batch.drain(..) {
                            let _ = lookup.reply.send(Err(StoreError::Unavailable(message.clone())));
                        }
                    }
                }
            }
        });
        Self { queue }
    }
}

impl IndividualReader {
    /// The individual enrollment `key`, if any, read together with the other lookups queued meanwhile.
    async fn read(&self, key: &str) -> Result<Option<EnrollmentRecord>, StoreError> {
        let stopped = || StoreError::Unavailable("the enrollment reader has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.queue.send(Lookup { key: key.to_owned(), reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
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
            .map(GroupTable::to_record)
            .collect()
    }

    /// Reads one enrollment of `kind` by its canonical key. Individual enrollments, which every authenticating
    /// device reads, go through the [`IndividualReader`] (in batches, on a kept connection).
    pub async fn get(self, kind: EnrollmentKind, key: &str) -> Result<EnrollmentRecord, StoreError> {
        let found = match kind {
            EnrollmentKind::Individual => self.store.individuals.read(key).await?,
            EnrollmentKind::Group => GroupTable::find(&self.store.read, key).await?,
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
        let rows = with_table!(kind, T => T::page_after(&self.store.read, after, limit + 1).await?);
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

    /// Applies a bulk call in one transaction; returns the items that failed, by index, in order.
    ///
    /// Items that fail are reported and skipped; the others are applied together. A database failure applies none.
    /// Deleted and `disabled` items revoke the certificates of the devices they cover, as single writes do.
    pub async fn bulk(
        self,
        kind: EnrollmentKind,
        mode: BulkMode,
        items: Vec<BulkItem>,
        actor: &Actor,
    ) -> Result<Vec<(usize, BulkFailure)>, StoreError> {
        let result = with_table!(kind, T => bulk::<T>(self.store, kind, mode, items, actor).await);
        self.note_group_change(kind, result.is_ok());
        result
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
