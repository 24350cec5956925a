//! Opening the state file: the schema, the lock that keeps a second daemon out, and the
//! checks that refuse a broken or newer file.

use super::*;

pub(super) const SCHEMA_VERSION: i64 = 1;

/// The page cache of the daemon's connection: 512 KiB (`PRAGMA cache_size` counts KiB when negative).
pub(super) const CACHE_SIZE: i64 = -512;

pub(super) const SCHEMA: &str = "
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
-- The pending rows in id order (an index on state ends with the rowid, the id): the due scan
-- walks it oldest first and stops at its limit, with no sort and no temporary table.
CREATE INDEX IF NOT EXISTS outbox_by_state ON outbox (state);
";

/// Digest rules' firings waiting for their window to end, and how far each (rule, group) is
/// sealed. Additive to schema 1, like `endpoints_gone`: an older binary ignores them.
pub(super) const DIGESTS: &str = "
CREATE TABLE IF NOT EXISTS digest_items (
    rule_id      TEXT NOT NULL,
    grp          TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    window_secs  INTEGER NOT NULL,
    window_end   INTEGER NOT NULL,
    chat_id      TEXT NOT NULL,
    item_key     TEXT NOT NULL,
    fired_at     INTEGER NOT NULL,
    item         TEXT NOT NULL,
    PRIMARY KEY (rule_id, chat_id, item_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS digest_items_by_end ON digest_items (window_end);
CREATE INDEX IF NOT EXISTS digest_items_by_window ON digest_items (rule_id, grp, window_start, fired_at);
CREATE TABLE IF NOT EXISTS digest_sealed (
    rule_id      TEXT NOT NULL,
    grp          TEXT NOT NULL,
    sealed_until INTEGER NOT NULL,
    PRIMARY KEY (rule_id, grp)
) WITHOUT ROWID;
";

/// Silences (`cartat-rules silence`), written by the command next to a running daemon, read by
/// the daemon every second. Additive to schema 1.
pub(super) const SILENCES: &str = "
CREATE TABLE IF NOT EXISTS silences (
    id         INTEGER PRIMARY KEY,
    rule_id    TEXT,
    chat_id    TEXT,
    until      INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
";

/// Endpoints disabled by a 410, with the fingerprint of the config (and rules) in force when it
/// came. Additive to schema 1: created if missing by the daemon and by `outbox` commands, and
/// ignored by an older binary (which then simply never sees a `gone` row as pending).
pub(super) const ENDPOINTS_GONE: &str = "
CREATE TABLE IF NOT EXISTS endpoints_gone (
    url         TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    since       INTEGER NOT NULL,
    delivery_id TEXT NOT NULL
) WITHOUT ROWID;
";

/// The run history (`engine::history`): one row per new message and per poll whose chat rules
/// moved, pruned by `history.keep` and `history.max_age`. Additive to schema 1. No index but
/// the row id: a search by chat or rule reads the table (100,000 rows by default: tens of
/// milliseconds, for a person looking), while an index would cost every poll's insert.
pub(super) const HISTORY: &str = "
CREATE TABLE IF NOT EXISTS run_history (
    id         INTEGER PRIMARY KEY,
    at_ms      INTEGER NOT NULL,
    chat_id    TEXT NOT NULL,
    message_id TEXT,
    rules      TEXT NOT NULL,
    entry      TEXT NOT NULL
);
";

pub(super) fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Plans each prepared statement once, whatever values it is bound to: without SQLite's query
/// planner stability guarantee, this build (STAT4) re-prepares a cached statement whenever a
/// bound value changes (`heads` was re-parsed and re-planned for every (chat, url) it read, a
/// tenth of the daemon's CPU at workload A). Our queries' plans do not depend on the values.
pub(super) fn plan_once(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(drop)
}

impl Sqlite {
    /// Opens (creating if missing) the state file, taking its lock for this process.
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
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
        // SQLite's page cache (2 MB by default) fills as the file grows and stays full: at
        // workload A it was the heap's largest single part (heaptrack). What a poll and the
        // dispatcher touch — the tails of the append-only tables, the chats' rows, the
        // indexes' inner pages — fits in 512 KB; a page read past it comes from the OS's
        // cache or the log.
        conn.pragma_update(None, "cache_size", CACHE_SIZE)?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| broken(e.to_string()))?;
        conn.execute_batch(ENDPOINTS_GONE)
            .map_err(|e| broken(e.to_string()))?;
        conn.execute_batch(DIGESTS)
            .map_err(|e| broken(e.to_string()))?;
        conn.execute_batch(SILENCES)
            .map_err(|e| broken(e.to_string()))?;
        conn.execute_batch(HISTORY)
            .map_err(|e| broken(e.to_string()))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Sqlite {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            _lock: Arc::new(lock_file),
        })
    }

    /// Opens an existing state file next to a running daemon, for `outbox` commands: no lock,
    /// no schema changes; SQLite's own locking keeps the two writers apart.
    pub fn open_shared(path: &Path) -> Result<Sqlite, StoreError> {
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
        conn.execute_batch(SILENCES)?;
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .open(path)
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Sqlite {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            _lock: Arc::new(lock),
        })
    }

    /// Moves the write-ahead log into the state file from a thread of its own, so no commit
    /// waits for it: SQLite's automatic checkpoint ran inside the commit that crossed 1,000
    /// pages of log, with an fsync of the state file, and the daemon's commits run on its one
    /// runtime thread. Every `CHECKPOINT_EVERY` (1 s), when the log holds more than
    /// `CHECKPOINT_LOG_BYTES` (4 MB), a passive checkpoint (it never waits for a writer) runs on a
    /// connection of its own. The thread ends when the returned handle is dropped.
    pub fn start_checkpointer(&self) -> Result<Checkpointer, StoreError> {
        let own = Connection::open(&self.path)?;
        own.busy_timeout(std::time::Duration::from_secs(5))?;
        self.conn().pragma_update(None, "wal_autocheckpoint", 0)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let wal = {
            let mut p = self.path.clone().into_os_string();
            p.push("-wal");
            PathBuf::from(p)
        };
        std::thread::Builder::new()
            .name("cartat-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
                    if size > CHECKPOINT_LOG_BYTES
                        && let Err(e) =
                            own.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(
                            event = "store.checkpoint_failed",
                            "checkpoint of the state file's log failed: {e}"
                        );
                    }
                }
            })
            .map_err(|e| StoreError::Open {
                path: self.path.clone(),
                reason: format!("cannot start the checkpoint thread: {e}"),
            })?;
        Ok(Checkpointer { _stop: stop })
    }

    /// Moves everything the write-ahead log holds into the state file and empties the log.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(in crate::store) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How often the checkpoint thread looks at the log's size.
pub(crate) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// The log size past which it is checkpointed (SQLite's own default: 1,000 pages of 4 KiB).
pub(crate) const CHECKPOINT_LOG_BYTES: u64 = 4_096_000;

/// The checkpoint thread's handle: dropping it stops the thread (within `CHECKPOINT_EVERY`).
pub struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
}

impl Checkpointer {
    /// A handle with nothing behind it (a backend that checkpoints on its own).
    pub(in crate::store) fn none() -> Checkpointer {
        Checkpointer {
            _stop: std::sync::mpsc::channel().0,
        }
    }
}
