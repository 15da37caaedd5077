//! Pending TPM challenges: the HMAC key each device's last TPM first leg delivered, so that any replica can verify
//! its second leg (`docs/protocol/device-api.md` §3.1), and the blob that delivered it, so that a repeated first leg
//! is answered with the pending challenge. One row per registration id; a challenge is replaced only once it was
//! used or expired.
//! And the TPM each registration id of a TPM group is bound to (the first to register it).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use zerotouch_wire::SymmetricKey;
use zerotouch_wire::enrollment::EnrollmentKind;

use crate::StoreError;
use crate::entity::tpm_challenge::{self, Column, Entity};
use crate::secrets::Vault;

/// A pending TPM challenge.
#[derive(Debug, Clone, PartialEq)]
pub struct TpmChallengeRecord {
    /// The lower-cased registration id.
    pub registration_key: String,
    /// Identifies this challenge among the device's successive ones.
    pub id: String,
    /// The kind of enrollment the device matched at the first leg.
    pub enrollment_kind: EnrollmentKind,
    /// That enrollment's key.
    pub enrollment_key: String,
    /// The HMAC key the activation blob carried (redacted in `Debug`).
    pub hmac_key: SymmetricKey,
    /// The EK the blob was made for (base64 `TPM2B_PUBLIC`).
    pub endorsement_key: String,
    /// The SRK the blob was made for (base64 `TPM2B_PUBLIC`).
    pub storage_root_key: String,
    /// After this, the key authenticates nothing.
    pub expires_at: DateTime<Utc>,
    /// When a register used it (it authenticates one register, and polls until it expires).
    pub used_at: Option<DateTime<Utc>>,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
    /// The activation blob (base64) that delivered the key to the TPM; `None` for a challenge stored before the
    /// blobs were kept.
    pub blob: Option<String>,
}

fn kind_text(kind: EnrollmentKind) -> &'static str {
    match kind {
        EnrollmentKind::Individual => "individual",
        EnrollmentKind::Group => "group",
    }
}

/// Where every challenge key is sealed (`crate::secrets`), with the registration key.
const KEY_TABLE: &str = "tpm_challenges";
const KEY_COLUMN: &str = "hmac_key";

fn to_record(vault: &Vault, m: tpm_challenge::Model) -> Result<TpmChallengeRecord, StoreError> {
    let enrollment_kind = match m.enrollment_kind.as_str() {
        "individual" => EnrollmentKind::Individual,
        "group" => EnrollmentKind::Group,
        other => return Err(StoreError::Corrupt(format!("TPM challenge of {:?}: kind {other:?}", m.registration_key))),
    };
    let hmac_key = vault.open_key(KEY_TABLE, KEY_COLUMN, &m.registration_key, &m.hmac_key)?;
    Ok(TpmChallengeRecord {
        registration_key: m.registration_key,
        id: m.id,
        enrollment_kind,
        enrollment_key: m.enrollment_key,
        hmac_key,
        endorsement_key: m.endorsement_key,
        storage_root_key: m.storage_root_key,
        expires_at: m.expires_at,
        used_at: m.used_at,
        created_at: m.created_at,
        blob: m.blob,
    })
}

repository! {
    /// TPM activation challenges and the EK each TPM group registration id is bound to.
    Tpm
}

impl<'a> Tpm<'a> {
    /// Stores `challenge` as the device's pending one, replacing any earlier one (whose tokens then stop
    /// verifying), and removes every expired challenge.
    pub async fn put_challenge(self, challenge: &TpmChallengeRecord) -> Result<(), StoreError> {
        Entity::delete_many().filter(Column::ExpiresAt.lt(crate::now())).exec(&self.store.db).await?;
        let model = tpm_challenge::ActiveModel {
            registration_key: Set(challenge.registration_key.clone()),
            id: Set(challenge.id.clone()),
            enrollment_kind: Set(kind_text(challenge.enrollment_kind).to_owned()),
            enrollment_key: Set(challenge.enrollment_key.clone()),
            hmac_key: Set(self.store.vault().seal_key(
                KEY_TABLE,
                KEY_COLUMN,
                &challenge.registration_key,
                &challenge.hmac_key,
            )?),
            endorsement_key: Set(challenge.endorsement_key.clone()),
            storage_root_key: Set(challenge.storage_root_key.clone()),
            expires_at: Set(crate::at_store_precision(challenge.expires_at)),
            used_at: Set(challenge.used_at.map(crate::at_store_precision)),
            created_at: Set(crate::at_store_precision(challenge.created_at)),
            blob: Set(challenge.blob.clone()),
        };
        Entity::insert(model)
            .on_conflict(
                OnConflict::column(Column::RegistrationKey)
                    .update_columns([
                        Column::Id,
                        Column::EnrollmentKind,
                        Column::EnrollmentKey,
                        Column::HmacKey,
                        Column::EndorsementKey,
                        Column::StorageRootKey,
                        Column::ExpiresAt,
                        Column::UsedAt,
                        Column::CreatedAt,
                        Column::Blob,
                    ])
                    .to_owned(),
            )
            .exec(&self.store.db)
            .await?;
        Ok(())
    }

    /// The device's pending challenge (expired or not: the caller judges).
    pub async fn challenge(self, registration_key: &str) -> Result<TpmChallengeRecord, StoreError> {
        let model = crate::unique(Entity::find_by_id(registration_key.to_owned()), &self.store.db).await?;
        to_record(self.store.vault(), model.ok_or(StoreError::NotFound)?)
    }

    /// The EK (base64 `TPM2B_PUBLIC`) a registration id is bound to, if any.
    pub async fn binding(self, registration_key: &str) -> Result<Option<String>, StoreError> {
        let model =
            crate::unique(crate::entity::tpm_binding::Entity::find_by_id(registration_key.to_owned()), &self.store.db)
                .await?;
        Ok(model.map(|m| m.endorsement_key))
    }

    /// Binds a registration id to an EK unless it is bound already; returns the EK it is bound to now (the given
    /// one, or the earlier one: the caller compares).
    pub async fn bind(self, registration_key: &str, endorsement_key: &str) -> Result<String, StoreError> {
        use crate::entity::tpm_binding;
        let model = tpm_binding::ActiveModel {
            registration_key: Set(registration_key.to_owned()),
            endorsement_key: Set(endorsement_key.to_owned()),
            created_at: Set(crate::now()),
        };
        // A conflict (the id is bound already) is not an error: the binding read next decides.
        tpm_binding::Entity::insert(model).on_conflict_do_nothing().exec(&self.store.db).await?;
        self.binding(registration_key).await?.ok_or(StoreError::NotFound)
    }

    /// Marks the challenge `id` of the device used by a register, if it is still pending, unused and unexpired;
    /// `false` if another register used it first, or it was replaced or expired meanwhile (one atomic update, so
    /// two replicas cannot both use it).
    pub async fn use_challenge(self, registration_key: &str, id: &str) -> Result<bool, StoreError> {
        let now = crate::now();
        let result = Entity::update_many()
            .col_expr(Column::UsedAt, sea_orm::sea_query::Expr::value(now))
            .filter(Column::RegistrationKey.eq(registration_key))
            .filter(Column::Id.eq(id))
            .filter(Column::UsedAt.is_null())
            .filter(Column::ExpiresAt.gt(now))
            .exec(&self.store.db)
            .await?;
        Ok(result.rows_affected == 1)
    }
}
