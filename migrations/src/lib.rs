//! Database schema migrations for zerotouch, one file per change, applied by `zerotouch migrate` or at start-up.
//!
//! A shipped migration is never edited; a change to the schema is a new file
//! (`mYYYYMMDD_HHMMSS_<verb>_<noun>.rs`) with `up` and `down`. The same migrations run on SQLite and PostgreSQL.
#![forbid(unsafe_code)]
// sea-orm-migration's trait uses `SchemaManager` with an elided lifetime (see docs/dependencies.md).
#![allow(elided_lifetimes_in_paths)]

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_create_core_tables;
mod m20261129_000001_add_registration_details;
mod m20261130_000001_create_pki_tables;
mod m20261201_000001_create_hub_jobs;
mod m20261202_000001_create_tpm_challenges;
mod m20261205_000001_add_tpm_challenge_blob;
mod m20261205_011800_add_hub_device_id_index;
mod m20261206_000001_create_data_keys;
mod m20261207_000001_add_registration_hub_key_slot;
mod m20261208_000001_create_shared_access_policies;
mod m20261209_000001_index_only_group_registrations;
mod m20261210_000001_drop_certificate_thumbprint_index;

/// The ordered list of every migration.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_core_tables::Migration),
            Box::new(m20261129_000001_add_registration_details::Migration),
            Box::new(m20261130_000001_create_pki_tables::Migration),
            Box::new(m20261201_000001_create_hub_jobs::Migration),
            Box::new(m20261202_000001_create_tpm_challenges::Migration),
            Box::new(m20261205_000001_add_tpm_challenge_blob::Migration),
            Box::new(m20261205_011800_add_hub_device_id_index::Migration),
            Box::new(m20261206_000001_create_data_keys::Migration),
            Box::new(m20261207_000001_add_registration_hub_key_slot::Migration),
            Box::new(m20261208_000001_create_shared_access_policies::Migration),
            Box::new(m20261209_000001_index_only_group_registrations::Migration),
            Box::new(m20261210_000001_drop_certificate_thumbprint_index::Migration),
        ]
    }
}
