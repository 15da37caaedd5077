//! `certificates.thumbprint_sha256` is no longer unique, so no longer indexed.
//!
//! A presented certificate is found by its serial, the table's primary key, and is ours only if the thumbprints
//! agree (`CertificateReader::presented` in crates/store/src/certificate.rs). The unique index added nothing to
//! that: two certificates with one thumbprint are one certificate, so one serial, which the primary key already
//! keeps unique. Yet every certificate written paid a second entry keyed by a random value, and every certificate
//! superseded or revoked another (a status change moves the row to a new version in every index on PostgreSQL).
//!
//! PostgreSQL drops the constraint. SQLite cannot drop a column's UNIQUE, so the table is rebuilt without it, as
//! SQLite's documentation describes for a change it cannot make in place: the rows are copied to a new table,
//! which takes the old one's name and indexes. No other table refers to `certificates`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261210_000001_drop_certificate_thumbprint_index"
    }
}

/// The table as `m20261130_000001_create_pki_tables` created it on SQLite, with or without the thumbprint's UNIQUE.
fn sqlite_table(name: &str, unique_thumbprint: bool) -> String {
    let unique = if unique_thumbprint { " UNIQUE" } else { "" };
    format!(
        "CREATE TABLE \"{name}\" ( \"serial\" varchar NOT NULL PRIMARY KEY, \"registration_key\" varchar NOT NULL, \
         \"device_id\" varchar NOT NULL, \"issuing_ca\" varchar NOT NULL, \"not_before\" timestamp_with_timezone_text \
         NOT NULL, \"not_after\" timestamp_with_timezone_text NOT NULL, \"status\" varchar NOT NULL, \
         \"thumbprint_sha256\" varchar NOT NULL{unique}, \"revoked_at\" timestamp_with_timezone_text NULL, \
         \"revocation_reason\" varchar NULL, \"created_at\" timestamp_with_timezone_text NOT NULL )"
    )
}

/// The indexes `m20261130_000001_create_pki_tables` made, which a rebuilt table needs again.
const SQLITE_INDEXES: [&str; 3] = [
    "CREATE INDEX \"certificates_by_registration\" ON \"certificates\" (\"registration_key\", \"status\")",
    "CREATE INDEX \"certificates_by_issuer\" ON \"certificates\" (\"issuing_ca\", \"status\")",
    "CREATE INDEX \"certificates_by_expiry\" ON \"certificates\" (\"not_after\", \"serial\")",
];

/// Rebuilds `certificates` on SQLite with the thumbprint unique or not, keeping its rows and indexes.
async fn rebuild_sqlite(db: &impl ConnectionTrait, unique_thumbprint: bool) -> Result<(), DbErr> {
    db.execute_unprepared(&sqlite_table("certificates_rebuilt", unique_thumbprint)).await?;
    db.execute_unprepared(
        "INSERT INTO certificates_rebuilt (serial, registration_key, device_id, issuing_ca, not_before, not_after, \
         status, thumbprint_sha256, revoked_at, revocation_reason, created_at) SELECT serial, registration_key, \
         device_id, issuing_ca, not_before, not_after, status, thumbprint_sha256, revoked_at, revocation_reason, \
         created_at FROM certificates",
    )
    .await?;
    db.execute_unprepared("DROP TABLE certificates").await?;
    db.execute_unprepared("ALTER TABLE certificates_rebuilt RENAME TO certificates").await?;
    for index in SQLITE_INDEXES {
        db.execute_unprepared(index).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// In one transaction on both databases (sea-orm-migration's default on SQLite is none): a rebuild stopped
    /// halfway must leave the table as it was, with the migration still to apply.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match db.get_database_backend() {
            DatabaseBackend::Sqlite => rebuild_sqlite(db, false).await,
            _ => {
                db.execute_unprepared("ALTER TABLE certificates DROP CONSTRAINT certificates_thumbprint_sha256_key")
                    .await?;
                Ok(())
            }
        }
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match db.get_database_backend() {
            DatabaseBackend::Sqlite => rebuild_sqlite(db, true).await,
            _ => {
                db.execute_unprepared(
                    "ALTER TABLE certificates ADD CONSTRAINT certificates_thumbprint_sha256_key UNIQUE \
                     (thumbprint_sha256)",
                )
                .await?;
                Ok(())
            }
        }
    }
}
