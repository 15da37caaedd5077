//! The workers' side of the outbox: claiming due jobs under a lease, and recording how each delivery ended (which
//! settles the registration and operation an upsert was written for).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DbBackend, EntityTrait, QueryFilter, Statement, TransactionTrait};
use zerotouch_wire::registration::{DeviceRegistrationState, RegistrationStatus};

use super::{HubAction, HubJobRecord, HubJobs, NO_ADAPTER, fresh_job, new_job_id, to_active_without_key, to_record};
use crate::StoreError;
use crate::entity::hub_job::{Column, Entity};
use crate::entity::{hub, operation, registration};
use crate::registration::{result_to_store, stored_result};

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub enum HubJobOutcome {
    /// The hub has the change.
    Done,
    /// Try again at `next_attempt_at`.
    Retry {
        /// Why this attempt failed.
        error: String,
        /// When to try again.
        next_attempt_at: DateTime<Utc>,
    },
    /// Give up: the job is dropped and the registration waiting for it (if any) fails with `error_code`.
    Fail {
        /// The registration's error code.
        error_code: i32,
        /// Why, in words.
        message: String,
    },
}

/// Writes the result of an upsert into a registration operation's result (the registration state as the device
/// sees it): `status`, `etag`, `lastUpdatedDateTimeUtc`, and on failure `errorCode`/`errorMessage` with the
/// assignment removed.
fn settle_result(
    result: Option<DeviceRegistrationState>,
    status: RegistrationStatus,
    etag: &str,
    at: DateTime<Utc>,
    error: Option<(i32, &str)>,
) -> Option<DeviceRegistrationState> {
    let mut state = result?;
    state.status = status;
    state.etag = Some(etag.to_owned());
    state.last_updated_date_time_utc = Some(zerotouch_wire::format_timestamp(at));
    if let Some((code, message)) = error {
        state.assigned_hub = None;
        state.device_id = None;
        state.substatus = None;
        state.issued_certificate_chain = None;
        state.payload = None;
        state.error_code = u32::try_from(code).ok();
        state.error_message = Some(message.to_owned());
    }
    Some(state)
}

impl<'a> HubJobs<'a> {
    /// Claims up to `limit` due jobs for `lease` (each the oldest job of its device on its hub, so one device's
    /// jobs run in order); on PostgreSQL, rows other replicas are claiming are skipped.
    pub async fn claim(self, limit: u64, lease: std::time::Duration) -> Result<Vec<HubJobRecord>, StoreError> {
        let now = crate::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
        let backend = self.store.db.get_database_backend();
        // One statement: atomic on both engines, and on SQLite a write from its start (a read that later writes
        // can meet another process's writer and fail instead of waiting).
        let sql = format!(
            "UPDATE hub_jobs SET claimed_until = $2 WHERE id IN (SELECT j.id FROM hub_jobs j WHERE \
             j.next_attempt_at <= $1 AND (j.claimed_until IS NULL OR j.claimed_until < $1) AND NOT EXISTS \
             (SELECT 1 FROM hub_jobs e WHERE e.hub = j.hub AND e.device_id = j.device_id AND (e.created_at < \
             j.created_at OR (e.created_at = j.created_at AND e.id < j.id))) ORDER BY j.next_attempt_at LIMIT {limit}{}) \
             RETURNING *",
            if backend == DbBackend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" }
        );
        let sql = if backend == DbBackend::Sqlite { sql.replace('$', "?") } else { sql };
        let statement = Statement::from_sql_and_values(backend, sql, [now.into(), until.into()]);
        let mut jobs: Vec<HubJobRecord> = Entity::find()
            .from_raw_sql(statement)
            .all(&self.store.db)
            .await?
            .into_iter()
            .map(|m| to_record(self.store.vault(), m))
            .collect::<Result<_, _>>()?;
        jobs.sort_by_key(|j| j.next_attempt_at);
        Ok(jobs)
    }

