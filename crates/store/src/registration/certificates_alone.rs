//! Batches made only of certificates issued outside a registration (EST enrollments and renewals, the common case
//! under an issuance load), written in one round trip: one statement on PostgreSQL, one script on SQLite, instead
//! of the nine statements of a general batch (begin, lock the registrations, check the enrollments and the
//! certificates renewed with, supersede, insert, look for hubs to tell, audit, commit). On PostgreSQL, where each
//! statement is a round trip, the writer's connection waited on those round trips while the devices' calls waited
//! on the writer: a third of the machine sat idle under the EST benchmark.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::writer::{CHANGED, DELETED, DISABLED, NOT_CURRENT, PendingCertificate, fresh};
use crate::StoreError;
use crate::certificate::CertificateRecord;
use crate::held::{AsJson, HeldConnection, Sql, json_timestamp};

/// Whether `certificates` can go through [`write_certificates_alone`]: one certificate per registration (two for
/// one registration in a batch need the general path, which stores the earlier ones superseded).
pub(super) fn one_per_registration(certificates: &[PendingCertificate]) -> bool {
    let mut keys = std::collections::HashSet::new();
    certificates.iter().all(|p| keys.insert(p.certificate.registration_key.as_str()))
}

/// [`write_certificates_alone`] on PostgreSQL: the batch arrives as one JSON array. The registrations are locked
/// (ordered against a concurrent delete or revocation, which revoke what they find); a certificate is written only
/// if its registration exists with the etag it was decided on, the registration's enrollment is still enabled and
/// the certificate the device renewed with (if any) is still active, read `FOR SHARE` like the enrollment. A
/// registration assigned to a hub with an adapter (a kind other than `none`, [`crate::NO_ADAPTER`]) must also have
/// the hub told of its new credential: such a certificate is not written here (`hub_told`) but by the general
/// batch, which queues the hub job in the same transaction. The registration's active certificate becomes
/// superseded and the new one is inserted with its audit event. The statement's text never changes, so the
/// writer's connection prepares it once. The registrations and certificates of the batch are looked up by
/// `= ANY (ARRAY(...))`, keys known before the scan: a semi-join (`IN (SELECT ...)`) left the generic plan free to
/// scan the whole index and filter, which a plan made while the tables were small did (the certificates
/// superseded took 2.4 of the statement's 5.4 ms for 29 certificates among 20,000).
const CERTIFICATES_ALONE_POSTGRES: &str = r#"
WITH input AS (
    SELECT * FROM jsonb_to_recordset($1) AS a(
        n integer, key varchar, expected_etag varchar, renewing varchar, serial varchar, device_id varchar,
        issuing_ca varchar, not_before timestamptz, not_after timestamptz, thumbprint_sha256 varchar,
        action varchar, actor varchar, role varchar, at timestamptz)
), state AS (
    SELECT r.key, r.etag, r.enrollment_group_key, r.status, r.assigned_hub FROM registrations AS r
    WHERE r.key = ANY (ARRAY(SELECT key FROM input)) FOR UPDATE
), attempt AS (
    SELECT input.*, state.key IS NOT NULL AS found, state.etag IS NOT DISTINCT FROM input.expected_etag AS unchanged,
        CASE WHEN state.key IS NULL THEN false
            WHEN state.enrollment_group_key IS NULL THEN EXISTS (SELECT 1 FROM individual_enrollments AS e
                WHERE e.key = input.key AND e.provisioning_status <> 'disabled' FOR SHARE)
            ELSE EXISTS (SELECT 1 FROM enrollment_groups AS e
                WHERE e.key = state.enrollment_group_key AND e.provisioning_status <> 'disabled' FOR SHARE)
        END AS enabled,
        input.renewing IS NULL OR EXISTS (SELECT 1 FROM certificates AS c
            WHERE c.serial = input.renewing AND c.status = 'active' FOR SHARE) AS current,
        COALESCE(state.status = 'assigned'
            AND state.assigned_hub IN (SELECT host_name FROM hubs WHERE kind <> 'none'), false) AS hub_told
    FROM input LEFT JOIN state ON state.key = input.key
), written AS (
    SELECT * FROM attempt WHERE found AND unchanged AND enabled AND current AND NOT hub_told
), superseded AS (
    UPDATE certificates SET status = 'superseded'
    WHERE registration_key = ANY (ARRAY(SELECT key FROM written)) AND status = 'active'
), certificate AS (
    INSERT INTO certificates (serial, registration_key, device_id, issuing_ca, not_before, not_after, status,
        thumbprint_sha256, revoked_at, revocation_reason, created_at)
    SELECT serial, key, device_id, issuing_ca, not_before, not_after, 'active', thumbprint_sha256, NULL, NULL, at
    FROM written ORDER BY n
), event AS (
    INSERT INTO audit_events (at, actor, role, action, resource_type, resource_id, etag_before, etag_after, detail)
    SELECT at, actor, role, action, 'certificate', serial, NULL, NULL, 'registration ' || key FROM written ORDER BY n
)
SELECT n, found, unchanged, enabled, current, hub_told FROM attempt"#;

