//! The domain types every layer shares: a message's identity, what is known about a chat (its
//! watermark and seen ids), what rules remember per chat, and the deliveries a poll queues.
//!
//! Owns: these types and their plain meaning. Must not: import any other module of the crate
//! (the store, the engine and the delivery side all depend on this, never the other way; a
//! test in `tests/it/borders.rs` holds the line).

use serde_json::Value;
use std::collections::HashMap;

/// A message's identity within one watched chat: (`id.fromMe`, `id.id`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey {
    pub from_me: bool,
    pub id: String,
}

impl MessageKey {
    /// A compact form for storage and delivery ids: `true_ABC` / `false_ABC`.
    pub fn compact(&self) -> String {
        format!("{}_{}", self.from_me, self.id)
    }
}

/// What the store knows about one chat before this poll.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatState {
    /// False before the chat's first successful poll.
    pub known: bool,
    /// The newest message time seen (unix seconds).
    pub watermark: i64,
    /// Ids older than this were pruned; an unknown id older than this is old history.
    pub low_water: i64,
    /// Since when the chat is watched (unix seconds, our clock: the start of the daemon that
    /// first polled it): with `skip_history`, an unknown message older than this (less
    /// the engine's first-sight slack) existed before we looked. Before the chat's first successful
    /// poll, the caller sets it to its own start (0: unknown, the whole first page is history).
    pub first_seen: i64,
    /// The known ids (at least those of the page) with their time and fingerprint.
    pub seen: HashMap<MessageKey, SeenId>,
}

/// What is stored about a message id already seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeenId {
    /// Its time when first seen (unix seconds); pruned once below the low-water mark.
    pub ts: i64,
    /// The message's fingerprint when last seen: a change makes it an update.
    pub fingerprint: u64,
}

/// One webhook to queue in the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub delivery_id: String,
    pub rule_id: String,
    pub chat_id: String,
    /// `true_ID` / `false_ID` (message rules) or `chat@SINCE` (chat rules).
    pub message_key: String,
    pub action_index: usize,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A firing collected for a digest, committed with the poll that found it (so a crash loses
/// none and the watermark never passes one that is not stored).
#[derive(Clone, Debug, PartialEq)]
pub struct DigestItem {
    pub rule_id: String,
    /// The digest's group: the chat's id (`group_by: [chat]`) or `*` (all chats).
    pub group: String,
    /// The window the firing falls in: its start (unix seconds) and length in seconds.
    pub window_start: i64,
    pub window_secs: i64,
    /// What fired: the chat and the message (or chat-rule) key; unique with the rule.
    pub chat_id: String,
    pub item_key: String,
    /// When it fired (unix seconds): the digest lists its firings in this order.
    pub fired_at: i64,
    /// The firing as the digest lists it (JSON text).
    pub item: String,
}

/// A silence: the actions of matching rules are muted until it ends (by rule, chat or both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Silence {
    pub id: i64,
    /// Only this rule (None: every rule).
    pub rule_id: Option<String>,
    /// Only this chat, as the gateway names it (`966500000000@c.us`; None: every chat).
    pub chat_id: Option<String>,
    /// Until when (unix milliseconds, excluded).
    pub until_ms: i64,
    pub reason: String,
    pub created_at_ms: i64,
}

impl Silence {
    /// Whether this silence mutes `rule` in `chat` at `now_ms`.
    pub fn mutes(&self, rule: &str, chat: &str, now_ms: i64) -> bool {
        now_ms < self.until_ms
            && self.rule_id.as_deref().is_none_or(|r| r == rule)
            && self.chat_id.as_deref().is_none_or(|c| {
                // A silence on a chat without its account mutes that chat in every account.
                c == chat
                    || (!c.contains('/') && chat.split_once('/').is_some_and(|(_, id)| id == c))
            })
    }
}

/// The most firings a digest may list (`digest.max_items`).
pub const DIGEST_ITEMS_MAX: usize = 1000;

/// One digest: a rule's firings in one group and window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestWindow {
    pub rule_id: String,
    pub group: String,
    pub window_start: i64,
    pub window_secs: i64,
}

/// A digest sealed: how many firings it had, the deliveries made of it and how many of those
/// were new to the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedDigest {
    pub window: DigestWindow,
    pub count: usize,
    pub deliveries: usize,
    pub queued: usize,
}

/// The group of a digest over all chats (`group_by: [rule]`).
pub(crate) const ALL_CHATS: &str = "*";

/// A chat rule's timer for one chat: since when its condition holds, and whether it fired
/// in this holding spell (it re-arms when the condition stops holding).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChatRuleState {
    pub since: Option<i64>,
    pub fired: bool,
}

/// What rules remember per chat between polls (stored with the watermark).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Memory {
    /// rule id → silent until (unix seconds).
    pub cooldowns: HashMap<String, i64>,
    /// rule id → times of matches counted towards its threshold.
    pub thresholds: HashMap<String, Vec<i64>>,
    /// chat rule id → its timer.
    pub chat_rules: HashMap<String, ChatRuleState>,
    /// rule file id → its `state_set` values for this chat.
    pub script_state: HashMap<String, serde_json::Map<String, Value>>,
}

/// A digest as templates see it (`digest`) and its envelope carries: the window, how many
/// firings there were, the listed ones (`items`, oldest first) and how many were left out.
pub fn digest_json(start: &str, end: &str, count: usize, items: Vec<Value>) -> Value {
    let listed = items.len();
    serde_json::json!({
        "window": { "start": start, "end": end },
        "count": count,
        "more": count.saturating_sub(listed),
        "items": items,
    })
}

/// RFC 3339 in UTC, seconds precision (`2026-11-28T06:40:52Z`).
pub fn rfc3339(unix: i64) -> String {
    match jiff::Timestamp::from_second(unix) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => "1970-01-01T00:00:00Z".into(),
    }
}

/// One entry of the run history: what the rules made of one new message, or of one poll's
/// chat rules (`message_id` None). Stored with the poll's commit; kept for
/// `history.keep` entries and `history.max_age`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    /// Its row id (0 until stored; the row holds it, not the stored text).
    #[serde(default, skip_serializing)]
    pub id: i64,
    pub at_ms: i64,
    pub chat_id: String,
    /// The message's serialized id; None: the entry is about the chat rules.
    pub message_id: Option<String>,
    /// The message's type (`chat`, `image`, …) and whether the business sent it.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub from_me: bool,
    /// One line per rule that had something to say, in rule order.
    pub rules: Vec<RuleTrace>,
    /// Message rules that were not candidates (none of their keywords was in the message).
    #[serde(default)]
    pub not_candidates: usize,
}

/// What one rule did in a [`HistoryEntry`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleTrace {
    pub rule: String,
    /// `fired`, `muted` (a silence held its actions back), `not_matched`, `cooldown`,
    /// `stale`, `counted`, `quiet` (a rule file asked for nothing), `error`, `timer` (a chat
    /// rule's timer moved), `resolved`.
    pub outcome: String,
    /// Why: the first condition that failed, the silence, the count so far, the timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}
