//! The queue behind the store's batching tasks (the registration writer, the devices' enrollment reader): callers
//! queue their work, and the task takes everything queued while its previous batch ran as its next batch.

use std::time::{Duration, Instant};

use sea_orm::sqlx::pool::CloseEvent;
use tokio::sync::mpsc;

/// How long a busy task waits for more work before it runs a batch. A batch costs the database about the same
/// however little it carries (a commit: SQLite writes each page the batch touched to its WAL, PostgreSQL flushes
/// its WAL; a query: a round trip and a wake-up of PostgreSQL's server process). Under load, waiting a millisecond
/// cut the database's CPU per device by a fifth to a third for the writer, and by a fifth for the reader.
const LINGER: Duration = Duration::from_millis(1);

/// A task counts as busy when its last batch ended this recently; work arriving at an idle task runs at once.
const BUSY_WITHIN: Duration = Duration::from_millis(20);

/// A batching task's queue.
#[derive(Debug)]
pub(crate) struct Batches<T> {
    queue: mpsc::Receiver<T>,
    max: usize,
    last_done: Option<Instant>,
}

impl<T> Batches<T> {
    /// Batches of at most `max` items from `queue`.
    pub(crate) fn new(queue: mpsc::Receiver<T>, max: usize) -> Self {
        Self { queue, max, last_done: None }
    }

    /// Waits for the next batch, into `batch`: what was queued meanwhile, and, if the task is busy, what arrives
    /// within [`LINGER`] more. False once the queue is closed (the last sender is gone) or the pool the task works
    /// on is (`closed`, see [`crate::held::HeldConnection::closed`]).
    pub(crate) async fn next(&mut self, batch: &mut Vec<T>, closed: &mut std::pin::Pin<&mut CloseEvent>) -> bool {
        let received = tokio::select! {
            biased;
            () = closed.as_mut() => 0,
            received = self.queue.recv_many(batch, self.max) => received,
        };
        if received == 0 {
            return false;
        }
        if batch.len() < self.max && self.last_done.is_some_and(|at| at.elapsed() < BUSY_WITHIN) {
            tokio::time::sleep(LINGER).await;
            while batch.len() < self.max {
                let Ok(item) = self.queue.try_recv() else { break };
                batch.push(item);
            }
        }
        true
    }

    /// Notes that the task finished a batch (it is busy for [`BUSY_WITHIN`]).
    pub(crate) fn done(&mut self) {
        self.last_done = Some(Instant::now());
    }
}
