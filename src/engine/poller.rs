//! The poller: a central scheduler that polls each watched chat within the API budget, diffs
//! the page against the watermark, evaluates the rules, and commits the watermark and the
//! queued deliveries in one store transaction.
//!
//! Owns: driving the schedule ([`super::schedule`] decides which chat is next; this loop takes
//! an in-flight slot and a budget reservation, then polls), gap recovery (asking again with a
//! larger limit), per-chat backoff. Must not: send webhooks (the dispatcher does) or hold
//! state the store does not have (a crash at any point loses nothing).

use crate::config::{Config, WatchedChat};
use crate::engine::decide::{ChatFiring, RuleError, RuleOnMessage, ScriptFiring};
use crate::engine::schedule::{Finished, Schedule};
use crate::engine::snapshot::ChatSnapshot;
use crate::engine::step::{commit_of, decide_poll, new_messages};
use crate::engine::watermark::diff;
use crate::events;
use crate::gateway::client::{FetchError, Gateway};
use crate::metrics::{Metrics, PollOutcome};
use crate::rules::RuleSet;
use crate::store::Store;
use crate::store::group::CommitQueue;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How many chats may be in flight at once (a hung request holds its slot until the timeout):
/// at least a whole burst of the rate budget, so a bunch of due chats goes out together (a
/// smaller bound releases the rest one by one as answers come back, and the budget's sliding
/// window then keeps them spread for good: a wake-up per poll). At most 256 connections to
/// the gateway all the same (the coalescing grid splits a larger burst into several bunches).
fn max_in_flight(burst: u32) -> usize {
    (burst as usize).clamp(64, 256)
}
/// How often the adaptive scheduler shares the spare budget anew.
const RECOMPUTE_EVERY: Duration = Duration::from_secs(1);
/// How many skipped-message identities are remembered (so each is logged once).
const SKIPPED_MEMORY: usize = 100_000;

/// Counters the engine keeps (the demo summary; `/metrics` has the full set).
#[derive(Debug, Default)]
pub struct Stats {
    pub polls_ok: AtomicU64,
    pub polls_failed: AtomicU64,
    pub messages_new: AtomicU64,
    pub messages_updated: AtomicU64,
    pub messages_skipped: AtomicU64,
    pub rules_fired: AtomicU64,
    pub gaps: AtomicU64,
}

/// What the poller works with.
pub struct Poller {
    pub config: Arc<Config>,
    /// Each account's gateway client and rate budget, in the order of `config.accounts`.
    pub gateways: Vec<Gateway>,
    pub store: Store,
    /// Where polls commit: the store's writer task, several polls per transaction.
    pub commits: CommitQueue,
    pub rules: Arc<RwLock<Arc<RuleSet>>>,
    pub wake_dispatcher: Arc<crate::outbox::dispatcher::Wake>,
    /// In a cluster: this instance's leases (a poll's commit carries its chat's fencing token;
    /// the chats come from the lease loop, not the config).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// The silences in force, as the store had them at the last look (every second).
    pub silences: Arc<RwLock<Arc<Vec<crate::model::Silence>>>>,
    pub stats: Arc<Stats>,
    pub metrics: Arc<Metrics>,
    /// Identities of skipped messages already logged and counted.
    pub skipped_seen: Mutex<HashSet<u64>>,
    /// Each chat's stored state as of its last successful poll (absent until its first one, or
    /// after a poll that failed past its fetch: then read again from the store).
    pub snapshots: Mutex<HashMap<String, ChatSnapshot>>,
    /// When this daemon started (unix seconds): with `skip_history`, a chat first polled
    /// later still gets what arrived since then.
    pub started_s: i64,
    /// What config reloads change in the polling ([`ChatsUpdate`]); taken by [`Poller::run`].
    pub chat_updates: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ChatsUpdate>>>,
    /// Each watched chat's last poll, for the status page.
    pub board: Arc<crate::engine::board::ChatBoard>,
    /// Each rule's firings over the last day, for the status page.
    pub rule_board: Arc<crate::engine::board::RuleBoard>,
}

