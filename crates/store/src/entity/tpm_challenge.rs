use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "tpm_challenges")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub registration_key: String,
    pub id: String,
    pub enrollment_kind: String,
    pub enrollment_key: String,
    pub hmac_key: String,
    pub endorsement_key: String,
    pub storage_root_key: String,
    pub expires_at: DateTimeUtc,
    pub used_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub blob: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
