//! A connection kept by one of the store's hot paths instead of borrowed from the pool for each query.
//!
//! sqlx checks a pooled connection every time it goes back to the pool: on PostgreSQL that is a round trip (the
//! server process wakes for a `Sync` and answers it), on SQLite a hop to the connection's worker thread. For a short
//! query that doubles the work of both sides. A task that runs one query after another (the lookups of devices'
//! enrollments, the registration writer) keeps its connection and skips the check.
//!
//! A held connection can die under its holder (a restarted PostgreSQL, a terminated server process); a query that
//! fails for that reason is tried once more on a fresh connection from the pool, so the holder's callers see the
//! same behaviour as with pooled connections. Closing the pool waits for every connection taken from it, so a holder
//! drops its connection once [`HeldConnection::closed`] resolves.

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, Postgres, Sqlite};
use sea_orm::{DatabaseConnection, DbErr, QueryResult, RuntimeErr};
use serde::Serialize;

use crate::StoreError;

/// One statement in each database's dialect, taking its parameters from an [`Argument`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sql {
    /// PostgreSQL's text (`$1`, ...).
    pub(crate) postgres: &'static str,
    /// SQLite's text (`?1`).
    pub(crate) sqlite: &'static str,
}

/// A query on PostgreSQL, its parameters being bound.
pub(crate) type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;
/// A query on SQLite, its parameters being bound.
pub(crate) type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

/// What a [`Sql`] statement runs on, bound as each database reads it.
pub(crate) trait Argument: Sync {
    /// Binds the statement's parameters on PostgreSQL.
    fn bind_postgres<'q>(&self, query: PgQuery<'q>) -> PgQuery<'q>;
    /// Binds the statement's parameters on SQLite.
    fn bind_sqlite<'q>(&self, query: SqliteQuery<'q>) -> SqliteQuery<'q>;
}

/// A value serialized as JSON, the one parameter on both databases (`jsonb` on PostgreSQL, text on SQLite).
pub(crate) struct AsJson<T>(pub(crate) T);

impl<T: Serialize + Sync> Argument for AsJson<T> {
    fn bind_postgres<'q>(&self, query: PgQuery<'q>) -> PgQuery<'q> {
        query.bind(sqlx::types::Json(&self.0))
    }

    fn bind_sqlite<'q>(&self, query: SqliteQuery<'q>) -> SqliteQuery<'q> {
        query.bind(sqlx::types::Json(&self.0))
    }
}

/// A timestamp as text inside a statement's argument (a JSON field, or a parameter bound as text): as sqlx writes
/// timestamps on SQLite (whose comparisons are textual), which PostgreSQL reads as well.
pub(crate) fn json_timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

enum Connection {
    Postgres(PoolConnection<Postgres>),
    Sqlite(PoolConnection<Sqlite>),
}

/// A connection taken from `pool` on first use and kept until a query on it fails.
pub(crate) struct HeldConnection {
    pool: DatabaseConnection,
    connection: Option<Connection>,
    keep: bool,
    /// Whether the statements are point lookups by index ([`HeldConnection::looking_up_by_index`]).
    index_lookups: bool,
}

impl std::fmt::Debug for HeldConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldConnection").field("held", &self.connection.is_some()).finish()
    }
}

impl HeldConnection {
    /// A holder that takes its connection from `pool`. With `keep` false it gives the connection back after each
    /// query, for a pool whose one connection others need as well (an in-memory SQLite database).
    pub(crate) fn new(pool: DatabaseConnection, keep: bool) -> Self {
        Self { pool, connection: None, keep, index_lookups: false }
    }

    /// For statements that are all point lookups by indexed keys, which an index answers best at any table size:
    /// PostgreSQL plans them without sequential scans. Its generic plan for such a lookup, settled on while the
    /// table was nearly empty, was a sequential scan that stayed as the table grew (21 ms per lookup among 20,000
    /// certificates). A connection with this setting never goes back to the pool. It also does without JIT
    /// compilation: a sequential scan that remains (of a table with no usable index, such as the few hubs) is costed
    /// as if disabled, far above the threshold for JIT, which then compiled the statement each time it ran (a
    /// second per batch for the writer's certificates).
    pub(crate) fn looking_up_by_index(mut self) -> Self {
        self.index_lookups = true;
        self
    }

