//! Operational certificates we issued (issue #4 §2, §4, §5): written by the registration writer in the
//! transaction of the registration that got them, revoked by admins and by the changes that retire a device.
//!
//! Guarantees:
//! - A registration has at most one `active` certificate: the registration writer marks the previous ones
//!   `superseded` in the same transaction that inserts the new one, and only for an attempt that won.
//! - Revocation is idempotent and exact: the certificates to revoke are read with a row lock (PostgreSQL; SQLite
//!   has one writer), so two concurrent revocations of one certificate revoke and audit it once. The issuing
//!   CA's CRL is marked stale and its revocation revision bumped in the same transaction (see `issuing_ca`).
//! - Retiring a device (deleting its registration, deleting or disabling its enrollment or group) revokes every
//!   certificate of it that is neither revoked nor expired: `superseded` ones too, as they stay valid for a hub
//!   until they expire.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use crate::audit::{self, Change};
use crate::entity::certificate::{self, Column, Entity};
use crate::entity::registration;
use crate::{Actor, Page, StoreError};

/// The revocation reason of the changes that retire a device (RFC 5280 §5.3.1 `cessationOfOperation`).
pub(crate) const CESSATION_OF_OPERATION: &str = "cessationOfOperation";

/// Where a certificate is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateStatus {
    /// The registration's current certificate.
    Active,
    /// Replaced by a newer certificate of the same registration (still valid until it expires).
    Superseded,
    /// Revoked: listed on its issuing CA's CRL.
    Revoked,
}

impl CertificateStatus {
    /// The stored (and API) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Superseded => "superseded",
            Self::Revoked => "revoked",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "active" => Ok(Self::Active),
            "superseded" => Ok(Self::Superseded),
            "revoked" => Ok(Self::Revoked),
            other => Err(StoreError::Corrupt(format!("certificate status {other:?}"))),
        }
    }
}

/// A certificate we issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    /// The serial number, lower-case hex.
    pub serial: String,
    /// The canonical registration id it was issued to.
    pub registration_key: String,
    /// The device id (the certificate's subject CN).
    pub device_id: String,
    /// The name of the issuing CA that signed it.
    pub issuing_ca: String,
    /// Start of validity.
    pub not_before: DateTime<Utc>,
    /// End of validity.
    pub not_after: DateTime<Utc>,
    /// Where it is in its life.
    pub status: CertificateStatus,
    /// SHA-256 of the DER, lower-case hex (unique).
    pub thumbprint_sha256: String,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why (RFC 5280 reason name, e.g. `keyCompromise`, `cessationOfOperation`).
    pub revocation_reason: Option<String>,
    /// When it was stored. The registration writer sets it (and the status and registration key) itself.
    pub created_at: DateTime<Utc>,
}

/// A revoked certificate, as a CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// The serial number, lower-case hex.
    pub serial: String,
    /// When it was revoked.
    pub revoked_at: DateTime<Utc>,
    /// Why (RFC 5280 reason name).
    pub reason: String,
}

/// Which certificates to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateFilter {
    /// Only certificates whose validity ends before this time.
    pub expiring_before: Option<DateTime<Utc>>,
    /// Only certificates with this status.
    pub status: Option<CertificateStatus>,
}

pub(crate) fn to_record(m: certificate::Model) -> Result<CertificateRecord, StoreError> {
    Ok(CertificateRecord {
        status: CertificateStatus::parse(&m.status)?,
        serial: m.serial,
        registration_key: m.registration_key,
        device_id: m.device_id,
        issuing_ca: m.issuing_ca,
        not_before: m.not_before,
        not_after: m.not_after,
        thumbprint_sha256: m.thumbprint_sha256,
        revoked_at: m.revoked_at,
        revocation_reason: m.revocation_reason,
        created_at: m.created_at,
    })
}

fn to_active(r: &CertificateRecord) -> certificate::ActiveModel {
    certificate::ActiveModel {
        serial: Set(r.serial.clone()),
        registration_key: Set(r.registration_key.clone()),
        device_id: Set(r.device_id.clone()),
        issuing_ca: Set(r.issuing_ca.clone()),
        not_before: Set(r.not_before),
        not_after: Set(r.not_after),
        status: Set(r.status.as_str().to_owned()),
        thumbprint_sha256: Set(r.thumbprint_sha256.clone()),
        revoked_at: Set(r.revoked_at),
        revocation_reason: Set(r.revocation_reason.clone()),
        created_at: Set(r.created_at),
    }
}

