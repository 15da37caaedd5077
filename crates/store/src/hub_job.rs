//! The hub outbox: the changes downstream hubs still have to learn, written in the transaction of the change that
//! causes them, claimed by workers, and deleted once the hub has them.
//!
//! - A registration assigned to a hub with an adapter writes an `upsert` job with its state (`assigning`); the
//!   job's success makes the registration and its operation `assigned` ([`HubJobs::finish`]), and only then
//!   queues the `delete` of the device's identity on the hub it leaves (create there first, then remove here).
//!   An upsert past its deadline, or refused by the hub, makes them `failed` instead.
//! - Retiring a device queues a job for the hub it is on: `disable` when its enrollment is disabled or deleted or
//!   its certificates are revoked, `delete` when its registration is deleted. These jobs never expire: a hub must
//!   not keep a retired device.
//! - Jobs of one device on one hub run one at a time, in creation order, so a later change is never overtaken
//!   by an earlier one; a job claimed by a worker is leased (`claimed_until`) and taken again if the worker dies.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, Statement, TransactionTrait,
};
use serde::Deserialize;
use serde_json::Value;

use crate::StoreError;
use crate::entity::hub_job::{self, Column, Entity};
use crate::entity::{hub, operation, registration};

/// What a job asks of the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubAction {
    /// Create or update the device's identity (enabled).
    Upsert,
    /// Cut the device off, keeping its identity.
    Disable,
    /// Remove the device's identity.
    Delete,
}

impl HubAction {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upsert => "upsert",
            Self::Disable => "disable",
            Self::Delete => "delete",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "upsert" => Some(Self::Upsert),
            "disable" => Some(Self::Disable),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// What an upsert job stores of the identity to create: a reference to the credential; a secret only where nothing
/// else holds it (a TPM device's hub key).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "type")]
pub enum CredentialRef {
    /// The device's certificate (an operational certificate of ours, or its own X.509 certificate).
    #[serde(rename = "x509", rename_all = "camelCase")]
    X509 {
        /// Its subject CN.
        subject_name: String,
        /// Hex SHA-256 of its DER.
        thumbprint: String,
    },
    /// The device's symmetric key, read from its enrollment when the job is delivered.
    #[serde(rename = "symmetricKey")]
    SymmetricKey,
    /// A key made for the hub alone (a TPM device's hub key, which only its TPM and the hub hold): kept in the job
    /// until the hub has it, as the enrollment has no copy.
    #[serde(rename = "hubKey")]
    HubKey {
        /// The key (base64 in the document; redacted in `Debug`).
        key: zerotouch_wire::SymmetricKey,
    },
}

impl CredentialRef {
    /// The document of an upsert job: the credential and the initial twin.
    pub fn document(&self, initial_twin: Option<&Value>) -> Value {
        serde_json::json!({ "credential": self, "initialTwin": initial_twin })
    }

