//! Shared access policies (issue #19): the named keys that sign `SharedAccessSignature` tokens for the admin API,
//! with Azure DPS's rights (`docs/protocol/service-api.md` §1).
//!
//! One row per policy: `key` is the lower-cased name (names compare case-insensitively), `name` as spelled, `rights`
//! as Azure writes them (`EnrollmentRead, EnrollmentWrite`), the two keys sealed under the data key like every other
//! secret (`crates/store/src/secrets.rs`), etag and timestamps. A new table: no database holds clear policy keys
//! from an earlier version, so nothing needs sealing in place.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261208_000001_create_shared_access_policies"
    }
}

#[derive(DeriveIden)]
enum SharedAccessPolicies {
    Table,
    Key,
    Name,
    Rights,
    PrimaryKey,
    SecondaryKey,
    Etag,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SharedAccessPolicies::Table)
                    .col(string(SharedAccessPolicies::Key).primary_key())
                    .col(string(SharedAccessPolicies::Name))
                    .col(string(SharedAccessPolicies::Rights))
                    .col(text(SharedAccessPolicies::PrimaryKey))
                    .col(text(SharedAccessPolicies::SecondaryKey))
                    .col(string(SharedAccessPolicies::Etag))
                    .col(timestamp_with_time_zone(SharedAccessPolicies::CreatedAt))
                    .col(timestamp_with_time_zone(SharedAccessPolicies::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(SharedAccessPolicies::Table).to_owned()).await
    }
}
