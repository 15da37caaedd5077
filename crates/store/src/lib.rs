//! Persistence for zerotouch: sea-orm entities and repositories, the only code that knows SQL.
//!
//! The same schema (from `zerotouch-migrations`) and the same behaviour on an embedded SQLite file and on
//! PostgreSQL. Every write that changes a resource runs in one transaction with its audit event, and is guarded
//! by the resource's etag, so that concurrent writers (several requests, several replicas) cannot lose updates.
#![forbid(unsafe_code, unused_must_use)]
#![deny(missing_docs)]
//!
//! [`Store`] holds the connections and their lifecycle; each concern is a repository it hands out
//! ([`Store::enrollments`], [`Store::registrations`], ...), a borrowed handle that costs nothing to make. A
//! concern an admin reader may see comes in two parts: a `…Reader` with the reads, and the repository with the
//! writes, which dereferences to its reader. The admin API hands a reader to a caller allowed only to read, so
//! the type says what a handler can do.

/// Declares a repository: a borrowed handle on the [`Store`] for one concern.
macro_rules! repository {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name<'a> {
            store: &'a crate::Store,
        }

        impl<'a> $name<'a> {
            pub(crate) fn new(store: &'a crate::Store) -> Self {
                Self { store }
            }
        }
    };
}

/// Declares a repository whose reads are a type of their own (`$reader`), which the repository dereferences to,
/// so that a caller allowed only to read can be given the reads alone.
macro_rules! repository_with_reader {
    ($(#[$doc:meta])* $name:ident, $(#[$reader_doc:meta])* $reader:ident) => {
        $(#[$reader_doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $reader<'a> {
            store: &'a crate::Store,
        }

        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name<'a> {
            store: &'a crate::Store,
            reader: $reader<'a>,
        }

        impl<'a> $name<'a> {
            pub(crate) fn new(store: &'a crate::Store) -> Self {
                Self { store, reader: $reader { store } }
            }

            /// The reads alone.
            pub fn reader(self) -> $reader<'a> {
                self.reader
            }
        }

        impl<'a> std::ops::Deref for $name<'a> {
            type Target = $reader<'a>;

            fn deref(&self) -> &$reader<'a> {
                &self.reader
            }
        }
    };
}

mod audit;
mod batch;
mod certificate;
mod certificate_authority;
mod enrollment;
// sea-orm derives generate `pub` items inside these crate-private modules.
#[allow(unreachable_pub)]
mod entity;
mod error;
mod held;
mod hub;
mod hub_job;
mod issuing_ca;
mod migration_lock;
mod reader;
mod registration;
mod secrets;
mod shared_access_policy;
#[cfg(feature = "test-support")]
pub mod test_support;
mod tpm;
mod tpm_binding;

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};
use zerotouch_migrations::{Migrator, MigratorTrait};

pub use audit::{AuditFilter, AuditLog, AuditRecord};
pub use certificate::{
    CertificateFilter, CertificateReader, CertificateRecord, CertificateStatus, Certificates, RevokedCertificate,
};
pub use certificate_authority::{
    CertificateAuthorities, CertificateAuthorityInput, CertificateAuthorityReader, CertificateAuthorityRecord,
};
pub use enrollment::{BulkCall, BulkFailure, BulkItem, EnrollmentReader, EnrollmentRecord, Enrollments};
pub use error::StoreError;
pub use hub::{HubInput, HubReader, HubRecord, Hubs};
pub use hub_job::{CredentialRef, HubAction, HubBacklog, HubJobOutcome, HubJobRecord, HubJobs, NO_ADAPTER, NewHubJob};
pub use issuing_ca::{
    CaPrivateKey, CrlState, IssuingCaReader, IssuingCaRecord, IssuingCaStatus, IssuingCas, NewIssuingCa,
};
pub use registration::{
    CertificateGuard, Committed, OperationRecord, RegistrationOutcome, RegistrationReader, RegistrationRecord,
    Registrations, Snapshot,
};
pub use secrets::{Rotated, UnlockError, Unlocked};
pub use shared_access_policy::{SharedAccessPolicies, SharedAccessPolicyReader, SharedAccessPolicyRecord};
pub use tpm::{Tpm, TpmChallengeRecord};
pub use tpm_binding::{TpmBindingReader, TpmBindingRecord, TpmBindings};

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// The backend a database URL selects, if any.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// Who made a change, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The subject of the caller's token.
    pub subject: String,
    /// The caller's role.
    pub role: String,
}

