//! The mock gateway: a fake Cartat that speaks real HTTP, for the integration tests, the
//! offline demo (`cartat-rules demo`), `cartat-rules mock-gateway` and load tests.
//!
//! Owns: the scenario file format ([`Scenario`]), serving `GET /chats/{chat_id}` in the exact
//! whatsapp-web.js shape the real gateway uses (see `fixtures/real/`), scheduled messages
//! (appear, get edited, get revoked at fixed offsets from start), injected faults (429, 5xx,
//! non-JSON, truncated JSON, slow and hung replies), generated synthetic traffic for load tests,
//! and observability for tests: the request log, the list of planted keyword messages and
//! message injection (`/__mock/…` routes and [`MockGateway`] methods).
//!
//! Must not: ever be pointed at or proxy to a real gateway; bind sockets itself (it serves only
//! on the listener it is handed); keep every synthetic message in memory (synthetic message `k`
//! of chat `c` is derived from `(seed, c, k)`, so a reply costs O(limit) whatever the traffic);
//! log the token.
//!
//! Everything is deterministic given the scenario and the start instant: message ids, bodies
//! and timestamps do not depend on when or how often the mock is polled.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::duration::HumanDuration;

/// The business account the mock plays: `to` of inbound messages, `from` of outbound ones.
pub const BUSINESS_ID: &str = "966511111111@c.us";

/// The group member who authors inbound group messages unless a message names its `author`.
pub const GROUP_MEMBER_ID: &str = "966522222222@c.us";

/// The token a scenario requires when it names none.
pub const DEFAULT_TOKEN: &str = "mock-token";

/// Synthetic chat `i` is `9665` followed by the 8 digits of `SYNTHETIC_BASE + i`.
const SYNTHETIC_BASE: u64 = 10_000_000;
/// How many synthetic chats the id space holds.
const SYNTHETIC_MAX_CHATS: u64 = 100_000_000 - SYNTHETIC_BASE;

/// Text for synthetic messages that carry no keyword: a mix of Arabic and English.
const FILLER: &[&str] = &[
    "السلام عليكم",
    "hello",
    "متى يوصل الطلب؟",
    "thanks a lot",
    "كم السعر لو سمحت",
    "is the shop open today?",
    "تمام، شكرا",
    "I need help with my order",
    "وين المندوب؟",
    "ok",
    "صباح الخير",
    "can I change the address?",
    "ابي استفسر عن الفاتورة",
    "see you tomorrow",
    "الله يعطيك العافية",
    "payment done ✅",
];

// ---------------------------------------------------------------------------------------------
// Scenario: the raw, serde-only description of what the mock serves.
// ---------------------------------------------------------------------------------------------

/// What the mock serves: chats with scheduled messages, faults, optional synthetic traffic.
///
/// Read from YAML with [`Scenario::from_yaml`] / [`Scenario::from_file`], or built in code
/// (every field is public and [`Default`] is an empty scenario with the default token).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Bearer token every `/chats` request must carry; others get 401. Default `mock-token`.
    #[serde(default = "default_token")]
    pub token: String,
    /// The chats served, each with its scheduled messages.
    #[serde(default)]
    pub chats: Vec<ChatSpec>,
    /// Faults applied to matching `/chats` requests: the first that matches and has uses left wins.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
    /// Generated traffic over many chats, for load tests.
    #[serde(default)]
    pub synthetic: Option<SyntheticSpec>,
    /// How many request records the log keeps (oldest dropped first). Default 1,000,000.
    #[serde(default = "default_max_recorded_requests")]
    pub max_recorded_requests: usize,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            token: default_token(),
            chats: Vec::new(),
            faults: Vec::new(),
            synthetic: None,
            max_recorded_requests: default_max_recorded_requests(),
        }
    }
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario")
            .field("token", &"<redacted>")
            .field("chats", &self.chats)
            .field("faults", &self.faults)
            .field("synthetic", &self.synthetic)
            .field("max_recorded_requests", &self.max_recorded_requests)
            .finish()
    }
}

fn default_token() -> String {
    DEFAULT_TOKEN.to_owned()
}

fn default_max_recorded_requests() -> usize {
    1_000_000
}

/// One chat the mock serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSpec {
    /// A bare phone number (`966500000000`, served as `966500000000@c.us`) or a full id
    /// (`…@c.us`, `…@g.us`, `…@lid`), used as is.
    pub id: String,
    /// Display name. Default: the number (the part before `@`).
    #[serde(default)]
    pub name: Option<String>,
    /// Whether the chat is a group. Default: true iff the id ends in `@g.us`.
    #[serde(default)]
    pub is_group: Option<bool>,
    /// The `unreadCount` served, fixed (−1 means "marked unread"). Default 0.
    #[serde(default)]
    pub unread_count: i64,
    /// Scheduled messages, in any order; ties keep this order.
    #[serde(default)]
    pub messages: Vec<MessageSpec>,
}

/// One scheduled message of a chat.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    /// When it becomes visible, relative to the mock's start (`-1h`: history; `2s`; `500ms`).
    /// Its timestamp is the start's unix second plus this offset in whole seconds.
    pub at: Offset,
    /// The text. Default empty.
    #[serde(default)]
    pub body: String,
    /// The message id (`id.id`). Default `MOCK{chat index}_{message index}`.
    #[serde(default)]
    pub id: Option<String>,
    /// Sent by the business account (outbound). Default false.
    #[serde(default)]
    pub from_me: bool,
    /// The whatsapp-web.js message type (`chat`, `image`, `e2e_notification`, …). Default `chat`.
    #[serde(default = "default_type", rename = "type")]
    pub kind: String,
    /// Sender of an inbound group message (`966…@c.us`, `…@lid`). Groups only; default
    /// `966522222222@c.us`.
    #[serde(default)]
    pub author: Option<String>,
    /// From this offset on the message is served as `type: revoked` with an empty body.
    #[serde(default)]
    pub revoke_at: Option<Offset>,
    /// From `edit.at` on the message is served with `edit.body`.
    #[serde(default)]
    pub edit: Option<EditSpec>,
}

fn default_type() -> String {
    "chat".to_owned()
}

/// An edit of a scheduled message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditSpec {
    /// When the edit happens, relative to the mock's start.
    pub at: Offset,
    /// The new text.
    pub body: String,
}

/// A fault: how to answer `/chats` requests that match it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Applies from this long after start on. Default: from the start.
    #[serde(default)]
    pub after: Option<HumanDuration>,
    /// Applies until this long after start (exclusive). Default: forever.
    #[serde(default)]
    pub until: Option<HumanDuration>,
    /// Applies to this chat only (bare number or full id). Default: every chat.
    #[serde(default)]
    pub chat: Option<String>,
    /// Used at most this many times. Default: unlimited.
    #[serde(default)]
    pub times: Option<u64>,
    /// Answers only every `every`-th request it matches (5: one in five, 20 %); the others go
    /// on to the next fault or the normal reply. Default 1: every one.
    #[serde(default)]
    pub every: Option<u64>,
    /// What to answer.
    pub respond: FaultResponse,
}

/// The answer a fault gives: exactly one of `status`, `malformed`, `truncated`, `hang`, optionally
/// with `delay`; or `delay` alone (the normal reply, late).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultResponse {
    /// Answer with this HTTP status and a JSON error body (`{"status":"error",…}`).
    #[serde(default)]
    pub status: Option<u16>,
    /// `Retry-After` header value sent with `status` (seconds or an HTTP date).
    #[serde(default)]
    pub retry_after: Option<String>,
    /// Raw body sent with `status`, instead of the JSON error body.
    #[serde(default)]
    pub body: Option<String>,
    /// Answer 200 with a body that is not JSON.
    #[serde(default)]
    pub malformed: bool,
    /// Answer 200 with the real JSON reply cut in half.
    #[serde(default)]
    pub truncated: bool,
    /// Wait this long before answering (combines with the others).
    #[serde(default)]
    pub delay: Option<HumanDuration>,
    /// Accept the request and never answer (until the mock shuts down).
    #[serde(default)]
    pub hang: bool,
    /// Answer 200 and stream a JSON reply that never ends, as fast as the client reads (for
    /// at most a minute, or until the mock shuts down or the client hangs up).
    #[serde(default)]
    pub endless: bool,
}

/// Generated traffic: many chats, messages derived from `(seed, chat, k)`, never stored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSpec {
    /// How many chats; chat `i` is `9665` followed by the 8 digits of `10000000 + i`
    /// (see [`synthetic_chat_id`]).
    pub chats: u64,
    /// Share of the chats that get messages (evenly spread over the indexes). Default 1.
    #[serde(default = "default_active_fraction")]
    pub active_fraction: f64,
    /// Messages per second, in total over the active chats.
    pub messages_per_second: f64,
    /// Word planted in every `keyword_every`-th message of a chat. Default `بوت`.
    #[serde(default = "default_keyword")]
    pub keyword: String,
    /// Plant the keyword in messages `every-1`, `2·every-1`, … of each chat. Default 10.
    #[serde(default = "default_keyword_every")]
    pub keyword_every: u64,
    /// Seed of the traffic; the same seed gives the same messages. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Traffic starts this long after the mock's start. Default: at once.
    #[serde(default)]
    pub after: Option<HumanDuration>,
    /// Traffic stops this long after the mock's start. Default: never.
    #[serde(default)]
    pub until: Option<HumanDuration>,
}

fn default_active_fraction() -> f64 {
    1.0
}

fn default_keyword() -> String {
    "بوت".to_owned()
}

fn default_keyword_every() -> u64 {
    10
}

/// A signed offset from the mock's start, written `-1h`, `2s`, `500ms`, `0`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset {
    millis: i64,
}

impl Offset {
    /// An offset of `millis` milliseconds (negative: before the start).
    pub const fn from_millis(millis: i64) -> Offset {
        Offset { millis }
    }

    /// The offset in milliseconds.
    pub const fn as_millis(self) -> i64 {
        self.millis
    }
}

impl FromStr for Offset {
    type Err = String;

    fn from_str(text: &str) -> Result<Offset, String> {
        let t = text.trim();
        let (negative, magnitude) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let d = crate::duration::parse(magnitude)?;
        let ms = i64::try_from(d.as_millis()).map_err(|_| format!("`{t}` is too large"))?;
        Ok(Offset::from_millis(if negative { -ms } else { ms }))
    }
}

impl fmt::Debug for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.millis < 0 { "-" } else { "" };
        let magnitude = Duration::from_millis(self.millis.unsigned_abs());
        write!(f, "{sign}{}", crate::duration::format(magnitude))
    }
}

impl<'de> Deserialize<'de> for Offset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Offset, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Scenario {
    /// Parses and validates a scenario; errors read `line:col: message` (or name the field).
    pub fn from_yaml(text: &str) -> Result<Scenario, String> {
        let scenario: Scenario = serde_saphyr::from_str(text).map_err(|e| yaml_error(&e))?;
        World::compile(&scenario)?;
        Ok(scenario)
    }

    /// Reads [`Scenario::from_yaml`] from a file; errors start with the file's path.
    pub fn from_file(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the scenario: {e}", path.display()))?;
        Scenario::from_yaml(&text).map_err(|e| format!("{}:{e}", path.display()))
    }

    /// Checks what serde cannot: ids, windows, fault shapes, synthetic parameters.
    pub fn validate(&self) -> Result<(), String> {
        World::compile(self).map(drop)
    }
}

