//! Rules: loaded from files ([`raw`]), compiled once into a [`RuleSet`] that holds the
//! keyword automaton, regexes and templates, then evaluated purely ([`RuleSet::eval_message`]).
//!
//! The parts: [`load`] finds and parses the files, `compile` turns them into a [`RuleSet`],
//! `evaluate` runs it on a message; this module holds the compiled types they share.
//!
//! Owns: the rule language for message rules. Must not: do I/O after loading,
//! keep per-chat state (cooldowns and watermarks belong to the engine and the store).

pub mod chat;
mod compile;
pub(crate) mod docs;
mod evaluate;
mod load;
pub mod raw;
pub mod rhai_file;
pub mod script;
pub mod template;

use compile::Compiler;
pub use compile::{compile_rules, compile_rules_for, compile_rules_with};
pub use evaluate::{Prepared, SCRIPT_VARIABLES};
pub use load::{ParsedFile, discover, load, load_configured, load_for, load_with, parse_file};

use crate::diag::{Diagnostic, Diagnostics};
use crate::gateway::model::{Chat, ChatId, Message};
use crate::text::matcher::{Hits, KeywordId, MatchMode, Matcher, MatcherBuilder};
use crate::text::normalize::normalize;
use raw::{Level, On, RawAction, RawMatch, RawRule};
use script::Sandbox;
use serde_json::{Value, json};
use serde_saphyr::{Location, Spanned};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use template::{Kind, TemplateId, Templates};

/// Rules see at most this much of a body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Message types that are notifications: only a rule that names them in `type` sees them.
pub const NOTIFICATION_TYPES: &[&str] = &[
    "e2e_notification",
    "gp2",
    "notification_template",
    "call_log",
    "protocol",
    "ciphertext",
    "revoked",
    "notification",
    "broadcast_notification",
];

/// A compiled condition.
#[derive(Debug)]
enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    FromMe(bool),
    IsGroup(bool),
    Types(Vec<String>),
    Chats(Vec<ChatId>),
    Body(Box<BodyCond>),
    Script(Box<ScriptCond>),
    When(Box<WhenCond>),
}

/// A compiled `when:` condition: local days, a time window and holidays in one time zone.
#[derive(Debug)]
struct WhenCond {
    /// Bit `n` set: weekday `n` (Sunday = 0) is in.
    days: u8,
    /// Minutes after local midnight, start included, end excluded; start > end spans midnight.
    between: Option<(u16, u16)>,
    tz: jiff::tz::TimeZone,
    /// The zone's name, for explanations.
    tz_name: String,
    holidays: Vec<jiff::civil::Date>,
}

/// Day names as `when.days` takes them, Sunday first (the week of the Gulf).
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl WhenCond {
    /// The local date, weekday (Sunday = 0) and minute of the day of `unix` seconds.
    fn local(&self, unix: i64) -> Option<(jiff::civil::Date, usize, u16)> {
        let zoned = jiff::Timestamp::from_second(unix)
            .ok()?
            .to_zoned(self.tz.clone());
        let weekday = zoned.weekday().to_sunday_zero_offset() as usize;
        let minute = zoned.hour() as u16 * 60 + zoned.minute() as u16;
        Some((zoned.date(), weekday, minute))
    }

    /// Whether the condition holds at `unix` seconds.
    fn holds(&self, unix: i64) -> bool {
        self.why_not(unix).is_none()
    }

    /// Why it does not hold at `unix` seconds; `None` when it holds.
    fn why_not(&self, unix: i64) -> Option<String> {
        let Some((date, weekday, minute)) = self.local(unix) else {
            return Some(format!("when: {unix} is not a time"));
        };
        let hhmm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        let zone = &self.tz_name;
        // The small hours of a window across midnight belong to the night it started: with
        // `days: [thu]` and 22:00-06:00, Friday 03:00 is Thursday's night.
        let (date, weekday) = match self.between {
            Some((from, to)) if from > to && minute < to => {
                (date.yesterday().unwrap_or(date), (weekday + 6) % 7)
            }
            _ => (date, weekday),
        };
        if self.holidays.contains(&date) {
            return Some(format!("when: {date} is a holiday ({zone})"));
        }
        if self.days & (1 << weekday) == 0 {
            return Some(format!(
                "when: {date} is a {} ({zone}), not one of the days",
                DAY_NAMES[weekday]
            ));
        }
        if let Some((from, to)) = self.between {
            let inside = if from <= to {
                (from..to).contains(&minute)
            } else {
                minute >= from || minute < to
            };
            if !inside {
                return Some(format!(
                    "when: {} ({zone}) is not between {} and {}",
                    hhmm(minute),
                    hhmm(from),
                    hhmm(to)
                ));
            }
        }
        None
    }
}

#[derive(Debug)]
struct BodyCond {
    any: Vec<(KeywordId, String)>,
    all: Vec<(KeywordId, String)>,
    none: Vec<(KeywordId, String)>,
    regex: Option<regex::Regex>,
    /// The key each capture group is reported under: its name, else its number (`0` is the
    /// whole match).
    capture_keys: Vec<String>,
    normalized: bool,
    /// `words: true`: keywords count only as whole words (for `test --explain` to say so).
    words: bool,
    /// `suffixes: true` (with `words`): an attached pronoun may end the word.
    suffixes: bool,
    /// `number:` — a comparison on a number in the text.
    number: Option<NumberCond>,
}

