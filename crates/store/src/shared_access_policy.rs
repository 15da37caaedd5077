//! Shared access policies (issue #19): named pairs of keys with Azure DPS's rights, whose keys sign the
//! `SharedAccessSignature` tokens the admin API accepts beside JWTs. The keys are sealed at rest like every other
//! secret (`secrets.rs`), bound to the table, the column and the policy.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, TransactionTrait};
use zerotouch_wire::SymmetricKey;
use zerotouch_wire::policy::{AccessRights, NormalizedPolicy};

use crate::audit::{self, Change};
use crate::entity::shared_access_policy::{self, Column, Entity};
use crate::secrets::Vault;
use crate::{Actor, Precondition, StoreError};

const TABLE: &str = "shared_access_policies";
const AUDIT_TYPE: &str = "sharedAccessPolicy";

/// A policy as stored, its keys opened.
#[derive(Debug, Clone)]
pub struct SharedAccessPolicyRecord {
    /// The lower-cased name it is stored and found under.
    pub key: String,
    /// The name as spelled.
    pub name: String,
    /// Its rights.
    pub rights: AccessRights,
    /// The primary key.
    pub primary_key: SymmetricKey,
    /// The secondary key.
    pub secondary_key: SymmetricKey,
    /// The current etag.
    pub etag: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

fn to_record(vault: &Vault, m: shared_access_policy::Model) -> Result<SharedAccessPolicyRecord, StoreError> {
    let rights = AccessRights::parse(&m.rights)
        .map_err(|e| StoreError::Corrupt(format!("{TABLE}.rights of {:?}: {e}", m.key)))?;
    Ok(SharedAccessPolicyRecord {
        primary_key: vault.open_key(TABLE, "primary_key", &m.key, &m.primary_key)?,
        secondary_key: vault.open_key(TABLE, "secondary_key", &m.key, &m.secondary_key)?,
        key: m.key,
        name: m.name,
        rights,
        etag: m.etag,
        created_at: m.created_at,
        updated_at: m.updated_at,
    })
}

fn to_active(vault: &Vault, r: &SharedAccessPolicyRecord) -> Result<shared_access_policy::ActiveModel, StoreError> {
    Ok(shared_access_policy::ActiveModel {
        key: Set(r.key.clone()),
        name: Set(r.name.clone()),
        rights: Set(r.rights.to_string()),
        primary_key: Set(vault.seal_key(TABLE, "primary_key", &r.key, &r.primary_key)?),
        secondary_key: Set(vault.seal_key(TABLE, "secondary_key", &r.key, &r.secondary_key)?),
        etag: Set(r.etag.clone()),
        created_at: Set(r.created_at),
        updated_at: Set(r.updated_at),
    })
}

async fn find(
    db: &impl ConnectionTrait,
    vault: &Vault,
    key: &str,
) -> Result<Option<SharedAccessPolicyRecord>, StoreError> {
    crate::unique(Entity::find_by_id(key.to_owned()), db).await?.map(|m| to_record(vault, m)).transpose()
}

repository_with_reader! {
    /// Shared access policies: reads (through [`SharedAccessPolicyReader`]) and writes.
    SharedAccessPolicies,
    /// Shared access policies, read-only (keys included: only owners and the SAS verifier get one).
    SharedAccessPolicyReader
}

impl<'a> SharedAccessPolicyReader<'a> {
    /// Reads one policy by its lower-cased name.
    pub async fn get(self, key: &str) -> Result<SharedAccessPolicyRecord, StoreError> {
        find(&self.store.read, self.store.vault(), key).await?.ok_or(StoreError::NotFound)
    }

