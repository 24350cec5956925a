//! Rules × new messages (and chat rules × the chat) → what to do: deliveries to queue, log
//! lines, and the rule memory to store (cooldowns, threshold hits, chat-rule timers).
//! Pure: time and the prior memory are inputs.

use crate::gateway::model::{Chat, ChatId, Message, MessageKey};
use crate::outbox::envelope::{
    chat_json, delivery_id, digest_item, message_envelope, message_json, rfc3339,
};
use crate::rules::chat::{ChatCheck, newest};
use crate::rules::raw::Level;
use crate::rules::{Action, BodyTemplate, RuleSet};
use serde_json::{Value, json};
use std::collections::HashMap;

pub use crate::model::{ChatRuleState, Delivery, DigestItem, Memory};

/// One log line a rule asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub rule_id: String,
    /// What it fired on, as in [`Delivery::message_key`].
    pub message_key: String,
    pub level: Level,
    pub text: String,
}

/// Which message rule fired on which message.
#[derive(Clone, Debug, PartialEq)]
pub struct Firing {
    pub rule_id: String,
    pub message_index: usize,
    pub matched: Value,
}

/// Everything one poll of one chat decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub firings: Vec<Firing>,
    /// Chat rules that fired.
    pub chat_firings: Vec<ChatFiring>,
    pub deliveries: Vec<Delivery>,
    /// Firings of digest rules, collected instead of acted on.
    pub digest_items: Vec<DigestItem>,
    pub logs: Vec<LogLine>,
    /// (rule id, silent until unix seconds) to store for this chat.
    pub cooldowns: Vec<(String, i64)>,
    /// (rule id, match times) to store for this chat.
    pub thresholds: Vec<(String, Vec<i64>)>,
    /// (chat rule id, timer) to store for this chat.
    pub chat_rules: Vec<(String, ChatRuleState)>,
    /// (rule file id, state) to store for this chat.
    pub script_state: Vec<(String, serde_json::Map<String, Value>)>,
    /// Rule files that asked for something.
    pub script_firings: Vec<ScriptFiring>,
    /// Chat rules with `notify_resolved` whose condition stopped holding after they fired.
    pub resolved: Vec<String>,
    /// Firings whose actions a silence muted.
    pub muted: Vec<super::silence::Muted>,
    /// Rules that matched a message too old when first seen.
    pub stale: Vec<RuleOnMessage>,
    /// Rules that matched a message but were silenced by a cooldown.
    pub suppressed: Vec<RuleOnMessage>,
    /// Rules that matched a message counted towards a threshold not reached yet.
    pub counted: Vec<Counted>,
    /// Rule files that ran on a message and asked for nothing (no webhook, no log line).
    pub script_quiet: Vec<RuleOnMessage>,
    /// Rendering failures; the other actions still run.
    pub errors: Vec<RuleError>,
    /// Candidate rules that did not match a message, with the first condition that failed;
    /// only when asked for ([`decide_with_reasons`], for the run history).
    pub not_matched: Vec<NotMatched>,
}

impl Decision {
    /// The silence that muted `rule`'s firing on new message `at` (None: on the chat), if one did.
    pub fn muted_by(&self, rule: &str, at: Option<usize>) -> Option<i64> {
        self.muted
            .iter()
            .find(|m| m.rule_id == rule && m.message_index == at)
            .map(|m| m.silence)
    }
}

/// A candidate rule that did not match a message (its index among the new ones), and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotMatched {
    pub rule_id: String,
    pub message_index: usize,
    pub why: String,
}

/// A chat rule that fired, and what it matched.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatFiring {
    pub rule_id: String,
    pub matched: Value,
}

/// A rule file that asked for something, on a message (its index) or on the chat (`None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptFiring {
    pub rule_id: String,
    pub message_index: Option<usize>,
}

/// A message rule and the message (its index among the new ones) it matched without firing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleOnMessage {
    pub rule_id: String,
    pub message_index: usize,
}

/// A match counted towards a rule's threshold: `hits` of `count` within `within` so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    pub rule_id: String,
    pub message_index: usize,
    pub hits: usize,
    pub count: u32,
    pub within: std::time::Duration,
}

/// What failed in a rule's actions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    pub rule_id: String,
    pub error: String,
}

/// Where `fired_at` comes from.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// The daemon: now, in unix seconds.
    Now(i64),
    /// `cartat-rules test`: the message's own time, so output is reproducible.
    MessageTime,
}

