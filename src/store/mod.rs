//! The state store: one SQLite file (WAL) holding per-chat watermarks, seen ids, cooldowns
//! and the outbox.
//!
//! Owns: the schema, the one transaction per poll that moves the watermark and queues the
//! actions together (SPEC §6), the outbox queries of the dispatcher, and refusing to share
//! the file with a second daemon or to replace a broken one. Must not: decide anything.

use crate::model::{ChatRuleState, ChatState, Delivery, Memory, MessageKey, SeenId};
use crate::outbox::lifecycle::{DeadReason, Lifecycle};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chats (
    chat_id     TEXT PRIMARY KEY,
    watermark   INTEGER NOT NULL,
    low_water   INTEGER NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_polled INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    chat_id     TEXT NOT NULL,
    from_me     INTEGER NOT NULL,
    msg_id      TEXT NOT NULL,
    ts          INTEGER NOT NULL,
    fingerprint INTEGER NOT NULL,
    PRIMARY KEY (chat_id, from_me, msg_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_time ON seen (chat_id, ts);
CREATE TABLE IF NOT EXISTS cooldowns (
    rule_id TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    until   INTEGER NOT NULL,
    PRIMARY KEY (rule_id, chat_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS thresholds (
    rule_id TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    hits    TEXT NOT NULL,
    PRIMARY KEY (rule_id, chat_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS script_state (
    rule_id TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    state   TEXT NOT NULL,
    PRIMARY KEY (rule_id, chat_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chat_rules (
    rule_id TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    since   INTEGER,
    fired   INTEGER NOT NULL,
    PRIMARY KEY (rule_id, chat_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY,
    delivery_id     TEXT NOT NULL UNIQUE,
    rule_id         TEXT NOT NULL,
    chat_id         TEXT NOT NULL,
    message_key     TEXT NOT NULL,
    action_index    INTEGER NOT NULL,
    url             TEXT NOT NULL,
    headers         TEXT NOT NULL,
    body            TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (state, chat_id, url, id);
";

/// Endpoints disabled by a 410, with the fingerprint of the config (and rules) in force when it
/// came. Additive to schema 1: created if missing by the daemon and by `outbox` commands, and
/// ignored by an older binary (which then simply never sees a `gone` row as pending).
const ENDPOINTS_GONE: &str = "
CREATE TABLE IF NOT EXISTS endpoints_gone (
    url         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    since       INTEGER NOT NULL,
    delivery_id TEXT NOT NULL
) WITHOUT ROWID;
";

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

fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// The oldest pending row of one (chat, url).
const HEADS: &str = "SELECT * FROM outbox WHERE state = 'pending' AND chat_id = ?1 AND url = ?2 ORDER BY id LIMIT 1";

/// Plans each prepared statement once, whatever values it is bound to: without SQLite's query
/// planner stability guarantee, this build (STAT4) re-prepares a cached statement whenever a
/// bound value changes (`heads` was re-parsed and re-planned for every (chat, url) it read, a
/// tenth of the daemon's CPU at workload A). Our queries' plans do not depend on the values.
fn plan_once(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(drop)
}

impl Store {
    /// Opens (creating if missing) the state file, taking its lock for this process.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(lock_path(path))
            .map_err(|e| open_err(format!("cannot open the lock file: {e}")))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(lock_path(path)).unwrap_or_default();
                let holder = if holder.trim().is_empty() {
                    "pid unknown".to_string()
                } else {
                    format!("pid {}", holder.trim())
                };
                return Err(StoreError::Locked {
                    path: path.to_path_buf(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(open_err(format!("cannot lock: {e}")));
            }
        }
        {
            use std::io::{Seek, Write};
            let mut f = &lock_file;
            let _ = f.set_len(0);
            let _ = f.seek(std::io::SeekFrom::Start(0));
            let _ = write!(f, "{}", std::process::id());
        }
        let existed = path.exists()
            && std::fs::metadata(path)
                .map(|m| m.len() > 0)
                .unwrap_or(false);
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        let broken = |reason: String| StoreError::Broken {
            path: path.to_path_buf(),
            reason,
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        plan_once(&conn)?;
        // Every statement of a poll, of the dispatcher and of a chat's first load stays
        // prepared (rusqlite's default of 16 is fewer than they are: they evicted each other).
        conn.set_prepared_statement_cache_capacity(64);
        if existed {
            let check: String = conn
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(|e| broken(e.to_string()))?;
            if check != "ok" {
                return Err(broken(format!("integrity check: {check}")));
            }
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(|e| broken(e.to_string()))?;
            if version > SCHEMA_VERSION {
                return Err(broken(format!(
                    "written by a newer cartat-rules (schema {version}, this one knows {SCHEMA_VERSION})"
                )));
            }
            if version == 0 {
                let tables: i64 = conn
                    .query_row(
                        "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(|e| broken(e.to_string()))?;
                if tables > 0 {
                    return Err(broken("it is an SQLite file of something else".into()));
                }
            }
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| broken(e.to_string()))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| broken(e.to_string()))?;
        conn.execute_batch(ENDPOINTS_GONE)
            .map_err(|e| broken(e.to_string()))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            _lock: Arc::new(lock_file),
        })
    }

    /// Opens an existing state file next to a running daemon, for `outbox` commands: no lock,
    /// no schema changes; SQLite's own locking keeps the two writers apart.
    pub fn open_shared(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                reason: "no such file (has the daemon run yet?)".into(),
            });
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        plan_once(&conn)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| StoreError::Broken {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::Broken {
                path: path.to_path_buf(),
                reason: format!("schema version {version}, expected {SCHEMA_VERSION}"),
            });
        }
        conn.execute_batch(ENDPOINTS_GONE)?;
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .open(path)
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            _lock: Arc::new(lock),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything stored about one chat: its watermark, every seen id, and what the rules
    /// remember — what the poller keeps in memory from then on ([`PollCommit`]s keep it equal).
    pub fn load_chat(&self, chat_id: &str) -> Result<(ChatState, Memory), StoreError> {
        let mut state = {
            let conn = self.conn();
            let mut state = Self::chat_row(&conn, chat_id)?;
            if state.known {
                let mut stmt = conn.prepare_cached(
                    "SELECT from_me, msg_id, ts, fingerprint FROM seen WHERE chat_id = ?1",
                )?;
                let rows = stmt.query_map([chat_id], |r| {
                    let key = MessageKey {
                        from_me: r.get(0)?,
                        id: r.get(1)?,
                    };
                    Ok((key, seen_id_at(r, 2)?))
                })?;
                for row in rows {
                    let (key, seen) = row?;
                    state.seen.insert(key, seen);
                }
            }
            state
        };
        state.seen.shrink_to_fit();
        Ok((state, self.rule_memory(chat_id)?))
    }

    fn chat_row(conn: &Connection, chat_id: &str) -> Result<ChatState, StoreError> {
        let mut state = ChatState::default();
        if let Some((w, l, f)) = conn
            .prepare_cached(
                "SELECT watermark, low_water, first_seen FROM chats WHERE chat_id = ?1",
            )?
            .query_row([chat_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?
        {
            state.known = true;
            state.watermark = w;
            state.low_water = l;
            state.first_seen = f;
        }
        Ok(state)
    }

    /// What the rules remember about a chat: cooldowns, threshold hits, chat-rule timers.
    pub fn rule_memory(&self, chat_id: &str) -> Result<Memory, StoreError> {
        let conn = self.conn();
        Ok(Memory {
            cooldowns: per_rule(
                &conn,
                "SELECT rule_id, until FROM cooldowns WHERE chat_id = ?1",
                chat_id,
                |r| r.get(1),
            )?,
            thresholds: per_rule(
                &conn,
                "SELECT rule_id, hits FROM thresholds WHERE chat_id = ?1",
                chat_id,
                |r| r.get(1).map(from_json_or_default),
            )?,
            script_state: per_rule(
                &conn,
                "SELECT rule_id, state FROM script_state WHERE chat_id = ?1",
                chat_id,
                |r| r.get(1).map(from_json_or_default),
            )?,
            chat_rules: per_rule(
                &conn,
                "SELECT rule_id, since, fired FROM chat_rules WHERE chat_id = ?1",
                chat_id,
                |r| {
                    Ok(ChatRuleState {
                        since: r.get(1)?,
                        fired: r.get(2)?,
                    })
                },
            )?,
        })
    }

    /// Moves the watermark, records seen ids and cooldowns, and queues the deliveries — all or
    /// nothing. A delivery already queued (same id) is left as it is. (One poll's
    /// [`Store::commit_polls`].)
    pub fn commit_poll(&self, c: &PollCommit) -> Result<usize, String> {
        let mut results = self.commit_polls(&[c]);
        results
            .pop()
            .unwrap_or_else(|| Err("no result for the commit".into()))
    }

    /// Commits several polls (of different chats) in one transaction — group commit: one
    /// write of the shared pages and one lock for the lot. Each poll is its own savepoint, so
    /// one that fails is rolled back alone and reported alone; the others are committed
    /// together, or all fail together if the commit itself does. Results are in `polls`' order.
    pub fn commit_polls(&self, polls: &[&PollCommit]) -> Vec<Result<usize, String>> {
        let mut conn = self.conn();
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let e = StoreError::from(e).to_string();
                return polls.iter().map(|_| Err(e.clone())).collect();
            }
        };
        let mut results: Vec<Result<usize, String>> = Vec::with_capacity(polls.len());
        for c in polls {
            let one = tx.savepoint().map_err(StoreError::from).and_then(|sp| {
                let queued = Self::write_poll(&sp, c)?;
                sp.commit()?;
                Ok(queued)
            });
            results.push(one.map_err(|e| e.to_string()));
        }
        crate::failpoint::hit("in_transaction");
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

    /// The rows of one poll, inside the caller's transaction.
    fn write_poll(tx: &Connection, c: &PollCommit) -> Result<usize, StoreError> {
        let now_s = c.now_ms / 1000;
        tx.prepare_cached("INSERT INTO chats (chat_id, watermark, low_water, first_seen, last_polled) VALUES (?1, ?2, ?3, ?5, ?4)
             ON CONFLICT (chat_id) DO UPDATE SET watermark = max(watermark, excluded.watermark),
                 low_water = max(low_water, excluded.low_water), last_polled = excluded.last_polled")?
            .execute(params![
                c.chat_id,
                c.watermark,
                c.low_water,
                now_s,
                if c.first_seen > 0 { c.first_seen } else { now_s }
            ])?;
        {
            let mut seen = tx.prepare_cached(
                "INSERT INTO seen (chat_id, from_me, msg_id, ts, fingerprint) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO UPDATE SET fingerprint = excluded.fingerprint",
            )?;
            for (k, ts, fp) in &c.seen {
                seen.execute(params![c.chat_id, k.from_me, k.id, ts, *fp as i64])?;
            }
            let mut cd = tx.prepare_cached(
                "INSERT INTO cooldowns (rule_id, chat_id, until) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO UPDATE SET until = max(until, excluded.until)",
            )?;
            for (rule, until) in &c.cooldowns {
                cd.execute(params![rule, c.chat_id, until])?;
            }
            let mut th_set = tx.prepare_cached(
                "INSERT INTO thresholds (rule_id, chat_id, hits) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO UPDATE SET hits = excluded.hits",
            )?;
            let mut th_del =
                tx.prepare_cached("DELETE FROM thresholds WHERE rule_id = ?1 AND chat_id = ?2")?;
            for (rule, hits) in &c.thresholds {
                if hits.is_empty() {
                    th_del.execute(params![rule, c.chat_id])?;
                } else {
                    th_set.execute(params![
                        rule,
                        c.chat_id,
                        serde_json::to_string(hits).unwrap_or_default()
                    ])?;
                }
            }
            let mut ss = tx.prepare_cached(
                "INSERT INTO script_state (rule_id, chat_id, state) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO UPDATE SET state = excluded.state",
            )?;
            for (rule, state) in &c.script_state {
                ss.execute(params![
                    rule,
                    c.chat_id,
                    serde_json::to_string(state).unwrap_or_default()
                ])?;
            }
            let mut cr_set = tx.prepare_cached(
                "INSERT INTO chat_rules (rule_id, chat_id, since, fired) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO UPDATE SET since = excluded.since, fired = excluded.fired",
            )?;
            let mut cr_del =
                tx.prepare_cached("DELETE FROM chat_rules WHERE rule_id = ?1 AND chat_id = ?2")?;
            for (rule, st) in &c.chat_rules {
                if *st == ChatRuleState::default() {
                    cr_del.execute(params![rule, c.chat_id])?;
                } else {
                    cr_set.execute(params![rule, c.chat_id, st.since, st.fired])?;
                }
            }
        }
        let mut queued = 0;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO outbox (delivery_id, rule_id, chat_id, message_key, action_index, url, headers, body,
                                     state, attempts, next_attempt_at, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,
                         CASE WHEN EXISTS (SELECT 1 FROM endpoints_gone g WHERE g.url = ?6) THEN 'gone' ELSE 'pending' END,
                         0, ?9, ?9, ?9)
                 ON CONFLICT (delivery_id) DO NOTHING",
            )?;
            for d in &c.deliveries {
                let headers = serde_json::to_string(&d.headers).unwrap_or_else(|_| "[]".into());
                queued += ins.execute(params![
                    d.delivery_id,
                    d.rule_id,
                    d.chat_id,
                    d.message_key,
                    d.action_index as i64,
                    d.url,
                    headers,
                    d.body,
                    c.now_ms
                ])?;
            }
        }
        // Ids below the low-water mark can only come back with a larger limit, where the diff
        // treats them as history; keep the table small.
        tx.prepare_cached("DELETE FROM seen WHERE chat_id = ?1 AND ts < ?2")?
            .execute(params![c.chat_id, c.low_water])?;
        // Message cooldowns count in message time, chat-rule ones in our time: a row is
        // spent only once both clocks are past it.
        tx.prepare_cached("DELETE FROM cooldowns WHERE chat_id = ?1 AND until < ?2")?
            .execute(params![c.chat_id, now_s.min(c.watermark)])?;
        Ok(queued)
    }

    fn row(r: &rusqlite::Row) -> rusqlite::Result<OutboxRow> {
        let headers: String = r.get("headers")?;
        Ok(OutboxRow {
            id: r.get("id")?,
            delivery: Delivery {
                delivery_id: r.get("delivery_id")?,
                rule_id: r.get("rule_id")?,
                chat_id: r.get("chat_id")?,
                message_key: r.get("message_key")?,
                action_index: r.get::<_, i64>("action_index")? as usize,
                url: r.get("url")?,
                headers: serde_json::from_str(&headers).unwrap_or_default(),
                body: r.get("body")?,
            },
            state: r.get("state")?,
            attempts: r.get::<_, i64>("attempts")? as u32,
            next_attempt_at_ms: r.get("next_attempt_at")?,
            last_status: r.get::<_, Option<i64>>("last_status")?.map(|s| s as u16),
            last_error: r.get("last_error")?,
        })
    }

    /// The deliveries to send now: the oldest pending row of each (chat, url), if it is due —
    /// so deliveries for one chat to one endpoint keep their order.
    pub fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.due_excluding(now_ms, limit, &[])
    }

    /// [`Store::due`] without the rows for `urls` (endpoints with no free slot).
    pub fn due_excluding(
        &self,
        now_ms: i64,
        limit: usize,
        urls: &[String],
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT o.* FROM outbox o
             JOIN (SELECT MIN(id) AS id FROM outbox WHERE state = 'pending' GROUP BY chat_id, url) h ON o.id = h.id
             WHERE o.next_attempt_at <= ?1 AND o.url NOT IN (SELECT value FROM json_each(?3))
             ORDER BY o.id LIMIT ?2",
        )?;
        let urls = serde_json::to_string(urls).unwrap_or_else(|_| "[]".into());
        let rows = stmt
            .query_map(params![now_ms, limit as i64, urls], Self::row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The oldest pending row of each of `groups` (chat, url), due or not.
    pub fn heads(&self, groups: &[(String, String)]) -> Result<Vec<OutboxRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(HEADS)?;
        let mut rows = Vec::with_capacity(groups.len());
        for (chat, url) in groups {
            if let Some(row) = stmt.query_row(params![chat, url], Self::row).optional()? {
                rows.push(row);
            }
        }
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// When the next pending delivery is due, if any (only the head of each (chat, url) counts:
    /// the rows behind it wait for it whatever their own time).
    pub fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .prepare_cached(
                "SELECT MIN(o.next_attempt_at) FROM outbox o
                 JOIN (SELECT MIN(id) AS id FROM outbox WHERE state = 'pending' GROUP BY chat_id, url) h ON o.id = h.id",
            )?
            .query_row([], |r| r.get(0))?)
    }

    /// Records the outcome of an attempt: the row moves to `record.outcome` (never InFlight).
    pub fn record_attempt(
        &self,
        id: i64,
        record: &AttemptRecord,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        Self::write_outcome(&conn, id, record, now_ms)?;
        Ok(())
    }

    fn write_outcome(
        conn: &Connection,
        id: i64,
        record: &AttemptRecord,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let Some(st) = record.outcome.stored() else {
            return Err(StoreError::Sqlite(rusqlite::Error::InvalidParameterName(
                "an in-flight delivery is never stored".into(),
            )));
        };
        conn.prepare_cached("UPDATE outbox SET state = ?2, attempts = ?3, next_attempt_at = coalesce(?4, next_attempt_at),
                               last_status = ?5, last_error = ?6, updated_at = ?7 WHERE id = ?1")?
            .execute(params![
                id,
                st.state,
                st.attempts,
                st.next_attempt_at_ms,
                record.status.map(i64::from),
                st.error.or_else(|| record.error.clone()),
                now_ms
            ])?;
        Ok(())
    }

    /// A 410: records the attempt (the row is dead, `gone`), disables `url` under the config
    /// `fingerprint`, and parks every other pending row for that url as `gone` — one
    /// transaction. Returns how many other rows were parked.
    pub fn disable_endpoint(
        &self,
        id: i64,
        url: &str,
        fingerprint: &str,
        record: &AttemptRecord,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let parked = Self::write_gone(&tx, id, url, fingerprint, record, now_ms)?;
        tx.commit()?;
        Ok(parked)
    }

    /// [`Store::disable_endpoint`]'s rows, inside the caller's transaction.
    fn write_gone(
        tx: &Connection,
        id: i64,
        url: &str,
        fingerprint: &str,
        record: &AttemptRecord,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        Self::write_outcome(tx, id, record, now_ms)?;
        tx.prepare_cached(
            "INSERT INTO endpoints_gone (url, fingerprint, since, delivery_id)
             SELECT ?1, ?2, ?3, delivery_id FROM outbox WHERE id = ?4
             ON CONFLICT (url) DO UPDATE SET fingerprint = excluded.fingerprint",
        )?
        .execute(params![url, fingerprint, now_ms, id])?;
        let parked = tx
            .prepare_cached(
                "UPDATE outbox SET state = 'gone', last_error = ?2, updated_at = ?3
                 WHERE url = ?1 AND state = 'pending'",
            )?
            .execute(params![url, DeadReason::EndpointGone.text(), now_ms])?;
        Ok(parked)
    }

    /// Records several attempts' outcomes in one transaction, each in its own savepoint (one
    /// that fails is rolled back alone): what [`Store::record_attempt`] and
    /// [`Store::disable_endpoint`] do one by one. For a 410 ([`Outcome::gone`]), the number of
    /// other rows parked.
    pub fn record_outcomes(&self, outcomes: &[&Outcome]) -> Vec<Result<Option<usize>, String>> {
        let mut conn = self.conn();
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let e = StoreError::from(e).to_string();
                return outcomes.iter().map(|_| Err(e.clone())).collect();
            }
        };
        let mut results = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            let one = tx.savepoint().map_err(StoreError::from).and_then(|sp| {
                let parked = match &o.gone {
                    Some((url, fp)) => {
                        Some(Self::write_gone(&sp, o.id, url, fp, &o.record, o.now_ms)?)
                    }
                    None => {
                        Self::write_outcome(&sp, o.id, &o.record, o.now_ms)?;
                        None
                    }
                };
                sp.commit()?;
                Ok(parked)
            });
            results.push(one.map_err(|e| e.to_string()));
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

    /// Endpoints disabled under another config than `fingerprint` are enabled again (the config
    /// changed since their 410); returns their urls. Rows parked as `gone` stay so: `outbox
    /// retry` re-sends them.
    pub fn reenable_endpoints(&self, fingerprint: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let urls = {
            let mut stmt = tx.prepare("SELECT url FROM endpoints_gone WHERE fingerprint <> ?1")?;
            stmt.query_map([fingerprint], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?
        };
        tx.execute(
            "DELETE FROM endpoints_gone WHERE fingerprint <> ?1",
            [fingerprint],
        )?;
        tx.commit()?;
        Ok(urls)
    }

    /// The urls disabled by a 410, for `outbox list` and tests.
    pub fn disabled_endpoints(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT url FROM endpoints_gone ORDER BY url")?;
        let urls = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(urls)
    }

    /// Lists outbox rows, newest first, optionally only one state.
    pub fn list(&self, state: Option<&str>, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT * FROM outbox WHERE (?1 IS NULL OR state = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![state, limit as i64], Self::row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Counts rows by state.
    pub fn counts(&self) -> Result<HashMap<String, i64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT state, count(*) FROM outbox GROUP BY state")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<HashMap<_, _>, _>>()?;
        Ok(rows)
    }

    /// Puts dead-lettered rows (`dead` or `gone`; one by outbox id or delivery id, or all)
    /// back to pending, due now, with a fresh attempt count and their original delivery id. An
    /// operator's re-send overrides a 410: the endpoints of the re-queued rows are enabled
    /// again. A row already pending is made due now. Returns how many rows.
    pub fn requeue(&self, which: Requeue<'_>, now_ms: i64) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let filter = match which {
            Requeue::One(_) => {
                "(CAST(id AS TEXT) = ?1 OR delivery_id = ?1) AND state IN ('dead', 'gone', 'pending')"
            }
            Requeue::AllDead => "?1 IS NULL AND state IN ('dead', 'gone')",
        };
        let arg = match which {
            Requeue::One(id) => Some(id),
            Requeue::AllDead => None,
        };
        tx.execute(
            &format!(
                "DELETE FROM endpoints_gone WHERE url IN (SELECT url FROM outbox WHERE {filter})"
            ),
            params![arg],
        )?;
        let n = tx.execute(
            &format!(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?2, updated_at = ?2 WHERE {filter}"
            ),
            params![arg, now_ms],
        )?;
        tx.commit()?;
        Ok(n)
    }
}

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

/// A seen id's (ts, fingerprint) from columns `at` and `at + 1`.
fn seen_id_at(r: &rusqlite::Row, at: usize) -> rusqlite::Result<SeenId> {
    Ok(SeenId {
        ts: r.get(at)?,
        fingerprint: r.get::<_, i64>(at + 1)? as u64,
    })
}

/// Stored JSON, or the empty value if a row was somehow mangled (it is rewritten next poll).
fn from_json_or_default<T: serde::de::DeserializeOwned + Default>(text: String) -> T {
    serde_json::from_str(&text).unwrap_or_default()
}

/// One chat's rows of a per-(rule, chat) table, keyed by rule id: `sql` selects `rule_id` first
/// and takes the chat id as `?1`; `value` reads the rest of a row.
fn per_rule<T>(
    conn: &Connection,
    sql: &str,
    chat_id: &str,
    value: impl Fn(&rusqlite::Row) -> rusqlite::Result<T>,
) -> Result<HashMap<String, T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([chat_id], |r| Ok((r.get::<_, String>(0)?, value(r)?)))?;
    Ok(rows.collect::<Result<HashMap<_, _>, _>>()?)
}

pub mod group;
#[cfg(test)]
mod tests;
