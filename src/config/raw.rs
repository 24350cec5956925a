//! The config file exactly as written: serde types only, unknown keys refused.
//! Every field's doc comment is its user-facing description.

use crate::duration::HumanDuration;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// `cartat.yaml`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "cartat-rules config (cartat.yaml)")]
pub struct RawConfig {
    /// The Cartat gateway (one account; for several, write `accounts:` instead).
    #[schemars(with = "Option<RawApi>")]
    pub api: Option<Spanned<RawApi>>,
    /// The watched chats: a phone number with country code, or `{id, interval}`.
    #[serde(default)]
    #[schemars(with = "Vec<RawChat>")]
    pub chats: Vec<Spanned<RawChat>>,
    /// Several gateway accounts (WhatsApp numbers), each with its own `api:` and `chats:`,
    /// instead of the top-level `api:` and `chats:` (which are one account, `default`).
    #[schemars(with = "Option<Vec<RawAccount>>")]
    pub accounts: Option<Spanned<Vec<RawAccount>>>,
    /// Polling defaults.
    pub poll: Option<RawPoll>,
    /// Where the state is kept: an SQLite file, or a PostgreSQL database.
    pub state: Option<RawState>,
    /// Several instances sharing one PostgreSQL database (needs `state.url`).
    #[schemars(with = "Option<RawCluster>")]
    pub cluster: Option<Spanned<RawCluster>>,
    /// Where the rule files are.
    pub rules: Option<RawRules>,
    /// Webhook delivery.
    pub webhooks: Option<RawWebhooks>,
    /// Logging.
    pub log: Option<RawLog>,
    /// The health and metrics server.
    pub server: Option<RawServer>,
    /// The run history: what the rules made of each new message, for the status page.
    pub history: Option<RawHistory>,
}

/// The run history (`GET /api/history`, the status page): one entry per new message and per
/// poll whose chat rules moved, written in the poll's own transaction.
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHistory {
    /// Keep it (default true).
    pub enabled: Option<bool>,
    /// Entries kept at most, newest first (default 100000).
    pub keep: Option<usize>,
    /// Entries older than this are deleted (default 7d).
    pub max_age: Option<HumanDuration>,
}

/// One gateway account: its own gateway, token, rate budget and chats.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAccount {
    /// The account's name, in chat keys (`sales/966500000000`), metrics labels and templates
    /// (`chat.account`): a lowercase letter, then letters, digits, `_` or `-`. `default` keys
    /// its chats as the top-level `api:` does (so a state file written then stays valid).
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// The account's gateway, as the top-level `api:`.
    pub api: RawApi,
    /// The account's watched chats, as the top-level `chats:`.
    #[serde(default)]
    #[schemars(with = "Vec<RawChat>")]
    pub chats: Vec<Spanned<RawChat>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// e.g. `https://api.cartat.net`.
    #[schemars(with = "String")]
    pub base_url: Spanned<String>,
    /// Bearer token; write `${CARTAT_TOKEN}` to read it from the environment. Never logged.
    #[schemars(with = "Option<String>")]
    pub token: Option<Spanned<String>>,
    /// Per request (default 10s).
    pub timeout: Option<HumanDuration>,
    /// Every call to the API, all chats together.
    pub rate_limit: Option<RawRate>,
    /// The first `limit` asked (default 50); grown when a gap is suspected.
    #[schemars(with = "Option<u32>")]
    pub message_limit: Option<Spanned<u32>>,
    /// The largest `limit` gap recovery may ask for (default 32 × message_limit, at least 1000).
    pub max_message_limit: Option<u32>,
    /// The largest reply read for one page, in bytes (default 4 MiB + 16 KiB per message asked).
    pub max_reply_bytes: Option<u64>,
    /// A proxy for the gateway's requests (`http://host:port`). Default: none; the
    /// `HTTP(S)_PROXY` variables are ignored, so the token never goes through a proxy nobody
    /// configured here.
    #[schemars(with = "Option<String>")]
    pub proxy: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// Sustained requests per second (default 5).
    #[schemars(with = "u32")]
    pub per_second: Spanned<u32>,
    /// Requests allowed at once after a quiet spell (default: per_second).
    pub burst: Option<u32>,
}

