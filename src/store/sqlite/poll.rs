//! A poll's transaction: loading a chat's stored state, and writing what polls found —
//! watermark, seen ids, rule memory and outbox rows together.

use super::*;

impl Sqlite {
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

    pub(super) fn chat_row(conn: &Connection, chat_id: &str) -> Result<ChatState, StoreError> {
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
    /// [`Sqlite::commit_polls`].)
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
        self.in_savepoints(polls, Some("in_transaction"), |sp, c| {
            Self::write_poll(sp, c)
        })
    }

    /// The rows of one poll, inside the caller's transaction.
    pub(super) fn write_poll(tx: &Connection, c: &PollCommit) -> Result<usize, StoreError> {
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
        {
            // A firing whose window was sealed already (its poll's commit came in after the
            // window's end was reached) goes to the next window: never lost, never sent twice.
            let mut ins = tx.prepare_cached(
                "INSERT INTO digest_items (rule_id, grp, window_start, window_secs, window_end, chat_id, item_key, fired_at, item)
                 SELECT ?1, ?2, w, ?4, w + ?4, ?5, ?6, ?7, ?8 FROM (SELECT max(?3, coalesce(
                     (SELECT sealed_until FROM digest_sealed WHERE rule_id = ?1 AND grp = ?2), ?3)) AS w)
                 WHERE true
                 ON CONFLICT DO NOTHING",
            )?;
            for it in &c.digest_items {
                ins.execute(params![
                    it.rule_id,
                    it.group,
                    it.window_start,
                    it.window_secs,
                    it.chat_id,
                    it.item_key,
                    it.fired_at,
                    it.item
                ])?;
            }
        }
        let queued = Self::queue(tx, &c.deliveries, c.now_ms)?;
        // Ids below the low-water mark can only come back with a larger limit, where the diff
        // treats them as history; keep the table small.
        tx.prepare_cached("DELETE FROM seen WHERE chat_id = ?1 AND ts < ?2")?
            .execute(params![c.chat_id, c.low_water])?;
        // Message cooldowns count in message time, chat-rule ones in our time: a row is
        // spent only once both clocks are past it.
        tx.prepare_cached("DELETE FROM cooldowns WHERE chat_id = ?1 AND until < ?2")?
            .execute(params![c.chat_id, now_s.min(c.watermark)])?;
        if !c.history.is_empty() {
            let mut insert = tx.prepare_cached(
                "INSERT INTO run_history (at_ms, chat_id, message_id, rules, entry) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for e in &c.history {
                // Strings and numbers only: serializing cannot fail.
                let entry = serde_json::to_string(e).unwrap_or_default();
                insert.execute(params![
                    e.at_ms,
                    e.chat_id,
                    e.message_id,
                    super::super::history_rules(e),
                    entry
                ])?;
            }
        }
        Ok(queued)
    }

    pub fn history(&self, q: &HistoryQuery) -> Result<Vec<HistoryEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, entry FROM run_history
             WHERE (?1 IS NULL OR chat_id = ?1 OR substr(chat_id, -(length(?1) + 1)) = '/' || ?1)
               AND (?2 IS NULL OR instr(rules, ',' || ?2 || ',') > 0)
             ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![q.chat, q.rule, i64::try_from(q.limit).unwrap_or(i64::MAX)],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, text) = row?;
            // An entry this binary cannot read (written by a newer one) is left out, not fatal.
            if let Ok(mut e) = serde_json::from_str::<HistoryEntry>(&text) {
                e.id = id;
                out.push(e);
            }
        }
        Ok(out)
    }

    pub fn prune_history(&self, keep: usize, before_ms: i64) -> Result<usize, StoreError> {
        let conn = self.conn();
        Ok(conn
            .prepare_cached(
                "DELETE FROM run_history WHERE at_ms < ?1
                 OR id <= (SELECT id FROM run_history ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![before_ms, i64::try_from(keep).unwrap_or(i64::MAX)])?)
    }
}

