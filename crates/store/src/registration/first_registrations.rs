//! Batches made only of devices' first registrations (the common case under load), with or without a certificate
//! each, written in one round trip: one statement on PostgreSQL, one script on SQLite, instead of the five to
//! seven statements of a general batch.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::writer::{CHANGED, DISABLED, Pending, Written};
use super::{OperationRecord, RegistrationRecord};
use crate::StoreError;
use crate::held::{HeldConnection, Sql, json_timestamp};

/// Whether `batch` can go through [`write_first_registrations`]: first registrations of distinct devices, none
/// with a hub job (the common case under load).
pub(super) fn first_registrations_only(batch: &[Pending]) -> bool {
    let mut keys = std::collections::HashSet::new();
    batch.iter().all(|p| {
        let outcome = &p.outcome;
        outcome.expected_etag.is_none()
            && outcome.renewing.is_none()
            && outcome.hub_job.is_none()
            && keys.insert(outcome.record.key.as_str())
    })
}

/// [`write_first_registrations`] on PostgreSQL: the batch arrives as one JSON array (JSON columns as text); the
/// states whose key is new and whose enrollment is still enabled (for a state that assigns the device) are
/// inserted, and the operations, certificates and audit events of exactly those, in one statement. Unlike the
/// general batch, nothing is superseded: a new state's key has no `active` certificate, since deleting a
/// registration revokes its certificates in the same transaction. (Superseding anyway cost a sequential scan of
/// the certificates per batch, from a plan made while the table was small: 113 registrations/s.) The enrollment
/// rows are read `FOR SHARE`: a concurrent disable or delete either commits first (and the attempt is not written)
/// or waits for this statement, and then retires what it wrote. Its text never changes, so each connection
/// prepares it once.
const FIRST_REGISTRATIONS_POSTGRES: &str = r#"
WITH input AS (
    SELECT * FROM jsonb_to_recordset($1) AS a(
        n integer, key varchar, registration_id varchar, enrollment_group_key varchar, device_id varchar,
        assigned_hub varchar, status varchar, substatus varchar, error_code integer, error_message text,
        payload text, initial_twin text, etag varchar, at timestamptz, detail text,
        operation_id varchar, operation_status varchar, operation_error_code integer, operation_error_message text,
        result text, serial varchar, certificate_device_id varchar, issuing_ca varchar, not_before timestamptz,
        not_after timestamptz, thumbprint_sha256 varchar)
), attempt AS (
    SELECT input.*, CASE WHEN status NOT IN ('assigned', 'assigning') THEN true
        WHEN enrollment_group_key IS NULL THEN EXISTS (SELECT 1 FROM individual_enrollments AS e
            WHERE e.key = input.key AND e.provisioning_status <> 'disabled' FOR SHARE)
        ELSE EXISTS (SELECT 1 FROM enrollment_groups AS e
            WHERE e.key = input.enrollment_group_key AND e.provisioning_status <> 'disabled' FOR SHARE)
    END AS authorized
    FROM input
), state AS (
    INSERT INTO registrations (key, registration_id, enrollment_group_key, device_id, assigned_hub, status,
        substatus, error_code, error_message, payload, initial_twin, etag, created_at, updated_at)
    SELECT key, registration_id, enrollment_group_key, device_id, assigned_hub, status, substatus, error_code,
        error_message, payload::json, initial_twin::json, etag, at, at
    FROM attempt WHERE authorized ORDER BY n
    ON CONFLICT (key) DO NOTHING
    RETURNING key
), operation AS (
    INSERT INTO operations (id, registration_key, status, error_code, error_message, result, created_at, updated_at)
    SELECT operation_id, key, operation_status, operation_error_code, operation_error_message, result::json, at, at
    FROM attempt WHERE key IN (SELECT key FROM state)
), certificate AS (
    INSERT INTO certificates (serial, registration_key, device_id, issuing_ca, not_before, not_after, status,
        thumbprint_sha256, revoked_at, revocation_reason, created_at)
    SELECT serial, key, certificate_device_id, issuing_ca, not_before, not_after, 'active', thumbprint_sha256, NULL,
        NULL, at
    FROM attempt WHERE serial IS NOT NULL AND key IN (SELECT key FROM state) ORDER BY n
), event AS (
    INSERT INTO audit_events (at, actor, role, action, resource_type, resource_id, etag_before, etag_after, detail)
    SELECT at, 'device:' || registration_id, 'device', 'register', 'registration', registration_id, NULL, etag,
        detail
    FROM attempt WHERE key IN (SELECT key FROM state) ORDER BY n
)
SELECT key, key IN (SELECT key FROM state) AS won, authorized FROM attempt"#;

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
FROM jsonb_each(?1) WHERE CASE WHEN value->>'status' NOT IN ('assigned', 'assigning') THEN true
    WHEN value->>'enrollment_group_key' IS NULL THEN EXISTS (SELECT 1 FROM individual_enrollments AS e
        WHERE e.key = value->>'key' AND e.provisioning_status <> 'disabled')
    ELSE EXISTS (SELECT 1 FROM enrollment_groups AS e
        WHERE e.key = value->>'enrollment_group_key' AND e.provisioning_status <> 'disabled')
