//! Hot reload of the rule set and the config: a change under `rules.paths` or of the config
//! file (checked every second), a SIGHUP or `POST /api/reload` recompiles every rule file and
//! swaps the whole set atomically, and applies what the config can change live (the chats and
//! their intervals, the API rate limit). A bad edit of either keeps the last good state and
//! says every problem as `path:line:col`; a config change that only a restart applies
//! (`api.base_url`, `state.path`, …) is named, not silently ignored.
//!
//! Polling modification times instead of inotify: no dependency, and it works on the
//! network and bind-mounted folders where rule repos are often deployed.

use crate::config::{Config, EnvMode, WatchedChat};
use crate::engine::poller::ChatsUpdate;
use crate::events;
use crate::rules::{self, RuleSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// What the rule files look like on disk: (path, modified, length), sorted.
pub(crate) type Snapshot = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// Takes a snapshot of the rule files (missing folders give an empty list).
pub(crate) fn snapshot(paths: &[PathBuf]) -> Snapshot {
    let files = rules::discover(paths).map(|(f, _)| f).unwrap_or_default();
    files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map(|m| m.len()).unwrap_or(0);
            (p, modified, len)
        })
        .collect()
}

fn rule_count(set: &RuleSet) -> usize {
    set.rules.len() + set.chat_rules.len() + set.script_rules.len()
}

/// What a reload changed in the config.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ConfigChanges {
    pub chats_added: Vec<String>,
    pub chats_removed: Vec<String>,
    /// Chats still watched whose interval changed.
    pub intervals_changed: Vec<String>,
    pub rate_limit_changed: bool,
    /// Settings that changed in the file but apply only at the next start.
    pub restart_needed: Vec<String>,
}

/// How a reload ended.
#[derive(Debug)]
pub(crate) enum Reloaded {
    /// The new set is in force (and what the config could change live, changed).
    InForce {
        fingerprint: String,
        rules: usize,
        warnings: crate::diag::Diagnostics,
        config: ConfigChanges,
    },
    /// The last good set stays in force: why, and the new set's problems (if it had any).
    Refused {
        why: String,
        errors: crate::diag::Diagnostics,
        in_force: String,
    },
}

/// Recompiles and swaps. A set with no rule at all replaces one with rules only when
/// `allow_empty`.
pub(crate) fn reload(
    paths: &[PathBuf],
    target: &RwLock<Arc<RuleSet>>,
    allow_empty: bool,
    policy: &crate::outbox::ssrf::NetPolicy,
    timezone: Option<&jiff::tz::TimeZone>,
) -> Reloaded {
    let in_force = || {
        target
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .fingerprint
            .clone()
    };
    match rules::load_with(paths, policy, timezone) {
        Ok((set, warnings)) => {
            for w in &warnings.0 {
                tracing::warn!(event = "rules.warning", "{w}");
            }
            let before = rule_count(&target.read().unwrap_or_else(|e| e.into_inner()));
            if rule_count(&set) == 0 && before > 0 && !allow_empty {
                tracing::error!(
                    event = "rules.reload_refused",
                    rules_in_force = before,
                    "rules not reloaded: the new rule set is empty (were the rule files deleted?); the last set stays in force — set `rules.allow_empty: true` to allow running without rules"
                );
                return Reloaded::Refused {
                    why: "the new rule set is empty (were the rule files deleted?); set `rules.allow_empty: true` to allow running without rules".into(),
                    errors: crate::diag::Diagnostics::default(),
                    in_force: in_force(),
                };
            }
            let (n, c) = (set.rules.len(), set.chat_rules.len());
            let rules = rule_count(&set);
            let fingerprint = set.fingerprint.clone();
            *target.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
            tracing::info!(
                event = "rules.reloaded",
                message_rules = n,
                chat_rules = c,
                fingerprint = %fingerprint,
                "rules reloaded"
            );
            Reloaded::InForce {
                fingerprint,
                rules,
                warnings,
                config: ConfigChanges::default(),
            }
        }
        Err(d) => {
            for e in &d.0 {
                tracing::error!(event = "rules.error", "{e}");
            }
            tracing::error!(
                event = "rules.reload_refused",
                "rules not reloaded: the last good set stays in force until the errors above are fixed"
            );
            Reloaded::Refused {
                why: "the new rule set has errors".into(),
                errors: d,
                in_force: in_force(),
            }
        }
    }
}

/// The config file as a reload sees it: what was last applied, and where the poller learns
/// of changes.
pub(crate) struct ConfigSource {
    pub path: PathBuf,
    /// The file as written when last applied (formatting and comments gone), and the chats
    /// and each account's rate limit in force.
    pub applied: std::sync::Mutex<(serde_json::Value, ChatsUpdate)>,
    pub updates: tokio::sync::mpsc::UnboundedSender<ChatsUpdate>,
}