/// The `If-Match` condition of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// No `If-Match`: the write applies whatever the current etag.
    None,
    /// `If-Match` with these etags (`*` matches any existing resource).
    IfMatch(Vec<String>),
}

impl Precondition {
    /// Whether a resource whose etag is `current` (`None`: absent) satisfies the condition.
    pub fn allows(&self, current: Option<&str>) -> bool {
        match (self, current) {
            (Self::None, _) => true,
            (Self::IfMatch(_), None) => false,
            (Self::IfMatch(tags), Some(current)) => tags.iter().any(|t| t == "*" || t == current),
        }
    }
}

/// One page of a listing and the continuation token of the next, if there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// Cuts `rows`, fetched with one more than `limit`, to a page; the next page starts after its last item.
    pub(crate) fn from_overfetch(mut rows: Vec<T>, limit: u64, cursor: impl Fn(&T) -> String) -> Self {
        let next = if rows.len() as u64 > limit {
            rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            rows.last().map(cursor)
        } else {
            None
        };
        Self { items: rows, next }
    }
}

/// The database: its connections and their lifecycle, and the repositories of its concerns.
#[derive(Debug, Clone)]
pub struct Store {
    /// Writes and transactions.
    db: DatabaseConnection,
    /// Reads outside transactions: on SQLite a pool of read-only connections beside the single writer (WAL lets
    /// them read while it writes); on PostgreSQL the same pool as `db`.
    read: DatabaseConnection,
    /// Whether `read` is a pool of its own (to be closed apart).
    separate_reader: bool,
    backend: Backend,
    /// Writes registration attempts in batches.
    registrations: registration::RegistrationWriter,
    /// Reads devices' individual enrollments, registrations and certificates in batches.
    devices: reader::DeviceReader,
    /// Counts this process's changes to hubs, enrollment groups and customer CAs, so that callers caching them can
    /// tell.
    reference_changes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The data key, once [`Store::unlock`] loaded it; every secret is sealed under it (`secrets.rs`).
    vault: secrets::Vault,
    /// Held by every clone; background tasks of this store stop once the last clone is gone.
    _alive: std::sync::Arc<()>,
}

/// How long a pooled connection may sit idle before it is checked on its next use.
pub const POOLED_CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// WAL pages after which SQLite's writer checkpoints by itself (its default is 1,000): only when the checkpointer
/// falls far behind.
const WRITER_AUTOCHECKPOINT_PAGES: &str = "10000";

/// How often the checkpointer copies SQLite's WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Opens a pool. A fresh SQLite file that several processes open at once (replicas, or `zerotouch migrate` runs
/// racing) can answer `database is locked` while one of them switches it to WAL, a change SQLite does not wait
/// for: that is tried again, a few times, before it is an error.
async fn connect_pool(options: ConnectOptions) -> Result<DatabaseConnection, sea_orm::DbErr> {
    let mut attempt = 0u64;
    loop {
        match Database::connect(options.clone()).await {
            Err(e) if attempt < 10 && e.to_string().contains("database is locked") => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            result => return result,
        }
    }
}

/// Checkpoints SQLite's WAL from a connection of its own, so that the writer, which by default checkpoints inside
/// the commit that crosses 1,000 pages, never stalls every registration queued behind it. A passive checkpoint
/// waits for no reader or writer. Stops when `alive` is gone.
fn start_checkpointer(db: DatabaseConnection, alive: std::sync::Weak<()>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if alive.strong_count() == 0 {
                break;
            }
            if let Err(e) = db.execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)").await {
                tracing::warn!("cannot checkpoint the SQLite WAL: {e}");
            }
        }
        let _ = db.close().await;
    });
}

/// Most rows a listing returns per page.
pub const MAX_PAGE_SIZE: u64 = 1000;

