//! Hot reload of the rule set: a change under `rules.paths` (checked every second) or a
//! SIGHUP recompiles every rule file and swaps the whole set atomically. A bad edit keeps
//! the last good set and logs every problem as `path:line:col`.
//!
//! Polling modification times instead of inotify: no dependency, and it works on the
//! network and bind-mounted folders where rule repos are often deployed.

use crate::rules::{self, RuleSet};
use std::path::PathBuf;
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

/// Recompiles and swaps; returns whether the new set is in force. A set with no rule at all
/// replaces one with rules only when `allow_empty`.
pub(crate) fn reload(
    paths: &[PathBuf],
    target: &RwLock<Arc<RuleSet>>,
    allow_empty: bool,
    policy: &crate::outbox::ssrf::NetPolicy,
) -> bool {
    match rules::load_for(paths, policy) {
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
                return false;
            }
            let (n, c) = (set.rules.len(), set.chat_rules.len());
            *target.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
            tracing::info!(
                event = "rules.reloaded",
                message_rules = n,
                chat_rules = c,
                "rules reloaded"
            );
            true
        }
        Err(d) => {
            for e in &d.0 {
                tracing::error!(event = "rules.error", "{e}");
            }
            tracing::error!(
                event = "rules.reload_refused",
                "rules not reloaded: the last good set stays in force until the errors above are fixed"
            );
            false
        }
    }
}

/// Watches until `shutdown`: every `every`, and on SIGHUP. `reloaded` runs (blocking, off the
/// runtime) after each reload that put a new set in force.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn watch(
    paths: Vec<PathBuf>,
    target: Arc<RwLock<Arc<RuleSet>>>,
    poll_files: bool,
    allow_empty: bool,
    policy: crate::outbox::ssrf::NetPolicy,
    every: Duration,
    shutdown: CancellationToken,
    reloaded: impl Fn() + Clone + Send + 'static,
) {
    let mut last = snapshot(&paths);
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
        let now = snapshot(&paths);
        if forced || now != last {
            if forced {
                tracing::info!(
                    event = "rules.reload_requested",
                    "SIGHUP: reloading the rules"
                );
            }
            let p = paths.clone();
            let t = target.clone();
            let then = reloaded.clone();
            let policy = policy.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if reload(&p, &t, allow_empty, &policy) {
                    then();
                }
            })
            .await;
            last = now;
        }
    }
}