/// Settings a reload applies live; every other change waits for a restart.
const LIVE: &[&str] = &["chats", "api.rate_limit", "poll.interval"];

/// The config file read and checked, not applied yet.
struct Staged {
    config: Config,
    written: serde_json::Value,
}

impl ConfigSource {
    /// Starts from the config the daemon runs with.
    pub(crate) fn new(
        config: &Config,
        updates: tokio::sync::mpsc::UnboundedSender<ChatsUpdate>,
    ) -> ConfigSource {
        ConfigSource {
            path: config.path.clone(),
            applied: std::sync::Mutex::new((written(&config.path), ChatsUpdate::of(config))),
            updates,
        }
    }

    /// Reads and checks the file as `run` does (every `${VAR}` must be set).
    /// The file is read once: what is checked and what is compared are the same text.
    fn stage(&self) -> Result<Staged, crate::diag::Diagnostics> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| {
            crate::diag::Diagnostics(vec![crate::diag::Diagnostic::error(
                &self.path,
                0,
                0,
                format!("cannot read the config: {e}"),
            )])
        })?;
        let (config, _) = crate::config::from_str(&self.path, &text, EnvMode::Required, &|k| {
            std::env::var(k).ok()
        })?;
        Ok(Staged {
            written: written_text(&text),
            config,
        })
    }

    /// Whether `staged` says anything else than what was last applied.
    fn would_change(&self, staged: &Staged) -> bool {
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).0 != staged.written
    }

    /// Applies what can change live and names what cannot.
    fn apply(&self, staged: Staged) -> ConfigChanges {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let (old_written, old) = &*applied;
        let old_chats = &old.chats;
        let update = ChatsUpdate::of(&staged.config);
        let new = &staged.config;
        let mut diffs = Vec::new();
        crate::rules::docs::differences(
            "",
            Some(&without_live(old_written)),
            Some(&without_live(&staged.written)),
            &mut diffs,
        );
        let interval_of = |chats: &[WatchedChat], id: &str| {
            chats
                .iter()
                .find(|c| c.id.as_str() == id)
                .map(|c| c.interval)
        };
        let mut changes = ConfigChanges {
            restart_needed: diffs.into_iter().map(|(path, _, _)| path).collect(),
            rate_limit_changed: update.rates != old.rates,
            ..ConfigChanges::default()
        };
        for c in &new.chats {
            match interval_of(old_chats, c.id.as_str()) {
                None => changes.chats_added.push(events::mask(c.id.as_str())),
                Some(i) if i != c.interval => {
                    changes.intervals_changed.push(events::mask(c.id.as_str()))
                }
                Some(_) => {}
            }
        }
        for c in old_chats {
            if interval_of(&new.chats, c.id.as_str()).is_none() {
                changes.chats_removed.push(events::mask(c.id.as_str()));
            }
        }
        let live_change = changes.rate_limit_changed
            || !changes.chats_added.is_empty()
            || !changes.chats_removed.is_empty()
            || !changes.intervals_changed.is_empty();
        if live_change {
            let _ = self.updates.send(update.clone());
        }
        if !changes.restart_needed.is_empty() {
            tracing::warn!(
                event = "config.restart_needed",
                settings = %changes.restart_needed.join(", "),
                "config reload: these settings apply only at the next start"
            );
        }
        *applied = (staged.written, update);
        changes
    }
}

/// The config as written without the settings a reload applies live ([`LIVE`], and the same
/// in each of `accounts:`); a section left empty goes too (`poll:` that held only `interval`
/// is no other change).
fn without_live(v: &serde_json::Value) -> serde_json::Value {
    fn strip(m: &mut serde_json::Map<String, serde_json::Value>, paths: &[&str]) {
        for path in paths {
            match path.split_once('.') {
                Some((head, tail)) => {
                    if let Some(serde_json::Value::Object(inner)) = m.get_mut(head) {
                        inner.remove(tail);
                        if inner.is_empty() {
                            m.remove(head);
                        }
                    }
                }
                None => {
                    m.remove(*path);
                }
            }
        }
    }
    let mut v = v.clone();
    let Some(top) = v.as_object_mut() else {
        return v;
    };
    strip(top, LIVE);
    if let Some(serde_json::Value::Array(accounts)) = top.get_mut("accounts") {
        for account in accounts.iter_mut().filter_map(|a| a.as_object_mut()) {
            strip(account, &["chats", "api.rate_limit"]);
        }
    }
    v
}

/// The config file as written (JSON; `null` when it cannot be read or parsed).
fn written(path: &Path) -> serde_json::Value {
    std::fs::read_to_string(path)
        .map(|t| written_text(&t))
        .unwrap_or(serde_json::Value::Null)
}

