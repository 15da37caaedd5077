//! Secrets at rest (issue #17): every secret the database holds is sealed under the data key
//! (`crates/envelope/src/lib.rs`), bound to its table, column and row, and opened only by the repository that
//! reads it.
//!
//! Which values are secrets, and where each is bound:
//! | table | column | record |
//! |---|---|---|
//! | `individual_enrollments`, `enrollment_groups` | `primary_symmetric_key`, `secondary_symmetric_key` | the enrollment key |
//! | `hubs` | `settings.password`, `settings.secret` (JSON fields) | the host name |
//! | `hub_jobs` | `document.credential.key` (a TPM device's hub key) | the job id |
//! | `tpm_challenges` | `hmac_key` | the registration key |
//! | `issuing_cas` | `encrypted_key` (clear PKCS#8 DER inside the envelope) | the CA name |
//! | `shared_access_policies` | `primary_key`, `secondary_key` | the lower-cased policy name |
//!
//! The data key lives in `data_keys`, wrapped by the master key, which never reaches the store: [`Store::unlock`]
//! takes it as a [`Cipher`] (in this process, or a token's). Until then the vault is locked, and every read or
//! write of a secret fails as [`StoreError::Unavailable`] (nothing is ever written in clear). On the first unlock
//! of a database written by an earlier version, the secrets it holds in clear are sealed in place, in the
//! transaction that stores the new data key ([`seal_existing`]).

use std::sync::{Arc, OnceLock};

use sea_orm::ActiveValue::Set;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, TransactionTrait};
use serde_json::Value;
use zeroize::Zeroizing;
use zerotouch_envelope::{Binding, Cipher, DataKey, EnvelopeError, KeyId};
use zerotouch_wire::SymmetricKey;

use crate::entity::data_key;
use crate::{Store, StoreError};

/// Where an enrollment document keeps its custom allocation webhook's URL.
const WEBHOOK_URL: &str = "/customAllocationDefinition/webhookUrl";
/// Where a hub job's document keeps a TPM device's hub key.
const HUB_KEY: &str = "/credential/key";
/// The secret settings of a hub (`zerotouch_wire::hub::SECRET_SETTINGS`), as JSON pointers.
const HUB_SECRET_POINTERS: [&str; 2] = ["/password", "/secret"];

/// The one data key a database has today (the `data_keys` table has room for more, for a later data key rotation).
const DATA_KEY_SLOT: &str = "data";

/// The data key of a store once unlocked; shared with the store's background reader and writer tasks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Vault(Arc<OnceLock<DataKey>>);

impl Vault {
    fn key(&self) -> Result<&DataKey, StoreError> {
        self.0.get().ok_or_else(|| {
            StoreError::Unavailable("secrets are sealed and the data key is not loaded (Store::unlock)".into())
        })
    }

    /// Seals `plaintext` for `table`/`column`/`record`.
    pub(crate) fn seal(&self, table: &str, column: &str, record: &str, plaintext: &[u8]) -> Result<String, StoreError> {
        self.key()?
            .seal(&Binding::new(table, column, record), plaintext)
            .map_err(|e| StoreError::Unavailable(format!("sealing {table}.{column}: {e}")))
    }

    /// Opens what [`Vault::seal`] sealed for `table`/`column`/`record`; a value that does not open there (moved
    /// from another row, altered, in clear, under another key) is [`StoreError::Corrupt`], naming the place only.
    pub(crate) fn open(
        &self,
        table: &str,
        column: &str,
        record: &str,
        sealed: &str,
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.key()?
            .open(&Binding::new(table, column, record), sealed)
            .map_err(|e| StoreError::Corrupt(format!("{table}.{column} of {record:?}: {e}")))
    }

    /// Seals a symmetric key (its bytes).
    pub(crate) fn seal_key(
        &self,
        table: &str,
        column: &str,
        record: &str,
        key: &SymmetricKey,
    ) -> Result<String, StoreError> {
        self.seal(table, column, record, key.expose_bytes())
    }

