//! Device registration states (one per registration id) and their operations.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait, TryInsertResult,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::audit::{self, Change};
use crate::batch::Batches;
use crate::certificate::{self as certificates, CertificateRecord, CertificateStatus, Revoking};
use crate::entity::operation;
use crate::entity::registration::{self, Column, Entity};
use crate::held::{HeldConnection, Sql};
use crate::{Actor, Page, Precondition, StoreError};

/// A device's registration state as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationRecord {
    /// The canonical registration id.
    pub key: String,
    /// The registration id as the device spelled it.
    pub registration_id: String,
    /// The canonical id of the enrollment group the device registered through, if any.
    pub enrollment_group_key: Option<String>,
    /// The device id on the hub.
    pub device_id: Option<String>,
    /// The hub the device is assigned to.
    pub assigned_hub: Option<String>,
    /// `assigning`, `assigned`, `failed` or `disabled`.
    pub status: String,
    /// How the assignment came about.
    pub substatus: Option<String>,
    /// Why it failed.
    pub error_code: Option<i32>,
    /// Why it failed, in words.
    pub error_message: Option<String>,
    /// The custom allocation payload.
    pub payload: Option<Value>,
    /// The twin the hub should apply (from the enrollment or the webhook, per `docs/protocol/device-api.md` §7).
    pub initial_twin: Option<Value>,
    /// The current etag.
    pub etag: String,
    /// When the device first registered.
    pub created_at: DateTime<Utc>,
    /// When the state last changed.
    pub updated_at: DateTime<Utc>,
}

