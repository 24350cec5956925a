//! Chat rules (`on: chat`): conditions on a chat as a whole, evaluated on every poll —
//! unread pile-ups and unanswered customers. Compiling them and checking whether a chat's
//! condition holds right now are pure; how long it has held (`for`) is the engine's state.

use super::raw::{RawCompare, RawMatch};
use super::{Action, Compiler, Cond};
use crate::diag::Diagnostic;
use crate::gateway::model::{Chat, ChatId, Message};
use crate::rules::NOTIFICATION_TYPES;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// `{ gte: 5 }` and friends; every bound given must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compare {
    pub gt: Option<i64>,
    pub gte: Option<i64>,
    pub lt: Option<i64>,
    pub lte: Option<i64>,
    pub eq: Option<i64>,
}

impl Compare {
    fn from_raw(r: &RawCompare) -> Compare {
        Compare {
            gt: r.gt,
            gte: r.gte,
            lt: r.lt,
            lte: r.lte,
            eq: r.eq,
        }
    }

    fn is_empty(&self) -> bool {
        self == &Compare::default()
    }

    pub fn holds(&self, v: i64) -> bool {
        self.gt.is_none_or(|b| v > b)
            && self.gte.is_none_or(|b| v >= b)
            && self.lt.is_none_or(|b| v < b)
            && self.lte.is_none_or(|b| v <= b)
            && self.eq.is_none_or(|b| v == b)
    }
}

impl std::fmt::Display for Compare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            ("> ", self.gt),
            (">= ", self.gte),
            ("< ", self.lt),
            ("<= ", self.lte),
            ("== ", self.eq),
        ]
        .iter()
        .filter_map(|(op, b)| b.map(|b| format!("{op}{b}")))
        .collect();
        f.write_str(&parts.join(" and "))
    }
}

/// One compiled chat rule.
#[derive(Debug)]
pub struct ChatRule {
    pub id: String,
    pub description: Option<String>,
    pub source: PathBuf,
    pub cooldown: Option<Duration>,
    /// Collect firings into digests instead of acting on each.
    pub digest: Option<super::Digest>,
    /// `notify_resolved: true`: a `rule.resolved` webhook when the condition stops holding
    /// after the rule fired.
    pub notify_resolved: bool,
    pub actions: Vec<Action>,
    pub unread_count: Option<Compare>,
    pub unanswered_for: Option<Duration>,
    /// The condition must hold continuously this long before the rule fires.
    pub hold_for: Duration,
    /// `is_group` / `chats` filters.
    pub(super) filter: Cond,
}

/// Whether a chat rule's condition holds now.
#[derive(Clone, Debug, PartialEq)]
pub enum ChatCheck {
    /// It holds; `matched` says which condition and since when (for `unanswered_for`,
    /// the time of the first unanswered message).
    Holds {
        matched: Value,
    },
    DoesNotHold(String),
    /// Whether it holds cannot be told from this reply (the gateway did not say how many
    /// messages are unread) and no other condition settles it: the rule's state for the chat
    /// must stay exactly as it was — no timer start or reset, no re-arm, no firing.
    Unknown(String),
    /// It holds, but outside the rule's `when`: as with `Unknown`, the state stays as it was
    /// (a customer waiting since 16:50 on Thursday is alerted once, on Sunday at 08:00, and a
    /// rule that fired before 17:00 does not fire again in the morning for the same wait).
    Outside(String),
}

/// The reason given when an `unread_count` rule meets a reply without `unreadCount`.
pub const UNREAD_UNKNOWN: &str = "unread_count: unknown (the gateway's reply has no unreadCount)";

/// The time of the first inbound user message after our last outbound one, if the newest
/// user message is inbound. Notifications are ignored.
pub fn waiting_since(messages: &[Message]) -> Option<i64> {
    let mut user: Vec<&Message> = messages
        .iter()
        .filter(|m| !NOTIFICATION_TYPES.contains(&m.kind.as_str()))
        .collect();
    user.sort_by(|a, b| (a.timestamp, &a.key).cmp(&(b.timestamp, &b.key)));
    let last_ours = user.iter().rposition(|m| m.key.from_me);
    let first_waiting = match last_ours {
        Some(i) => user.get(i + 1),
        None => user.first(),
    }?;
    Some(first_waiting.timestamp)
}

/// The chat's newest message (any type), for the envelope.
pub fn newest(messages: &[Message]) -> Option<&Message> {
    messages
        .iter()
        .max_by(|a, b| (a.timestamp, &a.key).cmp(&(b.timestamp, &b.key)))
}