    /// Opens a symmetric key sealed by [`Vault::seal_key`].
    pub(crate) fn open_key(
        &self,
        table: &str,
        column: &str,
        record: &str,
        sealed: &str,
    ) -> Result<SymmetricKey, StoreError> {
        let bytes = self.open(table, column, record, sealed)?;
        SymmetricKey::from_bytes(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("{table}.{column} of {record:?}: {e}")))
    }

    /// `value` with the text at each JSON `pointer` (absent ones skipped) sealed for `table`/`column`/`record`,
    /// where `column` names the JSON column and the pointer's path in dots (`settings.password`).
    fn seal_fields(
        &self,
        table: &str,
        column: &str,
        pointers: &[&str],
        record: &str,
        value: &Value,
    ) -> Result<Value, StoreError> {
        let mut sealed = value.clone();
        for pointer in pointers {
            if let Some(Value::String(text)) = sealed.pointer_mut(pointer) {
                let clear = Zeroizing::new(std::mem::take(text));
                *text = self.seal(table, &field_column(column, pointer), record, clear.as_bytes())?;
            }
        }
        Ok(sealed)
    }

    /// `value` with the fields [`Vault::seal_fields`] sealed opened.
    fn open_fields(
        &self,
        table: &str,
        column: &str,
        pointers: &[&str],
        record: &str,
        mut value: Value,
    ) -> Result<Value, StoreError> {
        for pointer in pointers {
            if let Some(Value::String(text)) = value.pointer_mut(pointer) {
                let name = field_column(column, pointer);
                let clear = self.open(table, &name, record, text)?;
                *text = String::from_utf8(clear.to_vec())
                    .map_err(|_| StoreError::Corrupt(format!("{table}.{name} of {record:?} is not text")))?;
            }
        }
        Ok(value)
    }

    /// Hub settings with their secret fields sealed (each bound to its field and the hub).
    pub(crate) fn seal_settings(&self, host_name: &str, settings: &Value) -> Result<Value, StoreError> {
        self.seal_fields("hubs", "settings", &HUB_SECRET_POINTERS, host_name, settings)
    }

    /// Hub settings with their secret fields opened.
    pub(crate) fn open_settings(&self, host_name: &str, settings: Value) -> Result<Value, StoreError> {
        self.open_fields("hubs", "settings", &HUB_SECRET_POINTERS, host_name, settings)
    }

    /// An enrollment document with its custom allocation webhook's URL sealed (the URL of an Azure Function carries
    /// the function's key in its query).
    pub(crate) fn seal_enrollment_document(
        &self,
        table: &str,
        key: &str,
        document: &Value,
    ) -> Result<Value, StoreError> {
        self.seal_fields(table, "document", &[WEBHOOK_URL], key, document)
    }

    /// An enrollment document with its webhook URL opened.
    pub(crate) fn open_enrollment_document(
        &self,
        table: &str,
        key: &str,
        document: Value,
    ) -> Result<Value, StoreError> {
        self.open_fields(table, "document", &[WEBHOOK_URL], key, document)
    }

    /// A hub job's document with a TPM hub key (`credential.key`) sealed, bound to the job.
    pub(crate) fn seal_job_document(&self, job_id: &str, document: &Value) -> Result<Value, StoreError> {
        self.seal_fields("hub_jobs", "document", &[HUB_KEY], job_id, document)
    }

    /// A hub job's document with its hub key opened.
    pub(crate) fn open_job_document(&self, job_id: &str, document: Value) -> Result<Value, StoreError> {
        self.open_fields("hub_jobs", "document", &[HUB_KEY], job_id, document)
    }
}

/// The name a sealed JSON field is bound to: the column, then the pointer's path in dots
/// (`document` + `/credential/key` = `document.credential.key`).
fn field_column(column: &str, pointer: &str) -> String {
    format!("{column}{}", pointer.replace('/', "."))
}

