//! Which TPM holds which registration id of a TPM enrollment group (`tpm_bindings`): the first TPM to register an
//! id keeps it, so that another TPM of the same manufacturer cannot take it over. A binding goes with its
//! registration (deleting the registration releases it, in the same transaction) or is released by an admin.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait};

use crate::audit::{self, Change};
use crate::entity::tpm_binding::{Column, Entity, Model};
use crate::{Actor, Page, StoreError};

/// A registration id bound to a TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmBindingRecord {
    /// The canonical registration id.
    pub registration_key: String,
    /// The EK of the TPM that holds it (base64 `TPM2B_PUBLIC`).
    pub endorsement_key: String,
    /// When the TPM first registered the id.
    pub created_at: DateTime<Utc>,
}

fn to_record(m: Model) -> TpmBindingRecord {
    TpmBindingRecord {
        registration_key: m.registration_key,
        endorsement_key: m.endorsement_key,
        created_at: m.created_at,
    }
}

/// Deletes the binding of `registration_key`, if any, in the caller's transaction; returns whether there was one.
pub(crate) async fn release(db: &impl ConnectionTrait, registration_key: &str) -> Result<bool, StoreError> {
    let result = Entity::delete_many().filter(Column::RegistrationKey.eq(registration_key)).exec(db).await?;
    Ok(result.rows_affected == 1)
}

repository_with_reader! {
    /// The TPM bindings of TPM enrollment groups: reads (through [`TpmBindingReader`]) and releases.
    TpmBindings,
    /// The TPM bindings, read-only.
    TpmBindingReader
}

impl<'a> TpmBindingReader<'a> {
    /// The bindings by registration id, `limit` at a time, after the continuation token `after` (the last id of
    /// the previous page).
    pub async fn list(self, after: Option<&str>, limit: u64) -> Result<Page<TpmBindingRecord>, StoreError> {
        let mut query = Entity::find();
        if let Some(after) = after {
            query = query.filter(Column::RegistrationKey.gt(after));
        }
        let limit = limit.clamp(1, crate::MAX_PAGE_SIZE);
        let rows = query.order_by_asc(Column::RegistrationKey).limit(limit + 1).all(&self.store.read).await?;
        let rows: Vec<TpmBindingRecord> = rows.into_iter().map(to_record).collect();
        Ok(Page::from_overfetch(rows, limit, |r| r.registration_key.clone()))
    }
}

impl<'a> TpmBindings<'a> {
    /// Releases the binding of `registration_key` (the next TPM of its group to register the id gets it), audited
    /// as `actor`; [`StoreError::NotFound`] if there is none.
    pub async fn release(self, registration_key: &str, actor: &Actor) -> Result<(), StoreError> {
        let txn = self.store.db.begin().await?;
        if !release(&txn, registration_key).await? {
            return Err(StoreError::NotFound);
        }
        let change = Change {
            action: "release",
            resource_type: "tpmBinding",
            resource_id: registration_key,
            etag_before: None,
            etag_after: None,
            detail: None,
        };
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        Ok(())
    }
}
