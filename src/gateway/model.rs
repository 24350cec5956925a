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

/// The account of the config's single `api:` (and of an `accounts:` entry of that name): its
/// chats' keys carry no account prefix, as before there were several accounts, so a state
/// file written then stays valid.
pub const DEFAULT_ACCOUNT: &str = "default";

/// Whether `name` may name a gateway account: a letter, then up to 31 letters, digits, `_`
/// or `-` (it prefixes chat keys and labels metrics, so no `/`, no spaces).
pub fn valid_account_name(name: &str) -> bool {
    name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl ChatId {
    /// Parses what an operator writes: a phone number with country code and no `+` or
    /// leading `00`/`0` (`966500000000`), or a full serialized id (`966500000000@c.us`),
    /// optionally after its account's name and a slash (`sales/966500000000`).
    pub fn parse(text: &str) -> Result<ChatId, ChatIdError> {
        let t = text.trim();
        if let Some((account, rest)) = t.split_once('/') {
            if !valid_account_name(account) {
                return Err(ChatIdError(format!(
                    "`{t}`: `{account}` is not an account name (a lowercase letter, then letters, digits, `_` or `-`)"
                )));
            }
            return Ok(ChatId::parse(rest)?.in_account(account));
        }
        ChatId::parse_bare(t)
    }

    /// The same chat id in gateway account `account` (its key gets the account's prefix,
    /// except for [`DEFAULT_ACCOUNT`]).
    pub fn in_account(self, account: &str) -> ChatId {
        let bare = self.bare();
        if account == DEFAULT_ACCOUNT {
            ChatId(bare.to_string())
        } else {
            ChatId(format!("{account}/{bare}"))
        }
    }

    /// The gateway account this chat is read from.
    pub fn account(&self) -> &str {
        self.0
            .split_once('/')
            .map_or(DEFAULT_ACCOUNT, |(account, _)| account)
    }

    /// The id as WhatsApp and the gateway know it, without the account (`966500000000@c.us`).
    pub fn bare(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(_, id)| id)
    }

    /// Whether a rule's `chats:` entry names `chat`: the same id in the same account, or, for an
    /// entry without an account, the same id in any account.
    pub fn selects(&self, chat: &ChatId) -> bool {
        if self.0.contains('/') {
            self == chat
        } else {
            self.0 == chat.bare()
        }
    }

    fn parse_bare(t: &str) -> Result<ChatId, ChatIdError> {
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

    /// The chat's key — the serialized id (`966500000000@c.us`), after its account's name and
    /// a slash for any account but [`DEFAULT_ACCOUNT`] (`sales/966500000000@c.us`): what the
    /// state, the outbox, the leases and the logs know it by.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What goes in the URL: the bare number for a person (as the gateway documents), the
    /// full id for anything else; never the account.
    pub fn path_segment(&self) -> &str {
        let bare = self.bare();
        match bare.strip_suffix("@c.us") {
            Some(number) => number,
            None => bare,
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
    /// Unix seconds, after the plausibility fallback (`plausible_seconds`).
    pub timestamp: i64,
    pub from: Option<String>,
    pub to: Option<String>,
    pub author: Option<String>,
    pub has_media: bool,
}

impl Message {
    /// A text message (`type: chat`) in chat `remote`, as the reader makes it from a reply:
    /// for tests, benchmarks and tools that build pages by hand. Change fields after.
    pub fn text(remote: &str, id: &str, timestamp: i64, from_me: bool, body: &str) -> Message {
        Message {
            key: MessageKey {
                from_me,
                id: id.into(),
            },
            serialized_id: format!("{from_me}_{remote}_{id}"),
            body: body.into(),
            kind: "chat".into(),
            timestamp,
            from: (!from_me).then(|| remote.to_string()),
            to: None,
            author: None,
            has_media: false,
        }
    }

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
/// One streaming pass (`gateway::wire`): no JSON tree is built, and only the fields a rule can
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
mod tests;
