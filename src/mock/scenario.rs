//! The scenario file: the raw, serde-only description of what the mock serves.

use super::*;

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

pub(super) fn default_token() -> String {
    DEFAULT_TOKEN.to_owned()
}

pub(super) fn default_max_recorded_requests() -> usize {
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
    /// The message id (`id.id`). Default `MOCK{run}_{chat index}_{message index}`, where the run's tag is random per start (ids of two runs never collide).
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

pub(super) fn default_type() -> String {
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

pub(super) fn default_active_fraction() -> f64 {
    1.0
}

pub(super) fn default_keyword() -> String {
    "بوت".to_owned()
}

pub(super) fn default_keyword_every() -> u64 {
    10
}

/// A signed offset from the mock's start, written `-1h`, `2s`, `500ms`, `0`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset {
    pub(super) millis: i64,
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
pub(super) fn yaml_error(e: &serde_saphyr::Error) -> String {
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
