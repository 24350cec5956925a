//! The state store: per-chat watermarks, seen ids, rule memory and the outbox, behind one
//! seam that the poller, the dispatcher, the CLI and the server use.
//!
//! Owns: the operations the rest of the daemon may ask of its state — a chat's stored state,
//! the one transaction per poll that moves the watermark and queues the actions together,
//! the outbox's queries and outcomes, opening and locking — and the types they exchange.
//! Must not: decide anything, or name the engine (the types it stores are `crate::model`'s).
//!
//! The seam is an enum of backends, [`Store`], not a trait object. The backends are a closed
//! set that this crate ships (SQLite now; PostgreSQL next, for several instances), so a
//! `match` that the compiler checks for every operation is the whole cost of a second one,
//! and the callers keep calling inherent methods with no trait to import, no `dyn`, and no
//! boxed futures. The operations are synchronous: SQLite answers on the calling thread, and
//! every write of the daemon goes through one writer task ([`group`]), which is also where
//! a backend with a network round trip belongs. Nothing in the tests stands in for the store:
//! they open real files, so a trait for test doubles would buy nothing.
//!
//! By job: [`sqlite`] (the SQLite backend: schema, lock, the polls' transactions, the outbox
//! queries), [`group`] (the writer task and group commit).

use crate::model::{
    ChatRuleState, ChatState, Delivery, DigestItem, DigestWindow, HistoryEntry, Memory, MessageKey,
    SealedDigest, SeenId, Silence,
};
use crate::outbox::lifecycle::{DeadReason, Lifecycle};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub mod postgres;
pub mod sqlite;
pub use sqlite::Checkpointer;

/// The state store; cheap to clone, safe to share. One variant per backend.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// Runs `$body` with `$s` bound to the backend of `$store`.
macro_rules! backend {
    ($store:expr, $s:ident => $body:expr) => {
        match $store {
            Store::Sqlite($s) => $body,
            Store::Postgres($s) => $body,
        }
    };
}

