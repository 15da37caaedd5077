//! Customer certificate authorities (issue #4 §3): uploaded at `/certificateAuthorities/{name}`, trusted by X.509
//! enrollment groups only after proof of possession of their key.
//!
//! Guarantees:
//! - Replacing a CA's certificate with another one resets its verification (and drops any outstanding code); a
//!   put of the same certificate keeps it.
//! - Verification is a compare-and-swap on the outstanding, unexpired code: a code that was replaced, reset or
//!   has expired cannot verify, even if the proof for it was checked just before.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use sea_orm::{Condition, TransactionTrait};

use crate::audit::{self, Change};
use crate::entity::certificate_authority::{self, Column, Entity};
use crate::{Actor, Page, Precondition, StoreError};

const RESOURCE_TYPE: &str = "certificateAuthority";

/// A customer CA to create or replace (the caller parsed the certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateAuthorityInput {
    /// The canonical (lower-case) name: the primary key.
    pub key: String,
    /// The name as the client spelled it.
    pub name: String,
    /// The CA certificate, DER.
    pub certificate_der: Vec<u8>,
    /// Its subject, as text.
    pub subject: String,
    /// SHA-256 of the DER, lower-case hex.
    pub thumbprint_sha256: String,
    /// When it expires.
    pub not_after: DateTime<Utc>,
}

/// A customer CA as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateAuthorityRecord {
    /// The canonical (lower-case) name.
    pub key: String,
    /// The name as the client spelled it.
    pub name: String,
    /// The CA certificate, DER.
    pub certificate_der: Vec<u8>,
    /// Its subject, as text.
    pub subject: String,
    /// SHA-256 of the DER, lower-case hex.
    pub thumbprint_sha256: String,
    /// When it expires.
    pub not_after: DateTime<Utc>,
    /// Whether proof of possession of its key was given (only then may groups trust it).
    pub verified: bool,
    /// The outstanding verification code, if one was issued and not used.
    pub verification_code: Option<String>,
    /// When that code stops being accepted.
    pub verification_code_expires_at: Option<DateTime<Utc>>,
    /// The current etag.
    pub etag: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

