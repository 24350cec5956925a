//! The `/chats/{id}` reply as cartat-rules understands it: tolerant parsing of serialized
//! whatsapp-web.js `Chat` and `Message` objects, and chat-id validation.
//!
//! Owns: turning bytes from the gateway into [`Page`]s, one bad message at a time never
//! failing the page. Must not: do I/O, log, or decide anything about rules.

use super::wire::{Jid, WireChat, WireMessage, WireReply};
use std::borrow::Cow;
use std::fmt;

pub use crate::model::MessageKey;

/// The earliest plausible message time (2010-01-01) and the latest (2100-01-01), in unix seconds.
const PLAUSIBLE_SECONDS: std::ops::Range<i64> = 1_262_304_000..4_102_444_800;

/// A watched chat's id in its serialized form (`966500000000@c.us`, `1203…@g.us`, `…@lid`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChatId(String);

/// Why a chat id was refused; the message says what the right form is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChatIdError(pub String);

const SERVERS: &[&str] = &[
    "c.us",
    "g.us",
    "lid",
    "s.whatsapp.net",
    "broadcast",
    "newsletter",
];

impl ChatId {
    /// Parses what an operator writes: a phone number with country code and no `+` or
    /// leading `00`/`0` (`966500000000`), or a full serialized id (`966500000000@c.us`).
    pub fn parse(text: &str) -> Result<ChatId, ChatIdError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(ChatIdError(
                "a chat id is empty; write a phone number with country code, e.g. 966500000000"
                    .into(),
            ));
        }
        if let Some((user, server)) = t.split_once('@') {
            if !SERVERS.contains(&server) {
                return Err(ChatIdError(format!(
                    "`{t}`: unknown server `@{server}`; expected one of @c.us, @g.us, @lid"
                )));
            }
            let ok = !user.is_empty()
                && user.chars().all(|c| c.is_ascii_digit() || c == '-')
                && user.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                return Err(ChatIdError(format!(
                    "`{t}`: the part before `@` must be digits (a phone number or a group id)"
                )));
            }
            return Ok(ChatId(t.to_string()));
        }
        let digits: String = t.chars().filter(|c| c.is_ascii_digit()).collect();
        let has_letters = t.chars().any(|c| c.is_alphabetic());
        if has_letters {
            return Err(ChatIdError(format!(
                "`{t}` is not a phone number: write digits only, with the country code, e.g. 966500000000"
            )));
        }
        let only_digits = digits.len() == t.len();
        let suggestion = if let Some(rest) = t.strip_prefix('+') {
            Some(
                rest.chars()
                    .filter(|c| c.is_ascii_digit())
                    .collect::<String>(),
            )
        } else if digits.starts_with("00") {
            Some(digits.trim_start_matches('0').to_string())
        } else if !only_digits {
            Some(digits.clone())
        } else {
            None
        };
        if let Some(s) = suggestion {
            let s = s.trim_start_matches('0').to_string();
            return Err(ChatIdError(format!(
                "`{t}` is not in the gateway's form: write the number with its country code, without `+`, `00`, spaces or dashes — did you mean {s}?"
            )));
        }
        if digits.starts_with('0') {
            return Err(ChatIdError(format!(
                "`{t}` starts with 0: write the number with its country code instead of the leading 0 (e.g. 966500000000)"
            )));
        }
        if !(7..=15).contains(&digits.len()) {
            return Err(ChatIdError(format!(
                "`{t}` has {} digits; a phone number with country code has 7 to 15",
                digits.len()
            )));
        }
        Ok(ChatId(format!("{digits}@c.us")))
    }

    /// Takes an id as the gateway reported it, without validation (for saved replies, whose
    /// ids may be masked by whoever shared them).
    pub fn from_gateway(id: &str) -> ChatId {
        if id.contains('@') {
            ChatId(id.to_string())
        } else {
            ChatId(format!("{id}@c.us"))
        }
    }

    /// The serialized id, e.g. `966500000000@c.us`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What goes in the URL: the bare number for a person (as the gateway documents), the
    /// full id for anything else.
    pub fn path_segment(&self) -> &str {
        match self.0.strip_suffix("@c.us") {
            Some(number) => number,
            None => &self.0,
        }
    }
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One message, as rules see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub key: MessageKey,
    /// `id._serialized` for display and the webhook; never trusted to be well formed.
    pub serialized_id: String,
    /// The top-level `body` (never `_data.body`, which holds a thumbnail for media); "" if absent.
    pub body: String,
    /// whatsapp-web.js message type (`chat`, `image`, `revoked`, `e2e_notification`, …).
    pub kind: String,
    /// Unix seconds, after the plausibility fallback of SPEC §1.
    pub timestamp: i64,
    pub from: Option<String>,
    pub to: Option<String>,
    pub author: Option<String>,
    pub has_media: bool,
}

