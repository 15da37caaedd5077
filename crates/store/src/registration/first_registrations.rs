//! Batches made only of devices' first registrations (the common case under load), with or without a certificate
//! each, written in one round trip: one statement on PostgreSQL, one script on SQLite, instead of the five to
//! seven statements of a general batch.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::writer::{CHANGED, DISABLED, Pending, Written};
use super::{OperationRecord, RegistrationRecord};
use crate::StoreError;
use crate::held::{Argument, HeldConnection, PgQuery, Sql, SqliteQuery, json_timestamp};

/// Whether `batch` can go through [`write_first_registrations`]: first registrations of distinct devices, none
/// with a hub job (the common case under load).
pub(super) fn first_registrations_only(batch: &[Pending]) -> bool {
    let mut keys = std::collections::HashSet::new();
    batch.len() <= SQLITE_MAX_ROWS
        && batch.iter().all(|p| {
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

/// [`write_first_registrations`]'s statement on each database, for a batch of `attempts`.
fn first_registrations(attempts: usize) -> Sql {
    Sql { postgres: FIRST_REGISTRATIONS_POSTGRES, sqlite: first_registrations_sqlite(attempts) }
}

/// The columns of an attempt as the SQLite script binds them, in order (see [`Attempts::bind_sqlite`]), with their
/// types in its temporary table.
const ATTEMPT_COLUMNS: [(&str, &str); 26] = [
    ("n", "INTEGER PRIMARY KEY"),
    ("key", "TEXT"),
    ("registration_id", "TEXT"),
    ("enrollment_group_key", "TEXT"),
    ("device_id", "TEXT"),
    ("assigned_hub", "TEXT"),
    ("status", "TEXT"),
    ("substatus", "TEXT"),
    ("error_code", "INTEGER"),
    ("error_message", "TEXT"),
    ("payload", "TEXT"),
    ("initial_twin", "TEXT"),
    ("etag", "TEXT"),
    ("at", "TEXT"),
    ("detail", "TEXT"),
    ("operation_id", "TEXT"),
    ("operation_status", "TEXT"),
    ("operation_error_code", "INTEGER"),
    ("operation_error_message", "TEXT"),
    ("result", "TEXT"),
    ("serial", "TEXT"),
    ("certificate_device_id", "TEXT"),
    ("issuing_ca", "TEXT"),
    ("not_before", "TEXT"),
    ("not_after", "TEXT"),
    ("thumbprint_sha256", "TEXT"),
];

/// Rows in the largest batch the SQLite script takes ([`MAX_BATCH`](super::writer::MAX_BATCH)), a power of two.
const SQLITE_MAX_ROWS: usize = super::writer::MAX_BATCH;

/// The SQLite script for a batch of `attempts`: the one for the next power of two, whose rows beyond the batch's
/// have no parameters bound, so they are all NULL and left out. No batch comes here with more attempts than the
/// largest script has rows ([`first_registrations_only`]).
fn first_registrations_sqlite(attempts: usize) -> &'static str {
    static SCRIPTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        std::iter::successors(Some(1), |rows| (*rows < SQLITE_MAX_ROWS).then_some(rows * 2))
            .map(sqlite_script)
            .collect()
    });
    let bucket = attempts.max(1).next_power_of_two().trailing_zeros() as usize;
    SCRIPTS.get(bucket).or_else(|| SCRIPTS.last()).map_or("", String::as_str)
}