/// A compiled `body.number` condition: every comparison must hold.
#[derive(Debug)]
struct NumberCond {
    /// A named regex capture to read the number from (else the first number in the text).
    capture: Option<String>,
    cmp: Vec<(NumberOp, f64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumberOp {
    Gt,
    Gte,
    Lt,
    Lte,
    Eq,
}

impl NumberOp {
    fn holds(self, value: f64, bound: f64) -> bool {
        match self {
            NumberOp::Gt => value > bound,
            NumberOp::Gte => value >= bound,
            NumberOp::Lt => value < bound,
            NumberOp::Lte => value <= bound,
            NumberOp::Eq => value == bound,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            NumberOp::Gt => ">",
            NumberOp::Gte => ">=",
            NumberOp::Lt => "<",
            NumberOp::Lte => "<=",
            NumberOp::Eq => "==",
        }
    }
}

/// A compiled `script` condition: the rhai AST, compiled once at load.
#[derive(Debug)]
struct ScriptCond {
    ast: rhai::AST,
    /// Set once the first failure has been logged (later ones go to debug level).
    reported: AtomicBool,
}

/// A compiled action.
#[derive(Debug)]
pub enum Action {
    Log {
        level: Level,
        message: TemplateId,
    },
    Webhook {
        url: String,
        headers: Vec<(String, TemplateId)>,
        body: BodyTemplate,
    },
}

/// How a webhook body is made.
#[derive(Debug)]
pub enum BodyTemplate {
    /// The standard envelope (README, "The webhook").
    Envelope,
    /// A JSON template string.
    Json(TemplateId),
    /// A structure whose string leaves are text templates.
    Structured(StructuredBody),
}

/// A YAML structure with templated string leaves.
#[derive(Debug)]
pub enum StructuredBody {
    Leaf(TemplateId),
    Value(Value),
    Array(Vec<StructuredBody>),
    Object(Vec<(String, StructuredBody)>),
}

/// A compiled `digest`: the rule's firings are collected and its actions run once per
/// window (and chat, with `group_by: [chat]`), on the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub every: Duration,
    /// `group_by: [chat]`: one digest per chat; otherwise one for all chats.
    pub by_chat: bool,
    /// How many firings a digest lists at most (the rest are counted).
    pub max_items: usize,
}

/// How many firings a digest lists unless `max_items` says.
pub const DIGEST_ITEMS: usize = 20;
pub use crate::model::DIGEST_ITEMS_MAX;

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub id: String,
    pub description: Option<String>,
    pub source: PathBuf,
    pub cooldown: Option<Duration>,
    pub max_age: Option<Duration>,
    /// Fire only when the rule matched `count` times within the window in one chat.
    pub threshold: Option<(u32, Duration)>,
    /// Collect firings into digests instead of acting on each.
    pub digest: Option<Digest>,
    pub actions: Vec<Action>,
    cond: Cond,
    /// Notification types this rule names (and so may see).
    sees: Vec<String>,
    /// Every regex capture group the rule's templates may use; absent ones render as "".
    pub capture_names: Vec<String>,
}

/// What made a rule match: the keywords (as written) and regex captures.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Matched {
    pub keywords: Vec<String>,
    pub captures: BTreeMap<String, String>,
    /// The number a `body.number` condition compared (`matched.number`).
    pub number: Option<f64>,
}

impl Matched {
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("keywords".into(), json!(self.keywords));
        if !self.captures.is_empty() {
            m.insert("captures".into(), json!(self.captures));
        }
        if let Some(n) = self.number {
            // A whole number reads as one (`1500`, not `1500.0`).
            let whole = n.fract() == 0.0 && n.abs() < 9.0e15;
            m.insert(
                "number".into(),
                if whole { json!(n as i64) } else { json!(n) },
            );
        }
        Value::Object(m)
    }
}

/// The result of evaluating one rule on one message.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Fired(Matched),
    /// The first condition that failed, for `test --explain`.
    Failed(String),
}

/// Everything needed to evaluate messages: rules, one keyword automaton, templates.
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// `on: chat` rules, evaluated on every poll of a chat.
    pub chat_rules: Vec<chat::ChatRule>,
    /// `.rhai` rule files, and the sandbox they run in.
    pub script_rules: Vec<rhai_file::ScriptRule>,
    pub host: rhai_file::Host,
    matcher: Matcher,
    pub templates: Templates,
    sandbox: Sandbox,
    /// Keyword id → the index of the rule it gates (`u32::MAX`: it gates none). A rule is
    /// gated when its top-level `body` needs a keyword (`any` or `all` not empty): it can only
    /// fire on a message where one of its gate keywords was found.
    gate_of: Vec<u32>,
    /// Bitset of the rules that are not gated (evaluated on every message).
    ungated: Vec<u64>,
    /// The set's name (a hash of what its rules say, see `cartat-rules check`): set by [`load`], empty for a set compiled from
    /// parsed files.
    pub fingerprint: String,
    /// Rules written with `enabled: false` (valid, never evaluated), by id.
    pub disabled: Vec<String>,
    /// The rules as written (what the fingerprint names), for `GET /api/rules` and `plan`.
    pub(crate) docs: Vec<docs::RuleDoc>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .finish()
    }
}

impl RuleSet {
    /// Renders a structured body against a context.
    pub fn render_structured(&self, s: &StructuredBody, ctx: &Value) -> Result<Value, String> {
        Ok(match s {
            StructuredBody::Leaf(t) => Value::String(self.templates.render(t, ctx)?),
            StructuredBody::Value(v) => v.clone(),
            StructuredBody::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.render_structured(i, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            StructuredBody::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.render_structured(v, ctx)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }
}

#[cfg(test)]
mod tests;