/// [`decide_with`] with only cooldowns remembered.
pub fn decide(
    rules: &RuleSet,
    chat_id: &ChatId,
    chat: &Chat,
    messages: &[&Message],
    cooldowns: &HashMap<String, i64>,
    clock: Clock,
) -> Decision {
    let memory = Memory {
        cooldowns: cooldowns.clone(),
        ..Memory::default()
    };
    decide_with(rules, chat_id, chat, messages, &memory, clock)
}

/// Evaluates every message rule on each new message (`messages` oldest first) of one chat.
pub fn decide_with(
    rules: &RuleSet,
    chat_id: &ChatId,
    chat: &Chat,
    messages: &[&Message],
    memory: &Memory,
    clock: Clock,
) -> Decision {
    decide_with_reasons(rules, chat_id, chat, messages, memory, clock, false)
}

/// [`decide_with`]; `reasons`: also say why each candidate rule that did not match failed
/// ([`Decision::not_matched`]), in the same evaluation (the run history).
pub fn decide_with_reasons(
    rules: &RuleSet,
    chat_id: &ChatId,
    chat: &Chat,
    messages: &[&Message],
    memory: &Memory,
    clock: Clock,
    reasons: bool,
) -> Decision {
    let mut d = Decision::default();
    let mut silent_until: HashMap<&str, i64> = memory
        .cooldowns
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    let mut hits: HashMap<&str, Vec<i64>> = HashMap::new();
    for (index, msg) in messages.iter().enumerate() {
        let prepared = rules.prepare(&msg.body);
        let now = match clock {
            Clock::Now(n) => n,
            Clock::MessageTime => msg.timestamp,
        };
        // One of the two, without boxing: the hot path (no reasons) or the one with reasons.
        let mut fast = (!reasons).then(|| rules.fired(chat_id, chat, msg, &prepared));
        let mut slow = reasons.then(|| rules.fired_or_why(chat_id, chat, msg, &prepared));
        let verdicts = std::iter::from_fn(|| match (&mut fast, &mut slow) {
            (Some(f), _) => f.next().map(Ok),
            (_, Some(s)) => s.next(),
            _ => None,
        });
        for verdict in verdicts {
            let (rule, mut matched) = match verdict {
                Ok(fired) => fired,
                Err((i, why)) => {
                    d.not_matched.push(NotMatched {
                        rule_id: rules.rules[i].id.clone(),
                        message_index: index,
                        why,
                    });
                    continue;
                }
            };
            if let Some(max_age) = rule.max_age
                && now - msg.timestamp > max_age.as_secs() as i64
            {
                d.stale.push(RuleOnMessage {
                    rule_id: rule.id.clone(),
                    message_index: index,
                });
                continue;
            }
            if let Some((count, within)) = rule.threshold {
                let list = hits.entry(rule.id.as_str()).or_insert_with(|| {
                    memory.thresholds.get(&rule.id).cloned().unwrap_or_default()
                });
                let window_start = msg.timestamp - within.as_secs() as i64;
                list.retain(|t| *t > window_start);
                list.push(msg.timestamp);
                if (list.len() as u32) < count {
                    d.counted.push(Counted {
                        rule_id: rule.id.clone(),
                        message_index: index,
                        hits: list.len(),
                        count,
                        within,
                    });
                    continue;
                }
                list.clear();
            }
            if silent_until
                .get(rule.id.as_str())
                .is_some_and(|until| msg.timestamp < *until)
            {
                d.suppressed.push(RuleOnMessage {
                    rule_id: rule.id.clone(),
                    message_index: index,
                });
                continue;
            }
            if let Some(c) = rule.cooldown {
                let until = msg.timestamp + c.as_secs() as i64;
                silent_until.insert(&rule.id, until);
                d.cooldowns.retain(|(r, _)| *r != rule.id);
                d.cooldowns.push((rule.id.clone(), until));
            }
            for name in &rule.capture_names {
                matched.captures.entry(name.clone()).or_default();
            }
            let matched_json = matched.to_json();
            let ctx = json!({
                "rule": { "id": rule.id, "description": rule.description },
                "chat": chat_json(chat_id, chat),
                "message": message_json(msg),
                "matched": matched_json,
                "now": rfc3339(now),
                "resolved": false,
            });
            if let Some(digest) = rule.digest {
                d.digest_items.push(collect(
                    &rule.id,
                    digest,
                    chat_id,
                    &msg.key,
                    digest_item(
                        chat_json(chat_id, chat),
                        Some(message_json(msg)),
                        matched_json.clone(),
                        now,
                    ),
                    now,
                ));
            } else {
                let envelope = |id: &str| {
                    message_envelope(&rule.id, id, chat_id, chat, msg, matched_json.clone(), now)
                };
                run_actions(
                    rules,
                    &rule.id,
                    &rule.actions,
                    chat_id.as_str(),
                    &msg.key,
                    ctx,
                    &envelope,
                    &mut d,
                );
            }
            d.firings.push(Firing {
                rule_id: rule.id.clone(),
                message_index: index,
                matched: matched_json,
            });
        }
        // Rule files see user content, as YAML rules do by default (not notifications).
        let notification = crate::rules::NOTIFICATION_TYPES.contains(&msg.kind.as_str());
        for script in rules
            .script_rules
            .iter()
            .filter(|r| r.on_message && !notification)
        {
            let state = current_state(memory, &d, &script.id);
            let out =
                rules
                    .host
                    .on_message(script, message_json(msg), chat_json(chat_id, chat), &state);
            apply_script_output(&script.id, chat_id, &msg.key, Some(index), out, &mut d);
        }
    }
    for (rule, list) in hits {
        d.thresholds.push((rule.to_string(), list));
    }
    d.thresholds.sort();
    d
}

