//! Group commit: the polls' transactions, written by one thread, several per SQLite
//! transaction.
//!
//! A poll that found something hands its [`PollCommit`] to the queue and waits for the answer;
//! the writer thread takes every commit waiting at that moment (up to [`MAX_BATCH`]) and
//! writes them in one transaction ([`Store::commit_polls`]: each poll its own savepoint). Polls
//! that finish together — the coalesced bunches of the scheduler — then share one lock, one
//! write of the pages they touch, and one hand-off to and from the writer, instead of one of
//! each per poll. Nothing waits for a batch to fill: a lone commit is written at once.
//!
//! The guarantee is unchanged: a poll learns its commit succeeded only after the
//! transaction holding it is committed, and only then are its webhooks released.
//!
//! Owns: the writer thread and the batching. Must not: decide what a commit holds.

use super::{PollCommit, Store};
use std::sync::mpsc;

/// The most commits written in one transaction.
pub const MAX_BATCH: usize = 64;

struct Job {
    commit: PollCommit,
    done: tokio::sync::oneshot::Sender<(PollCommit, Result<usize, String>)>,
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
        if let Err(mpsc::SendError(job)) = self.jobs.send(Job { commit, done }) {
            return (job.commit, Err("the store's writer has stopped".into()));
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
        let commits: Vec<&PollCommit> = batch.iter().map(|j| &j.commit).collect();
        let results = store.commit_polls(&commits);
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.done.send((job.commit, result));
        }
    }
}
