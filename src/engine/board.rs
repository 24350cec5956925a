//! What the status page says about each watched chat: when it was last polled and how that
//! ended, its unread count, its last error and backoff. The poller writes a line per poll (a
//! lock and a map update); the server reads a copy.
//!
//! Owns: the lines. Must not: hold message content or secrets (an error is the same text the
//! log has, whose urls are already redacted).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// One chat's line.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ChatStatus {
    /// Unix ms of the last poll that ended, and of the last one that succeeded.
    pub last_poll_ms: Option<i64>,
    pub last_ok_ms: Option<i64>,
    /// The chat's unread count as the gateway said at the last good poll.
    pub unread: Option<i64>,
    /// Why the last poll failed (None once one succeeds).
    pub last_error: Option<String>,
    /// Polls failed in a row, and how long until the next try when backing off.
    pub failures: u32,
    pub retry_in_ms: Option<u64>,
}

/// Every watched chat's line, by chat id.
#[derive(Debug, Default)]
pub struct ChatBoard(Mutex<BTreeMap<String, ChatStatus>>);

impl ChatBoard {
    fn lines(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ChatStatus>> {
        // Plain values: a panic elsewhere cannot leave one half-written.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A chat is watched (it shows before its first poll ends).
    pub fn watch(&self, chat: &str) {
        self.lines().entry(chat.to_string()).or_default();
    }

    /// A chat is no longer watched.
    pub fn forget(&self, chat: &str) {
        self.lines().remove(chat);
    }

    pub fn ok(&self, chat: &str, now_ms: i64, unread: Option<i64>) {
        let mut lines = self.lines();
        let line = lines.entry(chat.to_string()).or_default();
        line.last_poll_ms = Some(now_ms);
        line.last_ok_ms = Some(now_ms);
        line.unread = unread.or(line.unread);
        line.last_error = None;
        line.failures = 0;
        line.retry_in_ms = None;
    }

    pub fn failed(
        &self,
        chat: &str,
        now_ms: i64,
        error: String,
        retry_in: Option<std::time::Duration>,
    ) {
        let mut lines = self.lines();
        let line = lines.entry(chat.to_string()).or_default();
        line.last_poll_ms = Some(now_ms);
        line.last_error = Some(error);
        line.failures = line.failures.saturating_add(1);
        line.retry_in_ms = retry_in.map(|d| d.as_millis() as u64);
    }

    /// A copy of every line, by chat id.
    pub fn snapshot(&self) -> Vec<(String, ChatStatus)> {
        self.lines()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_poll_clears_the_error_and_keeps_the_last_known_unread_count() {
        let b = ChatBoard::default();
        b.watch("a@c.us");
        assert_eq!(b.snapshot()[0].1, ChatStatus::default());
        b.ok("a@c.us", 1_000, Some(3));
        b.failed(
            "a@c.us",
            2_000,
            "timeout".into(),
            Some(std::time::Duration::from_secs(4)),
        );
        b.failed("a@c.us", 3_000, "timeout".into(), None);
        let (_, line) = &b.snapshot()[0];
        assert_eq!(
            (line.failures, line.last_ok_ms, line.last_poll_ms),
            (2, Some(1_000), Some(3_000))
        );
        assert_eq!(line.last_error.as_deref(), Some("timeout"));
        b.ok("a@c.us", 4_000, None);
        let (_, line) = &b.snapshot()[0];
        assert_eq!(
            line.unread,
            Some(3),
            "a reply without unreadCount keeps the last one"
        );
        assert_eq!(
            (line.failures, line.last_error.clone(), line.retry_in_ms),
            (0, None, None)
        );
        b.forget("a@c.us");
        assert!(b.snapshot().is_empty());
    }
}

/// One rule's firings over the last day, by minute, and its errors.
#[derive(Clone, Debug)]
struct RuleLine {
    /// Firings per minute, a ring over the last 1440 minutes; `minutes[i]` counts minute
    /// `stamps[i]` (unix minutes), stale slots are ignored.
    counts: Box<[u32; DAY_MINUTES]>,
    stamps: Box<[i64; DAY_MINUTES]>,
    last_fired_ms: Option<i64>,
    errors: u64,
    last_error: Option<String>,
}

const DAY_MINUTES: usize = 1440;

impl Default for RuleLine {
    fn default() -> Self {
        RuleLine {
            counts: Box::new([0; DAY_MINUTES]),
            stamps: Box::new([-1; DAY_MINUTES]),
            last_fired_ms: None,
            errors: 0,
            last_error: None,
        }
    }
}

/// What the status page says about a rule since this daemon started.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuleStatus {
    pub fired_last_hour: u64,
    pub fired_last_day: u64,
    pub last_fired_ms: Option<i64>,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Every rule's line, by rule id (in memory: it starts again with the daemon).
#[derive(Debug, Default)]
pub struct RuleBoard(Mutex<BTreeMap<String, RuleLine>>);

impl RuleBoard {
    fn lines(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RuleLine>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rule `rule` fired (its actions went out, or were muted) at `now_ms`.
    pub fn fired(&self, rule: &str, now_ms: i64) {
        let mut lines = self.lines();
        let line = match lines.get_mut(rule) {
            Some(l) => l,
            None => lines.entry(rule.to_string()).or_default(),
        };
        let minute = now_ms.div_euclid(60_000);
        let slot = minute.rem_euclid(DAY_MINUTES as i64) as usize;
        if line.stamps[slot] != minute {
            line.stamps[slot] = minute;
            line.counts[slot] = 0;
        }
        line.counts[slot] = line.counts[slot].saturating_add(1);
        line.last_fired_ms = Some(line.last_fired_ms.map_or(now_ms, |t| t.max(now_ms)));
    }

    /// Rule `rule` failed on a message or a chat.
    pub fn failed(&self, rule: &str, error: &str) {
        let mut lines = self.lines();
        let line = lines.entry(rule.to_string()).or_default();
        line.errors += 1;
        line.last_error = Some(error.to_string());
    }

    /// The figures of `rule` as of `now_ms` (zeros for a rule that never fired).
    pub fn status(&self, rule: &str, now_ms: i64) -> RuleStatus {
        let lines = self.lines();
        let Some(line) = lines.get(rule) else {
            return RuleStatus::default();
        };
        let now = now_ms.div_euclid(60_000);
        let mut hour = 0u64;
        let mut day = 0u64;
        for (stamp, count) in line.stamps.iter().zip(line.counts.iter()) {
            let age = now - stamp;
            if *stamp >= 0 && (0..DAY_MINUTES as i64).contains(&age) {
                day += u64::from(*count);
                if age < 60 {
                    hour += u64::from(*count);
                }
            }
        }
        RuleStatus {
            fired_last_hour: hour,
            fired_last_day: day,
            last_fired_ms: line.last_fired_ms,
            errors: line.errors,
            last_error: line.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod rule_tests {
    use super::*;

    #[test]
    fn firings_count_by_hour_and_day_and_age_out() {
        let b = RuleBoard::default();
        let t0 = 1_000 * 60_000; // a minute boundary
        b.fired("bot", t0);
        b.fired("bot", t0 + 30_000);
        b.fired("bot", t0 + 2 * 3_600_000); // two hours later
        let s = b.status("bot", t0 + 2 * 3_600_000 + 1);
        assert_eq!((s.fired_last_hour, s.fired_last_day), (1, 3));
        assert_eq!(s.last_fired_ms, Some(t0 + 2 * 3_600_000));
        // A day and a bit later, everything aged out; the same ring slot reused counts afresh.
        let later = t0 + 86_400_000;
        assert_eq!(b.status("bot", later + 3 * 3_600_000).fired_last_day, 0);
        b.fired("bot", later);
        assert_eq!(
            b.status("bot", later).fired_last_day,
            2,
            "t0+2h is still in the day"
        );
        assert_eq!(b.status("bot", later).fired_last_hour, 1);
        b.failed("bot", "script ran out of time");
        assert_eq!(b.status("bot", later).errors, 1);
        assert_eq!(b.status("never", later), RuleStatus::default());
    }
}