/// Why [`Store::unlock`] failed.
#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    /// The master key given is not the one that wrapped the data key.
    #[error(
        "the master key (id {given}) is not the one that wrapped this database's data key (master key id {needed}); \
         give the master key this database was sealed with (see `zerotouch rotate-master-key`)"
    )]
    WrongMasterKey {
        /// The id of the master key that wrapped the data key.
        needed: String,
        /// The id of the master key given.
        given: KeyId,
    },
    /// The wrapped data key does not open with the master key whose id it names: it was altered.
    #[error("the wrapped data key in data_keys does not open with the master key (id {0}): it was altered")]
    Tampered(KeyId),
    /// The master key failed (a token error).
    #[error("the master key: {0}")]
    MasterKey(EnvelopeError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sea_orm::DbErr> for UnlockError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Store(e.into())
    }
}

fn unwrap_error(err: EnvelopeError, master: &dyn Cipher, row: &data_key::Model) -> UnlockError {
    match err {
        EnvelopeError::WrongKey { .. } => {
            UnlockError::WrongMasterKey { needed: row.master_key_id.clone(), given: master.key_id() }
        }
        EnvelopeError::Forged
        | EnvelopeError::Malformed
        | EnvelopeError::NotSealed
        | EnvelopeError::UnknownVersion(_) => UnlockError::Tampered(master.key_id()),
        e @ (EnvelopeError::BadKey(_) | EnvelopeError::Crypto(_)) => UnlockError::MasterKey(e),
    }
}

fn key_id(row: &data_key::Model) -> Result<KeyId, UnlockError> {
    KeyId::from_hex(&row.key_id)
        .ok_or_else(|| StoreError::Corrupt(format!("data_keys has the key id {:?}", row.key_id)).into())
}

/// What [`Store::unlock`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlocked {
    /// The data key's id.
    pub data_key: KeyId,
    /// Whether this start made the data key (a new database, or one written by a version without sealing).
    pub created: bool,
    /// How many secrets stored in clear were sealed in place (only when `created`).
    pub sealed_in_place: u64,
}

/// What [`Store::rotate_master_key`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The data key's id (unchanged).
    pub data_key: KeyId,
    /// The master key that wrapped it before.
    pub from: KeyId,
    /// The master key that wraps it now.
    pub to: KeyId,
}

impl Store {
    /// Loads the data key, unwrapping it with `master`; on a database that has none yet, makes one and seals, in
    /// the same transaction, every secret stored in clear by earlier versions. A master key other than the one that
    /// wrapped the data key is [`UnlockError::WrongMasterKey`], and nothing is changed.
    ///
    /// Replicas starting together on a database without a data key race to insert it; the loser's transaction
    /// (its data key and its sealing) is rolled back and it takes the winner's.
    pub async fn unlock(&self, master: &dyn Cipher) -> Result<Unlocked, UnlockError> {
        for _ in 0..3 {
            if let Some(row) = self.read_data_key(&self.db).await? {
                let id = key_id(&row)?;
                let key = DataKey::unwrap(master, id, &row.wrapped_key).map_err(|e| unwrap_error(e, master, &row))?;
                let _ = self.vault.0.set(key);
                return Ok(Unlocked { data_key: id, created: false, sealed_in_place: 0 });
            }
            let (key, wrapped) = DataKey::generate_wrapped(master).map_err(UnlockError::MasterKey)?;
            let id = key.id();
            let fresh = Vault::default();
            let _ = fresh.0.set(key);
            let txn = self.db.begin().await?;
            let row = data_key::ActiveModel {
                slot: Set(DATA_KEY_SLOT.to_owned()),
                key_id: Set(id.to_string()),
                wrapped_key: Set(wrapped),
                master_key_id: Set(master.key_id().to_string()),
                created_at: Set(crate::now()),
                rotated_at: Set(None),
            };
            // First, so that a replica racing to do the same waits here on the primary key, then fails and rolls back.
            match data_key::Entity::insert(row).exec_without_returning(&txn).await {
                Ok(_) => {}
                Err(e) if matches!(e.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))) => {
                    txn.rollback().await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let sealed_in_place = seal_existing(&txn, &fresh).await?;
            txn.commit().await?;
            let Some(key) = Arc::into_inner(fresh.0).and_then(OnceLock::into_inner) else {
                return Err(StoreError::Unavailable("the new data key is still shared".into()).into());
            };
            let _ = self.vault.0.set(key);
            if sealed_in_place > 0 {
                self.purge_freed_rows().await?;
            }
            return Ok(Unlocked { data_key: id, created: true, sealed_in_place });
        }
        Err(StoreError::Conflict("the data key is being created concurrently; retry".into()).into())
    }

