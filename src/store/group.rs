//! Group commit: the polls' transactions and the deliveries' outcomes, written by one task,
//! several per SQLite transaction.
//!
//! A poll that found something hands its [`PollCommit`] to the queue and waits for the answer;
//! a finished delivery hands its [`Outcome`] the same way. The writer task takes every job
//! waiting at that moment (up to [`MAX_BATCH`]) and writes them in one transaction for the
//! polls ([`Store::commit_polls`]) and one for the outcomes ([`Store::record_outcomes`]), each
//! job its own savepoint. Polls that finish together — the coalesced bunches of the scheduler —
//! and the webhooks they fire then share one lock and one write of the pages they touch,
//! instead of one of each per job. Nothing waits for a batch to fill: a lone job is written as
//! soon as the tasks that were ready with it have run.
//!
//! The writer is a task on the daemon's own runtime, and it writes inline: SQLite answers a
//! transaction of a bunch in well under a millisecond here (WAL, `synchronous = NORMAL`: no
//! fsync at commit). Measured at workload A (README, "the cost of a poll"), a writer thread of
//! its own cost more than the writes: every job woke it (a futex wake and two context
//! switches on a 2-core VM), and every answer woke the runtime back. On one thread a job and
//! its answer are a push and a local wake-up.
//!
//! The guarantees are unchanged: a poll learns its commit succeeded only after the
//! transaction holding it is committed, and only then are its webhooks released; a delivery's
//! slot is freed only after its outcome is committed.
//!
//! A batch gathers for a turn of the runtime: after the first job the writer yields, so the
//! other tasks that are ready — the other answers of the same bunch, read on the same tick of
//! [`crate::gateway`]'s grid — run and queue their jobs first; it yields again while jobs keep
//! coming, at most [`MAX_YIELDS`] times. A read (the dispatcher's outbox queries,
//! [`CommitQueue::read`]) waits for nobody: it is answered with the writes gathered so far.
//!
//! Owns: the writer task and the batching. Must not: decide what a commit holds, or await
//! anything while it writes (the store's connection is held only between two awaits).

use super::{Outcome, PollCommit, Store};
use tokio::sync::mpsc;

/// The most commits written in one transaction.
pub const MAX_BATCH: usize = 64;
/// How many turns of the runtime a batch waits for more jobs, at most.
pub const MAX_YIELDS: usize = 8;

/// A read of the store, run by the writer between batches.
type Read = Box<dyn FnOnce(&Store) + Send>;

/// What the writer is asked to write, and where the answer goes.
enum Job {
    Poll {
        commit: PollCommit,
        done: tokio::sync::oneshot::Sender<(PollCommit, Result<usize, String>)>,
    },
    Outcome {
        outcome: Outcome,
        done: tokio::sync::oneshot::Sender<Result<Option<usize>, String>>,
    },
    Read(Read),
}

/// The queue to the writer task; the task ends when every queue is dropped.
#[derive(Clone)]
pub struct CommitQueue {
    jobs: mpsc::UnboundedSender<Job>,
}

impl CommitQueue {
    /// Starts the writer task on `store`, on the runtime this is called from.
    pub fn start(store: Store) -> std::io::Result<CommitQueue> {
        let (jobs, queue) = mpsc::unbounded_channel::<Job>();
        if store.is_server() {
            // A database server answers over the network: its round trips must not hold the
            // daemon's one runtime thread, so its writer runs on a thread of its own.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name("cartat-writer".into())
                .spawn(move || runtime.block_on(write_batches(store, queue)))?;
        } else {
            let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
            runtime.spawn(write_batches(store, queue));
        }
        Ok(CommitQueue { jobs })
    }

    /// Commits `commit` (with whatever else is waiting); gives it back with the number of
    /// deliveries queued, or the store's error.
    pub async fn commit(&self, commit: PollCommit) -> (PollCommit, Result<usize, String>) {
        let (done, answer) = tokio::sync::oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(Job::Poll { commit, done }) {
            let Job::Poll { commit, .. } = job else {
                unreachable!("the job sent was a poll")
            };
            return (commit, Err("the store's writer has stopped".into()));
        }
        match answer.await {
            Ok(outcome) => outcome,
            // The writer panicked with this commit: it was not committed.
            Err(_) => (
                PollCommit::default(),
                Err("the store's writer stopped during the commit".into()),
            ),
        }
    }

    /// Records a delivery attempt's outcome (with whatever else is waiting); for a 410, how
    /// many other rows of its url were parked.
    pub async fn record(&self, outcome: Outcome) -> Result<Option<usize>, String> {
        let (done, answer) = tokio::sync::oneshot::channel();
        if self.jobs.send(Job::Outcome { outcome, done }).is_err() {
            return Err("the store's writer has stopped".into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the store's writer stopped while recording".into()))
    }

    /// Runs `read` in the writer (after the writes waiting before it) and returns its result;
    /// `None` if the writer has stopped or `read` panicked.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Option<T> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: Read = Box::new(move |store| {
            let _ = done.send(read(store));
        });
        self.jobs.send(Job::Read(job)).ok()?;
        answer.await.ok()
    }
}

/// Takes what is queued into `batch` (up to the cap); false when the queue is closed.
fn take_queued(queue: &mut mpsc::UnboundedReceiver<Job>, batch: &mut Vec<Job>) -> bool {
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(job) => batch.push(job),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    true
}

