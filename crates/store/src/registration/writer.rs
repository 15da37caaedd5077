//! The registration writer: the task that writes registration attempts, and certificates issued outside a
//! registration, in batches of one transaction each (group commit), so that a registration costs a few statements
//! per batch rather than several per device.

use std::time::Duration;

use chrono::SubsecRound;
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect, TransactionTrait, TryInsertResult,
};
use tokio::sync::{mpsc, oneshot};

use super::certificates_alone::{Fate, one_per_registration, write_certificates_alone};
use super::first_registrations::{first_registrations_only, write_first_registrations};
use super::{Committed, RegistrationOutcome, RegistrationRecord, Snapshot, operation_active, to_active};
use crate::audit::{self, Change};
use crate::batch::{Batches, NO_LINGER, PATIENT_LINGER};
use crate::certificate::{self as certificates, CertificateRecord, CertificateStatus};
use crate::entity::operation;
use crate::entity::registration::{Column, Entity};
use crate::held::HeldConnection;
use crate::secrets::Vault;
use crate::{Actor, StoreError};
use zerotouch_wire::registration::RegistrationStatus;

/// One registration attempt waiting for the writer, and where its result goes.
pub(super) struct Pending {
    pub(super) outcome: RegistrationOutcome,
    pub(super) snapshot: Snapshot,
    pub(super) reply: oneshot::Sender<Result<Committed, StoreError>>,
}

/// A certificate issued outside a registration (EST), waiting for the writer.
pub(super) struct PendingCertificate {
    pub(super) certificate: CertificateRecord,
    pub(super) guard: super::CertificateGuard,
    pub(super) action: String,
    pub(super) actor: Actor,
    pub(super) reply: oneshot::Sender<Result<CertificateRecord, StoreError>>,
}

/// Why a write is refused: the enrollment changed after the decision.
pub(super) const DISABLED: &str = "the enrollment was disabled or deleted while the device registered";
/// Why a write is refused: the certificate a renewal authenticated with is no longer active.
pub(super) const NOT_CURRENT: &str = "the certificate the device authenticated with was revoked or renewed meanwhile";
/// Why an EST certificate is refused: its registration is gone.
pub(super) const DELETED: &str = "the registration was deleted";
/// Why a write lost: another write changed the registration first.
pub(super) const CHANGED: &str = "the registration changed concurrently";

/// What the writer writes.
pub(super) enum Work {
    Register(Box<Pending>),
    Certificate(Box<PendingCertificate>),
}

impl Work {
    /// How long this work may wait for more to join its batch: a registration attempt's device polls for its
    /// result later; an EST certificate's caller waits for it, so it does not wait.
    fn linger(&self) -> Duration {
        match self {
            Self::Register(_) => PATIENT_LINGER,
            Self::Certificate(_) => NO_LINGER,
        }
    }
}

/// Most attempts written in one transaction (well within both databases' limits on bound parameters).
pub(super) const MAX_BATCH: usize = 256;

/// The registration writer: attempts queue up while a transaction is in flight and the next transaction writes
/// all of them, with those arriving within a few milliseconds more while busy (group commit, see [`Batches`] and
/// [`Work::linger`]). A registration costs a few SQL statements per *batch* instead of five per device, which is
/// what lets one SQLite writer or one PostgreSQL connection serve thousands of devices a second.
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
    /// Hub jobs' hub keys are sealed with `vault`.
    pub(crate) fn start(db: DatabaseConnection, keep: bool, vault: Vault) -> Self {
        let (queue, receiver) = mpsc::channel::<Work>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let mut held = HeldConnection::new(db.clone(), keep).looking_up_by_index();
            let closed = held.closed();
            tokio::pin!(closed);
            let mut batches = Batches::new(receiver, MAX_BATCH, Work::linger);
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while batches.next(&mut batch, &mut closed).await {
                write_batch(&db, &vault, &mut held, std::mem::take(&mut batch)).await;
                batches.done();
            }
        });
        Self { queue }
    }

    /// Queues `work` for the writer.
    pub(super) async fn send(&self, work: Work) -> Result<(), StoreError> {
        let stopped = || StoreError::Unavailable("the registration writer has stopped".into());
        self.queue.send(work).await.map_err(|_| stopped())
    }
}