    /// The credential of an upsert job's document.
    pub fn of_document(document: &Value) -> Result<Self, serde_json::Error> {
        Self::deserialize(document.get("credential").unwrap_or(&Value::Null))
    }
}

/// The hub kind whose hubs have no adapter (assignments are only recorded).
pub const NO_ADAPTER: &str = "none";

/// An upsert job a registration attempt writes with its state (see [`crate::RegistrationOutcome::hub_job`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewHubJob {
    /// The job id (a fresh random id).
    pub id: String,
    /// The hub the device is assigned to.
    pub hub: String,
    /// The device id there.
    pub device_id: String,
    /// The identity to create: credential and initial twin, as the delivering code reads it.
    pub document: Value,
    /// When the registration gives up on the hub and fails.
    pub deadline_at: DateTime<Utc>,
    /// How long the attempt that writes it keeps it to deliver it at once (nobody else takes it meanwhile).
    pub inline_lease: std::time::Duration,
    /// The hub and device id the device leaves, whose identity is deleted once this job succeeds.
    pub previous: Option<(String, String)>,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct HubJobRecord {
    /// The job id.
    pub id: String,
    /// The hub.
    pub hub: String,
    /// The device id on the hub.
    pub device_id: String,
    /// The registration (canonical id) the job belongs to.
    pub registration_key: String,
    /// What to do.
    pub action: HubAction,
    /// For upserts: the identity to create.
    pub document: Option<Value>,
    /// For upserts a registration waits for: its operation (none for a credential update after an EST renewal).
    pub operation_id: Option<String>,
    /// For upserts: the registration state's etag when the job was written (a newer state has its own job).
    pub registration_etag: Option<String>,
    /// For upserts: where the device's identity is deleted once the job succeeds.
    pub previous: Option<(String, String)>,
    /// Deliveries tried so far.
    pub attempts: u32,
    /// Why the last delivery failed.
    pub last_error: Option<String>,
    /// When the job is due.
    pub next_attempt_at: DateTime<Utc>,
    /// Until when a worker (or the registration that wrote it) holds it.
    pub claimed_until: Option<DateTime<Utc>>,
    /// For upserts: when the registration fails if the hub still does not have the device.
    pub deadline_at: Option<DateTime<Utc>>,
    /// When the job was written.
    pub created_at: DateTime<Utc>,
}

fn to_record(m: hub_job::Model) -> Result<HubJobRecord, StoreError> {
    let action = HubAction::parse(&m.action)
        .ok_or_else(|| StoreError::Corrupt(format!("hub job {} has the action {:?}", m.id, m.action)))?;
    Ok(HubJobRecord {
        id: m.id,
        hub: m.hub,
        device_id: m.device_id,
        registration_key: m.registration_key,
        action,
        document: m.document,
        operation_id: m.operation_id,
        registration_etag: m.registration_etag,
        previous: m.previous_hub.zip(m.previous_device_id),
        attempts: u32::try_from(m.attempts).unwrap_or(0),
        last_error: m.last_error,
        next_attempt_at: m.next_attempt_at,
        claimed_until: m.claimed_until,
        deadline_at: m.deadline_at,
        created_at: m.created_at,
    })
}

fn to_active(r: &HubJobRecord) -> hub_job::ActiveModel {
    let (previous_hub, previous_device_id) = r.previous.clone().unzip();
    hub_job::ActiveModel {
        id: Set(r.id.clone()),
        hub: Set(r.hub.clone()),
        device_id: Set(r.device_id.clone()),
        registration_key: Set(r.registration_key.clone()),
        action: Set(r.action.as_str().to_owned()),
        document: Set(r.document.clone()),
        operation_id: Set(r.operation_id.clone()),
        registration_etag: Set(r.registration_etag.clone()),
        previous_hub: Set(previous_hub),
        previous_device_id: Set(previous_device_id),
        attempts: Set(i32::try_from(r.attempts).unwrap_or(i32::MAX)),
        last_error: Set(r.last_error.clone()),
        next_attempt_at: Set(r.next_attempt_at),
        claimed_until: Set(r.claimed_until),
        deadline_at: Set(r.deadline_at.map(crate::at_store_precision)),
        created_at: Set(r.created_at),
    }
}

/// A job with nothing tried yet, due now.
fn fresh_job(id: String, hub: String, device_id: String, registration_key: String, action: HubAction) -> HubJobRecord {
    let now = crate::now();
    HubJobRecord {
        id,
        hub,
        device_id,
        registration_key,
        action,
        document: None,
        operation_id: None,
        registration_etag: None,
        previous: None,
        attempts: 0,
        last_error: None,
        next_attempt_at: now,
        claimed_until: None,
        deadline_at: None,
        created_at: now,
    }
}

fn new_job_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// For the registration writer: the upsert jobs of the attempts that won (`(job, registration key, operation id,
/// new registration etag)`). A job whose device already has an older job on that hub waits its turn (it is not
/// claimed for inline delivery). Returns the jobs as written.
pub(crate) async fn insert_upserts(
    db: &impl ConnectionTrait,
    jobs: Vec<(&NewHubJob, &str, &str, &str)>,
) -> Result<Vec<HubJobRecord>, StoreError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let now = crate::now();
    let mut busy = std::collections::HashSet::new();
    for chunk in jobs.chunks(500) {
        let mut condition = sea_orm::Condition::any();
        for (job, ..) in chunk {
            condition = condition.add(
                sea_orm::Condition::all()
                    .add(Column::Hub.eq(job.hub.clone()))
                    .add(Column::DeviceId.eq(job.device_id.clone())),
            );
        }
        let rows: Vec<(String, String)> = Entity::find()
            .select_only()
            .column(Column::Hub)
            .column(Column::DeviceId)
            .filter(condition)
            .into_tuple()
            .all(db)
            .await?;
        busy.extend(rows);
    }
    let records: Vec<HubJobRecord> = jobs
        .into_iter()
        .map(|(job, registration_key, operation_id, etag)| {
            let waits = !busy.insert((job.hub.clone(), job.device_id.clone()));
            let lease = chrono::Duration::from_std(job.inline_lease).unwrap_or_default();
            HubJobRecord {
                document: Some(job.document.clone()),
                operation_id: Some(operation_id.to_owned()),
                registration_etag: Some(etag.to_owned()),
                previous: job.previous.clone(),
                claimed_until: (!waits).then(|| now + lease),
                deadline_at: Some(crate::at_store_precision(job.deadline_at)),
                ..fresh_job(
                    job.id.clone(),
                    job.hub.clone(),
                    job.device_id.clone(),
                    registration_key.to_owned(),
                    HubAction::Upsert,
                )
            }
        })
        .collect();
    for chunk in records.chunks(500) {
        Entity::insert_many(chunk.iter().map(to_active)).exec_without_returning(db).await?;
    }
    Ok(records)
}

