//! Every logged event, one function each, so log lines stay consistent and phone numbers
//! are masked in one place (`log.mask_phone_numbers`).
//!
//! Must not: log a token, a webhook secret, or a signed header.

use std::sync::atomic::{AtomicBool, Ordering};

static MASK: AtomicBool = AtomicBool::new(true);

/// Sets whether phone numbers are masked in logs (on by default).
pub(crate) fn set_masking(on: bool) {
    MASK.store(on, Ordering::Relaxed);
}

/// `966500000000@c.us` → `9665*****000@c.us` when masking is on; group ids are kept.
pub(crate) fn mask(id: &str) -> String {
    if !MASK.load(Ordering::Relaxed) {
        return id.to_string();
    }
    mask_always(id)
}

/// The masking itself: runs of 7 or more digits keep their first 4 and last 3.
pub(crate) fn mask_always(text: &str) -> String {
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
pub(crate) fn mask_text(text: &str) -> String {
    if MASK.load(Ordering::Relaxed) {
        mask_always(text)
    } else {
        text.to_string()
    }
}

/// A poll failed; `retry_in` is that chat's backoff (None: it follows the shared pause).
pub(crate) fn poll_failed(
    chat: &str,
    error: &dyn std::fmt::Display,
    retry_in: Option<std::time::Duration>,
) {
    // Error texts may quote the request URL, which names the chat: mask it too.
    let error = mask(&error.to_string());
    match retry_in {
        Some(d) => {
            tracing::warn!(event = "poll.failed", chat = %mask(chat), retry_in = ?d, "poll failed: {error}")
        }
        None => tracing::warn!(event = "poll.failed", chat = %mask(chat), "poll failed: {error}"),
    }
}

/// A 401, as the schedule judged it: this chat's problem, or the token's.
pub(crate) fn unauthorized(
    chat: &str,
    verdict: crate::engine::schedule::AuthVerdict,
    retry_in: std::time::Duration,
) {
    use crate::engine::schedule::AuthVerdict;
    match verdict {
        AuthVerdict::ThisChat => {
            tracing::warn!(event = "gateway.chat_refused", chat = %mask(chat), ?retry_in, "the gateway refused this chat (401) while no other chat was refused: backing this chat off; if a second chat is refused, the token is taken as bad")
        }
        AuthVerdict::TokenRefused => {
            tracing::error!(event = "gateway.token_refused", chat = %mask(chat), "the gateway refused the API token (401) for two chats: check api.token; every chat is paused and one probe, with another chat, retries slowly (30s, doubling up to 5m)")
        }
        AuthVerdict::StillRefused => {
            tracing::error!(event = "gateway.token_refused", chat = %mask(chat), "the gateway still refuses the API token (401): every chat stays paused; the next probe asks another chat after a longer pause")
        }
    }
}

/// One message the gateway sent could not be used: logged once per message (the caller
/// remembers which were logged).
pub(crate) fn message_skipped(chat: &str, skipped: &crate::gateway::model::Skipped) {
    tracing::warn!(event = "message.skipped", chat = %mask(chat), index = skipped.index, "skipped a message the gateway sent (logged once): {}", mask(&skipped.reason));
}

/// Unix seconds as RFC 3339, or the number when it is out of range.
fn rfc3339(ts: i64) -> String {
    jiff::Timestamp::from_second(ts).map_or_else(|_| ts.to_string(), |t| t.to_string())
}

/// More messages arrived between two polls than the largest `limit` returns: those between
/// `from_ts` (the last one known) and `to_ts` (the oldest one returned) may be missed.
pub(crate) fn gap_detected(chat: &str, from_ts: i64, to_ts: i64, limit: u32) {
    tracing::error!(event = "poll.gap_detected",
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

pub(crate) fn chat_first_seen(chat: &str, history: usize) {
    tracing::info!(event = "chat.first_seen", chat = %mask(chat), history, "first sight of the chat: existing messages recorded as history");
}

/// A config reload added a chat: polled from now on.
pub(crate) fn chat_watched(chat: &str, interval: std::time::Duration) {
    tracing::info!(event = "chat.watched", chat = %mask(chat), interval = ?interval, "config reload: now watching the chat");
}

/// A config reload removed a chat: no longer polled (its state stays in the store).
pub(crate) fn chat_unwatched(chat: &str) {
    tracing::info!(event = "chat.unwatched", chat = %mask(chat), "config reload: no longer watching the chat");
}

pub(crate) fn rule_fired(rule: &str, chat: &str, message: &str) {
    tracing::info!(event = "rule.fired", rule, chat = %mask(chat), message_id = %mask(message), "rule fired");
}

pub(crate) fn chat_rule_fired(rule: &str, chat: &str) {
    tracing::info!(event = "chat_rule.fired", rule, chat = %mask(chat), "chat rule fired");
}

/// A silence muted a firing: its actions were left out (what the rule remembers moved on).
pub(crate) fn rule_muted(rule: &str, chat: &str, message: Option<&str>, silence: i64) {
    tracing::info!(event = "rule.muted", rule, chat = %mask(chat),
        message_id = %message.map(mask).unwrap_or_default(), silence,
        "rule fired, muted by silence {silence}: no action");
}

pub(crate) fn chat_rule_resolved(rule: &str, chat: &str) {
    tracing::info!(event = "chat_rule.resolved", rule, chat = %mask(chat), "chat rule resolved: its condition stopped holding after it fired");
}

/// A digest's window ended: its firings became its deliveries (in the same transaction).
pub(crate) fn digest_sealed(s: &crate::model::SealedDigest) {
    let w = &s.window;
    tracing::info!(event = "digest.sealed", rule = %w.rule_id, group = %mask(&w.group),
        window_start = %rfc3339(w.window_start), window_end = %rfc3339(w.window_start + w.window_secs),
        firings = s.count, deliveries = s.deliveries, queued = s.queued,
        "digest sealed: {} firing(s), {} delivery(ies) queued", s.count, s.queued);
}

/// Firings waiting for a digest whose rule is gone (or has no `digest` any more).
pub(crate) fn digest_dropped(rule: &str, firings: usize, why: &str) {
    tracing::warn!(
        event = "digest.dropped",
        rule,
        firings,
        "dropped {firings} firing(s) collected for a digest: {why}"
    );
}

/// Sealing the digests failed (the store): retried on the next pass.
pub(crate) fn digest_failed(error: &str) {
    tracing::error!(
        event = "digest.failed",
        "could not seal the digests (retried in a second): {error}"
    );
}

/// Control characters (CR, LF, NUL, ESC, …) and bidi overrides and isolates written as
/// escapes, so a customer's message in a `log` action cannot start a forged log line or
/// reorder one on screen. Borrows when there is nothing to escape.
pub(crate) fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let bidi = |c: char| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(|c| c.is_control() || bidi(c)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || bidi(c) => {
                out.push_str(&format!("\\u{{{:04x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

pub(crate) fn rule_log(rule: &str, level: crate::rules::raw::Level, text: &str) {
    use crate::rules::raw::Level;
    let text = escape_controls(&mask_text(text)).into_owned();
    match level {
        Level::Debug => tracing::debug!(event = "rule.log", rule, "{text}"),
        Level::Info => tracing::info!(event = "rule.log", rule, "{text}"),
        Level::Warn => tracing::warn!(event = "rule.log", rule, "{text}"),
        Level::Error => tracing::error!(event = "rule.log", rule, "{text}"),
    }
}

/// How often one (rule, chat) may log its failures.
pub(crate) const RULE_ERROR_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// (rule, chat) → when its last failure was logged, and how many came since.
type Floods = std::collections::HashMap<(String, String), (std::time::Instant, u64)>;

static FLOODS: std::sync::Mutex<Option<Floods>> = std::sync::Mutex::new(None);

/// A rule failed for a chat: the first failure is logged, then at most one line a minute per
/// (rule, chat) with the count since, so a script that fails on every poll or every message
/// cannot flood the log (`cartat_rule_errors_total` counts every one).
pub(crate) fn rule_error(rule: &str, chat: &str, error: &str) {
    let now = std::time::Instant::now();
    let since = {
        let mut floods = FLOODS.lock().unwrap_or_else(|e| e.into_inner());
        let map = floods.get_or_insert_with(Default::default);
        if map.len() > 100_000 {
            map.clear();
        }
        match map.get_mut(&(rule.to_string(), chat.to_string())) {
            Some((at, n)) if now.duration_since(*at) < RULE_ERROR_EVERY => {
                *n += 1;
                return;
            }
            Some((at, n)) => {
                *at = now;
                std::mem::take(n)
            }
            None => {
                map.insert((rule.to_string(), chat.to_string()), (now, 0));
                0
            }
        }
    };
    let error = escape_controls(error);
    if since > 0 {
        tracing::error!(event = "rule.action_failed", rule, chat = %mask(chat), suppressed = since, "rule action failed: {error} ({since} more failures of this rule for this chat in the last minute were not logged)");
    } else {
        tracing::error!(event = "rule.action_failed", rule, chat = %mask(chat), "rule action failed: {error}");
    }
}

/// A rule's `script` failed or hit a bound: logged as a warning the first time for that rule
/// (`first`), then at debug level, so a broken script cannot flood the log.
pub(crate) fn script_failed(
    rule: &str,
    source: &std::path::Path,
    chat: &str,
    error: &str,
    first: bool,
) {
    if first {
        tracing::warn!(event = "script.failed", rule, file = %source.display(), chat = %mask(chat), "script condition failed (the rule does not fire; further failures of this rule are logged at debug level): {error}");
    } else {
        tracing::debug!(event = "script.failed", rule, file = %source.display(), chat = %mask(chat), "script condition failed: {error}");
    }
}

pub(crate) fn stale(rule: &str, chat: &str, message: &str) {
    tracing::info!(event = "rule.stale", rule, chat = %mask(chat), message_id = %mask(message), "stale: matched but older than max_age when first seen; not fired");
}

pub(crate) fn store_failed(chat: &str, error: &dyn std::fmt::Display) {
    tracing::error!(event = "store.failed", chat = %mask(chat), "state store error; the poll will be retried: {error}");
}

pub(crate) fn delivered(delivery_id: &str, rule: &str, status: u16, attempt: u32) {
    tracing::info!(
        event = "delivery.delivered",
        delivery_id,
        rule,
        status,
        attempt,
        "webhook delivered"
    );
}

pub(crate) fn delivery_retry(
    delivery_id: &str,
    rule: &str,
    reason: &str,
    attempt: u32,
    retry_in: std::time::Duration,
) {
    tracing::warn!(event = "delivery.retry", delivery_id, rule, attempt, retry_in = ?retry_in, "webhook failed, will retry: {reason}");
}

pub(crate) fn dead_lettered(delivery_id: &str, rule: &str, reason: &str, attempt: u32) {
    tracing::error!(
        event = "delivery.dead_lettered",
        delivery_id,
        rule,
        attempt,
        "webhook dead-lettered: {reason}; `cartat-rules outbox retry {delivery_id}` re-sends it"
    );
}

/// A 410: loud, because every later delivery to this url is parked until the config changes.
pub(crate) fn endpoint_gone(url: &str, delivery_id: &str, rule: &str, parked: usize) {
    tracing::error!(
        event = "endpoint.gone",
        url,
        delivery_id,
        rule,
        parked,
        "ENDPOINT DISABLED: the receiver answered 410 Gone; this and every later delivery to it are kept as `gone` and not sent until the config or the rules change (seen at a restart or a rules reload), or `cartat-rules outbox retry --dead` re-sends them"
    );
}

pub(crate) fn endpoint_reenabled(url: &str) {
    tracing::warn!(
        event = "endpoint.reenabled",
        url,
        "endpoint enabled again: the config changed since it answered 410 Gone"
    );
}

pub(crate) fn lease_taken(chat: &str) {
    tracing::info!(event = "lease.taken", chat = %mask(chat), "took the lease on a chat");
}

pub(crate) fn lease_lost(chat: &str) {
    tracing::warn!(event = "lease.lost", chat = %mask(chat), "lost the lease on a chat (another instance holds it, or it expired): no longer polling it");
}

pub(crate) fn leases_changed(instance: &str, chats: usize, live: usize) {
    tracing::info!(
        event = "lease.changed",
        instance,
        chats,
        live,
        "this instance now polls {chats} chat(s); {live} instance(s) alive"
    );
}

pub(crate) fn leases_released(n: usize) {
    tracing::info!(
        event = "lease.released",
        leases = n,
        "gave up {n} lease(s) for the other instances to take"
    );
}

pub(crate) fn lease_cycle_failed(error: &str) {
    tracing::error!(
        event = "lease.cycle_failed",
        "could not renew the leases (retried; the chats stop when they run out): {error}"
    );
}

/// A commit refused because the chat's lease moved on while the poll ran.
pub(crate) fn fenced(chat: &str) {
    tracing::warn!(event = "lease.fenced", chat = %mask(chat), "commit refused: the lease on the chat was lost while the poll ran (another instance polls it now); nothing of this poll is kept");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_are_escaped_and_arabic_is_not() {
        let cases = [
            ("بوت", "بوت"),
            ("a\nINFO forged", "a\\nINFO forged"),
            ("x\r\0y\u{1b}[31m", "x\\r\\u{0000}y\\u{001b}[31m"),
            ("\u{202E}evil\u{2066}", "\\u{202e}evil\\u{2066}"),
            ("tab\there", "tab\\there"),
            ("\u{200F}rlm kept", "\u{200F}rlm kept"),
        ];
        for (text, want) in cases {
            assert_eq!(escape_controls(text), want, "{text:?}");
        }
        assert!(matches!(
            escape_controls("plain"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

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
