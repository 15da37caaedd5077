//! The audit log: appended in the same transaction as the change it records, read back in pages.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use crate::entity::audit_event::{self, Column, Entity};
use crate::{Actor, Page, StoreError};

/// One change to record: what happened to which resource, and its etag before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change<'a> {
    pub(crate) action: &'a str,
    pub(crate) resource_type: &'a str,
    pub(crate) resource_id: &'a str,
    pub(crate) etag_before: Option<&'a str>,
    pub(crate) etag_after: Option<&'a str>,
    pub(crate) detail: Option<&'a str>,
}

impl<'a> Change<'a> {
    /// The deletion of `resource_id`, whose etag was `etag_before`.
    pub(crate) fn deletion(resource_type: &'a str, resource_id: &'a str, etag_before: &'a str) -> Self {
        Change {
            action: "delete",
            resource_type,
            resource_id,
            etag_before: Some(etag_before),
            etag_after: None,
            detail: None,
        }
    }
}

/// An audit event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Increasing id.
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// Who did it.
    pub actor: Actor,
    /// What was done.
    pub action: String,
    /// The kind of resource.
    pub resource_type: String,
    /// The resource's id.
    pub resource_id: String,
    /// The etag before.
    pub etag_before: Option<String>,
    /// The etag after.
    pub etag_after: Option<String>,
    /// Why (for device attempts: the outcome or the reason of a refusal).
    pub detail: Option<String>,
}

/// Which audit events to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only events at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only events before this time.
    pub to: Option<DateTime<Utc>>,
}

fn active(actor: &Actor, at: DateTime<Utc>, change: &Change<'_>) -> audit_event::ActiveModel {
    audit_event::ActiveModel {
        id: NotSet,
        at: Set(at),
        actor: Set(actor.subject.clone()),
        role: Set(actor.role.clone()),
        action: Set(change.action.to_owned()),
        resource_type: Set(change.resource_type.to_owned()),
        resource_id: Set(change.resource_id.to_owned()),
        etag_before: Set(change.etag_before.map(str::to_owned)),
        etag_after: Set(change.etag_after.map(str::to_owned)),
        detail: Set(change.detail.map(str::to_owned)),
    }
}

/// Appends events for `changes`, all made by `actor`.
pub(crate) async fn record(db: &impl ConnectionTrait, actor: &Actor, changes: &[Change<'_>]) -> Result<(), StoreError> {
    let changes: Vec<(&Actor, Change<'_>)> = changes.iter().map(|c| (actor, c.clone())).collect();
    record_by(db, &changes).await
}

/// Appends events for `changes`, each with its actor, in batches the databases' parameter limits allow.
pub(crate) async fn record_by(db: &impl ConnectionTrait, changes: &[(&Actor, Change<'_>)]) -> Result<(), StoreError> {
    let at = crate::now();
    for chunk in changes.chunks(1000) {
        Entity::insert_many(chunk.iter().map(|(actor, c)| active(actor, at, c))).exec_without_returning(db).await?;
    }
    Ok(())
}

repository! {
    /// The audit log.
    AuditLog
}

impl<'a> AuditLog<'a> {
    /// Records one use of a credential named by `resource_type` and `resource_id` (a shared access policy), with
    /// the request it authorized in `detail`: every use is audited, reads included.
    pub async fn record_use(
        self,
        actor: &Actor,
        resource_type: &str,
        resource_id: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let change = Change {
            action: "use",
            resource_type,
            resource_id,
            etag_before: None,
            etag_after: None,
            detail: Some(detail),
        };
        record(&self.store.db, actor, &[change]).await
    }

    /// Deletes the events recorded before `cutoff` (`--audit-retention`); returns how many.
    pub async fn delete_before(self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let deleted = Entity::delete_many().filter(Column::At.lt(cutoff)).exec(&self.store.db).await?;
        Ok(deleted.rows_affected)
    }

    /// Lists audit events in the order they happened, `limit` at a time, starting after `after`.
    pub async fn list(
        self,
        filter: &AuditFilter,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Page<AuditRecord>, StoreError> {
        let after: i64 = match after {
            Some(token) => token.parse().map_err(|_| StoreError::Corrupt("continuation token".into()))?,
            None => 0,
        };
        let mut query = Entity::find().filter(Column::Id.gt(after));
        if let Some(from) = filter.from {
            query = query.filter(Column::At.gte(from));
        }
        if let Some(to) = filter.to {
            query = query.filter(Column::At.lt(to));
        }
        let limit = limit.clamp(1, crate::MAX_PAGE_SIZE);
        let rows = query.order_by_asc(Column::Id).limit(limit + 1).all(&self.store.read).await?;
        let page = Page::from_overfetch(rows, limit, |r| r.id.to_string());
        let items = page
            .items
            .into_iter()
            .map(|m| AuditRecord {
                id: m.id,
                at: m.at,
                actor: Actor { subject: m.actor, role: m.role },
                action: m.action,
                resource_type: m.resource_type,
                resource_id: m.resource_id,
                etag_before: m.etag_before,
                etag_after: m.etag_after,
                detail: m.detail,
            })
            .collect();
        Ok(Page { items, next: page.next })
    }
}