/// Config text as written (JSON; `null` when it does not parse).
fn written_text(text: &str) -> serde_json::Value {
    serde_saphyr::from_str(text).unwrap_or(serde_json::Value::Null)
}

/// Reloads the daemon's rule set and config — for the watcher (files changed, SIGHUP) and the
/// admin API (`POST /api/reload`) alike, one at a time — and tells the rest of the daemon.
pub(crate) struct Reloader {
    pub paths: Vec<PathBuf>,
    pub target: Arc<RwLock<Arc<RuleSet>>>,
    pub allow_empty: bool,
    pub policy: crate::outbox::ssrf::NetPolicy,
    /// `rules.timezone` as the daemon started with it (a change waits for a restart).
    pub timezone: Option<jiff::tz::TimeZone>,
    /// Runs after each reload that put a new set in force (blocking).
    pub then: Box<dyn Fn(&RuleSet) + Send + Sync>,
    /// One reload at a time: two at once could leave the older set in force.
    pub one_at_a_time: std::sync::Mutex<()>,
    /// The config file; None when the daemon runs without one on disk (the demo).
    pub config: Option<ConfigSource>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// Reloads now (blocking: reads and compiles the rule files).
    pub(crate) fn reload(&self) -> Reloaded {
        let _one = self.one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
        // The config is read and checked first: a bad one changes nothing, rules included.
        let staged = match self.config.as_ref().map(ConfigSource::stage) {
            Some(Err(errors)) => {
                // Config errors may quote a chat id: masked like every other log line.
                let errors = crate::diag::Diagnostics(
                    errors
                        .0
                        .into_iter()
                        .map(|mut d| {
                            d.message = events::mask_text(&d.message);
                            d
                        })
                        .collect(),
                );
                for e in &errors.0 {
                    tracing::error!(event = "config.error", "{e}");
                }
                tracing::error!(
                    event = "config.reload_refused",
                    "config not reloaded (nor the rules): the running config stays until the errors above are fixed"
                );
                return Reloaded::Refused {
                    why: "the config has errors".into(),
                    errors,
                    in_force: self
                        .target
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .fingerprint
                        .clone(),
                };
            }
            Some(Ok(staged)) => Some(staged),
            None => None,
        };
        let mut r = reload(
            &self.paths,
            &self.target,
            self.allow_empty,
            &self.policy,
            self.timezone.as_ref(),
        );
        if let (Reloaded::Refused { why, .. }, Some(source), Some(staged)) =
            (&mut r, &self.config, &staged)
            && source.would_change(staged)
        {
            // Rules and config go together: a refused rule set leaves the config as it was.
            why.push_str(" (the config's changes were not applied either)");
        }
        if let Reloaded::InForce { config, .. } = &mut r {
            let set = self
                .target
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            (self.then)(&set);
            if let (Some(source), Some(staged)) = (&self.config, staged) {
                *config = source.apply(staged);
            }
        }
        r
    }

    /// The files a reload reads: the rule files and the config.
    fn watched(&self) -> Snapshot {
        let mut files = snapshot(&self.paths);
        if let Some(c) = &self.config {
            files.extend(snapshot(std::slice::from_ref(&c.path)));
        }
        files
    }
}

/// Watches until `shutdown`: every `every` (when `poll_files`), and on SIGHUP.
pub(crate) async fn watch(
    reloader: Arc<Reloader>,
    poll_files: bool,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut last = reloader.watched();
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hangup => true,
            _ = tokio::time::sleep(every) => false,
        };
        if !forced && !poll_files {
            continue;
        }
        let now = reloader.watched();
        if forced || now != last {
            if forced {
                tracing::info!(
                    event = "rules.reload_requested",
                    "SIGHUP: reloading the rules and the config"
                );
            }
            let r = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload()).await;
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_a_reload_applies_live_is_no_other_change() {
        let before = json!({"api": {"base_url": "x", "rate_limit": {"per_second": 5}}, "chats": ["1"], "state": {"path": "a"}});
        let after = json!({"api": {"base_url": "x", "rate_limit": {"per_second": 9}}, "chats": ["2"], "poll": {"interval": "5s"}, "state": {"path": "a"}});
        assert_eq!(without_live(&before), without_live(&after));
        let moved = json!({"api": {"base_url": "x"}, "state": {"path": "b"}, "poll": {"interval": "5s", "coalesce": "0s"}});
        let mut diffs = Vec::new();
        crate::rules::docs::differences(
            "",
            Some(&without_live(&before)),
            Some(&without_live(&moved)),
            &mut diffs,
        );
        let paths: Vec<&str> = diffs.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(paths, ["poll", "state.path"]);
    }
}