/// `line:col: message` from a serde-saphyr error, or `: message` prefixed when it has no location.
fn yaml_error(e: &serde_saphyr::Error) -> String {
    let plain = e.without_snippet().to_string();
    match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {}, column {}", loc.line(), loc.column());
            let message = plain.strip_suffix(&suffix).unwrap_or(&plain);
            format!("{}:{}: {message}", loc.line(), loc.column())
        }
        None => format!(" {plain}"),
    }
}

/// The served id of synthetic chat `index` (`966510000000`, `966510000001`, …), without `@c.us`.
pub fn synthetic_chat_id(index: u64) -> String {
    format!("9665{:08}", SYNTHETIC_BASE + index)
}

// ---------------------------------------------------------------------------------------------
// Observability types.
// ---------------------------------------------------------------------------------------------

/// One `/chats/{chat}` request as the mock saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Milliseconds since the mock started, at arrival.
    pub at_ms: u64,
    /// Unix milliseconds at arrival.
    pub unix_ms: i64,
    /// The chat id as requested (path segment, decoded).
    pub chat: String,
    /// The `limit` in force (query wins over body); `None`: no limit.
    pub limit: Option<u64>,
    /// The status answered; 0 when the mock never answered (a `hang` fault).
    pub status: u16,
    /// Index in `faults` of the fault applied, if any.
    pub fault: Option<usize>,
}

/// A synthetic message that carries the planted keyword and is visible by now.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlantedMessage {
    /// The served chat id (`966510000003@c.us`).
    pub chat: String,
    /// The message's serialized id (`false_{chat}_{id}`), as the webhook envelope carries it.
    pub message_id: String,
    /// The message's `timestamp` (unix seconds).
    pub timestamp: i64,
    /// When it became visible, in unix milliseconds (for detection latency).
    #[serde(default)]
    pub at_unix_ms: i64,
}

/// A message to append to a chat, visible at once (`POST /__mock/chats/{chat}/messages`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// The text.
    #[serde(default)]
    pub body: String,
    /// Sent by the business account. Default false.
    #[serde(default)]
    pub from_me: bool,
    /// Message type. Default `chat`.
    #[serde(default = "default_type", rename = "type")]
    pub kind: String,
    /// Message id; default generated (`MOCK{chat}_{n}`). Must be new in the chat.
    #[serde(default)]
    pub id: Option<String>,
    /// Sender of an inbound group message. Groups only.
    #[serde(default)]
    pub author: Option<String>,
}

/// What [`MockGateway::push`] created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedMessage {
    /// The message id (`id.id`).
    pub id: String,
    /// The serialized id (`id._serialized`).
    pub serialized: String,
    /// Its `timestamp` (unix seconds).
    pub timestamp: i64,
}

/// Why a push failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushError {
    /// No such chat.
    UnknownChat(String),
    /// The id is already used in that chat.
    DuplicateId(String),
    /// The message is not acceptable (e.g. `author` in a private chat).
    Invalid(String),
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::UnknownChat(c) => write!(f, "chat not found: {c}"),
            PushError::DuplicateId(id) => write!(f, "message id already used in this chat: {id}"),
            PushError::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for PushError {}

// ---------------------------------------------------------------------------------------------
// The compiled world: pure, takes the elapsed time as input.
// ---------------------------------------------------------------------------------------------

/// The mock's clock: a start instant and its unix time; everything else is an offset from it.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: Instant,
    start_unix_ms: i64,
}

impl Clock {
    fn now() -> Clock {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            start: Instant::now(),
            start_unix_ms: i64::try_from(unix.as_millis()).unwrap_or(i64::MAX),
        }
    }

    fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// Timestamp (unix seconds) of a message at `at_ms` after a start at `start_unix_ms`.
fn timestamp_of(start_unix_ms: i64, at_ms: i64) -> i64 {
    start_unix_ms.div_euclid(1000) + at_ms.div_euclid(1000)
}

/// The served form of a chat id: a bare number gets `@c.us`, a full id is used as is.
fn served_id(requested: &str) -> String {
    if requested.contains('@') {
        requested.to_owned()
    } else {
        format!("{requested}@c.us")
    }
}

/// Refuses what is neither a bare phone number nor `user@server`, with a hint.
fn check_chat_id(id: &str) -> Result<(), String> {
    let (user, server) = id.split_once('@').unwrap_or((id, ""));
    let bare = !id.contains('@');
    if user.is_empty() || (!bare && server.is_empty()) {
        return Err(format!(
            "`{id}` is not a chat id: write 966500000000 or 966500000000@c.us"
        ));
    }
    if bare && !user.bytes().all(|b| b.is_ascii_digit()) {
        let digits: String = user.chars().filter(char::is_ascii_digit).collect();
        let hint = digits.trim_start_matches('0');
        return Err(format!(
            "`{id}` is not a chat id: a phone number is digits with the country code and no + or 00 \
             (did you mean {hint}?)"
        ));
    }
    Ok(())
}

/// A stored (scenario or pushed) message.
#[derive(Debug, Clone)]
struct StoredMsg {
    at_ms: i64,
    id: String,
    from_me: bool,
    kind: String,
    body: String,
    author: Option<String>,
    revoke_at_ms: Option<i64>,
    edit: Option<(i64, String)>,
}

impl StoredMsg {
    fn view(&self, now_ms: i64) -> View {
        let revoked = self.revoke_at_ms.is_some_and(|r| now_ms >= r);
        let edit = self.edit.as_ref().filter(|(at, _)| now_ms >= *at);
        let (kind, body) = if revoked {
            ("revoked".to_owned(), None)
        } else {
            let body = edit.map_or(&self.body, |(_, b)| b);
            (self.kind.clone(), Some(body.clone()))
        };
        View {
            id: self.id.clone(),
            from_me: self.from_me,
            kind,
            body,
            at_ms: self.at_ms,
            author: self.author.clone(),
            edited_at_ms: if revoked {
                None
            } else {
                edit.map(|(at, _)| *at)
            },
        }
    }
}

/// A message as served at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    id: String,
    from_me: bool,
    kind: String,
    /// `None`: revoked.
    body: Option<String>,
    at_ms: i64,
    author: Option<String>,
    edited_at_ms: Option<i64>,
}

#[derive(Debug, Clone)]
struct ChatState {
    /// Served id (`…@c.us`).
    id: String,
    name: String,
    is_group: bool,
    unread_count: i64,
    /// Sorted by `at_ms`, stable (scenario order, then push order).
    messages: Vec<StoredMsg>,
    /// Prefix of generated ids (`MOCK3_` or `MOCKS17_P`).
    id_prefix: String,
    /// Next generated id number.
    next_generated: usize,
}

impl ChatState {
    fn newest_visible(&self, now_ms: i64, limit: Option<u64>) -> Vec<View> {
        let visible = self.messages.partition_point(|m| m.at_ms <= now_ms);
        let from = limit.map_or(0, |l| {
            visible.saturating_sub(usize::try_from(l).unwrap_or(usize::MAX))
        });
        self.messages[from..visible]
            .iter()
            .map(|m| m.view(now_ms))
            .collect()
    }

    fn push(&mut self, msg: NewMessage, now_ms: i64) -> Result<String, PushError> {
        if msg.author.is_some() && !self.is_group {
            return Err(PushError::Invalid(
                "`author` is only for group chats".to_owned(),
            ));
        }
        let id = match msg.id {
            Some(id) if id.is_empty() => {
                return Err(PushError::Invalid("`id` must not be empty".to_owned()));
            }
            Some(id) if self.messages.iter().any(|m| m.id == id) => {
                return Err(PushError::DuplicateId(id));
            }
            Some(id) => id,
            None => loop {
                let candidate = format!("{}{}", self.id_prefix, self.next_generated);
                self.next_generated += 1;
                if !self.messages.iter().any(|m| m.id == candidate) {
                    break candidate;
                }
            },
        };
        let at = self.messages.partition_point(|m| m.at_ms <= now_ms);
        self.messages.insert(
            at,
            StoredMsg {
                at_ms: now_ms,
                id: id.clone(),
                from_me: msg.from_me,
                kind: msg.kind,
                body: msg.body,
                author: msg.author,
                revoke_at_ms: None,
                edit: None,
            },
        );
        Ok(id)
    }
}

/// Synthetic traffic, compiled: message `k` of active chat `c` lies in period `k` of that chat
/// (`[k·P, (k+1)·P)` µs after the traffic start), at a jitter derived from `(seed, c, k)`.
#[derive(Debug, Clone)]
struct Synthetic {
    chats: u64,
    active: u64,
    /// Per-chat period in µs; `None`: no traffic.
    period_us: Option<u64>,
    keyword: String,
    every: u64,
    seed: u64,
    after_ms: i64,
    until_ms: Option<i64>,
    filler: Vec<&'static str>,
}

/// splitmix64: a stable, portable mix (rand's generators may change across versions).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash3(seed: u64, c: u64, k: u64, salt: u64) -> u64 {
    mix(mix(mix(seed ^ salt) ^ c) ^ k)
}