    /// Whether the data key is loaded ([`Store::unlock`] succeeded).
    pub fn is_unlocked(&self) -> bool {
        self.vault.0.get().is_some()
    }

    /// Re-wraps the data key under `new`, after unwrapping it with `old` (which must be the master key that wrapped
    /// it). The data key does not change, so nothing else is written and running replicas, which hold the data key,
    /// carry on; replicas started from now on need `new`. Running it again with the same keys after it succeeded
    /// fails with [`UnlockError::WrongMasterKey`] (the data key is under `new` already), and changes nothing.
    pub async fn rotate_master_key(&self, old: &dyn Cipher, new: &dyn Cipher) -> Result<Rotated, UnlockError> {
        let txn = self.db.begin().await?;
        let row = self.read_data_key(&txn).await?.ok_or_else(|| StoreError::NotFound).map_err(UnlockError::Store)?;
        let id = key_id(&row)?;
        let rewrapped = DataKey::rewrap(old, new, id, &row.wrapped_key).map_err(|e| unwrap_error(e, old, &row))?;
        let result = data_key::Entity::update_many()
            .col_expr(data_key::Column::WrappedKey, sea_orm::sea_query::Expr::value(rewrapped))
            .col_expr(data_key::Column::MasterKeyId, sea_orm::sea_query::Expr::value(new.key_id().to_string()))
            .col_expr(data_key::Column::RotatedAt, sea_orm::sea_query::Expr::value(Some(crate::now())))
            .filter(data_key::Column::Slot.eq(DATA_KEY_SLOT))
            .filter(data_key::Column::WrappedKey.eq(row.wrapped_key.clone()))
            .exec(&txn)
            .await?;
        if result.rows_affected != 1 {
            return Err(StoreError::Conflict("the data key was rewrapped concurrently; retry".into()).into());
        }
        txn.commit().await?;
        Ok(Rotated { data_key: id, from: old.key_id(), to: new.key_id() })
    }

