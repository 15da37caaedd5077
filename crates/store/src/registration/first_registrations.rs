//! Batches made only of devices' first registrations (the common case under load), with or without a certificate
//! each, written in one round trip: one statement on PostgreSQL, one script on SQLite, instead of the five to
//! seven statements of a general batch.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::writer::{CHANGED, DISABLED, Pending, Written};
use super::{OperationRecord, RegistrationRecord};
use crate::StoreError;
use crate::held::{Argument, HeldConnection, PgQuery, Sql, SqliteQuery, json_timestamp, serialize_json_timestamp};

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

/// [`write_first_registrations`] on PostgreSQL: the batch arrives as one array per column ([`Attempts`], which
/// PostgreSQL reads without parsing, where one JSON argument cost a fifth of the writer's server process) and the
/// batch's time; the states whose key is new and whose enrollment is still enabled (for a state that assigns the
/// device) are inserted, and the operations, certificates and audit events of exactly those, in one statement.
/// Unlike the general batch, nothing is superseded: a new state's key has no `active` certificate, since deleting a
/// registration revokes its certificates in the same transaction. (Superseding anyway cost a sequential scan of
/// the certificates per batch, from a plan made while the table was small: 113 registrations/s.) The enrollment
/// rows are read `FOR SHARE`: a concurrent disable or delete either commits first (and the attempt is not written)
/// or waits for this statement, and then retires what it wrote. Its text never changes, so each connection
/// prepares it once.
const FIRST_REGISTRATIONS_POSTGRES: &str = r#"
WITH input AS (
    SELECT a.*, $25::timestamptz AS at FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
        $6::text[], $7::text[], $8::int4[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
        $14::text[], $15::text[], $16::int4[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[],
        $22::timestamptz[], $23::timestamptz[], $24::text[]) WITH ORDINALITY AS a(
        key, registration_id, enrollment_group_key, device_id, assigned_hub, status, substatus, error_code,
        error_message, payload, initial_twin, etag, detail, operation_id, operation_status, operation_error_code,
        operation_error_message, result, serial, certificate_device_id, issuing_ca, not_before, not_after,
        thumbprint_sha256, n)
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
SELECT json_agg(json_build_array(key, (key IN (SELECT key FROM state))::int, authorized::int))::text AS fates
FROM attempt"#;

/// [`write_first_registrations`]'s statement on each database.
const FIRST_REGISTRATIONS: Sql = Sql { postgres: FIRST_REGISTRATIONS_POSTGRES, sqlite: FIRST_REGISTRATIONS_SQLITE };

/// [`write_first_registrations`] on SQLite: the same, as one script in one transaction (SQLite has no inserting
/// CTEs). The attempts are read out of the JSON argument once, into a temporary table of plain columns that every
/// later statement reads (each `->>` searches an attempt's object for its field, and the statements below read
/// nearly every field). `jsonb_each` hands each attempt on in SQLite's binary JSON, which `->>` reads directly;
/// with `json_each` every `->>` parsed the attempt's text again. An attempt won if the state now carries its etag
/// (etags are random and new per attempt).
const FIRST_REGISTRATIONS_SQLITE: &str = r#"
BEGIN;
CREATE TEMP TABLE IF NOT EXISTS first_attempt (n INTEGER PRIMARY KEY, key TEXT, registration_id TEXT,
    enrollment_group_key TEXT, device_id TEXT, assigned_hub TEXT, status TEXT, substatus TEXT, error_code INTEGER,
    error_message TEXT, payload TEXT, initial_twin TEXT, etag TEXT, at TEXT, detail TEXT, operation_id TEXT,
    operation_status TEXT, operation_error_code INTEGER, operation_error_message TEXT, result TEXT, serial TEXT,
    certificate_device_id TEXT, issuing_ca TEXT, not_before TEXT, not_after TEXT, thumbprint_sha256 TEXT,
    authorized INTEGER, won INTEGER);
DELETE FROM temp.first_attempt;
INSERT INTO temp.first_attempt
SELECT value->>'n', value->>'key', value->>'registration_id', value->>'enrollment_group_key', value->>'device_id',
    value->>'assigned_hub', value->>'status', value->>'substatus', value->>'error_code', value->>'error_message',
    value->>'payload', value->>'initial_twin', value->>'etag', value->>'at', value->>'detail',
    value->>'operation_id', value->>'operation_status', value->>'operation_error_code',
    value->>'operation_error_message', value->>'result', value->>'serial', value->>'certificate_device_id',
    value->>'issuing_ca', value->>'not_before', value->>'not_after', value->>'thumbprint_sha256', NULL, 0
FROM jsonb_each(?1);
UPDATE temp.first_attempt SET authorized = CASE WHEN status NOT IN ('assigned', 'assigning') THEN true
    WHEN enrollment_group_key IS NULL THEN EXISTS (SELECT 1 FROM individual_enrollments AS e
        WHERE e.key = first_attempt.key AND e.provisioning_status <> 'disabled')
    ELSE EXISTS (SELECT 1 FROM enrollment_groups AS e
        WHERE e.key = first_attempt.enrollment_group_key AND e.provisioning_status <> 'disabled')
END;
INSERT INTO registrations (key, registration_id, enrollment_group_key, device_id, assigned_hub, status, substatus,
    error_code, error_message, payload, initial_twin, etag, created_at, updated_at)
SELECT key, registration_id, enrollment_group_key, device_id, assigned_hub, status, substatus, error_code,
    error_message, payload, initial_twin, etag, at, at
FROM temp.first_attempt WHERE authorized ORDER BY n
ON CONFLICT (key) DO NOTHING;
UPDATE temp.first_attempt SET won = EXISTS (SELECT 1 FROM registrations AS r
    WHERE r.key = first_attempt.key AND r.etag = first_attempt.etag);
INSERT INTO operations (id, registration_key, status, error_code, error_message, result, created_at, updated_at)
SELECT operation_id, key, operation_status, operation_error_code, operation_error_message, result, at, at
FROM temp.first_attempt WHERE won ORDER BY n;
INSERT INTO certificates (serial, registration_key, device_id, issuing_ca, not_before, not_after, status,
    thumbprint_sha256, revoked_at, revocation_reason, created_at)
SELECT serial, key, certificate_device_id, issuing_ca, not_before, not_after, 'active', thumbprint_sha256, NULL,
    NULL, at
FROM temp.first_attempt WHERE won AND serial IS NOT NULL ORDER BY n;
INSERT INTO audit_events (at, actor, role, action, resource_type, resource_id, etag_before, etag_after, detail)
SELECT at, 'device:' || registration_id, 'device', 'register', 'registration', registration_id, NULL, etag, detail
FROM temp.first_attempt WHERE won ORDER BY n;
SELECT json_group_array(json_array(key, won, authorized)) AS fates FROM temp.first_attempt;
COMMIT;"#;

/// One attempt in [`write_first_registrations`]'s argument (JSON columns as text): the SQLite script reads it as
/// a JSON object (timestamps as [`json_timestamp`]), the PostgreSQL statement field by field ([`Attempts`]), where
/// `n` is the attempt's position and `at` the batch's time.
#[derive(Serialize)]
struct Attempt<'a> {
    n: usize,
    key: &'a str,
    registration_id: &'a str,
    enrollment_group_key: Option<&'a str>,
    device_id: Option<&'a str>,
    assigned_hub: Option<&'a str>,
    status: &'a str,
    substatus: Option<&'a str>,
    error_code: Option<i32>,
    error_message: Option<&'a str>,
    payload: Option<String>,
    initial_twin: Option<String>,
    etag: &'a str,
    at: &'a str,
    detail: &'a str,
    operation_id: &'a str,
    operation_status: &'a str,
    operation_error_code: Option<i32>,
    operation_error_message: Option<&'a str>,
    result: Option<String>,
    serial: Option<&'a str>,
    certificate_device_id: Option<&'a str>,
    issuing_ca: Option<&'a str>,
    #[serde(serialize_with = "serialize_json_timestamp")]
    not_before: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_json_timestamp")]
    not_after: Option<DateTime<Utc>>,
    thumbprint_sha256: Option<&'a str>,
}

/// A batch as the two statements take it: on SQLite one JSON array of [`Attempt`]s, on PostgreSQL one array per
/// column (the attempts' order is their position) and the batch's time.
struct Attempts<'a> {
    attempts: Vec<Attempt<'a>>,
    now: DateTime<Utc>,
}