impl Message {
    /// What makes an already-seen id an update when it changes (type and body).
    pub fn fingerprint(&self) -> u64 {
        // FNV-1a: stable across builds and platforms (it is stored).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.kind.bytes().chain([0u8]).chain(self.body.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

/// The chat object of a reply.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Chat {
    pub id: String,
    pub name: Option<String>,
    pub is_group: bool,
    /// `unreadCount`: −1 means "marked unread"; `None` means the reply did not say (no `chat`
    /// object, no `unreadCount`, or not a number) — unknown, never 0.
    pub unread_count: Option<i64>,
    pub timestamp: Option<i64>,
    pub archived: bool,
    pub pinned: bool,
    pub is_muted: bool,
}

/// A message that could not be used, and why (counted and logged once by the caller).
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    pub index: usize,
    pub reason: String,
    /// A stable identity of the raw message (a hash of its JSON), so it is logged and
    /// counted once however often it is polled.
    pub identity: u64,
}

/// One parsed reply.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Page {
    pub chat: Chat,
    pub messages: Vec<Message>,
    pub skipped: Vec<Skipped>,
}

/// Why a whole reply was unusable (an error for that poll of that chat only).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ReplyError {
    #[error("the reply is not JSON: {0}")]
    NotJson(String),
    #[error("the reply says status `{status}`{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    NotSuccess {
        status: String,
        message: Option<String>,
    },
    #[error("the reply has no `messages` array")]
    NoMessages,
}

/// Parses a `/chats/{id}` reply. `watched` fills in the chat id when the reply lacks one.
///
/// One streaming pass ([`super::wire`]): no JSON tree is built, and only the fields a rule can
/// read are copied out of the reply.
pub fn parse_reply(bytes: &[u8], watched: &ChatId) -> Result<Page, ReplyError> {
    // Invalid UTF-8 in one message's text must not fail the page: replace it. The strict check
    // first: it is several times faster than the lossy one on the (normal) valid reply.
    let text = match std::str::from_utf8(bytes) {
        Ok(valid) => Cow::Borrowed(valid),
        Err(_) => String::from_utf8_lossy(bytes),
    };
    match serde_json::from_str::<WireReply>(&text) {
        Ok(reply) => page_of(reply, &text, watched),
        // Half an emoji (a lone UTF-16 surrogate escape) must not fail the page either. The
        // repair runs only after a failure, so a good reply pays nothing for it.
        Err(e) => match repair_lone_surrogates(&text) {
            Cow::Owned(repaired) => {
                let reply = serde_json::from_str::<WireReply>(&repaired)
                    .map_err(|e| ReplyError::NotJson(e.to_string()))?;
                page_of(reply, &repaired, watched)
            }
            Cow::Borrowed(_) => Err(ReplyError::NotJson(e.to_string())),
        },
    }
}

/// Rewrites every lone UTF-16 surrogate escape inside a JSON string (`\ud800` not followed
/// by a `\udc00`–`\udfff`, or a `\udc00` without a leading one) to `\ufffd`, the
/// replacement character, as JavaScript shows such a string. Valid pairs, escaped backslashes
/// and everything outside strings are left alone; borrows when nothing is lone.
pub fn repair_lone_surrogates(json: &str) -> Cow<'_, str> {
    let b = json.as_bytes();
    let hex4 = |at: usize| -> Option<u32> {
        let digits = b.get(at..at + 4)?;
        digits
            .iter()
            .try_fold(0u32, |v, &d| Some(v * 16 + char::from(d).to_digit(16)?))
    };
    // The code unit of a `\uXXXX` escape at `at`, if there is one.
    let escape_at = |at: usize| -> Option<u32> {
        (b.get(at) == Some(&b'\\') && b.get(at + 1) == Some(&b'u'))
            .then(|| hex4(at + 2))
            .flatten()
    };
    let mut out = String::new();
    let mut copied = 0;
    let mut in_string = false;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if !in_string {
            in_string = c == b'"';
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_string = false;
                i += 1;
            }
            b'\\' => match escape_at(i) {
                Some(0xD800..=0xDBFF) if matches!(escape_at(i + 6), Some(0xDC00..=0xDFFF)) => {
                    i += 12;
                }
                Some(0xD800..=0xDFFF) => {
                    out.push_str(json.get(copied..i).unwrap_or_default());
                    out.push_str("\\ufffd");
                    i += 6;
                    copied = i;
                }
                Some(_) => i += 6,
                // Any other escape is two bytes (`\"`, `\\`, `\n`, …).
                None => i += 2,
            },
            _ => i += 1,
        }
    }
    if copied == 0 {
        return Cow::Borrowed(json);
    }
    out.push_str(json.get(copied..).unwrap_or_default());
    Cow::Owned(out)
}

