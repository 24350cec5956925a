//! The SQLite backend: one file in WAL mode, one connection, the writes made by the store's
//! writer thread ([`super::group`]).
//!
//! By job: [`open`] (the schema, the lock, the checks), [`poll`] (a chat's stored state and
//! the polls' transactions), [`outbox`] (the dispatcher's and the CLI's queries).

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
pub(super) mod outbox;
mod poll;

impl Sqlite {
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
