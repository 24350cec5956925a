//! Rules × new messages → what to do: deliveries to queue, log lines, cooldowns to store.
//! Pure: time and prior cooldowns are inputs.

use crate::gateway::model::{Chat, ChatId, Message};
use crate::outbox::envelope::{chat_json, delivery_id, message_envelope, message_json, rfc3339};
use crate::rules::raw::Level;
use crate::rules::{Action, BodyTemplate, RuleSet};
use serde_json::{Value, json};
use std::collections::HashMap;

/// One webhook to queue in the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub delivery_id: String,
    pub rule_id: String,
    pub chat_id: String,
    /// `true_ID` / `false_ID`.
    pub message_key: String,
    pub action_index: usize,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// One log line a rule asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub rule_id: String,
    pub level: Level,
    pub text: String,
}

/// Which rule fired on which message.
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
    pub deliveries: Vec<Delivery>,
    pub logs: Vec<LogLine>,
    /// (rule id, silent until unix seconds) to store for this chat.
    pub cooldowns: Vec<(String, i64)>,
    /// (rule id, message index) that matched but were too old when first seen.
    pub stale: Vec<(String, usize)>,
    /// (rule id, message index) suppressed by a cooldown.
    pub suppressed: Vec<(String, usize)>,
    /// Rendering failures: (rule id, message); the other actions still run.
    pub errors: Vec<(String, String)>,
}

/// Where `fired_at` comes from.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// The daemon: now, in unix seconds.
    Now(i64),
    /// `cartat-rules test`: the message's own time, so output is reproducible.
    MessageTime,
}

/// Evaluates every rule on each message (`messages` oldest first) of one chat.
pub fn decide(
    rules: &RuleSet,
    chat_id: &ChatId,
    chat: &Chat,
    messages: &[&Message],
    cooldowns: &HashMap<String, i64>,
    clock: Clock,
) -> Decision {
    let mut d = Decision::default();
    let mut silent_until: HashMap<&str, i64> =
        cooldowns.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    for (index, msg) in messages.iter().enumerate() {
        let prepared = rules.prepare(&msg.body);
        let now = match clock {
            Clock::Now(n) => n,
            Clock::MessageTime => msg.timestamp,
        };
        for (rule, mut matched) in rules.fired(chat_id, chat, msg, &prepared) {
            if let Some(max_age) = rule.max_age
                && now - msg.timestamp > max_age.as_secs() as i64
            {
                d.stale.push((rule.id.clone(), index));
                continue;
            }
            if silent_until
                .get(rule.id.as_str())
                .is_some_and(|until| msg.timestamp < *until)
            {
                d.suppressed.push((rule.id.clone(), index));
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
            let base_ctx = json!({
                "rule": { "id": rule.id, "description": rule.description },
                "chat": chat_json(chat_id, chat),
                "message": message_json(msg),
                "matched": matched_json,
                "now": rfc3339(now),
            });
            for (action_index, action) in rule.actions.iter().enumerate() {
                match action {
                    Action::Log { level, message } => {
                        match rules.templates.render(message, &base_ctx) {
                            Ok(text) => d.logs.push(LogLine {
                                rule_id: rule.id.clone(),
                                level: *level,
                                text,
                            }),
                            Err(e) => d
                                .errors
                                .push((rule.id.clone(), format!("log.message: {e}"))),
                        }
                    }
                    Action::Webhook { url, headers, body } => {
                        let id = delivery_id(&rule.id, chat_id, &msg.key, action_index);
                        let mut ctx = base_ctx.clone();
                        ctx["delivery_id"] = Value::String(id.clone());
                        let rendered = match body {
                            BodyTemplate::Envelope => Ok(message_envelope(
                                &rule.id,
                                &id,
                                chat_id,
                                chat,
                                msg,
                                matched_json.clone(),
                                now,
                            )
                            .to_string()),
                            BodyTemplate::Json(t) => {
                                rules.templates.render(t, &ctx).and_then(|s| {
                                    serde_json::from_str::<Value>(&s)
                                        .map(|v| v.to_string())
                                        .map_err(|e| format!("not valid JSON: {e}"))
                                })
                            }
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
                                rule_id: rule.id.clone(),
                                chat_id: chat_id.as_str().to_string(),
                                message_key: msg.key.compact(),
                                action_index,
                                url: url.clone(),
                                headers,
                                body,
                            }),
                            (Err(e), _) | (_, Err(e)) => {
                                d.errors.push((rule.id.clone(), format!("webhook: {e}")))
                            }
                        }
                    }
                }
            }
            d.firings.push(Firing {
                rule_id: rule.id.clone(),
                message_index: index,
                matched: matched_json,
            });
        }
    }
    d
}