impl Store {
    /// Connects to `url` (`sqlite://FILE?mode=rwc` or `postgres://...`); must run inside a Tokio runtime, where
    /// the registration writer task starts.
    ///
    /// SQLite runs in WAL mode with one pooled writer connection: SQLite has one writer at a time anyway, and a
    /// single writer avoids `database is locked` errors between this process's own transactions. Reads go to a
    /// separate pool of read-only connections.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let backend = Backend::of_url(url).ok_or_else(|| StoreError::UnsupportedUrl)?;
        let mut options = ConnectOptions::new(url.to_owned());
        // A pooled connection idle for a second or more is checked before use, so that a dead one (PostgreSQL
        // restarted meanwhile) is replaced instead of failing a request. Checking every use would cost a round trip
        // per query: a fifth of EST's rate on PostgreSQL. The hottest paths (devices' enrollment lookups, the
        // registration writer) keep connections of their own (`held`).
        options
            .sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .test_before_acquire_if_idle_for(POOLED_CHECK_AFTER_IDLE);
        match backend {
            Backend::Sqlite => {
                options.max_connections(1).min_connections(1).map_sqlx_sqlite_opts(|o| {
                    o.create_if_missing(true)
                        // The checkpointer keeps the WAL short; the writer checkpoints only if it falls far behind.
                        .pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
                        // Statement journals and sorts stay in memory: as files, each batch the writer commits
                        // created, wrote and deleted one (closing and evicting it was a few percent of the writer
                        // thread's CPU under EST load).
                        .pragma("temp_store", "memory")
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal)
                        .foreign_keys(true)
                        .busy_timeout(Duration::from_secs(10))
                });
            }
            Backend::Postgres => {
                options.max_connections(16).min_connections(1);
            }
        }
        let db = connect_pool(options.clone()).await?;
        // An in-memory SQLite database exists once per pool: its reads must use the writer's pool.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let alive = std::sync::Arc::new(());
        if backend == Backend::Sqlite && !in_memory {
            let mut options = ConnectOptions::new(url.to_owned());
            options
                .sqlx_logging(false)
                .max_connections(1)
                .min_connections(1)
                .map_sqlx_sqlite_opts(|o| o.journal_mode(SqliteJournalMode::Wal).busy_timeout(Duration::from_secs(10)));
            start_checkpointer(connect_pool(options).await?, std::sync::Arc::downgrade(&alive));
        }
        let read = match backend {
            Backend::Sqlite if in_memory => db.clone(),
            Backend::Sqlite => {
                options.max_connections(4).min_connections(1).map_sqlx_sqlite_opts(|o| {
                    o.read_only(true)
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal)
                        .busy_timeout(Duration::from_secs(10))
                });
                connect_pool(options).await?
            }
            Backend::Postgres => db.clone(),
        };
        let vault = secrets::Vault::default();
        Ok(Self {
            // SQLite's writer pool is its one write connection, which admin writes and the writer's own transactions
            // take as well: the writer cannot keep it.
            registrations: registration::RegistrationWriter::start(
                db.clone(),
                backend == Backend::Postgres,
                vault.clone(),
            ),
            devices: reader::DeviceReader::start(read.clone(), !in_memory, vault.clone()),
            vault,
            db,
            read,
            backend,
            separate_reader: backend == Backend::Sqlite && !in_memory,
            reference_changes: Default::default(),
            _alive: alive,
        })
    }

    /// How many changes this process made to hubs, enrollment groups, customer CAs and issuing CAs (a cache of them
    /// is stale when it moved; changes made by other replicas are not counted, so such a cache also needs a short
    /// lifetime).
    pub fn reference_changes(&self) -> u64 {
        self.reference_changes.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn note_reference_change(&self) {
        self.reference_changes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The engine this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let lock = migration_lock::MigrationLock::acquire(&self.db, self.backend).await?;
        let migrated = Migrator::up(&self.db, None).await;
        lock.release().await?;
        Ok(migrated?)
    }

    /// Whether the database answers and no migration is pending.
    pub async fn is_ready(&self) -> Result<bool, StoreError> {
        self.db.execute_unprepared("SELECT 1").await?;
        // Read without the migrator, which would create its table (DDL from a probe) and refuse a database that a
        // newer version migrated further (migrations only add, so during a rolling upgrade the old replicas go on
        // serving).
        let versions =
            sea_orm::Statement::from_string(self.db.get_database_backend(), "SELECT version FROM seaql_migrations");
        let applied: std::collections::HashSet<String> = match self.db.query_all_raw(versions).await {
            Ok(rows) => rows.iter().map(|row| row.try_get("", "version")).collect::<Result<_, _>>()?,
            // The database answered, but has no migration table: nothing is migrated yet.
            Err(_) => return Ok(false),
        };
        Ok(Migrator::migrations().iter().all(|migration| applied.contains(migration.name())))
    }

    /// A handle that can tell whether the store is ready, and nothing else (for `/readyz`).
    pub fn readiness(&self) -> Readiness {
        Readiness(self.clone())
    }

    /// Enrollments and enrollment groups.
    pub fn enrollments(&self) -> Enrollments<'_> {
        Enrollments::new(self)
    }

    /// Device registration states, their operations, and refused device requests.
    pub fn registrations(&self) -> Registrations<'_> {
        Registrations::new(self)
    }

    /// The linked hubs.
    pub fn hubs(&self) -> Hubs<'_> {
        Hubs::new(self)
    }

    /// The hub outbox: jobs delivering device identities to hubs.
    pub fn hub_jobs(&self) -> HubJobs<'_> {
        HubJobs::new(self)
    }

    /// The certificates the managed CA issued.
    pub fn certificates(&self) -> Certificates<'_> {
        Certificates::new(self)
    }

    /// The managed CA's issuing CAs (keys, chains, CRLs).
    pub fn issuing_cas(&self) -> IssuingCas<'_> {
        IssuingCas::new(self)
    }

    /// Uploaded customer certificate authorities (X.509 group trust anchors).
    pub fn certificate_authorities(&self) -> CertificateAuthorities<'_> {
        CertificateAuthorities::new(self)
    }

    /// The audit log.
    pub fn audit(&self) -> AuditLog<'_> {
        AuditLog::new(self)
    }

    /// TPM activation challenges and EK bindings.
    pub fn tpm(&self) -> Tpm<'_> {
        Tpm::new(self)
    }

    /// Shared access policies: the keys of the admin API's `SharedAccessSignature` tokens.
    pub fn shared_access_policies(&self) -> SharedAccessPolicies<'_> {
        SharedAccessPolicies::new(self)
    }

    /// The TPM bindings of TPM enrollment groups, for admins.
    pub fn tpm_bindings(&self) -> TpmBindings<'_> {
        TpmBindings::new(self)
    }

    /// Closes the pool.
    pub async fn close(self) -> Result<(), StoreError> {
        if self.separate_reader {
            self.read.close().await?;
        }
        self.db.close().await?;
        Ok(())
    }
}

