//! Our managed issuing intermediates (issue #4 §1): key and CSR made by the service, chain uploaded by an admin,
//! one of them active for issuance, each with its CRL.
//!
//! Guarantees:
//! - At most one issuing CA is `active`. The database enforces it (a unique partial index on `status` where it is
//!   `active`), and [`IssuingCas::activate`] demotes the current one and promotes the new one in one
//!   transaction, so a concurrent activation loses with [`StoreError::Conflict`] instead of making two.
//! - The encrypted private key is returned only by [`IssuingCas::key`]; [`IssuingCaRecord`] (what listings
//!   and the admin API see) does not carry it, and it is never written to the audit log.
//! - CRLs are saved by compare-and-swap on the CRL number and on the revocation revision (bumped by every
//!   transaction that revokes a certificate of the CA), so neither a concurrent CRL writer nor a revocation that
//!   committed after the CRL's revoked list was read can be overwritten by a stale CRL.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use zeroize::Zeroizing;

use crate::audit::{self, Change};
use crate::entity::issuing_ca::{self, Column, Entity};
use crate::{Actor, Precondition, StoreError};

const RESOURCE_TYPE: &str = "issuingCA";

/// Where an issuing CA is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssuingCaStatus {
    /// Key and CSR made; no certificate chain yet.
    Pending,
    /// Chain uploaded: trusted (its certificates verify), not issuing.
    Ready,
    /// The one that issues.
    Active,
}

impl IssuingCaStatus {
    /// The stored (and API) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Active => "active",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "pending" => Ok(Self::Pending),
            "ready" => Ok(Self::Ready),
            "active" => Ok(Self::Active),
            other => Err(StoreError::Corrupt(format!("issuing CA status {other:?}"))),
        }
    }
}

/// An issuing CA's private key (clear PKCS#8 DER), which the store seals under the data key
/// (`crate::secrets`: bound to `issuing_cas`/`encrypted_key`/the CA's name). Not printed by `Debug`; wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct CaPrivateKey(Zeroizing<Vec<u8>>);

impl CaPrivateKey {
    /// Wraps a clear PKCS#8 DER; the store does not check it.
    pub fn new(der: Zeroizing<Vec<u8>>) -> Self {
        Self(der)
    }

    /// The DER. Handle with care: this is the private key.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for CaPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaPrivateKey(..)")
    }
}

/// The table and column every issuing CA key is sealed for.
const KEY_TABLE: &str = "issuing_cas";
const KEY_COLUMN: &str = "encrypted_key";

/// A new issuing CA: its key and the CSR for the offline root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIssuingCa {
    /// Its name (validated by the caller); the primary key.
    pub name: String,
    /// The key algorithm (`P-256`, `P-384`, ...), as the caller names it.
    pub key_algorithm: String,
    /// The private key (sealed when stored).
    pub private_key: CaPrivateKey,
    /// The CSR, PEM.
    pub csr_pem: String,
}

/// The CRL state of an issuing CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlState {
    /// The number of the CRL in `der` (0: none saved yet); the next CRL must carry `number + 1`.
    pub number: i64,
    /// Bumped by every transaction that revokes a certificate of this CA: a CRL built from a revoked list read
    /// after this state cannot miss a revocation if it is saved against this state.
    pub revision: i64,
    /// The latest CRL, DER.
    pub der: Option<Vec<u8>>,
    /// Its thisUpdate.
    pub this_update: Option<DateTime<Utc>>,
    /// Its nextUpdate.
    pub next_update: Option<DateTime<Utc>>,
    /// A CRL must be made: a certificate was revoked, or the chain was uploaded, since `der` was saved.
    pub stale: bool,
}

/// An issuing CA as stored, without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuingCaRecord {
    /// Its name.
    pub name: String,
    /// The key algorithm.
    pub key_algorithm: String,
    /// The CSR, PEM.
    pub csr_pem: String,
    /// The chain, PEM: this CA's certificate first, up to the root (`None` while pending).
    pub chain_pem: Option<String>,
    /// Where it is in its life.
    pub status: IssuingCaStatus,
    /// When its certificate expires (`None` while pending).
    pub not_after: Option<DateTime<Utc>>,
    /// Its CRL.
    pub crl: CrlState,
    /// The current etag.
    pub etag: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed (CRL saves do not count: the CRL is not part of the admin resource).
    pub updated_at: DateTime<Utc>,
}

