//! The queue behind the store's batching tasks (the registration writer, the devices' enrollment reader): callers
//! queue their work, and the task takes everything queued while its previous batch ran as its next batch.

use std::time::Duration;

use sea_orm::sqlx::pool::CloseEvent;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long at most work that no caller is waiting on may wait for others to join its batch, while the task is busy and
/// work keeps arriving ([`QUIET`]; work whose caller waits for it does not wait at all: [`NO_LINGER`]). A batch costs
/// the database about the same however little it carries (a commit: SQLite writes each page the batch touched to its
/// WAL, PostgreSQL flushes its WAL; a query: a round trip and a wake-up of PostgreSQL's server process), so fewer,
/// larger batches cost less per item. A SAS device's register (its enrollment's lookup, then its attempt's write) is
/// answered `assigning`, and the device polls for the result after the `Retry-After` the answer gives (seconds), so a
/// few milliseconds more cost it nothing. On SQLite, during a storm of 40,000 devices, the writer waiting 4 ms instead
/// of 1 cut the CPU of the database's thread and of the main runtime by about 15 µs per device, and the reader waiting
/// as long cut the main runtime's by about 5 more (`BENCHMARKS.md`, session 17). An EST certificate, whose caller waits
/// for it, does not wait: with 64 EST calls in flight, waiting 1 ms for more left CPU idle while the calls waited, and
/// without it EST issued 3% more certificates per second on both databases in five alternating rounds, at 17 to 35 µs
/// more machine time per certificate (`BENCHMARKS.md`, session 25). Up to 8 ms rather than 4, PostgreSQL's CPU per
/// registration fell by about a fifth in larger batches, but a fixed 8 ms left the CPUs idle while 64 devices all
/// waited on batches; ending the wait after a [`QUIET`] spell kept them busy (`BENCHMARKS.md`, session 26).
pub(crate) const PATIENT_LINGER: Duration = Duration::from_millis(8);