END
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
INSERT INTO certificates (serial, registration_key, device_id, issuing_ca, not_before, not_after, status,
    thumbprint_sha256, revoked_at, revocation_reason, created_at)
SELECT attempt->>'serial', attempt->>'key', attempt->>'certificate_device_id', attempt->>'issuing_ca',
    attempt->>'not_before', attempt->>'not_after', 'active', attempt->>'thumbprint_sha256', NULL, NULL,
    attempt->>'at'
FROM temp.won_attempt WHERE attempt->>'serial' IS NOT NULL ORDER BY n;
INSERT INTO audit_events (at, actor, role, action, resource_type, resource_id, etag_before, etag_after, detail)
SELECT attempt->>'at', 'device:' || (attempt->>'registration_id'), 'device', 'register', 'registration',
    attempt->>'registration_id', NULL, attempt->>'etag', attempt->>'detail'
FROM temp.won_attempt ORDER BY n;
SELECT a.value->>'key' AS key, w.n IS NOT NULL AS won,
CASE WHEN a.value->>'status' NOT IN ('assigned', 'assigning') THEN true
    WHEN a.value->>'enrollment_group_key' IS NULL THEN EXISTS (SELECT 1 FROM individual_enrollments AS e
        WHERE e.key = a.value->>'key' AND e.provisioning_status <> 'disabled')
    ELSE EXISTS (SELECT 1 FROM enrollment_groups AS e
        WHERE e.key = a.value->>'enrollment_group_key' AND e.provisioning_status <> 'disabled')
END AS authorized
FROM jsonb_each(?1) AS a LEFT JOIN temp.won_attempt AS w ON w.n = a.value->>'n' ORDER BY a.value->>'n';
COMMIT;"#;

/// Writes a batch of first registrations (see [`first_registrations_only`]) in one round trip instead of five:
/// one statement on PostgreSQL (atomic by itself), one script on SQLite. Same rows as
/// [`write_together`](super::writer::write_together) writes.
pub(super) async fn write_first_registrations(
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
    // JSON columns as text.
    let at = json_timestamp(now);
    let text = |value: &Option<Value>| value.as_ref().map(Value::to_string);
    let attempts: Vec<Value> = batch
        .iter()
        .zip(records.iter().zip(&operations))
        .enumerate()
        .map(|(n, (pending, (record, operation)))| {
            let certificate = pending.outcome.certificate.clone().map(crate::certificate::normalized);
            let certificate = certificate.as_ref();
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
                "serial": certificate.map(|c| &c.serial),
                "certificate_device_id": certificate.map(|c| &c.device_id),
                "issuing_ca": certificate.map(|c| &c.issuing_ca),
                "not_before": certificate.map(|c| json_timestamp(c.not_before)),
                "not_after": certificate.map(|c| json_timestamp(c.not_after)),
                "thumbprint_sha256": certificate.map(|c| &c.thumbprint_sha256),
            })
        })
        .collect();
    let rows = held.fetch_all(FIRST_REGISTRATIONS, &Value::Array(attempts)).await?;
    let mut fates = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let key: String = row.try_get("", "key")?;
        fates.insert(key, (row.try_get::<bool>("", "won")?, row.try_get::<bool>("", "authorized")?));
    }
    let results = records
        .into_iter()
        .zip(operations)
        .map(|(record, operation)| match fates.get(&record.key) {
            Some((true, _)) => Ok((record, operation, None)),
            Some((false, false)) => Err(StoreError::NoLongerAuthorized(DISABLED.into())),
            Some((false, true)) | None => Err(StoreError::Conflict(CHANGED.into())),
        })
        .collect();
    Ok((results, Vec::new()))
}