fn to_record(m: registration::Model) -> RegistrationRecord {
    RegistrationRecord {
        key: m.key,
        registration_id: m.registration_id,
        enrollment_group_key: m.enrollment_group_key,
        device_id: m.device_id,
        assigned_hub: m.assigned_hub,
        status: m.status,
        substatus: m.substatus,
        error_code: m.error_code,
        error_message: m.error_message,
        payload: m.payload,
        initial_twin: m.initial_twin,
        etag: m.etag,
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

fn to_active(r: &RegistrationRecord) -> registration::ActiveModel {
    registration::ActiveModel {
        key: Set(r.key.clone()),
        registration_id: Set(r.registration_id.clone()),
        enrollment_group_key: Set(r.enrollment_group_key.clone()),
        device_id: Set(r.device_id.clone()),
        assigned_hub: Set(r.assigned_hub.clone()),
        status: Set(r.status.clone()),
        substatus: Set(r.substatus.clone()),
        error_code: Set(r.error_code),
        error_message: Set(r.error_message.clone()),
        payload: Set(r.payload.clone()),
        initial_twin: Set(r.initial_twin.clone()),
        etag: Set(r.etag.clone()),
        created_at: Set(r.created_at),
        updated_at: Set(r.updated_at),
    }
}

async fn find(db: &impl ConnectionTrait, key: &str) -> Result<Option<RegistrationRecord>, StoreError> {
    Ok(crate::unique(Entity::find_by_id(key.to_owned()), db).await?.map(to_record))
}

repository_with_reader! {
    /// Device registration states and operations: reads (through [`RegistrationReader`]), the registration
    /// writer's batched attempts, deletes, and the audit of refused device requests.
    Registrations,
    /// Device registration states and operations, read-only.
    RegistrationReader
}

impl<'a> RegistrationReader<'a> {
    /// Reads one registration state.
    pub async fn get(self, key: &str) -> Result<RegistrationRecord, StoreError> {
        find(&self.store.read, key).await?.ok_or(StoreError::NotFound)
    }

    /// Lists the registrations of an enrollment group in key order, `limit` at a time.
    pub async fn list_of_group(
        self,
        group_key: &str,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Page<RegistrationRecord>, StoreError> {
        let limit = limit.clamp(1, crate::MAX_PAGE_SIZE);
        let mut query = Entity::find().filter(Column::EnrollmentGroupKey.eq(group_key));
        if let Some(after) = after {
            query = query.filter(Column::Key.gt(after));
        }
        let rows: Vec<RegistrationRecord> = query
            .order_by_asc(Column::Key)
            .limit(limit + 1)
            .all(&self.store.read)
            .await?
            .into_iter()
            .map(to_record)
            .collect();
        Ok(Page::from_overfetch(rows, limit, |r| r.key.clone()))
    }

    /// The registrations that hold any of `device_ids` (compared case-insensitively) on any hub, at most `limit`.
    pub async fn holding_device_ids(
        self,
        device_ids: &[&str],
        limit: u64,
    ) -> Result<Vec<RegistrationRecord>, StoreError> {
        if device_ids.is_empty() {
            return Ok(Vec::new());
        }
        use sea_orm::sea_query::{Expr, ExprTrait, Func};
        let lowered: Vec<String> = device_ids.iter().map(|id| id.to_lowercase()).collect();
        let rows = Entity::find()
            .filter(Expr::expr(Func::lower(Expr::col(Column::DeviceId))).is_in(lowered))
            .filter(Column::AssignedHub.is_not_null())
            .order_by_asc(Column::Key)
            .limit(limit)
            .all(&self.store.read)
            .await?;
        Ok(rows.into_iter().map(to_record).collect())
    }

    /// Reads the operation `id` of the registration `registration_key`; another device's operation is not found.
    pub async fn operation(self, registration_key: &str, id: &str) -> Result<OperationRecord, StoreError> {
        let select = operation::Entity::find_by_id(id.to_owned())
            .filter(operation::Column::RegistrationKey.eq(registration_key));
        let model = crate::unique(select, &self.store.read).await?.ok_or(StoreError::NotFound)?;
        Ok(OperationRecord {
            id: model.id,
            registration_key: model.registration_key,
            status: model.status,
            error_code: model.error_code,
            error_message: model.error_message,
            result: model.result,
            created_at: model.created_at,
            updated_at: model.updated_at,
        })
    }
}

impl<'a> Registrations<'a> {
    /// Writes a registration state (insert or replace by key); returns it with a fresh etag.
    #[cfg(feature = "test-support")]
    pub async fn save(self, mut record: RegistrationRecord) -> Result<RegistrationRecord, StoreError> {
        let txn = self.store.db.begin().await?;
        let existing = find(&txn, &record.key).await?;
        record.etag = crate::new_etag();
        record.updated_at = crate::now();
        match existing {
            None => {
                // Keep what both databases keep (PostgreSQL stores microseconds), so the record returned is the
                // record stored.
                record.created_at = record.created_at.trunc_subsecs(6);
                Entity::insert(to_active(&record))
                    .exec_without_returning(&txn)
                    .await
                    .map_err(|e| StoreError::from_insert(e, "the registration"))?;
            }
            Some(old) => {
                record.created_at = old.created_at;
                let result = Entity::update_many()
                    .set(to_active(&record))
                    .filter(Column::Key.eq(record.key.clone()))
                    .filter(Column::Etag.eq(old.etag))
                    .exec(&txn)
                    .await?;
                if result.rows_affected != 1 {
                    return Err(StoreError::Conflict("the registration changed concurrently; retry".into()));
                }
            }
        }
        txn.commit().await?;
        Ok(record)
    }

    /// Deletes a registration state (and its operations) under `precondition`, and revokes its certificates
    /// (`cessationOfOperation`) in the same transaction.
    pub async fn delete(self, key: &str, precondition: &Precondition, actor: &Actor) -> Result<(), StoreError> {
        let txn = self.store.db.begin().await?;
        let existing = find(&txn, key).await?.ok_or(StoreError::NotFound)?;
        if !precondition.allows(Some(&existing.etag)) {
            return Err(StoreError::PreconditionFailed);
        }
        // While the state still says which hub the device is on.
        crate::hub_job::retire(
            &txn,
            crate::hub_job::Retiring::Registrations(&[key.to_owned()]),
            crate::HubAction::Delete,
        )
        .await?;
        operation::Entity::delete_many().filter(operation::Column::RegistrationKey.eq(key)).exec(&txn).await?;
        let result = Entity::delete_many()
            .filter(Column::Key.eq(key))
            .filter(Column::Etag.eq(existing.etag.clone()))
            .exec(&txn)
            .await?;
        if result.rows_affected != 1 {
            return Err(StoreError::Conflict("the registration changed concurrently; retry".into()));
        }
        // After the guarded delete: an attempt of this device still in flight now loses (its etag is gone), so no
        // certificate can be issued to it after this revocation.
        certificates::revoke(
            &txn,
            Revoking::Registrations(&[key.to_owned()]),
            certificates::CESSATION_OF_OPERATION,
            actor,
        )
        .await?;
        let change = Change {
            action: "delete",
            resource_type: "registration",
            resource_id: &existing.registration_id,
            etag_before: Some(&existing.etag),
            etag_after: None,
            detail: None,
        };
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Writes a registration attempt: the state (guarded by `expected_etag`), the operation and the audit event,
    /// in one transaction (shared with the attempts of other devices arriving meanwhile). A concurrent attempt that
    /// changed the state first makes this one a [`StoreError::Conflict`]; the caller decides again on the new
    /// state.
    ///
    /// `snapshot` renders the operation's result from the state as written (with its etag and times).
    pub async fn commit(self, outcome: RegistrationOutcome, snapshot: Snapshot) -> Result<Committed, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the registration writer has stopped".into());
        self.store.registrations.send(Work::Register(Box::new(Pending { outcome, snapshot, reply }))).await?;
        answer.await.map_err(|_| stopped())?
    }

    /// Records a certificate issued outside a registration (EST) for the registration it names: the device's
    /// previous active certificate becomes superseded, in the same transaction, with an audit event (`action`).
    /// Written in batches with the registration attempts (see [`Registrations::commit`]).
    pub async fn record_certificate(
        self,
        certificate: CertificateRecord,
        action: &str,
        actor: &Actor,
    ) -> Result<CertificateRecord, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the registration writer has stopped".into());
        let pending = PendingCertificate { certificate, action: action.to_owned(), actor: actor.clone(), reply };
        self.store.registrations.send(Work::Certificate(Box::new(pending))).await?;
        answer.await.map_err(|_| stopped())?
    }

    /// Deletes operations created before `cutoff`; returns how many.
    pub async fn delete_operations_before(self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let result = operation::Entity::delete_many()
            .filter(operation::Column::CreatedAt.lt(cutoff))
            .exec(&self.store.db)
            .await?;
        Ok(result.rows_affected)
    }

    /// Records a refused device request (bad credentials, unknown device, ...) with its reason.
    pub async fn audit_refused_device(
        self,
        registration_id: &str,
        action: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let actor = Actor { subject: format!("device:{registration_id}"), role: "device".into() };
        let change = Change {
            action,
            resource_type: "registration",
            resource_id: registration_id,
            etag_before: None,
            etag_after: None,
            detail: Some(reason),
        };
        audit::record(&self.store.db, &actor, &[change]).await
    }
}

/// A registration operation (one per register call), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRecord {
    /// The operation id.
    pub id: String,
    /// The canonical registration id it belongs to.
    pub registration_key: String,
    /// `assigning`, `assigned`, `failed` or `disabled`.
    pub status: String,
    /// Why it failed.
    pub error_code: Option<i32>,
    /// Why it failed, in words.
    pub error_message: Option<String>,
    /// The registration result the operation answers with (a snapshot taken when it was written).
    pub result: Option<Value>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

fn operation_active(o: &OperationRecord) -> operation::ActiveModel {
    operation::ActiveModel {
        id: Set(o.id.clone()),
        registration_key: Set(o.registration_key.clone()),
        status: Set(o.status.clone()),
        error_code: Set(o.error_code),
        error_message: Set(o.error_message.clone()),
        result: Set(o.result.clone()),
        created_at: Set(o.created_at),
        updated_at: Set(o.updated_at),
    }
}

/// What a registration attempt writes: the device's new state, its operation, and the audit event.
#[derive(Debug, Clone)]
pub struct RegistrationOutcome {
    /// The new registration state. The store sets its etag and `updated_at`, and `created_at` when it inserts;
    /// on an update `created_at` is kept as given (copy it from the state the decision was made on).
    pub record: RegistrationRecord,
    /// The etag the state had when the decision was made (`None`: there was no state).
    pub expected_etag: Option<String>,
    /// The operation to create.
    pub operation: OperationRecord,
    /// What the audit event says happened.
    pub detail: String,
    /// The certificate issued in this attempt, if any: stored `active` (its registration key, status and times
    /// set by the store) only if the attempt wins, after the registration's previous active certificates are
    /// marked `superseded`, in the same transaction.
    pub certificate: Option<CertificateRecord>,
    /// The hub job that registers the device on its hub, if the hub has an adapter: written only if the attempt
    /// wins, in the same transaction. The state is then written `assigning` and becomes `assigned` when the job
    /// succeeds.
    pub hub_job: Option<crate::NewHubJob>,
}

/// What a winning registration attempt wrote: the state, the operation, and its hub job.
pub type Committed = (RegistrationRecord, OperationRecord, Option<crate::HubJobRecord>);

/// Renders an operation's result from the registration state as written.
pub type Snapshot = Box<dyn Fn(&RegistrationRecord) -> Value + Send + Sync>;

/// One registration attempt waiting for the writer, and where its result goes.
struct Pending {
    outcome: RegistrationOutcome,
    snapshot: Snapshot,
    reply: oneshot::Sender<Result<Committed, StoreError>>,
}

/// A certificate issued outside a registration (EST), waiting for the writer.
struct PendingCertificate {
    certificate: CertificateRecord,
    action: String,
    actor: Actor,
    reply: oneshot::Sender<Result<CertificateRecord, StoreError>>,
}

/// What the writer writes.
enum Work {
    Register(Box<Pending>),
    Certificate(Box<PendingCertificate>),
}

/// Most attempts written in one transaction (well within both databases' limits on bound parameters).
const MAX_BATCH: usize = 256;

/// The registration writer: attempts queue up while a transaction is in flight and the next transaction writes
/// all of them, with those arriving within a millisecond more while busy (group commit, see [`Batches`]). A
/// registration costs a few SQL statements per *batch* instead of five per device, which is what lets one SQLite
/// writer or one PostgreSQL connection serve thousands of devices a second.
///
/// There is one writer task on both databases. SQLite has one writer anyway. On PostgreSQL, one writer whose batches
/// gather the attempts that arrive during a commit measured cheaper for the database per device (and faster) than
/// two or four writers with smaller batches. One writer also writes each device's attempts in order, so they never
/// contend with each other across transactions.
#[derive(Debug, Clone)]
pub(crate) struct RegistrationWriter {
    queue: mpsc::Sender<Work>,
}

impl RegistrationWriter {
    /// Starts the writer task on the current runtime; it ends when the last store holding it is dropped or `db` is
    /// closed. Batches of first registrations go through a [`HeldConnection`] of `db`, kept if `keep`.
    pub(crate) fn start(db: DatabaseConnection, keep: bool) -> Self {
        let (queue, receiver) = mpsc::channel::<Work>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let mut held = HeldConnection::new(db.clone(), keep);
            let closed = held.closed();
            tokio::pin!(closed);
            let mut batches = Batches::new(receiver, MAX_BATCH);
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while batches.next(&mut batch, &mut closed).await {
                write_batch(&db, &mut held, std::mem::take(&mut batch)).await;
                batches.done();
            }
        });
        Self { queue }
    }

    /// Queues `work` for the writer.
    async fn send(&self, work: Work) -> Result<(), StoreError> {
        let stopped = || StoreError::Unavailable("the registration writer has stopped".into());
        self.queue.send(work).await.map_err(|_| stopped())
    }
}

