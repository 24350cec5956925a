//! The PostgreSQL backend (`state.url: postgres://…`): the same tables and transactions as the
//! SQLite one, in a database that outlives any one machine.
//!
//! The client is the `postgres` crate, tokio-postgres's blocking wrapper: the store's
//! operations are synchronous by design (see [`super`]), and tokio-postgres alone would need
//! an async seam. It runs its own small runtime, which must not be entered from inside
//! another, so the connection lives on a thread of its own and every operation is a job sent
//! to it and waited for — from the daemon's store writer, its server, or a command alike. Not
//! sqlx: its query macros want a database at build time (or an offline cache to keep in
//! step), and without them it is a larger build (≈ 120 crates against ≈ 25 for this client)
//! for no gain here.
//!
//! Schema changes are versioned (`cartat_schema`) and run at start under a transaction-scoped
//! advisory lock, so two instances starting together do not race. One daemon per database:
//! it holds a session advisory lock (a second is refused, as with a SQLite file's lock) until
//! instances share chats through leases. The url's password never reaches a message.

use super::*;
use ::postgres::types::ToSql;
use ::postgres::{Client, NoTls, Transaction};
use std::sync::mpsc;

/// The schema version this binary writes.
const SCHEMA_VERSION: i64 = 3;
/// The advisory lock key of schema changes (any fixed number: "cartat-s").
const MIGRATION_LOCK: i64 = 0x6361_7274_6174_2d73;
/// The advisory lock key a daemon holds for its database ("cartat-d").
const DAEMON_LOCK: i64 = 0x6361_7274_6174_2d64;
/// The advisory lock key of a lease cycle ("cartat-l"): one instance's cycle at a time, so two
/// that start together do not both count themselves alone and both take a whole budget.
const LEASE_LOCK: i64 = 0x6361_7274_6174_2d6c;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cartat_schema (version BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS chats (
    chat_id TEXT PRIMARY KEY, watermark BIGINT NOT NULL, low_water BIGINT NOT NULL,
    first_seen BIGINT NOT NULL, last_polled BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (
    chat_id TEXT NOT NULL, from_me BOOLEAN NOT NULL, msg_id TEXT NOT NULL, ts BIGINT NOT NULL,
    fingerprint BIGINT NOT NULL, PRIMARY KEY (chat_id, from_me, msg_id));
CREATE INDEX IF NOT EXISTS seen_by_time ON seen (chat_id, ts);
CREATE TABLE IF NOT EXISTS cooldowns (
    rule_id TEXT NOT NULL, chat_id TEXT NOT NULL, until BIGINT NOT NULL, PRIMARY KEY (rule_id, chat_id));
CREATE TABLE IF NOT EXISTS thresholds (
    rule_id TEXT NOT NULL, chat_id TEXT NOT NULL, hits TEXT NOT NULL, PRIMARY KEY (rule_id, chat_id));
CREATE TABLE IF NOT EXISTS script_state (
    rule_id TEXT NOT NULL, chat_id TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (rule_id, chat_id));
CREATE TABLE IF NOT EXISTS chat_rules (
    rule_id TEXT NOT NULL, chat_id TEXT NOT NULL, since BIGINT, fired BOOLEAN NOT NULL,
    PRIMARY KEY (rule_id, chat_id));
CREATE TABLE IF NOT EXISTS outbox (
    id BIGSERIAL PRIMARY KEY, delivery_id TEXT NOT NULL UNIQUE, rule_id TEXT NOT NULL,
    chat_id TEXT NOT NULL, message_key TEXT NOT NULL, action_index BIGINT NOT NULL,
    url TEXT NOT NULL, headers TEXT NOT NULL, body TEXT NOT NULL, state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0, next_attempt_at BIGINT NOT NULL, last_status BIGINT,
    last_error TEXT, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (state, chat_id, url, id);
CREATE TABLE IF NOT EXISTS endpoints_gone (
    url TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, since BIGINT NOT NULL, delivery_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS digest_items (
    rule_id TEXT NOT NULL, grp TEXT NOT NULL, window_start BIGINT NOT NULL,
    window_secs BIGINT NOT NULL, window_end BIGINT NOT NULL, chat_id TEXT NOT NULL,
    item_key TEXT NOT NULL, fired_at BIGINT NOT NULL, item TEXT NOT NULL,
    PRIMARY KEY (rule_id, chat_id, item_key));
CREATE INDEX IF NOT EXISTS digest_items_by_end ON digest_items (window_end);
CREATE TABLE IF NOT EXISTS digest_sealed (
    rule_id TEXT NOT NULL, grp TEXT NOT NULL, sealed_until BIGINT NOT NULL, PRIMARY KEY (rule_id, grp));
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY, seen_at BIGINT NOT NULL, started_at BIGINT NOT NULL);
ALTER TABLE instances ADD COLUMN IF NOT EXISTS divisor BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN IF NOT EXISTS divisor_at BIGINT NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS leases (
    chat_id TEXT PRIMARY KEY, owner TEXT, token BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS silences (
    id BIGSERIAL PRIMARY KEY, rule_id TEXT, chat_id TEXT, until BIGINT NOT NULL,
    reason TEXT NOT NULL, created_at BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS run_history (
    id BIGSERIAL PRIMARY KEY, at_ms BIGINT NOT NULL, chat_id TEXT NOT NULL, message_id TEXT,
    rules TEXT NOT NULL, entry TEXT NOT NULL);
";

/// The database's clock in unix milliseconds: every instance measures leases by it, not by
/// its own clock.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::BIGINT";

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// Query parameters, as the client takes them.
type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

/// The connection and its prepared statements: each SQL text is prepared once per connection
/// (a statement given as text is otherwise prepared on every call, a round trip of its own).
struct Conn {
    client: Client,
    cache: HashMap<String, ::postgres::Statement>,
}

/// The statement for `sql`, prepared on `client` the first time.
fn prepared<C: ::postgres::GenericClient>(
    client: &mut C,
    cache: &mut HashMap<String, ::postgres::Statement>,
    sql: &str,
) -> Result<::postgres::Statement, ::postgres::Error> {
    if let Some(s) = cache.get(sql) {
        return Ok(s.clone());
    }
    let s = client.prepare(sql)?;
    cache.insert(sql.to_string(), s.clone());
    Ok(s)
}

impl Conn {
    fn query(
        &mut self,
        sql: &str,
        p: Params<'_>,
    ) -> Result<Vec<::postgres::Row>, ::postgres::Error> {
        let s = prepared(&mut self.client, &mut self.cache, sql)?;
        self.client.query(&s, p)
    }
    fn query_one(
        &mut self,
        sql: &str,
        p: Params<'_>,
    ) -> Result<::postgres::Row, ::postgres::Error> {
        let s = prepared(&mut self.client, &mut self.cache, sql)?;
        self.client.query_one(&s, p)
    }
    fn query_opt(
        &mut self,
        sql: &str,
        p: Params<'_>,
    ) -> Result<Option<::postgres::Row>, ::postgres::Error> {
        let s = prepared(&mut self.client, &mut self.cache, sql)?;
        self.client.query_opt(&s, p)
    }
    fn execute(&mut self, sql: &str, p: Params<'_>) -> Result<u64, ::postgres::Error> {
        let s = prepared(&mut self.client, &mut self.cache, sql)?;
        self.client.execute(&s, p)
    }
    #[cfg(test)]
    fn batch_execute(&mut self, sql: &str) -> Result<(), ::postgres::Error> {
        self.client.batch_execute(sql)
    }
    fn transaction(&mut self) -> Result<Tx<'_>, ::postgres::Error> {
        Ok(Tx {
            tx: self.client.transaction()?,
            cache: &mut self.cache,
        })
    }
}

/// A transaction (or savepoint) of a [`Conn`], with its statements.
struct Tx<'a> {
    tx: Transaction<'a>,
    cache: &'a mut HashMap<String, ::postgres::Statement>,
}

impl Tx<'_> {
    fn query(
        &mut self,
        sql: &str,
        p: Params<'_>,
    ) -> Result<Vec<::postgres::Row>, ::postgres::Error> {
        let s = prepared(&mut self.tx, self.cache, sql)?;
        self.tx.query(&s, p)
    }
    fn query_one(
        &mut self,
        sql: &str,
        p: Params<'_>,
    ) -> Result<::postgres::Row, ::postgres::Error> {
        let s = prepared(&mut self.tx, self.cache, sql)?;
        self.tx.query_one(&s, p)
    }
    fn query_opt(
        &mut self,
        sql: &str,
        p: Params<'_>,
    ) -> Result<Option<::postgres::Row>, ::postgres::Error> {
        let s = prepared(&mut self.tx, self.cache, sql)?;
        self.tx.query_opt(&s, p)
    }
    fn execute(&mut self, sql: &str, p: Params<'_>) -> Result<u64, ::postgres::Error> {
        let s = prepared(&mut self.tx, self.cache, sql)?;
        self.tx.execute(&s, p)
    }
    fn savepoint(&mut self, name: &str) -> Result<Tx<'_>, ::postgres::Error> {
        Ok(Tx {
            tx: self.tx.savepoint(name)?,
            cache: &mut *self.cache,
        })
    }
    fn commit(self) -> Result<(), ::postgres::Error> {
        self.tx.commit()
    }
    fn rollback(self) -> Result<(), ::postgres::Error> {
        self.tx.rollback()
    }
}

/// What one lease cycle found: the leases this instance holds (chat, fencing token), how many
/// instances are alive, and what changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    pub held: Vec<(String, i64)>,
    pub live: usize,
    pub taken: Vec<String>,
    pub released: Vec<String>,
    /// Whether every other instance alive has lowered its budget share to the one for `live`
    /// instances at least a budget window ago (a joiner polls only then).
    pub settled: bool,
}

