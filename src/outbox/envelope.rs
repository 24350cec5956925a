//! What a receiver gets: the deterministic `delivery_id` and the standard envelope (README, "The webhook").
//! Pure.

use crate::gateway::model::{Chat, ChatId, Message, MessageKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Bodies longer than this are cut in the envelope, with `"body_truncated": true`.
pub const MAX_ENVELOPE_BODY: usize = 16 * 1024;

/// The same rule on the same message (and action) always gives the same id. `chat` is the
/// chat's id, or a digest's group (`*` for all chats).
pub fn delivery_id(rule: &str, chat: &str, key: &MessageKey, action_index: usize) -> String {
    let mut h = Sha256::new();
    for part in [
        rule,
        chat,
        if key.from_me { "true" } else { "false" },
        key.id.as_str(),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.update(action_index.to_string().as_bytes());
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

pub use crate::model::{digest_json, rfc3339};

fn cut(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

/// The chat as templates and the envelope show it: its id as WhatsApp knows it and the
/// gateway account it was read from. `unread_count` is null when the gateway's reply did not
/// say (never a made-up 0, never an older reply's value).
pub fn chat_json(chat_id: &ChatId, chat: &Chat) -> Value {
    json!({
        "id": chat_id.bare(),
        "account": chat_id.account(),
        "name": chat.name,
        "is_group": chat.is_group,
        "unread_count": chat.unread_count,
    })
}

/// The message as templates and the envelope show it (body cut at 16 KiB).
pub fn message_json(msg: &Message) -> Value {
    let (body, truncated) = cut(&msg.body, MAX_ENVELOPE_BODY);
    let mut v = json!({
        "id": msg.serialized_id,
        "body": body,
        "type": msg.kind,
        "timestamp": msg.timestamp,
        "from": msg.from,
        "author": msg.author,
        "from_me": msg.key.from_me,
    });
    if truncated {
        v["body_truncated"] = Value::Bool(true);
    }
    v
}

/// The standard envelope for a message rule.
pub fn message_envelope(
    rule: &str,
    delivery_id: &str,
    chat_id: &ChatId,
    chat: &Chat,
    msg: &Message,
    matched: Value,
    fired_at: i64,
) -> Value {
    json!({
        "type": "rule.matched",
        "rule": rule,
        "delivery_id": delivery_id,
        "chat": chat_json(chat_id, chat),
        "message": message_json(msg),
        "matched": matched,
        "fired_at": rfc3339(fired_at),
    })
}

/// One firing as a digest lists it.
pub fn digest_item(chat: Value, message: Option<Value>, matched: Value, fired_at: i64) -> Value {
    json!({
        "chat": chat,
        "message": message,
        "matched": matched,
        "fired_at": rfc3339(fired_at),
    })
}

/// The standard envelope of a digest (`"type": "rule.digest"`).
pub fn digest_envelope(
    rule: &str,
    delivery_id: &str,
    chat: Option<Value>,
    digest: &Value,
    sent_at: i64,
) -> Value {
    json!({
        "type": "rule.digest",
        "rule": rule,
        "delivery_id": delivery_id,
        "chat": chat,
        "window": digest["window"],
        "count": digest["count"],
        "more": digest["more"],
        "items": digest["items"],
        "fired_at": rfc3339(sent_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> MessageKey {
        MessageKey {
            from_me: false,
            id: id.into(),
        }
    }

    #[test]
    fn delivery_ids_are_deterministic_and_distinct() {
        let chat = ChatId::parse("966500000000").unwrap();
        let a = delivery_id("bot", chat.as_str(), &key("A"), 0);
        assert_eq!(a, delivery_id("bot", chat.as_str(), &key("A"), 0));
        assert_eq!(a.len(), 32);
        let others = [
            delivery_id("bot2", chat.as_str(), &key("A"), 0),
            delivery_id("bot", chat.as_str(), &key("B"), 0),
            delivery_id("bot", chat.as_str(), &key("A"), 1),
            delivery_id(
                "bot",
                ChatId::parse("966500000001").unwrap().as_str(),
                &key("A"),
                0,
            ),
            delivery_id(
                "bot",
                chat.as_str(),
                &MessageKey {
                    from_me: true,
                    id: "A".into(),
                },
                0,
            ),
        ];
        for o in others {
            assert_ne!(a, o);
        }
    }

    #[test]
    fn rfc3339_in_utc() {
        assert_eq!(rfc3339(1_691_347_263), "2023-08-06T18:41:03Z");
    }

    #[test]
    fn long_bodies_are_cut_on_a_char_boundary() {
        let msg = Message {
            key: key("A"),
            serialized_id: "false_x_A".into(),
            body: "ب".repeat(10_000),
            kind: "chat".into(),
            timestamp: 1_700_000_000,
            from: None,
            to: None,
            author: None,
            has_media: false,
        };
        let v = message_json(&msg);
        assert_eq!(v["body_truncated"], true);
        assert!(v["body"].as_str().unwrap().len() <= MAX_ENVELOPE_BODY);
    }
}