/// What a config reload changes in the polling: the chats to watch (each with its interval
/// and account) and each account's API rate budget. Chats not in the list stop being polled
/// (a poll in flight finishes); chats new to it are polled at once, then on their interval.
#[derive(Clone, Debug)]
pub struct ChatsUpdate {
    pub chats: Vec<WatchedChat>,
    /// Each account's name, per second and burst. A poller finds its own by name (a reload
    /// that adds, removes or reorders accounts waits for a restart).
    pub rates: Vec<(String, u32, u32)>,
}

impl ChatsUpdate {
    /// The config's chats and each account's rate budget as written.
    pub fn of(config: &Config) -> ChatsUpdate {
        ChatsUpdate {
            chats: config.chats.clone(),
            rates: config
                .accounts
                .iter()
                .map(|a| (a.name.clone(), a.api.rate_per_second, a.api.burst))
                .collect(),
        }
    }
}

/// What one poll found, for the scheduler.
#[derive(Clone, Copy, Debug, Default)]
struct PollReport {
    /// New messages from others (the chat's activity).
    inbound: usize,
    /// The chat's unread count, as the gateway said.
    unread: Option<i64>,
}

/// The outcome of one chat's poll.
struct Done {
    index: usize,
    how: Finished,
}

impl Poller {
    /// Polls until `shutdown`, each account in a loop of its own (its own schedule, budget and
    /// in-flight bound); in-flight polls finish (each bounded by the API timeout).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let updates = self
            .chat_updates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let mut feeds = Vec::new();
        let mut loops = Vec::new();
        for account in 0..self.gateways.len() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            feeds.push(tx);
            loops.push(tokio::spawn(self.clone().run_account(
                account,
                Some(rx),
                shutdown.clone(),
            )));
        }
        // A reload or the lease loop speaks for every account: each loop takes its part.
        if let Some(mut updates) = updates {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        Some(update) = updates.recv() => {
                            for feed in &feeds {
                                let _ = feed.send(update.clone());
                            }
                        }
                        else => break,
                    }
                }
            });
        }
        for l in loops {
            let _ = l.await;
        }
    }

    /// Polls one account's chats until `shutdown`.
    async fn run_account(
        self: Arc<Self>,
        account: usize,
        mut updates: Option<tokio::sync::mpsc::UnboundedReceiver<ChatsUpdate>>,
        shutdown: CancellationToken,
    ) {
        let api = &self.config.accounts[account].api;
        let gateway = &self.gateways[account];
        // In a cluster the lease loop says which chats are this instance's: none until then.
        let mut chats: Vec<WatchedChat> = if self.cluster.is_some() {
            Vec::new()
        } else {
            self.config
                .chats
                .iter()
                .filter(|c| c.account == account)
                .cloned()
                .collect()
        };
        for chat in &chats {
            self.board.watch(chat.id.as_str());
        }
        let intervals: Vec<Duration> = chats.iter().map(|c| c.interval).collect();
        let mut schedule = Schedule::new(
            &intervals,
            self.config.scheduler,
            api.rate_per_second,
            Instant::now(),
        )
        .coalescing(self.config.coalesce);
        let mut failures = vec![0u32; chats.len()];
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
        let slots = Arc::new(Semaphore::new(max_in_flight(api.burst)));
        let tracker = TaskTracker::new();
        let mut tick = tokio::time::interval(RECOMPUTE_EVERY);
        let mut last_recompute = Instant::now();
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let finish =
            |schedule: &mut Schedule, done: Done, failures: &mut [u32], chats: &[WatchedChat]| {
                failures[done.index] = match done.how {
                    Finished::Failed { .. } | Finished::Unauthorized { .. } => {
                        failures[done.index].saturating_add(1)
                    }
                    Finished::Ok { .. } => 0,
                    _ => failures[done.index],
                };
                if let Some(verdict) = schedule.finished(done.index, Instant::now(), done.how) {
                    let retry_in = match done.how {
                        Finished::Unauthorized { retry_in } => retry_in,
                        _ => Duration::ZERO,
                    };
                    events::unauthorized(chats[done.index].id.as_str(), verdict, retry_in);
                }
            };
        loop {
            let next_due = schedule.next_at();
            // A chat already due goes without a trip through the timer (which rounds up to its
            // next millisecond: a bunch of due chats would leave a millisecond apart).
            let due_now = next_due.is_some_and(|t| t <= Instant::now());
            if due_now {
                if shutdown.is_cancelled() {
                    break;
                }
                // Busy without a pause: the adaptive shares are still recomputed each second.
                if last_recompute.elapsed() >= RECOMPUTE_EVERY {
                    last_recompute = Instant::now();
                    schedule.recompute(last_recompute);
                }
            } else {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some(done) = done_rx.recv() => {
                        finish(&mut schedule, done, &mut failures, &chats);
                        continue;
                    }
                    Some(update) = recv_opt(&mut updates) => {
                        self.apply_update(account, update, &mut schedule, &mut chats, &mut failures);
                        continue;
                    }
                    _ = tick.tick() => {
                        last_recompute = Instant::now();
                        schedule.recompute(last_recompute);
                        continue;
                    }
                    _ = sleep_until_opt(next_due) => {}
                }
            }
            // Something is due: take an in-flight slot and a budget reservation, then choose.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (waited, reserved) = tokio::select! {
                _ = shutdown.cancelled() => break,
                w = gateway.budget.acquire_at() => w,
            };
            self.metrics.budget_waited(account, waited);
            while let Ok(done) = done_rx.try_recv() {
                finish(&mut schedule, done, &mut failures, &chats);
            }
            // A reload is applied even while chats are due back to back (a backlog is when a
            // higher rate or fewer chats is most wanted).
            while let Some(update) = updates.as_mut().and_then(|rx| rx.try_recv().ok()) {
                self.apply_update(account, update, &mut schedule, &mut chats, &mut failures);
            }
            let Some(index) = schedule.pop_due(Instant::now()) else {
                continue;
            };
            let this = self.clone();
            let tx = done_tx.clone();
            let chat = chats[index].clone();
            let fails = failures[index];
            tracker.spawn(async move {
                let how = this.poll_chat(&chat, fails, reserved).await;
                drop(permit);
                let _ = tx.send(Done { index, how });
            });
        }
        tracker.close();
        tracker.wait().await;
    }

    /// Applies a config reload's chats and rate: removed chats are retired (never due again),
    /// new ones added (due at once), changed intervals and the budget take effect now.
    fn apply_update(
        &self,
        account: usize,
        mut update: ChatsUpdate,
        schedule: &mut Schedule,
        chats: &mut Vec<WatchedChat>,
        failures: &mut Vec<u32>,
    ) {
        let now = Instant::now();
        let name = self.config.accounts[account].name.as_str();
        if let Some((_, per_second, burst)) = update.rates.iter().find(|(n, _, _)| n == name) {
            self.gateways[account].budget.set_rate(*per_second, *burst);
            schedule.set_rate(*per_second);
        }
        update.chats.retain(|c| c.id.account() == name);
        for c in &mut update.chats {
            c.account = account;
        }
        let wanted: HashMap<&str, &WatchedChat> =
            update.chats.iter().map(|c| (c.id.as_str(), c)).collect();
        let mut kept = HashSet::new();
        for (i, chat) in chats.iter_mut().enumerate() {
            if !schedule.is_live(i) {
                continue;
            }
            match wanted.get(chat.id.as_str()) {
                Some(w) => {
                    schedule.set_interval(i, w.interval, now);
                    *chat = (*w).clone();
                    kept.insert(chat.id.as_str().to_string());
                }
                None => {
                    schedule.retire(i);
                    self.metrics.retire_chat(chat.id.as_str());
                    self.snapshots
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(chat.id.as_str());
                    events::chat_unwatched(chat.id.as_str());
                    self.board.forget(chat.id.as_str());
                }
            }
        }
        for chat in &update.chats {
            if kept.contains(chat.id.as_str()) {
                continue;
            }
            // Watched before and removed: its slot comes back (a poll of it still in flight
            // finishes first, so the chat is never polled twice at once).
            if let Some(i) =
                (0..chats.len()).find(|&i| !schedule.is_live(i) && chats[i].id == chat.id)
            {
                schedule.revive(i, chat.interval, now);
                // Read again from the store: another instance may have polled it meanwhile.
                self.snapshots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(chat.id.as_str());
                chats[i] = chat.clone();
                failures[i] = 0;
                self.metrics.revive_chat(chat.id.as_str());
                events::chat_watched(chat.id.as_str(), chat.interval);
                self.board.watch(chat.id.as_str());
                continue;
            }
            self.snapshots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(chat.id.as_str());
            let index = schedule.add(chat.interval, now);
            debug_assert_eq!(index, chats.len());
            chats.push(chat.clone());
            failures.push(0);
            self.metrics.add_chat(chat.id.as_str());
            events::chat_watched(chat.id.as_str(), chat.interval);
            self.board.watch(chat.id.as_str());
        }
    }

    /// Polls one chat once (with gap recovery; the first request's budget is already taken);
    /// returns how it ended, for the schedule.
    async fn poll_chat(&self, chat: &WatchedChat, failures: u32, reserved: Instant) -> Finished {
        let started = Instant::now();
        let result = self.poll_once(chat, Some(reserved)).await;
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(report) => {
                self.stats.polls_ok.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .poll(chat.account, chat.id.as_str(), PollOutcome::Ok, seconds);
                let now_ms = jiff::Timestamp::now().as_millisecond();
                self.board.ok(chat.id.as_str(), now_ms, report.unread);
                Finished::Ok {
                    inbound: report.inbound,
                }
            }
            Err(e) => {
                self.stats.polls_failed.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .poll(chat.account, chat.id.as_str(), e.outcome(), seconds);
                let failures = failures.saturating_add(1);
                let how = match &e {
                    PollError::Fetch(FetchError::RateLimited(_)) => Finished::RateLimited,
                    PollError::Fetch(FetchError::Unauthorized) => Finished::Unauthorized {
                        retry_in: backoff(chat.interval, failures),
                    },
                    _ => Finished::Failed {
                        retry_in: backoff(chat.interval, failures),
                    },
                };
                let retry_in = match how {
                    Finished::Failed { retry_in } => Some(retry_in),
                    _ => None,
                };
                events::poll_failed(chat.id.as_str(), &e, retry_in);
                let now_ms = jiff::Timestamp::now().as_millisecond();
                self.board
                    .failed(chat.id.as_str(), now_ms, e.to_string(), retry_in);
                how
            }
        }
    }

    /// Reads a chat's stored state (its first poll, or the first after a failed one), in the
    /// store's writer like every other store call of the daemon: through the runtime's
    /// blocking pool, the first polls of 100 chats started 20 threads only to wait for the
    /// store's one connection, each keeping an allocator heap and a stack of its own.
    async fn load_snapshot(&self, chat_key: &str) -> Result<ChatSnapshot, PollError> {
        let ck = chat_key.to_string();
        let (state, memory) = self
            .commits
            .read(move |store| store.load_chat(&ck))
            .await
            .ok_or_else(|| PollError::Store("the store's writer has stopped".into()))?
            .map_err(|e| PollError::Store(e.to_string()))?;
        Ok(ChatSnapshot { state, memory })
    }

    /// Logs and counts the skipped messages of a page not seen before; returns how many.
    fn note_skipped(&self, chat_key: &str, skipped: &[crate::gateway::model::Skipped]) -> usize {
        if skipped.is_empty() {
            return 0;
        }
        let chat_hash = crate::gateway::model::fnv1a(chat_key.as_bytes());
        let fresh: Vec<&crate::gateway::model::Skipped> = {
            let mut seen = self.skipped_seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() > SKIPPED_MEMORY {
                seen.clear();
            }
            skipped
                .iter()
                .filter(|s| seen.insert(s.identity ^ chat_hash.rotate_left(17)))
                .collect()
        };
        for s in &fresh {
            events::message_skipped(chat_key, s);
        }
        fresh.len()
    }

    /// One poll of one chat: fetch (growing `limit` while the page may hide more), diff, decide,
    /// commit, then tell the world. `prepaid`: the time the scheduler reserved in the budget
    /// for the first request.
    async fn poll_once(
        &self,
        chat: &WatchedChat,
        prepaid: Option<Instant>,
    ) -> Result<PollReport, PollError> {
        let api = &self.config.accounts[chat.account].api;
        let gateway = &self.gateways[chat.account];
        let mut limit = api.message_limit;
        let mut prepaid = prepaid;
        let chat_key = chat.id.as_str().to_string();
        // Taken out while this poll runs (a chat has one poll at a time), put back once committed.
        let mut snapshot: Option<ChatSnapshot> = self
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&chat_key);
        let (page, mut snapshot, d) = loop {
            let page = if let Some(reserved) = prepaid.take() {
                gateway.fetch_prepaid(&chat.id, limit, reserved).await?
            } else {
                let (page, waited) = gateway.fetch_waited(&chat.id, limit).await;
                self.metrics.budget_waited(chat.account, waited);
                page?
            };
            crate::failpoint::hit("after_fetch");
            if let Some(pause) = crate::failpoint::pause_for("after_fetch") {
                tokio::time::sleep(pause).await;
            }
            let mut snap = match snapshot.take() {
                Some(s) => s,
                None => self.load_snapshot(&chat_key).await?,
            };
            if !snap.state.known {
                // Watched since this daemon started, whenever its first poll succeeds.
                snap.state.first_seen = self.started_s;
            }
            // A page is full when the gateway sent `limit` messages, parsed or not: a skipped
            // one still takes a place.
            let full_at = (limit as usize).saturating_sub(page.skipped.len());
            let d = diff(
                &snap.state,
                &page.messages,
                full_at,
                self.config.on_first_sight,
            );
            if d.may_hide_more && limit < api.max_message_limit {
                limit = limit.saturating_mul(2).min(api.max_message_limit);
                snapshot = Some(snap);
                continue;
            }
            if d.may_hide_more {
                self.stats.gaps.fetch_add(1, Ordering::Relaxed);
                self.metrics.gap_detected();
                let oldest = page.messages.iter().map(|m| m.timestamp).min().unwrap_or(0);
                events::gap_detected(&chat_key, snap.state.watermark, oldest, limit);
            }
            break (page, snap, d);
        };
        let skipped = self.note_skipped(&chat_key, &page.skipped);
        if skipped > 0 {
            self.stats
                .messages_skipped
                .fetch_add(skipped as u64, Ordering::Relaxed);
        }
        if !snapshot.state.known {
            events::chat_first_seen(&chat_key, d.history.len());
        }
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let new_msgs = new_messages(&page, &d);
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner()).clone();
        let silences = self
            .silences
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let decision = decide_poll(
            &rules,
            &chat.id,
            &page,
            &new_msgs,
            &snapshot.memory,
            &silences,
            now_ms,
            self.config.history.is_some(),
        );
        // A poll that changes nothing needs no write (most polls of idle chats).
        if let Some(mut commit) =
            commit_of(&chat_key, &page, &d, &decision, &snapshot.state, now_ms)
        {
            if self.config.history.is_some() {
                commit.history =
                    crate::engine::history::entries(&rules, &chat.id, &new_msgs, &decision, now_ms);
            }
            // In a cluster: no lease (it ran out while the poll ran), no commit (-1 never matches).
            commit.lease = self
                .cluster
                .as_ref()
                .map(|c| c.token(&chat_key).unwrap_or(-1));
            if let Some(pause) = crate::failpoint::pause_for("before_commit") {
                tokio::time::sleep(pause).await;
            }
            let (commit, result) = self.commits.commit(commit).await;
            if let Err(e) = result {
                if commit.lease.is_some() && e.contains("the lease on chat") {
                    self.metrics.fenced();
                    events::fenced(&chat_key);
                } else {
                    events::store_failed(&chat_key, &e);
                }
                return Err(PollError::Store(e));
            }
            snapshot.apply(&commit);
        }
        self.snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(chat_key.clone(), snapshot);

        crate::failpoint::hit("after_commit");
        // Committed: now it is safe to tell the world.
        self.stats
            .messages_new
            .fetch_add(d.new.len() as u64, Ordering::Relaxed);
        self.stats
            .messages_updated
            .fetch_add(d.updated.len() as u64, Ordering::Relaxed);
        self.stats.rules_fired.fetch_add(
            (decision.firings.len() + decision.chat_firings.len() + decision.script_firings.len())
                as u64,
            Ordering::Relaxed,
        );
        self.metrics.messages(d.new.len(), d.updated.len(), skipped);
        for ScriptFiring {
            rule_id: rule,
            message_index,
        } in &decision.script_firings
        {
            if decision.muted_by(rule, *message_index).is_none() {
                self.rule_board.fired(rule, now_ms);
            }
            self.metrics.rule_matched(rule);
            events::rule_fired(rule, &chat_key, "(rule file)");
        }
        for ChatFiring { rule_id: rule, .. } in &decision.chat_firings {
            if decision.muted_by(rule, None).is_none() {
                self.rule_board.fired(rule, now_ms);
            }
            self.metrics.rule_matched(rule);
            events::chat_rule_fired(rule, &chat_key);
        }
        for rule in &decision.resolved {
            events::chat_rule_resolved(rule, &chat_key);
        }
        for m in &decision.muted {
            self.metrics.rule_muted(&m.rule_id);
            let message = m.message_index.map(|i| new_msgs[i].serialized_id.as_str());
            events::rule_muted(&m.rule_id, &chat_key, message, m.silence);
        }
        // A muted firing shows in the history as muted; the board counts what went out.
        for f in &decision.firings {
            if decision
                .muted_by(&f.rule_id, Some(f.message_index))
                .is_none()
            {
                self.rule_board.fired(&f.rule_id, now_ms);
            }
            self.metrics.rule_matched(&f.rule_id);
            events::rule_fired(
                &f.rule_id,
                &chat_key,
                &new_msgs[f.message_index].serialized_id,
            );
        }
        for RuleOnMessage {
            rule_id: rule,
            message_index: i,
        } in &decision.stale
        {
            events::stale(rule, &chat_key, &new_msgs[*i].serialized_id);
        }
        for l in &decision.logs {
            events::rule_log(&l.rule_id, l.level, &l.text);
        }
        for RuleError {
            rule_id: rule,
            error: e,
        } in &decision.errors
        {
            self.metrics.rule_failed(rule);
            self.rule_board.failed(rule, e);
            events::rule_error(rule, &chat_key, e);
        }
        for d in &decision.deliveries {
            self.wake_dispatcher.group(d.chat_id.clone(), d.url.clone());
        }
        Ok(PollReport {
            inbound: new_msgs.iter().filter(|m| !m.key.from_me).count(),
            unread: page.chat.unread_count,
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("state store: {0}")]
    Store(String),
}