impl ChatRule {
    /// Checks the condition against the chat and its latest page at `now` (unix seconds).
    pub fn check(
        &self,
        chat_id: &ChatId,
        chat: &Chat,
        messages: &[Message],
        now: i64,
    ) -> ChatCheck {
        let mut outside = None;
        if let Cond::All(filters) = &self.filter {
            for f in filters {
                match f {
                    Cond::IsGroup(want) if chat.is_group != *want => {
                        return ChatCheck::DoesNotHold(format!(
                            "is_group: the chat has is_group={}",
                            chat.is_group
                        ));
                    }
                    Cond::Chats(ids) if !ids.iter().any(|id| id.selects(chat_id)) => {
                        return ChatCheck::DoesNotHold(format!("chats: `{chat_id}` is not listed"));
                    }
                    // A chat rule asks about the time of the poll, once the rest holds (below).
                    Cond::When(w) if !w.holds(now) => outside = w.why_not(now),
                    _ => {}
                }
            }
        }
        let mut matched = serde_json::Map::new();
        // An unknown count settles nothing by itself: a condition that is definitely false
        // still makes the whole rule not hold (the conditions are all required), otherwise
        // the answer is unknown rather than holds.
        let mut unknown = None;
        if let Some(cmp) = &self.unread_count {
            match chat.unread_count {
                None => unknown = Some(UNREAD_UNKNOWN),
                Some(count) => {
                    // −1 means "marked unread": at least one.
                    let unread = if count < 0 { 1 } else { count };
                    if !cmp.holds(unread) {
                        return ChatCheck::DoesNotHold(format!(
                            "unread_count: {unread} is not {cmp}"
                        ));
                    }
                    matched.insert("unread_count".into(), json!(unread));
                }
            }
        }
        if let Some(d) = self.unanswered_for {
            let Some(since) = waiting_since(messages) else {
                return ChatCheck::DoesNotHold(
                    "unanswered_for: the newest message is ours (or there is none)".into(),
                );
            };
            let waited = now - since;
            if waited < d.as_secs() as i64 {
                return ChatCheck::DoesNotHold(format!(
                    "unanswered_for: waiting {waited}s, less than {}",
                    crate::duration::format(d)
                ));
            }
            matched.insert("unanswered_for".into(), json!(crate::duration::format(d)));
            matched.insert("waiting_since".into(), json!(crate::model::rfc3339(since)));
        }
        if let Some(why) = unknown {
            return ChatCheck::Unknown(why.into());
        }
        if let Some(why) = outside {
            return ChatCheck::Outside(why);
        }
        ChatCheck::Holds {
            matched: Value::Object(matched),
        }
    }
}

