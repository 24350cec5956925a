//! The run history's entries: for each new message of a poll, which message rules were
//! candidates, which fired (or were muted, held by a cooldown, counted towards a threshold),
//! and for each candidate that did not fire the first condition that failed — the reasons
//! `test --explain` gives; and for a poll whose chat rules moved, their timers, firings and
//! resolutions. Pure: the poller stores what this returns in the poll's own commit.
//!
//! Cost: nothing is evaluated again. The poll's decision already says what fired and, asked
//! for reasons (`decide_poll(…, reasons: true)`), why each other candidate failed, from the
//! same single evaluation; a keyword-gated rule is a candidate only when one of its keywords
//! is in the message, so most rules of most messages only count here.

use super::decide::Decision;
use crate::gateway::model::{ChatId, Message};
use crate::model::{HistoryEntry, RuleTrace};
use crate::rules::RuleSet;

/// A reason is kept to this many bytes (an `any_of` of fifty alternatives says fifty things).
pub const MAX_WHY_BYTES: usize = 240;

fn trace(rule: &str, outcome: &str, why: Option<String>) -> RuleTrace {
    RuleTrace {
        rule: rule.to_string(),
        outcome: outcome.to_string(),
        why: why.map(shorten),
    }
}

/// `why` cut to [`MAX_WHY_BYTES`] at a character boundary, with `…` when cut.
fn shorten(mut why: String) -> String {
    if why.len() > MAX_WHY_BYTES {
        let mut end = MAX_WHY_BYTES;
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        why.truncate(end);
        why.push('…');
    }
    why
}

