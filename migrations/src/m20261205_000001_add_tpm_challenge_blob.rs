//! The activation blob of each pending TPM challenge, so that a repeated first leg (the device retrying, or
//! anyone who knows its public EK) is answered with the pending challenge instead of replacing it (issue #16).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261205_000001_add_tpm_challenge_blob"
    }
}

#[derive(DeriveIden)]
enum TpmChallenges {
    Table,
    Blob,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(TpmChallenges::Table).add_column(text_null(TpmChallenges::Blob)).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(TpmChallenges::Table).drop_column(TpmChallenges::Blob).to_owned())
            .await
    }
}