/// For the registration writer: certificates issued outside a registration (EST renewals) change the device's
/// credential, so each one assigned to a hub with an adapter gets an upsert job with the new certificate (run in
/// order after the device's earlier jobs on that hub).
pub(crate) async fn queue_credential_updates(
    db: &impl ConnectionTrait,
    certificates: &[crate::CertificateRecord],
) -> Result<(), StoreError> {
    if certificates.is_empty() {
        return Ok(());
    }
    let adapter_hubs = adapter_hubs();
    let keys: Vec<String> = certificates.iter().map(|c| c.registration_key.clone()).collect();
    let rows: Vec<(String, Option<String>, Option<String>)> = registration::Entity::find()
        .select_only()
        .column(registration::Column::Key)
        .column(registration::Column::AssignedHub)
        .column(registration::Column::DeviceId)
        .filter(registration::Column::Key.is_in(keys))
        .filter(registration::Column::Status.eq("assigned"))
        .filter(registration::Column::AssignedHub.in_subquery(adapter_hubs))
        .into_tuple()
        .all(db)
        .await?;
    let jobs: Vec<HubJobRecord> = rows
        .into_iter()
        .filter_map(|(key, hub, device_id)| {
            let certificate = certificates.iter().rev().find(|c| c.registration_key == key)?;
            let credential = CredentialRef::X509 {
                subject_name: certificate.device_id.clone(),
                thumbprint: certificate.thumbprint_sha256.clone(),
            };
            Some(HubJobRecord {
                document: Some(credential.document(None)),
                ..fresh_job(new_job_id(), hub?, device_id?, key, HubAction::Upsert)
            })
        })
        .collect();
    if !jobs.is_empty() {
        Entity::insert_many(jobs.iter().map(to_active)).exec_without_returning(db).await?;
    }
    Ok(())
}

/// The host names of the hubs with an adapter (a subquery).
fn adapter_hubs() -> sea_orm::sea_query::SelectStatement {
    Query::select()
        .column(hub::Column::HostName)
        .from(hub::Entity)
        .and_where(hub::Column::Kind.ne(NO_ADAPTER))
        .to_owned()
}

