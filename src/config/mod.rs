//! `cartat.yaml`: serde-only raw types ([`raw`]) compiled into a validated [`Config`].
//!
//! Owns: reading the file, `${VAR}` interpolation, every config error as `path:line:col`.
//! Must not: touch the network or the state file.

pub mod raw;

use crate::diag::{Diagnostic, Diagnostics};
use crate::duration::HumanDuration;
use crate::gateway::model::{ChatId, DEFAULT_ACCOUNT, valid_account_name};
use crate::outbox::sign::SigningKey;
use crate::outbox::ssrf::{Cidr, NetPolicy};
use schemars::JsonSchema;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What to do with the messages a chat already has when it is first seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FirstSight {
    /// Mark them seen without firing (the default).
    #[default]
    SkipHistory,
    /// Evaluate them as new messages.
    ReplayHistory,
}

/// How the poller orders polls within the rate budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    /// Every chat at least once per its interval; spare budget goes to chats with recent
    /// inbound traffic (the default).
    #[default]
    Adaptive,
    /// Every chat exactly on its interval, nothing sooner.
    RoundRobin,
}

/// The default address of the health and metrics server.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// `poll.coalesce` when the config does not say: four bunches a second at a 1 s interval.
pub const DEFAULT_COALESCE: Duration = Duration::from_millis(250);

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The API side: where Cartat is and how hard we may call it.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub base_url: String,
    pub token: SecretString,
    pub timeout: Duration,
    pub rate_per_second: u32,
    pub burst: u32,
    pub message_limit: u32,
    /// The largest `limit` the gap recovery may ask for.
    pub max_message_limit: u32,
    /// The largest reply read for one page (`None`: 4 MiB + 16 KiB per message asked).
    pub max_reply_bytes: Option<u64>,
    /// The proxy for the gateway's requests, if one is configured (never from the environment).
    pub proxy: Option<String>,
}

/// One gateway account: its name and its gateway.
#[derive(Clone, Debug)]
pub struct Account {
    /// [`DEFAULT_ACCOUNT`] for the config's single `api:`.
    pub name: String,
    pub api: ApiConfig,
}

/// One watched chat.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchedChat {
    /// Its key carries its account (see [`ChatId::as_str`]).
    pub id: ChatId,
    pub interval: Duration,
    /// Its account's index in [`Config::accounts`].
    pub account: usize,
}

/// The webhook side.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub secret: Option<SigningKey>,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub net_policy: NetPolicy,
    /// Multiplies every retry delay; 1.0 in production, small in tests.
    pub retry_scale: f64,
}

/// The whole validated config.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    /// The gateway accounts, at least one (the single `api:` is [`DEFAULT_ACCOUNT`]).
    pub accounts: Vec<Account>,
    /// Every account's watched chats.
    pub chats: Vec<WatchedChat>,
    pub poll_interval: Duration,
    pub on_first_sight: FirstSight,
    pub scheduler: SchedulerKind,
    /// `poll.coalesce`: periodic polls due within this window share one wake-up.
    pub coalesce: Duration,
    pub state_path: PathBuf,
    /// `state.url`: a PostgreSQL database instead of the SQLite file.
    pub state_url: Option<SecretString>,
    /// `cluster.lease_ttl`: this instance shares the database's chats with others (None: it
    /// is the only daemon on its state).
    pub cluster: Option<Duration>,
    pub rule_paths: Vec<PathBuf>,
    pub watch_rules: bool,
    /// A reload may leave no rule at all (`rules.allow_empty`).
    pub allow_empty_rules: bool,
    /// `rules.timezone`: the time zone of `when:` conditions that name none (None: UTC).
    pub rules_timezone: Option<jiff::tz::TimeZone>,
    pub webhooks: WebhookConfig,
    pub log_format: LogFormat,
    pub mask_phone_numbers: bool,
    /// `GET /healthz` and `GET /metrics`; None: `server.listen: off`.
    pub listen: Option<std::net::SocketAddr>,
    /// The admin API's bearer token (`server.admin_token`); None: the admin API is off.
    pub admin_token: Option<SecretString>,
    /// `server.show_phone_numbers`: whole numbers on the status page.
    pub show_phone_numbers: bool,
    /// `history`: None when off.
    pub history: Option<HistoryConfig>,
}

