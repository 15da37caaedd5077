//! sea-orm entities, one module per table.

pub(crate) mod audit_event;
pub(crate) mod certificate;
pub(crate) mod certificate_authority;
pub(crate) mod data_key;
pub(crate) mod hub;
pub(crate) mod hub_job;
pub(crate) mod issuing_ca;
pub(crate) mod operation;
pub(crate) mod registration;
pub(crate) mod shared_access_policy;
pub(crate) mod tpm_binding;
pub(crate) mod tpm_challenge;

/// Defines the entity of an enrollment table; both enrollment tables have this shape.
macro_rules! enrollment_entity {
    ($module:ident, $table:tt) => {
        pub(crate) mod $module {
            use sea_orm::entity::prelude::*;

            #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
            #[sea_orm(table_name = $table)]
            pub struct Model {
                #[sea_orm(primary_key, auto_increment = false)]
                pub key: String,
                pub id: String,
                pub attestation_type: String,
                pub provisioning_status: String,
                pub document: Json,
                pub primary_symmetric_key: Option<String>,
                pub secondary_symmetric_key: Option<String>,
                pub etag: String,
                pub created_at: DateTimeUtc,
                pub updated_at: DateTimeUtc,
            }

            #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
            pub enum Relation {}

            impl ActiveModelBehavior for ActiveModel {}
        }
    };
}

enrollment_entity!(individual_enrollment, "individual_enrollments");
enrollment_entity!(enrollment_group, "enrollment_groups");