/// A joiner's wait before it takes chats ([`Postgres::lease_cycle`]).
#[derive(Clone, Copy, Debug)]
pub struct JoinWait {
    /// How long an instance's requests at its old share count in its budget's window after it
    /// lowered the share (the window and its margin).
    pub window_ms: i64,
    /// For an instance that does not say its share (an older version): how long after this
    /// one's start it surely has lowered it.
    pub settle_ms: i64,
}

/// The chats the dispatcher may send for, and until when (this instance's clock): past it,
/// nothing (a paused instance must not send for chats it may have lost).
type Scope = std::sync::Arc<std::sync::RwLock<Option<(Vec<String>, std::time::Instant)>>>;

/// The PostgreSQL store; cheap to clone, safe to share.
#[derive(Clone)]
pub struct Postgres {
    jobs: mpsc::Sender<Job>,
    /// The url without its password, for messages.
    shown: PathBuf,
    /// In a cluster: the chats whose outbox rows this instance sends (None: all of them).
    scope: Scope,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.shown)
            .finish()
    }
}

/// A PostgreSQL url as messages show it: user, hosts, ports and database only — never a
/// password, whether in `user:secret@` or in `?password=secret`, nor any other option.
pub fn redacted(url: &str) -> String {
    let Ok(c) = url.parse::<::postgres::Config>() else {
        // Not a url the client reads: the scheme and host part only, up to any `@` or `?`.
        let (scheme, rest) = url.split_once("://").unwrap_or(("?", url));
        let host = rest.rsplit('@').next().unwrap_or("");
        let host = host.split(['?', '/']).next().unwrap_or("");
        return format!("{scheme}://{host}/…");
    };
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .zip(c.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(h, port)| match h {
            ::postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
            #[cfg(unix)]
            ::postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        c.get_user().unwrap_or(""),
        hosts.join(","),
        c.get_dbname().unwrap_or("")
    )
}

/// How the connection is made: the url's settings, with timeouts so that a database that
/// stops answering fails a call instead of holding the daemon for the kernel's minutes.
fn connect(url: &str) -> Result<Client, StoreError> {
    let mut config: ::postgres::Config = url.parse().map_err(pg)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    config.keepalives(true);
    config.keepalives_idle(std::time::Duration::from_secs(30));
    #[cfg(target_os = "linux")]
    config.tcp_user_timeout(std::time::Duration::from_secs(30));
    let mut client = config.connect(NoTls).map_err(pg)?;
    // The server's notices ("already exists, skipping") are not the daemon's to log.
    client
        .batch_execute("SET client_min_messages TO warning")
        .map_err(pg)?;
    Ok(client)
}

/// The server's own words when it refused (`db error` alone says nothing), else the client's.
fn pg(e: ::postgres::Error) -> StoreError {
    StoreError::Postgres(match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({}; {detail})", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    })
}

impl Postgres {
    /// Connects, brings the schema up to date, and (`daemon`) takes the database's daemon lock.
    pub fn open(url: &str, daemon: bool) -> Result<Postgres, StoreError> {
        let shown = redacted(url);
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, opened) = mpsc::sync_channel::<Result<(), StoreError>>(1);
        let url = url.to_string();
        let shown_for_thread = shown.clone();
        std::thread::Builder::new()
            .name("cartat-postgres".into())
            .spawn(move || {
                let open = |first: bool| -> Result<Client, StoreError> {
                    let mut client = connect(&url).map_err(|e| StoreError::Open {
                        path: PathBuf::from(&shown_for_thread),
                        reason: e.to_string(),
                    })?;
                    if first {
                        migrate(&mut client)?;
                    }
                    if daemon {
                        let held: bool = client
                            .query_one("SELECT pg_try_advisory_lock($1)", &[&DAEMON_LOCK])
                            .map_err(pg)?
                            .get(0);
                        if !held {
                            return Err(StoreError::LockedDatabase {
                                url: shown_for_thread.clone(),
                            });
                        }
                    }
                    Ok(client)
                };
                let mut conn = match open(true) {
                    Ok(client) => {
                        let _ = ready.send(Ok(()));
                        Conn {
                            client,
                            cache: HashMap::new(),
                        }
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = queue.recv() {
                    // The server restarted or the network broke: connect again (taking the
                    // daemon's lock again) before the job; if that fails, the job fails with it.
                    if conn.client.is_closed() {
                        match open(false) {
                            Ok(client) => {
                                // Statements belong to their connection.
                                conn = Conn {
                                    client,
                                    cache: HashMap::new(),
                                };
                            }
                            Err(e) => {
                                tracing::error!(event = "store.reconnect_failed", "the PostgreSQL connection was lost and could not be made again: {e}");
                            }
                        }
                    }
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Postgres(e.to_string()))?;
        opened
            .recv()
            .map_err(|_| StoreError::Postgres("the connection thread stopped".into()))??;
        Ok(Postgres {
            jobs,
            shown: PathBuf::from(shown),
            scope: Scope::default(),
        })
    }

    /// Runs `f` on the connection's thread and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, answer) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |c| {
                let _ = done.send(f(c));
            }))
            .map_err(|_| StoreError::Postgres("the connection thread stopped".into()))?;
        answer
            .recv()
            .unwrap_or_else(|_| Err(StoreError::Postgres("the connection thread stopped".into())))
    }

    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// Runs SQL as it is (tests that bend the schema).
    #[cfg(test)]
    pub(crate) fn execute_batch(&self, sql: &str) -> Result<(), StoreError> {
        let sql = sql.to_string();
        self.call(move |c| c.batch_execute(&sql).map_err(pg))
    }

    /// Limits the dispatcher's queries to `chats` until `until` (None: no limit).
    pub fn set_scope(&self, scope: Option<(Vec<String>, std::time::Instant)>) {
        *self.scope.write().unwrap_or_else(|e| e.into_inner()) = scope;
    }

    /// The chats the dispatcher may send for now (None: every chat).
    fn scope_now(&self) -> Option<Vec<String>> {
        match &*self.scope.read().unwrap_or_else(|e| e.into_inner()) {
            None => None,
            Some((chats, until)) if std::time::Instant::now() < *until => Some(chats.clone()),
            Some(_) => Some(Vec::new()),
        }
    }

    /// One lease cycle of instance `me`, in one transaction: says it is alive, renews the
    /// leases it holds on `chats`, gives up what is over its share (only chats with nothing
    /// pending in the outbox, so no delivery is in flight here when another instance takes
    /// them) and, unless `joining`, takes free or expired ones up to its share (a fair share:
    /// the chats over the instances alive, in random order, so instances that start together
    /// do not all reach for the same chats). Leases last `ttl_ms` by the database's clock.
    pub fn lease_cycle(
        &self,
        me: &str,
        chats: &[String],
        ttl_ms: i64,
        joining: Option<JoinWait>,
    ) -> Result<LeaseView, StoreError> {
        let me = me.to_string();
        let chats = chats.to_vec();
        self.call(move |c| {
            let mut tx = c.transaction().map_err(pg)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LEASE_LOCK])
                .map_err(pg)?;
            tx.execute(
                &format!(
                    "INSERT INTO instances (id, seen_at, started_at) VALUES ($1, {NOW_MS}, {NOW_MS})
                     ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at"
                ),
                &[&me],
            )
            .map_err(pg)?;
            tx.execute(
                "INSERT INTO leases (chat_id) SELECT unnest($1::TEXT[]) ON CONFLICT DO NOTHING",
                &[&chats],
            )
            .map_err(pg)?;
            let live: i64 = tx
                .query_one(
                    &format!("SELECT count(*) FROM instances WHERE seen_at > {NOW_MS} - $1::BIGINT"),
                    &[&ttl_ms],
                )
                .map_err(pg)?
                .get(0);
            let live = live.max(1) as usize;
            // The budget share this instance's poller takes after this cycle is the account's
            // divided by `live`: said here, with since when it is that low (kept when the share
            // grows: it was lower before), for a joiner to wait on.
            tx.execute(
                &format!(
                    "UPDATE instances SET divisor_at = CASE WHEN divisor < $2 THEN {NOW_MS} ELSE divisor_at END,
                                          divisor = $2
                     WHERE id = $1"
                ),
                &[&me, &(live as i64)],
            )
            .map_err(pg)?;
            // Whether every other instance alive has taken the share of `live` instances long
            // enough ago that its requests at a larger one have left the budget's window.
            let (window_ms, settle_ms) = joining.map_or((0, 0), |j| (j.window_ms, j.settle_ms));
            let unsettled: i64 = tx
                .query_one(
                    &format!(
                        "SELECT count(*) FROM instances i
                         WHERE i.id <> $1 AND i.seen_at > {NOW_MS} - $2::BIGINT
                           AND NOT ((i.divisor >= $3 AND i.divisor_at <= {NOW_MS} - $4::BIGINT)
                                 OR (i.divisor = 0 AND (SELECT started_at FROM instances WHERE id = $1)
                                                       <= {NOW_MS} - $5::BIGINT))"
                    ),
                    &[&me, &ttl_ms, &(live as i64), &window_ms, &settle_ms],
                )
                .map_err(pg)?
                .get(0);
            let settled = unsettled == 0;
            let share = chats.len().div_ceil(live);
            // Chats no longer in the config are let go.
            tx.execute(
                "UPDATE leases SET owner = NULL, expires_at = 0 WHERE owner = $1 AND NOT (chat_id = ANY($2))",
                &[&me, &chats],
            )
            .map_err(pg)?;
            let mut held: Vec<(String, i64)> = tx
                .query(
                    &format!(
                        "UPDATE leases SET expires_at = {NOW_MS} + $3::BIGINT
                         WHERE owner = $1 AND expires_at > {NOW_MS} AND chat_id = ANY($2)
                         RETURNING chat_id, token"
                    ),
                    &[&me, &chats, &ttl_ms],
                )
                .map_err(pg)?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            // Instances alive (heard from in the last half of a lease's life: not one that just
            // died) that hold less than their share: what is over ours goes to them.
            let needy: i64 = tx
                .query_one(
                    &format!(
                        "SELECT count(*) FROM instances i
                         WHERE i.id <> $1 AND i.seen_at > {NOW_MS} - $2::BIGINT / 2
                           AND (SELECT count(*) FROM leases l
                                WHERE l.owner = i.id AND l.expires_at > {NOW_MS}) < $3"
                    ),
                    &[&me, &ttl_ms, &(share as i64)],
                )
                .map_err(pg)?
                .get(0);
            let mut released = Vec::new();
            if held.len() > share && needy > 0 {
                let over = (held.len() - share) as i64;
                released = tx
                    .query(
                        "UPDATE leases SET owner = NULL, expires_at = 0 WHERE chat_id IN (
                             SELECT l.chat_id FROM leases l WHERE l.owner = $1
                               AND NOT EXISTS (SELECT 1 FROM outbox o
                                               WHERE o.chat_id = l.chat_id AND o.state = 'pending')
                             ORDER BY l.chat_id DESC LIMIT $2 FOR UPDATE)
                         RETURNING chat_id",
                        &[&me, &over],
                    )
                    .map_err(pg)?
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect();
                held.retain(|(chat, _)| !released.contains(chat));
            }
            let mut taken = Vec::new();
            if joining.is_none() || settled {
                // Up to our share; and every chat nobody holds, over it if need be (an instance
                // that died still counts as alive for a while, and its chats must not wait for
                // that): the over-share goes back when an instance needs it.
                let want = if held.len() < share {
                    (share - held.len()) as i64
                } else {
                    0
                };
                let free: i64 = tx
                    .query_one(
                        &format!(
                            "SELECT count(*) FROM leases
                             WHERE chat_id = ANY($1) AND (owner IS NULL OR expires_at <= {NOW_MS})"
                        ),
                        &[&chats],
                    )
                    .map_err(pg)?
                    .get(0);
                let want = if needy > 0 { want } else { want.max(free) };
                let got: Vec<(String, i64)> = tx
                    .query(
                        &format!(
                            "UPDATE leases SET owner = $1, token = token + 1, expires_at = {NOW_MS} + $3::BIGINT
                             WHERE chat_id IN (
                                 SELECT chat_id FROM leases
                                 WHERE chat_id = ANY($2) AND (owner IS NULL OR expires_at <= {NOW_MS})
                                 ORDER BY random() LIMIT $4 FOR UPDATE SKIP LOCKED)
                             RETURNING chat_id, token"
                        ),
                        &[&me, &chats, &ttl_ms, &want],
                    )
                    .map_err(pg)?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
                taken = got.iter().map(|(c, _)| c.clone()).collect();
                held.extend(got);
            }
            tx.execute(
                &format!("DELETE FROM instances WHERE seen_at < {NOW_MS} - 10 * $1::BIGINT"),
                &[&ttl_ms],
            )
            .map_err(pg)?;
            tx.commit().map_err(pg)?;
            held.sort();
            Ok(LeaseView {
                held,
                live,
                taken,
                released,
                settled,
            })
        })
    }

    /// Gives up every lease of `me` at once (a clean stop: the others take the chats over
    /// without waiting for them to expire) and says it is gone.
    pub fn release_all(&self, me: &str) -> Result<usize, StoreError> {
        let me = me.to_string();
        self.call(move |c| {
            let n = c
                .execute(
                    "UPDATE leases SET owner = NULL, expires_at = 0 WHERE owner = $1",
                    &[&me],
                )
                .map_err(pg)?;
            c.execute("DELETE FROM instances WHERE id = $1", &[&me])
                .map_err(pg)?;
            Ok(n as usize)
        })
    }

    /// The instances alive and how many leases each holds, for `cluster status`.
    pub fn cluster_status(&self, ttl_ms: i64) -> Result<Vec<(String, i64, i64)>, StoreError> {
        self.call(move |c| {
            let rows = c
                .query(
                    &format!(
                        "SELECT i.id, {NOW_MS} - i.seen_at,
                                (SELECT count(*) FROM leases l WHERE l.owner = i.id AND l.expires_at > {NOW_MS})
                         FROM instances i WHERE i.seen_at > {NOW_MS} - $1::BIGINT ORDER BY i.id"
                    ),
                    &[&ttl_ms],
                )
                .map_err(pg)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
        })
    }

    pub fn load_chat(&self, chat_id: &str) -> Result<(ChatState, Memory), StoreError> {
        let chat = chat_id.to_string();
        self.call(move |c| {
            let mut state = ChatState::default();
            if let Some(r) = c
                .query_opt(
                    "SELECT watermark, low_water, first_seen FROM chats WHERE chat_id = $1",
                    &[&chat],
                )
                .map_err(pg)?
            {
                state.known = true;
                state.watermark = r.get(0);
                state.low_water = r.get(1);
                state.first_seen = r.get(2);
                for r in c
                    .query(
                        "SELECT from_me, msg_id, ts, fingerprint FROM seen WHERE chat_id = $1",
                        &[&chat],
                    )
                    .map_err(pg)?
                {
                    let key = MessageKey {
                        from_me: r.get(0),
                        id: r.get(1),
                    };
                    let fp: i64 = r.get(3);
                    state.seen.insert(
                        key,
                        SeenId {
                            ts: r.get(2),
                            fingerprint: fp as u64,
                        },
                    );
                }
            }
            Ok((state, memory_of(c, &chat)?))
        })
    }

    pub fn rule_memory(&self, chat_id: &str) -> Result<Memory, StoreError> {
        let chat = chat_id.to_string();
        self.call(move |c| memory_of(c, &chat))
    }

    pub fn commit_poll(&self, c: &PollCommit) -> Result<usize, String> {
        self.commit_polls(&[c])
            .pop()
            .unwrap_or_else(|| Err("no result for the commit".into()))
    }

    /// Several polls in one transaction, one savepoint each (as SQLite's group commit).
    pub fn commit_polls(&self, polls: &[&PollCommit]) -> Vec<Result<usize, String>> {
        let owned: Vec<PollCommit> = polls.iter().map(|p| (*p).clone()).collect();
        let n = owned.len();
        in_savepoints(self, owned, Some("in_transaction"), write_poll)
            .unwrap_or_else(|e| vec![Err(e.to_string()); n])
    }

    pub fn record_outcomes(&self, outcomes: &[&Outcome]) -> Vec<Result<Option<usize>, String>> {
        let owned: Vec<Outcome> = outcomes.iter().map(|o| (*o).clone()).collect();
        let n = owned.len();
        in_savepoints(self, owned, None, |tx, o| match &o.gone {
            Some((url, fp)) => write_gone(tx, o.id, url, fp, &o.record, o.now_ms).map(Some),
            None => write_outcome(tx, o.id, &o.record, o.now_ms).map(|()| None),
        })
        .unwrap_or_else(|e| vec![Err(e.to_string()); n])
    }

    pub fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        self.due_excluding(now_ms, limit, &[])
    }

    pub fn due_excluding(
        &self,
        now_ms: i64,
        limit: usize,
        urls: &[String],
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let urls = urls.to_vec();
        let scope = self.scope_now();
        self.call(move |c| {
            let rows = c
                .query(
                    "SELECT o.* FROM outbox o
                     WHERE o.state = 'pending' AND o.next_attempt_at <= $1
                       AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending'
                                       AND p.chat_id = o.chat_id AND p.url = o.url AND p.id < o.id)
                       AND NOT (o.url = ANY($3))
                       AND ($4::TEXT[] IS NULL OR o.chat_id = ANY($4))
                     ORDER BY o.id LIMIT $2",
                    &[
                        &now_ms as &(dyn ToSql + Sync),
                        &(limit as i64),
                        &urls,
                        &scope,
                    ],
                )
                .map_err(pg)?;
            Ok(rows.iter().map(row).collect())
        })
    }

    pub fn heads(&self, groups: &[(String, String)]) -> Result<Vec<OutboxRow>, StoreError> {
        let mut groups = groups.to_vec();
        if let Some(scope) = self.scope_now() {
            groups.retain(|(chat, _)| scope.contains(chat));
        }
        self.call(move |c| {
            let mut rows = Vec::with_capacity(groups.len());
            for (chat, url) in &groups {
                if let Some(r) = c
                    .query_opt(
                        "SELECT * FROM outbox WHERE state = 'pending' AND chat_id = $1 AND url = $2 ORDER BY id LIMIT 1",
                        &[chat, url],
                    )
                    .map_err(pg)?
                {
                    rows.push(row(&r));
                }
            }
            rows.sort_by_key(|r| r.id);
            Ok(rows)
        })
    }

    pub fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        let scope = self.scope_now();
        self.call(move |c| {
            Ok(c.query_one(
                "SELECT MIN(o.next_attempt_at) FROM outbox o
                 WHERE o.state = 'pending'
                   AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending'
                                   AND p.chat_id = o.chat_id AND p.url = o.url AND p.id < o.id)
                   AND ($1::TEXT[] IS NULL OR o.chat_id = ANY($1))",
                &[&scope],
            )
            .map_err(pg)?
            .get(0))
        })
    }

    pub fn reenable_endpoints(&self, fingerprint: &str) -> Result<Vec<String>, StoreError> {
        let fp = fingerprint.to_string();
        self.call(move |c| {
            let rows = c
                .query(
                    "DELETE FROM endpoints_gone WHERE fingerprint <> $1 RETURNING url",
                    &[&fp],
                )
                .map_err(pg)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    pub fn disabled_endpoints(&self) -> Result<Vec<String>, StoreError> {
        self.call(|c| {
            let rows = c
                .query("SELECT url FROM endpoints_gone ORDER BY url", &[])
                .map_err(pg)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    pub fn list(&self, state: Option<&str>, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        let state = state.map(str::to_string);
        self.call(move |c| {
            let rows = c
                .query(
                    "SELECT * FROM outbox WHERE ($1::TEXT IS NULL OR state = $1) ORDER BY id DESC LIMIT $2",
                    &[&state as &(dyn ToSql + Sync), &(limit as i64)],
                )
                .map_err(pg)?;
            Ok(rows.iter().map(row).collect())
        })
    }

    pub fn counts(&self) -> Result<HashMap<String, i64>, StoreError> {
        self.call(|c| {
            let rows = c
                .query("SELECT state, count(*) FROM outbox GROUP BY state", &[])
                .map_err(pg)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    pub fn requeue(&self, which: Requeue<'_>, now_ms: i64) -> Result<usize, StoreError> {
        let arg: Option<String> = match which {
            Requeue::One(id) => Some(id.to_string()),
            Requeue::AllDead => None,
        };
        let filter = match which {
            Requeue::One(_) => {
                "(CAST(id AS TEXT) = $1 OR delivery_id = $1) AND state IN ('dead', 'gone', 'pending')"
            }
            Requeue::AllDead => "$1::TEXT IS NULL AND state IN ('dead', 'gone')",
        };
        self.call(move |c| {
            let mut tx = c.transaction().map_err(pg)?;
            tx.execute(
                &format!(
                    "DELETE FROM endpoints_gone WHERE url IN (SELECT url FROM outbox WHERE {filter})"
                ),
                &[&arg],
            )
            .map_err(pg)?;
            let n = tx
                .execute(
                    &format!(
                        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = $2, updated_at = $2 WHERE {filter}"
                    ),
                    &[&arg, &now_ms],
                )
                .map_err(pg)?;
            tx.commit().map_err(pg)?;
            Ok(n as usize)
        })
    }

    /// As [`super::sqlite::Sqlite::seal_digests`]. The firings are read, `seal` runs on the
    /// caller's thread, and what it made is queued and the windows closed in one transaction;
    /// the daemon runs the whole of it as one job of its store writer, so no poll's commit
    /// comes in between.
    pub fn seal_digests(
        &self,
        now_s: i64,
        ended_by: i64,
        seal: &mut SealFn<'_>,
    ) -> Result<Vec<SealedDigest>, StoreError> {
        type Read = (DigestWindow, i64, Vec<String>, Vec<(String, String)>);
        let windows: Vec<Read> = self.call(move |c| {
            let mut out = Vec::new();
            for r in c
                .query(
                    "SELECT rule_id, grp, window_start, window_secs FROM digest_items
                     WHERE window_end <= $1 GROUP BY rule_id, grp, window_start, window_secs
                     ORDER BY window_start, rule_id COLLATE \"C\", grp COLLATE \"C\"",
                    &[&ended_by],
                )
                .map_err(pg)?
            {
                let w = DigestWindow {
                    rule_id: r.get(0),
                    group: r.get(1),
                    window_start: r.get(2),
                    window_secs: r.get(3),
                };
                let key: [&(dyn ToSql + Sync); 4] =
                    [&w.rule_id, &w.group, &w.window_start, &w.window_secs];
                let count: i64 = c
                    .query_one(
                        "SELECT count(*) FROM digest_items
                         WHERE rule_id = $1 AND grp = $2 AND window_start = $3 AND window_secs = $4",
                        &key,
                    )
                    .map_err(pg)?
                    .get(0);
                let mut items = Vec::new();
                let mut keys = Vec::new();
                for r in c
                    .query(
                        "SELECT item, chat_id, item_key FROM digest_items
                         WHERE rule_id = $1 AND grp = $2 AND window_start = $3 AND window_secs = $4
                         ORDER BY fired_at, chat_id COLLATE \"C\", item_key COLLATE \"C\"",
                        &key,
                    )
                    .map_err(pg)?
                {
                    if items.len() < DIGEST_LISTED_MAX {
                        items.push(r.get::<_, String>(0));
                    }
                    keys.push((r.get::<_, String>(1), r.get::<_, String>(2)));
                }
                let count = count.max(keys.len() as i64);
                out.push((w, count, items, keys));
            }
            Ok(out)
        })?;
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        type Made = (DigestWindow, usize, Vec<Delivery>, Vec<(String, String)>);
        let made: Vec<Made> = windows
            .into_iter()
            .map(|(w, count, items, keys)| {
                let d = seal(&w, &items, count as usize);
                (w, count as usize, d, keys)
            })
            .collect();
        self.call(move |c| {
            let mut tx = c.transaction().map_err(pg)?;
            let mut sealed = Vec::with_capacity(made.len());
            for (w, count, deliveries, keys) in made {
                let end = w.window_start + w.window_secs;
                // Sealed first, under the exclusive lock a committing firing waits for.
                tx.execute(
                    "INSERT INTO digest_sealed (rule_id, grp, sealed_until) VALUES ($1, $2, $3)
                     ON CONFLICT (rule_id, grp) DO UPDATE
                     SET sealed_until = GREATEST(digest_sealed.sealed_until, excluded.sealed_until)",
                    &[&w.rule_id, &w.group, &end],
                )
                .map_err(pg)?;
                let queued = queue(&mut tx, &deliveries, now_s * 1000)?;
                let (chats, items): (Vec<String>, Vec<String>) = keys.into_iter().unzip();
                tx.execute(
                    "DELETE FROM digest_items
                     WHERE rule_id = $1 AND grp = $2 AND window_start = $3 AND window_secs = $6
                       AND (chat_id, item_key) IN (SELECT * FROM unnest($4::TEXT[], $5::TEXT[]))",
                    &[&w.rule_id, &w.group, &w.window_start, &chats, &items, &w.window_secs],
                )
                .map_err(pg)?;
                // A firing another instance committed after the read: the next window's.
                tx.execute(
                    "UPDATE digest_items SET window_start = $4, window_end = $4 + window_secs
                     WHERE rule_id = $1 AND grp = $2 AND window_start = $3 AND window_secs = $5",
                    &[&w.rule_id, &w.group, &w.window_start, &end, &w.window_secs],
                )
                .map_err(pg)?;
                sealed.push(SealedDigest {
                    window: w,
                    count,
                    deliveries: deliveries.len(),
                    queued,
                });
            }
            crate::failpoint::hit("digest_before_commit");
            tx.commit().map_err(pg)?;
            Ok(sealed)
        })
    }

    pub fn pending_digest_items(&self) -> Result<HashMap<String, i64>, StoreError> {
        self.call(|c| {
            let rows = c
                .query(
                    "SELECT rule_id, count(*) FROM digest_items GROUP BY rule_id",
                    &[],
                )
                .map_err(pg)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    pub fn add_silence(&self, s: &Silence) -> Result<i64, StoreError> {
        let s = s.clone();
        self.call(move |c| {
            Ok(c.query_one(
                "INSERT INTO silences (rule_id, chat_id, until, reason, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[&s.rule_id, &s.chat_id, &s.until_ms, &s.reason, &s.created_at_ms],
            )
            .map_err(pg)?
            .get(0))
        })
    }

    pub fn silences(&self, now_ms: Option<i64>) -> Result<Vec<Silence>, StoreError> {
        self.call(move |c| {
            let rows = c
                .query(
                    "SELECT id, rule_id, chat_id, until, reason, created_at FROM silences
                     WHERE $1::BIGINT IS NULL OR until > $1 ORDER BY id",
                    &[&now_ms],
                )
                .map_err(pg)?;
            Ok(rows
                .iter()
                .map(|r| Silence {
                    id: r.get(0),
                    rule_id: r.get(1),
                    chat_id: r.get(2),
                    until_ms: r.get(3),
                    reason: r.get(4),
                    created_at_ms: r.get(5),
                })
                .collect())
        })
    }

    pub fn expire_silence(&self, id: i64, now_ms: i64) -> Result<bool, StoreError> {
        self.call(move |c| {
            Ok(c.execute(
                "UPDATE silences SET until = $2 WHERE id = $1 AND until > $2",
                &[&id, &now_ms],
            )
            .map_err(pg)?
                > 0)
        })
    }

    pub fn history(&self, q: &HistoryQuery) -> Result<Vec<HistoryEntry>, StoreError> {
        let q = q.clone();
        self.call(move |c| {
            let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
            let rows = c
                .query(
                    "SELECT id, entry FROM run_history
                     WHERE ($1::TEXT IS NULL OR chat_id = $1 OR right(chat_id, length($1) + 1) = '/' || $1)
                       AND ($2::TEXT IS NULL OR position(',' || $2 || ',' IN rules) > 0)
                     ORDER BY id DESC LIMIT $3",
                    &[&q.chat, &q.rule, &limit],
                )
                .map_err(pg)?;
            Ok(rows
                .iter()
                .filter_map(|r| {
                    let mut e: HistoryEntry = serde_json::from_str(r.get::<_, &str>(1)).ok()?;
                    e.id = r.get(0);
                    Some(e)
                })
                .collect())
        })
    }

    pub fn prune_history(&self, keep: usize, before_ms: i64) -> Result<usize, StoreError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.call(move |c| {
            Ok(c.execute(
                "DELETE FROM run_history WHERE at_ms < $1
                 OR id <= (SELECT id FROM run_history ORDER BY id DESC LIMIT 1 OFFSET $2)",
                &[&before_ms, &keep],
            )
            .map_err(pg)? as usize)
        })
    }
}

/// Creates or upgrades the schema, one instance at a time.
fn migrate(c: &mut Client) -> Result<(), StoreError> {
    // Up to date already (the common case, and every command beside a daemon): no DDL, so no
    // lock on the daemon's tables.
    let current: Option<i64> = c
        .query_opt(
            "SELECT max(version) FROM cartat_schema WHERE to_regclass('cartat_schema') IS NOT NULL",
            &[],
        )
        .ok()
        .flatten()
        .and_then(|r| r.get(0));
    if current == Some(SCHEMA_VERSION) {
        return Ok(());
    }
    let mut tx = c.transaction().map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg)?;
    tx.batch_execute(SCHEMA).map_err(pg)?;
    let version: Option<i64> = tx
        .query_opt("SELECT max(version) FROM cartat_schema", &[])
        .map_err(pg)?
        .and_then(|r| r.get(0));
    match version {
        None => {
            tx.execute(
                "INSERT INTO cartat_schema (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .map_err(pg)?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::Postgres(format!(
                "the database was written by a newer cartat-rules (schema {v}, this one knows {SCHEMA_VERSION})"
            )));
        }
        // Older: the additions above (2: the run history; 3: the instances' budget divisor)
        // are in place now.
        Some(v) if v < SCHEMA_VERSION => {
            tx.execute(
                "INSERT INTO cartat_schema (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .map_err(pg)?;
        }
        Some(_) => {}
    }
    tx.commit().map_err(pg)
}

/// Writes each item in a savepoint of its own in one transaction (as SQLite's
/// `in_savepoints`); an error of the transaction itself fails them all.
fn in_savepoints<I: Send + 'static, T: Send + 'static>(
    store: &Postgres,
    items: Vec<I>,
    failpoint: Option<&'static str>,
    write: fn(&mut Tx<'_>, &I) -> Result<T, StoreError>,
) -> Result<Vec<Result<T, String>>, StoreError> {
    store.call(move |c| {
        let mut tx = c.transaction().map_err(pg)?;
        let mut results = Vec::with_capacity(items.len());
        for item in &items {
            let mut sp = tx.savepoint("item").map_err(pg)?;
            match write(&mut sp, item) {
                Ok(out) => {
                    sp.commit().map_err(pg)?;
                    results.push(Ok(out));
                }
                Err(e) => {
                    sp.rollback().map_err(pg)?;
                    results.push(Err(e.to_string()));
                }
            }
        }
        if let Some(name) = failpoint {
            crate::failpoint::hit(name);
        }
        tx.commit().map_err(pg)?;
        Ok(results)
    })
}

fn memory_of(c: &mut Conn, chat: &str) -> Result<Memory, StoreError> {
    let mut m = Memory::default();
    for r in c
        .query(
            "SELECT rule_id, until FROM cooldowns WHERE chat_id = $1",
            &[&chat],
        )
        .map_err(pg)?
    {
        m.cooldowns.insert(r.get(0), r.get(1));
    }
    for r in c
        .query(
            "SELECT rule_id, hits FROM thresholds WHERE chat_id = $1",
            &[&chat],
        )
        .map_err(pg)?
    {
        let hits: String = r.get(1);
        m.thresholds
            .insert(r.get(0), serde_json::from_str(&hits).unwrap_or_default());
    }
    for r in c
        .query(
            "SELECT rule_id, state FROM script_state WHERE chat_id = $1",
            &[&chat],
        )
        .map_err(pg)?
    {
        let state: String = r.get(1);
        m.script_state
            .insert(r.get(0), serde_json::from_str(&state).unwrap_or_default());
    }
    for r in c
        .query(
            "SELECT rule_id, since, fired FROM chat_rules WHERE chat_id = $1",
            &[&chat],
        )
        .map_err(pg)?
    {
        m.chat_rules.insert(
            r.get(0),
            ChatRuleState {
                since: r.get(1),
                fired: r.get(2),
            },
        );
    }
    Ok(m)
}

/// The rows of one poll (as SQLite's `write_poll`).
fn write_poll(tx: &mut Tx<'_>, c: &PollCommit) -> Result<usize, StoreError> {
    // Fencing: the lease must still carry this token and not have expired; the row stays
    // locked until the commit, so no other instance takes the chat in between.
    if let Some(token) = c.lease {
        let held = tx
            .query_opt(
                &format!(
                    "SELECT 1 FROM leases WHERE chat_id = $1 AND token = $2 AND expires_at > {NOW_MS} FOR UPDATE"
                ),
                &[&c.chat_id, &token],
            )
            .map_err(pg)?;
        if held.is_none() {
            return Err(StoreError::Fenced {
                chat: c.chat_id.clone(),
            });
        }
    }
    let now_s = c.now_ms / 1000;
    let first_seen = if c.first_seen > 0 {
        c.first_seen
    } else {
        now_s
    };
    tx.execute(
        "INSERT INTO chats (chat_id, watermark, low_water, first_seen, last_polled) VALUES ($1, $2, $3, $5, $4)
         ON CONFLICT (chat_id) DO UPDATE SET watermark = GREATEST(chats.watermark, excluded.watermark),
             low_water = GREATEST(chats.low_water, excluded.low_water), last_polled = excluded.last_polled",
        &[&c.chat_id, &c.watermark, &c.low_water, &now_s, &first_seen],
    )
    .map_err(pg)?;
    for (k, ts, fp) in &c.seen {
        tx.execute(
            "INSERT INTO seen (chat_id, from_me, msg_id, ts, fingerprint) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (chat_id, from_me, msg_id) DO UPDATE SET fingerprint = excluded.fingerprint",
            &[&c.chat_id, &k.from_me, &k.id, ts, &(*fp as i64)],
        )
        .map_err(pg)?;
    }
    for (rule, until) in &c.cooldowns {
        tx.execute(
            "INSERT INTO cooldowns (rule_id, chat_id, until) VALUES ($1, $2, $3)
             ON CONFLICT (rule_id, chat_id) DO UPDATE SET until = GREATEST(cooldowns.until, excluded.until)",
            &[rule, &c.chat_id, until],
        )
        .map_err(pg)?;
    }
    for (rule, hits) in &c.thresholds {
        if hits.is_empty() {
            tx.execute(
                "DELETE FROM thresholds WHERE rule_id = $1 AND chat_id = $2",
                &[rule, &c.chat_id],
            )
            .map_err(pg)?;
        } else {
            tx.execute(
                "INSERT INTO thresholds (rule_id, chat_id, hits) VALUES ($1, $2, $3)
                 ON CONFLICT (rule_id, chat_id) DO UPDATE SET hits = excluded.hits",
                &[
                    rule,
                    &c.chat_id,
                    &serde_json::to_string(hits).unwrap_or_default(),
                ],
            )
            .map_err(pg)?;
        }
    }
    for (rule, state) in &c.script_state {
        tx.execute(
            "INSERT INTO script_state (rule_id, chat_id, state) VALUES ($1, $2, $3)
             ON CONFLICT (rule_id, chat_id) DO UPDATE SET state = excluded.state",
            &[
                rule,
                &c.chat_id,
                &serde_json::to_string(state).unwrap_or_default(),
            ],
        )
        .map_err(pg)?;
    }
    for (rule, st) in &c.chat_rules {
        if *st == ChatRuleState::default() {
            tx.execute(
                "DELETE FROM chat_rules WHERE rule_id = $1 AND chat_id = $2",
                &[rule, &c.chat_id],
            )
            .map_err(pg)?;
        } else {
            tx.execute(
                "INSERT INTO chat_rules (rule_id, chat_id, since, fired) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (rule_id, chat_id) DO UPDATE SET since = excluded.since, fired = excluded.fired",
                &[rule, &c.chat_id, &st.since, &st.fired],
            )
            .map_err(pg)?;
        }
    }
    for it in &c.digest_items {
        // The window's sealed mark is read under a share lock (created first if missing), and
        // sealing takes it exclusively: a firing lands in a window before it is sealed, or in
        // the next one, whatever instance commits it.
        tx.execute(
            "INSERT INTO digest_sealed (rule_id, grp, sealed_until) VALUES ($1, $2, 0)
             ON CONFLICT (rule_id, grp) DO NOTHING",
            &[&it.rule_id, &it.group],
        )
        .map_err(pg)?;
        tx.execute(
            "INSERT INTO digest_items (rule_id, grp, window_start, window_secs, window_end, chat_id, item_key, fired_at, item)
             SELECT $1::TEXT, $2::TEXT, w, $4::BIGINT, w + $4::BIGINT, $5::TEXT, $6::TEXT, $7::BIGINT, $8::TEXT
             FROM (SELECT GREATEST($3::BIGINT, coalesce(
                 (SELECT sealed_until FROM digest_sealed WHERE rule_id = $1::TEXT AND grp = $2::TEXT FOR SHARE),
                 $3::BIGINT)) AS w) AS x
             ON CONFLICT (rule_id, chat_id, item_key) DO NOTHING",
            &[
                &it.rule_id,
                &it.group,
                &it.window_start,
                &it.window_secs,
                &it.chat_id,
                &it.item_key,
                &it.fired_at,
                &it.item,
            ],
        )
        .map_err(pg)?;
    }
    let queued = queue(tx, &c.deliveries, c.now_ms)?;
    tx.execute(
        "DELETE FROM seen WHERE chat_id = $1 AND ts < $2",
        &[&c.chat_id, &c.low_water],
    )
    .map_err(pg)?;
    tx.execute(
        "DELETE FROM cooldowns WHERE chat_id = $1 AND until < $2",
        &[&c.chat_id, &now_s.min(c.watermark)],
    )
    .map_err(pg)?;
    for e in &c.history {
        // Strings and numbers only: serializing cannot fail.
        let entry = serde_json::to_string(e).unwrap_or_default();
        tx.execute(
            "INSERT INTO run_history (at_ms, chat_id, message_id, rules, entry) VALUES ($1, $2, $3, $4, $5)",
            &[&e.at_ms, &e.chat_id, &e.message_id, &super::history_rules(e), &entry],
        )
        .map_err(pg)?;
    }
    Ok(queued)
}

/// Queues deliveries (as SQLite's `queue`); how many were new.
fn queue(tx: &mut Tx<'_>, deliveries: &[Delivery], now_ms: i64) -> Result<usize, StoreError> {
    let mut queued = 0;
    for d in deliveries {
        let headers = serde_json::to_string(&d.headers).unwrap_or_else(|_| "[]".into());
        queued += tx
            .execute(
                "INSERT INTO outbox (delivery_id, rule_id, chat_id, message_key, action_index, url, headers, body,
                                     state, attempts, next_attempt_at, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
                         CASE WHEN EXISTS (SELECT 1 FROM endpoints_gone g WHERE g.url = $6) THEN 'gone' ELSE 'pending' END,
                         0, $9, $9, $9)
                 ON CONFLICT (delivery_id) DO NOTHING",
                &[
                    &d.delivery_id,
                    &d.rule_id,
                    &d.chat_id,
                    &d.message_key,
                    &(d.action_index as i64),
                    &d.url,
                    &headers,
                    &d.body,
                    &now_ms,
                ],
            )
            .map_err(pg)? as usize;
    }
    Ok(queued)
}

fn write_outcome(
    tx: &mut Tx<'_>,
    id: i64,
    record: &AttemptRecord,
    now_ms: i64,
) -> Result<(), StoreError> {
    let Some(st) = record.outcome.stored() else {
        return Err(StoreError::Postgres(
            "an in-flight delivery is never stored".into(),
        ));
    };
    let attempts = st.attempts as i64;
    tx.execute(
        "UPDATE outbox SET state = $2, attempts = $3, next_attempt_at = coalesce($4, next_attempt_at),
                           last_status = $5, last_error = $6, updated_at = $7 WHERE id = $1",
        &[
            &id,
            &st.state,
            &attempts,
            &st.next_attempt_at_ms,
            &record.status.map(i64::from),
            &st.error.or_else(|| record.error.clone()),
            &now_ms,
        ],
    )
    .map_err(pg)?;
    Ok(())
}

fn write_gone(
    tx: &mut Tx<'_>,
    id: i64,
    url: &str,
    fingerprint: &str,
    record: &AttemptRecord,
    now_ms: i64,
) -> Result<usize, StoreError> {
    write_outcome(tx, id, record, now_ms)?;
    tx.execute(
        "INSERT INTO endpoints_gone (url, fingerprint, since, delivery_id)
         SELECT $1::TEXT, $2::TEXT, $3::BIGINT, delivery_id FROM outbox WHERE id = $4
         ON CONFLICT (url) DO UPDATE SET fingerprint = excluded.fingerprint",
        &[&url, &fingerprint, &now_ms, &id],
    )
    .map_err(pg)?;
    let parked = tx
        .execute(
            "UPDATE outbox SET state = 'gone', last_error = $2, updated_at = $3
             WHERE url = $1 AND state = 'pending'",
            &[&url, &DeadReason::EndpointGone.text(), &now_ms],
        )
        .map_err(pg)?;
    Ok(parked as usize)
}

fn row(r: &::postgres::Row) -> OutboxRow {
    let headers: String = r.get("headers");
    OutboxRow {
        id: r.get("id"),
        delivery: Delivery {
            delivery_id: r.get("delivery_id"),
            rule_id: r.get("rule_id"),
            chat_id: r.get("chat_id"),
            message_key: r.get("message_key"),
            action_index: r.get::<_, i64>("action_index") as usize,
            url: r.get("url"),
            headers: serde_json::from_str(&headers).unwrap_or_default(),
            body: r.get("body"),
        },
        state: r.get("state"),
        attempts: r.get::<_, i64>("attempts") as u32,
        next_attempt_at_ms: r.get("next_attempt_at"),
        last_status: r.get::<_, Option<i64>>("last_status").map(|s| s as u16),
        last_error: r.get("last_error"),
        updated_at_ms: r.get("updated_at"),
    }
}