    /// Runs `sql` with `argument` and returns its rows. A failed query drops the connection (on SQLite after
    /// rolling back what a script left open); if the connection was lost, the query runs once more on a fresh one.
    pub(crate) async fn fetch_all(
        &mut self,
        sql: Sql,
        argument: &impl Argument,
    ) -> Result<Vec<QueryResult>, StoreError> {
        let mut retried = false;
        loop {
            let connection = match self.connection.as_mut() {
                Some(connection) => connection,
                None => self.connection.insert(self.acquire().await?),
            };
            let result = match connection {
                Connection::Postgres(c) => argument
                    .bind_postgres(sqlx::query(sql.postgres))
                    .fetch_all(&mut **c)
                    .await
                    .map(|rows| rows.into_iter().map(QueryResult::from).collect()),
                Connection::Sqlite(c) => argument
                    .bind_sqlite(sqlx::query(sql.sqlite))
                    .fetch_all(&mut **c)
                    .await
                    .map(|rows| rows.into_iter().map(QueryResult::from).collect()),
            };
            match result {
                Ok(rows) => {
                    if !self.keep {
                        self.connection = None;
                    }
                    return Ok(rows);
                }
                Err(e) => {
                    // A script that stopped inside its transaction (SQLite) leaves it open on the connection, which
                    // goes back to the pool: rolled back here, on that connection. Rolled back by a later statement
                    // on whichever connection the pool gave out, the pool's next user (the one connection that
                    // writes, shared with every other write) could have written inside it and lost that write.
                    if let Connection::Sqlite(c) = connection {
                        let _ = sqlx::query("ROLLBACK").execute(&mut **c).await;
                    }
                    // Whatever went wrong, the connection's state is unknown: the next query starts on a fresh one.
                    self.connection = None;
                    if retried || !connection_lost(&e) {
                        return Err(DbErr::Query(RuntimeErr::SqlxError(e.into())).into());
                    }
                    retried = true;
                }
            }
        }
    }

    /// Resolves once the pool is closed. The holder must then drop its connection: closing a pool waits for every
    /// connection taken from it.
    pub(crate) fn closed(&self) -> sqlx::pool::CloseEvent {
        match self.pool.get_database_backend() {
            sea_orm::DbBackend::Postgres => self.pool.get_postgres_connection_pool().close_event(),
            _ => self.pool.get_sqlite_connection_pool().close_event(),
        }
    }

    /// A connection from the pool; one to be kept is checked first: the pool checks only connections idle for a
    /// while, and after the server restarted its idle connections are as dead as the one just dropped. A dead one is
    /// closed and the next taken, at most [`ACQUIRE_ATTEMPTS`] times.
    async fn acquire(&self) -> Result<Connection, StoreError> {
        let lost = |e: sqlx::Error| StoreError::from(DbErr::Conn(RuntimeErr::SqlxError(e.into())));
        let mut attempts = 0;
        loop {
            attempts += 1;
            let checked = match self.pool.get_database_backend() {
                sea_orm::DbBackend::Postgres => {
                    let connection = self.pool.get_postgres_connection_pool().acquire().await.map_err(lost)?;
                    match live(connection, self.keep).await {
                        Ok(mut connection) if self.keep && self.index_lookups => {
                            connection.close_on_drop();
                            sqlx::query(
                                "SELECT set_config('enable_seqscan', 'off', false), set_config('jit', 'off', false)",
                            )
                            .execute(&mut *connection)
                            .await
                            .map(|_| Connection::Postgres(connection))
                        }
                        checked => checked.map(Connection::Postgres),
                    }
                }
                _ => {
                    let connection = self.pool.get_sqlite_connection_pool().acquire().await.map_err(lost)?;
                    live(connection, self.keep).await.map(Connection::Sqlite)
                }
            };
            match checked {
                Ok(connection) => return Ok(connection),
                Err(e) if attempts >= ACQUIRE_ATTEMPTS => return Err(lost(e)),
                Err(_) => continue,
            }
        }
    }
}

/// `connection` if it answers a ping (or is not to be kept: borrowed for one query, it is checked as the pool checks
/// any); else it is closed (and leaves the pool).
async fn live<DB: sqlx::Database>(
    mut connection: PoolConnection<DB>,
    kept: bool,
) -> Result<PoolConnection<DB>, sqlx::Error> {
    use sqlx::Connection as _;
    if !kept {
        return Ok(connection);
    }
    match connection.ping().await {
        Ok(()) => Ok(connection),
        Err(e) => {
            let _ = connection.close().await;
            Err(e)
        }
    }
}

/// How many pooled connections [`HeldConnection`] tries before it gives up: more than a pool holds.
const ACQUIRE_ATTEMPTS: usize = 20;

/// Whether `e` says the connection is gone (rather than the statement failing on a live one): an I/O or protocol
/// failure, or PostgreSQL's classes 08 (connection exception) and 57 (operator intervention, such as a server
/// process terminated or the server shutting down).
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        _ => false,
    }
}