impl Synthetic {
    fn compile(spec: &SyntheticSpec) -> Result<Synthetic, String> {
        if spec.chats == 0 || spec.chats > SYNTHETIC_MAX_CHATS {
            return Err(format!(
                "synthetic.chats must be between 1 and {SYNTHETIC_MAX_CHATS}"
            ));
        }
        if !(0.0..=1.0).contains(&spec.active_fraction) {
            return Err("synthetic.active_fraction must be between 0 and 1".to_owned());
        }
        if !spec.messages_per_second.is_finite() || spec.messages_per_second < 0.0 {
            return Err("synthetic.messages_per_second must be a number ≥ 0".to_owned());
        }
        if spec.keyword.trim().is_empty() {
            return Err("synthetic.keyword must not be empty".to_owned());
        }
        if spec.keyword_every == 0 {
            return Err("synthetic.keyword_every must be at least 1".to_owned());
        }
        let after_ms = spec.after.map_or(0, |d| millis(d.0));
        let until_ms = spec.until.map(|d| millis(d.0));
        if until_ms.is_some_and(|u| u <= after_ms) {
            return Err("synthetic.until must be later than synthetic.after".to_owned());
        }
        let keyword_lower = spec.keyword.to_lowercase();
        let filler: Vec<&'static str> = FILLER
            .iter()
            .copied()
            .filter(|f| !f.to_lowercase().contains(&keyword_lower))
            .collect();
        if filler.is_empty() {
            return Err("synthetic.keyword occurs in every filler text; choose another".to_owned());
        }
        // `as` on purpose: chats ≤ 10^8 is exact in f64, and the product is rounded.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let active = {
            let a = (spec.chats as f64 * spec.active_fraction).round() as u64;
            if spec.active_fraction > 0.0 {
                a.clamp(1, spec.chats)
            } else {
                0
            }
        };
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let period_us = (active > 0 && spec.messages_per_second > 0.0)
            .then(|| ((active as f64 * 1e6 / spec.messages_per_second).round() as u64).max(1));
        Ok(Synthetic {
            chats: spec.chats,
            active,
            period_us,
            keyword: spec.keyword.clone(),
            every: spec.keyword_every,
            seed: spec.seed,
            after_ms,
            until_ms,
            filler,
        })
    }

    /// The index of a served synthetic chat id, if it is one.
    fn index_of(&self, served: &str) -> Option<u64> {
        let digits = served.strip_suffix("@c.us")?.strip_prefix("9665")?;
        if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        let index = n.checked_sub(SYNTHETIC_BASE)?;
        (index < self.chats).then_some(index)
    }

    /// Whether chat `c` gets traffic: exactly `active` chats, evenly spread.
    fn is_active(&self, c: u64) -> bool {
        let (a, n) = (u128::from(self.active), u128::from(self.chats));
        let c = u128::from(c);
        (c + 1) * a / n > c * a / n
    }

    /// Offset of message `k` of chat `c` from the traffic start, in µs.
    fn offset_us(&self, period: u64, c: u64, k: u64) -> u64 {
        k.saturating_mul(period)
            .saturating_add(hash3(self.seed, c, k, 1) % period)
    }

    /// How many messages of chat `c` are visible at `now_ms`: O(1).
    fn visible_count(&self, c: u64, now_ms: i64) -> u64 {
        let Some(period) = self.period_us else {
            return 0;
        };
        if !self.is_active(c) {
            return 0;
        }
        let mut horizon_us = (i128::from(now_ms) - i128::from(self.after_ms)) * 1000;
        if let Some(until) = self.until_ms {
            horizon_us = horizon_us.min((i128::from(until) - i128::from(self.after_ms)) * 1000 - 1);
        }
        let Ok(x) = u64::try_from(horizon_us) else {
            return 0;
        };
        let q = x / period;
        let q_visible = self.offset_us(period, c, q) <= x;
        q + u64::from(q_visible)
    }

    fn is_planted(&self, k: u64) -> bool {
        k % self.every == self.every - 1
    }

    /// Message `k` of chat `c`, derived from `(seed, c, k)`.
    fn message(&self, c: u64, k: u64) -> View {
        let period = self.period_us.unwrap_or(1);
        let at_ms =
            self.after_ms + i64::try_from(self.offset_us(period, c, k) / 1000).unwrap_or(i64::MAX);
        let h = hash3(self.seed, c, k, 2);
        let pick = |salt: u64| {
            let n = self.filler.len() as u64;
            self.filler[usize::try_from(mix(h ^ salt) % n).unwrap_or(0)]
        };
        let planted = self.is_planted(k);
        let body = if planted {
            format!("{} {} {}", pick(1), self.keyword, pick(2))
        } else if h.is_multiple_of(3) {
            format!("{} {}", pick(1), pick(2))
        } else {
            pick(1).to_owned()
        };
        View {
            id: format!("MOCKS{c}_{k}"),
            from_me: !planted && h.is_multiple_of(5),
            kind: "chat".to_owned(),
            body: Some(body),
            at_ms,
            author: None,
            edited_at_ms: None,
        }
    }

    /// The newest `limit` visible messages of chat `c`, oldest first: O(limit).
    fn newest_visible(&self, c: u64, now_ms: i64, limit: Option<u64>) -> Vec<View> {
        let n = self.visible_count(c, now_ms);
        let from = limit.map_or(0, |l| n.saturating_sub(l));
        (from..n).map(|k| self.message(c, k)).collect()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Everything the mock serves, compiled from a [`Scenario`]; time is an argument.
#[derive(Debug, Clone)]
struct World {
    chats: Vec<ChatState>,
    by_id: HashMap<String, usize>,
    synthetic: Option<Synthetic>,
    /// Messages pushed into synthetic chats, by chat index.
    synthetic_pushed: HashMap<u64, ChatState>,
}

/// A chat resolved from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChatRef {
    Listed(usize),
    Synthetic(u64),
}

impl World {
    fn compile(scenario: &Scenario) -> Result<World, String> {
        if scenario.token.trim().is_empty() {
            return Err("token must not be empty".to_owned());
        }
        let synthetic = scenario
            .synthetic
            .as_ref()
            .map(Synthetic::compile)
            .transpose()?;
        let mut chats = Vec::with_capacity(scenario.chats.len());
        let mut by_id = HashMap::new();
        for (ci, spec) in scenario.chats.iter().enumerate() {
            let at = |what: String| format!("chats[{ci}]: {what}");
            check_chat_id(&spec.id).map_err(at)?;
            let id = served_id(&spec.id);
            if by_id.insert(id.clone(), ci).is_some() {
                return Err(at(format!("chat `{id}` is listed twice")));
            }
            if synthetic
                .as_ref()
                .is_some_and(|s| s.index_of(&id).is_some())
            {
                return Err(at(format!("chat `{id}` is also a synthetic chat")));
            }
            let is_group = spec.is_group.unwrap_or_else(|| id.ends_with("@g.us"));
            let user = id.split_once('@').map_or(id.as_str(), |(u, _)| u);
            let mut messages = Vec::with_capacity(spec.messages.len());
            let mut ids = HashSet::new();
            for (mi, m) in spec.messages.iter().enumerate() {
                let at = |what: String| format!("chats[{ci}].messages[{mi}]: {what}");
                let id = m.id.clone().unwrap_or_else(|| format!("MOCK{ci}_{mi}"));
                if id.is_empty() {
                    return Err(at("`id` must not be empty".to_owned()));
                }
                if !ids.insert(id.clone()) {
                    return Err(at(format!("message id `{id}` is used twice in this chat")));
                }
                if m.kind.is_empty() {
                    return Err(at("`type` must not be empty".to_owned()));
                }
                if m.author.is_some() && !is_group {
                    return Err(at("`author` is only for group chats".to_owned()));
                }
                if m.revoke_at.is_some_and(|r| r < m.at) {
                    return Err(at("`revoke_at` is before `at`".to_owned()));
                }
                if m.edit.as_ref().is_some_and(|e| e.at < m.at) {
                    return Err(at("`edit.at` is before `at`".to_owned()));
                }
                messages.push(StoredMsg {
                    at_ms: m.at.as_millis(),
                    id,
                    from_me: m.from_me,
                    kind: m.kind.clone(),
                    body: m.body.clone(),
                    author: m.author.clone(),
                    revoke_at_ms: m.revoke_at.map(Offset::as_millis),
                    edit: m.edit.as_ref().map(|e| (e.at.as_millis(), e.body.clone())),
                });
            }
            messages.sort_by_key(|m| m.at_ms);
            chats.push(ChatState {
                name: spec.name.clone().unwrap_or_else(|| user.to_owned()),
                id,
                is_group,
                unread_count: spec.unread_count,
                next_generated: messages.len(),
                messages,
                id_prefix: format!("MOCK{ci}_"),
            });
        }
        for (fi, f) in scenario.faults.iter().enumerate() {
            Fault::compile(f).map_err(|e| format!("faults[{fi}]: {e}"))?;
        }
        Ok(World {
            chats,
            by_id,
            synthetic,
            synthetic_pushed: HashMap::new(),
        })
    }

    fn resolve(&self, requested: &str) -> Option<ChatRef> {
        let id = served_id(requested);
        if let Some(&i) = self.by_id.get(&id) {
            return Some(ChatRef::Listed(i));
        }
        self.synthetic
            .as_ref()?
            .index_of(&id)
            .map(ChatRef::Synthetic)
    }

    /// The `/chats` reply for a chat at `now_ms`, serialized; `None`: unknown chat.
    fn reply(
        &self,
        requested: &str,
        limit: Option<u64>,
        now_ms: i64,
        start_unix_ms: i64,
    ) -> Option<String> {
        let (chat, views) = match self.resolve(requested)? {
            ChatRef::Listed(i) => {
                let chat = &self.chats[i];
                (ChatInfo::of(chat), chat.newest_visible(now_ms, limit))
            }
            ChatRef::Synthetic(c) => {
                let synthetic = self.synthetic.as_ref()?;
                let id = format!("{}@c.us", synthetic_chat_id(c));
                let mut views = synthetic.newest_visible(c, now_ms, limit);
                if let Some(pushed) = self.synthetic_pushed.get(&c) {
                    views.extend(pushed.newest_visible(now_ms, limit));
                    views.sort_by_key(|v| v.at_ms);
                    if let Some(l) = limit {
                        let excess = views
                            .len()
                            .saturating_sub(usize::try_from(l).unwrap_or(usize::MAX));
                        views.drain(..excess);
                    }
                }
                let info = ChatInfo {
                    name: format!("Synthetic {c}"),
                    id,
                    is_group: false,
                    unread_count: 0,
                };
                (info, views)
            }
        };
        Some(render_reply(&chat, &views, start_unix_ms))
    }

    fn push(
        &mut self,
        requested: &str,
        msg: NewMessage,
        now_ms: i64,
    ) -> Result<(String, String, bool), PushError> {
        match self.resolve(requested) {
            None => Err(PushError::UnknownChat(requested.to_owned())),
            Some(ChatRef::Listed(i)) => {
                let chat = &mut self.chats[i];
                let id = chat.push(msg, now_ms)?;
                Ok((chat.id.clone(), id, chat.is_group))
            }
            Some(ChatRef::Synthetic(c)) => {
                let served = format!("{}@c.us", synthetic_chat_id(c));
                let chat = self.synthetic_pushed.entry(c).or_insert_with(|| ChatState {
                    id: served.clone(),
                    name: format!("Synthetic {c}"),
                    is_group: false,
                    unread_count: 0,
                    messages: Vec::new(),
                    id_prefix: format!("MOCKS{c}_P"),
                    next_generated: 0,
                });
                let id = chat.push(msg, now_ms)?;
                Ok((served, id, false))
            }
        }
    }