/// A parsed reply as a page; `text` is the reply's JSON (read again only when a message must
/// be skipped, for its identity).
fn page_of(reply: WireReply<'_>, text: &str, watched: &ChatId) -> Result<Page, ReplyError> {
    let status = reply.status.as_str().unwrap_or("");
    if status != "success" {
        return Err(ReplyError::NotSuccess {
            status: if status.is_empty() {
                "(missing)".into()
            } else {
                status.to_string()
            },
            message: reply.message.as_str().map(str::to_string),
        });
    }
    let chat = chat_of(&reply.chat, watched);
    let list = reply.messages.0.ok_or(ReplyError::NoMessages)?;
    let mut page = Page {
        chat,
        messages: Vec::with_capacity(list.len()),
        skipped: Vec::new(),
    };
    for (index, raw) in list.iter().enumerate() {
        match message_of(raw) {
            Ok(m) => page.messages.push(m),
            Err(reason) => page.skipped.push(Skipped {
                index,
                reason,
                identity: 0,
            }),
        }
    }
    if !page.skipped.is_empty() {
        // The rare path: a page with a message to skip.
        let raw = super::wire::top_level_messages(text).unwrap_or_default();
        for s in &mut page.skipped {
            s.identity = fnv1a(raw.get(s.index).map_or("", |r| r.get()).as_bytes());
        }
    }
    Ok(page)
}

/// FNV-1a: stable across builds and platforms.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn chat_of(v: &WireChat<'_>, watched: &ChatId) -> Chat {
    if !v.is_object {
        return Chat {
            id: watched.as_str().to_string(),
            ..Chat::default()
        };
    }
    let id =
        v.id.to_owned_string()
            .unwrap_or_else(|| watched.as_str().to_string());
    Chat {
        is_group: v.is_group.as_bool().unwrap_or(id.ends_with("@g.us")),
        id,
        name: v.name.as_str().map(str::to_string),
        unread_count: v.unread_count.as_i64(),
        timestamp: v.timestamp.as_i64().and_then(plausible_seconds),
        archived: v.archived.as_bool().unwrap_or(false),
        pinned: v.pinned.as_bool().unwrap_or(false),
        is_muted: v.is_muted.as_bool().unwrap_or(false),
    }
}

/// Seconds, milliseconds, or nothing (an implausible value such as the documented 11-digit typo).
pub fn plausible_seconds(v: i64) -> Option<i64> {
    if PLAUSIBLE_SECONDS.contains(&v) {
        Some(v)
    } else if PLAUSIBLE_SECONDS.contains(&(v / 1000)) {
        Some(v / 1000)
    } else {
        None
    }
}

