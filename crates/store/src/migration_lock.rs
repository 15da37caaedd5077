//! One migration at a time across processes: replicas starting together, or a Helm hook Job retried while another
//! run is still going, must not apply the same migration twice (both would fail half-way, and SQLite's are not
//! transactional). On PostgreSQL, a transaction-scoped advisory lock held while the migrations run; on SQLite, an
//! exclusive lock on a file next to the database (`<database>.migrate.lock`, left in place).

use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, Statement, TransactionTrait};

use crate::{Backend, StoreError};

/// The advisory lock key ("zerotouc" as a big-endian integer), which no other application is likely to take.
const ADVISORY_KEY: i64 = 8_819_581_268_295_382_371;

/// Held while migrations run; released by [`MigrationLock::release`] (or when dropped).
pub(crate) enum MigrationLock {
    /// The transaction holding the advisory lock (on a pooled connection of its own).
    Postgres(DatabaseTransaction),
    /// The locked file; `None` for an in-memory database, which no other process sees.
    Sqlite(Option<std::fs::File>),
}

impl MigrationLock {
    /// Waits until no other process migrates `db`, then holds the lock.
    pub(crate) async fn acquire(db: &DatabaseConnection, backend: Backend) -> Result<Self, StoreError> {
        match backend {
            Backend::Postgres => {
                let txn = db.begin().await?;
                txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({ADVISORY_KEY})")).await?;
                Ok(Self::Postgres(txn))
            }
            Backend::Sqlite => {
                let row =
                    db.query_one_raw(Statement::from_string(db.get_database_backend(), "PRAGMA database_list")).await?;
                let file: String = match row {
                    Some(row) => row.try_get("", "file")?,
                    None => String::new(),
                };
                if file.is_empty() {
                    return Ok(Self::Sqlite(None));
                }
                let path = format!("{file}.migrate.lock");
                let locked = tokio::task::spawn_blocking(move || {
                    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
                    lock.lock()?;
                    Ok::<_, std::io::Error>(lock)
                })
                .await
                .map_err(|e| StoreError::Unavailable(format!("the migration lock: {e}")))?
                .map_err(|e| StoreError::Unavailable(format!("the migration lock file: {e}")))?;
                Ok(Self::Sqlite(Some(locked)))
            }
        }
    }

    /// Releases the lock.
    pub(crate) async fn release(self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(txn) => Ok(txn.commit().await?),
            // Closing the file releases its lock.
            Self::Sqlite(file) => {
                drop(file);
                Ok(())
            }
        }
    }
}
