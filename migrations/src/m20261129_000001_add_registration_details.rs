//! Device registration details: the reason of an audited attempt, the twin a hub should apply, the result an
//! operation answers with, and an index to expire operations by age.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261129_000001_add_registration_details"
    }
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Detail,
}

#[derive(DeriveIden)]
enum Registrations {
    Table,
    InitialTwin,
}

#[derive(DeriveIden)]
enum Operations {
    Table,
    CreatedAt,
    Result,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(AuditEvents::Table).add_column(text_null(AuditEvents::Detail)).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter().table(Registrations::Table).add_column(json_null(Registrations::InitialTwin)).to_owned(),
            )
            .await?;
        manager
            .alter_table(Table::alter().table(Operations::Table).add_column(json_null(Operations::Result)).to_owned())
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("operations_by_age")
                    .table(Operations::Table)
                    .col(Operations::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("operations_by_age").table(Operations::Table).to_owned()).await?;
        manager.alter_table(Table::alter().table(Operations::Table).drop_column(Operations::Result).to_owned()).await?;
        manager
            .alter_table(Table::alter().table(Registrations::Table).drop_column(Registrations::InitialTwin).to_owned())
            .await?;
        manager.alter_table(Table::alter().table(AuditEvents::Table).drop_column(AuditEvents::Detail).to_owned()).await
    }
}
