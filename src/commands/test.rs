use super::TestFormat;
use crate::engine::decide::{Clock, Memory, decide_with};
use crate::gateway::model::{ChatId, Message, Page, parse_reply, repair_lone_surrogates};
use crate::rules::{RuleSet, Verdict};
use serde_json::{Value, json};
use std::path::Path;

pub(super) fn test(
    rules_path: &Path,
    input: &Path,
    format: TestFormat,
    explain: bool,
    at: Option<i64>,
    timezone: Option<&jiff::tz::TimeZone>,
) -> u8 {
    let now = at.unwrap_or_else(|| jiff::Timestamp::now().as_second());
    let Some(rules) = super::load_rules_to_test(rules_path, timezone) else {
        return 1;
    };
    let text = match std::fs::read_to_string(input) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", input.display());
            return 1;
        }
    };
    // A saved reply with half an emoji in it reads as the daemon reads it (U+FFFD).
    let parsed = serde_json::from_str(&text).or_else(|e| match repair_lone_surrogates(&text) {
        std::borrow::Cow::Owned(repaired) => serde_json::from_str(&repaired),
        std::borrow::Cow::Borrowed(_) => Err(e),
    });
    let root: Value = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "{}:{}:{}: not JSON: {e}",
                input.display(),
                e.line(),
                e.column()
            );
            return 1;
        }
    };
    let replies: Vec<&Value> = match &root {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let mut out = String::new();
    for (i, reply) in replies.iter().enumerate() {
        let fallback = ChatId::from_gateway("unknown");
        // The daemon's own parser, on this reply's JSON (a saved file may hold several).
        let page = match parse_reply(reply.to_string().as_bytes(), &fallback) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{}: reply #{}: {e}", input.display(), i + 1);
                return 1;
            }
        };
        evaluate_page(&rules, &page, format, explain, &mut out);
        evaluate_chat_rules(&rules, &page, format, explain, now, &mut out);
    }
    print!("{out}");
    0
}

