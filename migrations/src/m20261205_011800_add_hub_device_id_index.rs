//! One device id per hub (issue 16): a unique index on a registration's hub and lower-cased device id, so that two
//! registrations can never hold the same identity on a hub and overwrite each other's credential there.
//!
//! Case-insensitive, as registration ids are: hubs differ in how they compare device ids (Mosquitto's usernames
//! are case-sensitive, a webhook receiver's store may not be), and two ids that differ only in case are a mistake
//! or an attack either way. Registrations without a hub or a device id (failed, disabled) are not indexed, as
//! both engines leave rows with a NULL out of a unique index. The device id leads, so that the admin API's check
//! of a hub's reserved ids against every registration uses the index too.
//!
//! An install that already holds such a collision (possible before this change) cannot take the index: the
//! migration then fails and names the registrations, and the operator deletes one of each pair
//! (`DELETE /registrations/{id}` with the previous version) before migrating again. Nothing is changed silently.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, Statement};

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261205_011800_add_hub_device_id_index"
    }
}

/// The index's name: the store recognises a violation of it by this name.
const INDEX: &str = "registrations_by_device_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        let collisions = db
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT assigned_hub, lower(device_id) AS device_id, COUNT(*) AS holders, MIN(registration_id) AS one, \
                 MAX(registration_id) AS other FROM registrations WHERE assigned_hub IS NOT NULL AND device_id IS NOT \
                 NULL GROUP BY assigned_hub, lower(device_id) HAVING COUNT(*) > 1 ORDER BY assigned_hub, \
                 lower(device_id) LIMIT 20",
            ))
            .await?;
        if !collisions.is_empty() {
            let mut lines = Vec::new();
            for row in &collisions {
                let hub: String = row.try_get("", "assigned_hub")?;
                let device_id: String = row.try_get("", "device_id")?;
                let one: String = row.try_get("", "one")?;
                let other: String = row.try_get("", "other")?;
                lines.push(format!("device id {device_id:?} on hub {hub}: registrations {one:?} and {other:?}"));
            }
            return Err(DbErr::Migration(format!(
                "registrations share a device id on a hub, where each would overwrite the other's identity; delete \
                 all but one registration of each (DELETE /registrations/{{id}}) and migrate again: {}",
                lines.join("; ")
            )));
        }
        db.execute_unprepared(&format!(
            "CREATE UNIQUE INDEX {INDEX} ON registrations (lower(device_id), assigned_hub)"
        ))
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(&format!("DROP INDEX {INDEX}")).await?;
        Ok(())
    }
}