/// A lingering batch stops waiting once this long passes with no work arriving: its callers' peers are then likely
/// all waiting on batches too, and waiting longer would leave the CPUs idle.
const QUIET: Duration = Duration::from_millis(1);

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
/// At 16, a storm's registration batches stopped at about 18 attempts, each paying a commit (on PostgreSQL a WAL
/// flush, a tenth of its CPU in the registration phase) and the start of a large statement; at 32, in three
/// alternating pairs of runs of 20,000 devices, PostgreSQL spent 56 to 60 µs per registration instead of 66 to 68,
/// and on SQLite the service 10 µs less, for about 1% more idle CPU while devices wait (`BENCHMARKS.md`, session 28).
const LINGER_BELOW: usize = 32;

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

    /// Waits for the next batch, into `batch`: what was queued meanwhile, and, while the task is busy, the batch holds
    /// fewer than [`LINGER_BELOW`] items, none of them has a caller waiting ([`NO_LINGER`]), the shortest linger of its
    /// items has not passed and the last [`QUIET`] spell brought more, what arrives meanwhile. False once the queue is
    /// closed (the last sender is gone) or the pool the task works on is (`closed`, see
    /// [`crate::held::HeldConnection::closed`]).
    pub(crate) async fn next(&mut self, batch: &mut Vec<T>, closed: &mut std::pin::Pin<&mut CloseEvent>) -> bool {
        let received = tokio::select! {
            biased;
            () = closed.as_mut() => 0,
            received = self.queue.recv_many(batch, self.max) => received,
        };
        if received == 0 {
            return false;
        }
        if self.last_done.is_some_and(|at| at.elapsed() < BUSY_WITHIN) {
            let started = Instant::now();
            while batch.len() < self.max.min(LINGER_BELOW)
                && let Some(linger) = batch.iter().map(self.linger).min().filter(|linger| *linger != NO_LINGER)
                && let Some(left) = linger.checked_sub(started.elapsed()).filter(|left| !left.is_zero())
            {
                tokio::time::sleep(left.min(QUIET)).await;
                let before = batch.len();
                while batch.len() < self.max {
                    let Ok(item) = self.queue.try_recv() else { break };
                    batch.push(item);
                }
                if batch.len() == before {
                    break;
                }
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

    /// A queue of numbers on a paused clock, whose task is busy (it has just finished a batch).
    async fn busy(linger: fn(&usize) -> Duration) -> (mpsc::Sender<usize>, Batches<usize>) {
        let (queue, receiver) = mpsc::channel(256);
        let mut batches = Batches::new(receiver, 64, linger);
        queue.send(0).await.unwrap();
        let pool = sea_orm::sqlx::SqlitePool::connect_lazy("sqlite::memory:").unwrap();
        let closed = pool.close_event();
        tokio::pin!(closed);
        let mut batch = Vec::new();
        let started = Instant::now();
        assert!(batches.next(&mut batch, &mut closed).await);
        assert_eq!((batch, started.elapsed()), (vec![0], Duration::ZERO), "an idle task's batch runs at once");
        batches.done();
        (queue, batches)
    }

    /// The next batch of `batches`, with `first` queued at the start and then, every [`QUIET`] while the task
    /// waits, the next of `more` (until there are no more); returns the batch and how long it took.
    async fn next_batch(
        queue: &mpsc::Sender<usize>,
        batches: &mut Batches<usize>,
        first: &[usize],
        mut more: impl Iterator<Item = usize>,
    ) -> (Vec<usize>, Duration) {
        let pool = sea_orm::sqlx::SqlitePool::connect_lazy("sqlite::memory:").unwrap();
        let closed = pool.close_event();
        tokio::pin!(closed);
        for item in first {
            queue.send(*item).await.unwrap();
        }
        let started = Instant::now();
        let mut batch = Vec::new();
        {
            let next = batches.next(&mut batch, &mut closed);
            tokio::pin!(next);
            loop {
                // One poll: the batch, or none yet.
                let polled = tokio::select! {
                    biased;
                    more = next.as_mut() => Some(more),
                    () = std::future::ready(()) => None,
                };
                if let Some(more) = polled {
                    assert!(more, "the queue is open");
                    break;
                }
                if let Some(item) = more.next() {
                    queue.send(item).await.unwrap();
                }
                tokio::time::advance(QUIET).await;
            }
        }
        batches.done();
        (batch, started.elapsed())
    }

    /// A busy task waits for more work while its batch is small and work keeps arriving: for [`PATIENT_LINGER`] at
    /// most, and only [`QUIET`] once nothing more arrives; a batch of [`LINGER_BELOW`] items runs at once.
    #[tokio::test(start_paused = true)]
    async fn a_busy_task_lingers_while_work_keeps_arriving() {
        let (queue, mut batches) = busy(|_| PATIENT_LINGER).await;

        let (batch, took) = next_batch(&queue, &mut batches, &[1], std::iter::empty()).await;
        assert_eq!((batch, took), (vec![1], QUIET), "nothing more arrives: it waits a quiet spell only");

        let (batch, took) = next_batch(&queue, &mut batches, &[1], [2, 3].into_iter()).await;
        assert_eq!((batch, took), (vec![1, 2, 3], 3 * QUIET), "what arrives joins, until a quiet spell");

        let (batch, took) = next_batch(&queue, &mut batches, &[1], 2..).await;
        let arrived: Vec<usize> = (1..=1 + (PATIENT_LINGER.as_millis() / QUIET.as_millis()) as usize).collect();
        assert_eq!((batch, took), (arrived, PATIENT_LINGER), "work keeps arriving: it waits out the linger");

        let full: Vec<usize> = (0..LINGER_BELOW).collect();
        let (batch, took) = next_batch(&queue, &mut batches, &full, 100..).await;
        assert_eq!((batch, took), (full.clone(), Duration::ZERO), "busy but large: at once");

        let (batch, took) = next_batch(&queue, &mut batches, &full[..LINGER_BELOW - 2], 100..).await;
        assert_eq!((batch.len(), took), (LINGER_BELOW, 2 * QUIET), "it stops waiting once it is large");
    }

    /// Each item says how long it may wait for others: a busy task lingers for the most impatient item of its
    /// batch, and not at all once it holds an item whose caller waits for it ([`NO_LINGER`]).
    #[tokio::test(start_paused = true)]
    async fn a_batch_lingers_as_long_as_its_most_impatient_item_allows() {
        // Items from 100 up are patient, from 200 up less so, below 100 their callers wait.
        let (queue, mut batches) = busy(|item: &usize| match item {
            200.. => PATIENT_LINGER / 4,
            100.. => PATIENT_LINGER,
            _ => NO_LINGER,
        })
        .await;

        let (_, took) = next_batch(&queue, &mut batches, &[100], 101..).await;
        assert_eq!(took, PATIENT_LINGER, "patient: the long wait");

        let (_, took) = next_batch(&queue, &mut batches, &[100, 200], 101..).await;
        assert_eq!(took, PATIENT_LINGER / 4, "the shorter");

        let (batch, took) = next_batch(&queue, &mut batches, &[100, 1], 101..).await;
        assert_eq!((batch, took), (vec![100, 1], Duration::ZERO), "a caller waits");

        let (batch, took) = next_batch(&queue, &mut batches, &[100], [101, 1, 102].into_iter()).await;
        assert_eq!((batch, took), (vec![100, 101, 1], 2 * QUIET), "a caller that waits arrives: no more waiting");
    }
}