/// Evaluates a page's messages oldest first, as the daemon would on first sight with
/// `replay_history`, and writes the report.
pub(super) fn evaluate_page(
    rules: &RuleSet,
    page: &Page,
    format: TestFormat,
    explain: bool,
    out: &mut String,
) {
    use std::fmt::Write;
    let chat_id = ChatId::from_gateway(&page.chat.id);
    let mut msgs: Vec<&Message> = page.messages.iter().collect();
    msgs.sort_by(|a, b| (a.timestamp, &a.key).cmp(&(b.timestamp, &b.key)));
    if format == TestFormat::Text {
        let _ = writeln!(
            out,
            "chat {} ({}): {} message(s){}",
            chat_id,
            page.chat.name.as_deref().unwrap_or("no name"),
            msgs.len(),
            if page.skipped.is_empty() {
                String::new()
            } else {
                format!(", {} skipped", page.skipped.len())
            }
        );
        for s in &page.skipped {
            let _ = writeln!(out, "  skipped message #{}: {}", s.index, s.reason);
        }
    }
    // What the rules remember carries from message to message, as it would across polls.
    let mut memory = Memory::default();
    let mut collected = Vec::new();
    for msg in msgs {
        let d = decide_with(
            rules,
            &chat_id,
            &page.chat,
            &[msg],
            &memory,
            Clock::MessageTime,
        );
        memory.cooldowns.extend(d.cooldowns.iter().cloned());
        memory.thresholds.extend(d.thresholds.iter().cloned());
        memory.script_state.extend(d.script_state.iter().cloned());
        collected.extend(d.digest_items.iter().cloned());
        // YAML rules with what matched; rule files (which say nothing of why) with null.
        let fired: Vec<(String, Value)> = d
            .firings
            .iter()
            .map(|f| (f.rule_id.clone(), f.matched.clone()))
            .chain(
                d.script_firings
                    .iter()
                    .map(|f| (f.rule_id.clone(), Value::Null)),
            )
            .collect();
        match format {
            TestFormat::Json => {
                for (rule_id, matched) in &fired {
                    let mut actions = Vec::new();
                    for l in d.logs.iter().filter(|l| l.rule_id == *rule_id) {
                        actions.push(json!({"type": "log", "level": format!("{:?}", l.level).to_lowercase(), "message": l.text}));
                    }
                    for w in d.deliveries.iter().filter(|w| w.rule_id == *rule_id) {
                        let headers: serde_json::Map<String, Value> = w
                            .headers
                            .iter()
                            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                            .collect();
                        let body: Value =
                            serde_json::from_str(&w.body).unwrap_or(Value::String(w.body.clone()));
                        actions.push(json!({"type": "webhook", "url": w.url, "headers": headers, "body": body, "delivery_id": w.delivery_id}));
                    }
                    let line = json!({"rule": rule_id, "chat": chat_id.as_str(), "message_id": msg.serialized_id, "matched": matched, "actions": actions});
                    let _ = writeln!(out, "{line}");
                }
            }
            TestFormat::Text => {
                let preview: String = msg.body.chars().take(60).collect();
                let _ = writeln!(
                    out,
                    "  message {} [{} {}{}] {:?}",
                    msg.serialized_id,
                    msg.kind,
                    crate::outbox::envelope::rfc3339(msg.timestamp),
                    if msg.key.from_me { ", from me" } else { "" },
                    preview
                );
                if explain {
                    let p = rules.prepare(&msg.body);
                    let _ = writeln!(out, "    normalized: {:?}", p.normalized());
                    for rule in &rules.rules {
                        if let Verdict::Failed(why) =
                            rules.eval_message(rule, &chat_id, &page.chat, msg, &p)
                        {
                            let _ = writeln!(out, "    ✗ {}: {why}", rule.id);
                        }
                    }
                    for rule in d.suppressed.iter().map(|s| &s.rule_id) {
                        let _ =
                            writeln!(out, "    ✗ {rule}: matched, but silenced by its cooldown");
                    }
                    for rule in d.stale.iter().map(|s| &s.rule_id) {
                        let _ = writeln!(out, "    ✗ {rule}: matched, but older than max_age");
                    }
                    for c in &d.counted {
                        let _ = writeln!(
                            out,
                            "    ✗ {}: matched, {} of {} within {} so far (it fires on the {})",
                            c.rule_id,
                            c.hits,
                            c.count,
                            crate::duration::format(c.within),
                            ordinal(c.count)
                        );
                    }
                    for rule in d.script_quiet.iter().map(|q| &q.rule_id) {
                        let state = d
                            .script_state
                            .iter()
                            .rev()
                            .find(|(r, _)| r == rule)
                            .map(|(_, s)| {
                                format!("; its state is now {}", Value::Object(s.clone()))
                            })
                            .unwrap_or_default();
                        let _ = writeln!(
                            out,
                            "    ✗ {rule}: the rule file ran and asked for nothing (no webhook, no log){state}"
                        );
                    }
                }
                for (rule_id, matched) in &fired {
                    let _ = writeln!(out, "    ✓ {rule_id} fired, matched {matched}");
                    for i in d.digest_items.iter().filter(|i| i.rule_id == *rule_id) {
                        let _ = writeln!(
                            out,
                            "      collected for its digest of {} (sent when the window ends)",
                            window_text(i.window_start, i.window_secs)
                        );
                    }
                    for l in d.logs.iter().filter(|l| l.rule_id == *rule_id) {
                        let _ = writeln!(out, "      log {:?}: {}", l.level, l.text);
                    }
                    for w in d.deliveries.iter().filter(|w| w.rule_id == *rule_id) {
                        write_webhook(out, w);
                    }
                }
                for e in &d.errors {
                    let _ = writeln!(out, "    ! {}: {}", e.rule_id, e.error);
                }
                if fired.is_empty() && !explain {
                    let _ = writeln!(out, "    (no rule fired)");
                }
            }
        }
    }
    write_digests(rules, &collected, format, out);
}

/// A digest window as `test` names it: `2026-01-01T08:00:00Z – 08:15:00Z`.
fn window_text(start: i64, secs: i64) -> String {
    format!(
        "{} – {}",
        crate::model::rfc3339(start),
        crate::model::rfc3339(start + secs)
    )
}

