//! Silences: what a poll's decision leaves out while a silence mutes a rule in a chat. Pure.
//!
//! A silence mutes actions only: a muted rule's webhooks, log lines and digest entries of this
//! poll are dropped and each of its firings is recorded as muted (logged as `rule.muted` and
//! counted), while what the rule remembers moves as if it had fired — a cooldown starts, a
//! chat rule's alert counts as sent (it does not fire again for the same spell once the
//! silence ends), a threshold's count is spent. So the end of a silence sends nothing that
//! happened during it: it neither replays nor loses a decision, it only muted its actions.
//! A `rule.resolved` event is never muted: it closes an alert the receiver may hold open
//! (one sent before the silence began); one that closes an alert a silence muted is sent
//! all the same, and a receiver that never saw the alert can ignore it.

use super::decide::Decision;
use crate::model::Silence;

/// A firing a silence muted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Muted {
    pub rule_id: String,
    /// The silence that muted it.
    pub silence: i64,
    /// The index of the new message it fired on; None for a chat rule or a rule file on the chat.
    pub message_index: Option<usize>,
}

/// Removes from `d` the actions of every rule a silence in `silences` mutes in `chat` at
/// `now_ms`, and records their firings in `d.muted`.
pub fn mute(d: &mut Decision, chat: &str, silences: &[Silence], now_ms: i64) {
    if silences.is_empty() {
        return;
    }
    let silence_of = |rule: &str| {
        silences
            .iter()
            .find(|s| s.mutes(rule, chat, now_ms))
            .map(|s| s.id)
    };
    let mut muted_rules: Vec<(String, i64)> = Vec::new();
    let mut note = |rule: &str, index: Option<usize>, muted: &mut Vec<Muted>| {
        if let Some(silence) = silence_of(rule) {
            if !muted_rules.iter().any(|(r, _)| r == rule) {
                muted_rules.push((rule.to_string(), silence));
            }
            muted.push(Muted {
                rule_id: rule.to_string(),
                silence,
                message_index: index,
            });
        }
    };
    let mut muted = Vec::new();
    for f in &d.firings {
        note(&f.rule_id, Some(f.message_index), &mut muted);
    }
    for f in &d.chat_firings {
        note(&f.rule_id, None, &mut muted);
    }
    for f in &d.script_firings {
        note(&f.rule_id, f.message_index, &mut muted);
    }
    if muted_rules.is_empty() {
        return;
    }
    let is_muted = |rule: &str| muted_rules.iter().any(|(r, _)| r == rule);
    d.deliveries.retain(|x| !is_muted(&x.rule_id));
    d.logs.retain(|x| !is_muted(&x.rule_id));
    d.digest_items.retain(|x| !is_muted(&x.rule_id));
    d.muted.extend(muted);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decide::{ChatFiring, Firing, LogLine};
    use crate::model::Delivery;
    use crate::rules::raw::Level;

    fn silence(id: i64, rule: Option<&str>, chat: Option<&str>, until_ms: i64) -> Silence {
        Silence {
            id,
            rule_id: rule.map(Into::into),
            chat_id: chat.map(Into::into),
            until_ms,
            reason: "test".into(),
            created_at_ms: 0,
        }
    }

    fn decision() -> Decision {
        let delivery = |rule: &str| Delivery {
            delivery_id: format!("{rule}-1"),
            rule_id: rule.into(),
            chat_id: "c@c.us".into(),
            message_key: "false_m".into(),
            action_index: 0,
            url: "https://h/x".into(),
            headers: Vec::new(),
            body: "{}".into(),
        };
        let log = |rule: &str| LogLine {
            rule_id: rule.into(),
            message_key: "false_m".into(),
            level: Level::Info,
            text: "x".into(),
        };
        Decision {
            firings: vec![
                Firing {
                    rule_id: "bot".into(),
                    message_index: 0,
                    matched: serde_json::Value::Null,
                },
                Firing {
                    rule_id: "order".into(),
                    message_index: 1,
                    matched: serde_json::Value::Null,
                },
            ],
            chat_firings: vec![ChatFiring {
                rule_id: "sla".into(),
                matched: serde_json::Value::Null,
            }],
            deliveries: vec![delivery("bot"), delivery("order"), delivery("sla")],
            logs: vec![log("bot"), log("sla")],
            cooldowns: vec![("bot".into(), 99)],
            ..Decision::default()
        }
    }

    fn rules_of<T>(items: &[T], rule: impl Fn(&T) -> &str) -> Vec<String> {
        items.iter().map(|i| rule(i).to_string()).collect()
    }

    #[test]
    fn a_silence_on_a_chat_without_its_account_mutes_it_in_every_account() {
        let bare = silence(1, None, Some("966500000000@c.us"), 1_000);
        let sales = silence(2, None, Some("sales/966500000000@c.us"), 1_000);
        for (s, chat, want) in [
            (&bare, "966500000000@c.us", true),
            (&bare, "sales/966500000000@c.us", true),
            (&bare, "sales/966500000001@c.us", false),
            (&sales, "sales/966500000000@c.us", true),
            (&sales, "support/966500000000@c.us", false),
            (&sales, "966500000000@c.us", false),
        ] {
            assert_eq!(s.mutes("r", chat, 0), want, "{:?} in {chat}", s.chat_id);
        }
    }

    #[test]
    fn a_silence_mutes_its_rule_in_its_chat_until_it_ends_and_nothing_else() {
        let now = 1_000;
        // (silences, rules whose actions remain)
        let table: Vec<(Vec<Silence>, Vec<&str>)> = vec![
            (vec![], vec!["bot", "order", "sla"]),
            (
                vec![silence(1, Some("bot"), None, now + 1)],
                vec!["order", "sla"],
            ),
            (
                vec![silence(1, Some("bot"), Some("c@c.us"), now + 1)],
                vec!["order", "sla"],
            ),
            (
                vec![silence(1, Some("bot"), Some("d@c.us"), now + 1)],
                vec!["bot", "order", "sla"],
            ),
            (vec![silence(1, None, Some("c@c.us"), now + 1)], vec![]),
            (
                vec![silence(1, Some("bot"), None, now)],
                vec!["bot", "order", "sla"],
            ), // ended
            (
                vec![
                    silence(1, Some("sla"), None, now + 1),
                    silence(2, Some("gone"), None, now + 1),
                ],
                vec!["bot", "order"],
            ),
        ];
        for (silences, kept) in table {
            let mut d = decision();
            mute(&mut d, "c@c.us", &silences, now);
            assert_eq!(
                rules_of(&d.deliveries, |x| &x.rule_id),
                kept,
                "{silences:?}"
            );
            let muted: Vec<String> = rules_of(&d.muted, |m| &m.rule_id);
            for rule in ["bot", "order", "sla"] {
                assert_eq!(
                    muted.contains(&rule.to_string()),
                    !kept.contains(&rule),
                    "{rule} {silences:?}"
                );
            }
            // What the rule remembers moves as if it had fired.
            assert_eq!(d.cooldowns, [("bot".to_string(), 99)]);
            assert_eq!(d.firings.len(), 2);
            let logs = rules_of(&d.logs, |l| &l.rule_id);
            assert!(logs.iter().all(|r| kept.contains(&r.as_str())), "{logs:?}");
        }
    }

    #[test]
    fn a_muted_firing_names_its_silence_and_message() {
        let mut d = decision();
        mute(
            &mut d,
            "c@c.us",
            &[silence(7, Some("order"), None, 2_000)],
            1_000,
        );
        assert_eq!(
            d.muted,
            [Muted {
                rule_id: "order".into(),
                silence: 7,
                message_index: Some(1)
            }]
        );
    }
}