/// Evaluates every chat rule on one chat after a poll (`messages` = the page, any order).
/// Adds to `d`: firings, deliveries, logs, cooldowns and the chat-rule timers to store.
pub fn decide_chat(
    rules: &RuleSet,
    chat_id: &ChatId,
    chat: &Chat,
    messages: &[Message],
    memory: &Memory,
    now: i64,
    d: &mut Decision,
) {
    for rule in &rules.chat_rules {
        let prev = memory.chat_rules.get(&rule.id).copied().unwrap_or_default();
        let matched = match rule.check(chat_id, chat, messages, now) {
            // An empty page says nothing about the chat (a gateway hiccup): keep the timer
            // rather than re-arm and fire again under a new id.
            ChatCheck::DoesNotHold(_) if messages.is_empty() => continue,
            // The reply did not say how many messages are unread: the timer, the fired flag and
            // the cooldown stay exactly as they were — neither start, reset, re-arm nor fire.
            ChatCheck::Unknown(_) | ChatCheck::Outside(_) => continue,
            ChatCheck::DoesNotHold(_) => {
                if prev != ChatRuleState::default() {
                    d.chat_rules
                        .push((rule.id.clone(), ChatRuleState::default())); // re-arm
                }
                // It fired in the spell that just ended: say it is over, in the same commit
                // that re-arms it (so once, whatever crashes).
                if let (true, true, Some(since)) = (rule.notify_resolved, prev.fired, prev.since) {
                    resolve_chat_rule(rules, rule, chat_id, chat, messages, since, now, d);
                }
                continue;
            }
            ChatCheck::Holds { matched } => matched,
        };
        let since = prev.since.unwrap_or(now);
        let mut state = ChatRuleState {
            since: Some(since),
            fired: prev.fired,
        };
        let in_cooldown = memory
            .cooldowns
            .get(&rule.id)
            .is_some_and(|until| now < *until);
        if !state.fired && now - since >= rule.hold_for.as_secs() as i64 && !in_cooldown {
            state.fired = true;
            if let Some(c) = rule.cooldown {
                d.cooldowns
                    .push((rule.id.clone(), now + c.as_secs() as i64));
            }
            let mut matched = matched;
            matched["since"] = Value::String(rfc3339(since));
            let newest = newest(messages);
            let ctx = chat_rule_context(rule, chat_id, chat, newest, &matched, now, false);
            let envelope = |id: &str| {
                json!({
                    "type": "rule.matched",
                    "on": "chat",
                    "rule": rule.id,
                    "delivery_id": id,
                    "chat": chat_json(chat_id, chat),
                    "message": newest.map(message_json),
                    "matched": matched,
                    "fired_at": rfc3339(now),
                })
            };
            let key = chat_firing_key(since);
            if let Some(digest) = rule.digest {
                d.digest_items.push(collect(
                    &rule.id,
                    digest,
                    chat_id,
                    &key,
                    digest_item(
                        chat_json(chat_id, chat),
                        newest.map(message_json),
                        matched.clone(),
                        now,
                    ),
                    now,
                ));
            } else {
                run_actions(
                    rules,
                    &rule.id,
                    &rule.actions,
                    chat_id.as_str(),
                    &key,
                    ctx,
                    &envelope,
                    d,
                );
            }
            d.chat_firings.push(ChatFiring {
                rule_id: rule.id.clone(),
                matched: matched.clone(),
            });
        }
        if state != prev {
            d.chat_rules.push((rule.id.clone(), state));
        }
    }
    for script in rules.script_rules.iter().filter(|r| r.on_chat) {
        let state = current_state(memory, d, &script.id);
        let mut chat_value = chat_json(chat_id, chat);
        chat_value["newest"] = newest(messages).map(message_json).unwrap_or(Value::Null);
        let out = rules.host.on_chat(script, chat_value, &state);
        // One delivery id per poll: a rule file that should alert once keeps that in its state.
        let key = MessageKey {
            from_me: false,
            id: format!("poll@{now}"),
        };
        apply_script_output(&script.id, chat_id, &key, None, out, d);
    }
}

