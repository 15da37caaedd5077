//! The core tables: enrollments, enrollment groups, hubs, registrations, operations, audit events.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261128_000001_create_core_tables"
    }
}

#[derive(DeriveIden)]
enum IndividualEnrollments {
    Table,
}

#[derive(DeriveIden)]
enum EnrollmentGroups {
    Table,
}

/// Columns shared by both enrollment tables (they have the same shape; see `store::enrollment`).
#[derive(DeriveIden)]
enum Enrollment {
    Key,
    Id,
    AttestationType,
    ProvisioningStatus,
    Document,
    PrimarySymmetricKey,
    SecondarySymmetricKey,
    Etag,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Hubs {
    Table,
    HostName,
    Kind,
    AllocationWeight,
    ApplyAllocationPolicy,
    Settings,
    Etag,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Registrations {
    Table,
    Key,
    RegistrationId,
    EnrollmentGroupKey,
    DeviceId,
    AssignedHub,
    Status,
    Substatus,
    ErrorCode,
    ErrorMessage,
    Payload,
    Etag,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Operations {
    Table,
    Id,
    RegistrationKey,
    Status,
    ErrorCode,
    ErrorMessage,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    At,
    Actor,
    Role,
    Action,
    ResourceType,
    ResourceId,
    EtagBefore,
    EtagAfter,
}

fn enrollment_table(table: impl IntoIden) -> TableCreateStatement {
    Table::create()
        .table(table)
        .col(string(Enrollment::Key).primary_key())
        .col(string(Enrollment::Id))
        .col(string(Enrollment::AttestationType))
        .col(string(Enrollment::ProvisioningStatus))
        .col(json(Enrollment::Document))
        .col(text_null(Enrollment::PrimarySymmetricKey))
        .col(text_null(Enrollment::SecondarySymmetricKey))
        .col(string(Enrollment::Etag))
        .col(timestamp_with_time_zone(Enrollment::CreatedAt))
        .col(timestamp_with_time_zone(Enrollment::UpdatedAt))
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.create_table(enrollment_table(IndividualEnrollments::Table)).await?;
        manager.create_table(enrollment_table(EnrollmentGroups::Table)).await?;

        manager
            .create_table(
                Table::create()
                    .table(Hubs::Table)
                    .col(string(Hubs::HostName).primary_key())
                    .col(string(Hubs::Kind))
                    .col(integer(Hubs::AllocationWeight))
                    .col(boolean(Hubs::ApplyAllocationPolicy))
                    .col(json(Hubs::Settings))
                    .col(string(Hubs::Etag))
                    .col(timestamp_with_time_zone(Hubs::CreatedAt))
                    .col(timestamp_with_time_zone(Hubs::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Registrations::Table)
                    .col(string(Registrations::Key).primary_key())
                    .col(string(Registrations::RegistrationId))
                    .col(string_null(Registrations::EnrollmentGroupKey))
                    .col(string_null(Registrations::DeviceId))
                    .col(string_null(Registrations::AssignedHub))
                    .col(string(Registrations::Status))
                    .col(string_null(Registrations::Substatus))
                    .col(integer_null(Registrations::ErrorCode))
                    .col(text_null(Registrations::ErrorMessage))
                    .col(json_null(Registrations::Payload))
                    .col(string(Registrations::Etag))
                    .col(timestamp_with_time_zone(Registrations::CreatedAt))
                    .col(timestamp_with_time_zone(Registrations::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("registrations_by_group")
                    .table(Registrations::Table)
                    .col(Registrations::EnrollmentGroupKey)
                    .col(Registrations::Key)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Operations::Table)
                    .col(string(Operations::Id).primary_key())
                    .col(string(Operations::RegistrationKey))
                    .col(string(Operations::Status))
                    .col(integer_null(Operations::ErrorCode))
                    .col(text_null(Operations::ErrorMessage))
                    .col(timestamp_with_time_zone(Operations::CreatedAt))
                    .col(timestamp_with_time_zone(Operations::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Operations::Table, Operations::RegistrationKey)
                            .to(Registrations::Table, Registrations::Key)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("operations_by_registration")
                    .table(Operations::Table)
                    .col(Operations::RegistrationKey)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(big_integer(AuditEvents::Id).primary_key().auto_increment())
                    .col(timestamp_with_time_zone(AuditEvents::At))
                    .col(string(AuditEvents::Actor))
                    .col(string(AuditEvents::Role))
                    .col(string(AuditEvents::Action))
                    .col(string(AuditEvents::ResourceType))
                    .col(string(AuditEvents::ResourceId))
                    .col(string_null(AuditEvents::EtagBefore))
                    .col(string_null(AuditEvents::EtagAfter))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("audit_events_by_time").table(AuditEvents::Table).col(AuditEvents::At).to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AuditEvents::Table.into_iden(),
            Operations::Table.into_iden(),
            Registrations::Table.into_iden(),
            Hubs::Table.into_iden(),
            EnrollmentGroups::Table.into_iden(),
            IndividualEnrollments::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