impl Argument for Attempts<'_> {
    fn bind_postgres<'q>(&self, query: PgQuery<'q>) -> PgQuery<'q> {
        let attempts = &self.attempts;
        let text =
            |field: for<'s> fn(&'s Attempt<'s>) -> Option<&'s str>| attempts.iter().map(field).collect::<Vec<_>>();
        let number = |field: fn(&Attempt<'_>) -> Option<i32>| attempts.iter().map(field).collect::<Vec<_>>();
        let time = |field: fn(&Attempt<'_>) -> Option<DateTime<Utc>>| attempts.iter().map(field).collect::<Vec<_>>();
        query
            .bind(text(|a| Some(a.key)))
            .bind(text(|a| Some(a.registration_id)))
            .bind(text(|a| a.enrollment_group_key))
            .bind(text(|a| a.device_id))
            .bind(text(|a| a.assigned_hub))
            .bind(text(|a| Some(a.status)))
            .bind(text(|a| a.substatus))
            .bind(number(|a| a.error_code))
            .bind(text(|a| a.error_message))
            .bind(text(|a| a.payload.as_deref()))
            .bind(text(|a| a.initial_twin.as_deref()))
            .bind(text(|a| Some(a.etag)))
            .bind(text(|a| Some(a.detail)))
            .bind(text(|a| Some(a.operation_id)))
            .bind(text(|a| Some(a.operation_status)))
            .bind(number(|a| a.operation_error_code))
            .bind(text(|a| a.operation_error_message))
            .bind(text(|a| a.result.as_deref()))
            .bind(text(|a| a.serial))
            .bind(text(|a| a.certificate_device_id))
            .bind(text(|a| a.issuing_ca))
            .bind(time(|a| a.not_before))
            .bind(time(|a| a.not_after))
            .bind(text(|a| a.thumbprint_sha256))
            .bind(self.now)
    }

    fn bind_sqlite<'q>(&self, query: SqliteQuery<'q>) -> SqliteQuery<'q> {
        query.bind(sea_orm::sqlx::types::Json(&self.attempts))
    }
}

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
    let certificates: Vec<Option<crate::CertificateRecord>> =
        batch.iter().map(|p| p.outcome.certificate.clone().map(crate::certificate::normalized)).collect();
    let attempts: Vec<Attempt<'_>> = batch
        .iter()
        .zip(records.iter().zip(&operations))
        .zip(&certificates)
        .enumerate()
        .map(|(n, ((pending, (record, operation)), certificate))| Attempt {
            n,
            key: &record.key,
            registration_id: &record.registration_id,
            enrollment_group_key: record.enrollment_group_key.as_deref(),
            device_id: record.device_id.as_deref(),
            assigned_hub: record.assigned_hub.as_deref(),
            status: &record.status,
            substatus: record.substatus.as_deref(),
            error_code: record.error_code,
            error_message: record.error_message.as_deref(),
            payload: text(&record.payload),
            initial_twin: text(&record.initial_twin),
            etag: &record.etag,
            at: &at,
            detail: &pending.outcome.detail,
            operation_id: &operation.id,
            operation_status: &operation.status,
            operation_error_code: operation.error_code,
            operation_error_message: operation.error_message.as_deref(),
            // Written straight from the typed result: no JSON tree in between.
            result: operation.result.as_ref().and_then(|r| serde_json::to_string(r).ok()),
            serial: certificate.as_ref().map(|c| c.serial.as_str()),
            certificate_device_id: certificate.as_ref().map(|c| c.device_id.as_str()),
            issuing_ca: certificate.as_ref().map(|c| c.issuing_ca.as_str()),
            not_before: certificate.as_ref().map(|c| c.not_before),
            not_after: certificate.as_ref().map(|c| c.not_after),
            thumbprint_sha256: certificate.as_ref().map(|c| c.thumbprint_sha256.as_str()),
        })
        .collect();
    let rows = held.fetch_all(FIRST_REGISTRATIONS, &Attempts { attempts, now }).await?;
    let fates: Vec<(String, u8, u8)> = match rows.first() {
        Some(row) => serde_json::from_str(&row.try_get::<String>("", "fates")?)
            .map_err(|e| StoreError::Corrupt(format!("the fates of a batch of first registrations: {e}")))?,
        None => Vec::new(),
    };
    let fates: std::collections::HashMap<String, (bool, bool)> =
        fates.into_iter().map(|(key, won, authorized)| (key, (won != 0, authorized != 0))).collect();
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
