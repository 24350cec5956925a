//! Rule files exactly as written: serde types only, unknown keys refused.
//! Every field's doc comment is its user-facing description, and the JSON Schema of a rule
//! file (`cartat-rules schema`, [`rule_file_schema`]) is generated from these same types.
//! `Spanned<T>` fields (kept for error positions) are described as their `T`.

use crate::duration::HumanDuration;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

/// A rule file: one rule, or a list of rules.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(title = "cartat-rules rule file")]
pub enum RuleFile {
    /// One rule.
    One(Box<RawRule>),
    /// A list of rules.
    Many(Vec<RawRule>),
}

/// The JSON Schema (draft 7, which editors' YAML language servers understand) of a rule file.
pub fn rule_file_schema() -> serde_json::Value {
    let schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<RuleFile>();
    schema.to_value()
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": r"^(0|\d+(ms|s|m|h|d))$",
            "description": "A duration: a whole number and a unit, `500ms`, `10s`, `5m`, `1h` or `2d`.",
            "examples": ["10m"]
        })
    }
}

/// One rule.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique across all rule files; names the rule in webhooks, logs and metrics.
    #[schemars(with = "String")]
    pub id: Spanned<String>,
    /// What the rule is for, for people.
    pub description: Option<String>,
    /// `message` (default): evaluated on each new message; `chat`: on every poll of a chat.
    #[schemars(with = "Option<On>")]
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
    /// Chat rules: when the condition stops holding after the rule fired, send each webhook
    /// action once more as a `rule.resolved` event (its `delivery_id` is the firing's plus
    /// `:resolved`), so an on-call tool can close the alert.
    pub notify_resolved: Option<bool>,
    /// Collect the rule's firings and run its actions once per window and group, with the
    /// list: `{ every: 15m, group_by: [chat] }`.
    #[schemars(with = "Option<RawDigest>")]
    pub digest: Option<Spanned<RawDigest>>,
    /// What to do when the rule fires.
    #[schemars(with = "Vec<RawAction>")]
    pub actions: Spanned<Vec<RawAction>>,
}

/// What a rule is evaluated on.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum On {
    /// Evaluated on each new message.
    #[default]
    Message,
    /// Evaluated on every poll of a chat.
    Chat,
}

/// Conditions; all listed ones must hold.
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// `true`: only our own messages; `false`: only the customer's.
    pub from_me: Option<bool>,
    /// `true`: only group chats; `false`: only private chats.
    pub is_group: Option<bool>,
    /// whatsapp-web.js message types (`chat`, `image`, …); notifications only when named here.
    #[serde(rename = "type")]
    #[schemars(with = "Option<OneOrMany>")]
    pub types: Option<Spanned<OneOrMany>>,
    /// Only these chats (default: every watched chat).
    #[schemars(with = "Option<Vec<String>>")]
    pub chats: Option<Vec<Spanned<String>>>,
    /// Conditions on the message text.
    #[schemars(with = "Option<RawBody>")]
    pub body: Option<Spanned<RawBody>>,
    /// A rhai expression that must return a bool.
    #[schemars(with = "Option<String>")]
    pub script: Option<Spanned<String>>,
    /// At least one of these condition sets holds.
    pub any_of: Option<Vec<RawMatch>>,
    /// Every one of these condition sets holds.
    pub all_of: Option<Vec<RawMatch>>,
    /// This condition set does not hold.
    pub not: Option<Box<RawMatch>>,
    /// Fire only when this rule matched `count` times within `within` in one chat.
    #[schemars(with = "Option<RawThreshold>")]
    pub threshold: Option<Spanned<RawThreshold>>,
    /// Chat rules: compare the chat's unread count.
    #[schemars(with = "Option<RawCompare>")]
    pub unread_count: Option<Spanned<RawCompare>>,
    /// Chat rules: the newest message is inbound and nothing of ours followed it for this long.
    #[schemars(with = "Option<HumanDuration>")]
    pub unanswered_for: Option<Spanned<HumanDuration>>,
    /// Chat rules: the condition must hold continuously this long.
    #[serde(rename = "for")]
    #[schemars(with = "Option<HumanDuration>")]
    pub for_: Option<Spanned<HumanDuration>>,
    /// Only at these times (business hours): the message's time for message rules, the time
    /// of the poll for chat rules. `not: { when: … }` for after hours.
    #[schemars(with = "Option<RawWhen>")]
    pub when: Option<Spanned<RawWhen>>,
}

