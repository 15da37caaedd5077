//! The batching reader of individual enrollments: every authenticating device reads its own, so lookups made
//! meanwhile go together in one query on a kept connection.

use std::collections::HashMap;

use sea_orm::FromQueryResult;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::EnrollmentRecord;
use super::table::IndividualTable;
use crate::StoreError;
use crate::batch::Batches;
use crate::held::{HeldConnection, Sql};
use crate::secrets::Vault;

/// Most keys one [`IndividualReader`] query carries.
const MAX_LOOKUPS: usize = 256;

/// Individual enrollments by key: the keys arrive as one JSON array of strings.
const INDIVIDUALS_BY_KEY: Sql = Sql {
    postgres: "SELECT * FROM individual_enrollments WHERE key = ANY(ARRAY(SELECT jsonb_array_elements_text($1)))",
    sqlite: "SELECT * FROM individual_enrollments WHERE key IN (SELECT value FROM json_each(?1))",
};

/// A device's lookup of its individual enrollment, waiting for the reader.
struct Lookup {
    key: String,
    reply: oneshot::Sender<Result<Option<EnrollmentRecord>, StoreError>>,
}

/// Reads the individual enrollments of authenticating devices: every device reads one, the busiest read of the
/// service. The keys asked for while a query is in flight (and, while busy, within a millisecond more: see
/// [`Batches`]) go together in the next query, on a connection the reader holds ([`HeldConnection`]): one round trip
/// for a batch of devices instead of two for each.
#[derive(Debug, Clone)]
pub(crate) struct IndividualReader {
    queue: mpsc::Sender<Lookup>,
}

impl IndividualReader {
    /// Starts the reader task on the current runtime, reading from `pool` (keeping a connection of it if `keep`,
    /// see [`HeldConnection::new`]), opening the keys with `vault`; it ends when the last store holding it is dropped or the pool is closed.
    pub(crate) fn start(pool: sea_orm::DatabaseConnection, keep: bool, vault: Vault) -> Self {
        let (queue, receiver) = mpsc::channel::<Lookup>(4 * MAX_LOOKUPS);
        tokio::spawn(async move {
            let mut connection = HeldConnection::new(pool, keep);
            let closed = connection.closed();
            tokio::pin!(closed);
            let mut batches = Batches::new(receiver, MAX_LOOKUPS);
            let mut batch = Vec::with_capacity(MAX_LOOKUPS);
            while batches.next(&mut batch, &mut closed).await {
                let keys: Value = batch.iter().map(|lookup| Value::from(lookup.key.as_str())).collect();
                let found = connection.fetch_all(INDIVIDUALS_BY_KEY, &keys).await.and_then(|rows| {
                    rows.iter()
                        .map(|row| {
                            let model = crate::entity::individual_enrollment::Model::from_query_result(row, "")?;
                            Ok((model.key.clone(), model))
                        })
                        .collect::<Result<HashMap<_, _>, StoreError>>()
                });
                batches.done();
                match found {
                    Ok(found) => {
                        for lookup in batch.drain(..) {
                            let record = found
                                .get(&lookup.key)
                                .cloned()
                                .map(|m| IndividualTable::to_record(&vault, m))
                                .transpose();
                            let _ = lookup.reply.send(record);
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        for lookup in batch.drain(..) {
                            let _ = lookup.reply.send(Err(StoreError::Unavailable(message.clone())));
                        }
                    }
                }
            }
        });
        Self { queue }
    }
}

impl IndividualReader {
    /// The individual enrollment `key`, if any, read together with the other lookups queued meanwhile.
    pub(super) async fn read(&self, key: &str) -> Result<Option<EnrollmentRecord>, StoreError> {
        let stopped = || StoreError::Unavailable("the enrollment reader has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.queue.send(Lookup { key: key.to_owned(), reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