    /// Every planted synthetic message visible at `now_ms`, by chat then time.
    fn planted(&self, now_ms: i64, start_unix_ms: i64) -> Vec<PlantedMessage> {
        let Some(s) = &self.synthetic else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for c in 0..s.chats {
            let n = s.visible_count(c, now_ms);
            if n < s.every {
                continue;
            }
            let chat = format!("{}@c.us", synthetic_chat_id(c));
            let mut k = s.every - 1;
            while k < n {
                let m = s.message(c, k);
                out.push(PlantedMessage {
                    message_id: format!("false_{chat}_{}", m.id),
                    chat: chat.clone(),
                    timestamp: timestamp_of(start_unix_ms, m.at_ms),
                    at_unix_ms: start_unix_ms + m.at_ms,
                });
                k += s.every;
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Faults.
// ---------------------------------------------------------------------------------------------

/// What a fault does to the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FaultAction {
    /// The normal reply (possibly delayed).
    Normal,
    /// A 200 whose body never ends.
    Endless,
    Status {
        code: StatusCode,
        retry_after: Option<String>,
        body: Option<String>,
    },
    Malformed,
    Truncated,
    Hang,
}

#[derive(Debug, Clone)]
struct Fault {
    after_ms: i64,
    until_ms: Option<i64>,
    chat: Option<String>,
    remaining: Option<u64>,
    every: u64,
    /// Requests it matched so far (for `every`).
    matched: u64,
    action: FaultAction,
    delay: Option<Duration>,
}

impl Fault {
    fn compile(spec: &FaultSpec) -> Result<Fault, String> {
        let r = &spec.respond;
        let kinds = [
            r.status.is_some(),
            r.malformed,
            r.truncated,
            r.hang,
            r.endless,
        ];
        let count = kinds.iter().filter(|k| **k).count();
        if count > 1 {
            return Err("respond: choose one of status, malformed, truncated, hang".to_owned());
        }
        if count == 0 && r.delay.is_none() {
            return Err(
                "respond: says nothing; give status, malformed, truncated, hang or delay"
                    .to_owned(),
            );
        }
        if r.status.is_none() && (r.retry_after.is_some() || r.body.is_some()) {
            return Err("respond: retry_after and body go with status".to_owned());
        }
        let action = if let Some(code) = r.status {
            let code = StatusCode::from_u16(code)
                .ok()
                .filter(|c| c.as_u16() >= 200)
                .ok_or_else(|| {
                    format!("respond.status {code} is not an HTTP status from 200 to 999")
                })?;
            if let Some(v) = &r.retry_after {
                HeaderValue::from_str(v)
                    .map_err(|_| format!("respond.retry_after `{v}` is not a header value"))?;
            }
            FaultAction::Status {
                code,
                retry_after: r.retry_after.clone(),
                body: r.body.clone(),
            }
        } else if r.malformed {
            FaultAction::Malformed
        } else if r.truncated {
            FaultAction::Truncated
        } else if r.hang {
            FaultAction::Hang
        } else if r.endless {
            FaultAction::Endless
        } else {
            FaultAction::Normal
        };
        let after_ms = spec.after.map_or(0, |d| millis(d.0));
        let until_ms = spec.until.map(|d| millis(d.0));
        if until_ms.is_some_and(|u| u <= after_ms) {
            return Err("until must be later than after".to_owned());
        }
        if let Some(chat) = &spec.chat {
            check_chat_id(chat).map_err(|e| format!("chat: {e}"))?;
        }
        if spec.times == Some(0) {
            return Err("times must be at least 1 (remove the fault to disable it)".to_owned());
        }
        if spec.every == Some(0) {
            return Err("every must be at least 1 (1: every request)".to_owned());
        }
        Ok(Fault {
            after_ms,
            until_ms,
            chat: spec.chat.as_deref().map(served_id),
            remaining: spec.times,
            every: spec.every.unwrap_or(1),
            matched: 0,
            action,
            delay: r.delay.map(|d| d.0),
        })
    }

    fn matches(&self, served_chat: &str, now_ms: i64) -> bool {
        now_ms >= self.after_ms
            && self.until_ms.is_none_or(|u| now_ms < u)
            && self.chat.as_deref().is_none_or(|c| c == served_chat)
            && self.remaining != Some(0)
    }
}

/// Takes one use of the first fault that matches, returning its index and what to do.
fn pick_fault(
    faults: &mut [Fault],
    requested: &str,
    now_ms: i64,
) -> Option<(usize, FaultAction, Option<Duration>)> {
    let served = served_id(requested);
    let (i, f) = faults.iter_mut().enumerate().find_map(|(i, f)| {
        if !f.matches(&served, now_ms) {
            return None;
        }
        f.matched += 1;
        (f.matched % f.every == 0).then_some((i, f))
    })?;
    if let Some(n) = &mut f.remaining {
        *n -= 1;
    }
    Some((i, f.action.clone(), f.delay))
}

// ---------------------------------------------------------------------------------------------
// Wire shapes (whatsapp-web.js serialization).
// ---------------------------------------------------------------------------------------------

struct ChatInfo {
    id: String,
    name: String,
    is_group: bool,
    unread_count: i64,
}

impl ChatInfo {
    fn of(chat: &ChatState) -> ChatInfo {
        ChatInfo {
            id: chat.id.clone(),
            name: chat.name.clone(),
            is_group: chat.is_group,
            unread_count: chat.unread_count,
        }
    }
}

#[derive(Serialize)]
struct WireJid<'a> {
    server: &'a str,
    user: &'a str,
    #[serde(rename = "_serialized")]
    serialized: &'a str,
}

impl<'a> WireJid<'a> {
    fn of(id: &'a str) -> WireJid<'a> {
        let (user, server) = id.split_once('@').unwrap_or((id, ""));
        WireJid {
            server,
            user,
            serialized: id,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireMsgId<'a> {
    from_me: bool,
    remote: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    participant: Option<WireJid<'a>>,
    #[serde(rename = "_serialized")]
    serialized: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireData<'a> {
    id: &'a WireMsgId<'a>,
    viewed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'a str,
    t: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    notify_name: Option<&'a str>,
    from: WireJid<'a>,
    to: WireJid<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    author: Option<WireJid<'a>>,
    #[serde(rename = "self")]
    direction: &'a str,
    ack: u8,
    invis: bool,
    star: bool,
    is_new_msg: bool,
    is_from_template: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    subtype: Option<&'a str>,
    latest_edit_msg_key: Option<&'a WireMsgId<'a>>,
    latest_edit_sender_timestamp_ms: Option<i64>,
    mentioned_jid_list: [(); 0],
    group_mentions: [(); 0],
    is_forwarded: bool,
    has_reaction: bool,
    links: [(); 0],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireMessage<'a> {
    #[serde(rename = "_data")]
    data: WireData<'a>,
    id: &'a WireMsgId<'a>,
    ack: u8,
    has_media: bool,
    body: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: i64,
    from: &'a str,
    to: &'a str,
    author: Option<&'a str>,
    device_type: &'a str,
    is_forwarded: bool,
    forwarding_score: u32,
    is_status: bool,
    is_starred: bool,
    from_me: bool,
    has_quoted_msg: bool,
    has_reaction: bool,
    latest_edit_msg_key: Option<&'a WireMsgId<'a>>,
    latest_edit_sender_timestamp_ms: Option<i64>,
    v_cards: [(); 0],
    mentioned_ids: [(); 0],
    group_mentions: [(); 0],
    is_gif: bool,
    links: [(); 0],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireParticipant<'a> {
    id: WireJid<'a>,
    is_admin: bool,
    is_super_admin: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireGroupMetadata<'a> {
    id: WireJid<'a>,
    creation: i64,
    owner: WireJid<'a>,
    subject: &'a str,
    participants: [WireParticipant<'a>; 2],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireChat<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    group_metadata: Option<WireGroupMetadata<'a>>,
    id: WireJid<'a>,
    name: &'a str,
    is_group: bool,
    is_read_only: bool,
    unread_count: i64,
    timestamp: i64,
    archived: bool,
    pinned: bool,
    is_muted: bool,
    mute_expiration: i64,
}

#[derive(Serialize)]
struct WireReply<'a> {
    status: &'a str,
    chat: WireChat<'a>,
    messages: Vec<WireMessage<'a>>,
}

/// Per-message strings the wire shape borrows.
struct Prepared<'a> {
    view: &'a View,
    serialized: String,
    edit_serialized: String,
    edit_id: String,
    author: Option<&'a str>,
    participant: Option<&'a str>,
}

fn render_reply(chat: &ChatInfo, views: &[View], start_unix_ms: i64) -> String {
    let start_secs = start_unix_ms.div_euclid(1000);
    let remote = chat.id.as_str();
    let prepared: Vec<Prepared<'_>> = views
        .iter()
        .map(|v| {
            let author = chat.is_group.then(|| {
                if v.from_me {
                    BUSINESS_ID
                } else {
                    v.author.as_deref().unwrap_or(GROUP_MEMBER_ID)
                }
            });
            let participant = author.filter(|_| !v.from_me);
            let serialized = match participant {
                Some(p) => format!("{}_{remote}_{}_{p}", v.from_me, v.id),
                None => format!("{}_{remote}_{}", v.from_me, v.id),
            };
            let edit_id = format!("{}E", v.id);
            let edit_serialized = format!("{}_{remote}_{edit_id}", v.from_me);
            Prepared {
                view: v,
                serialized,
                edit_serialized,
                edit_id,
                author,
                participant,
            }
        })
        .collect();
    let ids: Vec<WireMsgId<'_>> = prepared
        .iter()
        .map(|p| WireMsgId {
            from_me: p.view.from_me,
            remote,
            id: &p.view.id,
            participant: p.participant.map(WireJid::of),
            serialized: &p.serialized,
        })
        .collect();
    let edit_keys: Vec<WireMsgId<'_>> = prepared
        .iter()
        .map(|p| WireMsgId {
            from_me: p.view.from_me,
            remote,
            id: &p.edit_id,
            participant: None,
            serialized: &p.edit_serialized,
        })
        .collect();
    let messages = prepared
        .iter()
        .zip(&ids)
        .zip(&edit_keys)
        .map(|((p, id), edit_key)| {
            let v = p.view;
            let (from, to) = if v.from_me {
                (BUSINESS_ID, remote)
            } else {
                (remote, BUSINESS_ID)
            };
            let t = timestamp_of(start_unix_ms, v.at_ms);
            let revoked = v.body.is_none();
            let ack = if v.from_me { 2 } else { 1 };
            let edit_ms = v.edited_at_ms.map(|at| start_unix_ms + at);
            let edit_key = edit_ms.map(|_| edit_key);
            WireMessage {
                data: WireData {
                    id,
                    viewed: false,
                    body: v.body.as_deref(),
                    kind: &v.kind,
                    t,
                    notify_name: (!v.from_me).then_some(if chat.is_group {
                        ""
                    } else {
                        chat.name.as_str()
                    }),
                    from: WireJid::of(from),
                    to: WireJid::of(to),
                    author: p.author.map(WireJid::of),
                    direction: if v.from_me { "out" } else { "in" },
                    ack,
                    invis: false,
                    star: false,
                    is_new_msg: true,
                    is_from_template: false,
                    subtype: revoked.then_some("sender_revoke"),
                    latest_edit_msg_key: edit_key,
                    latest_edit_sender_timestamp_ms: edit_ms,
                    mentioned_jid_list: [],
                    group_mentions: [],
                    is_forwarded: false,
                    has_reaction: false,
                    links: [],
                },
                id,
                ack,
                has_media: false,
                body: v.body.as_deref().unwrap_or(""),
                kind: &v.kind,
                timestamp: t,
                from,
                to,
                author: p.author,
                device_type: if v.from_me { "web" } else { "android" },
                is_forwarded: false,
                forwarding_score: 0,
                is_status: false,
                is_starred: false,
                from_me: v.from_me,
                has_quoted_msg: false,
                has_reaction: false,
                latest_edit_msg_key: edit_key,
                latest_edit_sender_timestamp_ms: edit_ms,
                v_cards: [],
                mentioned_ids: [],
                group_mentions: [],
                is_gif: false,
                links: [],
            }
        })
        .collect();
    let timestamp = views
        .last()
        .map_or(start_secs, |v| timestamp_of(start_unix_ms, v.at_ms));
    let group_metadata = chat.is_group.then(|| WireGroupMetadata {
        id: WireJid::of(remote),
        creation: start_secs,
        owner: WireJid::of(BUSINESS_ID),
        subject: &chat.name,
        participants: [
            WireParticipant {
                id: WireJid::of(BUSINESS_ID),
                is_admin: true,
                is_super_admin: true,
            },
            WireParticipant {
                id: WireJid::of(GROUP_MEMBER_ID),
                is_admin: false,
                is_super_admin: false,
            },
        ],
    });
    let reply = WireReply {
        status: "success",
        chat: WireChat {
            group_metadata,
            id: WireJid::of(remote),
            name: &chat.name,
            is_group: chat.is_group,
            is_read_only: false,
            unread_count: chat.unread_count,
            timestamp,
            archived: false,
            pinned: false,
            is_muted: false,
            mute_expiration: 0,
        },
        messages,
    };
    serde_json::to_string(&reply)
        .unwrap_or_else(|_| r#"{"status":"error","message":"mock could not serialize"}"#.to_owned())
}

// ---------------------------------------------------------------------------------------------
// HTTP.
// ---------------------------------------------------------------------------------------------

struct App {
    clock: Clock,
    token: String,
    world: RwLock<World>,
    faults: Mutex<Vec<Fault>>,
    log: Mutex<VecDeque<RequestRecord>>,
    max_records: usize,
    shutdown: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl App {
    fn new(scenario: &Scenario, shutdown: CancellationToken) -> std::io::Result<App> {
        let invalid = |e: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("mock scenario: {e}"),
            )
        };
        let world = World::compile(scenario).map_err(invalid)?;
        let faults = scenario
            .faults
            .iter()
            .enumerate()
            .map(|(i, f)| Fault::compile(f).map_err(|e| invalid(format!("faults[{i}]: {e}"))))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(App {
            clock: Clock::now(),
            token: scenario.token.clone(),
            world: RwLock::new(world),
            faults: Mutex::new(faults),
            log: Mutex::new(VecDeque::new()),
            max_records: scenario.max_recorded_requests,
            shutdown,
        })
    }

    fn record(
        &self,
        now_ms: i64,
        chat: &str,
        limit: Option<u64>,
        status: u16,
        fault: Option<usize>,
    ) {
        let at_ms = u64::try_from(now_ms).unwrap_or(0);
        let record = RequestRecord {
            at_ms,
            unix_ms: self.clock.start_unix_ms + now_ms,
            chat: chat.to_owned(),
            limit,
            status,
            fault,
        };
        let mut log = lock(&self.log);
        if self.max_records == 0 {
            return;
        }
        while log.len() >= self.max_records {
            log.pop_front();
        }
        log.push_back(record);
    }

    fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.log).iter().cloned().collect()
    }

    fn planted(&self) -> Vec<PlantedMessage> {
        let world = self.world.read().unwrap_or_else(PoisonError::into_inner);
        world.planted(self.clock.elapsed_ms(), self.clock.start_unix_ms)
    }

    fn push(&self, chat: &str, msg: NewMessage) -> Result<PushedMessage, PushError> {
        let mut world = self.world.write().unwrap_or_else(PoisonError::into_inner);
        let now_ms = self.clock.elapsed_ms();
        let from_me = msg.from_me;
        let author = msg.author.clone();
        let (served, id, is_group) = world.push(chat, msg, now_ms)?;
        let serialized = if is_group && !from_me {
            let p = author.as_deref().unwrap_or(GROUP_MEMBER_ID);
            format!("{from_me}_{served}_{id}_{p}")
        } else {
            format!("{from_me}_{served}_{id}")
        };
        tracing::debug!(chat = %served, id = %id, "mock gateway: message pushed");
        Ok(PushedMessage {
            id,
            serialized,
            timestamp: timestamp_of(self.clock.start_unix_ms, now_ms),
        })
    }
}

/// A 200 `application/json` reply that opens a `messages` array and never closes it: the same
/// message over and over, written as fast as the client reads, for at most a minute.
fn endless_response(stop: CancellationToken) -> Response {
    use tokio::io::AsyncWriteExt;
    let (mut w, r) = tokio::io::duplex(64 * 1024);
    let one = r#"{"id":{"fromMe":false,"id":"ENDLESS","_serialized":"false_0@c.us_ENDLESS"},"timestamp":1700000000,"body":"bot endless","type":"chat"},"#;
    let chunk = one.repeat(64 * 1024 / one.len());
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        if w.write_all(br#"{"status":"success","messages":["#)
            .await
            .is_err()
        {
            return;
        }
        while Instant::now() < deadline && !stop.is_cancelled() {
            // Fails once the client hangs up.
            if w.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(r));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "status": "error", "message": message }).to_string();
    json_response(status, body)
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let value = value.trim();
    let Some((scheme, given)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && given.trim() == token
}

/// A limit from text (`50`, `Infinity`).
fn limit_from_text(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("infinity") {
        return Ok(None);
    }
    t.parse::<u64>()
        .map(Some)
        .map_err(|_| format!("limit `{t}` is not a whole number ≥ 0 or Infinity"))
}

/// The `limit` in force: the query parameter if given, else `{"limit": N}` in the body.
fn request_limit(uri: &Uri, body: &[u8]) -> Result<Option<u64>, String> {
    let query = Query::<HashMap<String, String>>::try_from_uri(uri)
        .map_err(|e| format!("bad query: {e}"))?;
    if let Some(text) = query.get("limit") {
        return limit_from_text(text);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("request body is not JSON: {e}"))?;
    match value.get("limit") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => limit_from_text(s),
        Some(serde_json::Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(l), _) => Ok(Some(l)),
            // `as` on purpose: a finite non-negative float floored to a count, saturating.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            (None, Some(f)) if f.is_finite() && f >= 0.0 => Ok(Some(f.floor() as u64)),
            _ => Err(format!("limit {n} is not a whole number ≥ 0")),
        },
        Some(other) => Err(format!("limit {other} is not a number")),
    }
}