fn to_record(m: issuing_ca::Model) -> Result<IssuingCaRecord, StoreError> {
    Ok(IssuingCaRecord {
        status: IssuingCaStatus::parse(&m.status)?,
        name: m.name,
        key_algorithm: m.key_algorithm,
        csr_pem: m.csr_pem,
        chain_pem: m.chain_pem,
        not_after: m.not_after,
        crl: CrlState {
            number: m.crl_number,
            revision: m.crl_revision,
            der: m.crl_der,
            this_update: m.crl_this_update,
            next_update: m.crl_next_update,
            stale: m.crl_stale,
        },
        etag: m.etag,
        created_at: m.created_at,
        updated_at: m.updated_at,
    })
}

async fn find(db: &impl ConnectionTrait, name: &str) -> Result<Option<IssuingCaRecord>, StoreError> {
    crate::unique(Entity::find_by_id(name.to_owned()), db).await?.map(to_record).transpose()
}

/// Applies `change` (only its `Set` columns) to the CA `name` if its etag is still `expected_etag`, with a fresh
/// etag and `updated_at`; returns the new etag, or `None` when the row changed or went meanwhile.
async fn update_if(
    db: &impl ConnectionTrait,
    name: &str,
    expected_etag: &str,
    mut change: issuing_ca::ActiveModel,
    now: DateTime<Utc>,
) -> Result<Option<String>, sea_orm::DbErr> {
    let etag = crate::new_etag();
    change.etag = Set(etag.clone());
    change.updated_at = Set(now);
    let result = Entity::update_many()
        .set(change)
        .filter(Column::Name.eq(name))
        .filter(Column::Etag.eq(expected_etag))
        .exec(db)
        .await?;
    Ok((result.rows_affected == 1).then_some(etag))
}

/// A database error of an activation: the unique index on the active CA means another activation won.
fn activation_error(e: sea_orm::DbErr) -> StoreError {
    match e.sql_err() {
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => {
            StoreError::Conflict("another issuing CA was activated concurrently; retry".into())
        }
        _ => e.into(),
    }
}

fn changed_concurrently(name: &str) -> StoreError {
    StoreError::Conflict(format!("issuing CA {name:?} changed concurrently; retry"))
}

repository_with_reader! {
    /// The managed CA's issuing CAs: reads (through [`IssuingCaReader`]), writes, and their encrypted keys.
    IssuingCas,
    /// The managed CA's issuing CAs, read-only and without their keys.
    IssuingCaReader
}

impl<'a> IssuingCaReader<'a> {
    /// Reads one issuing CA (without its key).
    pub async fn get(self, name: &str) -> Result<IssuingCaRecord, StoreError> {
        find(&self.store.read, name).await?.ok_or(StoreError::NotFound)
    }

    /// Lists every issuing CA by name (without keys).
    pub async fn list(self) -> Result<Vec<IssuingCaRecord>, StoreError> {
        Entity::find().order_by_asc(Column::Name).all(&self.store.read).await?.into_iter().map(to_record).collect()
    }

    /// The issuing CA that issues, if one is active.
    #[cfg(feature = "test-support")]
    pub async fn active(self) -> Result<Option<IssuingCaRecord>, StoreError> {
        // At most one row: a unique partial index allows one active issuing CA.
        let active = Entity::find().filter(Column::Status.eq(IssuingCaStatus::Active.as_str()));
        crate::unique(active, &self.store.read).await?.map(to_record).transpose()
    }
}