    /// Records how the delivery of `job` ended. `Done` deletes the job and, for an upsert a registration waits
    /// for, makes its operation `assigned`, and the registration too unless it changed since (its newer state has
    /// its own job), in which case the identity the device left behind is deleted by that newer job; `Fail` deletes
    /// the job and fails them likewise; `Retry` releases the job until its next attempt. All in one transaction.
    ///
    /// Returns the operation it settled, if any.
    pub async fn finish(
        self,
        job: &HubJobRecord,
        outcome: &HubJobOutcome,
    ) -> Result<Option<crate::OperationRecord>, StoreError> {
        let txn = self.store.db.begin().await?;
        let now = crate::now();
        match outcome {
            HubJobOutcome::Retry { error, next_attempt_at } => {
                Entity::update_many()
                    .col_expr(
                        Column::Attempts,
                        Expr::value(i32::try_from(job.attempts.saturating_add(1)).unwrap_or(i32::MAX)),
                    )
                    .col_expr(Column::LastError, Expr::value(error.clone()))
                    .col_expr(Column::NextAttemptAt, Expr::value(crate::at_store_precision(*next_attempt_at)))
                    .col_expr(Column::ClaimedUntil, Expr::value(Option::<DateTime<Utc>>::None))
                    .filter(Column::Id.eq(job.id.clone()))
                    .exec(&txn)
                    .await?;
                txn.commit().await?;
                return Ok(None);
            }
            HubJobOutcome::Done | HubJobOutcome::Fail { .. } => {}
        }
        let deleted = Entity::delete_many().filter(Column::Id.eq(job.id.clone())).exec(&txn).await?;
        if deleted.rows_affected == 0 {
            // Finished already (by another worker after our lease ran out).
            return Ok(None);
        }
        let mut settled = None;
        if let (Some(operation_id), Some(etag)) = (&job.operation_id, &job.registration_etag) {
            let new_etag = crate::new_etag();
            let (status, error) = match outcome {
                HubJobOutcome::Fail { error_code, message } => {
                    (RegistrationStatus::Failed, Some((*error_code, message.as_str())))
                }
                _ => (RegistrationStatus::Assigned, None),
            };
            let status_text = status.as_str();
            let mut update = registration::Entity::update_many()
                .col_expr(registration::Column::Status, Expr::value(status_text))
                .col_expr(registration::Column::Etag, Expr::value(new_etag.clone()))
                .col_expr(registration::Column::UpdatedAt, Expr::value(now));
            if let Some((code, message)) = error {
                update = update
                    .col_expr(registration::Column::ErrorCode, Expr::value(code))
                    .col_expr(registration::Column::ErrorMessage, Expr::value(message))
                    .col_expr(registration::Column::AssignedHub, Expr::value(Option::<String>::None))
                    .col_expr(registration::Column::DeviceId, Expr::value(Option::<String>::None))
                    .col_expr(registration::Column::Substatus, Expr::value(Option::<String>::None));
            }
            let updated = update
                .filter(registration::Column::Key.eq(job.registration_key.clone()))
                .filter(registration::Column::Etag.eq(etag.clone()))
                .exec(&txn)
                .await?;
            let current = updated.rows_affected == 1;
            // The operation this job settles, whether or not a newer attempt changed the registration since (that
            // attempt has its own job and operation; this device's poll must still end).
            let waiting =
                operation::Entity::find_by_id(operation_id.clone()).filter(operation::Column::Status.eq("assigning"));
            let waiting = crate::unique(waiting, &txn).await?;
            if let Some(stored) = waiting {
                let etag = if current { new_etag.as_str() } else { etag.as_str() };
                let result = settle_result(stored_result(stored.result.as_ref()), status, etag, now, error);
                operation::Entity::update_many()
                    .col_expr(operation::Column::Status, Expr::value(status_text))
                    .col_expr(operation::Column::ErrorCode, Expr::value(error.map(|(c, _)| c)))
                    .col_expr(operation::Column::ErrorMessage, Expr::value(error.map(|(_, m)| m.to_owned())))
                    .col_expr(operation::Column::Result, Expr::value(result_to_store(result.as_ref())))
                    .col_expr(operation::Column::UpdatedAt, Expr::value(now))
                    .filter(operation::Column::Id.eq(operation_id.clone()))
                    .exec(&txn)
                    .await?;
                settled = Some(crate::OperationRecord {
                    id: stored.id,
                    registration_key: stored.registration_key,
                    status: status_text.to_owned(),
                    error_code: error.map(|(c, _)| c),
                    error_message: error.map(|(_, m)| m.to_owned()),
                    result,
                    created_at: stored.created_at,
                    updated_at: now,
                });
            }
            if current && let (HubJobOutcome::Done, Some((hub, device_id))) = (outcome, &job.previous) {
                let leaving = fresh_job(
                    new_job_id(),
                    hub.clone(),
                    device_id.clone(),
                    job.registration_key.clone(),
                    HubAction::Delete,
                );
                // Only if the old hub still has an adapter.
                let adapter = crate::unique(hub::Entity::find_by_id(hub.clone()), &txn)
                    .await?
                    .is_some_and(|h| h.kind != NO_ADAPTER);
                if adapter {
                    Entity::insert(to_active_without_key(&leaving)?).exec_without_returning(&txn).await?;
                }
            }
        }
        txn.commit().await?;
        Ok(settled)
    }
}