/// Whether the registration `record` was to write already holds its device id on its hub. Two replicas inserting
/// the same new registration at once can both pass PostgreSQL's check of the key (the conflict it resolves) before
/// either has inserted it; the later one then waits on the device-id index for the earlier and fails there, on a
/// device id that its own registration holds. That is a concurrent change, to decide again on (the answer is then
/// the same assignment), not another device's id.
async fn holds_its_device_id(db: &DatabaseConnection, record: &RegistrationRecord) -> Result<bool, StoreError> {
    let Some(holder) = Entity::find_by_id(record.key.clone()).one(db).await? else { return Ok(false) };
    let lower = |id: &Option<String>| id.as_deref().map(str::to_lowercase);
    Ok(holder.assigned_hub == record.assigned_hub && lower(&holder.device_id) == lower(&record.device_id))
}

/// Writes a batch in one transaction (a batch of certificates issued outside a registration in one round trip, see
/// [`write_certificates_alone`]); if that transaction fails as a whole, writes each attempt alone, so that one
/// attempt's failure (say, its group deleted meanwhile) is that attempt's answer only.
async fn write_batch(db: &DatabaseConnection, vault: &Vault, held: &mut HeldConnection, work: Vec<Work>) {
    let (mut batch, mut certificates) = (Vec::new(), Vec::new());
    for item in work {
        match item {
            Work::Register(pending) => batch.push(*pending),
            Work::Certificate(pending) => certificates.push(*pending),
        }
    }
    if batch.is_empty() && one_per_registration(&certificates) {
        match write_certificates_alone(held, &certificates, crate::now()).await {
            Ok(fates) => {
                let mut hubs_to_tell = Vec::new();
                for (pending, fate) in certificates.into_iter().zip(fates) {
                    match fate {
                        Fate::Written(certificate) => drop(pending.reply.send(Ok(certificate))),
                        Fate::Refused(e) => drop(pending.reply.send(Err(e))),
                        Fate::HubToBeTold => hubs_to_tell.push(pending),
                    }
                }
                certificates = hubs_to_tell;
            }
            Err(e) if certificates.len() == 1 => {
                let pending = certificates.remove(0);
                let e = match e {
                    StoreError::Database(e) => StoreError::from_insert(e, crate::certificate::DUPLICATE),
                    e => e,
                };
                drop(pending.reply.send(Err(e)));
            }
            // Say, one serial taken: the general batch below writes them again, each alone if need be.
            Err(_) => {}
        }
        if certificates.is_empty() {
            return;
        }
    }
    let nothing = || StoreError::Conflict("nothing was written".into());
    let (results, issued) = match write_together(db, vault, held, &batch, &certificates).await {
        Ok(results) => results,
        Err(_) if batch.len() + certificates.len() > 1 => {
            let mut results = Vec::with_capacity(batch.len());
            for pending in &batch {
                let one = write_together(db, vault, held, std::slice::from_ref(pending), &[]).await;
                results.push(one.map_or_else(Err, |(mut r, _)| r.pop().unwrap_or_else(|| Err(nothing()))));
            }
            let mut issued = Vec::with_capacity(certificates.len());
            for pending in &certificates {
                let one = write_together(db, vault, held, &[], std::slice::from_ref(pending)).await;
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
    // The callers may have gone (their clients disconnected); what was written stays written.
    // An attempt written alone that takes a device id another registration holds on its hub fails on the unique
    // index: it learns so, unless the holder is its own registration, written meanwhile by another replica.
    for (pending, result) in batch.into_iter().zip(results) {
        // If the holder cannot be read, the answer is that error: a transient failure must not be written down as
        // the device's `failed` registration.
        let result = match result.map_err(StoreError::device_id_taken) {
            Err(StoreError::DeviceIdTaken) => match holds_its_device_id(db, &pending.outcome.record).await {
                Ok(true) => Err(StoreError::Conflict(CHANGED.into())),
                Ok(false) => Err(StoreError::DeviceIdTaken),
                Err(e) => Err(e),
            },
            result => result,
        };
        let _ = pending.reply.send(result);
    }
    for (pending, result) in certificates.into_iter().zip(issued) {
        let _ = pending.reply.send(result);
    }
}

/// What one transaction answers: per registration attempt, and per certificate issued outside a registration.
pub(super) type Written = (Vec<Result<Committed, StoreError>>, Vec<Result<CertificateRecord, StoreError>>);

/// One transaction for `batch`: new states in one multi-row insert that skips keys written meanwhile, changed
/// states each guarded by its etag, then the operations and audit events of the attempts that won, in one insert
/// each. Attempts that lost a race get [`StoreError::Conflict`].
pub(super) async fn write_together(
    db: &DatabaseConnection,
    vault: &Vault,
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
        return write_first_registrations(held, batch, records, now).await;
    }
    let txn = db.begin().await?;

    // What the decisions relied on, read again under lock: the enrollment is still enabled, and a renewing
    // device's certificate is still its registration's active one.
    let attempts: Vec<Subject<'_>> = batch
        .iter()
        .zip(&records)
        .map(|(p, r)| Subject {
            key: &r.key,
            group: r.enrollment_group_key.as_deref(),
            renewing: p.outcome.renewing.as_deref(),
            grants: [RegistrationStatus::Assigned, RegistrationStatus::Assigning]
                .iter()
                .any(|granting| r.status == granting.as_str()),
        })
        .collect();
    let refused = still_authorized(&txn, &attempts).await?;

    // New states: the first attempt for a key wins (within the batch and against the table).
    let mut won = vec![false; batch.len()];
    let mut seen = std::collections::HashSet::new();
    let inserts: Vec<usize> = (0..batch.len())
        .filter(|&i| {
            refused[i].is_none() && batch[i].outcome.expected_etag.is_none() && seen.insert(records[i].key.clone())
        })
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
        if refused[i].is_some() {
            continue;
        }
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
    let fresh = |certificate| fresh(certificate, now);
    let mut issued: Vec<CertificateRecord> = winners
        .iter()
        .filter_map(|&i| {
            let mut certificate = fresh(batch[i].outcome.certificate.clone()?);
            certificate.registration_key = records[i].key.clone();
            Some(certificate)
        })
        .collect();
    // Certificates issued outside a registration: written only while the registration is as it was decided on
    // (its etag), its enrollment enabled and the device's certificate its active one.
    let mut alone_results: Vec<Result<(), StoreError>> = Vec::with_capacity(certificates_alone.len());
    if !certificates_alone.is_empty() {
        // Locked: ordered against a concurrent delete or revocation of the registration, which revoke what they
        // find.
        let keys: Vec<String> = certificates_alone.iter().map(|p| p.certificate.registration_key.clone()).collect();
        let states: std::collections::HashMap<String, crate::entity::registration::Model> = Entity::find()
            .filter(Column::Key.is_in(keys))
            .lock_exclusive()
            .all(&txn)
            .await?
            .into_iter()
            .map(|m| (m.key.clone(), m))
            .collect();
        let subjects: Vec<Subject<'_>> = certificates_alone
            .iter()
            .map(|p| {
                let key = p.certificate.registration_key.as_str();
                let group = states.get(key).and_then(|m| m.enrollment_group_key.as_deref());
                Subject { key, group, renewing: p.guard.renewing.as_deref(), grants: true }
            })
            .collect();
        let refused = still_authorized(&txn, &subjects).await?;
        for (pending, refused) in certificates_alone.iter().zip(refused) {
            let state = states.get(&pending.certificate.registration_key);
            alone_results.push(match (state, refused) {
                (None, _) => Err(StoreError::NoLongerAuthorized(DELETED.into())),
                (Some(state), _) if state.etag != pending.guard.expected_etag => {
                    Err(StoreError::Conflict(CHANGED.into()))
                }
                (Some(_), Some(why)) => Err(StoreError::NoLongerAuthorized(why)),
                (Some(_), None) => Ok(()),
            });
        }
    }
    let alone: Vec<CertificateRecord> = certificates_alone
        .iter()
        .zip(&alone_results)
        .filter(|(_, result)| result.is_ok())
        .map(|(p, _)| fresh(p.certificate.clone()))
        .collect();
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
            .zip(&alone_results)
            .filter(|(_, result)| result.is_ok())
            .map(|(pending, _)| pending)
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
    let mut jobs: std::collections::HashMap<String, crate::HubJobRecord> =
        crate::hub_job::insert_upserts(&txn, vault, jobs)
            .await?
            .into_iter()
            .map(|j| (j.registration_key.clone(), j))
            .collect();
    txn.commit().await?;

    let results = records
        .drain(..)
        .zip(operations)
        .zip(won.into_iter().zip(refused))
        .map(|((record, operation), (won, refused))| match (won, refused) {
            (true, _) => {
                let job = jobs.remove(&record.key);
                Ok((record, operation, job))
            }
            (false, Some(why)) => Err(StoreError::NoLongerAuthorized(why)),
            (false, None) => Err(StoreError::Conflict(CHANGED.into())),
        })
        .collect();
    let mut written = alone.into_iter();
    let certificates = alone_results
        .into_iter()
        .map(|result| result.and_then(|()| written.next().ok_or_else(|| StoreError::Corrupt("certificate".into()))))
        .collect();
    Ok((results, certificates))
}

/// `certificate` as a batch written at `now` stores it: normalized, `active`, created `now`.
pub(super) fn fresh(certificate: CertificateRecord, now: chrono::DateTime<chrono::Utc>) -> CertificateRecord {
    let mut certificate = certificates::normalized(certificate);
    certificate.status = CertificateStatus::Active;
    certificate.revoked_at = None;
    certificate.revocation_reason = None;
    certificate.created_at = now;
    certificate
}

/// Whose authorization a write re-checks: a registration (canonical id), the group it is written through (else its
/// individual enrollment, of the same key), the operational certificate it renews with, and whether it grants
/// anything (assigns the device, or issues a certificate); a state that does not (`disabled`, `failed`) is written
/// as decided.
struct Subject<'a> {
    key: &'a str,
    group: Option<&'a str>,
    renewing: Option<&'a str>,
    grants: bool,
}

/// For each subject, why it may no longer be written (`None`: it may): its enrollment is gone or disabled, or the
/// certificate it renews with is no longer its registration's active one. Reads the rows `FOR SHARE` (PostgreSQL;
/// SQLite has one writer): a concurrent disable, delete or revocation either committed before, and is seen here, or
/// waits for this transaction, and then retires what it wrote.
async fn still_authorized(
    txn: &impl sea_orm::ConnectionTrait,
    subjects: &[Subject<'_>],
) -> Result<Vec<Option<String>>, StoreError> {
    use crate::entity::{certificate, enrollment_group, individual_enrollment};
    use std::collections::HashSet;
    let disabled = zerotouch_wire::enrollment::ProvisioningStatus::Disabled.as_str();
    let groups: Vec<String> = subjects.iter().filter_map(|s| s.group.map(str::to_owned)).collect();
    let individuals: Vec<String> = subjects.iter().filter(|s| s.group.is_none()).map(|s| s.key.to_owned()).collect();
    let serials: Vec<String> = subjects.iter().filter_map(|s| s.renewing.map(str::to_owned)).collect();
    let mut enabled_groups = HashSet::new();
    for chunk in groups.chunks(MAX_BATCH) {
        let rows = enrollment_group::Entity::find()
            .filter(enrollment_group::Column::Key.is_in(chunk.iter().cloned()))
            .filter(enrollment_group::Column::ProvisioningStatus.ne(disabled))
            .lock_shared()
            .all(txn)
            .await?;
        enabled_groups.extend(rows.into_iter().map(|m| m.key));
    }
    let mut enabled_individuals = HashSet::new();
    for chunk in individuals.chunks(MAX_BATCH) {
        let rows = individual_enrollment::Entity::find()
            .filter(individual_enrollment::Column::Key.is_in(chunk.iter().cloned()))
            .filter(individual_enrollment::Column::ProvisioningStatus.ne(disabled))
            .lock_shared()
            .all(txn)
            .await?;
        enabled_individuals.extend(rows.into_iter().map(|m| m.key));
    }
    let mut active = HashSet::new();
    for chunk in serials.chunks(MAX_BATCH) {
        let rows = certificate::Entity::find()
            .filter(certificate::Column::Serial.is_in(chunk.iter().cloned()))
            .filter(certificate::Column::Status.eq(CertificateStatus::Active.as_str()))
            .lock_shared()
            .all(txn)
            .await?;
        active.extend(rows.into_iter().map(|m| m.serial));
    }
    Ok(subjects
        .iter()
        .map(|s| {
            if !s.grants {
                return None;
            }
            let enabled = match s.group {
                Some(group) => enabled_groups.contains(group),
                None => enabled_individuals.contains(s.key),
            };
            if !enabled {
                Some(DISABLED.to_owned())
            } else if s.renewing.is_some_and(|serial| !active.contains(serial)) {
                Some(NOT_CURRENT.to_owned())
            } else {
                None
            }
        })
        .collect())
}