impl Sqlite {
    /// Queues deliveries in the caller's transaction (a delivery already queued, same id, is
    /// left as it is; one to an endpoint disabled by a 410 is queued as `gone`). Returns how
    /// many were new.
    pub(super) fn queue(
        tx: &Connection,
        deliveries: &[Delivery],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let mut queued = 0;
        let mut ins = tx.prepare_cached(
            "INSERT INTO outbox (delivery_id, rule_id, chat_id, message_key, action_index, url, headers, body,
                                 state, attempts, next_attempt_at, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,
                     CASE WHEN EXISTS (SELECT 1 FROM endpoints_gone g WHERE g.url = ?6) THEN 'gone' ELSE 'pending' END,
                     0, ?9, ?9, ?9)
             ON CONFLICT (delivery_id) DO NOTHING",
        )?;
        for d in deliveries {
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
                now_ms
            ])?;
        }
        Ok(queued)
    }

    /// Seals, at `now_s`, every digest window that ended by `ended_by` (`now_s`, or later to
    /// clear what rules that are gone collected), in one transaction: `seal` turns a
    /// window's firings (the first [`DIGEST_LISTED_MAX`], oldest first, and how many there
    /// were) into deliveries, which are queued as the window's firings are deleted and the
    /// window is marked sealed. A crash before the commit leaves the firings to seal again
    /// (with the same delivery ids); after it, nothing is left to send twice.
    pub fn seal_digests(
        &self,
        now_s: i64,
        ended_by: i64,
        seal: &mut SealFn<'_>,
    ) -> Result<Vec<SealedDigest>, StoreError> {
        let conn = self.conn();
        let windows: Vec<DigestWindow> = conn
            .prepare_cached(
                "SELECT DISTINCT rule_id, grp, window_start, window_secs FROM digest_items
                 WHERE window_end <= ?1 ORDER BY window_start, rule_id, grp",
            )?
            .query_map([ended_by], |r| {
                Ok(DigestWindow {
                    rule_id: r.get(0)?,
                    group: r.get(1)?,
                    window_start: r.get(2)?,
                    window_secs: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let _open = Open(&conn);
        let mut sealed = Vec::with_capacity(windows.len());
        for w in windows {
            let count: i64 = conn
                .prepare_cached(
                    "SELECT count(*) FROM digest_items WHERE rule_id = ?1 AND grp = ?2 AND window_start = ?3 AND window_secs = ?4",
                )?
                .query_row(params![w.rule_id, w.group, w.window_start, w.window_secs], |r| r.get(0))?;
            let items: Vec<String> = conn
                .prepare_cached(
                    "SELECT item FROM digest_items WHERE rule_id = ?1 AND grp = ?2 AND window_start = ?3
                       AND window_secs = ?5
                     ORDER BY fired_at, chat_id, item_key LIMIT ?4",
                )?
                .query_map(
                    params![
                        w.rule_id,
                        w.group,
                        w.window_start,
                        DIGEST_LISTED_MAX as i64,
                        w.window_secs
                    ],
                    |r| r.get(0),
                )?
                .collect::<Result<_, _>>()?;
            let deliveries = seal(&w, &items, count as usize);
            let queued = Self::queue(&conn, &deliveries, now_s * 1000)?;
            conn.prepare_cached(
                "DELETE FROM digest_items WHERE rule_id = ?1 AND grp = ?2 AND window_start = ?3 AND window_secs = ?4",
            )?
            .execute(params![w.rule_id, w.group, w.window_start, w.window_secs])?;
            conn.prepare_cached(
                "INSERT INTO digest_sealed (rule_id, grp, sealed_until) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO UPDATE SET sealed_until = max(sealed_until, excluded.sealed_until)",
            )?
            .execute(params![w.rule_id, w.group, w.window_start + w.window_secs])?;
            sealed.push(SealedDigest {
                window: w,
                count: count as usize,
                deliveries: deliveries.len(),
                queued,
            });
        }
        crate::failpoint::hit("digest_before_commit");
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(sealed)
    }

    /// How many firings wait for their digest, per rule (for `status` and the tests).
    pub fn pending_digest_items(&self) -> Result<HashMap<String, i64>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT rule_id, count(*) FROM digest_items GROUP BY rule_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// A seen id's (ts, fingerprint) from columns `at` and `at + 1`.
pub(super) fn seen_id_at(r: &rusqlite::Row, at: usize) -> rusqlite::Result<SeenId> {
    Ok(SeenId {
        ts: r.get(at)?,
        fingerprint: r.get::<_, i64>(at + 1)? as u64,
    })
}

/// Stored JSON, or the empty value if a row was somehow mangled (it is rewritten next poll).
pub(super) fn from_json_or_default<T: serde::de::DeserializeOwned + Default>(text: String) -> T {
    serde_json::from_str(&text).unwrap_or_default()
}

/// One chat's rows of a per-(rule, chat) table, keyed by rule id: `sql` selects `rule_id` first
/// and takes the chat id as `?1`; `value` reads the rest of a row.
pub(super) fn per_rule<T>(
    conn: &Connection,
    sql: &str,
    chat_id: &str,
    value: impl Fn(&rusqlite::Row) -> rusqlite::Result<T>,
) -> Result<HashMap<String, T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([chat_id], |r| Ok((r.get::<_, String>(0)?, value(r)?)))?;
    Ok(rows.collect::<Result<HashMap<_, _>, _>>()?)
}
