//! The dispatcher: sends due outbox rows, signs them, classifies the answer and moves each row
//! through its [`Lifecycle`]. A row stays pending in the store while it is in flight, so a crash
//! re-sends it with the same `delivery_id` (at-least-once on the wire, exactly-once per id for
//! an idempotent receiver).
//!
//! Scheduling: only the oldest pending row of each (chat, url) is ever sent, one at a time, so
//! deliveries for one chat to one endpoint keep their order; at most [`PER_ENDPOINT`] requests
//! are in flight to one url and [`CONCURRENCY`] in all, and a slot is refilled as soon as it is
//! free — a slow receiver holds its own slots, never the others'. A 410 disables the url (the
//! store parks its rows as `gone`) until the config or the rules change.
//!
//! Owns: webhook I/O. Must not: follow redirects, use environment proxies, or connect to an
//! address the SSRF guard refuses.

use crate::config::Config;
use crate::events;
use crate::outbox::lifecycle::{DeadReason, Lifecycle};
use crate::outbox::schedule::{AttemptResult, RetryPolicy, Verdict, classify};
use crate::outbox::sign::SigningKey;
use crate::outbox::ssrf::{GuardedResolver, NetPolicy, vet_url};
use crate::store::group::CommitQueue;
use crate::store::{AttemptRecord, OutboxRow, Outcome, Store};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How many deliveries are in flight at once, in all.
pub const CONCURRENCY: usize = 32;
/// How many deliveries are in flight at once to one url.
pub const PER_ENDPOINT: usize = 8;

/// Sends webhooks from the outbox.
pub struct Dispatcher {
    pub store: Store,
    /// Where outcomes are recorded: the store's writer task, shared with the poller.
    commits: CommitQueue,
    http: reqwest::Client,
    pub policy: RetryPolicy,
    secret: Option<SigningKey>,
    net_policy: NetPolicy,
    pub wake: Arc<Wake>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Fingerprint of the config and rules in force: a 410 disables its url under it.
    fingerprint: std::sync::RwLock<String>,
    /// What the fingerprint is taken of: the config file and the rule paths.
    sources: Option<(std::path::PathBuf, Vec<std::path::PathBuf>)>,
    in_flight: Arc<Mutex<InFlight>>,
}

