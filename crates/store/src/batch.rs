//! The queue behind the store's batching tasks (the registration writer, the devices' enrollment reader): callers
//! queue their work, and the task takes everything queued while its previous batch ran as its next batch.

use std::time::{Duration, Instant};

use sea_orm::sqlx::pool::CloseEvent;
use tokio::sync::mpsc;

/// How long work that no caller is waiting on may wait for others to join its batch, while the task is busy (work
/// whose caller waits for it does not wait at all: [`NO_LINGER`]). A batch costs the database about the same
/// however little it carries (a commit: SQLite writes each page the batch touched to its WAL, PostgreSQL flushes its
/// WAL; a query: a round trip and a wake-up of PostgreSQL's server process), so fewer, larger batches cost less per
/// item. A SAS device's register (its enrollment's lookup, then its attempt's write) is answered `assigning`, and
/// the device polls for the result after the `Retry-After` the answer gives (seconds), so a few milliseconds more
/// cost it nothing. On SQLite, during a storm of 40,000 devices, the writer waiting 4 ms instead of 1 cut the CPU of
/// the database's thread and of the main runtime by about 15 µs per device, and the reader waiting as long cut the
/// main runtime's by about 5 more (`BENCHMARKS.md`, session 17). An EST certificate, whose caller waits for it, does
/// not wait: with 64 EST calls in flight, waiting 1 ms for more left CPU idle while the calls waited, and without it
/// EST issued 3% more certificates per second on both databases in five alternating rounds, at 17 to 35 µs more
/// machine time per certificate (`BENCHMARKS.md`, session 25).
pub(crate) const PATIENT_LINGER: Duration = Duration::from_millis(4);

/// The linger of work whose caller waits for it (an EST certificate, a certificate lookup): a busy task does not wait
/// for more work to join a batch that holds such an item.
pub(crate) const NO_LINGER: Duration = Duration::ZERO;

/// A task counts as busy when its last batch ended this recently; work arriving at an idle task runs at once.
const BUSY_WITHIN: Duration = Duration::from_millis(20);

/// A batch of this many items runs without lingering: the batch's fixed cost is already spread thin, and waiting
/// would only delay its callers. Under EST's renewals with 64 requests in flight (`zerotouch-loadgen
/// bench-issuance`), the writer's batches held some 20 to 50 certificates and each EST call waited out the linger
/// with a quarter of the CPUs idle; without lingering for such batches, EST issued 16% and 21% more certificates per
/// second on PostgreSQL in alternating runs (1% and 14% on SQLite). EST certificates have since stopped lingering
/// at all ([`PATIENT_LINGER`]); registrations, whose batches are smaller at the same load, linger below this size.
const LINGER_BELOW: usize = 16;

/// A batching task's queue.
#[derive(Debug)]
pub(crate) struct Batches<T> {
    queue: mpsc::Receiver<T>,
    max: usize,
    linger: fn(&T) -> Duration,
    last_done: Option<Instant>,
}

impl<T> Batches<T> {
    /// Batches of at most `max` items from `queue`; `linger` is how long an item may wait for others to join its
    /// batch: [`PATIENT_LINGER`] for work no caller waits on, [`NO_LINGER`] for work whose caller waits.
    pub(crate) fn new(queue: mpsc::Receiver<T>, max: usize, linger: fn(&T) -> Duration) -> Self {
        Self { queue, max, linger, last_done: None }
    }