/// The jobs waiting now, and those the tasks ready at the same time queue: the writer yields
/// while new jobs come, at most `max_yields` times.
async fn gather(
    queue: &mut mpsc::UnboundedReceiver<Job>,
    first: Job,
    max_yields: usize,
) -> Vec<Job> {
    let mut batch = vec![first];
    let mut yields = 0;
    loop {
        let before = batch.len();
        let open = take_queued(queue, &mut batch);
        let full = batch.len() >= MAX_BATCH;
        // A read waits for nobody: it is answered with the writes gathered so far.
        let has_read = batch.iter().any(|j| matches!(j, Job::Read(_)));
        let quiet = yields > 0 && batch.len() == before;
        if !open || full || has_read || quiet || yields >= max_yields {
            return batch;
        }
        tokio::task::yield_now().await;
        yields += 1;
    }
}

async fn write_batches(store: Store, mut queue: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut polls = Vec::new();
        let mut outcomes = Vec::new();
        let mut reads = Vec::new();
        for job in gather(&mut queue, first, MAX_YIELDS).await {
            match job {
                Job::Poll { commit, done } => polls.push((commit, done)),
                Job::Outcome { outcome, done } => outcomes.push((outcome, done)),
                Job::Read(read) => reads.push(read),
            }
        }
        if !polls.is_empty() {
            let commits: Vec<&PollCommit> = polls.iter().map(|(c, _)| c).collect();
            let results = store.commit_polls(&commits);
            for ((commit, done), result) in polls.into_iter().zip(results) {
                let _ = done.send((commit, result));
            }
        }
        if !outcomes.is_empty() {
            let records: Vec<&Outcome> = outcomes.iter().map(|(o, _)| o).collect();
            let results = store.record_outcomes(&records);
            for ((_, done), result) in outcomes.into_iter().zip(results) {
                let _ = done.send(result);
            }
        }
        for read in reads {
            // A read that panics drops its answer (the caller sees None); the writer goes on.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&store)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll() -> Job {
        let (done, _) = tokio::sync::oneshot::channel();
        Job::Poll {
            commit: PollCommit::default(),
            done,
        }
    }

    fn read() -> Job {
        Job::Read(Box::new(|_| {}))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn what_is_queued_goes_in_one_batch_up_to_the_cap() {
        runtime().block_on(async {
            let (jobs, mut queue) = mpsc::unbounded_channel();
            for _ in 0..MAX_BATCH + 5 {
                let _ = jobs.send(poll());
            }
            let first = queue.recv().await.unwrap();
            assert_eq!(gather(&mut queue, first, 0).await.len(), MAX_BATCH);
            let first = queue.recv().await.unwrap();
            assert_eq!(gather(&mut queue, first, 0).await.len(), 5);
        });
    }

    #[test]
    fn the_jobs_of_tasks_ready_at_the_same_time_join_the_batch() {
        runtime().block_on(async {
            let (jobs, mut queue) = mpsc::unbounded_channel();
            let _ = jobs.send(poll());
            // One task queues at once, one a turn later: both are ready with the first job.
            let now = jobs.clone();
            tokio::spawn(async move {
                let _ = now.send(poll());
            });
            let later = jobs.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                let _ = later.send(poll());
            });
            let first = queue.recv().await.unwrap();
            assert_eq!(gather(&mut queue, first, MAX_YIELDS).await.len(), 3);
            // Without yielding, the batch is what was queued.
            let _ = jobs.send(poll());
            let other = jobs.clone();
            tokio::spawn(async move {
                let _ = other.send(poll());
            });
            let first = queue.recv().await.unwrap();
            assert_eq!(gather(&mut queue, first, 0).await.len(), 1);
        });
    }

    #[test]
    fn gathering_ends_after_the_last_yield_while_jobs_keep_coming() {
        runtime().block_on(async {
            let (jobs, mut queue) = mpsc::unbounded_channel();
            let _ = jobs.send(poll());
            tokio::spawn(async move {
                for _ in 0..1000 {
                    if jobs.send(poll()).is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            });
            let first = queue.recv().await.unwrap();
            let batch = gather(&mut queue, first, 3).await;
            assert!(
                (2..=5).contains(&batch.len()),
                "{} jobs: the yields did not end the batch",
                batch.len()
            );
        });
    }

    #[test]
    fn a_read_is_answered_without_waiting_for_more_jobs() {
        runtime().block_on(async {
            let (jobs, mut queue) = mpsc::unbounded_channel();
            let _ = jobs.send(poll());
            let _ = jobs.send(read());
            let more = jobs.clone();
            tokio::spawn(async move {
                let _ = more.send(poll());
            });
            let first = queue.recv().await.unwrap();
            assert_eq!(gather(&mut queue, first, MAX_YIELDS).await.len(), 2);
        });
    }

    #[test]
    fn the_writer_runs_on_the_runtime_and_a_panicking_read_does_not_stop_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        assert!(
            CommitQueue::start(store.clone()).is_err(),
            "outside a runtime there is nowhere to run the writer"
        );
        runtime().block_on(async {
            let queue = CommitQueue::start(store).unwrap();
            let panicked: Option<()> = queue.read(|_| panic!("a read that panics")).await;
            assert_eq!(panicked, None);
            let here = std::thread::current().id();
            let there = queue.read(|_| std::thread::current().id()).await;
            assert_eq!(there, Some(here));
            let due = queue.read(|s| s.due(i64::MAX, 10).map(|r| r.len())).await;
            assert!(matches!(due, Some(Ok(0))), "{due:?}");
            let (_, committed) = queue.commit(PollCommit::default()).await;
            assert!(committed.is_ok(), "{committed:?}");
        });
    }
}