/// How the poller (and finished deliveries) tell the dispatcher what changed: the (chat, url)
/// groups with new rows, or "scan everything".
#[derive(Debug, Default)]
pub struct Wake {
    groups: Mutex<HashSet<(String, String)>>,
    full: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl Wake {
    /// Rows of `(chat, url)` changed (queued after a commit, or its head was just sent).
    pub fn group(&self, chat: String, url: String) {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((chat, url));
        self.notify.notify_one();
    }

    /// Anything may have changed: read every group's head.
    pub fn full(&self) {
        self.full.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_one();
    }

    fn take_groups(&self) -> Vec<(String, String)> {
        let mut g = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        g.drain().collect()
    }

    fn take_full(&self) -> bool {
        self.full.swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

/// What is on the wire now.
#[derive(Debug, Default)]
struct InFlight {
    /// (chat, url) whose head row is in flight: the rows behind it wait.
    groups: HashSet<(String, String)>,
    per_url: HashMap<String, usize>,
    total: usize,
    /// Groups released since the current outbox query began: the query may have read their
    /// head before its outcome was recorded, so its rows for them are stale (sending them would
    /// send one row twice).
    released: HashSet<(String, String)>,
    /// A due row found no free slot (all in use, or its url's): the next release asks for a
    /// full scan.
    starved: bool,
}

/// A claimed slot; released on drop (a panicking delivery releases it too).
struct Slot {
    in_flight: Arc<Mutex<InFlight>>,
    group: (String, String),
}

impl InFlight {
    fn saturated(&self) -> Vec<String> {
        self.per_url
            .iter()
            .filter(|(_, n)| **n >= PER_ENDPOINT)
            .map(|(u, _)| u.clone())
            .collect()
    }
}

fn lock(m: &Mutex<InFlight>) -> std::sync::MutexGuard<'_, InFlight> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Slot {
    fn claim(in_flight: &Arc<Mutex<InFlight>>, row: &OutboxRow) -> Option<Slot> {
        let mut f = lock(in_flight);
        let url = &row.delivery.url;
        let group = (row.delivery.chat_id.clone(), url.clone());
        if f.total >= CONCURRENCY || f.per_url.get(url).copied().unwrap_or(0) >= PER_ENDPOINT {
            f.starved = true;
            return None;
        }
        if f.groups.contains(&group) || f.released.contains(&group) {
            return None;
        }
        f.total += 1;
        *f.per_url.entry(url.clone()).or_default() += 1;
        f.groups.insert(group.clone());
        Some(Slot {
            in_flight: in_flight.clone(),
            group,
        })
    }
}

impl Slot {
    /// Frees the slot; says whether a due row waited for one meanwhile.
    fn release(self) -> bool {
        let in_flight = self.in_flight.clone();
        drop(self);
        std::mem::take(&mut lock(&in_flight).starved)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut f = lock(&self.in_flight);
        f.total = f.total.saturating_sub(1);
        if let Some(n) = f.per_url.get_mut(&self.group.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                f.per_url.remove(&self.group.1);
            }
        }
        f.groups.remove(&self.group);
        f.released.insert(self.group.clone());
    }
}

/// A fingerprint of the config file and every file under the rule paths (path and bytes):
/// when it changes, endpoints disabled by a 410 are enabled again.
pub fn config_fingerprint(config_path: &Path, rule_paths: &[std::path::PathBuf]) -> String {
    fn add(h: &mut Sha256, path: &Path, depth: usize) {
        if path.is_dir() && depth < 8 {
            let mut entries: Vec<_> = std::fs::read_dir(path)
                .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
                .unwrap_or_default();
            entries.sort();
            for e in entries {
                add(h, &e, depth + 1);
            }
        } else {
            h.update(path.to_string_lossy().as_bytes());
            h.update([0]);
            h.update(std::fs::read(path).unwrap_or_default());
            h.update([0]);
        }
    }
    let mut h = Sha256::new();
    add(&mut h, config_path, 8);
    for p in rule_paths {
        add(&mut h, p, 0);
    }
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Dispatcher {
    pub fn new(
        store: Store,
        commits: CommitQueue,
        timeout: Duration,
        policy: RetryPolicy,
        secret: Option<SigningKey>,
        net_policy: NetPolicy,
        wake: Arc<Wake>,
    ) -> Result<Dispatcher, String> {
        crate::install_crypto();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver::new(net_policy.clone())))
            .user_agent(concat!("cartat-rules/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        Ok(Dispatcher {
            store,
            commits,
            http,
            policy,
            secret,
            net_policy,
            wake,
            metrics: Arc::default(),
            fingerprint: std::sync::RwLock::default(),
            sources: None,
            in_flight: Arc::default(),
        })
    }

    /// Ties 410s to this config: they disable their url until the config or rules change.
    pub fn with_config_fingerprint(mut self, config: &Config) -> Dispatcher {
        self.sources = Some((config.path.clone(), config.rule_paths.clone()));
        self
    }