impl<'a> IssuingCas<'a> {
    /// Creates a pending issuing CA (key and CSR, no chain); [`StoreError::Conflict`] if the name is taken.
    pub async fn create(self, new: NewIssuingCa, actor: &Actor) -> Result<IssuingCaRecord, StoreError> {
        let txn = self.store.db.begin().await?;
        if find(&txn, &new.name).await?.is_some() {
            return Err(StoreError::Conflict(format!("issuing CA {:?} already exists", new.name)));
        }
        let now = crate::now();
        let record = IssuingCaRecord {
            name: new.name,
            key_algorithm: new.key_algorithm,
            csr_pem: new.csr_pem,
            chain_pem: None,
            status: IssuingCaStatus::Pending,
            not_after: None,
            crl: CrlState { number: 0, revision: 0, der: None, this_update: None, next_update: None, stale: false },
            etag: crate::new_etag(),
            created_at: now,
            updated_at: now,
        };
        let row = issuing_ca::ActiveModel {
            name: Set(record.name.clone()),
            key_algorithm: Set(record.key_algorithm.clone()),
            encrypted_key: Set(self.store.vault().seal(
                KEY_TABLE,
                KEY_COLUMN,
                &record.name,
                new.private_key.as_bytes(),
            )?),
            csr_pem: Set(record.csr_pem.clone()),
            chain_pem: Set(None),
            status: Set(record.status.as_str().to_owned()),
            not_after: Set(None),
            crl_number: Set(0),
            crl_revision: Set(0),
            crl_der: Set(None),
            crl_this_update: Set(None),
            crl_next_update: Set(None),
            crl_stale: Set(false),
            etag: Set(record.etag.clone()),
            created_at: Set(now),
            updated_at: Set(now),
        };
        Entity::insert(row)
            .exec_without_returning(&txn)
            .await
            .map_err(|e| StoreError::from_insert(e, "the issuing CA"))?;
        let change = Change {
            action: "create",
            resource_type: RESOURCE_TYPE,
            resource_id: &record.name,
            etag_before: None,
            etag_after: Some(&record.etag),
            detail: Some(&record.key_algorithm),
        };
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        self.store.note_reference_change();
        Ok(record)
    }

    /// The private key of an issuing CA, opened. The only way the key leaves the store; callers must not log or
    /// return it. A key still in the format of earlier versions (before [`IssuingCas::seal_legacy_key`]) is
    /// [`StoreError::Corrupt`].
    pub async fn key(self, name: &str) -> Result<CaPrivateKey, StoreError> {
        let key: Option<String> = Entity::find_by_id(name.to_owned())
            .select_only()
            .column(Column::EncryptedKey)
            .into_tuple()
            .one(&self.store.read)
            .await?;
        let sealed = Zeroizing::new(key.ok_or(StoreError::NotFound)?);
        Ok(CaPrivateKey(self.store.vault().open(KEY_TABLE, KEY_COLUMN, name, &sealed)?))
    }

