//! Queueing jobs in the transactions of the changes that cause them: the registration writer's upserts, the
//! credential updates of certificates issued outside a registration, and the retirement of devices. Its callers are
//! the other repositories' writes, not the outbox's workers.

use sea_orm::sea_query::Query;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};

use super::{
    CredentialRef, HubAction, HubJobRecord, NO_ADAPTER, NewHubJob, fresh_job, new_job_id, to_active,
    to_active_without_key,
};
use crate::StoreError;
use crate::entity::hub_job::{Column, Entity};
use crate::entity::{hub, registration};
use crate::secrets::Vault;

/// For the registration writer: the upsert jobs of the attempts that won (`(job, registration key, operation id,
/// new registration etag)`). A job whose device already has an older job on that hub waits its turn (it is not
/// claimed for inline delivery). Returns the jobs as written.
pub(crate) async fn insert_upserts(
    db: &impl ConnectionTrait,
    vault: &Vault,
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
        let rows = chunk.iter().map(|r| to_active(vault, r)).collect::<Result<Vec<_>, _>>()?;
        Entity::insert_many(rows).exec_without_returning(db).await?;
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
    // The hub credential is a certificate from now on: a later change of the enrollment's keys leaves it alone.
    let renewed: Vec<String> = rows.iter().map(|(key, ..)| key.clone()).collect();
    if !renewed.is_empty() {
        registration::Entity::update_many()
            .col_expr(registration::Column::HubKeySlot, sea_orm::sea_query::Expr::value(Option::<String>::None))
            .filter(registration::Column::Key.is_in(renewed))
            .exec(db)
            .await?;
    }
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
        let rows = jobs.iter().map(to_active_without_key).collect::<Result<Vec<_>, _>>()?;
        Entity::insert_many(rows).exec_without_returning(db).await?;
    }
    Ok(())
}

/// For the enrollment writes: the enrollments in `scope` whose symmetric keys changed, so every device of theirs
/// whose hub identity carries its symmetric key (`hub_key_slot` set: it authenticated with a key, and holds no
/// certificate for its hub) and that is `assigned` to a hub with an adapter gets an upsert job, run in order after
/// its earlier jobs, that sends the new key of the same slot (read from the enrollment when delivered). Devices that
/// are assigning already have an upsert that reads the keys when it runs; disabled and failed ones get nothing.
pub(crate) async fn queue_key_changes(db: &impl ConnectionTrait, scope: Retiring<'_>) -> Result<(), StoreError> {
    let (column, keys) = scope.selection();
    // (key, assigned hub, device id, hub key slot)
    type Row = (String, Option<String>, Option<String>, Option<String>);
    for chunk in keys.chunks(1000) {
        let rows: Vec<Row> = registration::Entity::find()
            .select_only()
            .column(registration::Column::Key)
            .column(registration::Column::AssignedHub)
            .column(registration::Column::DeviceId)
            .column(registration::Column::HubKeySlot)
            .filter(column.is_in(chunk.iter().cloned()))
            .filter(registration::Column::Status.eq("assigned"))
            .filter(registration::Column::HubKeySlot.is_not_null())
            .filter(registration::Column::AssignedHub.in_subquery(adapter_hubs()))
            .into_tuple()
            .all(db)
            .await?;
        let jobs: Vec<HubJobRecord> = rows
            .into_iter()
            .filter_map(|(key, hub, device_id, slot)| {
                let slot = zerotouch_wire::KeySlot::parse(slot.as_deref()?)?;
                Some(HubJobRecord {
                    document: Some(CredentialRef::SymmetricKey { slot }.document(None)),
                    ..fresh_job(new_job_id(), hub?, device_id?, key, HubAction::Upsert)
                })
            })
            .collect();
        if !jobs.is_empty() {
            // The jobs name the key's slot, not the key (read from the enrollment when delivered): nothing to seal.
            let rows = jobs.iter().map(to_active_without_key).collect::<Result<Vec<_>, _>>()?;
            Entity::insert_many(rows).exec_without_returning(db).await?;
        }
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

/// Whose hub identities a retirement (or a change of enrollment keys) concerns.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Retiring<'a> {
    /// These registrations (canonical ids).
    Registrations(&'a [String]),
    /// Every registration made through these enrollment groups (canonical ids).
    Groups(&'a [String]),
}

impl<'a> Retiring<'a> {
    /// The registrations' column to match, and the keys to match it with.
    fn selection(self) -> (registration::Column, &'a [String]) {
        match self {
            Self::Registrations(keys) => (registration::Column::Key, keys),
            Self::Groups(keys) => (registration::Column::EnrollmentGroupKey, keys),
        }
    }
}

/// Queues, in the caller's transaction, `action` for the hub identity of every registration in `scope` that is
/// assigned (or being assigned) to a hub with an adapter. Must run while the registrations still exist.
pub(crate) async fn retire(
    db: &impl ConnectionTrait,
    scope: Retiring<'_>,
    action: HubAction,
) -> Result<(), StoreError> {
    let (column, keys) = scope.selection();
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
            let rows = jobs.iter().map(to_active_without_key).collect::<Result<Vec<_>, _>>()?;
            Entity::insert_many(rows).exec_without_returning(db).await?;
        }
    }
    Ok(())
}