impl Default for RawRate {
    fn default() -> Self {
        RawRate {
            per_second: Spanned::new(
                5,
                serde_saphyr::Location::UNKNOWN,
                serde_saphyr::Location::UNKNOWN,
            ),
            burst: None,
        }
    }
}

/// A watched chat: `"966500000000"` or `{ id: "…@g.us", interval: 30s }`.
#[derive(Debug)]
pub enum RawChat {
    Id(String),
    Full {
        id: String,
        interval: Option<HumanDuration>,
    },
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawChatFull {
    /// The chat: a phone number with country code, or a group id (`…@g.us`).
    id: String,
    /// How often this chat is polled (default: `poll.interval`).
    interval: Option<HumanDuration>,
}

impl JsonSchema for RawChat {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Chat".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let full = generator.subschema_for::<RawChatFull>();
        schemars::json_schema!({
            "description": "A watched chat: a phone number with country code (`\"966500000000\"`), or `{ id, interval }`.",
            "anyOf": [{ "type": "string" }, { "type": "integer", "minimum": 0 }, full]
        })
    }
}

/// The JSON Schema (draft 7) of `cartat.yaml`.
pub fn config_schema() -> serde_json::Value {
    let mut schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<RawConfig>()
        .to_value();
    // One gateway account (`api:` and `chats:`) or several (`accounts:`), never both or none.
    if let Some(root) = schema.as_object_mut() {
        root.insert(
            "oneOf".into(),
            serde_json::json!([
                { "required": ["api"], "not": { "required": ["accounts"] } },
                { "required": ["accounts"], "not": { "required": ["api"] } }
            ]),
        );
    }
    schema
}

