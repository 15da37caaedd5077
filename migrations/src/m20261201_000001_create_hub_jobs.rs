//! The hub outbox (issue #5): one row per change a downstream hub still has to learn (create or update a device
//! identity, disable it, delete it), written in the same transaction as the change that causes it and deleted
//! once the hub has it.
//!
//! Jobs of one device on one hub run in creation order (`hub_jobs_by_device`); workers claim due jobs by
//! `next_attempt_at` (`hub_jobs_due`) with a lease (`claimed_until`), so a job whose worker died is taken again
//! once the lease runs out.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000001_create_hub_jobs"
    }
}

#[derive(DeriveIden)]
enum HubJobs {
    Table,
    Id,
    Hub,
    DeviceId,
    RegistrationKey,
    Action,
    Document,
    OperationId,
    RegistrationEtag,
    PreviousHub,
    PreviousDeviceId,
    Attempts,
    LastError,
    NextAttemptAt,
    ClaimedUntil,
    DeadlineAt,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(HubJobs::Table)
                    .col(string(HubJobs::Id).primary_key())
                    .col(string(HubJobs::Hub))
                    .col(string(HubJobs::DeviceId))
                    .col(string(HubJobs::RegistrationKey))
                    .col(string(HubJobs::Action))
                    .col(json_null(HubJobs::Document))
                    .col(string_null(HubJobs::OperationId))
                    .col(string_null(HubJobs::RegistrationEtag))
                    .col(string_null(HubJobs::PreviousHub))
                    .col(string_null(HubJobs::PreviousDeviceId))
                    .col(integer(HubJobs::Attempts))
                    .col(text_null(HubJobs::LastError))
                    .col(timestamp_with_time_zone(HubJobs::NextAttemptAt))
                    .col(timestamp_with_time_zone_null(HubJobs::ClaimedUntil))
                    .col(timestamp_with_time_zone_null(HubJobs::DeadlineAt))
                    .col(timestamp_with_time_zone(HubJobs::CreatedAt))
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            ("hub_jobs_by_device", vec![HubJobs::Hub, HubJobs::DeviceId, HubJobs::CreatedAt]),
            ("hub_jobs_due", vec![HubJobs::NextAttemptAt]),
            ("hub_jobs_by_registration", vec![HubJobs::RegistrationKey]),
        ] {
            let mut index = Index::create();
            index.name(name).table(HubJobs::Table);
            for column in columns {
                index.col(column);
            }
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(HubJobs::Table).to_owned()).await
    }
}