fn to_record(m: certificate_authority::Model) -> CertificateAuthorityRecord {
    CertificateAuthorityRecord {
        key: m.key,
        name: m.name,
        certificate_der: m.certificate_der,
        subject: m.subject,
        thumbprint_sha256: m.thumbprint_sha256,
        not_after: m.not_after,
        verified: m.verified,
        verification_code: m.verification_code,
        verification_code_expires_at: m.verification_code_expires_at,
        etag: m.etag,
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

fn to_active(r: &CertificateAuthorityRecord) -> certificate_authority::ActiveModel {
    certificate_authority::ActiveModel {
        key: Set(r.key.clone()),
        name: Set(r.name.clone()),
        certificate_der: Set(r.certificate_der.clone()),
        subject: Set(r.subject.clone()),
        thumbprint_sha256: Set(r.thumbprint_sha256.clone()),
        not_after: Set(r.not_after),
        verified: Set(r.verified),
        verification_code: Set(r.verification_code.clone()),
        verification_code_expires_at: Set(r.verification_code_expires_at),
        etag: Set(r.etag.clone()),
        created_at: Set(r.created_at),
        updated_at: Set(r.updated_at),
    }
}

async fn find(db: &impl ConnectionTrait, key: &str) -> Result<Option<CertificateAuthorityRecord>, StoreError> {
    Ok(crate::unique(Entity::find_by_id(key.to_owned()), db).await?.map(to_record))
}

/// Replaces the row of `record` if its etag is still `expected_etag`; returns whether it did.
async fn replace_if(
    db: &impl ConnectionTrait,
    record: &CertificateAuthorityRecord,
    expected_etag: &str,
) -> Result<bool, StoreError> {
    let result = Entity::update_many()
        .set(to_active(record))
        .filter(Column::Key.eq(record.key.clone()))
        .filter(Column::Etag.eq(expected_etag))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

fn changed_concurrently() -> StoreError {
    StoreError::Conflict("the certificate authority changed concurrently; retry".into())
}

repository_with_reader! {
    /// Uploaded customer CAs: reads (through [`CertificateAuthorityReader`]) and writes.
    CertificateAuthorities,
    /// Uploaded customer CAs, read-only.
    CertificateAuthorityReader
}

impl<'a> CertificateAuthorityReader<'a> {
    /// Reads one customer CA by its canonical name.
    pub async fn get(self, key: &str) -> Result<CertificateAuthorityRecord, StoreError> {
        find(&self.store.read, key).await?.ok_or(StoreError::NotFound)
    }

    /// Lists customer CAs by canonical name, `limit` at a time, after the continuation token `after`.
    pub async fn list(self, after: Option<&str>, limit: u64) -> Result<Page<CertificateAuthorityRecord>, StoreError> {
        let limit = limit.clamp(1, crate::MAX_PAGE_SIZE);
        let mut query = Entity::find();
        if let Some(after) = after {
            query = query.filter(Column::Key.gt(after));
        }
        let rows: Vec<CertificateAuthorityRecord> = query
            .order_by_asc(Column::Key)
            .limit(limit + 1)
            .all(&self.store.read)
            .await?
            .into_iter()
            .map(to_record)
            .collect();
        Ok(Page::from_overfetch(rows, limit, |r| r.key.clone()))
    }

    /// Every customer CA, by canonical name (X.509 group matching tells an unverified CA from an unknown one).
    pub async fn all(self) -> Result<Vec<CertificateAuthorityRecord>, StoreError> {
        Ok(Entity::find().order_by_asc(Column::Key).all(&self.store.read).await?.into_iter().map(to_record).collect())
    }

    /// Every verified customer CA, by canonical name (what X.509 group matching may trust).
    #[cfg(feature = "test-support")]
    pub async fn verified(self) -> Result<Vec<CertificateAuthorityRecord>, StoreError> {
        Ok(Entity::find()
            .filter(Column::Verified.eq(true))
            .order_by_asc(Column::Key)
            .all(&self.store.read)
            .await?
            .into_iter()
            .map(to_record)
            .collect())
    }
}

impl<'a> CertificateAuthorities<'a> {
    /// Creates or replaces a customer CA under `precondition`; returns the record and whether it was created.
    /// A different certificate (by thumbprint) resets `verified` and drops the outstanding code.
    pub async fn put(
        self,
        mut input: CertificateAuthorityInput,
        precondition: &Precondition,
        actor: &Actor,
    ) -> Result<(CertificateAuthorityRecord, bool), StoreError> {
        input.thumbprint_sha256.make_ascii_lowercase();
        input.not_after = crate::at_store_precision(input.not_after);
        let txn = self.store.db.begin().await?;
        let existing = find(&txn, &input.key).await?;
        if !precondition.allows(existing.as_ref().map(|e| e.etag.as_str())) {
            return Err(StoreError::PreconditionFailed);
        }
        let now = crate::now();
        let same_certificate = existing.as_ref().is_some_and(|e| e.thumbprint_sha256 == input.thumbprint_sha256);
        let (verified, verification_code, verification_code_expires_at) = match &existing {
            Some(old) if same_certificate => {
                (old.verified, old.verification_code.clone(), old.verification_code_expires_at)
            }
            _ => (false, None, None),
        };
        let record = CertificateAuthorityRecord {
            key: input.key,
            name: input.name,
            certificate_der: input.certificate_der,
            subject: input.subject,
            thumbprint_sha256: input.thumbprint_sha256,
            not_after: input.not_after,
            verified,
            verification_code,
            verification_code_expires_at,
            etag: crate::new_etag(),
            created_at: existing.as_ref().map_or(now, |e| e.created_at),
            updated_at: now,
        };
        match &existing {
            None => {
                Entity::insert(to_active(&record))
                    .exec_without_returning(&txn)
                    .await
                    .map_err(|e| StoreError::from_insert(e, "the certificate authority"))?;
            }
            Some(old) => {
                if !replace_if(&txn, &record, &old.etag).await? {
                    return Err(changed_concurrently());
                }
            }
        }
        let reset = existing.as_ref().is_some_and(|old| !same_certificate && old.verified);
        let change = Change {
            action: if existing.is_some() { "update" } else { "create" },
            resource_type: RESOURCE_TYPE,
            resource_id: &record.name,
            etag_before: existing.as_ref().map(|e| e.etag.as_str()),
            etag_after: Some(&record.etag),
            detail: reset.then_some("certificate replaced: verification reset"),
        };
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        self.store.note_reference_change();
        Ok((record, existing.is_none()))
    }

    /// Deletes a customer CA under `precondition`.
    pub async fn delete(self, key: &str, precondition: &Precondition, actor: &Actor) -> Result<(), StoreError> {
        let txn = self.store.db.begin().await?;
        let existing = find(&txn, key).await?.ok_or(StoreError::NotFound)?;
        if !precondition.allows(Some(&existing.etag)) {
            return Err(StoreError::PreconditionFailed);
        }
        let result = Entity::delete_many()
            .filter(Column::Key.eq(key))
            .filter(Column::Etag.eq(existing.etag.clone()))
            .exec(&txn)
            .await?;
        if result.rows_affected != 1 {
            return Err(changed_concurrently());
        }
        let change = Change::deletion(RESOURCE_TYPE, &existing.name, &existing.etag);
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        self.store.note_reference_change();
        Ok(())
    }

    /// Issues a verification code (made by the caller) for proof of possession, replacing any outstanding one,
    /// under `precondition`. The code is not written to the audit log.
    pub async fn set_verification_code(
        self,
        key: &str,
        code: &str,
        expires_at: DateTime<Utc>,
        precondition: &Precondition,
        actor: &Actor,
    ) -> Result<CertificateAuthorityRecord, StoreError> {
        let txn = self.store.db.begin().await?;
        let old = find(&txn, key).await?.ok_or(StoreError::NotFound)?;
        if !precondition.allows(Some(&old.etag)) {
            return Err(StoreError::PreconditionFailed);
        }
        let record = CertificateAuthorityRecord {
            verification_code: Some(code.to_owned()),
            verification_code_expires_at: Some(crate::at_store_precision(expires_at)),
            etag: crate::new_etag(),
            updated_at: crate::now(),
            ..old.clone()
        };
        if !replace_if(&txn, &record, &old.etag).await? {
            return Err(changed_concurrently());
        }
        let change = Change {
            action: "generateVerificationCode",
            resource_type: RESOURCE_TYPE,
            resource_id: &record.name,
            etag_before: Some(&old.etag),
            etag_after: Some(&record.etag),
            detail: None,
        };
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        self.store.note_reference_change();
        Ok(record)
    }

    /// Marks a customer CA verified, after the caller checked a proof-of-possession certificate for `code`.
    /// Succeeds only if `code` is still the outstanding, unexpired code (compare-and-swap in the database); then
    /// the code is used up. Otherwise [`StoreError::Conflict`], saying whether no code is outstanding, the code
    /// expired, or it is not the current one.
    pub async fn mark_verified(
        self,
        key: &str,
        code: &str,
        actor: &Actor,
    ) -> Result<CertificateAuthorityRecord, StoreError> {
        let txn = self.store.db.begin().await?;
        let old = find(&txn, key).await?.ok_or(StoreError::NotFound)?;
        let now = crate::now();
        let etag = crate::new_etag();
        let change = certificate_authority::ActiveModel {
            verified: Set(true),
            verification_code: Set(None),
            verification_code_expires_at: Set(None),
            etag: Set(etag.clone()),
            updated_at: Set(now),
            ..Default::default()
        };
        let result = Entity::update_many()
            .set(change)
            .filter(
                Condition::all()
                    .add(Column::Key.eq(key))
                    .add(Column::VerificationCode.eq(code))
                    .add(Column::VerificationCodeExpiresAt.gt(now)),
            )
            .exec(&txn)
            .await?;
        if result.rows_affected != 1 {
            let why = match (&old.verification_code, old.verification_code_expires_at) {
                (None, _) => "no verification code is outstanding",
                (Some(current), _) if current != code => "the verification code is not the current one",
                (Some(_), Some(expires)) if expires <= now => "the verification code expired",
                _ => "the certificate authority changed concurrently; retry",
            };
            return Err(StoreError::Conflict(why.into()));
        }
        let record = find(&txn, key).await?.ok_or_else(changed_concurrently)?;
        let change = Change {
            action: "verify",
            resource_type: RESOURCE_TYPE,
            resource_id: &record.name,
            etag_before: Some(&old.etag),
            etag_after: Some(&etag),
            detail: None,
        };
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        self.store.note_reference_change();
        Ok(record)
    }
}