/// The key a chat rule's firing is known by: the moment its condition started to hold. The
/// same rule, chat and moment give the same delivery id, and its resolved event is that id
/// plus [`RESOLVED`] because both are made from this one key.
fn chat_firing_key(since: i64) -> MessageKey {
    MessageKey {
        from_me: false,
        id: format!("chat@{since}"),
    }
}

/// What a chat rule's templates see when it fires (`resolved`: or when it is resolved).
fn chat_rule_context(
    rule: &crate::rules::chat::ChatRule,
    chat_id: &ChatId,
    chat: &Chat,
    newest: Option<&Message>,
    matched: &Value,
    now: i64,
    resolved: bool,
) -> Value {
    json!({
        "rule": { "id": rule.id, "description": rule.description },
        "chat": chat_json(chat_id, chat),
        // Templates see a blank message when the chat has none (the envelope says null).
        "message": newest.map(message_json).unwrap_or_else(blank_message),
        "matched": matched,
        "now": rfc3339(now),
        "resolved": resolved,
    })
}

/// What a resolved event's `delivery_id` adds to the id of the firing it resolves.
pub const RESOLVED: &str = ":resolved";

/// A chat rule's `rule.resolved` event: its condition held since `since`, it fired, and now it
/// does not hold. Its webhooks go out once more with the resolved envelope (or their own body,
/// which sees `resolved: true`).
#[allow(clippy::too_many_arguments)]
fn resolve_chat_rule(
    rules: &RuleSet,
    rule: &crate::rules::chat::ChatRule,
    chat_id: &ChatId,
    chat: &Chat,
    messages: &[Message],
    since: i64,
    now: i64,
    d: &mut Decision,
) {
    let newest = newest(messages);
    let matched = json!({ "since": rfc3339(since) });
    let ctx = chat_rule_context(rule, chat_id, chat, newest, &matched, now, true);
    let envelope = |id: &str| {
        json!({
            "type": "rule.resolved",
            "on": "chat",
            "rule": rule.id,
            "delivery_id": id,
            "resolves": id.strip_suffix(RESOLVED).unwrap_or(id),
            "chat": chat_json(chat_id, chat),
            "message": newest.map(message_json),
            "matched": matched,
            "resolved_at": rfc3339(now),
        })
    };
    let key = chat_firing_key(since);
    run_actions_as(
        rules,
        &rule.id,
        &rule.actions,
        chat_id.as_str(),
        &key,
        ctx,
        &envelope,
        true,
        d,
    );
    d.resolved.push(rule.id.clone());
}

/// What chat-rule templates see as `message` when the chat has no message.
fn blank_message() -> Value {
    json!({"id": "", "body": "", "type": "", "timestamp": 0, "from": null, "author": null, "from_me": false})
}

/// The rule file's state for this chat, as this poll has left it so far.
fn current_state(memory: &Memory, d: &Decision, rule: &str) -> serde_json::Map<String, Value> {
    d.script_state
        .iter()
        .rev()
        .find(|(r, _)| r == rule)
        .map(|(_, s)| s.clone())
        .or_else(|| memory.script_state.get(rule).cloned())
        .unwrap_or_default()
}

/// Turns what a rule file asked for into deliveries, log lines and state.
fn apply_script_output(
    rule: &str,
    chat_id: &ChatId,
    key: &MessageKey,
    index: Option<usize>,
    out: crate::rules::rhai_file::Output,
    d: &mut Decision,
) {
    if let Some(e) = out.error {
        d.errors.push(RuleError {
            rule_id: rule.to_string(),
            error: e,
        });
        return;
    }
    if !out.webhooks.is_empty() || !out.logs.is_empty() {
        d.script_firings.push(ScriptFiring {
            rule_id: rule.to_string(),
            message_index: index,
        });
    } else if let Some(message_index) = index {
        d.script_quiet.push(RuleOnMessage {
            rule_id: rule.to_string(),
            message_index,
        });
    }
    for (level, text) in out.logs {
        d.logs.push(LogLine {
            rule_id: rule.to_string(),
            message_key: key.compact(),
            level,
            text,
        });
    }
    for (action_index, (url, body)) in out.webhooks.into_iter().enumerate() {
        d.deliveries.push(Delivery {
            delivery_id: delivery_id(rule, chat_id.as_str(), key, action_index),
            rule_id: rule.to_string(),
            chat_id: chat_id.as_str().to_string(),
            message_key: key.compact(),
            action_index,
            url,
            headers: Vec::new(),
            body: body.to_string(),
        });
    }
    if let Some(state) = out.state {
        d.script_state.retain(|(r, _)| r != rule);
        d.script_state.push((rule.to_string(), state));
    }
}