fn truncate_half(text: &str) -> String {
    let mut cut = text.len() / 2;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].to_owned()
}

const MALFORMED_BODY: &str = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>\n";

async fn chats_handler(
    State(app): State<Arc<App>>,
    UrlPath(chat): UrlPath<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now_ms = app.clock.elapsed_ms();
    let limit = request_limit(&uri, &body);
    if !authorized(&headers, &app.token) {
        app.record(now_ms, &chat, limit.clone().ok().flatten(), 401, None);
        tracing::debug!(status = 401, "mock gateway: unauthorized request");
        return error_response(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let limit = match limit {
        Ok(l) => l,
        Err(why) => {
            app.record(now_ms, &chat, None, 400, None);
            return error_response(StatusCode::BAD_REQUEST, &why);
        }
    };
    let fault = pick_fault(&mut lock(&app.faults), &chat, now_ms);
    let (fault_index, action, delay) = match fault {
        Some((i, action, delay)) => (Some(i), action, delay),
        None => (None, FaultAction::Normal, None),
    };
    let reply = || {
        let world = app.world.read().unwrap_or_else(PoisonError::into_inner);
        world.reply(&chat, limit, now_ms, app.clock.start_unix_ms)
    };
    let response = match action {
        FaultAction::Hang => {
            app.record(now_ms, &chat, limit, 0, fault_index);
            tracing::debug!(fault = ?fault_index, "mock gateway: hanging a request");
            app.shutdown.cancelled().await;
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        FaultAction::Status {
            code,
            retry_after,
            body,
        } => {
            let mut r = match body {
                Some(b) => json_response(code, b),
                None => error_response(
                    code,
                    &code.canonical_reason().unwrap_or("error").to_lowercase(),
                ),
            };
            if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        FaultAction::Malformed => json_response(StatusCode::OK, MALFORMED_BODY.to_owned()),
        FaultAction::Endless => endless_response(app.shutdown.clone()),
        FaultAction::Normal | FaultAction::Truncated => match reply() {
            None => error_response(StatusCode::NOT_FOUND, "chat not found"),
            Some(text) if action == FaultAction::Truncated => {
                json_response(StatusCode::OK, truncate_half(&text))
            }
            Some(text) => json_response(StatusCode::OK, text),
        },
    };
    let status = response.status().as_u16();
    app.record(now_ms, &chat, limit, status, fault_index);
    tracing::debug!(status, fault = ?fault_index, "mock gateway: answered");
    if let Some(d) = delay {
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = app.shutdown.cancelled() => {}
        }
    }
    response
}

async fn requests_handler(State(app): State<Arc<App>>) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::to_string(&app.requests()).unwrap_or_default(),
    )
}

async fn planted_handler(State(app): State<Arc<App>>) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::to_string(&app.planted()).unwrap_or_default(),
    )
}

async fn push_handler(
    State(app): State<Arc<App>>,
    UrlPath(chat): UrlPath<String>,
    body: Bytes,
) -> Response {
    let msg: NewMessage = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &format!("bad message: {e}")),
    };
    match app.push(&chat, msg) {
        Ok(p) => {
            let body = serde_json::json!({
                "status": "success",
                "id": p.id,
                "serialized": p.serialized,
                "timestamp": p.timestamp,
            });
            json_response(StatusCode::OK, body.to_string())
        }
        Err(e @ PushError::UnknownChat(_)) => error_response(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ PushError::DuplicateId(_)) => error_response(StatusCode::CONFLICT, &e.to_string()),
        Err(e @ PushError::Invalid(_)) => error_response(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/chats/{chat_id}", get(chats_handler))
        .route("/__mock/requests", get(requests_handler))
        .route("/__mock/planted", get(planted_handler))
        .route("/__mock/chats/{chat_id}/messages", post(push_handler))
        .with_state(app)
}

async fn run(listener: tokio::net::TcpListener, app: Arc<App>) -> std::io::Result<()> {
    let shutdown = app.shutdown.clone();
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The blocking entry point for `cartat-rules mock-gateway`: serves until the token is cancelled.
///
/// Fails at once (`InvalidInput`) if the scenario does not validate.
pub async fn serve(
    listener: tokio::net::TcpListener,
    scenario: Scenario,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Arc::new(App::new(&scenario, shutdown)?);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "mock gateway listening");
    }
    run(listener, app).await
}

