//! Rule files exactly as written: serde types only, unknown keys refused.
//! Every field's doc comment is its user-facing description.

use crate::duration::HumanDuration;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

/// One rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique across all rule files; names the rule in webhooks, logs and metrics.
    pub id: Spanned<String>,
    /// What the rule is for, for people.
    pub description: Option<String>,
    /// `message` (default): evaluated on each new message; `chat`: on every poll of a chat.
    pub on: Option<Spanned<On>>,
    /// Every listed condition must hold.
    #[serde(rename = "match")]
    pub match_: Option<RawMatch>,
    /// After firing for a chat, stay silent for that chat this long.
    pub cooldown: Option<HumanDuration>,
    /// A message older than this when first seen is logged as stale, not fired.
    pub max_age: Option<HumanDuration>,
    /// `false` keeps the rule in the file but never evaluates it.
    pub enabled: Option<bool>,
    /// What to do when the rule fires.
    pub actions: Spanned<Vec<RawAction>>,
}

/// What a rule is evaluated on.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum On {
    #[default]
    Message,
    Chat,
}

/// Conditions; all listed ones must hold.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// `true`: only our own messages; `false`: only the customer's.
    pub from_me: Option<bool>,
    /// `true`: only group chats; `false`: only private chats.
    pub is_group: Option<bool>,
    /// whatsapp-web.js message types (`chat`, `image`, …); notifications only when named here.
    #[serde(rename = "type")]
    pub types: Option<Spanned<OneOrMany>>,
    /// Only these chats (default: every watched chat).
    pub chats: Option<Vec<Spanned<String>>>,
    /// Conditions on the message text.
    pub body: Option<RawBody>,
    /// A rhai expression that must return a bool.
    pub script: Option<Spanned<String>>,
    /// At least one of these condition sets holds.
    pub any_of: Option<Vec<RawMatch>>,
    /// Every one of these condition sets holds.
    pub all_of: Option<Vec<RawMatch>>,
    /// This condition set does not hold.
    pub not: Option<Box<RawMatch>>,
    /// Fire only when this rule matched `count` times within `within` in one chat.
    pub threshold: Option<Spanned<RawThreshold>>,
    /// Chat rules: compare the chat's unread count.
    pub unread_count: Option<Spanned<RawCompare>>,
    /// Chat rules: the newest message is inbound and nothing of ours followed it for this long.
    pub unanswered_for: Option<Spanned<HumanDuration>>,
    /// Chat rules: the condition must hold continuously this long.
    #[serde(rename = "for")]
    pub for_: Option<Spanned<HumanDuration>>,
}

/// A string or a list of strings.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Conditions on the message text.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBody {
    /// At least one of these keywords occurs.
    #[serde(default)]
    pub any: Vec<Spanned<String>>,
    /// Every one of these keywords occurs.
    #[serde(default)]
    pub all: Vec<Spanned<String>>,
    /// None of these keywords occurs.
    #[serde(default)]
    pub none: Vec<Spanned<String>>,
    /// Whole words only (default: substring); Arabic proclitics in front are allowed.
    pub words: Option<bool>,
    /// A Rust regex; sees the normalized text unless `normalize: false`.
    pub regex: Option<Spanned<String>>,
    /// `false` turns case and Arabic folding off for this rule.
    pub normalize: Option<bool>,
}

/// `{ count: 3, within: 10m }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThreshold {
    pub count: u32,
    pub within: HumanDuration,
}

/// `{ gte: 5 }` — any of gt, gte, lt, lte, eq.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCompare {
    pub gt: Option<i64>,
    pub gte: Option<i64>,
    pub lt: Option<i64>,
    pub lte: Option<i64>,
    pub eq: Option<i64>,
}

/// One action.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawAction {
    /// Writes a log line.
    Log(RawLogAction),
    /// POSTs a signed JSON body.
    Webhook(RawWebhookAction),
}

/// Log levels an action may use.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogAction {
    /// `debug`, `info` (default), `warn` or `error`.
    pub level: Option<Level>,
    /// A template: `{{ rule.id }} in {{ chat.name }}: {{ message.body }}`.
    pub message: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhookAction {
    /// http or https; private addresses need `webhooks.allow_private_networks`.
    pub url: Spanned<String>,
    /// Extra headers; values are templates.
    pub headers: Option<BTreeMap<String, Spanned<String>>>,
    /// null = the standard envelope; a string = a JSON template; a map = a structure whose strings are templates.
    pub body: Option<serde_json::Value>,
}
