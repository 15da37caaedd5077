//! Bulk calls: many enrollments created, updated or deleted in one transaction, each item that cannot apply
//! reported by its index and skipped.

use std::collections::HashMap;

use sea_orm::TransactionTrait;
use zerotouch_wire::bulk::BulkMode;
use zerotouch_wire::enrollment::{EnrollmentKind, NormalizedEnrollment};

use super::table::EnrollmentTable;
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

pub(super) async fn bulk<T: EnrollmentTable>(
    store: &Store,
    kind: EnrollmentKind,
    mode: BulkMode,
    items: Vec<BulkItem>,
    actor: &Actor,
) -> Result<Vec<(usize, BulkFailure)>, StoreError> {
    let txn = store.db.begin().await?;
    let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
    let mut existing: HashMap<String, EnrollmentRecord> =
        T::find_many(&txn, store.vault(), &keys).await?.into_iter().map(|r| (r.key.clone(), r)).collect();
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

    T::insert_many(&txn, store.vault(), &inserts).await?;
    for (old, record) in &replaces {
        if !T::replace_if(&txn, store.vault(), record, &old.etag).await? {
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
    let rekeyed: Vec<String> =
        replaces.iter().filter(|(old, record)| changes_device_keys(old, record)).map(|(_, r)| r.key.clone()).collect();
    queue_key_changes(&txn, kind, &rekeyed).await?;
    txn.commit().await?;
    failures.sort_by_key(|(index, _)| *index);
    Ok(failures)
}
