//! Injected faults: which request gets which wrong answer.

use super::*;

/// What a fault does to the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FaultAction {
    /// The normal reply (possibly delayed).
    Normal,
    /// A 200 whose body never ends.
    Endless,
    Status {
        code: StatusCode,
        retry_after: Option<String>,
        body: Option<String>,
    },
    Malformed,
    Truncated,
    Hang,
}

#[derive(Debug, Clone)]
pub(super) struct Fault {
    pub(super) after_ms: i64,
    pub(super) until_ms: Option<i64>,
    pub(super) chat: Option<String>,
    pub(super) remaining: Option<u64>,
    pub(super) every: u64,
    /// Requests it matched so far (for `every`).
    pub(super) matched: u64,
    pub(super) action: FaultAction,
    pub(super) delay: Option<Duration>,
}

impl Fault {
    pub(super) fn compile(spec: &FaultSpec) -> Result<Fault, String> {
        let r = &spec.respond;
        let kinds = [
            r.status.is_some(),
            r.malformed,
            r.truncated,
            r.hang,
            r.endless,
        ];
        let count = kinds.iter().filter(|k| **k).count();
        if count > 1 {
            return Err("respond: choose one of status, malformed, truncated, hang".to_owned());
        }
        if count == 0 && r.delay.is_none() {
            return Err(
                "respond: says nothing; give status, malformed, truncated, hang or delay"
                    .to_owned(),
            );
        }
        if r.status.is_none() && (r.retry_after.is_some() || r.body.is_some()) {
            return Err("respond: retry_after and body go with status".to_owned());
        }
        let action = if let Some(code) = r.status {
            let code = StatusCode::from_u16(code)
                .ok()
                .filter(|c| c.as_u16() >= 200)
                .ok_or_else(|| {
                    format!("respond.status {code} is not an HTTP status from 200 to 999")
                })?;
            if let Some(v) = &r.retry_after {
                HeaderValue::from_str(v)
                    .map_err(|_| format!("respond.retry_after `{v}` is not a header value"))?;
            }
            FaultAction::Status {
                code,
                retry_after: r.retry_after.clone(),
                body: r.body.clone(),
            }
        } else if r.malformed {
            FaultAction::Malformed
        } else if r.truncated {
            FaultAction::Truncated
        } else if r.hang {
            FaultAction::Hang
        } else if r.endless {
            FaultAction::Endless
        } else {
            FaultAction::Normal
        };
        let after_ms = spec.after.map_or(0, |d| millis(d.0));
        let until_ms = spec.until.map(|d| millis(d.0));
        if until_ms.is_some_and(|u| u <= after_ms) {
            return Err("until must be later than after".to_owned());
        }
        if let Some(chat) = &spec.chat {
            check_chat_id(chat).map_err(|e| format!("chat: {e}"))?;
        }
        if spec.times == Some(0) {
            return Err("times must be at least 1 (remove the fault to disable it)".to_owned());
        }
        if spec.every == Some(0) {
            return Err("every must be at least 1 (1: every request)".to_owned());
        }
        Ok(Fault {
            after_ms,
            until_ms,
            chat: spec.chat.as_deref().map(served_id),
            remaining: spec.times,
            every: spec.every.unwrap_or(1),
            matched: 0,
            action,
            delay: r.delay.map(|d| d.0),
        })
    }

    pub(super) fn matches(&self, served_chat: &str, now_ms: i64) -> bool {
        now_ms >= self.after_ms
            && self.until_ms.is_none_or(|u| now_ms < u)
            && self.chat.as_deref().is_none_or(|c| c == served_chat)
            && self.remaining != Some(0)
    }
}

/// Takes one use of the first fault that matches, returning its index and what to do.
pub(super) fn pick_fault(
    faults: &mut [Fault],
    requested: &str,
    now_ms: i64,
) -> Option<(usize, FaultAction, Option<Duration>)> {
    let served = served_id(requested);
    let (i, f) = faults.iter_mut().enumerate().find_map(|(i, f)| {
        if !f.matches(&served, now_ms) {
            return None;
        }
        f.matched += 1;
        (f.matched % f.every == 0).then_some((i, f))
    })?;
    if let Some(n) = &mut f.remaining {
        *n -= 1;
    }
    Some((i, f.action.clone(), f.delay))
}