    /// After secrets stored in clear (or under the CA key passphrase) were sealed in place, rewrites the database so that their old versions do not
    /// linger in freed pages (SQLite: `VACUUM`, then the WAL truncated) or dead row versions (PostgreSQL:
    /// `VACUUM FULL` of the tables that held them). Once per database, on the first start with a master key.
    pub async fn purge_freed_rows(&self) -> Result<(), StoreError> {
        match self.backend {
            crate::Backend::Sqlite => {
                self.db.execute_unprepared("VACUUM").await?;
                self.db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)").await?;
            }
            crate::Backend::Postgres => {
                self.db
                    .execute_unprepared(
                        "VACUUM FULL individual_enrollments, enrollment_groups, hubs, hub_jobs, tpm_challenges, \
                         issuing_cas",
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn read_data_key(&self, db: &impl ConnectionTrait) -> Result<Option<data_key::Model>, StoreError> {
        Ok(crate::unique(data_key::Entity::find_by_id(DATA_KEY_SLOT.to_owned()), db).await?)
    }

    pub(crate) fn vault(&self) -> &Vault {
        &self.vault
    }

    /// Rows of `issuing_cas` whose key is not sealed yet: written by an earlier version, encrypted with the CA key
    /// passphrase (PKCS#8 PBES2 PEM). The server decrypts them with the passphrase and seals them
    /// ([`crate::IssuingCas::seal_legacy_key`]).
    pub async fn legacy_ca_keys(&self) -> Result<Vec<(String, Zeroizing<String>)>, StoreError> {
        use crate::entity::issuing_ca::{Column, Entity};
        let rows = Entity::find().filter(Column::EncryptedKey.not_like(format!("{}%", zerotouch_envelope::PREFIX)));
        Ok(rows.all(&self.db).await?.into_iter().map(|m| (m.name, Zeroizing::new(m.encrypted_key))).collect())
    }
}

/// Seals, in `txn`, every secret that an earlier version stored in clear; returns how many. CA keys are left to
/// the server (they are encrypted with the passphrase, which the store does not know).
async fn seal_existing(txn: &impl ConnectionTrait, vault: &Vault) -> Result<u64, StoreError> {
    let mut sealed = 0;
    macro_rules! enrollments {
        ($module:ident, $table:literal) => {{
            use crate::entity::$module::{ActiveModel, Entity};
            for row in Entity::find().all(txn).await? {
                let mut clear = |column: &str, text: &Option<String>| -> Result<Option<String>, StoreError> {
                    match text {
                        Some(text) if !zerotouch_envelope::is_sealed(text) => {
                            let key = SymmetricKey::from_base64(text).map_err(|e| {
                                StoreError::Corrupt(format!("{}.{column} of {:?}: {e}", $table, row.key))
                            })?;
                            sealed += 1;
                            vault.seal_key($table, column, &row.key, &key).map(Some)
                        }
                        other => Ok(other.clone()),
                    }
                };
                let primary = clear("primary_symmetric_key", &row.primary_symmetric_key)?;
                let secondary = clear("secondary_symmetric_key", &row.secondary_symmetric_key)?;
                let document = vault.seal_enrollment_document($table, &row.key, &row.document)?;
                if document != row.document {
                    sealed += 1;
                }
                let mut active: ActiveModel = row.into();
                active.primary_symmetric_key = Set(primary);
                active.secondary_symmetric_key = Set(secondary);
                active.document = Set(document);
                Entity::update(active).exec(txn).await?;
            }
        }};
    }
    enrollments!(individual_enrollment, "individual_enrollments");
    enrollments!(enrollment_group, "enrollment_groups");

    for row in crate::entity::hub::Entity::find().all(txn).await? {
        let settings = vault.seal_settings(&row.host_name, &row.settings)?;
        if settings != row.settings {
            sealed += 1;
            let mut active: crate::entity::hub::ActiveModel = row.into();
            active.settings = Set(settings);
            crate::entity::hub::Entity::update(active).exec(txn).await?;
        }
    }
    for row in crate::entity::hub_job::Entity::find().all(txn).await? {
        let Some(document) = &row.document else { continue };
        let sealed_document = vault.seal_job_document(&row.id, document)?;
        if &sealed_document != document {
            sealed += 1;
            let mut active: crate::entity::hub_job::ActiveModel = row.into();
            active.document = Set(Some(sealed_document));
            crate::entity::hub_job::Entity::update(active).exec(txn).await?;
        }
    }
    for row in crate::entity::tpm_challenge::Entity::find().all(txn).await? {
        let key = SymmetricKey::from_base64(&row.hmac_key)
            .map_err(|e| StoreError::Corrupt(format!("tpm_challenges.hmac_key of {:?}: {e}", row.registration_key)))?;
        let text = vault.seal_key("tpm_challenges", "hmac_key", &row.registration_key, &key)?;
        sealed += 1;
        let mut active: crate::entity::tpm_challenge::ActiveModel = row.into();
        active.hmac_key = Set(text);
        crate::entity::tpm_challenge::Entity::update(active).exec(txn).await?;
    }
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hub settings sealed are the ones the admin API treats as secrets.
    #[test]
    fn every_secret_hub_setting_is_sealed() {
        let names: Vec<String> = HUB_SECRET_POINTERS.iter().map(|p| p.trim_start_matches('/').to_owned()).collect();
        assert_eq!(names, zerotouch_wire::hub::SECRET_SETTINGS);
        assert_eq!(field_column("settings", "/password"), "settings.password");
        assert_eq!(field_column("document", HUB_KEY), "document.credential.key");
    }
}