impl Store {
    /// Opens (creating it if needed) the state at `path` for the daemon, holding its lock.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        sqlite::Sqlite::open(path).map(Store::Sqlite)
    }

    /// Opens existing state beside a running daemon, for the CLI (no lock taken).
    pub fn open_shared(path: &Path) -> Result<Store, StoreError> {
        sqlite::Sqlite::open_shared(path).map(Store::Sqlite)
    }

    /// Opens the state a config names: its PostgreSQL database (`state.url`) or its SQLite file
    /// (`state.path`). `daemon`: for the daemon, which holds the state's lock; otherwise for a
    /// command beside it (an SQLite file must exist then).
    pub fn open_for(config: &crate::config::Config, daemon: bool) -> Result<Store, StoreError> {
        use secrecy::ExposeSecret;
        match &config.state_url {
            // In a cluster the instances share the database: leases, not a lock, keep them apart.
            Some(url) => {
                postgres::Postgres::open(url.expose_secret(), daemon && config.cluster.is_none())
                    .map(Store::Postgres)
            }
            None if daemon => Store::open(&config.state_path),
            None => Store::open_shared(&config.state_path),
        }
    }

    /// Opens a PostgreSQL database (`postgres://…`); `daemon`: holding its daemon lock.
    pub fn open_postgres(url: &str, daemon: bool) -> Result<Store, StoreError> {
        postgres::Postgres::open(url, daemon).map(Store::Postgres)
    }

    /// In a cluster: limits the dispatcher's queries to `chats` until `until` (PostgreSQL).
    pub fn set_scope(&self, scope: Option<(Vec<String>, std::time::Instant)>) {
        if let Store::Postgres(p) = self {
            p.set_scope(scope);
        }
    }

    /// One lease cycle of a cluster instance (PostgreSQL only).
    pub fn lease_cycle(
        &self,
        me: &str,
        chats: &[String],
        ttl_ms: i64,
        joining: Option<postgres::JoinWait>,
    ) -> Result<postgres::LeaseView, StoreError> {
        match self {
            Store::Postgres(p) => p.lease_cycle(me, chats, ttl_ms, joining),
            Store::Sqlite(_) => Err(StoreError::Postgres(
                "a cluster needs its state in PostgreSQL (state.url)".into(),
            )),
        }
    }

    /// Gives up every lease of instance `me` (PostgreSQL only; nothing to do on SQLite).
    pub fn release_all(&self, me: &str) -> Result<usize, StoreError> {
        match self {
            Store::Postgres(p) => p.release_all(me),
            Store::Sqlite(_) => Ok(0),
        }
    }

    /// The instances alive: (name, ms since it was last seen, leases held).
    pub fn cluster_status(&self, ttl_ms: i64) -> Result<Vec<(String, i64, i64)>, StoreError> {
        match self {
            Store::Postgres(p) => p.cluster_status(ttl_ms),
            Store::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// Whether the state lives in a database server (PostgreSQL) rather than a file.
    pub fn is_server(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// Where the state lives.
    pub fn path(&self) -> &Path {
        backend!(self, s => s.path())
    }

    /// Folds the backend's log into its main storage from now on in the background, off the
    /// committing thread, until the handle is dropped (the daemon; short-lived commands leave
    /// it to the backend's own rules).
    pub fn start_checkpointer(&self) -> Result<Checkpointer, StoreError> {
        match self {
            Store::Sqlite(s) => s.start_checkpointer(),
            // The server does its own.
            Store::Postgres(_) => Ok(Checkpointer::none()),
        }
    }

    /// Folds what the backend holds in its log into its main storage (on a clean stop).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.checkpoint(),
            Store::Postgres(_) => Ok(()),
        }
    }

    /// A chat's watermark, seen ids and rule memory, as its last commit left them.
    pub fn load_chat(&self, chat_id: &str) -> Result<(ChatState, Memory), StoreError> {
        backend!(self, s => s.load_chat(chat_id))
    }

    /// A chat's rule memory alone.
    pub fn rule_memory(&self, chat_id: &str) -> Result<Memory, StoreError> {
        backend!(self, s => s.rule_memory(chat_id))
    }

    /// One poll's commit in a transaction of its own; the number of deliveries queued.
    pub fn commit_poll(&self, c: &PollCommit) -> Result<usize, String> {
        backend!(self, s => s.commit_poll(c))
    }

    /// Several polls' commits in one transaction, each all or nothing on its own.
    pub fn commit_polls(&self, polls: &[&PollCommit]) -> Vec<Result<usize, String>> {
        backend!(self, s => s.commit_polls(polls))
    }

    /// Seals the digest windows that ended by `ended_by` (see the backends').
    pub fn seal_digests(
        &self,
        now_s: i64,
        ended_by: i64,
        seal: &mut SealFn<'_>,
    ) -> Result<Vec<SealedDigest>, StoreError> {
        backend!(self, s => s.seal_digests(now_s, ended_by, seal))
    }

    pub fn add_silence(&self, silence: &Silence) -> Result<i64, StoreError> {
        backend!(self, s => s.add_silence(silence))
    }

    pub fn silences(&self, now_ms: Option<i64>) -> Result<Vec<Silence>, StoreError> {
        backend!(self, s => s.silences(now_ms))
    }

    pub fn expire_silence(&self, id: i64, now_ms: i64) -> Result<bool, StoreError> {
        backend!(self, s => s.expire_silence(id, now_ms))
    }

    /// The run history, newest first: of one chat and/or naming one rule, at most `limit`.
    pub fn history(&self, q: &HistoryQuery) -> Result<Vec<HistoryEntry>, StoreError> {
        backend!(self, s => s.history(q))
    }

    /// Deletes history entries older than `before_ms` and all but the newest `keep`; how many.
    pub fn prune_history(&self, keep: usize, before_ms: i64) -> Result<usize, StoreError> {
        backend!(self, s => s.prune_history(keep, before_ms))
    }

    pub fn pending_digest_items(&self) -> Result<HashMap<String, i64>, StoreError> {
        backend!(self, s => s.pending_digest_items())
    }

    /// The oldest pending row of each (chat, url), if it is due, oldest first.
    pub fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        backend!(self, s => s.due(now_ms, limit))
    }

    /// [`Store::due`] without the rows for `urls`.
    pub fn due_excluding(
        &self,
        now_ms: i64,
        limit: usize,
        urls: &[String],
    ) -> Result<Vec<OutboxRow>, StoreError> {
        backend!(self, s => s.due_excluding(now_ms, limit, urls))
    }

    /// The oldest pending row of each of `groups` (chat, url), due or not.
    pub fn heads(&self, groups: &[(String, String)]) -> Result<Vec<OutboxRow>, StoreError> {
        backend!(self, s => s.heads(groups))
    }

    /// When the next pending head is due, if any.
    pub fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        backend!(self, s => s.next_due_ms())
    }

    /// Records one attempt's outcome.
    pub fn record_attempt(
        &self,
        id: i64,
        record: &AttemptRecord,
        now_ms: i64,
    ) -> Result<(), String> {
        let one = Outcome {
            id,
            record: record.clone(),
            now_ms,
            gone: None,
        };
        self.record_outcomes(&[&one]).remove(0).map(drop)
    }

    /// A 410: records the attempt, disables `url` under `fingerprint` and parks its other
    /// rows; how many were parked.
    pub fn disable_endpoint(
        &self,
        id: i64,
        url: &str,
        fingerprint: &str,
        record: &AttemptRecord,
        now_ms: i64,
    ) -> Result<usize, String> {
        let one = Outcome {
            id,
            record: record.clone(),
            now_ms,
            gone: Some((url.to_string(), fingerprint.to_string())),
        };
        self.record_outcomes(&[&one])
            .remove(0)
            .map(|parked| parked.unwrap_or(0))
    }

    /// Several attempts' outcomes in one transaction, each all or nothing on its own.
    pub fn record_outcomes(&self, outcomes: &[&Outcome]) -> Vec<Result<Option<usize>, String>> {
        backend!(self, s => s.record_outcomes(outcomes))
    }

    /// Re-enables the urls a 410 disabled under another config; the urls re-enabled.
    pub fn reenable_endpoints(&self, fingerprint: &str) -> Result<Vec<String>, StoreError> {
        backend!(self, s => s.reenable_endpoints(fingerprint))
    }

    /// The urls a 410 disabled.
    pub fn disabled_endpoints(&self) -> Result<Vec<String>, StoreError> {
        backend!(self, s => s.disabled_endpoints())
    }

    /// Outbox rows, newest first, optionally in one state.
    pub fn list(&self, state: Option<&str>, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        backend!(self, s => s.list(state, limit))
    }

    /// Outbox rows per state.
    pub fn counts(&self) -> Result<HashMap<String, i64>, StoreError> {
        backend!(self, s => s.counts())
    }

    /// Puts rows back to pending (`outbox retry`); how many.
    pub fn requeue(&self, which: Requeue<'_>, now_ms: i64) -> Result<usize, StoreError> {
        backend!(self, s => s.requeue(which, now_ms))
    }

    /// The SQLite backend, for tests that read its tables.
    #[cfg(test)]
    fn sqlite(&self) -> &sqlite::Sqlite {
        match self {
            Store::Sqlite(s) => s,
            Store::Postgres(_) => panic!("not an SQLite store"),
        }
    }
}

