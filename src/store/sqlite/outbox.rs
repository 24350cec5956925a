//! The outbox: the dispatcher's queries (due rows, each (chat, url)'s head), attempts'
//! outcomes, endpoints a 410 disabled, and what `outbox list|retry` read and change.

use super::*;

/// The oldest pending row of one (chat, url).
/// The oldest pending row of each (chat, url), if due, oldest first, leaving out the urls of
/// the JSON list `?3`. Written for a plan with no temporary table or sort (the pending rows
/// walked in id order by `outbox_by_state`, each checked against the row before it in its
/// group by `outbox_pending`): the dispatcher runs it on every full scan, and SQLite builds
/// each temporary table with a page cache of its own, allocated and freed every time.
pub(in crate::store) const DUE: &str = "SELECT o.* FROM outbox o
     WHERE o.state = 'pending' AND o.next_attempt_at <= ?1
       AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending'
                       AND p.chat_id = o.chat_id AND p.url = o.url AND p.id < o.id)
       AND NOT EXISTS (SELECT 1 FROM json_each(?3) WHERE value = o.url)
     ORDER BY o.id LIMIT ?2";

/// When the next head is due (see [`DUE`]).
pub(in crate::store) const NEXT_DUE: &str = "SELECT MIN(o.next_attempt_at) FROM outbox o
     WHERE o.state = 'pending'
       AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending'
                       AND p.chat_id = o.chat_id AND p.url = o.url AND p.id < o.id)";

pub(in crate::store) const HEADS: &str = "SELECT * FROM outbox WHERE state = 'pending' AND chat_id = ?1 AND url = ?2 ORDER BY id LIMIT 1";

impl Sqlite {
    pub(super) fn row(r: &rusqlite::Row) -> rusqlite::Result<OutboxRow> {
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
            updated_at_ms: r.get("updated_at")?,
        })
    }

    /// The deliveries to send now: the oldest pending row of each (chat, url), if it is due —
    /// so deliveries for one chat to one endpoint keep their order.
    pub fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.due_excluding(now_ms, limit, &[])
    }

    /// [`Sqlite::due`] without the rows for `urls` (endpoints with no free slot).
    pub fn due_excluding(
        &self,
        now_ms: i64,
        limit: usize,
        urls: &[String],
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(DUE)?;
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
        Ok(conn.prepare_cached(NEXT_DUE)?.query_row([], |r| r.get(0))?)
    }

    pub(super) fn write_outcome(
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

    /// [`Store::disable_endpoint`]'s rows, inside the caller's transaction.
    pub(super) fn write_gone(
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
        self.in_savepoints(outcomes, None, |sp, o| match &o.gone {
            Some((url, fp)) => Self::write_gone(sp, o.id, url, fp, &o.record, o.now_ms).map(Some),
            None => Self::write_outcome(sp, o.id, &o.record, o.now_ms).map(|()| None),
        })
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

    /// Adds a silence; returns its id.
    pub fn add_silence(&self, s: &Silence) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO silences (rule_id, chat_id, until, reason, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![s.rule_id, s.chat_id, s.until_ms, s.reason, s.created_at_ms])?;
        Ok(conn.last_insert_rowid())
    }

    /// The silences in force at `now_ms` (every one when None), oldest first.
    pub fn silences(&self, now_ms: Option<i64>) -> Result<Vec<Silence>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, rule_id, chat_id, until, reason, created_at FROM silences
             WHERE ?1 IS NULL OR until > ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([now_ms], |r| {
            Ok(Silence {
                id: r.get(0)?,
                rule_id: r.get(1)?,
                chat_id: r.get(2)?,
                until_ms: r.get(3)?,
                reason: r.get(4)?,
                created_at_ms: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ends a silence now (kept, as expired, for `silence list --all`); false if there is no
    /// such silence in force.
    pub fn expire_silence(&self, id: i64, now_ms: i64) -> Result<bool, StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached("UPDATE silences SET until = ?2 WHERE id = ?1 AND until > ?2")?
            .execute(params![id, now_ms])?;
        Ok(n > 0)
    }
}