    fn fingerprint(&self) -> String {
        self.fingerprint
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes the fingerprint of the config and rules as they are on disk now, and enables
    /// again every url a 410 disabled under another one (logged one by one). Called at start
    /// and after every hot reload of the rules. Blocking (file reads and SQLite).
    pub fn refresh_fingerprint(&self) {
        let Some((config, rules)) = &self.sources else {
            return;
        };
        let fp = config_fingerprint(config, rules);
        *self.fingerprint.write().unwrap_or_else(|e| e.into_inner()) = fp.clone();
        match self.store.reenable_endpoints(&fp) {
            Ok(urls) => {
                for url in urls {
                    events::endpoint_reenabled(&redact_url(&url));
                }
            }
            Err(e) => tracing::error!(
                event = "outbox.query_failed",
                "cannot read the disabled endpoints: {e}"
            ),
        }
    }

    /// Sends until `shutdown`; deliveries in flight then finish (each bounded by the webhook
    /// timeout), the rest stay pending in the outbox.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        // Once, at start, on the runtime's thread (a few small files and one query): a
        // blocking-pool thread for it stayed alive, with an allocator heap of its own.
        self.refresh_fingerprint();
        let tracker = TaskTracker::new();
        // The full scan reads every (chat, url)'s head; it runs at start, once a second (rows
        // re-queued by `outbox retry` from another process, retries coming due), when a retry
        // is due, and when a slot frees while rows waited for one. Between scans, only the
        // groups that changed are read: a poll's new rows, a finished delivery's next row.
        let mut scan_at = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let now = now_ms();
            let full = tokio::time::Instant::now() >= scan_at || self.wake.take_full();
            let groups = self.wake.take_groups();
            if !full && groups.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.wake.notify.notified() => {}
                    _ = tokio::time::sleep_until(scan_at) => {}
                }
                continue;
            }
            let saturated = {
                // A slot is released only after its outcome is recorded: what was released
                // before this query is read fresh by it.
                let mut f = lock(&self.in_flight);
                f.released.clear();
                f.saturated()
            };
            // Saturated urls are left out by the query; what remains is blocked by at most
            // CONCURRENCY in-flight heads, so this many rows always reach a free one.
            let scan = 2 * CONCURRENCY;
            self.metrics.outbox_scan(full);
            let rows = self.commits.read(move |store| {
                if full {
                    let due = store.due_excluding(now, scan, &saturated)?;
                    let next = if due.is_empty() {
                        store.next_due_ms()?
                    } else {
                        None
                    };
                    Ok((due, next))
                } else {
                    let heads = store.heads(&groups)?;
                    let next = heads
                        .iter()
                        .map(|r| r.next_attempt_at_ms)
                        .filter(|&t| t > now)
                        .min();
                    let due = heads.into_iter().filter(|r| r.next_attempt_at_ms <= now);
                    Ok::<_, crate::store::StoreError>((due.collect(), next))
                }
            });
            let (due, next_ms) = match rows.await {
                Some(Ok(rows)) => rows,
                Some(Err(e)) => {
                    tracing::error!(event = "outbox.query_failed", "outbox query failed: {e}");
                    (Vec::new(), None)
                }
                None => {
                    tracing::error!(
                        event = "outbox.query_failed",
                        "outbox query panicked or the store's writer stopped"
                    );
                    (Vec::new(), None)
                }
            };
            if full {
                scan_at = tokio::time::Instant::now() + Duration::from_secs(1);
            }
            match next_ms {
                // Due heads the full scan left out: their urls have no free slot. The next slot
                // freed asks for a full scan; scanning again at once would spin until one is
                // (profiled at workload A: hundreds of scans a second, half the daemon's CPU).
                Some(t) if full && t <= now => {
                    let mut f = lock(&self.in_flight);
                    if f.released.is_empty() {
                        f.starved = true;
                    } else {
                        // A slot was freed while the scan ran: its release found nobody waiting.
                        scan_at = tokio::time::Instant::now();
                    }
                }
                Some(t) => {
                    let soon = tokio::time::Instant::now()
                        + Duration::from_millis((t - now_ms()).clamp(0, 1000) as u64);
                    scan_at = scan_at.min(soon);
                }
                None => {}
            }
            for row in &due {
                let Some(slot) = Slot::claim(&self.in_flight, row) else {
                    continue;
                };
                let state = match row.lifecycle().map(|l| l.claim(now)) {
                    Some(Ok(state)) => state,
                    other => {
                        tracing::error!(event = "outbox.row_unsendable", delivery_id = %row.delivery.delivery_id, "outbox row not sendable: {other:?}");
                        continue;
                    }
                };
                let this = self.clone();
                let row = row.clone();
                tracker.spawn(async move {
                    let group = (row.delivery.chat_id.clone(), row.delivery.url.clone());
                    this.deliver(row, state).await;
                    // Released after the outcome is recorded: the group's next row is read fresh.
                    let starved = slot.release();
                    this.wake.group(group.0, group.1);
                    if starved {
                        this.wake.full();
                    }
                });
            }
            // A full scan may have left due rows unread: read on.
            if full && due.len() >= scan {
                scan_at = tokio::time::Instant::now();
            }
        }
        let in_flight = lock(&self.in_flight).total;
        if in_flight > 0 {
            tracing::info!(
                event = "dispatcher.stopping",
                in_flight,
                "dispatcher stopping: waiting for the deliveries in flight"
            );
        }
        tracker.close();
        tracker.wait().await;
    }

    /// One attempt for one claimed row (`state` = InFlight), recorded in the store.
    pub async fn deliver(&self, row: OutboxRow, state: Lifecycle) {
        let result = self.send(&row).await;
        crate::failpoint::hit("after_post");
        let now = now_ms();
        let verdict = classify(&result, now / 1000);
        let status = match &result {
            AttemptResult::Status { code, .. } => Some(*code),
            _ => None,
        };
        let d = &row.delivery;
        let outcome = match state.clone().after_attempt(
            &verdict,
            &self.policy,
            now,
            &mut rand::rng(),
        ) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(event = "delivery.unsendable", delivery_id = %d.delivery_id, "{e}");
                return;
            }
        };
        let error = match &verdict {
            Verdict::Retry { reason, .. } => Some(reason.clone()),
            _ => None,
        };
        let attempt = match state {
            Lifecycle::InFlight { attempt } => attempt,
            _ => 0,
        };
        self.metrics.delivery(match &outcome {
            Lifecycle::Delivered { .. } => "delivered",
            Lifecycle::Retry { .. } => "retry",
            Lifecycle::Dead {
                reason: DeadReason::EndpointGone,
                ..
            } => "gone",
            _ => "dead",
        });
        match &outcome {
            Lifecycle::Delivered { .. } => {
                events::delivered(&d.delivery_id, &d.rule_id, status.unwrap_or(0), attempt)
            }
            Lifecycle::Retry { at_ms, .. } => events::delivery_retry(
                &d.delivery_id,
                &d.rule_id,
                error.as_deref().unwrap_or(""),
                attempt,
                Duration::from_millis((at_ms - now).max(0) as u64),
            ),
            Lifecycle::Dead {
                reason: DeadReason::EndpointGone,
                ..
            } => {}
            Lifecycle::Dead { reason, .. } => {
                events::dead_lettered(&d.delivery_id, &d.rule_id, &reason.text(), attempt)
            }
            _ => {}
        }
        let gone = matches!(
            outcome,
            Lifecycle::Dead {
                reason: DeadReason::EndpointGone,
                ..
            }
        );
        let record = AttemptRecord {
            outcome,
            status,
            error,
        };
        // Through the store's writer, with the polls and the other outcomes waiting.
        let res = self
            .commits
            .record(Outcome {
                id: row.id,
                record,
                now_ms: now,
                gone: gone.then(|| (d.url.clone(), self.fingerprint())),
            })
            .await;
        match res {
            Ok(Some(parked)) => {
                events::endpoint_gone(&redact_url(&d.url), &d.delivery_id, &d.rule_id, parked)
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(event = "outbox.record_failed", delivery_id = %d.delivery_id, "cannot record the delivery outcome (it will be re-sent): {e}")
            }
        }
    }

    async fn send(&self, row: &OutboxRow) -> AttemptResult {
        let d = &row.delivery;
        if let Err(e) = vet_url(&d.url, &self.net_policy) {
            return AttemptResult::Refused(e);
        }
        let ts = now_ms() / 1000;
        let mut req = self
            .http
            .post(&d.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", &d.delivery_id)
            .header("webhook-id", &d.delivery_id)
            .header("webhook-timestamp", ts.to_string());
        if let Some(key) = &self.secret {
            req = req.header(
                "webhook-signature",
                key.sign(&d.delivery_id, ts, d.body.as_bytes()),
            );
        }
        for (k, v) in &d.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.body(d.body.clone()).send().await {
            Ok(resp) => {
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let code = resp.status().as_u16();
                drain(resp).await;
                AttemptResult::Status { code, retry_after }
            }
            Err(e) if e.is_timeout() => AttemptResult::Timeout,
            Err(e) => {
                // Without the URL: webhook URLs often carry a secret in their path or query.
                let refused = crate::net::ssrf::is_refusal(&e);
                let text = crate::net::http::error_chain(&e.without_url());
                if refused {
                    AttemptResult::Refused(text)
                } else {
                    AttemptResult::Connect(text)
                }
            }
        }
    }
}

