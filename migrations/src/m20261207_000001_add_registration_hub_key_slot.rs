//! Which enrollment key a device's hub identity carries (issue #17): `primary` or `secondary` when its hub
//! credential is its symmetric key (the key it authenticated with when it registered), NULL otherwise (a
//! certificate, a TPM hub key, no hub). When the enrollment's keys change, the device's hub identity is updated with
//! the new key of the same slot; a hub with one password per identity (Mosquitto) gets that key.
//!
//! Registrations made before this migration read NULL, and key changes then leave their hub identity alone until
//! the device registers again (which records the slot): nothing records which key those devices used.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000001_add_registration_hub_key_slot"
    }
}

#[derive(DeriveIden)]
enum Registrations {
    Table,
    HubKeySlot,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Registrations::Table)
                    .add_column(string_null(Registrations::HubKeySlot))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(Registrations::Table).drop_column(Registrations::HubKeySlot).to_owned())
            .await
    }
}
