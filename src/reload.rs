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

/// How a reload ended.
#[derive(Debug)]
pub(crate) enum Reloaded {
    /// The new set is in force.
    InForce {
        fingerprint: String,
        rules: usize,
        warnings: crate::diag::Diagnostics,
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
) -> Reloaded {
    let in_force = || {
        target
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .fingerprint
            .clone()
    };
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

/// Reloads the daemon's rule set — for the watcher (files changed, SIGHUP) and the admin API
/// (`POST /api/reload`) alike, one at a time — and tells the rest of the daemon.
pub(crate) struct Reloader {
    pub paths: Vec<PathBuf>,
    pub target: Arc<RwLock<Arc<RuleSet>>>,
    pub allow_empty: bool,
    pub policy: crate::outbox::ssrf::NetPolicy,
    /// Runs after each reload that put a new set in force (blocking).
    pub then: Box<dyn Fn(&RuleSet) + Send + Sync>,
    /// One reload at a time: two at once could leave the older set in force.
    pub one_at_a_time: std::sync::Mutex<()>,
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
        let r = reload(&self.paths, &self.target, self.allow_empty, &self.policy);
        if matches!(r, Reloaded::InForce { .. }) {
            let set = self
                .target
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            (self.then)(&set);
        }
        r
    }
}

/// Watches until `shutdown`: every `every` (when `poll_files`), and on SIGHUP.
pub(crate) async fn watch(
    reloader: Arc<Reloader>,
    poll_files: bool,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut last = snapshot(&reloader.paths);
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
        let now = snapshot(&reloader.paths);
        if forced || now != last {
            if forced {
                tracing::info!(
                    event = "rules.reload_requested",
                    "SIGHUP: reloading the rules"
                );
            }
            let r = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload()).await;
            last = now;
        }
    }
}