/// The most of a receiver's answer body read (and thrown away) so its connection can carry
/// the next delivery; a longer or slower body closes the connection instead.
const DRAIN_BYTES: usize = 16 * 1024;
const DRAIN_TIME: Duration = Duration::from_millis(250);

/// Reads the rest of a short answer so the connection goes back to the pool (an answer left
/// unread closes it: a new connection for every delivery). Only the status counts: a body
/// that is long, slow or broken is dropped with its connection.
async fn drain(mut resp: reqwest::Response) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0;
        while let Ok(Some(chunk)) = resp.chunk().await {
            read += chunk.len();
            if read > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A url fit for a log line: scheme, host, port and path; no credentials, no query.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default(),
            u.path()
        ),
        Err(_) => "(unparsable url)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_logs_lose_credentials_and_queries() {
        assert_eq!(
            redact_url("https://user:pw@hooks.example.com:8443/a/b?token=secret#x"),
            "https://hooks.example.com:8443/a/b"
        );
        assert_eq!(redact_url("not a url"), "(unparsable url)");
    }

    #[test]
    fn the_fingerprint_follows_the_config_and_the_rules() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("cartat.yaml");
        let rules = dir.path().join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        std::fs::write(&cfg, "a: 1").unwrap();
        std::fs::write(rules.join("r.yaml"), "id: r").unwrap();
        let fp = || config_fingerprint(&cfg, std::slice::from_ref(&rules));
        let first = fp();
        assert_eq!(first, fp(), "stable");
        std::fs::write(rules.join("r.yaml"), "id: r2").unwrap();
        let second = fp();
        assert_ne!(first, second, "a rule edit changes it");
        std::fs::write(&cfg, "a: 2").unwrap();
        assert_ne!(second, fp(), "a config edit changes it");
    }

    #[test]
    fn slots_limit_each_endpoint_and_keep_one_per_chat() {
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        let row = |chat: &str, url: &str| OutboxRow {
            id: 0,
            delivery: crate::engine::decide::Delivery {
                delivery_id: String::new(),
                rule_id: String::new(),
                chat_id: chat.into(),
                message_key: String::new(),
                action_index: 0,
                url: url.into(),
                headers: Vec::new(),
                body: String::new(),
            },
            state: "pending".into(),
            attempts: 0,
            next_attempt_at_ms: 0,
            updated_at_ms: 0,
            last_status: None,
            last_error: None,
        };
        let first = Slot::claim(&in_flight, &row("c0", "http://slow/")).unwrap();
        assert!(
            Slot::claim(&in_flight, &row("c0", "http://slow/")).is_none(),
            "one at a time per (chat, url)"
        );
        let mut slots: Vec<Slot> = (1..PER_ENDPOINT)
            .map(|i| Slot::claim(&in_flight, &row(&format!("c{i}"), "http://slow/")).unwrap())
            .collect();
        assert!(Slot::claim(&in_flight, &row("cX", "http://slow/")).is_none());
        assert_eq!(lock(&in_flight).saturated(), ["http://slow/"]);
        slots.push(Slot::claim(&in_flight, &row("c0", "http://fast/")).unwrap());
        drop(first);
        assert!(
            Slot::claim(&in_flight, &row("c0", "http://slow/")).is_none(),
            "a group released during a query is not claimed from that query's (stale) rows"
        );
        lock(&in_flight).released.clear();
        assert!(Slot::claim(&in_flight, &row("cX", "http://slow/")).is_some());
        drop(slots);
        assert_eq!(lock(&in_flight).total, 0);
        assert!(lock(&in_flight).groups.is_empty());
    }
}
