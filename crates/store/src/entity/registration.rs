use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "registrations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    pub registration_id: String,
    pub enrollment_group_key: Option<String>,
    pub device_id: Option<String>,
    pub assigned_hub: Option<String>,
    pub status: String,
    pub substatus: Option<String>,
    pub error_code: Option<i32>,
    pub error_message: Option<String>,
    pub payload: Option<Json>,
    pub initial_twin: Option<Json>,
    pub hub_key_slot: Option<String>,
    pub etag: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