/// The history entries of one poll: one per new message (`new_msgs`, oldest first, as the
/// decision indexes them), then one for the chat rules if any of them moved. `d` must have
/// been decided with reasons.
pub fn entries(
    rules: &RuleSet,
    chat_id: &ChatId,
    new_msgs: &[&Message],
    d: &Decision,
    now_ms: i64,
) -> Vec<HistoryEntry> {
    let mut out = Vec::with_capacity(new_msgs.len() + 1);
    for (i, msg) in new_msgs.iter().enumerate() {
        let muted_by = |rule: &str| d.muted_by(rule, Some(i));
        let mut traces = Vec::new();
        let mut not_candidates = 0;
        for rule in &rules.rules {
            let id = rule.id.as_str();
            let on_this = |r: &str, at: usize| r == id && at == i;
            if d.firings
                .iter()
                .any(|f| on_this(&f.rule_id, f.message_index))
            {
                traces.push(match muted_by(id) {
                    Some(silence) => trace(id, "muted", Some(format!("silence {silence}"))),
                    None => trace(id, "fired", None),
                });
            } else if d
                .suppressed
                .iter()
                .any(|s| on_this(&s.rule_id, s.message_index))
            {
                traces.push(trace(
                    id,
                    "cooldown",
                    Some("matched, but its cooldown holds".into()),
                ));
            } else if d.stale.iter().any(|s| on_this(&s.rule_id, s.message_index)) {
                traces.push(trace(
                    id,
                    "stale",
                    Some("matched, but older than max_age".into()),
                ));
            } else if let Some(c) = d
                .counted
                .iter()
                .find(|c| on_this(&c.rule_id, c.message_index))
            {
                let why = format!(
                    "matched: {} of {} within {}",
                    c.hits,
                    c.count,
                    crate::duration::format(c.within)
                );
                traces.push(trace(id, "counted", Some(why)));
            } else if let Some(e) = d.errors.iter().find(|e| e.rule_id == id) {
                traces.push(trace(id, "error", Some(e.error.clone())));
            } else if let Some(n) = d
                .not_matched
                .iter()
                .find(|n| on_this(&n.rule_id, n.message_index))
            {
                traces.push(trace(id, "not_matched", Some(n.why.clone())));
            } else {
                not_candidates += 1;
            }
        }
        for s in &rules.script_rules {
            let id = s.id.as_str();
            if d.script_firings
                .iter()
                .any(|f| f.rule_id == id && f.message_index == Some(i))
            {
                traces.push(match muted_by(id) {
                    Some(silence) => trace(id, "muted", Some(format!("silence {silence}"))),
                    None => trace(id, "fired", None),
                });
            } else if d
                .script_quiet
                .iter()
                .any(|q| q.rule_id == id && q.message_index == i)
            {
                traces.push(trace(
                    id,
                    "quiet",
                    Some("the script asked for nothing".into()),
                ));
            }
        }
        out.push(HistoryEntry {
            id: 0,
            at_ms: now_ms,
            chat_id: chat_id.as_str().to_string(),
            message_id: Some(msg.serialized_id.clone()),
            kind: Some(msg.kind.clone()),
            from_me: msg.key.from_me,
            rules: traces,
            not_candidates,
        });
    }
    let mut chat = Vec::new();
    for f in &d.chat_firings {
        chat.push(match d.muted_by(&f.rule_id, None) {
            Some(silence) => trace(&f.rule_id, "muted", Some(format!("silence {silence}"))),
            None => trace(&f.rule_id, "fired", None),
        });
    }
    for r in &d.resolved {
        chat.push(trace(
            r,
            "resolved",
            Some("its condition stopped holding".into()),
        ));
    }
    for (rule, state) in &d.chat_rules {
        if chat.iter().any(|t| &t.rule == rule) {
            continue;
        }
        let why = match state.since {
            Some(since) => format!(
                "holds since {}{}",
                crate::model::rfc3339(since),
                if state.fired { ", fired" } else { "" }
            ),
            None => "does not hold".to_string(),
        };
        chat.push(trace(rule, "timer", Some(why)));
    }
    for e in &d.errors {
        let on_message = rules.rules.iter().any(|r| r.id == e.rule_id);
        if !on_message && !chat.iter().any(|t| t.rule == e.rule_id) {
            chat.push(trace(&e.rule_id, "error", Some(e.error.clone())));
        }
    }
    if !chat.is_empty() {
        out.push(HistoryEntry {
            id: 0,
            at_ms: now_ms,
            chat_id: chat_id.as_str().to_string(),
            message_id: None,
            kind: None,
            from_me: false,
            rules: chat,
            not_candidates: 0,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::step::decide_poll;
    use crate::gateway::model::{Chat, Page};
    use crate::model::{Memory, Silence};
    use crate::rules::{compile_rules, parse_file};
    use std::path::Path;

    const RULES: &str = "\
- id: bot
  match: { body: { any: [بوت] }, from_me: false }
  actions: [ { log: { message: bot } } ]
- id: bot-after-hours
  match: { body: { any: [بوت] }, from_me: true }
  actions: [ { log: { message: x } } ]
- id: refund
  match: { body: { any: [refund] } }
  actions: [ { log: { message: refund } } ]
- id: long
  match: { body: { regex: '.{40,}' } }
  actions: [ { log: { message: long } } ]
";

    fn poll(silences: &[Silence]) -> Vec<HistoryEntry> {
        let (rules, d) = compile_rules(vec![parse_file(Path::new("r.yaml"), RULES).unwrap()]);
        assert!(!d.has_errors(), "{d}");
        let chat_id = ChatId::from_gateway("966500000000@c.us");
        let page = Page {
            chat: Chat {
                id: chat_id.as_str().into(),
                ..Chat::default()
            },
            messages: vec![
                Message::text(chat_id.as_str(), "m1", 100, false, "أبغى البوت لو سمحت"),
                Message::text(chat_id.as_str(), "m2", 101, false, "hello"),
            ],
            ..Page::default()
        };
        let new: Vec<&Message> = page.messages.iter().collect();
        let decide = |reasons| {
            decide_poll(
                &rules,
                &chat_id,
                &page,
                &new,
                &Memory::default(),
                silences,
                200_000,
                reasons,
            )
        };
        let decision = decide(true);
        // Asking for reasons changes nothing the poll does.
        let plain = decide(false);
        assert!(plain.not_matched.is_empty());
        assert_eq!(
            crate::engine::decide::Decision {
                not_matched: Vec::new(),
                ..decision.clone()
            },
            plain
        );
        entries(&rules, &chat_id, &new, &decision, 200_000)
    }

    #[test]
    fn each_new_message_says_what_fired_and_why_each_other_candidate_did_not() {
        let e = poll(&[]);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            e[0].message_id.as_deref(),
            Some("false_966500000000@c.us_m1")
        );
        let outcome = |i: usize, rule: &str| {
            e[i].rules
                .iter()
                .find(|t| t.rule == rule)
                .map(|t| (t.outcome.clone(), t.why.clone().unwrap_or_default()))
        };
        // "البوت" holds "بوت" once normalized: the bot rule fired.
        assert_eq!(outcome(0, "bot").unwrap().0, "fired");
        // The same keyword made `bot-after-hours` a candidate; it failed on from_me.
        let (o, why) = outcome(0, "bot-after-hours").unwrap();
        assert_eq!(o, "not_matched");
        assert!(why.contains("from_me"), "{why}");
        // Ungated rules are always candidates, with their reason.
        let (o, why) = outcome(1, "long").unwrap();
        assert_eq!(o, "not_matched");
        assert!(why.contains("regex") || why.contains("body"), "{why}");
        // Keyword rules without their keyword are only counted.
        assert_eq!(outcome(1, "refund"), None);
        assert_eq!(e[1].not_candidates, 3);
        assert_eq!(e[0].not_candidates, 1);
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        let arabic = "لا توجد كلمة ".repeat(40);
        let cut = shorten(arabic.clone());
        assert!(cut.len() <= MAX_WHY_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…') && arabic.starts_with(cut.trim_end_matches('…')));
        assert_eq!(shorten("short".into()), "short");
    }

    #[test]
    fn a_muted_firing_is_recorded_as_muted_with_its_silence() {
        let s = Silence {
            id: 7,
            rule_id: Some("bot".into()),
            chat_id: None,
            until_ms: 10_000_000,
            reason: "migration".into(),
            created_at_ms: 0,
        };
        let e = poll(&[s]);
        let t = e[0].rules.iter().find(|t| t.rule == "bot").unwrap();
        assert_eq!(
            (t.outcome.as_str(), t.why.as_deref()),
            ("muted", Some("silence 7"))
        );
    }
}