/// A digest rule's firing, to be stored with the poll and listed in the digest of the window
/// `now` falls in (the daemon's clock, or the message's time in `cartat-rules test`).
fn collect(
    rule_id: &str,
    digest: crate::rules::Digest,
    chat_id: &ChatId,
    key: &MessageKey,
    item: Value,
    now: i64,
) -> DigestItem {
    let window_secs = digest.every.as_secs().max(1) as i64;
    DigestItem {
        rule_id: rule_id.to_string(),
        group: if digest.by_chat {
            chat_id.as_str().to_string()
        } else {
            crate::model::ALL_CHATS.to_string()
        },
        window_start: now - now.rem_euclid(window_secs),
        window_secs,
        chat_id: chat_id.as_str().to_string(),
        item_key: key.compact(),
        fired_at: now,
        item: item.to_string(),
    }
}

/// Renders a fired rule's actions into log lines and deliveries. `chat` is the chat's id, or
/// a digest's group.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_actions(
    rules: &RuleSet,
    rule_id: &str,
    actions: &[Action],
    chat: &str,
    key: &MessageKey,
    base_ctx: Value,
    envelope: &dyn Fn(&str) -> Value,
    d: &mut Decision,
) {
    run_actions_as(
        rules, rule_id, actions, chat, key, base_ctx, envelope, false, d,
    )
}

/// [`run_actions`], or (`resolve`) a chat rule's `rule.resolved` event: its webhook actions
/// only, each under the id of the firing it resolves plus `:resolved`.
#[allow(clippy::too_many_arguments)]
fn run_actions_as(
    rules: &RuleSet,
    rule_id: &str,
    actions: &[Action],
    chat: &str,
    key: &MessageKey,
    base_ctx: Value,
    envelope: &dyn Fn(&str) -> Value,
    resolve: bool,
    d: &mut Decision,
) {
    for (action_index, action) in actions.iter().enumerate() {
        match action {
            Action::Log { .. } if resolve => {}
            Action::Log { level, message } => match rules.templates.render(message, &base_ctx) {
                Ok(text) => d.logs.push(LogLine {
                    rule_id: rule_id.to_string(),
                    message_key: key.compact(),
                    level: *level,
                    text,
                }),
                Err(e) => d.errors.push(RuleError {
                    rule_id: rule_id.to_string(),
                    error: format!("log.message: {e}"),
                }),
            },
            Action::Webhook { url, headers, body } => {
                let mut id = delivery_id(rule_id, chat, key, action_index);
                if resolve {
                    id.push_str(RESOLVED);
                }
                let mut ctx = base_ctx.clone();
                ctx["delivery_id"] = Value::String(id.clone());
                let rendered = match body {
                    BodyTemplate::Envelope => Ok(envelope(&id).to_string()),
                    BodyTemplate::Json(t) => rules.templates.render(t, &ctx).and_then(|s| {
                        serde_json::from_str::<Value>(&s)
                            .map(|v| v.to_string())
                            .map_err(|e| format!("not valid JSON: {e}"))
                    }),
                    BodyTemplate::Structured(s) => {
                        rules.render_structured(s, &ctx).map(|v| v.to_string())
                    }
                };
                let hdrs: Result<Vec<(String, String)>, String> = headers
                    .iter()
                    .map(|(k, t)| {
                        let v = rules.templates.render(t, &ctx)?;
                        if v.contains(['\r', '\n']) {
                            return Err(format!("header `{k}` rendered with CR or LF"));
                        }
                        Ok((k.clone(), v))
                    })
                    .collect();
                match (rendered, hdrs) {
                    (Ok(body), Ok(headers)) => d.deliveries.push(Delivery {
                        delivery_id: id,
                        rule_id: rule_id.to_string(),
                        chat_id: chat.to_string(),
                        message_key: key.compact(),
                        action_index,
                        url: url.clone(),
                        headers,
                        body,
                    }),
                    (Err(e), _) | (_, Err(e)) => d.errors.push(RuleError {
                        rule_id: rule_id.to_string(),
                        error: format!("webhook: {e}"),
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
