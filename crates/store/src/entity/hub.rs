use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "hubs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub host_name: String,
    pub kind: String,
    pub allocation_weight: i32,
    pub apply_allocation_policy: bool,
    pub settings: Json,
    pub etag: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
