use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "issuing_cas")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub key_algorithm: String,
    pub encrypted_key: String,
    pub csr_pem: String,
    pub chain_pem: Option<String>,
    pub status: String,
    pub not_after: Option<DateTimeUtc>,
    pub crl_number: i64,
    pub crl_revision: i64,
    pub crl_der: Option<Vec<u8>>,
    pub crl_this_update: Option<DateTimeUtc>,
    pub crl_next_update: Option<DateTimeUtc>,
    pub crl_stale: bool,
    pub etag: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