impl PollError {
    /// The bounded `outcome` label of this failure.
    fn outcome(&self) -> PollOutcome {
        match self {
            PollError::Fetch(FetchError::RateLimited(_)) => PollOutcome::RateLimited,
            PollError::Fetch(FetchError::Unauthorized) => PollOutcome::Unauthorized,
            PollError::Fetch(FetchError::NotFound) => PollOutcome::NotFound,
            PollError::Fetch(FetchError::Status(s)) if *s >= 500 => PollOutcome::ServerError,
            PollError::Fetch(FetchError::Status(_)) => PollOutcome::HttpError,
            PollError::Fetch(FetchError::Timeout(_)) => PollOutcome::Timeout,
            PollError::Fetch(FetchError::Transport(_)) => PollOutcome::Transport,
            PollError::Fetch(FetchError::Reply(_) | FetchError::TooLarge(_)) => {
                PollOutcome::BadReply
            }
            PollError::Store(_) => PollOutcome::StoreError,
        }
    }
}

/// Exponential backoff from the chat's interval, capped at 5 minutes, with ±20% jitter.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let base = interval.as_secs_f64().max(1.0) * 2f64.powi(failures.min(6) as i32 - 1);
    let capped = base.min(300.0);
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    Duration::from_secs_f64(capped * jitter)
}

/// The next update from `rx`; pending forever without one.
async fn recv_opt<T>(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