    /// Waits for the next batch, into `batch`: what was queued meanwhile, and, if the task is busy, that is fewer
    /// than [`LINGER_BELOW`] items and none of them has a caller waiting ([`NO_LINGER`]), what arrives within the
    /// shortest linger of those items more. False once the queue is closed (the last sender is gone) or the pool the
    /// task works on is (`closed`, see [`crate::held::HeldConnection::closed`]).
    pub(crate) async fn next(&mut self, batch: &mut Vec<T>, closed: &mut std::pin::Pin<&mut CloseEvent>) -> bool {
        let received = tokio::select! {
            biased;
            () = closed.as_mut() => 0,
            received = self.queue.recv_many(batch, self.max) => received,
        };
        if received == 0 {
            return false;
        }
        if batch.len() < self.max.min(LINGER_BELOW)
            && self.last_done.is_some_and(|at| at.elapsed() < BUSY_WITHIN)
            && let Some(linger) = batch.iter().map(self.linger).min().filter(|linger| *linger != NO_LINGER)
        {
            tokio::time::sleep(linger).await;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A busy task waits for more work while its batch is small, and takes what arrives meanwhile; a batch of
    /// [`LINGER_BELOW`] items runs at once; an idle task never waits.
    #[tokio::test(start_paused = true)]
    async fn a_busy_task_lingers_only_while_its_batch_is_small() {
        let pool = sea_orm::sqlx::SqlitePool::connect_lazy("sqlite::memory:").unwrap();
        let closed = pool.close_event();
        tokio::pin!(closed);
        let (queue, receiver) = mpsc::channel(64);
        let mut batches = Batches::new(receiver, 32, |_| PATIENT_LINGER);
        let mut batch = Vec::new();

        queue.send(0).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(batches.next(&mut batch, &mut closed).await);
        assert_eq!((batch.len(), started.elapsed()), (1, Duration::ZERO), "idle: at once");
        batches.done();

        batch.clear();
        queue.send(1).await.unwrap();
        let late = queue.clone();
        // Runs once the task waits: during its linger.
        tokio::spawn(async move { late.send(2).await.unwrap() });
        let started = tokio::time::Instant::now();
        assert!(batches.next(&mut batch, &mut closed).await);
        assert_eq!(batch, [1, 2], "busy and small: what arrives within the linger joins");
        assert!(started.elapsed() >= PATIENT_LINGER);
        batches.done();

        batch.clear();
        for item in 0..LINGER_BELOW {
            queue.send(item).await.unwrap();
        }
        let started = tokio::time::Instant::now();
        assert!(batches.next(&mut batch, &mut closed).await);
        assert_eq!((batch.len(), started.elapsed()), (LINGER_BELOW, Duration::ZERO), "busy but large: at once");
    }

    /// Each item says how long it may wait for others: a busy task lingers for the most impatient item of its
    /// batch, and not at all when that item's caller waits for it ([`NO_LINGER`]).
    #[tokio::test(start_paused = true)]
    async fn a_batch_lingers_as_long_as_its_most_impatient_item_allows() {
        let pool = sea_orm::sqlx::SqlitePool::connect_lazy("sqlite::memory:").unwrap();
        let closed = pool.close_event();
        tokio::pin!(closed);
        let (queue, receiver) = mpsc::channel(64);
        // Items from 100 up are patient, from 200 up less so, below 100 their callers wait.
        let linger = |item: &usize| match item {
            200.. => PATIENT_LINGER / 4,
            100.. => PATIENT_LINGER,
            _ => NO_LINGER,
        };
        let mut batches = Batches::new(receiver, 32, linger);
        let mut batch = Vec::new();
        queue.send(0).await.unwrap();
        assert!(batches.next(&mut batch, &mut closed).await);
        batches.done();

        batch.clear();
        queue.send(100).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(batches.next(&mut batch, &mut closed).await);
        assert_eq!((batch.as_slice(), started.elapsed()), ([100].as_slice(), PATIENT_LINGER), "patient: the long wait");
        batches.done();

        batch.clear();
        queue.send(101).await.unwrap();
        queue.send(201).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(batches.next(&mut batch, &mut closed).await);
        assert_eq!((batch.as_slice(), started.elapsed()), ([101, 201].as_slice(), PATIENT_LINGER / 4), "the shorter");
        batches.done();

        batch.clear();
        queue.send(102).await.unwrap();
        queue.send(1).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(batches.next(&mut batch, &mut closed).await);
        assert_eq!((batch.as_slice(), started.elapsed()), ([102, 1].as_slice(), Duration::ZERO), "a caller waits");
    }
}