/// A running mock gateway, served in a spawned task. Dropping it stops the server.
pub struct MockGateway {
    addr: SocketAddr,
    app: Arc<App>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl fmt::Debug for MockGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockGateway")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockGateway {
    /// Serves on an already bound listener (tests bind 127.0.0.1:0), in a spawned task.
    ///
    /// The mock's clock starts now. Fails (`InvalidInput`) if the scenario does not validate.
    pub async fn start(
        listener: tokio::net::TcpListener,
        scenario: Scenario,
    ) -> std::io::Result<MockGateway> {
        let addr = listener.local_addr()?;
        let app = Arc::new(App::new(&scenario, CancellationToken::new())?);
        tracing::info!(%addr, "mock gateway listening");
        let task = tokio::spawn(run(listener, app.clone()));
        Ok(MockGateway {
            addr,
            app,
            task: Some(task),
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT` (an unspecified bind address is given as loopback).
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("http://{addr}")
    }

    /// The token `/chats` requests must carry.
    pub fn token(&self) -> &str {
        &self.app.token
    }

    /// Every `/chats` request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.app.requests()
    }

    /// Appends an inbound (`from_me: false`) or outbound `chat` message, visible at once, and
    /// returns its id (`id.id`).
    ///
    /// # Panics
    /// If the chat is unknown: a test-setup mistake. Use [`MockGateway::push`] to handle it.
    pub fn push_message(&self, chat: &str, body: &str, from_me: bool) -> String {
        let msg = NewMessage {
            body: body.to_owned(),
            from_me,
            kind: default_type(),
            ..NewMessage::default()
        };
        match self.push(chat, msg) {
            Ok(p) => p.id,
            Err(e) => panic!("mock gateway: cannot push a message to `{chat}`: {e}"),
        }
    }

    /// Appends a message, visible at once.
    pub fn push(&self, chat: &str, msg: NewMessage) -> Result<PushedMessage, PushError> {
        self.app.push(chat, msg)
    }

    /// Every planted-keyword synthetic message visible so far.
    pub fn planted(&self) -> Vec<PlantedMessage> {
        self.app.planted()
    }

    /// Milliseconds since the mock started.
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.app.clock.elapsed_ms()).unwrap_or(0)
    }

    /// Unix milliseconds of the mock's start (timestamps are computed from its second).
    pub fn start_unix_ms(&self) -> i64 {
        self.app.clock.start_unix_ms
    }

    /// Stops serving: hung requests are released, in-flight ones finish.
    pub async fn shutdown(mut self) {
        self.app.shutdown.cancel();
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "mock gateway stopped with an error"),
                Err(e) => tracing::warn!(error = %e, "mock gateway task failed"),
            }
        }
    }
}

impl Drop for MockGateway {
    fn drop(&mut self) {
        self.app.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    // ---- helpers ------------------------------------------------------------------------

    async fn start(yaml: &str) -> MockGateway {
        let scenario = Scenario::from_yaml(yaml).expect("scenario");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        MockGateway::start(listener, scenario).await.expect("start")
    }

    fn client() -> reqwest::Client {
        // The project's reqwest uses rustls without a built-in provider; plain HTTP still builds TLS config.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
    }

    /// GET /chats/{chat} with the right token; `limit` sent in the body when given.
    async fn fetch(gw: &MockGateway, chat: &str, limit: Option<u64>) -> reqwest::Response {
        let mut req = client()
            .get(format!("{}/chats/{chat}", gw.base_url()))
            .bearer_auth(gw.token())
            .header("Accept", "application/json");
        if let Some(l) = limit {
            req = req.json(&serde_json::json!({ "limit": l }));
        }
        req.send().await.expect("request")
    }

    async fn fetch_json(gw: &MockGateway, chat: &str, limit: Option<u64>) -> Value {
        let r = fetch(gw, chat, limit).await;
        assert_eq!(r.status(), 200);
        r.json().await.expect("json")
    }

    fn bodies(reply: &Value) -> Vec<String> {
        reply["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["body"].as_str().expect("body").to_owned())
            .collect()
    }

    fn ids(reply: &Value) -> Vec<String> {
        reply["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["id"]["id"].as_str().expect("id").to_owned())
            .collect()
    }

    fn world(yaml: &str) -> World {
        World::compile(&Scenario::from_yaml(yaml).expect("scenario")).expect("world")
    }

    const START_MS: i64 = 1_764_775_896_400;

    fn reply_at(w: &World, chat: &str, limit: Option<u64>, now_ms: i64) -> Value {
        serde_json::from_str(&w.reply(chat, limit, now_ms, START_MS).expect("chat")).expect("json")
    }

    const FIVE: &str = r#"
chats:
  - id: "966500000000"
    name: Jhone Due
    messages:
      - { at: -1h, body: "m1" }
      - { at: -30m, body: "m2" }
      - { at: -10m, body: "m3", from_me: true }
      - { at: -5m, body: "m4" }
      - { at: -1m, body: "m5" }
"#;

    // ---- auth, limit, shape -------------------------------------------------------------

    #[tokio::test]
    async fn answers_401_without_or_with_a_wrong_token() {
        let gw = start(FIVE).await;
        let url = format!("{}/chats/966500000000", gw.base_url());
        for req in [
            client().get(&url),
            client().get(&url).bearer_auth("wrong"),
            client().get(&url).basic_auth("mock-token", None::<&str>),
        ] {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401);
            let body: Value = r.json().await.unwrap();
            assert_eq!(
                body,
                serde_json::json!({"status": "error", "message": "unauthorized"})
            );
        }
        assert_eq!(fetch(&gw, "966500000000", None).await.status(), 200);
        let statuses: Vec<u16> = gw.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [401, 401, 401, 200]);
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn limit_in_the_body_or_the_query_gives_the_newest_oldest_first() {
        let gw = start(FIVE).await;
        let all = fetch_json(&gw, "966500000000", None).await;
        assert_eq!(bodies(&all), ["m1", "m2", "m3", "m4", "m5"]);

        let by_body = fetch_json(&gw, "966500000000", Some(2)).await;
        assert_eq!(bodies(&by_body), ["m4", "m5"]);

        let url = format!("{}/chats/966500000000", gw.base_url());
        let by_query: Value = client()
            .get(&url)
            .bearer_auth("mock-token")
            .query(&[("limit", "3")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(bodies(&by_query), ["m3", "m4", "m5"]);

        let query_wins: Value = client()
            .get(&url)
            .bearer_auth("mock-token")
            .query(&[("limit", "1")])
            .json(&serde_json::json!({"limit": 4}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(bodies(&query_wins), ["m5"]);

        let infinity: Value = client()
            .get(&url)
            .bearer_auth("mock-token")
            .json(&serde_json::json!({"limit": "Infinity"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(bodies(&infinity).len(), 5);

        let bad = client()
            .get(&url)
            .bearer_auth("mock-token")
            .query(&[("limit", "-1")])
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400);

        let limits: Vec<Option<u64>> = gw.requests().iter().map(|r| r.limit).collect();
        assert_eq!(limits, [None, Some(2), Some(3), Some(1), None, None]);
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn unknown_chat_is_404() {
        let gw = start(FIVE).await;
        let r = fetch(&gw, "966599999999", Some(5)).await;
        assert_eq!(r.status(), 404);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"status": "error", "message": "chat not found"})
        );
        gw.shutdown().await;
    }

    #[test]
    fn private_reply_matches_the_whatsapp_web_js_shape() {
        let w = world(FIVE);
        let reply = reply_at(&w, "966500000000", Some(2), 0);
        assert_eq!(reply["status"], "success");
        let chat = &reply["chat"];
        assert_eq!(
            chat["id"],
            serde_json::json!({"server": "c.us", "user": "966500000000", "_serialized": "966500000000@c.us"})
        );
        assert_eq!(chat["name"], "Jhone Due");
        assert_eq!(chat["isGroup"], false);
        assert_eq!(chat["timestamp"], START_MS / 1000 - 60);
        for key in [
            "isReadOnly",
            "unreadCount",
            "archived",
            "pinned",
            "isMuted",
            "muteExpiration",
        ] {
            assert!(chat.get(key).is_some(), "chat.{key}");
        }
        assert!(chat.get("groupMetadata").is_none());

        let messages = reply["messages"].as_array().unwrap();
        let outbound = &messages[0];
        assert_eq!(outbound["body"], "m4");
        let inbound = &messages[1];
        for key in [
            "_data",
            "id",
            "ack",
            "hasMedia",
            "body",
            "type",
            "timestamp",
            "from",
            "to",
            "author",
            "deviceType",
            "isForwarded",
            "forwardingScore",
            "isStatus",
            "isStarred",
            "fromMe",
            "hasQuotedMsg",
            "hasReaction",
            "vCards",
            "mentionedIds",
            "groupMentions",
            "isGif",
            "links",
        ] {
            assert!(inbound.get(key).is_some(), "message.{key}");
        }
        for key in [
            "id",
            "viewed",
            "body",
            "type",
            "t",
            "from",
            "to",
            "self",
            "ack",
            "invis",
            "star",
            "latestEditMsgKey",
        ] {
            assert!(inbound["_data"].get(key).is_some(), "_data.{key}");
        }
        assert_eq!(inbound["_data"]["id"], inbound["id"]);
        assert_eq!(
            inbound["id"]["_serialized"],
            "false_966500000000@c.us_MOCK0_4"
        );
        assert_eq!(inbound["id"]["fromMe"], false);
        assert_eq!(inbound["id"]["remote"], "966500000000@c.us");
        assert_eq!(inbound["from"], "966500000000@c.us");
        assert_eq!(inbound["to"], BUSINESS_ID);
        assert_eq!(inbound["author"], Value::Null);
        assert!(inbound["_data"].get("author").is_none());
        assert_eq!(inbound["_data"]["from"]["_serialized"], "966500000000@c.us");
        assert_eq!(inbound["_data"]["self"], "in");
        assert_eq!(inbound["_data"]["t"], inbound["timestamp"]);
        assert_eq!(inbound["timestamp"], START_MS / 1000 - 60);
        assert_eq!(inbound["hasMedia"], false);
        assert_eq!(inbound["type"], "chat");

        let m3 = &reply_at(&w, "966500000000", Some(3), 0)["messages"][0];
        assert_eq!(m3["fromMe"], true);
        assert_eq!(m3["from"], BUSINESS_ID);
        assert_eq!(m3["to"], "966500000000@c.us");
        assert_eq!(m3["_data"]["self"], "out");
        assert_eq!(m3["id"]["_serialized"], "true_966500000000@c.us_MOCK0_2");
    }

    #[test]
    fn group_messages_carry_author_and_participant() {
        let w = world(
            r#"
chats:
  - id: "120363000000000001@g.us"
    name: Team
    messages:
      - { at: -2s, body: "from a member" }
      - { at: -1s, body: "from a lid", author: "900000000000002@lid", id: G2 }
      - { at: -1s, body: "from us", from_me: true }
"#,
        );
        let reply = reply_at(&w, "120363000000000001@g.us", None, 0);
        assert_eq!(reply["chat"]["isGroup"], true);
        assert_eq!(reply["chat"]["groupMetadata"]["subject"], "Team");
        let m = reply["messages"].as_array().unwrap();
        assert_eq!(m[0]["author"], GROUP_MEMBER_ID);
        assert_eq!(m[0]["_data"]["author"]["_serialized"], GROUP_MEMBER_ID);
        assert_eq!(m[1]["author"], "900000000000002@lid");
        assert_eq!(m[1]["id"]["participant"]["server"], "lid");
        assert_eq!(
            m[1]["id"]["_serialized"],
            "false_120363000000000001@g.us_G2_900000000000002@lid"
        );
        assert_eq!(m[1]["from"], "120363000000000001@g.us");
        assert_eq!(m[2]["author"], BUSINESS_ID);
        assert!(m[2]["id"].get("participant").is_none());
    }

    // ---- time ---------------------------------------------------------------------------

    #[tokio::test]
    async fn messages_appear_at_their_offset() {
        let gw = start(
            r#"
chats:
  - id: "966500000000"
    messages:
      - { at: -1h, body: "old history" }
      - { at: 400ms, body: "soon" }
"#,
        )
        .await;
        let early = fetch_json(&gw, "966500000000", None).await;
        if gw.requests()[0].at_ms < 400 {
            // (A machine stalled past 400ms before this request proves nothing here.)
            assert_eq!(bodies(&early), ["old history"]);
        }
        while gw.elapsed_ms() < 420 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reply = fetch_json(&gw, "966500000000", None).await;
        assert_eq!(bodies(&reply), ["old history", "soon"]);
        let start_secs = gw.start_unix_ms().div_euclid(1000);
        assert_eq!(reply["messages"][0]["timestamp"], start_secs - 3600);
        assert_eq!(reply["messages"][1]["timestamp"], start_secs);
        assert_eq!(reply["chat"]["timestamp"], start_secs);
        gw.shutdown().await;
    }

    #[test]
    fn visibility_and_timestamps_follow_the_offsets() {
        let w = world(
            r#"
chats:
  - id: "966500000000"
    messages:
      - { at: 2s, body: "بُوت", id: AR1 }
      - { at: 2s, body: "second in the same second", from_me: false, type: chat, author: null }
      - { at: 2900ms, body: "same second too" }
      - { at: 3s, body: "next second" }
"#,
        );
        assert!(bodies(&reply_at(&w, "966500000000", None, 1999)).is_empty());
        assert_eq!(
            reply_at(&w, "966500000000", None, 1999)["chat"]["timestamp"],
            START_MS / 1000
        );
        let reply = reply_at(&w, "966500000000", None, 3000);
        assert_eq!(ids(&reply), ["AR1", "MOCK0_1", "MOCK0_2", "MOCK0_3"]);
        let ts: Vec<i64> = reply["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["timestamp"].as_i64().unwrap())
            .collect();
        let base = START_MS / 1000;
        assert_eq!(ts, [base + 2, base + 2, base + 2, base + 3]);
        assert_eq!(
            bodies(&reply_at(&w, "966500000000", Some(1), 2899)),
            ["second in the same second"]
        );
    }

    #[tokio::test]
    async fn same_second_ties_share_a_timestamp_over_http() {
        let gw = start(
            r#"
chats:
  - id: "966500000000"
    messages:
      - { at: -10s, body: "a" }
      - { at: -10s, body: "b" }
      - { at: -9500ms, body: "c" }
"#,
        )
        .await;
        let reply = fetch_json(&gw, "966500000000", None).await;
        let ts: Vec<&Value> = reply["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["timestamp"])
            .collect();
        assert_eq!(ts[0], ts[1]);
        assert_eq!(ts[1], ts[2]);
        assert_eq!(bodies(&reply), ["a", "b", "c"]);
        gw.shutdown().await;
    }

    #[test]
    fn revoke_and_edit_update_the_same_id() {
        let w = world(
            r#"
chats:
  - id: "966500000000"
    messages:
      - { at: 1s, body: "typo", id: E1, edit: { at: 3s, body: "fixed" } }
      - { at: 1s, body: "oops", id: R1, revoke_at: 5s }
"#,
        );
        let before = reply_at(&w, "966500000000", None, 2000);
        assert_eq!(ids(&before), ["E1", "R1"]);
        assert_eq!(bodies(&before), ["typo", "oops"]);
        assert_eq!(
            before["messages"][0]["latestEditSenderTimestampMs"],
            Value::Null
        );

        let edited = reply_at(&w, "966500000000", None, 3000);
        assert_eq!(ids(&edited), ["E1", "R1"]);
        assert_eq!(bodies(&edited), ["fixed", "oops"]);
        assert_eq!(edited["messages"][0]["type"], "chat");
        assert_eq!(edited["messages"][0]["_data"]["body"], "fixed");
        assert_eq!(
            edited["messages"][0]["latestEditSenderTimestampMs"],
            START_MS + 3000
        );
        assert_eq!(
            edited["messages"][0]["timestamp"],
            before["messages"][0]["timestamp"]
        );

        let revoked = reply_at(&w, "966500000000", None, 5000);
        let r1 = &revoked["messages"][1];
        assert_eq!(r1["id"], before["messages"][1]["id"]);
        assert_eq!(r1["type"], "revoked");
        assert_eq!(r1["body"], "");
        assert_eq!(r1["_data"]["type"], "revoked");
        assert!(r1["_data"].get("body").is_none());
        assert_eq!(r1["_data"]["subtype"], "sender_revoke");
        assert_eq!(r1["timestamp"], before["messages"][1]["timestamp"]);
    }

    // ---- faults -------------------------------------------------------------------------

    #[tokio::test]
    async fn a_429_fault_sends_retry_after_and_is_used_times_times() {
        let gw = start(&format!(
            "{FIVE}faults:\n  - {{ chat: \"966500000000\", times: 2, respond: {{ status: 429, retry_after: \"2\" }} }}\n"
        ))
        .await;
        for _ in 0..2 {
            let r = fetch(&gw, "966500000000", Some(1)).await;
            assert_eq!(r.status(), 429);
            assert_eq!(r.headers()["retry-after"], "2");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["status"], "error");
        }
        assert_eq!(fetch(&gw, "966500000000", Some(1)).await.status(), 200);
        let faults: Vec<(u16, Option<usize>)> =
            gw.requests().iter().map(|r| (r.status, r.fault)).collect();
        assert_eq!(faults, [(429, Some(0)), (429, Some(0)), (200, None)]);
        gw.shutdown().await;
    }

    #[test]
    fn faults_match_by_window_chat_and_remaining_uses() {
        let scenario = Scenario::from_yaml(
            r#"
faults:
  - { after: 3s, until: 10s, chat: "966500000000", times: 1, respond: { status: 429, retry_after: 2 } }
  - { chat: "966500000001@c.us", respond: { status: 500 } }
  - { after: 20s, respond: { malformed: true } }
"#,
        )
        .unwrap();
        let mut faults: Vec<Fault> = scenario
            .faults
            .iter()
            .map(|f| Fault::compile(f).unwrap())
            .collect();
        let mut pick = |chat: &str, now: i64| pick_fault(&mut faults, chat, now).map(|(i, _, _)| i);
        assert_eq!(pick("966500000000", 2999), None);
        assert_eq!(pick("966500000002", 5000), None);
        assert_eq!(pick("966500000000@c.us", 3000), Some(0));
        assert_eq!(pick("966500000000", 3001), None, "times: 1 is used up");
        assert_eq!(pick("966500000001", 0), Some(1));
        assert_eq!(
            pick("966500000001", 99_000),
            Some(1),
            "unlimited, earlier fault first"
        );
        assert_eq!(pick("966500000002", 20_000), Some(2));
        let FaultAction::Status { retry_after, .. } =
            &Fault::compile(&scenario.faults[0]).unwrap().action
        else {
            panic!("status fault");
        };
        assert_eq!(
            retry_after.as_deref(),
            Some("2"),
            "an unquoted number is read as text"
        );
    }

    #[tokio::test]
    async fn a_500_fault_and_a_custom_body() {
        let gw = start(&format!(
            "{FIVE}faults:\n  - {{ times: 1, respond: {{ status: 500 }} }}\n  - {{ times: 1, respond: {{ status: 200, body: '{{\"status\":\"error\",\"message\":\"session closed\"}}' }} }}\n"
        ))
        .await;
        let r = fetch(&gw, "966500000000", None).await;
        assert_eq!(r.status(), 500);
        let r = fetch(&gw, "966500000000", None).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "error");
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn malformed_and_truncated_bodies_are_not_json() {
        let gw = start(&format!(
            "{FIVE}faults:\n  - {{ times: 1, respond: {{ malformed: true }} }}\n  - {{ times: 1, respond: {{ truncated: true }} }}\n"
        ))
        .await;
        let malformed = fetch(&gw, "966500000000", None).await;
        assert_eq!(malformed.status(), 200);
        let text = malformed.text().await.unwrap();
        assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");

        let truncated = fetch(&gw, "966500000000", None).await;
        assert_eq!(truncated.status(), 200);
        let cut = truncated.text().await.unwrap();
        assert!(serde_json::from_str::<Value>(&cut).is_err());
        let whole = fetch(&gw, "966500000000", None).await.text().await.unwrap();
        assert!(whole.starts_with(&cut), "a prefix of the real reply");
        assert!(cut.len() * 2 <= whole.len() && cut.len() * 2 + 8 >= whole.len());
        assert!(cut.starts_with(r#"{"status":"success""#));
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn a_delay_fault_answers_normally_late() {
        let gw = start(&format!(
            "{FIVE}faults:\n  - {{ times: 1, respond: {{ delay: 300ms }} }}\n"
        ))
        .await;
        let t0 = std::time::Instant::now();
        let reply = fetch_json(&gw, "966500000000", Some(1)).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(bodies(&reply), ["m5"]);
        fetch_json(&gw, "966500000000", Some(1)).await;
        let used: Vec<(u16, Option<usize>)> =
            gw.requests().iter().map(|r| (r.status, r.fault)).collect();
        assert_eq!(used, [(200, Some(0)), (200, None)], "times: 1");
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn a_hang_fault_never_answers_and_shutdown_releases_it() {
        let gw = start(&format!(
            "{FIVE}faults:\n  - {{ times: 1, respond: {{ hang: true }} }}\n"
        ))
        .await;
        let err = client()
            .get(format!("{}/chats/966500000000", gw.base_url()))
            .bearer_auth("mock-token")
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .expect_err("hangs");
        assert!(err.is_timeout(), "{err}");
        assert_eq!(gw.requests()[0].status, 0);
        assert_eq!(
            fetch(&gw, "966500000000", None).await.status(),
            200,
            "times: 1"
        );

        // A second hang still in flight when shutting down.
        let gw2 = start(&format!(
            "{FIVE}faults:\n  - {{ respond: {{ hang: true }} }}\n"
        ))
        .await;
        let url = format!("{}/chats/966500000000", gw2.base_url());
        let pending =
            tokio::spawn(async move { client().get(url).bearer_auth("mock-token").send().await });
        while gw2.requests().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::timeout(Duration::from_secs(5), gw2.shutdown())
            .await
            .expect("shutdown is prompt");
        let released = pending.await.unwrap().expect("answered on shutdown");
        assert_eq!(released.status(), 503);
        gw.shutdown().await;
    }

    // ---- observability ------------------------------------------------------------------

    #[tokio::test]
    async fn the_request_log_records_chat_limit_and_status() {
        let gw = start(FIVE).await;
        fetch(&gw, "966500000000", Some(7)).await;
        fetch(&gw, "966500000000@c.us", None).await;
        fetch(&gw, "966599999999", Some(1)).await;
        let log = gw.requests();
        let seen: Vec<(&str, Option<u64>, u16)> = log
            .iter()
            .map(|r| (r.chat.as_str(), r.limit, r.status))
            .collect();
        assert_eq!(
            seen,
            [
                ("966500000000", Some(7), 200),
                ("966500000000@c.us", None, 200),
                ("966599999999", Some(1), 404)
            ]
        );
        assert!(log.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(
            log.iter()
                .all(|r| r.unix_ms == gw.start_unix_ms() + i64::try_from(r.at_ms).unwrap())
        );

        let over_http: Vec<RequestRecord> = client()
            .get(format!("{}/__mock/requests", gw.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            over_http, log,
            "admin routes need no token and are not recorded"
        );
        gw.shutdown().await;
    }

    #[tokio::test]
    async fn a_pushed_message_appears_in_the_next_reply() {
        let gw = start(FIVE).await;
        let id = gw.push_message("966500000000", "بوت please", false);
        let reply = fetch_json(&gw, "966500000000", Some(2)).await;
        assert_eq!(bodies(&reply), ["m5", "بوت please"]);
        assert_eq!(ids(&reply)[1], id);
        assert_eq!(
            reply["messages"][1]["timestamp"],
            reply["chat"]["timestamp"]
        );

        let url = format!("{}/__mock/chats/966500000000/messages", gw.base_url());
        let created: Value = client()
            .post(&url)
            .json(&serde_json::json!({"body": "reply", "from_me": true, "type": "chat", "id": "OUT1"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(created["id"], "OUT1");
        assert_eq!(created["serialized"], "true_966500000000@c.us_OUT1");
        let reply = fetch_json(&gw, "966500000000", Some(1)).await;
        assert_eq!(ids(&reply), ["OUT1"]);
        assert_eq!(reply["messages"][0]["fromMe"], true);

        let dup = client()
            .post(&url)
            .json(&serde_json::json!({"body": "again", "id": "OUT1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(dup.status(), 409);
        let unknown = client()
            .post(format!(
                "{}/__mock/chats/966599999999/messages",
                gw.base_url()
            ))
            .json(&serde_json::json!({"body": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404);
        let bad = client()
            .post(&url)
            .json(&serde_json::json!({"text": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400);
        assert!(matches!(
            gw.push("966599999999", NewMessage::default()),
            Err(PushError::UnknownChat(_))
        ));
        gw.shutdown().await;
    }

    #[test]
    fn a_push_lands_before_scheduled_future_messages() {
        let mut w = world(
            r#"
chats:
  - id: "966500000000"
    messages:
      - { at: -1s, body: "past" }
      - { at: 10s, body: "future" }
"#,
        );
        let id = w
            .push(
                "966500000000",
                NewMessage {
                    body: "now".into(),
                    ..NewMessage::default()
                },
                500,
            )
            .unwrap()
            .1;
        assert_eq!(id, "MOCK0_2");
        assert_eq!(
            bodies(&reply_at(&w, "966500000000", None, 600)),
            ["past", "now"]
        );
        assert_eq!(
            bodies(&reply_at(&w, "966500000000", None, 10_000)),
            ["past", "now", "future"]
        );
    }

    // ---- synthetic ----------------------------------------------------------------------

    const SYNTH: &str = r#"
synthetic:
  chats: 40
  active_fraction: 0.25
  messages_per_second: 100
  keyword: "بوت"
  keyword_every: 10
  seed: 42
"#;

    #[test]
    fn synthetic_chats_are_spread_and_named_from_the_index() {
        let w = world(SYNTH);
        let s = w.synthetic.as_ref().unwrap();
        assert_eq!(synthetic_chat_id(0), "966510000000");
        assert_eq!(synthetic_chat_id(39), "966510000039");
        assert_eq!((0..40).filter(|&c| s.is_active(c)).count(), 10);
        assert_eq!(w.resolve("966510000039"), Some(ChatRef::Synthetic(39)));
        assert_eq!(w.resolve("966510000040"), None);
        let inactive = (0..40).find(|&c| !s.is_active(c)).unwrap();
        let reply = reply_at(&w, &synthetic_chat_id(inactive), None, 60_000);
        assert!(
            bodies(&reply).is_empty(),
            "an inactive chat exists but stays quiet"
        );
    }

    #[test]
    fn synthetic_traffic_is_deterministic_for_a_seed() {
        let a = world(SYNTH);
        let b = world(SYNTH);
        let c = world(&SYNTH.replace("seed: 42", "seed: 43"));
        let active: Vec<u64> = (0..40)
            .filter(|&i| a.synthetic.as_ref().unwrap().is_active(i))
            .collect();
        let mut differs = false;
        for &i in &active {
            let chat = synthetic_chat_id(i);
            let ra = a.reply(&chat, None, 10_000, START_MS).unwrap();
            assert_eq!(ra, b.reply(&chat, None, 10_000, START_MS).unwrap());
            differs |= ra != c.reply(&chat, None, 10_000, START_MS).unwrap();
            let v: Value = serde_json::from_str(&ra).unwrap();
            let n = v["messages"].as_array().unwrap().len();
            assert!(
                (90..=110).contains(&n),
                "10 active chats share 100 msg/s: {n} in 10s"
            );
            let ts: Vec<i64> = v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["timestamp"].as_i64().unwrap())
                .collect();
            assert!(ts.windows(2).all(|w| w[0] <= w[1]), "oldest first");
        }
        assert!(differs, "another seed gives other traffic");
    }

    #[test]
    fn a_synthetic_reply_costs_o_limit() {
        // A billion messages visible in one chat: only the newest `limit` are derived.
        let w = world(
            "synthetic: { chats: 10000, active_fraction: 0.0001, messages_per_second: 1000000, seed: 7 }",
        );
        let s = w.synthetic.as_ref().unwrap();
        let chat = (0..10_000).find(|&c| s.is_active(c)).unwrap();
        let now = 1_000_000; // 1000 s
        assert!(s.visible_count(chat, now) > 900_000_000);
        let t0 = std::time::Instant::now();
        let reply = reply_at(&w, &synthetic_chat_id(chat), Some(50), now);
        assert!(t0.elapsed() < Duration::from_secs(1));
        let got = ids(&reply);
        assert_eq!(got.len(), 50);
        let n = s.visible_count(chat, now);
        assert_eq!(got[49], format!("MOCKS{chat}_{}", n - 1));
        assert_eq!(got[0], format!("MOCKS{chat}_{}", n - 50));
    }

    #[test]
    fn filler_never_contains_the_keyword() {
        let w = world(
            "synthetic: { chats: 1, messages_per_second: 1, keyword: OK, keyword_every: 1000 }",
        );
        let s = w.synthetic.as_ref().unwrap();
        assert!(s.filler.len() < FILLER.len());
        assert!((0..500).all(|k| !s.message(0, k).body.unwrap().to_lowercase().contains("ok")));
    }

    #[test]
    fn visible_count_agrees_with_message_times() {
        let w = world(SYNTH);
        let s = w.synthetic.as_ref().unwrap();
        for c in (0..40).filter(|&c| s.is_active(c)) {
            for now in [0, 1, 57, 999, 1000, 4321, 10_000] {
                let n = s.visible_count(c, now);
                if n > 0 {
                    assert!(s.message(c, n - 1).at_ms <= now);
                }
                assert!(
                    s.message(c, n).at_ms >= now - 1,
                    "message {n} of {c} is not yet visible at {now}"
                );
            }
        }
    }

    #[test]
    fn planted_lists_exactly_the_served_keyword_messages() {
        let w = world(SYNTH);
        let now = 7_500;
        let planted: HashSet<PlantedMessage> = w
            .planted(now, START_MS)
            .into_iter()
            .map(|p| {
                assert!(p.at_unix_ms <= START_MS + now);
                PlantedMessage { at_unix_ms: 0, ..p }
            })
            .collect();
        let mut served = HashSet::new();
        for c in 0..40 {
            let reply = reply_at(&w, &synthetic_chat_id(c), None, now);
            for m in reply["messages"].as_array().unwrap() {
                if m["body"].as_str().unwrap().contains("بوت") {
                    assert_eq!(m["fromMe"], false, "planted messages are inbound");
                    served.insert(PlantedMessage {
                        chat: m["from"].as_str().unwrap().to_owned(),
                        message_id: m["id"]["_serialized"].as_str().unwrap().to_owned(),
                        timestamp: m["timestamp"].as_i64().unwrap(),
                        at_unix_ms: 0,
                    });
                }
            }
        }
        assert!(planted.len() > 50, "{}", planted.len());
        assert_eq!(planted, served);
    }

    #[tokio::test]
    async fn synthetic_over_http_with_a_traffic_window() {
        let yaml = "synthetic: { chats: 5, messages_per_second: 200, keyword: bot, keyword_every: 3, seed: 1, until: 200ms }\n";
        let gw = start(yaml).await;
        let gw2 = start(yaml).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let planted: Vec<PlantedMessage> = client()
            .get(format!("{}/__mock/planted", gw.base_url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(planted, gw.planted(), "traffic stopped at 200ms");
        let mut served = 0;
        for c in 0..5 {
            let chat = synthetic_chat_id(c);
            let reply = fetch_json(&gw, &chat, None).await;
            let reply2 = fetch_json(&gw2, &chat, None).await;
            assert_eq!(ids(&reply), ids(&reply2), "same seed, same traffic");
            assert_eq!(bodies(&reply), bodies(&reply2));
            assert!(
                (7..=9).contains(&ids(&reply).len()),
                "40 msg/s per chat for 200ms"
            );
            served += bodies(&reply)
                .iter()
                .filter(|b| b.split(' ').any(|w| w == "bot"))
                .count();
        }
        assert_eq!(served, planted.len());
        let pushed = gw.push_message(&synthetic_chat_id(2), "hello there", false);
        let reply = fetch_json(&gw, &synthetic_chat_id(2), Some(2)).await;
        assert_eq!(ids(&reply)[1], pushed);
        gw.shutdown().await;
        gw2.shutdown().await;
    }

    // ---- scenario files -----------------------------------------------------------------

    #[test]
    fn an_unknown_key_fails_with_line_and_column() {
        let err =
            Scenario::from_yaml("token: t\nchats:\n  - id: \"966500000000\"\n    colour: red\n")
                .unwrap_err();
        assert!(err.starts_with("4:5: unknown field `colour`"), "{err}");
        let err = Scenario::from_yaml("faults:\n  - { respond: { status: 429, retry: 2 } }\n")
            .unwrap_err();
        assert!(err.starts_with("2:"), "{err}");
        assert!(err.contains("`retry`"), "{err}");
    }

    #[test]
    fn from_file_names_the_file() {
        let dir = std::env::temp_dir().join(format!("cartat-mock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.yaml");
        std::fs::write(&path, "chats: []\nnope: 1\n").unwrap();
        let err = Scenario::from_file(&path).unwrap_err();
        assert!(
            err.starts_with(&format!("{}:2:1: unknown field `nope`", path.display())),
            "{err}"
        );
        let good = dir.join("good.yaml");
        std::fs::write(&good, FIVE).unwrap();
        assert_eq!(
            Scenario::from_file(&good).unwrap().chats[0].messages.len(),
            5
        );
        let missing = Scenario::from_file(&dir.join("missing.yaml")).unwrap_err();
        assert!(missing.contains("missing.yaml"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = [
            (
                "chats: [ { id: \"+966500000000\" } ]",
                "did you mean 966500000000?",
            ),
            (
                "chats: [ { id: \"1\" }, { id: \"1@c.us\" } ]",
                "chats[1]: chat `1@c.us` is listed twice",
            ),
            (
                "chats: [ { id: \"1\", messages: [ { at: 1s, author: \"2@c.us\" } ] } ]",
                "only for group chats",
            ),
            (
                "chats: [ { id: \"1\", messages: [ { at: 5s, revoke_at: 1s } ] } ]",
                "chats[0].messages[0]: `revoke_at`",
            ),
            (
                "chats: [ { id: \"1\", messages: [ { at: 1s, id: X }, { at: 2s, id: X } ] } ]",
                "used twice",
            ),
            ("chats: [ { id: \"1\", messages: [ { at: soon } ] } ]", "1:"),
            (
                "faults: [ { respond: { status: 500, malformed: true } } ]",
                "faults[0]: respond: choose one",
            ),
            (
                "faults: [ { respond: {} } ]",
                "faults[0]: respond: says nothing",
            ),
            (
                "faults: [ { respond: { malformed: true, retry_after: \"1\" } } ]",
                "go with status",
            ),
            (
                "faults: [ { after: 5s, until: 1s, respond: { hang: true } } ]",
                "until must be later",
            ),
            (
                "faults: [ { times: 0, respond: { hang: true } } ]",
                "at least 1",
            ),
            (
                "synthetic: { chats: 0, messages_per_second: 1 }",
                "synthetic.chats",
            ),
            (
                "synthetic: { chats: 5, messages_per_second: 1 }\nchats: [ { id: \"966510000003\" } ]",
                "also a synthetic chat",
            ),
            ("token: \"\"", "token"),
        ];
        for (yaml, want) in cases {
            let err = Scenario::from_yaml(yaml).expect_err(yaml);
            assert!(err.contains(want), "{yaml}\n  gave: {err}\n  want: {want}");
        }
    }

    #[test]
    fn offsets_are_signed_durations() {
        let cases = [
            ("-1h", -3_600_000),
            ("2s", 2000),
            ("500ms", 500),
            ("0", 0),
            ("+5m", 300_000),
            ("-0", 0),
        ];
        for (text, ms) in cases {
            assert_eq!(
                text.parse::<Offset>().map(Offset::as_millis),
                Ok(ms),
                "{text}"
            );
        }
        assert!("-".parse::<Offset>().is_err());
        assert!("1.5s".parse::<Offset>().is_err());
        assert_eq!(Offset::from_millis(-3_600_000).to_string(), "-1h");
        assert_eq!(
            timestamp_of(1_000_999, -1),
            999,
            "history rounds down to whole seconds"
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = Scenario::from_yaml(
            "chats: [ { id: \"120363000000000001@g.us\" }, { id: \"966500000000\" } ]",
        )
        .unwrap();
        assert_eq!(s.token, DEFAULT_TOKEN);
        assert!(
            !format!("{s:?}").contains(DEFAULT_TOKEN),
            "the token stays out of Debug"
        );
        let w = World::compile(&s).unwrap();
        assert!(w.chats[0].is_group);
        assert!(!w.chats[1].is_group);
        assert_eq!(w.chats[1].name, "966500000000");
        assert_eq!(w.chats[1].id, "966500000000@c.us");
        assert!(Scenario::default().validate().is_ok());
    }

    #[tokio::test]
    async fn serve_runs_until_its_token_is_cancelled() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            Scenario::from_yaml(FIVE).unwrap(),
            token.clone(),
        ));
        let r = client()
            .get(format!("http://{addr}/chats/966500000000"))
            .bearer_auth(DEFAULT_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bad = Scenario {
            token: String::new(),
            ..Scenario::default()
        };
        let err = serve(listener, bad, CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}
