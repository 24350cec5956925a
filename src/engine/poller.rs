//! The poller: a central scheduler that polls each watched chat within the API budget, diffs
//! the page against the watermark, evaluates the rules, and commits the watermark and the
//! queued deliveries in one store transaction.
//!
//! Owns: when each chat is polled, gap recovery (asking again with a larger limit), per-chat
//! backoff. Must not: send webhooks (the dispatcher does) or hold state the store does not
//! have (a crash at any point loses nothing).

use crate::config::{Config, WatchedChat};
use crate::engine::decide::{Clock, decide_chat, decide_with};
use crate::engine::watermark::diff;
use crate::events;
use crate::gateway::client::{FetchError, Gateway};
use crate::gateway::model::{Message, MessageKey};
use crate::rules::RuleSet;
use crate::store::{PollCommit, Store};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How many chats may be in flight at once (each still waits for the budget).
const MAX_IN_FLIGHT: usize = 64;

/// Counters the engine keeps (exposed by `/metrics` and the demo summary).
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
    pub gateway: Gateway,
    pub store: Store,
    pub rules: Arc<RwLock<Arc<RuleSet>>>,
    pub wake_dispatcher: Arc<Notify>,
    pub stats: Arc<Stats>,
}

/// The outcome of one chat's poll: when to poll it next.
struct Done {
    index: usize,
    next: Instant,
    failures: u32,
}

