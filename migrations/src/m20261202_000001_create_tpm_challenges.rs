//! TPM attestation (issue #7): the HMAC key of each device's pending TPM challenge (`docs/protocol/device-api.md` §3.1), and
//! which TPM a registration id of a TPM enrollment group belongs to.
//!
//! The first leg of a TPM registration answers an activation blob carrying a fresh key; the second leg, which any
//! replica may serve, signs its SAS token with that key. So the key lives here, one row per registration id (a new
//! first leg replaces it, which retires the tokens of the old one), with the EK and SRK it was made for (the hub key's
//! blob goes to the same TPM), its expiry, and when a register used it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000001_create_tpm_challenges"
    }
}

#[derive(DeriveIden)]
enum TpmChallenges {
    Table,
    RegistrationKey,
    Id,
    EnrollmentKind,
    EnrollmentKey,
    HmacKey,
    EndorsementKey,
    StorageRootKey,
    ExpiresAt,
    UsedAt,
    CreatedAt,
}

/// A TPM group admits any TPM of its manufacturers under any registration id; the first TPM to register an id
/// keeps it (`tpm_bindings`), so that another TPM of the group cannot take over that device's registration.
#[derive(DeriveIden)]
enum TpmBindings {
    Table,
    RegistrationKey,
    EndorsementKey,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TpmChallenges::Table)
                    .col(string(TpmChallenges::RegistrationKey).primary_key())
                    .col(string(TpmChallenges::Id))
                    .col(string(TpmChallenges::EnrollmentKind))
                    .col(string(TpmChallenges::EnrollmentKey))
                    .col(text(TpmChallenges::HmacKey))
                    .col(text(TpmChallenges::EndorsementKey))
                    .col(text(TpmChallenges::StorageRootKey))
                    .col(timestamp_with_time_zone(TpmChallenges::ExpiresAt))
                    .col(timestamp_with_time_zone_null(TpmChallenges::UsedAt))
                    .col(timestamp_with_time_zone(TpmChallenges::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("tpm_challenges_by_expiry")
                    .table(TpmChallenges::Table)
                    .col(TpmChallenges::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(TpmBindings::Table)
                    .col(string(TpmBindings::RegistrationKey).primary_key())
                    .col(text(TpmBindings::EndorsementKey))
                    .col(timestamp_with_time_zone(TpmBindings::CreatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(TpmBindings::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(TpmChallenges::Table).to_owned()).await
    }
}