/// Normalizes a certificate about to be stored: the store's time precision, lower-case hex.
pub(crate) fn normalized(mut r: CertificateRecord) -> CertificateRecord {
    r.serial.make_ascii_lowercase();
    r.thumbprint_sha256.make_ascii_lowercase();
    r.not_before = crate::at_store_precision(r.not_before);
    r.not_after = crate::at_store_precision(r.not_after);
    r.created_at = crate::at_store_precision(r.created_at);
    r.revoked_at = r.revoked_at.map(crate::at_store_precision);
    r
}

/// Rows per statement: 11 columns a row stay far below both databases' limits on bound parameters.
const CHUNK: usize = 1000;

/// What a certificate whose serial is taken is called in the conflict it causes (`StoreError::from_insert`).
pub(crate) const DUPLICATE: &str = "a certificate with this serial";

/// For the registration writer: marks the `active` certificates of the registrations of `certificates`
/// superseded, then inserts `certificates` (which must be normalized, `active`, one per registration).
pub(crate) async fn supersede_and_insert(
    db: &impl ConnectionTrait,
    certificates: &[CertificateRecord],
) -> Result<(), StoreError> {
    for chunk in certificates.chunks(CHUNK) {
        Entity::update_many()
            .col_expr(Column::Status, Expr::value(CertificateStatus::Superseded.as_str()))
            .filter(Column::RegistrationKey.is_in(chunk.iter().map(|c| c.registration_key.clone())))
            .filter(Column::Status.eq(CertificateStatus::Active.as_str()))
            .exec(db)
            .await?;
        Entity::insert_many(chunk.iter().map(to_active))
            .exec_without_returning(db)
            .await
            .map_err(|e| StoreError::from_insert(e, DUPLICATE))?;
    }
    Ok(())
}