impl<'de> Deserialize<'de> for RawChat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawChat;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a chat id string or a map with `id` and `interval`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawChat, E> {
                Ok(RawChat::Id(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawChat, E> {
                Ok(RawChat::Id(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawChat, E> {
                Ok(RawChat::Id(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawChat, A::Error> {
                let f =
                    RawChatFull::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawChat::Full {
                    id: f.id,
                    interval: f.interval,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPoll {
    /// Default per chat (10s).
    pub interval: Option<HumanDuration>,
    /// `skip_history` (default) or `replay_history`.
    pub on_first_sight: Option<super::FirstSight>,
    /// `adaptive` (default: chats with recent inbound traffic are polled sooner, within the
    /// rate limit; every chat still at least once per its interval) or `round_robin` (every
    /// chat exactly on its interval).
    pub scheduler: Option<super::SchedulerKind>,
    /// Chats whose periodic polls fall within this window are polled together, so one
    /// wake-up serves them all (default 250ms; `0s` spreads every chat's polls evenly).
    pub coalesce: Option<HumanDuration>,
}

/// Several instances on one PostgreSQL database (`state.url`), sharing the chats through
/// leases: each chat is polled by one live instance at a time, and taken over when it dies.
#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// How long an instance's lease on a chat lasts without renewal (renewed every third of
    /// it): how soon the chats of an instance that died are polled again (default 15s).
    pub lease_ttl: Option<HumanDuration>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// SQLite file, created if missing; relative to the config file.
    pub path: Option<String>,
    /// A PostgreSQL database instead of the file: `postgres://user:${PGPASSWORD}@host:5432/db`
    /// (`${VAR}` read from the environment; the password is never logged).
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRules {
    /// Files or folders of `*.yaml`, `*.yml`, `*.rhai`; relative to the config file.
    pub paths: Option<Vec<String>>,
    /// Reload on change.
    pub watch: Option<bool>,
    /// Accept a reload that leaves no rule at all (default false: a deploy that wiped the
    /// folder keeps the last set in force, loudly).
    pub allow_empty: Option<bool>,
    /// The time zone of `when:` conditions that name none (IANA: `Asia/Riyadh`); default UTC.
    #[schemars(with = "Option<String>")]
    pub timezone: Option<Spanned<String>>,
}

/// `false`, `true`, or a list of CIDRs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AllowPrivate {
    All(bool),
    List(Vec<String>),
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWebhooks {
    /// Signs every delivery (Standard Webhooks); raw or `whsec_<base64>`.
    #[schemars(with = "Option<String>")]
    pub secret: Option<Spanned<String>>,
    /// Per attempt (default 10s).
    pub timeout: Option<HumanDuration>,
    /// Then dead-lettered (default 12).
    pub max_attempts: Option<u32>,
    /// Loopback, private, link-local and metadata targets are refused unless allowed here.
    #[schemars(with = "Option<AllowPrivate>")]
    pub allow_private_networks: Option<Spanned<AllowPrivate>>,
    /// Multiplies every retry delay (default 1; tests and demos compress the schedule).
    pub retry_scale: Option<f64>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` (default) or `json`.
    pub format: Option<super::LogFormat>,
    /// 966500000000 → 9665*****000 in logs (default true).
    pub mask_phone_numbers: Option<bool>,
}

#[derive(Debug, Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// `GET /healthz` and `GET /metrics` (default 127.0.0.1:9464); `off` disables.
    #[schemars(with = "Option<String>")]
    pub listen: Option<Spanned<String>>,
    /// The bearer token of the admin API on the same address (`POST /api/reload`, what
    /// `cartat-rules reload` calls); without it the admin API is off. A secret: write
    /// `${CARTAT_ADMIN_TOKEN}`.
    #[schemars(with = "Option<String>")]
    pub admin_token: Option<Spanned<String>>,
    /// Show whole phone numbers on the status page and in `/api/chats` (default false:
    /// 966500000000 → 9665*****000).
    pub show_phone_numbers: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn validator() -> jsonschema::Validator {
        jsonschema::validator_for(&config_schema()).expect("the schema is a valid JSON Schema")
    }

    fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
        v.iter_errors(doc).map(|e| e.to_string()).collect()
    }

    /// Every config the project ships (and the one `init` writes) passes the schema.
    #[test]
    fn every_shipped_config_is_valid_against_the_schema() {
        let v = validator();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut texts: Vec<(String, String)> = ["examples/demo.yaml", "deploy/cartat.yaml"]
            .iter()
            .map(|p| {
                (
                    p.to_string(),
                    std::fs::read_to_string(root.join(p)).unwrap(),
                )
            })
            .collect();
        texts.push(("init".into(), crate::commands::init::CONFIG.to_string()));
        for (name, text) in texts {
            let doc: Value = serde_saphyr::from_str(&text).expect("YAML");
            let e = errors(&v, &doc);
            assert!(e.is_empty(), "{name}: {e:?}");
        }
    }

    #[test]
    fn the_config_schema_refuses_mistakes_and_describes_fields() {
        let v = validator();
        let good = json!({
            "api": { "base_url": "https://api.cartat.net", "token": "${CARTAT_TOKEN}",
                     "rate_limit": { "per_second": 5, "burst": 10 } },
            "chats": ["966500000000", 971500000002u64, { "id": "1203@g.us", "interval": "30s" }],
            "webhooks": { "allow_private_networks": ["10.0.0.0/8"] },
        });
        assert!(v.is_valid(&good), "{:?}", errors(&v, &good));
        let several = json!({
            "accounts": [
                { "name": "sales", "api": { "base_url": "https://a.example", "rate_limit": { "per_second": 5 } },
                  "chats": ["966500000000"] },
                { "name": "support", "api": { "base_url": "https://b.example" }, "chats": [] },
            ],
        });
        assert!(v.is_valid(&several), "{:?}", errors(&v, &several));
        for bad in [
            json!({}),
            json!({ "api": { "base_url": "x", "tokn": "y" } }),
            json!({ "api": { "base_url": "x" }, "poll": { "interval": "10 seconds" } }),
            json!({ "api": { "base_url": "x" }, "chats": [{ "id": "1", "every": "5s" }] }),
            json!({ "api": { "base_url": "x" }, "log": { "format": "xml" } }),
            json!({ "api": { "base_url": "x" }, "stat": { "path": "s.db" } }),
            json!({ "api": { "base_url": "x" }, "accounts": [{ "name": "a", "api": { "base_url": "x" } }] }),
            json!({ "accounts": [{ "name": "a", "base_url": "x" }] }),
        ] {
            assert!(!v.is_valid(&bad), "{bad}");
        }
        let text = config_schema().to_string();
        assert!(text.contains("Reload on change."), "{text}");
        assert!(text.contains("cartat-rules config (cartat.yaml)"), "{text}");
    }
}