fn message_of(v: &WireMessage<'_>) -> Result<Message, String> {
    if !v.is_object {
        return Err("not a JSON object".into());
    }
    let data = &v.data;
    let id = if v.id.is_object {
        &v.id
    } else if data.id.is_object {
        &data.id
    } else {
        return Err("no `id` object (not a whatsapp-web.js message)".to_string());
    };
    let from_me = id
        .from_me
        .as_bool()
        .ok_or_else(|| "`id.fromMe` missing".to_string())?;
    let msg_id = id
        .id
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| "`id.id` missing".to_string())?
        .to_string();
    let serialized_id = id
        .serialized
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "{from_me}_{}_{msg_id}",
                id.remote.0.as_deref().unwrap_or_default()
            )
        });
    let top_ts = v.timestamp.as_i64().and_then(plausible_seconds);
    let data_ts = data.t.as_i64().and_then(plausible_seconds);
    // whatsapp-web.js copies `timestamp` from `_data.t`; when both are plausible but differ,
    // one is a typo, and the raw `_data.t` is the source.
    let timestamp = data_ts
        .or(top_ts)
        .ok_or_else(|| "no plausible `timestamp` or `_data.t`".to_string())?;
    let kind = v
        .kind
        .as_str()
        .or_else(|| data.kind.as_str())
        .unwrap_or("chat")
        .to_string();
    let body = v.body.as_str().unwrap_or("").to_string();
    let jid =
        |top: &Jid<'_>, data: &Jid<'_>| top.to_owned_string().or_else(|| data.to_owned_string());
    Ok(Message {
        key: MessageKey {
            from_me,
            id: msg_id,
        },
        serialized_id,
        body,
        kind,
        timestamp,
        from: jid(&v.from, &data.from),
        to: jid(&v.to, &data.to),
        author: jid(&v.author, &data.author),
        has_media: v.has_media.as_bool().unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parser as it was before the streaming one: through a `serde_json::Value` tree. Kept
    /// as the oracle the streaming parser must agree with.
    mod dom {
        use super::super::{
            Chat, ChatId, Message, MessageKey, Page, ReplyError, Skipped, fnv1a, plausible_seconds,
        };
        use serde_json::Value;

        pub(super) fn parse_reply_value(
            root: &Value,
            watched: &ChatId,
        ) -> Result<Page, ReplyError> {
            let status = root.get("status").and_then(Value::as_str).unwrap_or("");
            if status != "success" {
                return Err(ReplyError::NotSuccess {
                    status: if status.is_empty() {
                        "(missing)".into()
                    } else {
                        status.to_string()
                    },
                    message: root
                        .get("message")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                });
            }
            let chat = parse_chat(root.get("chat"), watched);
            let list = root
                .get("messages")
                .and_then(Value::as_array)
                .ok_or(ReplyError::NoMessages)?;
            let mut page = Page {
                chat,
                messages: Vec::with_capacity(list.len()),
                skipped: Vec::new(),
            };
            for (index, raw) in list.iter().enumerate() {
                match parse_message(raw) {
                    Ok(m) => page.messages.push(m),
                    Err(reason) => page.skipped.push(Skipped {
                        index,
                        reason,
                        identity: fnv1a(raw.to_string().as_bytes()),
                    }),
                }
            }
            Ok(page)
        }

        fn parse_chat(v: Option<&Value>, watched: &ChatId) -> Chat {
            let Some(v) = v.filter(|v| v.is_object()) else {
                return Chat {
                    id: watched.as_str().to_string(),
                    ..Chat::default()
                };
            };
            let id = jid(v.get("id")).unwrap_or_else(|| watched.as_str().to_string());
            Chat {
                is_group: v
                    .get("isGroup")
                    .and_then(Value::as_bool)
                    .unwrap_or(id.ends_with("@g.us")),
                id,
                name: v.get("name").and_then(Value::as_str).map(str::to_string),
                unread_count: v.get("unreadCount").and_then(as_i64),
                timestamp: v
                    .get("timestamp")
                    .and_then(as_i64)
                    .and_then(plausible_seconds),
                archived: flag(v, "archived"),
                pinned: flag(v, "pinned"),
                is_muted: flag(v, "isMuted"),
            }
        }

        fn flag(v: &Value, key: &str) -> bool {
            v.get(key).and_then(Value::as_bool).unwrap_or(false)
        }

        /// A JID field: a string, or an object with `_serialized` (or `user` + `server`).
        fn jid(v: Option<&Value>) -> Option<String> {
            match v? {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Object(o) => match o.get("_serialized").and_then(Value::as_str) {
                    Some(s) if !s.is_empty() => Some(s.to_string()),
                    _ => {
                        let user = o.get("user")?.as_str()?;
                        let server = o.get("server")?.as_str()?;
                        Some(format!("{user}@{server}"))
                    }
                },
                _ => None,
            }
        }

        fn as_i64(v: &Value) -> Option<i64> {
            match v {
                Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
        }

        fn parse_message(v: &Value) -> Result<Message, String> {
            if !v.is_object() {
                return Err("not a JSON object".into());
            }
            let data = v.get("_data").filter(|d| d.is_object());
            let id = v
                .get("id")
                .filter(|i| i.is_object())
                .or_else(|| data.and_then(|d| d.get("id")).filter(|i| i.is_object()))
                .ok_or_else(|| "no `id` object (not a whatsapp-web.js message)".to_string())?;
            let from_me = id
                .get("fromMe")
                .and_then(Value::as_bool)
                .ok_or_else(|| "`id.fromMe` missing".to_string())?;
            let msg_id = id
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| "`id.id` missing".to_string())?
                .to_string();
            let serialized_id = id
                .get("_serialized")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!(
                        "{from_me}_{}_{msg_id}",
                        jid(id.get("remote")).unwrap_or_default()
                    )
                });
            let top_ts = v
                .get("timestamp")
                .and_then(as_i64)
                .and_then(plausible_seconds);
            let data_ts = data
                .and_then(|d| d.get("t"))
                .and_then(as_i64)
                .and_then(plausible_seconds);
            // whatsapp-web.js copies `timestamp` from `_data.t`; when both are plausible but differ,
            // one is a typo, and the raw `_data.t` is the source.
            let timestamp = data_ts
                .or(top_ts)
                .ok_or_else(|| "no plausible `timestamp` or `_data.t`".to_string())?;
            let kind = v
                .get("type")
                .and_then(Value::as_str)
                .or_else(|| data.and_then(|d| d.get("type")).and_then(Value::as_str))
                .unwrap_or("chat")
                .to_string();
            let body = v
                .get("body")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            Ok(Message {
                key: MessageKey {
                    from_me,
                    id: msg_id,
                },
                serialized_id,
                body,
                kind,
                timestamp,
                from: jid(v.get("from")).or_else(|| jid(data.and_then(|d| d.get("from")))),
                to: jid(v.get("to")).or_else(|| jid(data.and_then(|d| d.get("to")))),
                author: jid(v.get("author")).or_else(|| jid(data.and_then(|d| d.get("author")))),
                has_media: v.get("hasMedia").and_then(Value::as_bool).unwrap_or(false),
            })
        }
    }

    #[test]
    fn chat_ids_in_every_accepted_form() {
        let ok = [
            ("966500000000", "966500000000@c.us", "966500000000"),
            (" 966500000000 ", "966500000000@c.us", "966500000000"),
            ("966500000000@c.us", "966500000000@c.us", "966500000000"),
            (
                "120363012345678901@g.us",
                "120363012345678901@g.us",
                "120363012345678901@g.us",
            ),
            (
                "900000000000001@lid",
                "900000000000001@lid",
                "900000000000001@lid",
            ),
            (
                "966500000000-1600000000@g.us",
                "966500000000-1600000000@g.us",
                "966500000000-1600000000@g.us",
            ),
        ];
        for (text, id, seg) in ok {
            let c = ChatId::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.as_str(), id);
            assert_eq!(c.path_segment(), seg);
        }
    }

    #[test]
    fn chat_id_errors_say_what_the_right_form_is() {
        let cases = [
            ("+966500000000", "did you mean 966500000000?"),
            ("00966500000000", "did you mean 966500000000?"),
            ("966 50 000 0000", "did you mean 966500000000?"),
            ("+966 50-000-0000", "did you mean 966500000000?"),
            ("0500000000", "starts with 0"),
            ("abc", "not a phone number"),
            ("9665000O0000", "not a phone number"),
            ("12345", "7 to 15"),
            ("966500000000@x.us", "unknown server"),
            ("abc@c.us", "must be digits"),
            ("", "empty"),
        ];
        for (text, want) in cases {
            let err = ChatId::parse(text).expect_err(text).0;
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn plausible_timestamps() {
        assert_eq!(plausible_seconds(1_691_347_263), Some(1_691_347_263));
        assert_eq!(plausible_seconds(1_691_347_263_123), Some(1_691_347_263));
        assert_eq!(
            plausible_seconds(16_983_472_633),
            None,
            "the documented 11-digit typo"
        );
        assert_eq!(plausible_seconds(0), None);
        assert_eq!(plausible_seconds(-5), None);
    }

    fn watched() -> ChatId {
        ChatId::parse("966500000000").unwrap()
    }

    #[test]
    fn documented_sample_falls_back_to_data_t() {
        let doc = include_str!("../../tests/data/upstream_sample.json");
        let page = parse_reply(doc.as_bytes(), &watched()).unwrap();
        assert_eq!(page.messages.len(), 1);
        let m = &page.messages[0];
        assert_eq!(
            m.timestamp, 1_691_347_263,
            "11-digit timestamp replaced by _data.t"
        );
        assert_eq!(m.body, "بوت");
        assert_eq!(
            m.key,
            MessageKey {
                from_me: false,
                id: "3A1F984EA23D284164C4".into()
            }
        );
        assert_eq!(page.chat.name.as_deref(), Some("Jhone Due"));
        assert!(!page.chat.is_group);
    }

    #[test]
    fn a_plausible_but_wrong_top_level_timestamp_loses_to_data_t() {
        let body = br#"{"status":"success","messages":[{"id":{"fromMe":false,"id":"A"},"timestamp":4000000000,"_data":{"t":1700000000},"body":"x"}]}"#;
        assert_eq!(
            parse_reply(body, &watched()).unwrap().messages[0].timestamp,
            1_700_000_000
        );
        let only_top = br#"{"status":"success","messages":[{"id":{"fromMe":false,"id":"A"},"timestamp":1700000001,"body":"x"}]}"#;
        assert_eq!(
            parse_reply(only_top, &watched()).unwrap().messages[0].timestamp,
            1_700_000_001
        );
    }

    #[test]
    fn not_success_and_not_json_are_errors() {
        let w = watched();
        assert!(matches!(
            parse_reply(b"<html>", &w),
            Err(ReplyError::NotJson(_))
        ));
        let e = parse_reply(br#"{"status":"error","message":"chat not found"}"#, &w).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the reply says status `error`: chat not found"
        );
        assert!(matches!(
            parse_reply(br#"{"status":"success"}"#, &w),
            Err(ReplyError::NoMessages)
        ));
    }

    #[test]
    fn one_bad_message_never_fails_the_page() {
        let body = br#"{"status":"success","chat":{"id":"966500000000@c.us"},"messages":[
            42,
            {"id":"false_x@c.us_ABC","body":"string id"},
            {"id":{"fromMe":false,"id":"OK1"},"timestamp":1700000000,"body":"hi","type":"chat"},
            {"id":{"fromMe":false,"id":"NOTS"},"timestamp":"soon","body":"bad time"}
        ]}"#;
        let page = parse_reply(body, &watched()).unwrap();
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.messages[0].key.id, "OK1");
        assert_eq!(
            page.skipped.iter().map(|s| s.index).collect::<Vec<_>>(),
            vec![0, 1, 3]
        );
    }

    #[test]
    fn invalid_utf8_in_a_body_does_not_fail_the_page() {
        let mut body = br#"{"status":"success","messages":[{"id":{"fromMe":false,"id":"U1"},"timestamp":1700000000,"body":"bad "#.to_vec();
        body.extend_from_slice(&[0xff, 0xfe]);
        body.extend_from_slice(br#" bytes","type":"chat"}]}"#);
        let page = parse_reply(&body, &watched()).unwrap();
        assert_eq!(page.messages.len(), 1);
        assert!(page.messages[0].body.starts_with("bad "));
    }

    #[test]
    fn deep_nesting_costs_the_message_not_the_page() {
        // Skipped values are skipped without recursion, so no depth overflows the stack.
        let body = format!(
            r#"{{"status":"success","messages":[{}1{},{{"id":{{"fromMe":false,"id":"D"}},"timestamp":1700000000,"_data":{{"x":{}2{}}}}}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000),
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let page = parse_reply(body.as_bytes(), &watched()).unwrap();
        assert_eq!(page.skipped.len(), 1);
        assert_eq!(page.skipped[0].reason, "not a JSON object");
        assert_eq!(
            page.messages.len(),
            1,
            "a deep field it does not read is skipped"
        );
        // Deep under a field that is read: the field reads as absent.
        let deep_chat = format!(
            r#"{{"status":"success","chat":{{"id":{}1{}}},"messages":[]}}"#,
            "{\"a\":".repeat(100_000),
            "}".repeat(100_000)
        );
        let page = parse_reply(deep_chat.as_bytes(), &watched()).unwrap();
        assert_eq!(page.chat.id, watched().as_str());
    }

    #[test]
    fn a_skipped_message_keeps_its_identity_across_pages() {
        let a = br#"{"status":"success","messages":[{"id":"bad"},{"id":{"fromMe":false,"id":"OK1"},"timestamp":1700000000}]}"#;
        let b = br#"{"status":"success","messages":[{"id":{"fromMe":false,"id":"OK0"},"timestamp":1700000000},{"id":"bad"}]}"#;
        let (pa, pb) = (
            parse_reply(a, &watched()).unwrap(),
            parse_reply(b, &watched()).unwrap(),
        );
        assert_eq!(pa.skipped[0].identity, pb.skipped[0].identity);
        assert_ne!(pa.skipped[0].index, pb.skipped[0].index);
    }

    #[test]
    fn unread_count_is_kept_and_unknown_when_the_reply_does_not_say() {
        let cases: [(&[u8], Option<i64>); 7] = [
            (
                br#"{"status":"success","chat":{"id":{"_serialized":"966500000000@c.us"},"unreadCount":-1},"messages":[]}"#,
                Some(-1),
            ),
            (
                br#"{"status":"success","chat":{"id":"966500000000@c.us","unreadCount":7},"messages":[]}"#,
                Some(7),
            ),
            (
                br#"{"status":"success","chat":{"id":"966500000000@c.us","unreadCount":0},"messages":[]}"#,
                Some(0),
            ),
            (
                br#"{"status":"success","chat":{"id":"966500000000@c.us"},"messages":[]}"#,
                None,
            ),
            (
                br#"{"status":"success","chat":{"id":"966500000000@c.us","unreadCount":null},"messages":[]}"#,
                None,
            ),
            (
                br#"{"status":"success","chat":{"id":"966500000000@c.us","unreadCount":"many"},"messages":[]}"#,
                None,
            ),
            (br#"{"status":"success","messages":[]}"#, None),
        ];
        for (body, want) in cases {
            let got = parse_reply(body, &watched()).unwrap().chat.unread_count;
            assert_eq!(got, want, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn fingerprint_changes_with_type_or_body() {
        let body = br#"{"status":"success","messages":[{"id":{"fromMe":false,"id":"A"},"timestamp":1700000000,"body":"x","type":"chat"}]}"#;
        let m = parse_reply(body, &watched()).unwrap().messages.remove(0);
        let mut revoked = m.clone();
        revoked.kind = "revoked".into();
        revoked.body.clear();
        let mut edited = m.clone();
        edited.body = "y".into();
        assert_ne!(m.fingerprint(), revoked.fingerprint());
        assert_ne!(m.fingerprint(), edited.fingerprint());
        assert_eq!(m.fingerprint(), m.clone().fingerprint());
    }

    #[test]
    fn lone_surrogates_become_the_replacement_character() {
        let cases: &[(&str, &str)] = &[
            (r#""\ud800""#, r#""\ufffd""#),                   // lone leading
            (r#""\udc00""#, r#""\ufffd""#),                   // lone trailing
            (r#""ab\uD83D""#, r#""ab\ufffd""#),               // leading at the end, upper case
            (r#""\ud800\u0041""#, r#""\ufffd\u0041""#),       // leading, then no trailing
            (r#""\ud83d\ude00""#, r#""\ud83d\ude00""#),       // a valid pair: 😀
            (r#""\ude00\ud83d""#, r#""\ufffd\ufffd""#),       // a reversed pair
            (r#""\\ud800""#, r#""\\ud800""#),                 // an escaped backslash: text
            (r#""\\\ud800""#, r#""\\\ufffd""#),               // backslash, then a lone one
            (r#"{"\ud800":1}"#, r#"{"\ufffd":1}"#),           // in a key
            (r#""\ud800 x \udbff""#, r#""\ufffd x \ufffd""#), // two in one string
            (r#""\"\ud800""#, r#""\"\ufffd""#),               // after an escaped quote
            (r#"[1, "ok", true]"#, r#"[1, "ok", true]"#),     // nothing to do
            (r#"\ud800 "x""#, r#"\ud800 "x""#),               // outside strings: untouched
            (r#""\ud8""#, r#""\ud8""#),                       // a short escape: left to serde
        ];
        for &(input, expected) in cases {
            let got = repair_lone_surrogates(input);
            assert_eq!(got, expected, "{input}");
            assert_eq!(
                matches!(got, Cow::Borrowed(_)),
                input == expected,
                "borrows exactly when nothing changes: {input}"
            );
        }
    }

    #[test]
    fn a_lone_surrogate_costs_one_character_not_the_page() {
        let body = br#"{"status":"success","chat":{"id":"966500000000@c.us","unreadCount":2},"messages":[
            {"id":{"fromMe":false,"id":"A","_serialized":"false_966500000000@c.us_A"},"timestamp":1700000000,"body":"bot \ud83d","type":"chat"},
            {"id":{"fromMe":false,"id":"B","_serialized":"false_966500000000@c.us_B"},"timestamp":1700000001,"body":"bot \ud83d\ude00","type":"chat"}]}"#;
        let page = parse_reply(body, &watched()).unwrap();
        let bodies: Vec<&str> = page.messages.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["bot \u{FFFD}", "bot 😀"]);
        assert!(page.skipped.is_empty());
    }

    /// Both parsers on one reply text; skipped messages compare by place and reason (the
    /// identity hashes differ in what they hash: the raw text, or a tree re-serialized).
    fn agree(text: &str) -> Result<(), String> {
        let w = ChatId::from_gateway("966500000000");
        let fast = parse_reply(text.as_bytes(), &w);
        let root: Result<serde_json::Value, _> = serde_json::from_str(text);
        let slow = match root {
            Ok(v) => dom::parse_reply_value(&v, &w),
            Err(e) => Err(ReplyError::NotJson(e.to_string())),
        };
        let strip = |r: Result<Page, ReplyError>| {
            r.map(|mut p| {
                p.skipped.iter_mut().for_each(|s| s.identity = 0);
                p
            })
            .map_err(|e| std::mem::discriminant(&e))
        };
        let (fast, slow) = (strip(fast), strip(slow));
        if fast == slow {
            Ok(())
        } else {
            Err(format!("streaming {fast:?}\n tree {slow:?}"))
        }
    }

    #[test]
    fn the_streaming_parser_agrees_with_the_tree_on_every_fixture() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut files = vec![dir.join("upstream_sample.json")];
        files.extend(
            std::fs::read_dir(dir.join("fixtures"))
                .unwrap()
                .map(|e| e.unwrap().path()),
        );
        assert!(files.len() > 10);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            agree(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        }
    }

    /// Any JSON value a field might hold, the odd ones included.
    fn any_field() -> impl proptest::strategy::Strategy<Value = serde_json::Value> + Clone {
        use proptest::prelude::*;
        use serde_json::json;
        let leaf = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(|b| json!(b)),
            Just(json!(false)),
            (1_600_000_000i64..1_800_000_000).prop_map(|n| json!(n)),
            (1_600_000_000_000i64..1_800_000_000_000).prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n)),
            Just(json!(u64::MAX)),
            (1.6e9f64..1.8e9).prop_map(|f| json!(f)),
            (1_600_000_000i64..1_800_000_000).prop_map(|n| json!(format!(" {n} "))),
            "[a-zA-Z0-9@._ \\\"\n\u{0621}-\u{064A}]{0,12}".prop_map(|s| json!(s)),
            Just(json!("")),
            Just(json!("966500000000@c.us")),
            Just(json!({"_serialized": "966500000001@c.us"})),
            Just(json!({"_serialized": "", "user": "9665", "server": "c.us"})),
            Just(json!({"user": "9665"})),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z_]{1,3}", inner, 0..3)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// An object of some of `keys`, each with `value`'s values (a key may also hold `fixed`).
    fn object_of(
        keys: &'static [&'static str],
        value: impl proptest::strategy::Strategy<Value = serde_json::Value> + Clone,
    ) -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        proptest::collection::vec((proptest::sample::select(keys), value), 0..keys.len() + 2)
            .prop_map(|pairs| {
                serde_json::Value::Object(
                    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                )
            })
    }

    proptest::proptest! {
        #[test]
        #[test]
        fn the_streaming_parser_agrees_with_the_tree_on_odd_messages(
            ids in proptest::collection::vec(object_of(&["fromMe", "id", "_serialized", "remote"], any_field()), 1..4),
            fields in proptest::collection::vec(object_of(
                &["timestamp", "type", "body", "from", "to", "author", "hasMedia", "x"], any_field()), 1..4),
            data in proptest::collection::vec(object_of(&["t", "type", "from", "to", "author", "y"], any_field()), 1..4),
            chat in object_of(&["id", "name", "isGroup", "unreadCount", "timestamp", "archived", "pinned", "isMuted"], any_field()),
            shape in 0u8..8,
        ) {
            use serde_json::json;
            let messages: Vec<serde_json::Value> = fields
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let mut m = f.clone();
                    let id = ids[i % ids.len()].clone();
                    let mut d = data[i % data.len()].clone();
                    match (shape + i as u8) % 4 {
                        0 => { m["id"] = id; }
                        1 => { d["id"] = id; }
                        2 => { m["id"] = json!({"fromMe": i % 2 == 0, "id": format!("M{i}")}); d["t"] = json!(1_700_000_000 + i as i64); }
                        _ => { m["id"] = json!("false_x@c.us_ABC"); }
                    }
                    m["_data"] = d;
                    m
                })
                .collect();
            let mut reply = json!({"status": "success", "chat": chat, "messages": messages});
            if shape == 7 {
                reply["chat"] = json!("not an object");
            }
            let text = reply.to_string();
            if let Err(e) = agree(&text) {
                proptest::prop_assert!(false, "{}\n{}", text, e);
            }
        }

        fn well_formed_json_is_borrowed_untouched(s in ".*") {
            let json = serde_json::to_string(&s).unwrap();
            let repaired = repair_lone_surrogates(&json);
            proptest::prop_assert!(matches!(repaired, Cow::Borrowed(_)));
        }

        #[test]
        fn injected_lone_surrogates_always_parse(
            parts in proptest::collection::vec((".{0,6}", 0xD800u32..0xE000), 0..6)
        ) {
            let mut json = String::from("\"");
            for (text, unit) in &parts {
                let quoted = serde_json::to_string(text).unwrap();
                json.push_str(&quoted[1..quoted.len() - 1]);
                json.push_str(&format!("\\u{unit:04x}"));
            }
            json.push('"');
            let repaired = repair_lone_surrogates(&json);
            let parsed: Result<String, _> = serde_json::from_str(&repaired);
            proptest::prop_assert!(parsed.is_ok(), "{} → {}", json, repaired);
        }
    }
}
