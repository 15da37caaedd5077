//! The two enrollment tables (individual enrollments and enrollment groups) behind one trait, [`EnrollmentTable`],
//! implemented for both by a macro, so that every enrollment operation is written once, generic over the table.

use sea_orm::ConnectionTrait;
use zerotouch_wire::SymmetricKey;

use super::EnrollmentRecord;
use crate::StoreError;
use crate::secrets::Vault;

/// The table operations every enrollment operation is written over.
pub(crate) trait EnrollmentTable {
    async fn find(db: &impl ConnectionTrait, vault: &Vault, key: &str) -> Result<Option<EnrollmentRecord>, StoreError>;
    async fn find_many(
        db: &impl ConnectionTrait,
        vault: &Vault,
        keys: &[String],
    ) -> Result<Vec<EnrollmentRecord>, StoreError>;
    async fn page_after(
        db: &impl ConnectionTrait,
        vault: &Vault,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<EnrollmentRecord>, StoreError>;
    async fn insert_many(
        db: &impl ConnectionTrait,
        vault: &Vault,
        records: &[EnrollmentRecord],
    ) -> Result<(), StoreError>;
    /// Replaces the row whose key and etag are `expected_etag`; returns whether it did.
    async fn replace_if(
        db: &impl ConnectionTrait,
        vault: &Vault,
        record: &EnrollmentRecord,
        expected_etag: &str,
    ) -> Result<bool, StoreError>;
    /// Deletes the row whose etag is `expected_etag`; returns whether it did.
    async fn delete_if(db: &impl ConnectionTrait, key: &str, expected_etag: &str) -> Result<bool, StoreError>;
}

macro_rules! enrollment_table {
    ($table:ident, $module:ident, $name:literal) => {
        pub(crate) struct $table;

        impl $table {
            /// The table's name, which every sealed key of it is bound to (`crate::secrets`).
            const NAME: &str = $name;

            pub(crate) fn to_record(
                vault: &Vault,
                m: crate::entity::$module::Model,
            ) -> Result<EnrollmentRecord, StoreError> {
                let key = |column: &str, text: &Option<String>| -> Result<Option<SymmetricKey>, StoreError> {
                    text.as_deref().map(|t| vault.open_key(Self::NAME, column, &m.key, t)).transpose()
                };
                let primary_key = key("primary_symmetric_key", &m.primary_symmetric_key)?;
                let secondary_key = key("secondary_symmetric_key", &m.secondary_symmetric_key)?;
                let document = vault.open_enrollment_document(Self::NAME, &m.key, m.document)?;
                Ok(EnrollmentRecord {
                    primary_key,
                    secondary_key,
                    key: m.key,
                    id: m.id,
                    attestation_type: m.attestation_type,
                    provisioning_status: m.provisioning_status,
                    document,
                    etag: m.etag,
                    created_at: m.created_at,
                    updated_at: m.updated_at,
                })
            }

            fn to_active(
                vault: &Vault,
                r: &EnrollmentRecord,
            ) -> Result<crate::entity::$module::ActiveModel, StoreError> {
                use sea_orm::ActiveValue::Set;
                let seal = |column: &str, key: &Option<SymmetricKey>| -> Result<Option<String>, StoreError> {
                    key.as_ref().map(|k| vault.seal_key(Self::NAME, column, &r.key, k)).transpose()
                };
                Ok(crate::entity::$module::ActiveModel {
                    key: Set(r.key.clone()),
                    id: Set(r.id.clone()),
                    attestation_type: Set(r.attestation_type.clone()),
                    provisioning_status: Set(r.provisioning_status.clone()),
                    document: Set(vault.seal_enrollment_document(Self::NAME, &r.key, &r.document)?),
                    primary_symmetric_key: Set(seal("primary_symmetric_key", &r.primary_key)?),
                    secondary_symmetric_key: Set(seal("secondary_symmetric_key", &r.secondary_key)?),
                    etag: Set(r.etag.clone()),
                    created_at: Set(r.created_at),
                    updated_at: Set(r.updated_at),
                })
            }
        }

        impl EnrollmentTable for $table {
            async fn find(
                db: &impl ConnectionTrait,
                vault: &Vault,
                key: &str,
            ) -> Result<Option<EnrollmentRecord>, StoreError> {
                use sea_orm::EntityTrait;
                crate::unique(crate::entity::$module::Entity::find_by_id(key.to_owned()), db)
                    .await?
                    .map(|m| Self::to_record(vault, m))
                    .transpose()
            }

            async fn find_many(
                db: &impl ConnectionTrait,
                vault: &Vault,
                keys: &[String],
            ) -> Result<Vec<EnrollmentRecord>, StoreError> {
                use crate::entity::$module::{Column, Entity};
                use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
                let mut out = Vec::with_capacity(keys.len());
                for chunk in keys.chunks(1000) {
                    let rows = Entity::find().filter(Column::Key.is_in(chunk.iter().cloned())).all(db).await?;
                    for row in rows {
                        out.push(Self::to_record(vault, row)?);
                    }
                }
                Ok(out)
            }

            async fn page_after(
                db: &impl ConnectionTrait,
                vault: &Vault,
                after: Option<&str>,
                limit: u64,
            ) -> Result<Vec<EnrollmentRecord>, StoreError> {
                use crate::entity::$module::{Column, Entity};
                use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
                let mut query = Entity::find();
                if let Some(after) = after {
                    query = query.filter(Column::Key.gt(after));
                }
                query
                    .order_by_asc(Column::Key)
                    .limit(limit)
                    .all(db)
                    .await?
                    .into_iter()
                    .map(|m| Self::to_record(vault, m))
                    .collect()
            }

            async fn insert_many(
                db: &impl ConnectionTrait,
                vault: &Vault,
                records: &[EnrollmentRecord],
            ) -> Result<(), StoreError> {
                use sea_orm::EntityTrait;
                // 10 columns per row: 1,000 rows (10,000 parameters) stay below SQLite's (32,766) and PostgreSQL's
                // (65,535) parameter limits.
                for chunk in records.chunks(1000) {
                    let rows = chunk.iter().map(|r| Self::to_active(vault, r)).collect::<Result<Vec<_>, _>>()?;
                    crate::entity::$module::Entity::insert_many(rows)
                        .exec_without_returning(db)
                        .await
                        .map_err(|e| StoreError::from_insert(e, "an enrollment"))?;
                }
                Ok(())
            }

            async fn replace_if(
                db: &impl ConnectionTrait,
                vault: &Vault,
                record: &EnrollmentRecord,
                expected_etag: &str,
            ) -> Result<bool, StoreError> {
                use crate::entity::$module::{Column, Entity};
                use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
                let result = Entity::update_many()
                    .set(Self::to_active(vault, record)?)
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

enrollment_table!(IndividualTable, individual_enrollment, "individual_enrollments");
enrollment_table!(GroupTable, enrollment_group, "enrollment_groups");

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

pub(super) use with_table;
