//! Device registration states (one per registration id) and their operations.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde_json::Value;

use crate::audit::{self, Change};
use crate::entity::registration::{self, Column, Entity};
use crate::{Actor, Page, Precondition, Store, StoreError};

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
    /// The current etag.
    pub etag: String,
    /// When the device first registered.
    pub created_at: DateTime<Utc>,
    /// When the state last changed.
    pub updated_at: DateTime<Utc>,
}

fn to_record(m: registration::Model) -> RegistrationRecord {
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
        etag: Set(r.etag.clone()),
        created_at: Set(r.created_at),
        updated_at: Set(r.updated_at),
    }
}

async fn find(db: &impl ConnectionTrait, key: &str) -> Result<Option<RegistrationRecord>, StoreError> {
    Ok(Entity::find_by_id(key.to_owned()).one(db).await?.map(to_record))
}

impl Store {
    /// Reads one registration state.
    pub async fn registration(&self, key: &str) -> Result<RegistrationRecord, StoreError> {
        find(&self.db, key).await?.ok_or(StoreError::NotFound)
    }

    /// Writes a registration state (insert or replace by key); returns it with a fresh etag.
    pub async fn save_registration(&self, mut record: RegistrationRecord) -> Result<RegistrationRecord, StoreError> {
        let txn = self.db.begin().await?;
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

    /// Deletes a registration state (and its operations) under `precondition`.
    pub async fn delete_registration(
        &self,
        key: &str,
        precondition: &Precondition,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        let existing = find(&txn, key).await?.ok_or(StoreError::NotFound)?;
        if !precondition.allows(Some(&existing.etag)) {
            return Err(StoreError::PreconditionFailed);
        }
        crate::entity::operation::Entity::delete_many()
            .filter(crate::entity::operation::Column::RegistrationKey.eq(key))
            .exec(&txn)
            .await?;
        let result = Entity::delete_many()
            .filter(Column::Key.eq(key))
            .filter(Column::Etag.eq(existing.etag.clone()))
            .exec(&txn)
            .await?;
        if result.rows_affected != 1 {
            return Err(StoreError::Conflict("the registration changed concurrently; retry".into()));
        }
        let change = Change {
            action: "delete",
            resource_type: "registration",
            resource_id: &existing.registration_id,
            etag_before: Some(&existing.etag),
            etag_after: None,
        };
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Lists the registrations of an enrollment group in key order, `limit` at a time.
    pub async fn list_group_registrations(
        &self,
        group_key: &str,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Page<RegistrationRecord>, StoreError> {
        let limit = limit.clamp(1, crate::MAX_PAGE_SIZE);
        let mut query = Entity::find().filter(Column::EnrollmentGroupKey.eq(group_key));
        if let Some(after) = after {
            query = query.filter(Column::Key.gt(after));
        }
        let rows: Vec<RegistrationRecord> =
            query.order_by_asc(Column::Key).limit(limit + 1).all(&self.db).await?.into_iter().map(to_record).collect();
        Ok(Page::from_overfetch(rows, limit, |r| r.key.clone()))
    }
}
