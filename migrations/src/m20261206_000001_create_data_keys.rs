//! Secrets at rest (issue #17): the data key that seals every secret the database holds, stored wrapped by the
//! master key, so that every replica reads the same data key (`crates/envelope/src/lib.rs`).
//!
//! One row per data key slot (one today, `data`): the data key's id (every envelope it seals names it), the key
//! wrapped by the master key; `master_key_id` names the master key that wrapped it (a start
//! with another master key says which one it needs); `rotated_at` is when `zerotouch rotate-master-key` last
//! rewrapped it. The secrets themselves stay in their columns, sealed in place on the first start with a master key.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000001_create_data_keys"
    }
}

#[derive(DeriveIden)]
enum DataKeys {
    Table,
    Slot,
    KeyId,
    WrappedKey,
    MasterKeyId,
    CreatedAt,
    RotatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DataKeys::Table)
                    .col(string(DataKeys::Slot).primary_key())
                    .col(string(DataKeys::KeyId))
                    .col(text(DataKeys::WrappedKey))
                    .col(string(DataKeys::MasterKeyId))
                    .col(timestamp_with_time_zone(DataKeys::CreatedAt))
                    .col(timestamp_with_time_zone_null(DataKeys::RotatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(DataKeys::Table).to_owned()).await
    }
}