impl Poller {
    /// Polls until `shutdown`; in-flight polls finish (each bounded by the API timeout).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let chats = self.config.chats.clone();
        let mut failures = vec![0u32; chats.len()];
        let mut heap: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
        let start = Instant::now();
        for i in 0..chats.len() {
            heap.push(Reverse((start, i)));
        }
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let tracker = TaskTracker::new();
        loop {
            let next_due = heap.peek().map(|Reverse((t, _))| *t);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = done_rx.recv() => {
                    failures[done.index] = done.failures;
                    heap.push(Reverse((done.next, done.index)));
                }
                _ = sleep_until_opt(next_due) => {
                    let Some(Reverse((_, index))) = heap.pop() else { continue };
                    let permit = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    };
                    let this = self.clone();
                    let tx = done_tx.clone();
                    let chat = chats[index].clone();
                    let fails = failures[index];
                    tracker.spawn(async move {
                        let (next, failures) = this.poll_chat(&chat, fails).await;
                        drop(permit);
                        let _ = tx.send(Done { index, next, failures });
                    });
                }
            }
        }
        tracker.close();
        tracker.wait().await;
    }

    /// Polls one chat once (with gap recovery); returns when to poll it next and its failure count.
    async fn poll_chat(&self, chat: &WatchedChat, failures: u32) -> (Instant, u32) {
        match self.poll_once(chat).await {
            Ok(()) => {
                self.stats.polls_ok.fetch_add(1, Ordering::Relaxed);
                (Instant::now() + chat.interval, 0)
            }
            Err(e) => {
                self.stats.polls_failed.fetch_add(1, Ordering::Relaxed);
                let failures = failures.saturating_add(1);
                let delay = match &e {
                    PollError::Fetch(FetchError::RateLimited(_)) => chat.interval,
                    PollError::Fetch(FetchError::Unauthorized) => {
                        events::unauthorized(chat.id.as_str());
                        backoff(chat.interval, failures).max(Duration::from_secs(60))
                    }
                    _ => backoff(chat.interval, failures),
                };
                events::poll_failed(chat.id.as_str(), &e, delay);
                (Instant::now() + delay, failures)
            }
        }
    }

    async fn poll_once(&self, chat: &WatchedChat) -> Result<(), PollError> {
        let api = &self.config.api;
        let mut limit = api.message_limit;
        let chat_key = chat.id.as_str().to_string();
        let (page, state, memory, d) = loop {
            let page = self.gateway.fetch(&chat.id, limit).await?;
            crate::failpoint::hit("after_fetch");
            let store = self.store.clone();
            let keys: Vec<MessageKey> = page.messages.iter().map(|m| m.key.clone()).collect();
            let ck = chat_key.clone();
            let (state, memory) = tokio::task::spawn_blocking(move || {
                let refs: Vec<&MessageKey> = keys.iter().collect();
                let (state, _) = store.chat_state(&ck, &refs)?;
                Ok::<_, crate::store::StoreError>((state, store.rule_memory(&ck)?))
            })
            .await
            .map_err(|e| PollError::Store(e.to_string()))?
            .map_err(|e| PollError::Store(e.to_string()))?;
            // A page is full when the gateway sent `limit` messages, parsed or not: a skipped
            // one still takes a place.
            let full_at = (limit as usize).saturating_sub(page.skipped.len());
            let d = diff(&state, &page.messages, full_at, self.config.on_first_sight);
            if d.may_hide_more && limit < api.max_message_limit {
                limit = limit.saturating_mul(2).min(api.max_message_limit);
                continue;
            }
            if d.may_hide_more {
                self.stats.gaps.fetch_add(1, Ordering::Relaxed);
                let oldest = page.messages.iter().map(|m| m.timestamp).min().unwrap_or(0);
                events::gap_detected(&chat_key, state.watermark, oldest, limit);
            }
            break (page, state, memory, d);
        };
        if !page.skipped.is_empty() {
            self.stats
                .messages_skipped
                .fetch_add(page.skipped.len() as u64, Ordering::Relaxed);
            events::messages_skipped(&chat_key, &page.skipped);
        }
        if !state.known {
            events::chat_first_seen(&chat_key, d.history.len());
        }
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let new_msgs: Vec<&Message> = d.new.iter().map(|&i| &page.messages[i]).collect();
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut decision = decide_with(
            &rules,
            &chat.id,
            &page.chat,
            &new_msgs,
            &memory,
            Clock::Now(now_ms / 1000),
        );
        decide_chat(
            &rules,
            &chat.id,
            &page.chat,
            &page.messages,
            &memory,
            now_ms / 1000,
            &mut decision,
        );

        let mut seen = Vec::with_capacity(d.new.len() + d.updated.len() + d.history.len());
        for &i in d.new.iter().chain(&d.updated).chain(&d.history) {
            let m = &page.messages[i];
            seen.push((m.key.clone(), m.timestamp, m.fingerprint()));
        }
        let commit = PollCommit {
            chat_id: chat_key.clone(),
            watermark: d.watermark,
            low_water: d.low_water,
            seen,
            deliveries: decision.deliveries.clone(),
            cooldowns: decision.cooldowns.clone(),
            thresholds: decision.thresholds.clone(),
            chat_rules: decision.chat_rules.clone(),
            script_state: decision.script_state.clone(),
            now_ms,
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.commit_poll(&commit))
            .await
            .map_err(|e| PollError::Store(e.to_string()))?
            .map_err(|e| {
                events::store_failed(&chat_key, &e);
                PollError::Store(e.to_string())
            })?;

        crate::failpoint::hit("after_commit");
        // Committed: now it is safe to tell the world.
        self.stats
            .messages_new
            .fetch_add(d.new.len() as u64, Ordering::Relaxed);
        self.stats
            .messages_updated
            .fetch_add(d.updated.len() as u64, Ordering::Relaxed);
        self.stats.rules_fired.fetch_add(
            (decision.firings.len() + decision.chat_firings.len()) as u64,
            Ordering::Relaxed,
        );
        for (rule, _) in &decision.script_firings {
            events::rule_fired(rule, &chat_key, "(rule file)");
        }
        for (rule, _) in &decision.chat_firings {
            events::chat_rule_fired(rule, &chat_key);
        }
        for f in &decision.firings {
            events::rule_fired(
                &f.rule_id,
                &chat_key,
                &new_msgs[f.message_index].serialized_id,
            );
        }
        for (rule, i) in &decision.stale {
            events::stale(rule, &chat_key, &new_msgs[*i].serialized_id);
        }
        for l in &decision.logs {
            events::rule_log(&l.rule_id, l.level, &l.text);
        }
        for (rule, e) in &decision.errors {
            events::rule_error(rule, &chat_key, e);
        }
        if !decision.deliveries.is_empty() {
            self.wake_dispatcher.notify_one();
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("state store: {0}")]
    Store(String),
}

/// Exponential backoff from the chat's interval, capped at 5 minutes, with ±20% jitter.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let base = interval.as_secs_f64().max(1.0) * 2f64.powi(failures.min(6) as i32 - 1);
    let capped = base.min(300.0);
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    Duration::from_secs_f64(capped * jitter)
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