/// How much run history to keep (`history.keep`, `history.max_age`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    pub keep: usize,
    pub max_age: Duration,
}

/// How strictly to treat `${VAR}` that is not set: `run` needs it, `check` only warns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvMode {
    Required,
    Optional,
}

/// Reads and compiles a config file. Errors (and, in `Optional` mode, warnings) carry
/// `path:line:col`.
pub fn load(path: &Path, env: EnvMode) -> Result<(Config, Diagnostics), Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic::error(
            path,
            0,
            0,
            format!("cannot read the config: {e} (give its path with -c PATH)"),
        )])
    })?;
    from_str(path, &text, env, &|k| std::env::var(k).ok())
}

/// Compiles config text; `lookup` reads environment variables (injected for tests).
pub fn from_str(
    path: &Path,
    text: &str,
    env: EnvMode,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, Diagnostics), Diagnostics> {
    let raw: raw::RawConfig = serde_saphyr::from_str(text)
        .map_err(|e| Diagnostics(vec![Diagnostic::from_yaml(path, &e)]))?;
    compile(path, raw, env, lookup)
}

fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Resolves `${VAR}` in a config string. Plain strings pass through.
fn interpolate(
    path: &Path,
    value: &Spanned<String>,
    env: EnvMode,
    lookup: &dyn Fn(&str) -> Option<String>,
    diags: &mut Diagnostics,
) -> Option<String> {
    let s = value.value.as_str();
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            diags.push(Diagnostic::at(
                path,
                value.referenced,
                "`${` without a closing `}`",
            ));
            return None;
        };
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            diags.push(Diagnostic::at(
                path,
                value.referenced,
                format!("`${{{name}}}` is not a valid variable name"),
            ));
            return None;
        }
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None => {
                let msg = format!("environment variable `{name}` is not set");
                match env {
                    EnvMode::Required => {
                        diags.push(Diagnostic::at(path, value.referenced, msg));
                        return None;
                    }
                    EnvMode::Optional => {
                        // check runs where the secrets are not (CI): a warning, but one that says
                        // the daemon would not start like this.
                        let loc = value.referenced;
                        let msg = format!("{msg}: `run` refuses to start without it");
                        diags.push(Diagnostic::warning(path, loc.line(), loc.column(), msg));
                    }
                }
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Whether `text` names a `${VAR}` that is not set.
fn references_unset(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> bool {
    text.split("${")
        .skip(1)
        .filter_map(|rest| rest.split_once('}'))
        .any(|(name, _)| lookup(name).is_none())
}

/// One account's `api:` section compiled (errors go to `d`; the values then are defaults).
fn account_api(
    path: &Path,
    api: &raw::RawApi,
    env: EnvMode,
    lookup: &dyn Fn(&str) -> Option<String>,
    d: &mut Diagnostics,
) -> ApiConfig {
    let base_url = interpolate(path, &api.base_url, env, lookup, d).unwrap_or_default();
    if !(base_url.is_empty() || base_url.starts_with("http://") || base_url.starts_with("https://"))
    {
        d.push(Diagnostic::at(
            path,
            api.base_url.referenced,
            format!("`{base_url}`: base_url must start with http:// or https://"),
        ));
    }
    let token = api
        .token
        .as_ref()
        .and_then(|t| interpolate(path, t, env, lookup, d))
        .unwrap_or_default();
    let proxy = api
        .proxy
        .as_ref()
        .and_then(|p| interpolate(path, p, env, lookup, d))
        .filter(|p| !p.is_empty());
    if let (Some(p), Some(spec)) = (&proxy, &api.proxy)
        && reqwest::Proxy::all(p.as_str()).is_err()
    {
        d.push(Diagnostic::at(
            path,
            spec.referenced,
            "api.proxy: not a proxy url (write http://host:port)",
        ));
    }
    if api.max_reply_bytes.is_some_and(|b| b < 1024) {
        d.push(Diagnostic::at(
            path,
            api.base_url.referenced,
            "api.max_reply_bytes must be at least 1024",
        ));
    }
    let default_rate = raw::RawRate::default();
    let rate = api.rate_limit.as_ref().unwrap_or(&default_rate);
    if rate.per_second.value == 0 {
        d.push(Diagnostic::at(
            path,
            rate.per_second.referenced,
            "per_second must be at least 1",
        ));
    }
    let limit = api.message_limit.as_ref().map_or(50, |l| l.value);
    if let Some(l) = &api.message_limit
        && !(1..=10_000).contains(&l.value)
    {
        d.push(Diagnostic::at(
            path,
            l.referenced,
            "message_limit must be between 1 and 10000",
        ));
    }
    ApiConfig {
        base_url: base_url.trim_end_matches('/').to_string(),
        token: SecretString::from(token),
        timeout: api.timeout.map(|t| t.0).unwrap_or(Duration::from_secs(10)),
        rate_per_second: rate.per_second.value,
        burst: rate.burst.unwrap_or(rate.per_second.value).max(1),
        message_limit: limit,
        max_message_limit: api
            .max_message_limit
            .unwrap_or(limit.saturating_mul(32).max(1000)),
        max_reply_bytes: api.max_reply_bytes,
        proxy,
    }
}

/// One account's `chats:` compiled into `out` (a chat listed twice, in any account of the
/// same name, is an error).
#[allow(clippy::too_many_arguments)]
fn watched(
    path: &Path,
    entries: &[Spanned<raw::RawChat>],
    account: usize,
    account_name: &str,
    poll_interval: Duration,
    seen: &mut std::collections::HashSet<ChatId>,
    out: &mut Vec<WatchedChat>,
    d: &mut Diagnostics,
) {
    for entry in entries {
        let (id_text, interval) = match &entry.value {
            raw::RawChat::Id(id) => (id.as_str(), None),
            raw::RawChat::Full { id, interval } => {
                (id.as_str(), interval.map(|i: HumanDuration| i.0))
            }
        };
        match ChatId::parse(id_text) {
            Ok(_) if id_text.contains('/') => d.push(Diagnostic::at(
                path,
                entry.referenced,
                format!("`{id_text}`: a watched chat takes its account from where it is listed; write the id alone"),
            )),
            Ok(id) => {
                let id = id.in_account(account_name);
                if !seen.insert(id.clone()) {
                    d.push(Diagnostic::at(
                        path,
                        entry.referenced,
                        format!("chat `{id}` is listed twice"),
                    ));
                }
                out.push(WatchedChat {
                    id,
                    interval: interval.unwrap_or(poll_interval),
                    account,
                });
            }
            Err(e) => d.push(Diagnostic::at(path, entry.referenced, e.0)),
        }
    }
}

fn compile(
    path: &Path,
    raw: raw::RawConfig,
    env: EnvMode,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(Config, Diagnostics), Diagnostics> {
    let mut d = Diagnostics::default();
    let dir = base_dir(path);

    let poll = raw.poll.unwrap_or_default();
    let poll_interval = poll
        .interval
        .map(|i| i.0)
        .unwrap_or(Duration::from_secs(10));
    let mut accounts = Vec::new();
    let mut chats = Vec::new();
    let mut seen_ids = std::collections::HashSet::new();
    match (raw.api, raw.accounts) {
        (Some(api), None) => {
            accounts.push(Account {
                name: DEFAULT_ACCOUNT.into(),
                api: account_api(path, &api.value, env, lookup, &mut d),
            });
            watched(path, &raw.chats, 0, DEFAULT_ACCOUNT, poll_interval, &mut seen_ids, &mut chats, &mut d);
        }
        (None, Some(list)) => {
            if let Some(first) = raw.chats.first() {
                d.push(Diagnostic::at(
                    path,
                    first.referenced,
                    "with `accounts:`, each account lists its own `chats:`; move these under their account",
                ));
            }
            if list.value.is_empty() {
                d.push(Diagnostic::at(path, list.referenced, "accounts: the list is empty"));
            }
            let mut names = std::collections::HashSet::new();
            for account in &list.value {
                let name = account.name.value.as_str();
                if !valid_account_name(name) {
                    d.push(Diagnostic::at(
                        path,
                        account.name.referenced,
                        format!("`{name}` is not an account name: a lowercase letter, then letters, digits, `_` or `-` (at most 32)"),
                    ));
                } else if !names.insert(name) {
                    d.push(Diagnostic::at(
                        path,
                        account.name.referenced,
                        format!("account `{name}` is listed twice"),
                    ));
                }
                let index = accounts.len();
                accounts.push(Account {
                    name: name.to_string(),
                    api: account_api(path, &account.api, env, lookup, &mut d),
                });
                watched(path, &account.chats, index, name, poll_interval, &mut seen_ids, &mut chats, &mut d);
            }
        }
        (Some(api), Some(_)) => d.push(Diagnostic::at(
            path,
            api.referenced,
            "give `api:` and `chats:` (one account) or `accounts:` (several), not both",
        )),
        (None, None) => d.push(Diagnostic::error(
            path,
            1,
            1,
            "no gateway: write `api:` with its `base_url` (or `accounts:`, each with its own `api:` and `chats:`)",
        )),
    }

    let state = raw.state.unwrap_or_default();
    let state_url = match &state.url {
        None => None,
        Some(spec) => {
            let url = interpolate(path, spec, env, lookup, &mut d).unwrap_or_default();
            if state.path.is_some() {
                d.push(Diagnostic::at(
                    path,
                    spec.referenced,
                    "state: give `path` (an SQLite file) or `url` (a PostgreSQL database), not both",
                ));
            }
            let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
            if !(postgres || references_unset(&spec.value, lookup)) {
                d.push(Diagnostic::at(
                    path,
                    spec.referenced,
                    format!(
                        "state.url: `{}` is not a PostgreSQL url (write postgres://user@host:5432/db)",
                        crate::store::postgres::redacted(&url)
                    ),
                ));
            }
            Some(SecretString::from(url))
        }
    };
    let cluster = match &raw.cluster {
        None => None,
        Some(spec) => {
            let ttl = spec
                .value
                .lease_ttl
                .map(|t| t.0)
                .unwrap_or(Duration::from_secs(15));
            if state_url.is_none() {
                d.push(Diagnostic::at(
                    path,
                    spec.referenced,
                    "cluster: instances share their chats through a PostgreSQL database; set state.url",
                ));
            }
            if ttl < Duration::from_secs(1) {
                d.push(Diagnostic::at(
                    path,
                    spec.referenced,
                    "cluster.lease_ttl: at least 1s (leases are renewed every third of it)",
                ));
            }
            Some(ttl)
        }
    };
    let state_path = dir.join(
        state
            .path
            .unwrap_or_else(|| "./state/cartat-rules.db".into()),
    );
    let rules = raw.rules.unwrap_or_default();
    let rules_timezone = rules.timezone.as_ref().and_then(|tz| {
        match jiff::tz::TimeZone::get(&tz.value) {
            Ok(zone) => Some(zone),
            Err(_) => {
                d.push(Diagnostic::at(
                    path,
                    tz.referenced,
                    format!(
                        "rules.timezone: `{}` is not a time zone; write an IANA name such as Asia/Riyadh or Asia/Dubai",
                        tz.value
                    ),
                ));
                None
            }
        }
    });
    let rule_paths = rules
        .paths
        .unwrap_or_else(|| vec!["./rules".into()])
        .into_iter()
        .map(|p| dir.join(p))
        .collect();

    let wh = raw.webhooks.unwrap_or_default();
    let secret = match wh
        .secret
        .as_ref()
        .and_then(|s| interpolate(path, s, env, lookup, &mut d))
    {
        // An operator who wrote a secret means to sign: an empty one (`${VAR}` set to "") is an
        // error, not unsigned webhooks. (A variable `check` cannot see was warned about above.)
        Some(s) if s.is_empty() => {
            let spec = wh.secret.as_ref().expect("interpolated from it");
            let unseen = env == EnvMode::Optional && references_unset(&spec.value, lookup);
            if !unseen {
                d.push(Diagnostic::at(
                    path,
                    spec.referenced,
                    format!(
                        "webhooks.secret is empty{}: webhooks would go out unsigned. Set the secret                          (`whsec_` + base64, at least 24 bytes), or remove `webhooks.secret` to send                          unsigned webhooks on purpose",
                        if spec.value.contains("${") {
                            format!(" (`{}` is set to \"\")", spec.value)
                        } else {
                            String::new()
                        }
                    ),
                ));
            }
            None
        }
        Some(s) => match SigningKey::parse(&s) {
            Ok(k) => Some(k),
            Err(e) => {
                let loc = wh
                    .secret
                    .as_ref()
                    .map(|s| s.referenced)
                    .unwrap_or(serde_saphyr::Location::UNKNOWN);
                d.push(Diagnostic::at(path, loc, format!("webhooks.secret: {e}")));
                None
            }
        },
        _ => None,
    };
    let net_policy = match wh.allow_private_networks {
        None => NetPolicy::PublicOnly,
        Some(Spanned {
            value: raw::AllowPrivate::All(true),
            ..
        }) => NetPolicy::AllowAll,
        Some(Spanned {
            value: raw::AllowPrivate::All(false),
            ..
        }) => NetPolicy::PublicOnly,
        Some(Spanned {
            value: raw::AllowPrivate::List(list),
            referenced,
            ..
        }) => {
            let mut cidrs = Vec::new();
            for c in list {
                match c.parse::<Cidr>() {
                    Ok(c) => cidrs.push(c),
                    Err(e) => d.push(Diagnostic::at(
                        path,
                        referenced,
                        format!("allow_private_networks: `{c}`: {e}"),
                    )),
                }
            }
            NetPolicy::Allow(cidrs)
        }
    };
    let max_attempts = wh.max_attempts.unwrap_or(12);
    if max_attempts == 0 {
        d.push(Diagnostic::error(
            path,
            0,
            0,
            "webhooks.max_attempts must be at least 1",
        ));
    }
    let retry_scale = wh.retry_scale.unwrap_or(1.0);
    if !(retry_scale > 0.0 && retry_scale <= 1.0) {
        d.push(Diagnostic::error(
            path,
            0,
            0,
            "webhooks.retry_scale must be in (0, 1]",
        ));
    }

    let log = raw.log.unwrap_or_default();
    let server = raw.server.unwrap_or_default();
    let listen = match server.listen {
        None => DEFAULT_LISTEN.parse().ok(),
        Some(s) if s.value.is_empty() || s.value == "off" => None,
        Some(s) => match s.value.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                d.push(Diagnostic::at(
                    path,
                    s.referenced,
                    format!("`{}` is not an address like 127.0.0.1:9464", s.value),
                ));
                None
            }
        },
    };

    let admin_token = match &server.admin_token {
        None => None,
        Some(spec) => match interpolate(path, spec, env, lookup, &mut d) {
            Some(t) if t.trim().is_empty() && !references_unset(&spec.value, lookup) => {
                d.push(Diagnostic::at(
                    path,
                    spec.referenced,
                    "server.admin_token is empty: set it (the admin API then asks for it), or remove the key to leave the admin API off",
                ));
                None
            }
            Some(t) if !t.is_empty() => Some(SecretString::from(t)),
            _ => None,
        },
    };

    if d.has_errors() {
        return Err(d);
    }
    let config = Config {
        path: path.to_path_buf(),
        accounts,
        chats,
        poll_interval,
        on_first_sight: poll.on_first_sight.unwrap_or_default(),
        scheduler: poll.scheduler.unwrap_or_default(),
        coalesce: poll.coalesce.map(|d| d.0).unwrap_or(DEFAULT_COALESCE),
        state_path,
        state_url,
        cluster,
        rule_paths,
        watch_rules: rules.watch.unwrap_or(true),
        allow_empty_rules: rules.allow_empty.unwrap_or(false),
        rules_timezone,
        webhooks: WebhookConfig {
            secret,
            timeout: wh.timeout.map(|t| t.0).unwrap_or(Duration::from_secs(10)),
            max_attempts,
            net_policy,
            retry_scale,
        },
        log_format: log.format.unwrap_or_default(),
        mask_phone_numbers: log.mask_phone_numbers.unwrap_or(true),
        listen,
        admin_token,
        show_phone_numbers: server.show_phone_numbers.unwrap_or(false),
        history: {
            let h = raw.history.as_ref();
            (h.and_then(|h| h.enabled) != Some(false)).then(|| HistoryConfig {
                keep: h.and_then(|h| h.keep).unwrap_or(100_000),
                max_age: h
                    .and_then(|h| h.max_age)
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(7 * 86_400)),
            })
        },
    };
    Ok((config, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "CARTAT_TOKEN" => Some("tok-123".into()),
            "WEBHOOK_SECRET" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            _ => None,
        }
    }

    const SPEC_EXAMPLE: &str = r#"
api:
  base_url: https://api.cartat.net
  token: ${CARTAT_TOKEN}
  timeout: 10s
  rate_limit: { per_second: 5, burst: 5 }
  message_limit: 50
chats:
  - "966500000000"
  - { id: "120363012345678901@g.us", interval: 30s }
poll:
  interval: 10s
  on_first_sight: skip_history
state:
  path: ./state/cartat-rules.db
rules:
  paths: [./rules]
  watch: true
webhooks:
  secret: ${WEBHOOK_SECRET}
  timeout: 10s
  max_attempts: 12
  allow_private_networks: false
log:
  format: text
  mask_phone_numbers: true
server:
  listen: 127.0.0.1:9464
"#;

    #[test]
    fn state_url_selects_postgres_with_its_password_from_the_environment() {
        let with = |state: &str| {
            SPEC_EXAMPLE.replace(
                "state:\n  path: ./state/cartat-rules.db\n",
                &format!("state:\n{state}\n"),
            )
        };
        let env = |k: &str| match k {
            "PGPASS" => Some("s3cret".to_string()),
            other => env(other),
        };
        let (c, _) = from_str(
            Path::new("c.yaml"),
            &with("  url: \"postgres://app:${PGPASS}@db:5432/cartat\""),
            EnvMode::Required,
            &env,
        )
        .unwrap();
        assert_eq!(
            c.state_url
                .as_ref()
                .map(|u| secrecy::ExposeSecret::expose_secret(u).to_string()),
            Some("postgres://app:s3cret@db:5432/cartat".to_string())
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the password never reaches Debug output"
        );
        for (state, want) in [
            (
                "  path: ./s.db\n  url: \"postgres://db/c\"",
                "c.yaml:16:8: state: give `path` (an SQLite file) or `url` (a PostgreSQL database), not both",
            ),
            (
                "  url: \"mysql://app:pw@db/c\"",
                "state.url: `mysql://db/…` is not a PostgreSQL url",
            ),
        ] {
            let e = from_str(Path::new("c.yaml"), &with(state), EnvMode::Required, &env)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{state}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
    }

    #[test]
    fn the_spec_example_compiles() {
        let (c, warnings) = from_str(
            Path::new("conf/cartat.yaml"),
            SPEC_EXAMPLE,
            EnvMode::Required,
            &env,
        )
        .unwrap();
        assert!(warnings.0.is_empty(), "{warnings}");
        assert_eq!(c.accounts[0].api.base_url, "https://api.cartat.net");
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&c.accounts[0].api.token),
            "tok-123"
        );
        assert_eq!(c.chats.len(), 2);
        assert_eq!(c.chats[0].id.as_str(), "966500000000@c.us");
        assert_eq!(c.chats[0].interval, Duration::from_secs(10));
        assert_eq!(c.chats[1].interval, Duration::from_secs(30));
        assert_eq!(c.state_path, Path::new("conf/./state/cartat-rules.db"));
        assert_eq!(c.rule_paths, vec![PathBuf::from("conf/./rules")]);
        assert!(c.webhooks.secret.is_some());
        assert_eq!(c.webhooks.net_policy, NetPolicy::PublicOnly);
        assert_eq!(c.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(
            !format!("{c:?}").contains("tok-123"),
            "the token never reaches Debug output"
        );
    }

    fn errors_of(text: &str) -> Vec<String> {
        match from_str(Path::new("c.yaml"), text, EnvMode::Required, &env) {
            Ok(_) => vec![],
            Err(d) => d.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn errors_name_the_line_and_column() {
        let e = errors_of("api:\n  base_url: http://x\n  tokn: a\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("c.yaml:3:3: "), "{e:?}");
        assert!(e[0].contains("tokn"), "{e:?}");

        let e = errors_of("api:\n  base_url: http://x\nchats:\n  - \"+966500000000\"\n");
        assert!(e[0].starts_with("c.yaml:4:5: "), "{e:?}");
        assert!(e[0].contains("did you mean 966500000000?"), "{e:?}");

        let e = errors_of("api:\n  base_url: http://x\n  token: ${NOPE}\n");
        assert!(
            e[0].starts_with("c.yaml:3:10: ") && e[0].contains("`NOPE` is not set"),
            "{e:?}"
        );

        let e = errors_of("api:\n  base_url: http://x\n  timeout: 10 seconds\n");
        assert!(e[0].starts_with("c.yaml:3:"), "{e:?}");
    }

    #[test]
    fn several_accounts_each_with_its_gateway_budget_and_chats() {
        let text = "accounts:\n  - name: sales\n    api: { base_url: http://a.example/, token: \"${CARTAT_TOKEN}\", rate_limit: { per_second: 7 } }\n    chats: [\"966500000000\", { id: \"1203@g.us\", interval: 3s }]\n  - name: support\n    api: { base_url: http://b.example }\n    chats: [\"966500000000\"]\n";
        let (c, _) = from_str(Path::new("c.yaml"), text, EnvMode::Required, &env).unwrap();
        let names: Vec<_> = c.accounts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["sales", "support"]);
        assert_eq!(c.accounts[0].api.base_url, "http://a.example");
        assert_eq!(c.accounts[0].api.rate_per_second, 7);
        assert_eq!(c.accounts[1].api.rate_per_second, 5, "the default budget");
        let chats: Vec<_> = c
            .chats
            .iter()
            .map(|w| (w.id.as_str(), w.account, w.interval.as_secs()))
            .collect();
        // The same number in two accounts is two chats.
        assert_eq!(
            chats,
            [
                ("sales/966500000000@c.us", 0, 10),
                ("sales/1203@g.us", 0, 3),
                ("support/966500000000@c.us", 1, 10),
            ]
        );
        // The single `api:` is the account `default`, its chats keyed as they always were.
        let (c, _) = from_str(Path::new("c.yaml"), SPEC_EXAMPLE, EnvMode::Required, &env).unwrap();
        assert_eq!(c.accounts.len(), 1);
        assert_eq!(c.accounts[0].name, "default");
        assert_eq!(c.chats[0].id.as_str(), "966500000000@c.us");

        let cases = [
            (
                "api:\n  base_url: http://x\naccounts:\n  - { name: a, api: { base_url: http://y } }\n",
                "c.yaml:2:3: ",
                "not both",
            ),
            (
                "accounts:\n  - { name: a, api: { base_url: http://y } }\nchats: [\"966500000000\"]\n",
                "c.yaml:3:",
                "each account lists its own",
            ),
            (
                "accounts:\n  - { name: a, api: { base_url: http://y } }\n  - { name: a, api: { base_url: http://z } }\n",
                "c.yaml:3:13: ",
                "listed twice",
            ),
            (
                "accounts:\n  - { name: Sales, api: { base_url: http://y } }\n",
                "c.yaml:2:13: ",
                "not an account name",
            ),
            (
                "accounts:\n  - { name: a, api: { base_url: http://y }, chats: [\"b/966500000000\"] }\n",
                "c.yaml:2:",
                "takes its account from where it is listed",
            ),
            (
                "accounts:\n  - { name: a, api: { base_url: http://y }, chats: [\"default/966500000000\"] }\n",
                "c.yaml:2:",
                "takes its account from where it is listed",
            ),
            (
                "api: { base_url: http://y }\nchats: [\"a/966500000000\"]\n",
                "c.yaml:2:",
                "takes its account from where it is listed",
            ),
            (
                "accounts:\n  - { name: a, api: { base_url: ftp://y } }\n",
                "c.yaml:2:",
                "base_url must start with",
            ),
            ("accounts: []\n", "c.yaml:1:", "the list is empty"),
            ("poll: { interval: 1s }\n", "c.yaml:1:1: ", "no gateway"),
        ];
        for (text, at, want) in cases {
            let e = errors_of(text);
            assert!(
                e.iter().any(|e| e.starts_with(at) && e.contains(want)),
                "{text}: want {at}…{want} in {e:?}"
            );
        }
    }

    #[test]
    fn missing_env_is_a_warning_for_check() {
        let (_, w) = from_str(
            Path::new("c.yaml"),
            "api:\n  base_url: http://x\n  token: ${NOPE}\n",
            EnvMode::Optional,
            &env,
        )
        .unwrap();
        assert_eq!(w.0.len(), 1);
        assert!(
            w.to_string()
                .contains("warning: environment variable `NOPE` is not set")
        );
    }

    #[test]
    fn scheduler_and_server_defaults_and_switches() {
        let (c, _) = from_str(
            Path::new("c.yaml"),
            "api:\n  base_url: http://x\n",
            EnvMode::Required,
            &env,
        )
        .unwrap();
        assert_eq!(c.scheduler, SchedulerKind::Adaptive);
        assert_eq!(c.coalesce, Duration::from_millis(250));
        assert_eq!(c.listen, Some(DEFAULT_LISTEN.parse().unwrap()));
        let text = "api:\n  base_url: http://x\npoll:\n  scheduler: round_robin\n  coalesce: 0s\nserver:\n  listen: \"off\"\n";
        let (c, _) = from_str(Path::new("c.yaml"), text, EnvMode::Required, &env).unwrap();
        assert_eq!(c.scheduler, SchedulerKind::RoundRobin);
        assert_eq!(c.coalesce, Duration::ZERO);
        assert_eq!(c.listen, None);
        let e = errors_of("api:\n  base_url: http://x\npoll:\n  scheduler: fastest\n");
        assert!(e[0].starts_with("c.yaml:4:"), "{e:?}");
    }

    #[test]
    fn private_network_allow_list() {
        let text =
            "api:\n  base_url: http://x\nwebhooks:\n  allow_private_networks: [127.0.0.1/32]\n";
        let (c, _) = from_str(Path::new("c.yaml"), text, EnvMode::Required, &env).unwrap();
        assert!(matches!(c.webhooks.net_policy, NetPolicy::Allow(ref v) if v.len() == 1));
        let text = "api:\n  base_url: http://x\nwebhooks:\n  allow_private_networks: true\n";
        let (c, _) = from_str(Path::new("c.yaml"), text, EnvMode::Required, &env).unwrap();
        assert_eq!(c.webhooks.net_policy, NetPolicy::AllowAll);
    }
}