    /// Lists every policy, by name.
    pub async fn list(self) -> Result<Vec<SharedAccessPolicyRecord>, StoreError> {
        Entity::find()
            .order_by_asc(Column::Key)
            .all(&self.store.read)
            .await?
            .into_iter()
            .map(|m| to_record(self.store.vault(), m))
            .collect()
    }
}

impl<'a> SharedAccessPolicies<'a> {
    /// Creates or replaces a policy under `precondition`; a key the document did not give is kept from the
    /// existing policy, else generated. Returns the record and whether it was created.
    pub async fn put(
        self,
        policy: NormalizedPolicy,
        precondition: &Precondition,
        actor: &Actor,
    ) -> Result<(SharedAccessPolicyRecord, bool), StoreError> {
        let key = policy.name.key().into_owned();
        let txn = self.store.db.begin().await?;
        let existing = find(&txn, self.store.vault(), &key).await?;
        if !precondition.allows(existing.as_ref().map(|e| e.etag.as_str())) {
            return Err(StoreError::PreconditionFailed);
        }
        let now = crate::now();
        let keep = |given: Option<SymmetricKey>, old: Option<&SymmetricKey>| {
            given.or_else(|| old.cloned()).unwrap_or_else(SymmetricKey::generate)
        };
        let record = SharedAccessPolicyRecord {
            primary_key: keep(policy.primary_key, existing.as_ref().map(|e| &e.primary_key)),
            secondary_key: keep(policy.secondary_key, existing.as_ref().map(|e| &e.secondary_key)),
            key: key.clone(),
            name: policy.name.as_str().to_owned(),
            rights: policy.rights,
            etag: crate::new_etag(),
            created_at: existing.as_ref().map_or(now, |e| e.created_at),
            updated_at: now,
        };
        match &existing {
            None => {
                Entity::insert(to_active(self.store.vault(), &record)?)
                    .exec_without_returning(&txn)
                    .await
                    .map_err(|e| StoreError::from_insert(e, "the shared access policy"))?;
            }
            Some(old) => {
                let result = Entity::update_many()
                    .set(to_active(self.store.vault(), &record)?)
                    .filter(Column::Key.eq(key.clone()))
                    .filter(Column::Etag.eq(old.etag.clone()))
                    .exec(&txn)
                    .await?;
                if result.rows_affected != 1 {
                    return Err(StoreError::Conflict("the shared access policy changed concurrently; retry".into()));
                }
            }
        }
        let detail = format!("rights: {}", record.rights);
        let change = Change {
            action: if existing.is_some() { "update" } else { "create" },
            resource_type: AUDIT_TYPE,
            resource_id: &record.name,
            etag_before: existing.as_ref().map(|e| e.etag.as_str()),
            etag_after: Some(&record.etag),
            detail: Some(&detail),
        };
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        Ok((record, existing.is_none()))
    }

    /// Deletes a policy under `precondition`; tokens it signed stop working at once.
    pub async fn delete(self, key: &str, precondition: &Precondition, actor: &Actor) -> Result<(), StoreError> {
        let txn = self.store.db.begin().await?;
        let existing = find(&txn, self.store.vault(), key).await?.ok_or(StoreError::NotFound)?;
        if !precondition.allows(Some(&existing.etag)) {
            return Err(StoreError::PreconditionFailed);
        }
        let result = Entity::delete_many()
            .filter(Column::Key.eq(key))
            .filter(Column::Etag.eq(existing.etag.clone()))
            .exec(&txn)
            .await?;
        if result.rows_affected != 1 {
            return Err(StoreError::Conflict("the shared access policy changed concurrently; retry".into()));
        }
        let change = Change::deletion(AUDIT_TYPE, &existing.name, &existing.etag);
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Records that `actor` read the policy's keys.
    pub async fn audit_key_read(self, record: &SharedAccessPolicyRecord, actor: &Actor) -> Result<(), StoreError> {
        let change = Change {
            action: "readKeys",
            resource_type: AUDIT_TYPE,
            resource_id: &record.name,
            etag_before: Some(&record.etag),
            etag_after: Some(&record.etag),
            detail: None,
        };
        audit::record(&self.store.db, actor, &[change]).await
    }
}
