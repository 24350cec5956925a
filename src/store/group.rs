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
//! Owns: the writer thread and the batching. Must not: decide what a commit holds.

use super::{Outcome, PollCommit, Store};
use std::sync::mpsc;

/// The most commits written in one transaction.
pub const MAX_BATCH: usize = 64;

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
}

fn write_batches(store: &Store, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut polls = Vec::new();
        let mut outcomes = Vec::new();
        for job in batch {
            match job {
                Job::Poll { commit, done } => polls.push((commit, done)),
                Job::Outcome { outcome, done } => outcomes.push((outcome, done)),
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
    }
}