/// [`write_certificates_alone`] on SQLite: the same, as one script in one transaction (SQLite has one writer and no
/// inserting CTEs); each attempt's fate is kept in a temporary table for the writes and the answer.
const CERTIFICATES_ALONE_SQLITE: &str = r#"
BEGIN;
CREATE TEMP TABLE IF NOT EXISTS certificate_attempt (n INTEGER PRIMARY KEY, attempt BLOB NOT NULL,
    found INTEGER NOT NULL, unchanged INTEGER NOT NULL, enabled INTEGER NOT NULL, current INTEGER NOT NULL,
    hub_told INTEGER NOT NULL);
DELETE FROM temp.certificate_attempt;
INSERT INTO temp.certificate_attempt (n, attempt, found, unchanged, enabled, current, hub_told)
SELECT a.value->>'n', a.value, r.key IS NOT NULL, r.etag IS a.value->>'expected_etag',
    CASE WHEN r.key IS NULL THEN false
        WHEN r.enrollment_group_key IS NULL THEN EXISTS (SELECT 1 FROM individual_enrollments AS e
            WHERE e.key = r.key AND e.provisioning_status <> 'disabled')
        ELSE EXISTS (SELECT 1 FROM enrollment_groups AS e
            WHERE e.key = r.enrollment_group_key AND e.provisioning_status <> 'disabled')
    END,
    a.value->>'renewing' IS NULL OR EXISTS (SELECT 1 FROM certificates AS c
        WHERE c.serial = a.value->>'renewing' AND c.status = 'active'),
    COALESCE(r.status = 'assigned' AND r.assigned_hub IN (SELECT host_name FROM hubs WHERE kind <> 'none'), false)
FROM jsonb_each(?1) AS a LEFT JOIN registrations AS r ON r.key = a.value->>'key';
UPDATE certificates SET status = 'superseded' WHERE status = 'active' AND registration_key IN (
    SELECT attempt->>'key' FROM temp.certificate_attempt
    WHERE found AND unchanged AND enabled AND current AND NOT hub_told);
INSERT INTO certificates (serial, registration_key, device_id, issuing_ca, not_before, not_after, status,
    thumbprint_sha256, revoked_at, revocation_reason, created_at)
SELECT attempt->>'serial', attempt->>'key', attempt->>'device_id', attempt->>'issuing_ca', attempt->>'not_before',
    attempt->>'not_after', 'active', attempt->>'thumbprint_sha256', NULL, NULL, attempt->>'at'
FROM temp.certificate_attempt WHERE found AND unchanged AND enabled AND current AND NOT hub_told ORDER BY n;
INSERT INTO audit_events (at, actor, role, action, resource_type, resource_id, etag_before, etag_after, detail)
SELECT attempt->>'at', attempt->>'actor', attempt->>'role', attempt->>'action', 'certificate', attempt->>'serial',
    NULL, NULL, 'registration ' || (attempt->>'key')
