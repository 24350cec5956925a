//! Group commit: the polls' transactions and the deliveries' outcomes, written by one thread,
//! several per SQLite transaction.
//!
//! A poll that found something hands its [`PollCommit`] to the queue and waits for the answer;
//! a finished delivery hands its [`Outcome`] the same way. The writer thread takes every job
//! waiting at that moment (up to [`MAX_BATCH`]) and writes them in one transaction for the
//! polls ([`Store::commit_polls`]) and one for the outcomes ([`Store::record_outcomes`]), each
//! job its own savepoint. Polls that finish together — the coalesced bunches of the scheduler —
//! and the webhooks they fire then share one lock, one write of the pages they touch, and one
//! hand-off to and from the writer, instead of one of each per job (a delivery's outcome went
//! through the runtime's blocking pool before: a thread woken per webhook). Nothing waits for
//! a batch to fill: a lone job is written at once.
//!
//! The guarantees are unchanged: a poll learns its commit succeeded only after the
//! transaction holding it is committed, and only then are its webhooks released; a delivery's
//! slot is freed only after its outcome is committed.
//!
//! A batch lingers: after a job, the writer waits up to [`LINGER`] for the next one, for at most
//! [`LINGER_MAX`] in all. The answers of a bunch of polls come back over some milliseconds,
//! and a transaction per answer wrote the same pages of the chat table once per answer
//! (profiled at workload A: 730 page writes a second); lingering puts a bunch in a few
//! transactions, for a few milliseconds of latency on a webhook that waits a poll interval.
//!
//! The dispatcher's outbox queries run here too ([`CommitQueue::read`]): the store has one
//! connection, and a query through the runtime's blocking pool woke a thread of its own each
//! time (about 200 a second at workload A) only to wait for this one's lock.
//!
//! Owns: the writer thread and the batching. Must not: decide what a commit holds.

use super::{Outcome, PollCommit, Store};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The most commits written in one transaction.
pub const MAX_BATCH: usize = 64;
/// How long the writer waits for the next job before it writes what it has.
pub const LINGER: Duration = Duration::from_millis(2);
/// The longest a job waits for others to join its batch.
pub const LINGER_MAX: Duration = Duration::from_millis(10);

/// A read of the store, run on the writer thread between batches.
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

/// The queue to the writer thread; the thread ends when the queue is dropped.
#[derive(Clone)]
pub struct CommitQueue {
    jobs: mpsc::Sender<Job>,
}

impl CommitQueue {
    /// Starts the writer thread on `store`.
    pub fn start(store: Store) -> std::io::Result<CommitQueue> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("cartat-commit".into())
            .spawn(move || write_batches(&store, &queue))?;
        Ok(CommitQueue { jobs })
    }

    /// Commits `commit` (with whatever else is waiting); gives it back with the number of
    /// deliveries queued, or the store's error.
    pub async fn commit(&self, commit: PollCommit) -> (PollCommit, Result<usize, String>) {
        let (done, answer) = tokio::sync::oneshot::channel();
        if let Err(mpsc::SendError(job)) = self.jobs.send(Job::Poll { commit, done }) {
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

    /// Runs `read` on the writer thread (after the writes waiting before it) and returns its
    /// result; `None` if the writer has stopped or `read` panicked.
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

/// The jobs waiting now, and those that come while the batch lingers: each wait for the next
/// job lasts at most `linger`, all of them together at most `linger_max`.
fn gather(
    queue: &mpsc::Receiver<Job>,
    first: Job,
    linger: Duration,
    linger_max: Duration,
) -> Vec<Job> {
    let mut batch = vec![first];
    let deadline = Instant::now() + linger_max;
    while batch.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(job) => {
                batch.push(job);
                continue;
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let wait = linger.min(deadline.saturating_duration_since(Instant::now()));
        // A read waits for nobody: it is answered with the writes gathered so far.
        if wait.is_zero() || batch.iter().any(|j| matches!(j, Job::Read(_))) {
            break;
        }
        match queue.recv_timeout(wait) {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    batch
}

fn write_batches(store: &Store, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut polls = Vec::new();
        let mut outcomes = Vec::new();
        let mut reads = Vec::new();
        for job in gather(queue, first, LINGER, LINGER_MAX) {
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
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(store)));
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

    /// Sends `n` polls, one every `every`, from another thread.
    fn feed(jobs: mpsc::Sender<Job>, n: usize, every: Duration) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for _ in 0..n {
                std::thread::sleep(every);
                if jobs.send(poll()).is_err() {
                    return;
                }
            }
        })
    }

    #[test]
    fn what_is_queued_goes_in_one_batch_up_to_the_cap() {
        let (jobs, queue) = mpsc::channel();
        for _ in 0..MAX_BATCH + 5 {
            jobs.send(poll()).unwrap();
        }
        let first = queue.recv().unwrap();
        let batch = gather(&queue, first, Duration::ZERO, Duration::ZERO);
        assert_eq!(batch.len(), MAX_BATCH);
        let first = queue.recv().unwrap();
        assert_eq!(
            gather(&queue, first, Duration::ZERO, Duration::ZERO).len(),
            5
        );
    }

    #[test]
    fn a_job_that_comes_while_the_batch_lingers_joins_it() {
        let (jobs, queue) = mpsc::channel();
        jobs.send(poll()).unwrap();
        let feeder = feed(jobs, 2, Duration::from_millis(50));
        let first = queue.recv().unwrap();
        // Generous waits: the feeder's 50 ms sleeps may run late on a loaded machine.
        let batch = gather(
            &queue,
            first,
            Duration::from_secs(2),
            Duration::from_secs(10),
        );
        assert_eq!(batch.len(), 3);
        feeder.join().unwrap();
    }

    #[test]
    fn lingering_ends_at_the_cap_while_jobs_keep_coming() {
        let (jobs, queue) = mpsc::channel();
        jobs.send(poll()).unwrap();
        let feeder = feed(jobs, 40, Duration::from_millis(50));
        let first = queue.recv().unwrap();
        let start = Instant::now();
        let batch = gather(
            &queue,
            first,
            Duration::from_secs(1),
            Duration::from_millis(300),
        );
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert!(
            batch.len() < 20,
            "{} jobs: the cap did not end the batch",
            batch.len()
        );
        drop(queue);
        feeder.join().unwrap();
    }

    #[test]
    fn a_read_is_answered_without_lingering() {
        let (jobs, queue) = mpsc::channel();
        jobs.send(poll()).unwrap();
        jobs.send(read()).unwrap();
        let first = queue.recv().unwrap();
        let start = Instant::now();
        let batch = gather(
            &queue,
            first,
            Duration::from_secs(5),
            Duration::from_secs(10),
        );
        assert_eq!(batch.len(), 2);
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn a_read_runs_on_the_writer_and_a_panicking_one_does_not_stop_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let queue = CommitQueue::start(store).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let panicked: Option<()> = queue.read(|_| panic!("a read that panics")).await;
            assert_eq!(panicked, None);
            let name = queue
                .read(|_| std::thread::current().name().map(str::to_string))
                .await;
            assert_eq!(name, Some(Some("cartat-commit".to_string())));
            let due = queue.read(|s| s.due(i64::MAX, 10).map(|r| r.len())).await;
            assert!(matches!(due, Some(Ok(0))), "{due:?}");
        });
    }
}
