//! The batching reader of what authenticating devices read: their individual enrollments, their registrations
//! and the certificates they present (by serial). Every device request reads one or more of these by key; the
//! lookups made while a batch is read go together in the next, one query per kind, on a connection the reader keeps.

use std::collections::HashMap;
use std::time::Duration;

use sea_orm::FromQueryResult;
use tokio::sync::{mpsc, oneshot};

use crate::batch::{Batches, NO_LINGER, PATIENT_LINGER};
use crate::certificate::CertificateRecord;
use crate::enrollment::EnrollmentRecord;
use crate::enrollment::table::IndividualTable;
use crate::held::{Argument, HeldConnection, PgQuery, Sql, SqliteQuery};
use crate::registration::RegistrationRecord;
use crate::secrets::Vault;
use crate::{StoreError, entity};

/// Most lookups one batch carries.
const MAX_LOOKUPS: usize = 256;

/// Individual enrollments by key: the keys arrive as one array ([`Keys`], as in the queries below).
const INDIVIDUALS_BY_KEY: Sql = Sql {
    postgres: "SELECT * FROM individual_enrollments WHERE key = ANY($1)",
    sqlite: "SELECT * FROM individual_enrollments WHERE key IN (SELECT value FROM json_each(?1))",
};

/// Registrations by key.
const REGISTRATIONS_BY_KEY: Sql = Sql {
    postgres: "SELECT * FROM registrations WHERE key = ANY($1)",
    sqlite: "SELECT * FROM registrations WHERE key IN (SELECT value FROM json_each(?1))",
};

/// Certificates by serial (lower-case hex), their primary key.
const CERTIFICATES_BY_SERIAL: Sql = Sql {
    postgres: "SELECT * FROM certificates WHERE serial = ANY($1)",
    sqlite: "SELECT * FROM certificates WHERE serial IN (SELECT value FROM json_each(?1))",
};

/// The keys one batch looks up: a `text[]` on PostgreSQL, which reads it without parsing; a JSON array of strings
/// on SQLite, which has no arrays.
struct Keys<'a>(Vec<&'a str>);

impl Argument for Keys<'_> {
    fn bind_postgres<'q>(&self, query: PgQuery<'q>) -> PgQuery<'q> {
        query.bind(&self.0)
    }

    fn bind_sqlite<'q>(&self, query: SqliteQuery<'q>) -> SqliteQuery<'q> {
        query.bind(sea_orm::sqlx::types::Json(&self.0))
    }
}

/// Where a lookup's answer goes.
type Reply<R> = oneshot::Sender<Result<Option<R>, StoreError>>;

/// A device's lookup, waiting for the reader.
enum Lookup {
    Individual(String, Reply<EnrollmentRecord>),
    Registration(String, Reply<RegistrationRecord>),
    Certificate(String, Reply<CertificateRecord>),
}

impl Lookup {
    /// How long this lookup may wait for more to join its batch. An enrollment's or a registration's lookup is
    /// patient: a SAS device's register makes one, and a status lookup or an uncached poll loses a few
    /// milliseconds in a request that began with a TLS handshake. A certificate's lookup does not wait, and
    /// neither does the batch it is in: every EST call makes one together with its other lookups, and its caller
    /// waits for its certificate (as does a device registering with a certificate).
    fn linger(&self) -> Duration {
        match self {
            Self::Individual(..) | Self::Registration(..) => PATIENT_LINGER,
            Self::Certificate(..) => NO_LINGER,
        }
    }
}

/// Reads individual enrollments, registrations and certificates by key for the devices' requests, the busiest reads
/// of the service. The keys asked for while a batch is read (and, while busy, within a few milliseconds more: see
/// [`Batches`] and [`Lookup::linger`]) go together in the next one, on a connection the reader holds
/// ([`HeldConnection`]): a query per kind for a batch of devices instead of two round trips for each lookup.
#[derive(Debug, Clone)]
pub(crate) struct DeviceReader {
    queue: mpsc::Sender<Lookup>,
}

