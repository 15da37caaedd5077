//! Bulk calls: many enrollments created, updated or deleted in one transaction, each item that cannot apply
//! reported by its index and skipped, applied a part at a time ([`BulkCall`]).

use std::collections::{HashMap, HashSet};

use sea_orm::{DatabaseTransaction, TransactionTrait};
use zerotouch_wire::bulk::BulkMode;
use zerotouch_wire::enrollment::{EnrollmentKind, NormalizedEnrollment};

use super::table::{EnrollmentTable, GroupTable, IndividualTable, with_table};
use super::{EnrollmentRecord, changes_device_keys, is_disabled, queue_key_changes, resource_type, revoke_retired};
use crate::audit::{self, Change};
use crate::{Actor, Store, StoreError};

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

/// A bulk call under way: one transaction, into which the call's items are applied a part at a time, so that a
/// caller holds only one part's parsed documents (a call of 10,000 documents whole would hold tens of megabytes;
/// BENCHMARKS.md, issue #21). [`BulkCall::commit`] applies the call whole; dropping it applies none of it.
///
/// Items are decided in the order they are applied: the first item with an id wins, a later one in the same call
/// is a conflict, whichever part it is in.
pub struct BulkCall<'a> {
    store: &'a Store,
    txn: DatabaseTransaction,
    kind: EnrollmentKind,
    mode: BulkMode,
    actor: &'a Actor,
    seen: HashSet<String>,
}

impl std::fmt::Debug for BulkCall<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkCall").field("kind", &self.kind).field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl<'a> BulkCall<'a> {
    pub(super) async fn begin(
        store: &'a Store,
        kind: EnrollmentKind,
        mode: BulkMode,
        actor: &'a Actor,
    ) -> Result<Self, StoreError> {
        let txn = store.db.begin().await?;
        Ok(Self { store, txn, kind, mode, actor, seen: HashSet::new() })
    }

    /// Applies the next part of the call; returns the call and the part's items that cannot apply, by index, in
    /// order (they stand only if the call is committed). An error ends the call: it is dropped, and none of it
    /// applies.
    pub async fn apply(mut self, items: Vec<BulkItem>) -> Result<(Self, Vec<(usize, BulkFailure)>), StoreError> {
        let failures = with_table!(self.kind, T => self.apply_to::<T>(items).await)?;
        Ok((self, failures))
    }

    /// Commits the call.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.txn.commit().await?;
        super::Enrollments::new(self.store).note_group_change(self.kind, true);
        Ok(())
    }

    async fn apply_to<T: EnrollmentTable>(
        &mut self,
        items: Vec<BulkItem>,
    ) -> Result<Vec<(usize, BulkFailure)>, StoreError> {
        let (store, txn, kind, mode) = (self.store, &self.txn, self.kind, self.mode);
        let keys: Vec<String> = items.iter().filter(|i| !self.seen.contains(&i.key)).map(|i| i.key.clone()).collect();
        let mut existing: HashMap<String, EnrollmentRecord> =
            T::find_many(txn, store.vault(), &keys).await?.into_iter().map(|r| (r.key.clone(), r)).collect();
        let now = crate::now();
        let mut failures = Vec::new();
        let mut inserts = Vec::new();
        let mut replaces = Vec::new();
        let mut deletes = Vec::new();
        for item in items {
            if !self.seen.insert(item.key.clone()) {
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
                (BulkMode::UpdateIfMatchETag, Some(old), Some(_))
                    if item.etag.as_deref() != Some(old.etag.as_str()) =>
                {
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

        T::insert_many(txn, store.vault(), &inserts).await?;
        for (old, record) in &replaces {
            if !T::replace_if(txn, store.vault(), record, &old.etag).await? {
                return Err(StoreError::Conflict(format!("{} {:?} changed concurrently; retry", kind.noun(), old.id)));
            }
        }
        for old in &deletes {
            if !T::delete_if(txn, &old.key, &old.etag).await? {
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
        audit::record(txn, self.actor, &changes).await?;
        let retired: Vec<String> = inserts
            .iter()
            .chain(replaces.iter().map(|(_, r)| r))
            .filter(|r| is_disabled(r))
            .chain(&deletes)
            .map(|r| r.key.clone())
            .collect();
        revoke_retired(txn, kind, &retired, self.actor).await?;
        let rekeyed: Vec<String> = replaces
            .iter()
            .filter(|(old, record)| changes_device_keys(old, record))
            .map(|(_, r)| r.key.clone())
            .collect();
        queue_key_changes(txn, kind, &rekeyed).await?;
        failures.sort_by_key(|(index, _)| *index);
        Ok(failures)
    }
}