/// Whose certificates a revocation concerns.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Revoking<'a> {
    /// One certificate, whatever its expiry.
    #[cfg(feature = "test-support")]
    Serial(&'a str),
    /// The certificates of these registrations (canonical ids).
    Registrations(&'a [String]),
    /// The certificates of every registration made through these enrollment groups (canonical ids).
    Groups(&'a [String]),
}

/// Revokes, in the caller's transaction, the certificates `scope` names that are not revoked yet; marks their
/// issuing CAs' CRLs stale; audits one `revoke` event per certificate. Returns what it revoked.
pub(crate) async fn revoke(
    db: &impl ConnectionTrait,
    scope: Revoking<'_>,
    reason: &str,
    actor: &Actor,
) -> Result<Vec<CertificateRecord>, StoreError> {
    let now = crate::now();
    let not_revoked =
        Column::Status.is_in([CertificateStatus::Active.as_str(), CertificateStatus::Superseded.as_str()]);
    let mut conditions = Vec::new();
    match scope {
        #[cfg(feature = "test-support")]
        Revoking::Serial(serial) => conditions.push(Condition::all().add(Column::Serial.eq(serial))),
        Revoking::Registrations(keys) => {
            for chunk in keys.chunks(CHUNK) {
                conditions.push(Condition::all().add(Column::RegistrationKey.is_in(chunk.iter().cloned())));
            }
        }
        Revoking::Groups(groups) => {
            for chunk in groups.chunks(CHUNK) {
                let registrations = Query::select()
                    .column(registration::Column::Key)
                    .from(registration::Entity)
                    .and_where(registration::Column::EnrollmentGroupKey.is_in(chunk.iter().cloned()))
                    .to_owned();
                conditions.push(Condition::all().add(Column::RegistrationKey.in_subquery(registrations)));
            }
        }
    }
    let mut revoked = Vec::new();
    for condition in conditions {
        // FOR UPDATE: a concurrent revocation of the same rows waits, then no longer finds them.
        let rows = Entity::find()
            .filter(condition)
            .filter(not_revoked.clone())
            .order_by_asc(Column::Serial)
            .lock_exclusive()
            .all(db)
            .await?;
        for chunk in rows.chunks(CHUNK) {
            Entity::update_many()
                .col_expr(Column::Status, Expr::value(CertificateStatus::Revoked.as_str()))
                .col_expr(Column::RevokedAt, Expr::value(now))
                .col_expr(Column::RevocationReason, Expr::value(reason))
                .filter(Column::Serial.is_in(chunk.iter().map(|m| m.serial.clone())))
                .exec(db)
                .await?;
        }
        for row in rows {
            let mut record = to_record(row)?;
            record.status = CertificateStatus::Revoked;
            record.revoked_at = Some(now);
            record.revocation_reason = Some(reason.to_owned());
            revoked.push(record);
        }
    }
    let mut cas: Vec<String> = revoked.iter().map(|c| c.issuing_ca.clone()).collect();
    cas.sort();
    cas.dedup();
    crate::issuing_ca::mark_crls_stale(db, &cas).await?;
    let details: Vec<String> =
        revoked.iter().map(|c| format!("{reason} (registration {})", c.registration_key)).collect();
    let changes: Vec<Change<'_>> = revoked
        .iter()
        .zip(&details)
        .map(|(c, detail)| Change {
            action: "revoke",
            resource_type: "certificate",
            resource_id: &c.serial,
            etag_before: None,
            etag_after: None,
            detail: Some(detail),
        })
        .collect();
    audit::record(db, actor, &changes).await?;
    Ok(revoked)
}

/// A continuation token of the certificate listing: the last item's expiry (microseconds) and serial.
fn cursor(r: &CertificateRecord) -> String {
    format!("{}_{}", r.not_after.timestamp_micros(), r.serial)
}

fn parse_cursor(token: &str) -> Result<(DateTime<Utc>, String), StoreError> {
    let bad = || StoreError::Corrupt("continuation token".into());
    let (micros, serial) = token.split_once('_').ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok((at, serial.to_owned()))
}

repository_with_reader! {
    /// The certificates the managed CA issued: reads (through [`CertificateReader`]) and revocations.
    Certificates,
    /// The certificates the managed CA issued, read-only.
    CertificateReader
}

impl<'a> CertificateReader<'a> {
    /// The certificate a device presented, by its serial and SHA-256 thumbprint (hex, either case), read through
    /// the [`DeviceReader`](crate::reader::DeviceReader) (in batches: devices present certificates). It is found by
    /// its serial, the table's key, and is the one presented only if the thumbprints agree: a certificate of
    /// another issuer may carry the same serial. (A unique index on the thumbprint cost every certificate written a
    /// second random-keyed index entry, and every superseded one another: BENCHMARKS.md, issue #21.)
    pub async fn presented(self, serial_hex: &str, sha256_hex: &str) -> Result<CertificateRecord, StoreError> {
        self.store
            .devices
            .certificate(serial_hex)
            .await?
            .filter(|found| found.thumbprint_sha256.eq_ignore_ascii_case(sha256_hex))
            .ok_or(StoreError::NotFound)
    }

    /// The certificate with this serial (hex, either case).
    #[cfg(feature = "test-support")]
    pub async fn get(self, serial: &str) -> Result<CertificateRecord, StoreError> {
        let row = crate::unique(Entity::find_by_id(serial.to_ascii_lowercase()), &self.store.read)
            .await?
            .ok_or(StoreError::NotFound)?;
        to_record(row)
    }

    /// Every certificate issued to a registration (canonical id), oldest first.
    #[cfg(feature = "test-support")]
    pub async fn of_registration(self, registration_key: &str) -> Result<Vec<CertificateRecord>, StoreError> {
        Entity::find()
            .filter(Column::RegistrationKey.eq(registration_key))
            .order_by_asc(Column::NotBefore)
            .order_by_asc(Column::Serial)
            .all(&self.store.read)
            .await?
            .into_iter()
            .map(to_record)
            .collect()
    }

    /// Lists certificates by expiry (then serial), `limit` at a time, after the continuation token `after`. The
    /// order is total and does not change as certificates are revoked or superseded, so paging returns each
    /// certificate at most once (and every one that matched throughout, once).
    pub async fn list(
        self,
        filter: &CertificateFilter,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Page<CertificateRecord>, StoreError> {
        let mut query = Entity::find();
        if let Some(before) = filter.expiring_before {
            query = query.filter(Column::NotAfter.lt(before));
        }
        if let Some(status) = filter.status {
            query = query.filter(Column::Status.eq(status.as_str()));
        }
        if let Some(token) = after {
            let (at, serial) = parse_cursor(token)?;
            query = query.filter(
                Condition::any()
                    .add(Column::NotAfter.gt(at))
                    .add(Condition::all().add(Column::NotAfter.eq(at)).add(Column::Serial.gt(serial))),
            );
        }
        let limit = limit.clamp(1, crate::MAX_PAGE_SIZE);
        let rows: Vec<CertificateRecord> = query
            .order_by_asc(Column::NotAfter)
            .order_by_asc(Column::Serial)
            .limit(limit + 1)
            .all(&self.store.read)
            .await?
            .into_iter()
            .map(to_record)
            .collect::<Result<_, _>>()?;
        Ok(Page::from_overfetch(rows, limit, cursor))
    }

    /// The revoked certificates of an issuing CA that have not expired yet (an expired certificate may leave the
    /// CRL, RFC 5280 §3.3), by serial: what its CRL lists. Read it *after* the CA's [`crate::CrlState`].
    pub async fn revoked(self, issuing_ca: &str) -> Result<Vec<RevokedCertificate>, StoreError> {
        let rows = Entity::find()
            .filter(Column::IssuingCa.eq(issuing_ca))
            .filter(Column::Status.eq(CertificateStatus::Revoked.as_str()))
            .filter(Column::NotAfter.gt(crate::now()))
            .order_by_asc(Column::Serial)
            .all(&self.store.read)
            .await?;
        rows.into_iter()
            .map(|m| {
                let corrupt = || StoreError::Corrupt(format!("revoked certificate {} without revocation", m.serial));
                Ok(RevokedCertificate {
                    revoked_at: m.revoked_at.ok_or_else(corrupt)?,
                    reason: m.revocation_reason.clone().ok_or_else(corrupt)?,
                    serial: m.serial,
                })
            })
            .collect()
    }
}

impl<'a> Certificates<'a> {
    /// Revokes one certificate (`reason`: an RFC 5280 reason name); returns it as revoked, or `None` if it was
    /// revoked already (nothing changes). [`StoreError::NotFound`] if there is no such serial.
    #[cfg(feature = "test-support")]
    pub async fn revoke(
        self,
        serial: &str,
        reason: &str,
        actor: &Actor,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        use sea_orm::TransactionTrait;
        let serial = serial.to_ascii_lowercase();
        let txn = self.store.db.begin().await?;
        let Some(certificate) = crate::unique(Entity::find_by_id(serial.clone()), &txn).await? else {
            return Err(StoreError::NotFound);
        };
        let mut revoked = revoke(&txn, Revoking::Serial(&serial), reason, actor).await?;
        // The device's current credential on its hub: the hub must stop taking it.
        if !revoked.is_empty() && certificate.status == CertificateStatus::Active.as_str() {
            let keys = [certificate.registration_key];
            crate::hub_job::retire(&txn, crate::hub_job::Retiring::Registrations(&keys), crate::HubAction::Disable)
                .await?;
        }
        txn.commit().await?;
        Ok(revoked.pop())
    }

    /// Revokes every certificate of a registration (canonical id) not revoked yet, expired ones included, and gives
    /// the registration a new etag first, in one transaction: a registration attempt or EST enrollment decided on
    /// the old state then loses, and one that locked the state first is committed before the revocation reads the
    /// certificates, which then include its new one. Returns what it revoked (nothing, if there was nothing to
    /// revoke) and the new etag ([`StoreError::NotFound`] if there is no such registration).
    pub async fn revoke_of_registration(
        self,
        registration_key: &str,
        reason: &str,
        actor: &Actor,
    ) -> Result<(Vec<CertificateRecord>, String), StoreError> {
        use sea_orm::TransactionTrait;
        let txn = self.store.db.begin().await?;
        let etag = crate::new_etag();
        let bumped = registration::Entity::update_many()
            .col_expr(registration::Column::Etag, Expr::value(etag.clone()))
            .col_expr(registration::Column::UpdatedAt, Expr::value(crate::now()))
            .filter(registration::Column::Key.eq(registration_key))
            .exec(&txn)
            .await?;
        if bumped.rows_affected != 1 {
            return Err(StoreError::NotFound);
        }
        let keys = [registration_key.to_owned()];
        let revoked = revoke(&txn, Revoking::Registrations(&keys), reason, actor).await?;
        crate::hub_job::retire(&txn, crate::hub_job::Retiring::Registrations(&keys), crate::HubAction::Disable).await?;
        txn.commit().await?;
        Ok((revoked, etag))
    }
}