/// `{ days: [sun, mon, tue, wed, thu], between: "08:00-17:00", tz: Asia/Riyadh }`.
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    /// Days of the week, local: sun, mon, tue, wed, thu, fri, sat (default: every day).
    pub days: Option<Vec<String>>,
    /// Local time of day, `HH:MM-HH:MM`, the end excluded; `22:00-06:00` spans midnight
    /// (default: the whole day).
    pub between: Option<String>,
    /// An IANA time zone (`Asia/Riyadh`, `Asia/Dubai`); default: the config's
    /// `rules.timezone`, else UTC.
    pub tz: Option<String>,
    /// Local dates (`2026-12-02`) on which this never holds: holidays.
    pub holidays: Option<Vec<String>>,
}

/// A string or a list of strings.
#[derive(Debug, Deserialize, Clone, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// A list.
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
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBody {
    /// At least one of these keywords occurs.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub any: Vec<Spanned<String>>,
    /// Every one of these keywords occurs.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub all: Vec<Spanned<String>>,
    /// None of these keywords occurs.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub none: Vec<Spanned<String>>,
    /// Whole words only (default: substring); Arabic proclitics in front are allowed.
    pub words: Option<bool>,
    /// With `words: true`: an Arabic attached pronoun may end the word (`بوتي`, `بوتك`,
    /// `طلبهم`); plurals and other words (`بوتات`, `روبوت`) still do not match.
    #[schemars(with = "Option<bool>")]
    pub suffixes: Option<Spanned<bool>>,
    /// A comparison on the first number in the text (digits in any script: `1500`, `١٥٠٠`,
    /// `۱۵۰۰`, `1,500`), or on a named regex capture: `{ capture: amount, gte: 1000 }`.
    #[schemars(with = "Option<RawNumber>")]
    pub number: Option<Spanned<RawNumber>>,
    /// A Rust regex; sees the normalized text unless `normalize: false`.
    #[schemars(with = "Option<String>")]
    pub regex: Option<Spanned<String>>,
    /// `false` turns case and Arabic folding off for this rule.
    pub normalize: Option<bool>,
}

/// `{ gte: 1000 }` — any of gt, gte, lt, lte, eq — on a number in the text.
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNumber {
    /// Compare this named capture of `regex` instead of the first number in the text.
    pub capture: Option<String>,
    /// Greater than.
    pub gt: Option<f64>,
    /// Greater than or equal.
    pub gte: Option<f64>,
    /// Less than.
    pub lt: Option<f64>,
    /// Less than or equal.
    pub lte: Option<f64>,
    /// Equal.
    pub eq: Option<f64>,
}

/// `{ every: 15m, group_by: [chat], max_items: 20 }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDigest {
    /// The window: firings are collected over each `every` (aligned to the clock: `15m`
    /// windows start at :00, :15, :30 and :45 UTC) and sent once it has passed.
    pub every: HumanDuration,
    /// `[rule]` (default): one digest per window for all chats; `[chat]`: one per chat.
    pub group_by: Option<Vec<GroupBy>>,
    /// How many firings the digest lists (default 20, at most 1000); `count` says how many
    /// there were, `more` how many were left out.
    pub max_items: Option<u32>,
}

/// What a digest is grouped by.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// One digest per window for the rule, all chats together.
    Rule,
    /// One digest per window and chat.
    Chat,
}

/// `{ count: 3, within: 10m }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawThreshold {
    /// How many times the rule must have matched.
    pub count: u32,
    /// Within how long (one chat).
    pub within: HumanDuration,
}

