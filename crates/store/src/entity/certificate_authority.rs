use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "certificate_authorities")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    pub name: String,
    pub certificate_der: Vec<u8>,
    pub subject: String,
    pub thumbprint_sha256: String,
    pub not_after: DateTimeUtc,
    pub verified: bool,
    pub verification_code: Option<String>,
    pub verification_code_expires_at: Option<DateTimeUtc>,
    pub etag: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
