//! `registrations_by_group` holds only the registrations made through an enrollment group.
//!
//! The index serves the queries that look registrations up by their group (a group's registrations page by page,
//! the registrations of groups whose hubs or certificates change). A registration of an individual enrollment has no
//! group, and its entry (a NULL and its key) served none of them, yet every first registration of such a device
//! wrote one, on a leaf chosen by its key. Both databases use a partial index for a lookup by group, since an
//! equality on the group key implies that it is not NULL.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261209_000001_index_only_group_registrations"
    }
}

/// The index's name, as `m20261128_000001_create_core_tables` named it.
const INDEX: &str = "registrations_by_group";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&format!("DROP INDEX {INDEX}")).await?;
        db.execute_unprepared(&format!(
            "CREATE INDEX {INDEX} ON registrations (enrollment_group_key, key) WHERE enrollment_group_key IS NOT NULL"
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&format!("DROP INDEX {INDEX}")).await?;
        db.execute_unprepared(&format!("CREATE INDEX {INDEX} ON registrations (enrollment_group_key, key)")).await?;
        Ok(())
    }
}
