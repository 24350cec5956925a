//! The state store: one SQLite file (WAL) holding per-chat watermarks, seen ids, cooldowns
//! and the outbox.
//!
//! Owns: the schema, the one transaction per poll that moves the watermark and queues the
//! actions together (SPEC §6), the outbox queries of the dispatcher, and refusing to share
//! the file with a second daemon or to replace a broken one. Must not: decide anything, or
//! name the engine (the types it stores are `crate::model`'s).
//!
//! By job: [`open`] (the schema, the lock, the checks), [`poll`] (a chat's stored state and
//! the polls' transactions), [`outbox`] (the dispatcher's and the CLI's queries), [`group`]
//! (the writer thread).

use crate::model::{ChatRuleState, ChatState, Delivery, Memory, MessageKey, SeenId};
use crate::outbox::lifecycle::{DeadReason, Lifecycle};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "another cartat-rules is already running on the state file {path} ({holder}); stop it first, or give this one its own `state.path`"
    )]
    Locked { path: PathBuf, holder: String },
    #[error(
        "the state file {path} is not a usable cartat-rules database ({reason}); it was left untouched — move it aside to start fresh, or restore a backup"
    )]
    Broken { path: PathBuf, reason: String },
    #[error("cannot open the state file {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("state store: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// A delivery waiting in (or done with) the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub delivery: Delivery,
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// When the row last changed (queued, or an attempt's outcome), unix milliseconds.
    pub updated_at_ms: i64,
}

impl OutboxRow {
    /// The row's place in the delivery lifecycle (`None`: a state this binary does not know).
    pub fn lifecycle(&self) -> Option<Lifecycle> {
        Lifecycle::from_row(
            &self.state,
            self.attempts,
            self.next_attempt_at_ms,
            self.last_error.as_deref(),
        )
    }
}

/// Everything one poll writes, in one transaction.
#[derive(Clone, Debug, Default)]
pub struct PollCommit {
    pub chat_id: String,
    pub watermark: i64,
    pub low_water: i64,
    /// (key, timestamp, fingerprint) of every new, updated and history message.
    pub seen: Vec<(MessageKey, i64, u64)>,
    pub deliveries: Vec<Delivery>,
    pub cooldowns: Vec<(String, i64)>,
    /// Threshold hits per rule (an empty list deletes the row).
    pub thresholds: Vec<(String, Vec<i64>)>,
    /// Chat-rule timers (a default state deletes the row).
    pub chat_rules: Vec<(String, ChatRuleState)>,
    /// Rule-file state (`state_set`) per rule.
    pub script_state: Vec<(String, serde_json::Map<String, serde_json::Value>)>,
    /// Since when the chat is watched (unix seconds), stored on its first commit; 0: now.
    pub first_seen: i64,
    pub now_ms: i64,
}

/// The store handle; cheap to clone, safe to share.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    _lock: Arc<File>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

mod open;
mod outbox;
mod poll;

impl Store {
    /// Writes each item in a savepoint of its own inside one transaction (one that fails is
    /// rolled back alone, the others stay); if the transaction itself fails, so does every
    /// item. What group commit is made of: the polls' commits and the deliveries' outcomes.
    /// `failpoint`: hit after the writes, before the commit (crash tests).
    fn in_savepoints<I, T>(
        &self,
        items: &[&I],
        failpoint: Option<&str>,
        write: impl Fn(&Connection, &I) -> Result<T, StoreError>,
    ) -> Vec<Result<T, String>> {
        let mut conn = self.conn();
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let e = StoreError::from(e).to_string();
                return items.iter().map(|_| Err(e.clone())).collect();
            }
        };
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let one = tx.savepoint().map_err(StoreError::from).and_then(|sp| {
                let out = write(&sp, item)?;
                sp.commit()?;
                Ok(out)
            });
            results.push(one.map_err(|e| e.to_string()));
        }
        if let Some(name) = failpoint {
            crate::failpoint::hit(name);
        }
        if let Err(e) = tx.commit() {
            let e = StoreError::from(e).to_string();
            for r in &mut results {
                if r.is_ok() {
                    *r = Err(e.clone());
                }
            }
        }
        results
    }
}

#[cfg(test)]
use outbox::HEADS;

/// Which rows `outbox retry` puts back.
#[derive(Clone, Copy, Debug)]
pub enum Requeue<'a> {
    One(&'a str),
    AllDead,
}

/// One attempt's outcome to record ([`Store::record_outcomes`]).
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The outbox row.
    pub id: i64,
    pub record: AttemptRecord,
    pub now_ms: i64,
    /// A 410: the url to disable and the config fingerprint it is disabled under.
    pub gone: Option<(String, String)>,
}

/// The outcome of one attempt, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptRecord {
    /// Where the delivery goes next: Delivered, Retry or Dead.
    pub outcome: Lifecycle,
    pub status: Option<u16>,
    /// What went wrong on the wire (kept as `last_error` unless the outcome says why it died).
    pub error: Option<String>,
}

pub mod group;
#[cfg(test)]
mod tests;