/// Writes a batch in one transaction; if that transaction fails as a whole, writes each attempt alone, so that one
/// attempt's failure (say, its group deleted meanwhile) is that attempt's answer only.
async fn write_batch(db: &DatabaseConnection, held: &mut HeldConnection, work: Vec<Work>) {
    let (mut batch, mut certificates) = (Vec::new(), Vec::new());
    for item in work {
        match item {
            Work::Register(pending) => batch.push(*pending),
            Work::Certificate(pending) => certificates.push(*pending),
        }
    }
    let nothing = || StoreError::Conflict("nothing was written".into());
    let (results, issued) = match write_together(db, held, &batch, &certificates).await {
        Ok(results) => results,
        Err(_) if batch.len() + certificates.len() > 1 => {
            let mut results = Vec::with_capacity(batch.len());
            for pending in &batch {
                let one = write_together(db, held, std::slice::from_ref(pending), &[]).await;
                results.push(one.map_or_else(Err, |(mut r, _)| r.pop().unwrap_or_else(|| Err(nothing()))));
            }
            let mut issued = Vec::with_capacity(certificates.len());
            for pending in &certificates {
                let one = write_together(db, held, &[], std::slice::from_ref(pending)).await;
                issued.push(one.map_or_else(Err, |(_, mut c)| c.pop().unwrap_or_else(|| Err(nothing()))));
            }
            (results, issued)
        }
        Err(e) => {
            // One item: its answer is the error.
            let message = e.to_string();
            let mut e = Some(e);
            let mut next = || e.take().unwrap_or_else(|| StoreError::Conflict(message.clone()));
            (batch.iter().map(|_| Err(next())).collect(), certificates.iter().map(|_| Err(next())).collect())
        }
    };
    // The callers may have gone (their clients disconnected); what was written stays written. An attempt written
    // alone that takes a device id another registration holds on its hub fails on the unique index: it learns so.
    for (pending, result) in batch.into_iter().zip(results) {
        let _ = pending.reply.send(result.map_err(StoreError::device_id_taken));
    }
    for (pending, result) in certificates.into_iter().zip(issued) {
        let _ = pending.reply.send(result);
    }
}