/// The digests the collected firings make, each as it is sent when its window ends (firings
/// in the order they came, windows in time order).
fn write_digests(
    rules: &RuleSet,
    collected: &[crate::model::DigestItem],
    format: TestFormat,
    out: &mut String,
) {
    use std::fmt::Write;
    let windows = crate::engine::digest::by_window(collected);
    for (w, items) in &windows {
        let end = w.window_start + w.window_secs;
        let Ok(d) = crate::engine::digest::seal(rules, w, items, items.len(), end) else {
            continue;
        };
        match format {
            TestFormat::Json => {
                let actions: Vec<Value> = d
                    .deliveries
                    .iter()
                    .map(|x| json!({"type": "webhook", "url": x.url, "body": serde_json::from_str::<Value>(&x.body).unwrap_or(Value::Null), "delivery_id": x.delivery_id}))
                    .chain(d.logs.iter().map(|l| json!({"type": "log", "level": format!("{:?}", l.level).to_lowercase(), "message": l.text})))
                    .collect();
                let _ = writeln!(
                    out,
                    "{}",
                    json!({"rule": w.rule_id, "digest": {"group": w.group, "window": {"start": crate::model::rfc3339(w.window_start), "end": crate::model::rfc3339(end)}, "count": items.len()}, "actions": actions})
                );
            }
            TestFormat::Text => {
                let _ = writeln!(
                    out,
                    "  digest of {} for {}{}: {} firing(s)",
                    w.rule_id,
                    window_text(w.window_start, w.window_secs),
                    if w.group == crate::model::ALL_CHATS {
                        String::new()
                    } else {
                        format!(", chat {}", w.group)
                    },
                    items.len()
                );
                for l in &d.logs {
                    let _ = writeln!(out, "      log {:?}: {}", l.level, l.text);
                }
                for x in &d.deliveries {
                    write_webhook(out, x);
                }
                for e in &d.errors {
                    let _ = writeln!(out, "    ! {}: {}", e.rule_id, e.error);
                }
            }
        }
    }
}