impl DeviceReader {
    /// Starts the reader task on the current runtime, reading from `pool` (keeping a connection of it if `keep`,
    /// see [`HeldConnection::new`]), opening enrollment keys with `vault`; it ends when the last store holding it is
    /// dropped or the pool is closed.
    pub(crate) fn start(pool: sea_orm::DatabaseConnection, keep: bool, vault: Vault) -> Self {
        let (queue, receiver) = mpsc::channel::<Lookup>(4 * MAX_LOOKUPS);
        tokio::spawn(async move {
            let mut connection = HeldConnection::new(pool, keep).looking_up_by_index();
            let closed = connection.closed();
            tokio::pin!(closed);
            let mut batches = Batches::new(receiver, MAX_LOOKUPS, Lookup::linger);
            let mut batch = Vec::with_capacity(MAX_LOOKUPS);
            while batches.next(&mut batch, &mut closed).await {
                let (mut individuals, mut registrations, mut certificates) = (Vec::new(), Vec::new(), Vec::new());
                for lookup in batch.drain(..) {
                    match lookup {
                        Lookup::Individual(key, reply) => individuals.push((key, reply)),
                        Lookup::Registration(key, reply) => registrations.push((key, reply)),
                        Lookup::Certificate(key, reply) => certificates.push((key, reply)),
                    }
                }
                use entity::{certificate, individual_enrollment, registration};
                answer(
                    &mut connection,
                    INDIVIDUALS_BY_KEY,
                    individuals,
                    |m: &individual_enrollment::Model| m.key.clone(),
                    |m| IndividualTable::to_record(&vault, m),
                )
                .await;
                answer(
                    &mut connection,
                    REGISTRATIONS_BY_KEY,
                    registrations,
                    |m: &registration::Model| m.key.clone(),
                    |m| Ok(crate::registration::to_record(m)),
                )
                .await;
                answer(
                    &mut connection,
                    CERTIFICATES_BY_SERIAL,
                    certificates,
                    |m: &certificate::Model| m.serial.clone(),
                    crate::certificate::to_record,
                )
                .await;
                batches.done();
            }
        });
        Self { queue }
    }

    /// The individual enrollment `key`, if any, read together with the other lookups queued meanwhile.
    pub(crate) async fn individual(&self, key: &str) -> Result<Option<EnrollmentRecord>, StoreError> {
        self.read(|reply| Lookup::Individual(key.to_owned(), reply)).await
    }

    /// The registration `key`, if any, read together with the other lookups queued meanwhile.
    pub(crate) async fn registration(&self, key: &str) -> Result<Option<RegistrationRecord>, StoreError> {
        self.read(|reply| Lookup::Registration(key.to_owned(), reply)).await
    }

    /// The certificate with serial `serial_hex` (either case), if any, read together with the other lookups queued
    /// meanwhile.
    pub(crate) async fn certificate(&self, serial_hex: &str) -> Result<Option<CertificateRecord>, StoreError> {
        self.read(|reply| Lookup::Certificate(serial_hex.to_ascii_lowercase(), reply)).await
    }

    async fn read<R>(&self, lookup: impl FnOnce(Reply<R>) -> Lookup) -> Result<Option<R>, StoreError> {
        let stopped = || StoreError::Unavailable("the devices' reader has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.queue.send(lookup(reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Reads the rows of `lookups`' keys with `sql` (`key` tells a row's) and answers each lookup: its record (made by
/// `record`, so that a row that cannot be read fails only its own lookups), none, or the error the query met.
async fn answer<M, R>(
    connection: &mut HeldConnection,
    sql: Sql,
    lookups: Vec<(String, Reply<R>)>,
    key: impl Fn(&M) -> String,
    record: impl Fn(M) -> Result<R, StoreError>,
) where
    M: FromQueryResult + Clone,
{
    if lookups.is_empty() {
        return;
    }
    let keys = Keys(lookups.iter().map(|(key, _)| key.as_str()).collect());
    let found = connection.fetch_all(sql, &keys).await.and_then(|rows| {
        rows.iter()
            .map(|row| M::from_query_result(row, "").map(|model| (key(&model), model)).map_err(StoreError::from))
            .collect::<Result<HashMap<String, M>, StoreError>>()
    });
    match found {
        Ok(found) => {
            for (key, reply) in lookups {
                let _ = reply.send(found.get(&key).cloned().map(&record).transpose());
            }
        }
        Err(e) => {
            let message = e.to_string();
            for (_, reply) in lookups {
                let _ = reply.send(Err(StoreError::Unavailable(message.clone())));
            }
        }
    }
}