FROM temp.certificate_attempt WHERE found AND unchanged AND enabled AND current AND NOT hub_told ORDER BY n;
SELECT n, found, unchanged, enabled, current, hub_told FROM temp.certificate_attempt ORDER BY n;
COMMIT;"#;

/// [`write_certificates_alone`]'s statement on each database.
const CERTIFICATES_ALONE: Sql = Sql { postgres: CERTIFICATES_ALONE_POSTGRES, sqlite: CERTIFICATES_ALONE_SQLITE };

/// What became of one certificate of a batch written by [`write_certificates_alone`].
pub(super) enum Fate {
    /// Written (as given to the statement: normalized, `active`, created now).
    Written(CertificateRecord),
    /// Not written, for this reason.
    Refused(StoreError),
    /// Its registration's hub must be told: for the general batch to write.
    HubToBeTold,
}

/// Writes certificates issued outside a registration, one per registration (see [`one_per_registration`]), in one
/// round trip. Same rows and checks as the general batch
/// ([`write_together`](super::writer::write_together)), except for the certificates whose hub must be told
/// ([`Fate::HubToBeTold`]), which are left for it.
pub(super) async fn write_certificates_alone(
    held: &mut HeldConnection,
    pending: &[PendingCertificate],
    now: DateTime<Utc>,
) -> Result<Vec<Fate>, StoreError> {
    let certificates: Vec<CertificateRecord> = pending.iter().map(|p| fresh(p.certificate.clone(), now)).collect();
    let at = json_timestamp(now);
    let attempts: Vec<Value> = pending
        .iter()
        .zip(&certificates)
        .enumerate()
        .map(|(n, (pending, certificate))| {
            serde_json::json!({
                "n": n,
                "key": certificate.registration_key,
                "expected_etag": pending.guard.expected_etag,
                "renewing": pending.guard.renewing,
                "serial": certificate.serial,
                "device_id": certificate.device_id,
                "issuing_ca": certificate.issuing_ca,
                "not_before": json_timestamp(certificate.not_before),
                "not_after": json_timestamp(certificate.not_after),
                "thumbprint_sha256": certificate.thumbprint_sha256,
                "action": pending.action,
                "actor": pending.actor.subject,
                "role": pending.actor.role,
                "at": at,
            })
        })
        .collect();
    let rows = held.fetch_all(CERTIFICATES_ALONE, &AsJson(Value::Array(attempts))).await?;
    let mut certificates: Vec<Option<CertificateRecord>> = certificates.into_iter().map(Some).collect();
    let mut fates: Vec<Option<Fate>> = std::iter::repeat_with(|| None).take(pending.len()).collect();
    for row in &rows {
        let flag = |column: &str| row.try_get::<bool>("", column);
        let n = usize::try_from(row.try_get::<i32>("", "n")?).map_err(|_| StoreError::Corrupt("attempt".into()))?;
        let certificate = certificates.get_mut(n).and_then(Option::take);
        let Some(certificate) = certificate else { return Err(StoreError::Corrupt("attempt".into())) };
        let fate = if !flag("found")? {
            Fate::Refused(StoreError::NoLongerAuthorized(DELETED.into()))
        } else if !flag("unchanged")? {
            Fate::Refused(StoreError::Conflict(CHANGED.into()))
        } else if !flag("enabled")? {
            Fate::Refused(StoreError::NoLongerAuthorized(DISABLED.into()))
        } else if !flag("current")? {
            Fate::Refused(StoreError::NoLongerAuthorized(NOT_CURRENT.into()))
        } else if flag("hub_told")? {
            Fate::HubToBeTold
        } else {
            Fate::Written(certificate)
        };
        fates[n] = Some(fate);
    }
    fates.into_iter().map(|fate| fate.ok_or_else(|| StoreError::Corrupt("attempt without a fate".into()))).collect()
}