/// Evaluates the chat rules on the chat as of `now`, as one poll of a chat seen for the first
/// time would; `for:` is reported rather than waited for.
pub(super) fn evaluate_chat_rules(
    rules: &RuleSet,
    page: &Page,
    format: TestFormat,
    explain: bool,
    now: i64,
    out: &mut String,
) {
    use crate::engine::decide::{ChatRuleState, Decision, Memory, decide_chat};
    use crate::rules::chat::ChatCheck;
    use std::fmt::Write;
    if rules.chat_rules.is_empty() {
        return;
    }
    let chat_id = ChatId::from_gateway(&page.chat.id);
    // Pretend every held condition has held long enough, so the output shows what would be sent.
    let memory = Memory {
        chat_rules: rules
            .chat_rules
            .iter()
            .map(|r| {
                (
                    r.id.clone(),
                    ChatRuleState {
                        since: Some(now - r.hold_for.as_secs() as i64),
                        fired: false,
                    },
                )
            })
            .collect(),
        ..Memory::default()
    };
    let mut d = Decision::default();
    decide_chat(
        rules,
        &chat_id,
        &page.chat,
        &page.messages,
        &memory,
        now,
        &mut d,
    );
    if format == TestFormat::Text {
        let _ = writeln!(
            out,
            "  chat rules as of {}:",
            crate::outbox::envelope::rfc3339(now)
        );
    }
    for rule in &rules.chat_rules {
        let fired = d
            .chat_firings
            .iter()
            .find(|f| f.rule_id == rule.id)
            .map(|f| (&f.rule_id, &f.matched));
        match (format, fired) {
            (TestFormat::Json, Some((_, matched))) => {
                let actions: Vec<Value> = d
                    .deliveries
                    .iter()
                    .filter(|w| w.rule_id == rule.id)
                    .map(|w| json!({"type": "webhook", "url": w.url, "body": serde_json::from_str::<Value>(&w.body).unwrap_or(Value::Null), "delivery_id": w.delivery_id}))
                    .chain(d.logs.iter().filter(|l| l.rule_id == rule.id).map(|l| json!({"type": "log", "level": format!("{:?}", l.level).to_lowercase(), "message": l.text})))
                    .collect();
                let _ = writeln!(
                    out,
                    "{}",
                    json!({"rule": rule.id, "on": "chat", "chat": chat_id.as_str(), "matched": matched, "actions": actions})
                );
            }
            (TestFormat::Json, None) => {}
            (TestFormat::Text, Some((_, matched))) => {
                let wait = if rule.hold_for.is_zero() {
                    String::new()
                } else {
                    format!(
                        " (once it has held for {})",
                        crate::duration::format(rule.hold_for)
                    )
                };
                let _ = writeln!(out, "    ✓ {} fires{wait}, matched {matched}", rule.id);
                for w in d.deliveries.iter().filter(|w| w.rule_id == rule.id) {
                    write_webhook(out, w);
                }
                for l in d.logs.iter().filter(|l| l.rule_id == rule.id) {
                    let _ = writeln!(out, "      log {:?}: {}", l.level, l.text);
                }
            }
            (TestFormat::Text, None) => {
                match rule.check(&chat_id, &page.chat, &page.messages, now) {
                    ChatCheck::DoesNotHold(why) if explain => {
                        let _ = writeln!(out, "    ✗ {}: {why}", rule.id);
                    }
                    // Neither holds nor does not: a running timer would be left as it is.
                    ChatCheck::Unknown(why) if explain => {
                        let _ = writeln!(out, "    ? {}: {why}", rule.id);
                    }
                    ChatCheck::Unknown(_) => {
                        let _ = writeln!(out, "    ({} unknown: no unreadCount)", rule.id);
                    }
                    ChatCheck::Outside(why) => {
                        let _ = writeln!(out, "    ? {}: holds, but {why}", rule.id);
                    }
                    _ if !explain => {
                        let _ = writeln!(out, "    ({} does not hold)", rule.id);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// `1st`, `2nd`, `3rd`, `4th`, … `11th`, `21st`.
fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// One webhook as `test` prints it: method, url and headers (credentials masked), then the
/// exact body, pretty-printed when it is JSON.
fn write_webhook(out: &mut String, w: &crate::model::Delivery) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "      webhook POST {} (delivery_id {})",
        crate::outbox::ssrf::redacted(&w.url),
        w.delivery_id
    );
    for (k, v) in &w.headers {
        let _ = writeln!(
            out,
            "        {k}: {}",
            crate::outbox::ssrf::redacted_header(k, v)
        );
    }
    let pretty = serde_json::from_str::<Value>(&w.body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| w.body.clone());
    for line in pretty.lines() {
        let _ = writeln!(out, "        {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::model::{ChatId, parse_reply};
    use crate::rules::{compile_rules, parse_file};

    #[test]
    fn explain_says_when_the_reply_has_no_unread_count() {
        let file = parse_file(
            std::path::Path::new("r.yaml"),
            "id: pileup\non: chat\nmatch: { unread_count: { gte: 5 }, for: 10m }\nactions: [ { log: { message: x } } ]\n",
        )
        .unwrap();
        let (rules, d) = compile_rules(vec![file]);
        assert!(!d.has_errors(), "{d}");
        let watched = ChatId::parse("966500000000").unwrap();
        let run = |reply: &[u8], explain: bool| {
            let page = parse_reply(reply, &watched).unwrap();
            let mut out = String::new();
            evaluate_chat_rules(
                &rules,
                &page,
                TestFormat::Text,
                explain,
                1_700_000_000,
                &mut out,
            );
            out
        };
        let missing = br#"{"status":"success","chat":{"id":"966500000000@c.us"},"messages":[]}"#;
        let out = run(missing, true);
        assert!(
            out.contains(
                "? pileup: unread_count: unknown (the gateway's reply has no unreadCount)"
            ),
            "{out}"
        );
        assert!(!out.contains("fires"), "{out}");
        let out = run(missing, false);
        assert!(out.contains("(pileup unknown: no unreadCount)"), "{out}");
        let three = br#"{"status":"success","chat":{"id":"966500000000@c.us","unreadCount":3},"messages":[]}"#;
        let out = run(three, true);
        assert!(
            out.contains("✗ pileup: unread_count: 3 is not >= 5"),
            "{out}"
        );
        let seven = br#"{"status":"success","chat":{"id":"966500000000@c.us","unreadCount":7},"messages":[]}"#;
        assert!(run(seven, true).contains("✓ pileup fires"));
    }
}