/// Whose hub identities a retirement concerns.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Retiring<'a> {
    /// These registrations (canonical ids).
    Registrations(&'a [String]),
    /// Every registration made through these enrollment groups (canonical ids).
    Groups(&'a [String]),
}

/// Queues, in the caller's transaction, `action` for the hub identity of every registration in `scope` that is
/// assigned (or being assigned) to a hub with an adapter. Must run while the registrations still exist.
pub(crate) async fn retire(
    db: &impl ConnectionTrait,
    scope: Retiring<'_>,
    action: HubAction,
) -> Result<(), StoreError> {
    let (column, keys) = match scope {
        Retiring::Registrations(keys) => (registration::Column::Key, keys),
        Retiring::Groups(keys) => (registration::Column::EnrollmentGroupKey, keys),
    };
    let adapter_hubs = adapter_hubs();
    for chunk in keys.chunks(1000) {
        let rows: Vec<(String, Option<String>, Option<String>)> = registration::Entity::find()
            .select_only()
            .column(registration::Column::Key)
            .column(registration::Column::AssignedHub)
            .column(registration::Column::DeviceId)
            .filter(column.is_in(chunk.iter().cloned()))
            .filter(registration::Column::AssignedHub.in_subquery(adapter_hubs.clone()))
            .into_tuple()
            .all(db)
            .await?;
        let jobs: Vec<HubJobRecord> = rows
            .into_iter()
            .filter_map(|(key, hub, device_id)| Some(fresh_job(new_job_id(), hub?, device_id?, key, action)))
            .collect();
        if !jobs.is_empty() {
            Entity::insert_many(jobs.iter().map(to_active)).exec_without_returning(db).await?;
        }
    }
    Ok(())
}

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

/// Writes the result of an upsert into a registration operation's stored result (the registration state as the
/// device sees it): `status`, `etag`, `lastUpdatedDateTimeUtc`, and on failure `errorCode`/`errorMessage` with
/// the assignment removed.
fn settle_result(
    result: Option<Value>,
    status: &str,
    etag: &str,
    at: DateTime<Utc>,
    error: Option<(i32, &str)>,
) -> Option<Value> {
    let Some(Value::Object(mut fields)) = result else { return result };
    fields.insert("status".into(), Value::from(status));
    fields.insert("etag".into(), Value::from(etag));
    fields.insert("lastUpdatedDateTimeUtc".into(), Value::from(zerotouch_wire::format_timestamp(at)));
    if let Some((code, message)) = error {
        for assigned in ["assignedHub", "deviceId", "substatus", "issuedCertificateChain", "payload"] {
            fields.remove(assigned);
        }
        fields.insert("errorCode".into(), Value::from(code));
        fields.insert("errorMessage".into(), Value::from(message));
    }
    Some(Value::Object(fields))
}

repository! {
    /// The hub outbox: claiming, finishing and measuring the jobs that deliver device identities to hubs.
    HubJobs
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
            .map(to_record)
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
                HubJobOutcome::Fail { error_code, message } => ("failed", Some((*error_code, message.as_str()))),
                _ => ("assigned", None),
            };
            let mut update = registration::Entity::update_many()
                .col_expr(registration::Column::Status, Expr::value(status))
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
                let result = settle_result(stored.result, status, etag, now, error);
                operation::Entity::update_many()
                    .col_expr(operation::Column::Status, Expr::value(status))
                    .col_expr(operation::Column::ErrorCode, Expr::value(error.map(|(c, _)| c)))
                    .col_expr(operation::Column::ErrorMessage, Expr::value(error.map(|(_, m)| m.to_owned())))
                    .col_expr(operation::Column::Result, Expr::value(result.clone()))
                    .col_expr(operation::Column::UpdatedAt, Expr::value(now))
                    .filter(operation::Column::Id.eq(operation_id.clone()))
                    .exec(&txn)
                    .await?;
                settled = Some(crate::OperationRecord {
                    id: stored.id,
                    registration_key: stored.registration_key,
                    status: status.to_owned(),
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
                    Entity::insert(to_active(&leaving)).exec_without_returning(&txn).await?;
                }
            }
        }
        txn.commit().await?;
        Ok(settled)
    }

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
            .map(to_record)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A credential survives the job document, and the document holds no key.
    #[test]
    fn credential_documents_round_trip() {
        for credential in [
            CredentialRef::X509 { subject_name: "dev-1".into(), thumbprint: "ab".repeat(32) },
            CredentialRef::SymmetricKey,
        ] {
            let document = credential.document(Some(&serde_json::json!({"tags": {"site": "x"}})));
            assert_eq!(CredentialRef::of_document(&document).unwrap(), credential);
            assert_eq!(document["initialTwin"]["tags"]["site"], "x");
        }
        let document = CredentialRef::SymmetricKey.document(None);
        assert_eq!(document["credential"], serde_json::json!({"type": "symmetricKey"}));
        let x509 = CredentialRef::X509 { subject_name: "d".into(), thumbprint: "00".into() }.document(None);
        assert_eq!(x509["credential"], serde_json::json!({"type": "x509", "subjectName": "d", "thumbprint": "00"}));
        assert!(CredentialRef::of_document(&serde_json::json!({})).is_err());
        let key = zerotouch_wire::SymmetricKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhM=").unwrap();
        let hub_key = CredentialRef::HubKey { key };
        let document = hub_key.document(None);
        assert_eq!(document["credential"]["type"], "hubKey");
        assert_eq!(CredentialRef::of_document(&document).unwrap(), hub_key);
        assert!(!format!("{hub_key:?}").contains("AAECAwQF"), "a hub key is redacted in Debug");
    }

    /// Actions round-trip through their stored names.
    #[test]
    fn actions_parse_their_names() {
        for action in [HubAction::Upsert, HubAction::Disable, HubAction::Delete] {
            assert_eq!(HubAction::parse(action.as_str()), Some(action));
        }
        assert_eq!(HubAction::parse("remove"), None);
    }
}