/// [`write_first_registrations`] on SQLite: the same as on PostgreSQL, as one script in one transaction (SQLite
/// has no inserting CTEs), for up to `rows` attempts. The attempts arrive as bound parameters, a row of
/// [`ATTEMPT_COLUMNS`] each, into a temporary table that the later statements read. (They arrived as one JSON
/// argument before: extracting each field from its attempt's object was a seventh of the SQLite thread's time.) An
/// attempt won if the state now carries its etag (etags are random and new per attempt).
fn sqlite_script(rows: usize) -> String {
    let columns = ATTEMPT_COLUMNS.map(|(name, _)| name).join(", ");
    let definitions = ATTEMPT_COLUMNS.map(|(name, kind)| format!("{name} {kind}")).join(", ");
    let row = format!("({})", vec!["?"; ATTEMPT_COLUMNS.len()].join(", "));
    let values = vec![row.as_str(); rows].join(", ");
    format!(
        r#"
BEGIN;
CREATE TEMP TABLE IF NOT EXISTS first_attempt ({definitions}, authorized INTEGER, won INTEGER);
DELETE FROM temp.first_attempt;
INSERT INTO temp.first_attempt ({columns}, authorized, won)
SELECT *, NULL, 0 FROM (VALUES {values}) WHERE column1 IS NOT NULL;
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
COMMIT;"#
    )
}

/// One attempt in [`write_first_registrations`]'s argument (JSON columns as text), where `n` is the attempt's
/// position and `at` the batch's time (as [`json_timestamp`]): bound field by field ([`Attempts`]).
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
    not_before: Option<DateTime<Utc>>,
    not_after: Option<DateTime<Utc>>,
    thumbprint_sha256: Option<&'a str>,
}

/// A batch as the two statements take it: on SQLite a row of parameters per [`Attempt`] ([`ATTEMPT_COLUMNS`]), on
/// PostgreSQL one array per column (the attempts' order is their position) and the batch's time.
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

    /// In the order of [`ATTEMPT_COLUMNS`]; the script's rows beyond the batch's stay unbound (NULL).
    fn bind_sqlite<'q>(&self, mut query: SqliteQuery<'q>) -> SqliteQuery<'q> {
        let time = |at: Option<DateTime<Utc>>| at.map(json_timestamp);
        for a in &self.attempts {
            query = query
                .bind(i64::try_from(a.n).unwrap_or(i64::MAX))
                .bind(a.key)
                .bind(a.registration_id)
                .bind(a.enrollment_group_key)
                .bind(a.device_id)
                .bind(a.assigned_hub)
                .bind(a.status)
                .bind(a.substatus)
                .bind(a.error_code)
                .bind(a.error_message)
                .bind(a.payload.as_deref())
                .bind(a.initial_twin.as_deref())
                .bind(a.etag)
                .bind(a.at)
                .bind(a.detail)
                .bind(a.operation_id)
                .bind(a.operation_status)
                .bind(a.operation_error_code)
                .bind(a.operation_error_message)
                .bind(a.result.as_deref())
                .bind(a.serial)
                .bind(a.certificate_device_id)
                .bind(a.issuing_ca)
                .bind(time(a.not_before))
                .bind(time(a.not_after))
                .bind(a.thumbprint_sha256);
        }
        query
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
    let rows = held.fetch_all(first_registrations(attempts.len()), &Attempts { attempts, now }).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of parameters in `script`'s `VALUES`.
    fn rows(script: &str) -> usize {
        let placeholders = script.matches('?').count();
        assert_eq!(placeholders % ATTEMPT_COLUMNS.len(), 0, "whole rows only");
        placeholders / ATTEMPT_COLUMNS.len()
    }

    /// Every batch the writer can form has a script with a row for each of its attempts, and at most twice as
    /// many rows (a few scripts serve every size, so each stays prepared on the connection).
    #[test]
    fn every_batch_fits_a_script_at_most_twice_its_size() {
        for attempts in 1..=SQLITE_MAX_ROWS {
            let rows = rows(first_registrations_sqlite(attempts));
            assert!(rows >= attempts && rows < 2 * attempts, "{attempts} attempts in {rows} rows");
        }
        let scripts: std::collections::HashSet<_> =
            (1..=SQLITE_MAX_ROWS).map(|attempts| first_registrations_sqlite(attempts).as_ptr()).collect();
        assert_eq!(scripts.len(), 9, "1, 2, 4, ... 256 rows");
    }
}