impl Compiler<'_> {
    /// Compiles the `match` of an `on: chat` rule; message conditions are refused.
    pub(super) fn chat_match(
        &mut self,
        m: RawMatch,
    ) -> Option<(Option<Compare>, Option<Duration>, Duration, Cond)> {
        let refuse = |c: &mut Self, name: &str, loc: Option<serde_saphyr::Location>| {
            if let Some(loc) = loc {
                c.d.push(Diagnostic::at(
                    c.path,
                    loc,
                    format!("`{name}` is a message condition; a chat rule (`on: chat`) accepts unread_count, unanswered_for, for, when, is_group and chats"),
                ));
            }
        };
        refuse(self, "type", m.types.as_ref().map(|t| t.referenced));
        refuse(self, "script", m.script.as_ref().map(|t| t.referenced));
        refuse(
            self,
            "threshold",
            m.threshold.as_ref().map(|t| t.referenced),
        );
        if m.from_me.is_some()
            || m.body.is_some()
            || m.any_of.is_some()
            || m.all_of.is_some()
            || m.not.is_some()
        {
            self.d.push(Diagnostic::error(
                self.path,
                0,
                0,
                "from_me, body, any_of, all_of and not are message conditions; a chat rule (`on: chat`) accepts unread_count, unanswered_for, for, is_group and chats",
            ));
        }
        let unread = m.unread_count.map(|c| {
            let cmp = Compare::from_raw(&c.value);
            if cmp.is_empty() {
                self.d.push(Diagnostic::at(
                    self.path,
                    c.referenced,
                    "unread_count: give at least one of gt, gte, lt, lte, eq",
                ));
            }
            cmp
        });
        let unanswered = m.unanswered_for.map(|d| d.value.0);
        if unread.is_none() && unanswered.is_none() {
            let loc = m.for_.as_ref().map(|f| f.referenced);
            match loc {
                Some(loc) => self.d.push(Diagnostic::at(
                    self.path,
                    loc,
                    "a chat rule needs unread_count or unanswered_for",
                )),
                None => self.d.push(Diagnostic::error(
                    self.path,
                    0,
                    0,
                    "a chat rule needs unread_count or unanswered_for",
                )),
            }
            return None;
        }
        let hold_for = m.for_.map(|f| f.value.0).unwrap_or(Duration::ZERO);
        let filter = self.cond(RawMatch {
            is_group: m.is_group,
            chats: m.chats,
            when: m.when,
            ..RawMatch::default()
        });
        Some((unread, unanswered, hold_for, filter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::model::MessageKey;

    fn m(id: &str, ts: i64, from_me: bool, kind: &str) -> Message {
        Message {
            key: MessageKey {
                from_me,
                id: id.into(),
            },
            serialized_id: id.into(),
            body: String::new(),
            kind: kind.into(),
            timestamp: ts,
            from: None,
            to: None,
            author: None,
            has_media: false,
        }
    }

    #[test]
    fn waiting_since_is_the_first_unanswered_inbound_message() {
        let cases: Vec<(Vec<Message>, Option<i64>)> = vec![
            (vec![], None),
            (vec![m("a", 100, false, "chat")], Some(100)),
            (
                vec![m("a", 100, false, "chat"), m("b", 110, false, "chat")],
                Some(100),
            ),
            (
                vec![
                    m("a", 100, false, "chat"),
                    m("r", 105, true, "chat"),
                    m("b", 110, false, "chat"),
                    m("c", 120, false, "chat"),
                ],
                Some(110),
            ),
            (
                vec![m("a", 100, false, "chat"), m("r", 105, true, "chat")],
                None,
            ),
            (
                vec![
                    m("r", 105, true, "chat"),
                    m("n", 106, false, "e2e_notification"),
                ],
                None,
            ),
            (
                vec![m("b", 110, false, "chat"), m("r", 105, true, "chat")],
                Some(110),
            ),
        ];
        for (i, (msgs, want)) in cases.into_iter().enumerate() {
            assert_eq!(waiting_since(&msgs), want, "case {i}");
        }
    }

    fn rule(yaml: &str) -> ChatRule {
        let file = crate::rules::parse_file(std::path::Path::new("r.yaml"), yaml).unwrap();
        let (mut set, d) = crate::rules::compile_rules(vec![file]);
        assert!(!d.has_errors(), "{d}");
        set.chat_rules.remove(0)
    }

    fn chat(unread: Option<i64>, is_group: bool) -> Chat {
        Chat {
            id: "966500000000@c.us".into(),
            is_group,
            unread_count: unread,
            ..Chat::default()
        }
    }

    #[test]
    fn an_unknown_unread_count_is_unknown_unless_another_condition_settles_it() {
        let unread = rule(
            "id: u\non: chat\nmatch: { unread_count: { gte: 5 } }\nactions: [ { log: { message: x } } ]\n",
        );
        let both = rule(
            "id: b\non: chat\nmatch: { unread_count: { gte: 5 }, unanswered_for: 15m }\nactions: [ { log: { message: x } } ]\n",
        );
        let people = rule(
            "id: p\non: chat\nmatch: { unread_count: { gte: 5 }, is_group: false }\nactions: [ { log: { message: x } } ]\n",
        );
        let sla = rule(
            "id: s\non: chat\nmatch: { unanswered_for: 15m }\nactions: [ { log: { message: x } } ]\n",
        );
        let id = ChatId::from_gateway("966500000000@c.us");
        let waiting = vec![m("q", 1000, false, "chat")];
        let answered = vec![m("q", 1000, false, "chat"), m("r", 1100, true, "chat")];
        let unknown = ChatCheck::Unknown(UNREAD_UNKNOWN.into());
        let holds = |v: Value| ChatCheck::Holds { matched: v };
        let no = |s: &str| ChatCheck::DoesNotHold(s.into());
        let now = 1000 + 900;
        let cases: Vec<(&str, &ChatRule, Chat, &[Message], ChatCheck)> = vec![
            (
                "unknown",
                &unread,
                chat(None, false),
                &waiting,
                unknown.clone(),
            ),
            (
                "unknown, no messages",
                &unread,
                chat(None, false),
                &[],
                unknown.clone(),
            ),
            (
                "7",
                &unread,
                chat(Some(7), false),
                &waiting,
                holds(json!({"unread_count": 7})),
            ),
            (
                "0",
                &unread,
                chat(Some(0), false),
                &waiting,
                no("unread_count: 0 is not >= 5"),
            ),
            (
                "-1 is one",
                &unread,
                chat(Some(-1), false),
                &waiting,
                no("unread_count: 1 is not >= 5"),
            ),
            (
                "unknown and still waiting",
                &both,
                chat(None, false),
                &waiting,
                unknown.clone(),
            ),
            (
                "unknown but answered: does not hold",
                &both,
                chat(None, false),
                &answered,
                no("unanswered_for: the newest message is ours (or there is none)"),
            ),
            (
                "unknown in a group: the filter settles it",
                &people,
                chat(None, true),
                &waiting,
                no("is_group: the chat has is_group=true"),
            ),
            (
                "no unread_count condition: unaffected",
                &sla,
                chat(None, false),
                &waiting,
                holds(json!({"unanswered_for": "15m", "waiting_since": "1970-01-01T00:16:40Z"})),
            ),
        ];
        for (name, r, c, msgs, want) in cases {
            assert_eq!(r.check(&id, &c, msgs, now), want, "{name}");
        }
        assert_eq!(
            UNREAD_UNKNOWN,
            "unread_count: unknown (the gateway's reply has no unreadCount)"
        );
    }

    #[test]
    fn compare_bounds() {
        let c = Compare {
            gte: Some(5),
            ..Compare::default()
        };
        assert!(c.holds(5) && c.holds(6) && !c.holds(4));
        let c = Compare {
            gt: Some(1),
            lt: Some(3),
            ..Compare::default()
        };
        assert!(c.holds(2) && !c.holds(3) && !c.holds(1));
        assert_eq!(c.to_string(), "> 1 and < 3");
    }
}
