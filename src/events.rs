//! Every logged event, one function each, so log lines stay consistent and phone numbers
//! are masked in one place (SPEC §3 `log.mask_phone_numbers`).
//!
//! Must not: log a token, a webhook secret, or a signed header.

use std::sync::atomic::{AtomicBool, Ordering};

static MASK: AtomicBool = AtomicBool::new(true);

/// Sets whether phone numbers are masked in logs (on by default).
pub fn set_masking(on: bool) {
    MASK.store(on, Ordering::Relaxed);
}

/// `966500000000@c.us` → `9665*****000@c.us` when masking is on; group ids are kept.
pub fn mask(id: &str) -> String {
    if !MASK.load(Ordering::Relaxed) {
        return id.to_string();
    }
    mask_always(id)
}

/// The masking itself: runs of 7 or more digits keep their first 4 and last 3.
pub fn mask_always(text: &str) -> String {
    if text.ends_with("@g.us") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 7 {
            out.push_str(&run[..4]);
            out.push_str(&"*".repeat(run.len() - 7));
            out.push_str(&run[run.len() - 3..]);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Free text (rule log lines) with every run of 7 or more digits masked, when masking is on.
pub fn mask_text(text: &str) -> String {
    if MASK.load(Ordering::Relaxed) {
        mask_always(text)
    } else {
        text.to_string()
    }
}

/// A poll failed; `retry_in` is that chat's backoff (None: it follows the shared pause).
pub fn poll_failed(
    chat: &str,
    error: &dyn std::fmt::Display,
    retry_in: Option<std::time::Duration>,
) {
    // Error texts may quote the request URL, which names the chat: mask it too.
    let error = mask(&error.to_string());
    match retry_in {
        Some(d) => tracing::warn!(chat = %mask(chat), retry_in = ?d, "poll failed: {error}"),
        None => tracing::warn!(chat = %mask(chat), "poll failed: {error}"),
    }
}

pub fn unauthorized(chat: &str) {
    tracing::error!(chat = %mask(chat), "the gateway refused the API token (401): check api.token; every chat is paused and one probe retries slowly (30s, doubling up to 5m)");
}

/// One message the gateway sent could not be used: logged once per message (the caller
/// remembers which were logged).
pub fn message_skipped(chat: &str, skipped: &crate::gateway::model::Skipped) {
    tracing::warn!(chat = %mask(chat), index = skipped.index, "skipped a message the gateway sent (logged once): {}", mask(&skipped.reason));
}

/// Unix seconds as RFC 3339, or the number when it is out of range.
fn rfc3339(ts: i64) -> String {
    jiff::Timestamp::from_second(ts).map_or_else(|_| ts.to_string(), |t| t.to_string())
}

/// More messages arrived between two polls than the largest `limit` returns: those between
/// `from_ts` (the last one known) and `to_ts` (the oldest one returned) may be missed.
pub fn gap_detected(chat: &str, from_ts: i64, to_ts: i64, limit: u32) {
    tracing::error!(
        chat = %mask(chat),
        from = %rfc3339(from_ts),
        to = %rfc3339(to_ts),
        from_ts,
        to_ts,
        limit,
        "gap_detected: more messages arrived than the largest limit ({limit}) returns; messages between {} and {} may be missed (raise api.max_message_limit or poll this chat more often)",
        rfc3339(from_ts),
        rfc3339(to_ts)
    );
}

pub fn chat_first_seen(chat: &str, history: usize) {
    tracing::info!(chat = %mask(chat), history, "first sight of the chat: existing messages recorded as history");
}

pub fn rule_fired(rule: &str, chat: &str, message: &str) {
    tracing::info!(rule, chat = %mask(chat), message = %mask(message), "rule fired");
}

pub fn chat_rule_fired(rule: &str, chat: &str) {
    tracing::info!(rule, chat = %mask(chat), "chat rule fired");
}

pub fn rule_log(rule: &str, level: crate::rules::raw::Level, text: &str) {
    use crate::rules::raw::Level;
    let text = mask_text(text);
    match level {
        Level::Debug => tracing::debug!(rule, "{text}"),
        Level::Info => tracing::info!(rule, "{text}"),
        Level::Warn => tracing::warn!(rule, "{text}"),
        Level::Error => tracing::error!(rule, "{text}"),
    }
}

pub fn rule_error(rule: &str, chat: &str, error: &str) {
    tracing::error!(rule, chat = %mask(chat), "rule action failed: {error}");
}

/// A rule's `script` failed or hit a bound: logged as a warning the first time for that rule
/// (`first`), then at debug level, so a broken script cannot flood the log.
pub fn script_failed(rule: &str, source: &std::path::Path, chat: &str, error: &str, first: bool) {
    if first {
        tracing::warn!(rule, file = %source.display(), chat = %mask(chat), "script condition failed (the rule does not fire; further failures of this rule are logged at debug level): {error}");
    } else {
        tracing::debug!(rule, file = %source.display(), chat = %mask(chat), "script condition failed: {error}");
    }
}

pub fn stale(rule: &str, chat: &str, message: &str) {
    tracing::info!(rule, chat = %mask(chat), message = %mask(message), "stale: matched but older than max_age when first seen; not fired");
}

pub fn store_failed(chat: &str, error: &dyn std::fmt::Display) {
    tracing::error!(chat = %mask(chat), "state store error; the poll will be retried: {error}");
}

pub fn delivered(delivery_id: &str, rule: &str, status: u16, attempt: u32) {
    tracing::info!(delivery_id, rule, status, attempt, "webhook delivered");
}

pub fn delivery_retry(
    delivery_id: &str,
    rule: &str,
    reason: &str,
    attempt: u32,
    retry_in: std::time::Duration,
) {
    tracing::warn!(delivery_id, rule, attempt, retry_in = ?retry_in, "webhook failed, will retry: {reason}");
}

pub fn dead_lettered(delivery_id: &str, rule: &str, reason: &str, attempt: u32) {
    tracing::error!(
        delivery_id,
        rule,
        attempt,
        "webhook dead-lettered: {reason}; `cartat-rules outbox retry {delivery_id}` re-sends it"
    );
}

/// A 410: loud, because every later delivery to this url is parked until the config changes.
pub fn endpoint_gone(url: &str, delivery_id: &str, rule: &str, parked: usize) {
    tracing::error!(
        url,
        delivery_id,
        rule,
        parked,
        "ENDPOINT DISABLED: the receiver answered 410 Gone; this and every later delivery to it are kept as `gone` and not sent until the config or the rules change (seen at a restart or a rules reload), or `cartat-rules outbox retry --dead` re-sends them"
    );
}

pub fn endpoint_reenabled(url: &str) {
    tracing::warn!(
        url,
        "endpoint enabled again: the config changed since it answered 410 Gone"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_phone_numbers_but_not_groups() {
        assert_eq!(mask_always("966500000000@c.us"), "9665*****000@c.us");
        assert_eq!(
            mask_always("false_966500000000@c.us_3A1F"),
            "false_9665*****000@c.us_3A1F"
        );
        assert_eq!(
            mask_always("120363012345678901@g.us"),
            "120363012345678901@g.us"
        );
        assert_eq!(mask_always("short 12345"), "short 12345");
    }
}
