//! Linked hubs: the set allocation chooses from.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, TransactionTrait};
use serde_json::Value;

use crate::audit::{self, Change};
use crate::entity::hub::{self, Column, Entity};
use crate::secrets::Vault;
use crate::{Actor, Precondition, StoreError};

/// A hub to create or replace.
#[derive(Debug, Clone, PartialEq)]
pub struct HubInput {
    /// The canonical host name.
    pub host_name: String,
    /// The adapter kind.
    pub kind: String,
    /// 1-1000.
    pub allocation_weight: u32,
    /// Whether allocation may pick it for enrollments that list no hubs.
    pub apply_allocation_policy: bool,
    /// Adapter settings (kind-specific).
    pub settings: Value,
}

/// A hub as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct HubRecord {
    /// The hub's settings.
    pub hub: HubInput,
    /// The current etag.
    pub etag: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

fn to_record(vault: &Vault, m: hub::Model) -> Result<HubRecord, StoreError> {
    let settings = vault.open_settings(&m.host_name, m.settings)?;
    Ok(HubRecord {
        hub: HubInput {
            host_name: m.host_name,
            kind: m.kind,
            allocation_weight: u32::try_from(m.allocation_weight).unwrap_or(1),
            apply_allocation_policy: m.apply_allocation_policy,
            settings,
        },
        etag: m.etag,
        created_at: m.created_at,
        updated_at: m.updated_at,
    })
}

fn to_active(vault: &Vault, r: &HubRecord) -> Result<hub::ActiveModel, StoreError> {
    Ok(hub::ActiveModel {
        host_name: Set(r.hub.host_name.clone()),
        kind: Set(r.hub.kind.clone()),
        allocation_weight: Set(i32::try_from(r.hub.allocation_weight).unwrap_or(i32::MAX)),
        apply_allocation_policy: Set(r.hub.apply_allocation_policy),
        settings: Set(vault.seal_settings(&r.hub.host_name, &r.hub.settings)?),
        etag: Set(r.etag.clone()),
        created_at: Set(r.created_at),
        updated_at: Set(r.updated_at),
    })
}

async fn find(db: &impl ConnectionTrait, vault: &Vault, host_name: &str) -> Result<Option<HubRecord>, StoreError> {
    crate::unique(Entity::find_by_id(host_name.to_owned()), db).await?.map(|m| to_record(vault, m)).transpose()
}

repository_with_reader! {
    /// The linked hubs: reads (through [`HubReader`]) and writes.
    Hubs,
    /// The linked hubs, read-only.
    HubReader
}

impl<'a> HubReader<'a> {
    /// Reads one hub.
    pub async fn get(self, host_name: &str) -> Result<HubRecord, StoreError> {
        find(&self.store.read, self.store.vault(), host_name).await?.ok_or(StoreError::NotFound)
    }

    /// Lists every hub, by host name.
    pub async fn list(self) -> Result<Vec<HubRecord>, StoreError> {
        Entity::find()
            .order_by_asc(Column::HostName)
            .all(&self.store.read)
            .await?
            .into_iter()
            .map(|m| to_record(self.store.vault(), m))
            .collect()
    }

    /// Which of `host_names` are not linked hubs.
    pub async fn unknown(self, host_names: &[String]) -> Result<Vec<String>, StoreError> {
        if host_names.is_empty() {
            return Ok(Vec::new());
        }
        let known: Vec<String> = Entity::find()
            .filter(Column::HostName.is_in(host_names.iter().cloned()))
            .all(&self.store.read)
            .await?
            .into_iter()
            .map(|m| m.host_name)
            .collect();
        Ok(host_names.iter().filter(|h| !known.contains(h)).cloned().collect())
    }
}

impl<'a> Hubs<'a> {
    /// Creates or replaces a hub under `precondition`; returns the record and whether it was created.
    pub async fn put(
        self,
        input: HubInput,
        precondition: &Precondition,
        actor: &Actor,
    ) -> Result<(HubRecord, bool), StoreError> {
        let txn = self.store.db.begin().await?;
        let existing = find(&txn, self.store.vault(), &input.host_name).await?;
        if !precondition.allows(existing.as_ref().map(|e| e.etag.as_str())) {
            return Err(StoreError::PreconditionFailed);
        }
        let now = crate::now();
        let created_at = existing.as_ref().map_or(now, |e| e.created_at);
        let record = HubRecord { hub: input, etag: crate::new_etag(), created_at, updated_at: now };
        match &existing {
            None => {
                Entity::insert(to_active(self.store.vault(), &record)?)
                    .exec_without_returning(&txn)
                    .await
                    .map_err(|e| StoreError::from_insert(e, "the hub"))?;
            }
            Some(old) => {
                let result = Entity::update_many()
                    .set(to_active(self.store.vault(), &record)?)
                    .filter(Column::HostName.eq(record.hub.host_name.clone()))
                    .filter(Column::Etag.eq(old.etag.clone()))
                    .exec(&txn)
                    .await?;
                if result.rows_affected != 1 {
                    return Err(StoreError::Conflict("the hub changed concurrently; retry".into()));
                }
            }
        }
        let change = Change {
            action: if existing.is_some() { "update" } else { "create" },
            resource_type: "hub",
            resource_id: &record.hub.host_name,
            etag_before: existing.as_ref().map(|e| e.etag.as_str()),
            etag_after: Some(&record.etag),
            detail: None,
        };
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        self.store.note_reference_change();
        Ok((record, existing.is_none()))
    }

    /// Deletes a hub under `precondition`.
    pub async fn delete(self, host_name: &str, precondition: &Precondition, actor: &Actor) -> Result<(), StoreError> {
        let txn = self.store.db.begin().await?;
        let existing = find(&txn, self.store.vault(), host_name).await?.ok_or(StoreError::NotFound)?;
        if !precondition.allows(Some(&existing.etag)) {
            return Err(StoreError::PreconditionFailed);
        }
        let result = Entity::delete_many()
            .filter(Column::HostName.eq(host_name))
            .filter(Column::Etag.eq(existing.etag.clone()))
            .exec(&txn)
            .await?;
        if result.rows_affected != 1 {
            return Err(StoreError::Conflict("the hub changed concurrently; retry".into()));
        }
        let change = Change::deletion("hub", host_name, &existing.etag);
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        self.store.note_reference_change();
        Ok(())
    }
}