/// Whether the store is ready: the one thing `/readyz`, which takes no token, may ask of it.
#[derive(Debug, Clone)]
pub struct Readiness(Store);

impl Readiness {
    /// Whether the database answers, no migration is pending and the secrets are unlocked (a store started before
    /// its migrations ran, with `--no-migrate`, stays locked until restarted).
    pub async fn is_ready(&self) -> Result<bool, StoreError> {
        Ok(self.0.is_ready().await? && self.0.is_unlocked())
    }
}

/// The row a query on a primary or unique key finds, if any. sea-orm's `.one()` binds its `LIMIT 1` as a
/// parameter, and SQLite re-prepares a statement each time such a parameter is bound (its plan may depend on the
/// value): a third of the SQLite readers' CPU went to re-preparing the lookups every device makes.
pub(crate) async fn unique<E: sea_orm::EntityTrait>(
    select: sea_orm::Select<E>,
    db: &impl ConnectionTrait,
) -> Result<Option<E::Model>, sea_orm::DbErr> {
    Ok(select.all(db).await?.into_iter().next())
}

/// The current time, at the microsecond precision both databases keep.
pub(crate) fn now() -> DateTime<Utc> {
    at_store_precision(Utc::now())
}

/// `at` at the microsecond precision both databases keep, so that a record returned is the record stored.
pub(crate) fn at_store_precision(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// A fresh etag: 96 random bits, base64url.
pub(crate) fn new_etag() -> String {
    use base64::Engine;
    let bytes: [u8; 12] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_semantics_follow_rfc_7232() {
        assert!(Precondition::None.allows(None));
        assert!(Precondition::None.allows(Some("a")));
        let star = Precondition::IfMatch(vec!["*".into()]);
        assert!(star.allows(Some("a")));
        assert!(!star.allows(None));
        let tags = Precondition::IfMatch(vec!["a".into(), "b".into()]);
        assert!(tags.allows(Some("b")));
        assert!(!tags.allows(Some("c")));
    }
}
