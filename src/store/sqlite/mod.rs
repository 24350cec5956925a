//! The SQLite backend: one file in WAL mode, one connection, the writes made by the store's
//! writer task ([`super::group`]).
//!
//! By job: `open` (the schema, the lock, the checks), `poll` (a chat's stored state and
//! the polls' transactions), `outbox` (the dispatcher's and the CLI's queries).

use super::*;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::fs::File;
use std::sync::{Arc, Mutex};

/// The SQLite store; cheap to clone, safe to share.
#[derive(Clone)]
pub struct Sqlite {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    _lock: Arc<File>,
}

impl std::fmt::Debug for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sqlite").field("path", &self.path).finish()
    }
}

mod open;
#[cfg(test)]
pub(crate) use open::CHECKPOINT_LOG_BYTES;
pub use open::Checkpointer;
pub(super) mod outbox;
mod poll;

impl Sqlite {
    /// Writes each item in a savepoint of its own inside one transaction (one that fails is
    /// rolled back alone, the others stay); if the transaction itself fails, so does every
    /// item. What group commit is made of: the polls' commits and the deliveries' outcomes.
    /// `failpoint`: hit after the writes, before the commit (crash tests).
    ///
    /// The transaction statements are kept prepared, as every other hot statement: rusqlite's
    /// `Transaction` and `Savepoint` parse `BEGIN`, `SAVEPOINT` and `RELEASE` again each time
    /// (8 % of the daemon's CPU at workload A, two savepoints a poll).
    fn in_savepoints<I, T>(
        &self,
        items: &[&I],
        failpoint: Option<&str>,
        write: impl Fn(&Connection, &I) -> Result<T, StoreError>,
    ) -> Vec<Result<T, String>> {
        let conn = self.conn();
        let run = |sql: &str| -> Result<(), StoreError> {
            conn.prepare_cached(sql)?.execute([])?;
            Ok(())
        };
        if let Err(e) = run("BEGIN IMMEDIATE") {
            let e = e.to_string();
            return items.iter().map(|_| Err(e.clone())).collect();
        }
        // Rolled back unless committed, also when a write panics or the commit fails: the
        // connection is never left inside a transaction.
        let _open = Open(&conn);
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let one = run("SAVEPOINT item").and_then(|()| match write(&conn, item) {
                Ok(out) => run("RELEASE item").map(|()| out),
                Err(e) => {
                    let undone = run("ROLLBACK TO item").and_then(|()| run("RELEASE item"));
                    Err(undone.err().unwrap_or(e))
                }
            });
            results.push(one.map_err(|e| e.to_string()));
        }
        if let Some(name) = failpoint {
            crate::failpoint::hit(name);
        }
        if let Err(e) = run("COMMIT") {
            let e = e.to_string();
            for r in &mut results {
                if r.is_ok() {
                    *r = Err(e.clone());
                }
            }
        }
        results
    }
}

/// An open transaction: rolled back when dropped.
struct Open<'a>(&'a Connection);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if !self.0.is_autocommit() {
            let _ = self.0.execute_batch("ROLLBACK");
        }
    }
}
