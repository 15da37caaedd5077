//! What the outbox holds: each hub's backlog (for metrics and the admin API), and, for tests, the jobs of one
//! registration.

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect, Statement};

use super::HubJobs;
#[cfg(feature = "test-support")]
use super::{HubJobRecord, to_record};
use crate::StoreError;
use crate::entity::hub_job::{Column, Entity};

/// One hub's backlog.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HubBacklog {
    /// Jobs waiting (including ones being delivered).
    pub depth: u64,
    /// When the oldest waiting job was written.
    pub oldest: Option<DateTime<Utc>>,
    /// Jobs that failed at least once.
    pub retrying: u64,
    /// The last error of the most recently failed job.
    pub last_error: Option<String>,
}

#[derive(Debug, FromQueryResult)]
struct BacklogRow {
    hub: String,
    depth: i64,
    oldest: Option<DateTime<Utc>>,
    retrying: i64,
}

impl<'a> HubJobs<'a> {
    /// The backlog of every hub that has one, by hub.
    pub async fn backlogs(self) -> Result<std::collections::BTreeMap<String, HubBacklog>, StoreError> {
        let backend = self.store.read.get_database_backend();
        let rows = BacklogRow::find_by_statement(Statement::from_string(
            backend,
            "SELECT hub, COUNT(*) AS depth, MIN(created_at) AS oldest, \
             CAST(SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END) AS BIGINT) AS retrying FROM hub_jobs GROUP BY hub",
        ))
        .all(&self.store.read)
        .await?;
        let mut backlogs = std::collections::BTreeMap::new();
        for row in rows {
            let last_error = Entity::find()
                .select_only()
                .column(Column::LastError)
                .filter(Column::Hub.eq(row.hub.clone()))
                .filter(Column::LastError.is_not_null())
                .order_by_desc(Column::NextAttemptAt)
                .into_tuple::<Option<String>>()
                .one(&self.store.read)
                .await?
                .flatten();
            backlogs.insert(
                row.hub,
                HubBacklog {
                    depth: u64::try_from(row.depth).unwrap_or(0),
                    oldest: row.oldest,
                    retrying: u64::try_from(row.retrying).unwrap_or(0),
                    last_error,
                },
            );
        }
        Ok(backlogs)
    }

    /// The jobs waiting for one device's registration (canonical id), oldest first.
    #[cfg(feature = "test-support")]
    pub async fn of_registration(self, registration_key: &str) -> Result<Vec<HubJobRecord>, StoreError> {
        Entity::find()
            .filter(Column::RegistrationKey.eq(registration_key))
            .order_by_asc(Column::CreatedAt)
            .all(&self.store.read)
            .await?
            .into_iter()
            .map(|m| to_record(self.store.vault(), m))
            .collect()
    }
}