    /// Replaces the key of `name` stored by an earlier version (`legacy`, as [`crate::Store::legacy_ca_keys`] read
    /// it: PKCS#8 encrypted with the CA key passphrase) with `key` sealed under the data key; returns whether it did
    /// (`false`: another replica did it first).
    pub async fn seal_legacy_key(self, name: &str, legacy: &str, key: &CaPrivateKey) -> Result<bool, StoreError> {
        let sealed = self.store.vault().seal(KEY_TABLE, KEY_COLUMN, name, key.as_bytes())?;
        let result = Entity::update_many()
            .col_expr(Column::EncryptedKey, Expr::value(sealed))
            .filter(Column::Name.eq(name))
            .filter(Column::EncryptedKey.eq(legacy))
            .exec(&self.store.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Stores the certificate chain of an issuing CA (checked by the caller against its key): a pending CA becomes
    /// `ready`; a ready or active one keeps its status and gets the new chain. Marks its CRL stale (the CRL's
    /// issuer is the uploaded certificate).
    pub async fn upload_chain(
        self,
        name: &str,
        chain_pem: String,
        not_after: DateTime<Utc>,
        precondition: &Precondition,
        actor: &Actor,
    ) -> Result<IssuingCaRecord, StoreError> {
        let txn = self.store.db.begin().await?;
        let mut record = find(&txn, name).await?.ok_or(StoreError::NotFound)?;
        if !precondition.allows(Some(&record.etag)) {
            return Err(StoreError::PreconditionFailed);
        }
        let before = record.status;
        if before == IssuingCaStatus::Pending {
            record.status = IssuingCaStatus::Ready;
        }
        let now = crate::now();
        let not_after = crate::at_store_precision(not_after);
        let change = issuing_ca::ActiveModel {
            chain_pem: Set(Some(chain_pem.clone())),
            not_after: Set(Some(not_after)),
            status: Set(record.status.as_str().to_owned()),
            crl_stale: Set(true),
            ..Default::default()
        };
        let etag = update_if(&txn, name, &record.etag, change, now).await?.ok_or_else(|| changed_concurrently(name))?;
        let detail = format!("{} -> {}", before.as_str(), record.status.as_str());
        let change = Change {
            action: "uploadChain",
            resource_type: RESOURCE_TYPE,
            resource_id: name,
            etag_before: Some(&record.etag),
            etag_after: Some(&etag),
            detail: Some(&detail),
        };
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        self.store.note_reference_change();
        record.chain_pem = Some(chain_pem);
        record.not_after = Some(not_after);
        record.crl.stale = true;
        record.etag = etag;
        record.updated_at = now;
        Ok(record)
    }

    /// Makes `name` the issuing CA that issues, in one transaction: the current active one (if another) becomes
    /// `ready` (it keeps verifying), this one becomes `active`. Only a `ready` CA can be activated (a pending one
    /// has no chain: [`StoreError::Conflict`]); activating the active one changes nothing. A concurrent activation
    /// of another CA makes one of the two a [`StoreError::Conflict`].
    pub async fn activate(
        self,
        name: &str,
        precondition: &Precondition,
        actor: &Actor,
    ) -> Result<IssuingCaRecord, StoreError> {
        let txn = self.store.db.begin().await?;
        let mut record = find(&txn, name).await?.ok_or(StoreError::NotFound)?;
        if !precondition.allows(Some(&record.etag)) {
            return Err(StoreError::PreconditionFailed);
        }
        match record.status {
            IssuingCaStatus::Active => return Ok(record),
            IssuingCaStatus::Pending => {
                return Err(StoreError::Conflict(format!(
                    "issuing CA {name:?} is pending: upload its certificate chain before activating it"
                )));
            }
            IssuingCaStatus::Ready => {}
        }
        let now = crate::now();
        let mut changes = Vec::new();
        let current =
            crate::unique(Entity::find().filter(Column::Status.eq(IssuingCaStatus::Active.as_str())), &txn).await?;
        let demoted = match current {
            Some(current) => {
                let change = issuing_ca::ActiveModel {
                    status: Set(IssuingCaStatus::Ready.as_str().to_owned()),
                    ..Default::default()
                };
                let etag = update_if(&txn, &current.name, &current.etag, change, now)
                    .await?
                    .ok_or_else(|| StoreError::Conflict("the active issuing CA changed concurrently; retry".into()))?;
                Some((current.name, current.etag, etag))
            }
            None => None,
        };
        if let Some((demoted, before, after)) = &demoted {
            changes.push(Change {
                action: "deactivate",
                resource_type: RESOURCE_TYPE,
                resource_id: demoted,
                etag_before: Some(before),
                etag_after: Some(after),
                detail: Some(name),
            });
        }
        let change =
            issuing_ca::ActiveModel { status: Set(IssuingCaStatus::Active.as_str().to_owned()), ..Default::default() };
        let etag = update_if(&txn, name, &record.etag, change, now)
            .await
            .map_err(activation_error)?
            .ok_or_else(|| changed_concurrently(name))?;
        changes.push(Change {
            action: "activate",
            resource_type: RESOURCE_TYPE,
            resource_id: name,
            etag_before: Some(&record.etag),
            etag_after: Some(&etag),
            detail: None,
        });
        audit::record(&txn, actor, &changes).await?;
        txn.commit().await?;
        self.store.note_reference_change();
        record.status = IssuingCaStatus::Active;
        record.etag = etag;
        record.updated_at = now;
        Ok(record)
    }

    /// Saves a CRL built against `based_on` (as read from [`IssuingCaRecord::crl`], *before* the revoked list the
    /// CRL lists was read), whose number must be `based_on.number + 1`. Clears the stale mark. If another CRL was
    /// saved, or a certificate of this CA was revoked, since `based_on` was read: [`StoreError::Conflict`]
    /// (rebuild from a fresh read). Not an admin change: not audited, and the CA's etag stays.
    pub async fn save_crl(
        self,
        name: &str,
        based_on: &CrlState,
        der: Vec<u8>,
        this_update: DateTime<Utc>,
        next_update: DateTime<Utc>,
    ) -> Result<CrlState, StoreError> {
        let saved = CrlState {
            number: based_on.number + 1,
            revision: based_on.revision,
            der: Some(der),
            this_update: Some(crate::at_store_precision(this_update)),
            next_update: Some(crate::at_store_precision(next_update)),
            stale: false,
        };
        let change = issuing_ca::ActiveModel {
            crl_number: Set(saved.number),
            crl_der: Set(saved.der.clone()),
            crl_this_update: Set(saved.this_update),
            crl_next_update: Set(saved.next_update),
            crl_stale: Set(false),
            ..Default::default()
        };
        let result = Entity::update_many()
            .set(change)
            .filter(Column::Name.eq(name))
            .filter(Column::CrlNumber.eq(based_on.number))
            .filter(Column::CrlRevision.eq(based_on.revision))
            .exec(&self.store.db)
            .await?;
        if result.rows_affected == 1 {
            return Ok(saved);
        }
        match find(&self.store.db, name).await? {
            None => Err(StoreError::NotFound),
            Some(current) => Err(StoreError::Conflict(format!(
                "the CRL of issuing CA {name:?} changed since it was read (number {} -> {}, revision {} -> {}); \
                 rebuild it",
                based_on.number, current.crl.number, based_on.revision, current.crl.revision
            ))),
        }
    }

    /// Deletes an issuing CA under `precondition`; the active one cannot be deleted ([`StoreError::Conflict`]:
    /// activate another first). The certificates it issued stay on record.
    pub async fn delete(self, name: &str, precondition: &Precondition, actor: &Actor) -> Result<(), StoreError> {
        let txn = self.store.db.begin().await?;
        let existing = find(&txn, name).await?.ok_or(StoreError::NotFound)?;
        if !precondition.allows(Some(&existing.etag)) {
            return Err(StoreError::PreconditionFailed);
        }
        if existing.status == IssuingCaStatus::Active {
            return Err(StoreError::Conflict(format!(
                "issuing CA {name:?} is active: activate another before deleting it"
            )));
        }
        let result = Entity::delete_many()
            .filter(Column::Name.eq(name))
            .filter(Column::Etag.eq(existing.etag.clone()))
            .exec(&txn)
            .await?;
        if result.rows_affected != 1 {
            return Err(changed_concurrently(name));
        }
        let change = Change {
            action: "delete",
            resource_type: RESOURCE_TYPE,
            resource_id: name,
            etag_before: Some(&existing.etag),
            etag_after: None,
            detail: Some(existing.status.as_str()),
        };
        audit::record(&txn, actor, &[change]).await?;
        txn.commit().await?;
        self.store.note_reference_change();
        Ok(())
    }
}

/// Marks the CRLs of `names` stale and bumps their revocation revision (in the revoking transaction).
pub(crate) async fn mark_crls_stale(db: &impl ConnectionTrait, names: &[String]) -> Result<(), StoreError> {
    if names.is_empty() {
        return Ok(());
    }
    Entity::update_many()
        .col_expr(Column::CrlStale, Expr::value(true))
        .col_expr(Column::CrlRevision, Expr::col(Column::CrlRevision).add(1))
        .filter(Column::Name.is_in(names.iter().cloned()))
        .exec(db)
        .await?;
    Ok(())
}