/// What makes a window's deliveries of its firings (JSON, oldest first) and their count.
pub type SealFn<'a> = dyn FnMut(&DigestWindow, &[String], usize) -> Vec<Delivery> + 'a;

/// The most firings a sealed digest reads to list (its rule's `max_items` lists fewer).
pub const DIGEST_LISTED_MAX: usize = crate::model::DIGEST_ITEMS_MAX;

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "another cartat-rules is already running on the state file {path} ({holder}); stop it first, or give this one its own `state.path`"
    )]
    Locked { path: PathBuf, holder: String },
    #[error(
        "another cartat-rules is already running on the database {url}; stop it first, or give this one a database of its own (several instances on one database need chat leases, not built yet)"
    )]
    LockedDatabase { url: String },
    #[error(
        "the state file {path} is not a usable cartat-rules database ({reason}); it was left untouched — move it aside to start fresh, or restore a backup"
    )]
    Broken { path: PathBuf, reason: String },
    #[error("cannot open the state file {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "the lease on chat {chat} was lost (another instance holds it now, or it expired): this poll's commit is refused"
    )]
    Fenced { chat: String },
    #[error("state store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state store (PostgreSQL): {0}")]
    Postgres(String),
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
    /// Firings of digest rules, kept until their window is sealed ([`Store::seal_digests`]).
    pub digest_items: Vec<DigestItem>,
    pub cooldowns: Vec<(String, i64)>,
    /// Threshold hits per rule (an empty list deletes the row).
    pub thresholds: Vec<(String, Vec<i64>)>,
    /// Chat-rule timers (a default state deletes the row).
    pub chat_rules: Vec<(String, ChatRuleState)>,
    /// Rule-file state (`state_set`) per rule.
    pub script_state: Vec<(String, serde_json::Map<String, serde_json::Value>)>,
    /// Since when the chat is watched (unix seconds), stored on its first commit; 0: now.
    pub first_seen: i64,
    /// In a cluster: the fencing token of this instance's lease on the chat. The commit is
    /// refused ([`StoreError::Fenced`]) unless the lease still has it and has not expired.
    pub lease: Option<i64>,
    pub now_ms: i64,
    /// The run history's entries of this poll, written in its transaction (empty when
    /// `history` is off).
    pub history: Vec<HistoryEntry>,
}

/// What [`Store::history`] looks for.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    /// A chat key (`sales/966500000000@c.us`: that chat), or an id without an account
    /// (`966500000000@c.us`: that chat in every account).
    pub chat: Option<String>,
    /// A rule id: entries in which that rule had something to say.
    pub rule: Option<String>,
    pub limit: usize,
}

/// The text the history's `rules` column holds: `,a,b,` (searched for `,a,`).
pub(crate) fn history_rules(e: &HistoryEntry) -> String {
    let mut out = String::from(",");
    for t in &e.rules {
        out.push_str(&t.rule);
        out.push(',');
    }
    out
}

#[cfg(test)]
use sqlite::outbox::{DUE, HEADS, NEXT_DUE};

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