/// What one transaction answers: per registration attempt, and per certificate issued outside a registration.
type Written = (Vec<Result<Committed, StoreError>>, Vec<Result<CertificateRecord, StoreError>>);

/// One transaction for `batch`: new states in one multi-row insert that skips keys written meanwhile, changed
/// states each guarded by its etag, then the operations and audit events of the attempts that won, in one insert
/// each. Attempts that lost a race get [`StoreError::Conflict`].
async fn write_together(
    db: &DatabaseConnection,
    held: &mut HeldConnection,
    batch: &[Pending],
    certificates_alone: &[PendingCertificate],
) -> Result<Written, StoreError> {
    let now = crate::now();
    let mut records: Vec<RegistrationRecord> = batch
        .iter()
        .map(|p| {
            let mut record = p.outcome.record.clone();
            record.etag = crate::new_etag();
            record.updated_at = now;
            // An update keeps the state's creation time as given (at the precision both databases store).
            record.created_at =
                if p.outcome.expected_etag.is_none() { now } else { record.created_at.trunc_subsecs(6) };
            record
        })
        .collect();
    if certificates_alone.is_empty() && first_registrations_only(batch) {
        return write_first_registrations(db, held, batch, records, now).await;
    }
    let txn = db.begin().await?;

    // New states: the first attempt for a key wins (within the batch and against the table).
    let mut won = vec![false; batch.len()];
    let mut seen = std::collections::HashSet::new();
    let inserts: Vec<usize> = (0..batch.len())
        .filter(|&i| batch[i].outcome.expected_etag.is_none() && seen.insert(records[i].key.clone()))
        .collect();
    if !inserts.is_empty() {
        let inserted = Entity::insert_many(inserts.iter().map(|&i| to_active(&records[i])))
            .on_conflict_do_nothing()
            .exec_with_returning_keys(&txn)
            .await?;
        let inserted: std::collections::HashSet<String> = match inserted {
            TryInsertResult::Inserted(keys) => keys.into_iter().collect(),
            TryInsertResult::Empty | TryInsertResult::Conflicted => Default::default(),
        };
        for &i in &inserts {
            won[i] = inserted.contains(&records[i].key);
        }
    }
    // Changed states: each guarded by the etag its decision was made on.
    for (i, pending) in batch.iter().enumerate() {
        let Some(expected) = &pending.outcome.expected_etag else { continue };
        let result = Entity::update_many()
            .set(to_active(&records[i]))
            .filter(Column::Key.eq(records[i].key.clone()))
            .filter(Column::Etag.eq(expected.clone()))
            .exec(&txn)
            .await?;
        won[i] = result.rows_affected == 1;
    }

    let mut operations = Vec::with_capacity(batch.len());
    for (i, pending) in batch.iter().enumerate() {
        let mut operation = pending.outcome.operation.clone();
        operation.created_at = now;
        operation.updated_at = now;
        operation.result = won[i].then(|| (pending.snapshot)(&records[i]));
        operations.push(operation);
    }
    let winners: Vec<usize> = (0..batch.len()).filter(|&i| won[i]).collect();
    // At most one attempt per registration wins (a new state is inserted once; an update needs the etag the
    // first winner just replaced), so each registration gets at most one new active certificate.
    let fresh = |certificate: CertificateRecord| {
        let mut certificate = certificates::normalized(certificate);
        certificate.status = CertificateStatus::Active;
        certificate.revoked_at = None;
        certificate.revocation_reason = None;
        certificate.created_at = now;
        certificate
    };
    let mut issued: Vec<CertificateRecord> = winners
        .iter()
        .filter_map(|&i| {
            let mut certificate = fresh(batch[i].outcome.certificate.clone()?);
            certificate.registration_key = records[i].key.clone();
            Some(certificate)
        })
        .collect();
    let alone: Vec<CertificateRecord> = certificates_alone.iter().map(|p| fresh(p.certificate.clone())).collect();
    if !alone.is_empty() {
        // Ordered against a concurrent delete of the registration, which revokes what it finds.
        let keys: Vec<String> = alone.iter().map(|c| c.registration_key.clone()).collect();
        Entity::find().filter(Column::Key.is_in(keys)).lock_exclusive().all(&txn).await?;
    }
    issued.extend(alone.iter().cloned());
    // Two certificates for one registration in one batch (a retried EST call, or EST beside a register): the last
    // one is the active one, the earlier ones are stored superseded, so a registration keeps one active certificate.
    let mut latest = std::collections::HashSet::new();
    for certificate in issued.iter_mut().rev() {
        if !latest.insert(certificate.registration_key.clone()) {
            certificate.status = CertificateStatus::Superseded;
        }
    }
    certificates::supersede_and_insert(&txn, &issued).await?;
    crate::hub_job::queue_credential_updates(&txn, &alone).await?;
    if !alone.is_empty() {
        let details: Vec<String> = alone.iter().map(|c| format!("registration {}", c.registration_key)).collect();
        let changes: Vec<(&Actor, Change<'_>)> = certificates_alone
            .iter()
            .zip(&alone)
            .zip(&details)
            .map(|((pending, certificate), detail)| {
                let change = Change {
                    action: &pending.action,
                    resource_type: "certificate",
                    resource_id: &certificate.serial,
                    etag_before: None,
                    etag_after: None,
                    detail: Some(detail),
                };
                (&pending.actor, change)
            })
            .collect();
        audit::record_by(&txn, &changes).await?;
    }
    if !winners.is_empty() {
        operation::Entity::insert_many(winners.iter().map(|&i| operation_active(&operations[i])))
            .exec_without_returning(&txn)
            .await?;
        let actors: Vec<Actor> = winners
            .iter()
            .map(|&i| Actor { subject: format!("device:{}", records[i].registration_id), role: "device".into() })
            .collect();
        let changes: Vec<(&Actor, Change<'_>)> = winners
            .iter()
            .zip(&actors)
            .map(|(&i, actor)| {
                let change = Change {
                    action: "register",
                    resource_type: "registration",
                    resource_id: &records[i].registration_id,
                    etag_before: batch[i].outcome.expected_etag.as_deref(),
                    etag_after: Some(&records[i].etag),
                    detail: Some(&batch[i].outcome.detail),
                };
                (actor, change)
            })
            .collect();
        audit::record_by(&txn, &changes).await?;
    }
    let jobs: Vec<(&crate::NewHubJob, &str, &str, &str)> = winners
        .iter()
        .filter_map(|&i| {
            let job = batch[i].outcome.hub_job.as_ref()?;
            Some((job, records[i].key.as_str(), operations[i].id.as_str(), records[i].etag.as_str()))
        })
        .collect();
    let mut jobs: std::collections::HashMap<String, crate::HubJobRecord> = crate::hub_job::insert_upserts(&txn, jobs)
        .await?
        .into_iter()
        .map(|j| (j.registration_key.clone(), j))
        .collect();
    txn.commit().await?;

    let results = records
        .drain(..)
        .zip(operations)
        .zip(won)
        .map(|((record, operation), won)| {
            if won {
                let job = jobs.remove(&record.key);
                Ok((record, operation, job))
            } else {
                Err(StoreError::Conflict("the registration changed concurrently".into()))
            }
        })
        .collect();
    Ok((results, alone.into_iter().map(Ok).collect()))
}

/// Whether `batch` can go through [`write_first_registrations`]: first registrations of distinct devices, none
/// with a certificate or a hub job (the common case under load).
fn first_registrations_only(batch: &[Pending]) -> bool {
    let mut keys = std::collections::HashSet::new();
    batch.iter().all(|p| {
        let outcome = &p.outcome;
        outcome.expected_etag.is_none()
            && outcome.certificate.is_none()
            && outcome.hub_job.is_none()
            && keys.insert(outcome.record.key.as_str())
    })
}

/// [`write_first_registrations`] on PostgreSQL: the batch arrives as one JSON array (JSON columns as text); the
/// states whose key is new are inserted, and the operations and audit events of exactly those, in one statement.
/// Its text never changes, so each connection prepares it once.
const FIRST_REGISTRATIONS_POSTGRES: &str = r#"
WITH attempt AS (
    SELECT * FROM jsonb_to_recordset($1) AS a(
        n integer, key varchar, registration_id varchar, enrollment_group_key varchar, device_id varchar,
        assigned_hub varchar, status varchar, substatus varchar, error_code integer, error_message text,
        payload text, initial_twin text, etag varchar, at timestamptz, detail text,
        operation_id varchar, operation_status varchar, operation_error_code integer, operation_error_message text,
        result text)
), state AS (
    INSERT INTO registrations (key, registration_id, enrollment_group_key, device_id, assigned_hub, status,
        substatus, error_code, error_message, payload, initial_twin, etag, created_at, updated_at)
    SELECT key, registration_id, enrollment_group_key, device_id, assigned_hub, status, substatus, error_code,
        error_message, payload::json, initial_twin::json, etag, at, at
    FROM attempt ORDER BY n
    ON CONFLICT (key) DO NOTHING
    RETURNING key
), operation AS (
    INSERT INTO operations (id, registration_key, status, error_code, error_message, result, created_at, updated_at)
    SELECT operation_id, key, operation_status, operation_error_code, operation_error_message, result::json, at, at
    FROM attempt WHERE key IN (SELECT key FROM state)
), event AS (
    INSERT INTO audit_events (at, actor, role, action, resource_type, resource_id, etag_before, etag_after, detail)
    SELECT at, 'device:' || registration_id, 'device', 'register', 'registration', registration_id, NULL, etag,
        detail
    FROM attempt WHERE key IN (SELECT key FROM state) ORDER BY n
)
SELECT key FROM state"#;

/// [`write_first_registrations`]'s statement on each database.
const FIRST_REGISTRATIONS: Sql = Sql { postgres: FIRST_REGISTRATIONS_POSTGRES, sqlite: FIRST_REGISTRATIONS_SQLITE };

/// [`write_first_registrations`] on SQLite: the same, as one script in one transaction (SQLite has no inserting
/// CTEs). An attempt won if the state now carries its etag (etags are random and new per attempt). `jsonb_each`
/// hands each attempt on in SQLite's binary JSON, which `->>` reads directly; with `json_each` every `->>`
/// parsed the attempt's text again (a tenth of the service's CPU under load).
const FIRST_REGISTRATIONS_SQLITE: &str = r#"
BEGIN;
INSERT INTO registrations (key, registration_id, enrollment_group_key, device_id, assigned_hub, status, substatus,
    error_code, error_message, payload, initial_twin, etag, created_at, updated_at)
SELECT value->>'key', value->>'registration_id', value->>'enrollment_group_key', value->>'device_id',
    value->>'assigned_hub', value->>'status', value->>'substatus', value->>'error_code', value->>'error_message',
    value->>'payload', value->>'initial_twin', value->>'etag', value->>'at', value->>'at'
FROM jsonb_each(?1) WHERE true
ON CONFLICT (key) DO NOTHING;
CREATE TEMP TABLE IF NOT EXISTS won_attempt (n INTEGER PRIMARY KEY, attempt BLOB NOT NULL);
DELETE FROM temp.won_attempt;
INSERT INTO temp.won_attempt (n, attempt)
SELECT a.value->>'n', a.value FROM jsonb_each(?1) AS a
JOIN registrations AS r ON r.key = a.value->>'key' AND r.etag = a.value->>'etag';
INSERT INTO operations (id, registration_key, status, error_code, error_message, result, created_at, updated_at)
SELECT attempt->>'operation_id', attempt->>'key', attempt->>'operation_status', attempt->>'operation_error_code',
    attempt->>'operation_error_message', attempt->>'result', attempt->>'at', attempt->>'at'
FROM temp.won_attempt ORDER BY n;
INSERT INTO audit_events (at, actor, role, action, resource_type, resource_id, etag_before, etag_after, detail)
SELECT attempt->>'at', 'device:' || (attempt->>'registration_id'), 'device', 'register', 'registration',
    attempt->>'registration_id', NULL, attempt->>'etag', attempt->>'detail'
FROM temp.won_attempt ORDER BY n;
SELECT attempt->>'key' AS key FROM temp.won_attempt;
COMMIT;"#;

/// Writes a batch of first registrations (see [`first_registrations_only`]) in one round trip instead of five:
/// one statement on PostgreSQL (atomic by itself), one script on SQLite. Same rows as [`write_together`] writes.
async fn write_first_registrations(
    db: &DatabaseConnection,
    held: &mut HeldConnection,
    batch: &[Pending],
    records: Vec<RegistrationRecord>,
    now: DateTime<Utc>,
) -> Result<Written, StoreError> {
    let operations: Vec<OperationRecord> = batch
        .iter()
        .zip(&records)
        .map(|(pending, record)| OperationRecord {
            created_at: now,
            updated_at: now,
            result: Some((pending.snapshot)(record)),
            ..pending.outcome.operation.clone()
        })
        .collect();
    // Timestamps as sqlx writes them on SQLite (whose comparisons are textual), which PostgreSQL reads as well;
    // JSON columns as text.
    let at = now.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
    let text = |value: &Option<Value>| value.as_ref().map(Value::to_string);
    let attempts: Vec<Value> = batch
        .iter()
        .zip(records.iter().zip(&operations))
        .enumerate()
        .map(|(n, (pending, (record, operation)))| {
            serde_json::json!({
                "n": n,
                "key": record.key,
                "registration_id": record.registration_id,
                "enrollment_group_key": record.enrollment_group_key,
                "device_id": record.device_id,
                "assigned_hub": record.assigned_hub,
                "status": record.status,
                "substatus": record.substatus,
                "error_code": record.error_code,
                "error_message": record.error_message,
                "payload": text(&record.payload),
                "initial_twin": text(&record.initial_twin),
                "etag": record.etag,
                "at": at,
                "detail": pending.outcome.detail,
                "operation_id": operation.id,
                "operation_status": operation.status,
                "operation_error_code": operation.error_code,
                "operation_error_message": operation.error_message,
                "result": text(&operation.result),
            })
        })
        .collect();
    let rows = match held.fetch_all(FIRST_REGISTRATIONS, &Value::Array(attempts)).await {
        Ok(rows) => rows,
        Err(e) => {
            // The script stopped inside its transaction.
            if db.get_database_backend() == DbBackend::Sqlite {
                let _ = db.execute_unprepared("ROLLBACK").await;
            }
            return Err(e);
        }
    };
    let inserted = rows
        .iter()
        .map(|row| row.try_get::<String>("", "key"))
        .collect::<Result<std::collections::HashSet<String>, _>>()?;
    let results = records
        .into_iter()
        .zip(operations)
        .map(|(record, operation)| {
            if inserted.contains(&record.key) {
                Ok((record, operation, None))
            } else {
                Err(StoreError::Conflict("the registration changed concurrently".into()))
            }
        })
        .collect();
    Ok((results, Vec::new()))
}