/// `{ gte: 5 }` — any of gt, gte, lt, lte, eq.
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCompare {
    /// Greater than.
    pub gt: Option<i64>,
    /// Greater than or equal.
    pub gte: Option<i64>,
    /// Less than.
    pub lt: Option<i64>,
    /// Less than or equal.
    pub lte: Option<i64>,
    /// Equal.
    pub eq: Option<i64>,
}

/// One action.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawAction {
    /// Writes a log line.
    Log(RawLogAction),
    /// POSTs a signed JSON body.
    Webhook(RawWebhookAction),
}

/// Log levels an action may use.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Debug.
    Debug,
    /// Info (the default).
    #[default]
    Info,
    /// Warning.
    Warn,
    /// Error.
    Error,
}

/// `log: { level, message }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLogAction {
    /// `debug`, `info` (default), `warn` or `error`.
    pub level: Option<Level>,
    /// A template: `{{ rule.id }} in {{ chat.name }}: {{ message.body }}`.
    #[schemars(with = "String")]
    pub message: Spanned<String>,
}

/// `webhook: { url, headers, body }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWebhookAction {
    /// http or https; private addresses need `webhooks.allow_private_networks`.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// Extra headers; values are templates.
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub headers: Option<BTreeMap<String, Spanned<String>>>,
    /// null = the standard envelope; a string = a JSON template; a map = a structure whose strings are templates.
    pub body: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn validator() -> jsonschema::Validator {
        jsonschema::validator_for(&rule_file_schema()).expect("the schema is a valid JSON Schema")
    }

    fn yaml(text: &str) -> Value {
        serde_saphyr::from_str(text).expect("YAML")
    }

    #[test]
    fn every_shipped_rule_file_is_valid_against_the_schema() {
        let v = validator();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if !matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                continue;
            }
            let doc = yaml(&std::fs::read_to_string(&path).unwrap());
            let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            n += 1;
        }
        assert!(n >= 3, "found {n} rule files");
    }

    #[test]
    fn the_schema_accepts_the_spec_example_and_refuses_mistakes() {
        let v = validator();
        let spec = yaml(
            r#"
id: bot-keyword
description: a customer wrote "bot"
on: message
match:
  from_me: false
  is_group: false
  type: [chat, image]
  chats: ["966500000000"]
  body:
    any: ["بوت", "bot"]
    all: []
    none: ["stop"]
    words: true
    regex: '(?i)\border\s+#?\d+'
  script: 'msg.body.len() < 500'
  any_of: [ { is_group: true }, { not: { from_me: true } } ]
  threshold: { count: 3, within: 10m }
cooldown: 10m
max_age: 1h
actions:
  - log: { level: info, message: "{{ rule.id }}" }
  - webhook:
      url: https://hooks.example.com/whatsapp
      headers: { X-Team: support }
      body: null
"#,
        );
        assert!(
            v.is_valid(&spec),
            "{:?}",
            v.iter_errors(&spec)
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        );
        let list = json!([{"id": "a", "actions": [{"log": {"message": "x"}}]}]);
        assert!(v.is_valid(&list));
        // A misspelled key, a bad duration, an unknown action, a missing id.
        for bad in [
            json!({"id": "a", "match": {"bdy": {}}, "actions": []}),
            json!({"id": "a", "match": {"body": {"wrods": true}}, "actions": []}),
            json!({"id": "a", "cooldown": "10 minutes", "actions": []}),
            json!({"id": "a", "actions": [{"email": {"to": "x"}}]}),
            json!({"actions": []}),
            json!([{"id": "a", "actions": [], "colldown": "1m"}]),
        ] {
            assert!(!v.is_valid(&bad), "{bad}");
        }
    }

    #[test]
    fn field_docs_become_descriptions() {
        let s = rule_file_schema().to_string();
        assert!(
            s.contains("After firing for a chat, stay silent for that chat this long."),
            "{s}"
        );
        assert!(s.contains("A rhai expression that must return a bool."));
        assert!(s.contains("draft-07"), "{s}");
    }
}
