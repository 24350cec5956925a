//! What tests see of the mock: the request log, planted keyword messages, pushed messages.

use super::*;

/// One `/chats/{chat}` request as the mock saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Milliseconds since the mock started, at arrival.
    pub at_ms: u64,
    /// Unix milliseconds at arrival.
    pub unix_ms: i64,
    /// The chat id as requested (path segment, decoded).
    pub chat: String,
    /// The `limit` in force (query wins over body); `None`: no limit.
    pub limit: Option<u64>,
    /// The status answered; 0 when the mock never answered (a `hang` fault).
    pub status: u16,
    /// Index in `faults` of the fault applied, if any.
    pub fault: Option<usize>,
}

/// A synthetic message that carries the planted keyword and is visible by now.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlantedMessage {
    /// The served chat id (`966510000003@c.us`).
    pub chat: String,
    /// The message's serialized id (`false_{chat}_{id}`), as the webhook envelope carries it.
    pub message_id: String,
    /// The message's `timestamp` (unix seconds).
    pub timestamp: i64,
    /// When it became visible, in unix milliseconds (for detection latency).
    #[serde(default)]
    pub at_unix_ms: i64,
}

/// A message to append to a chat, visible at once (`POST /__mock/chats/{chat}/messages`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// The text.
    #[serde(default)]
    pub body: String,
    /// Sent by the business account. Default false.
    #[serde(default)]
    pub from_me: bool,
    /// Message type. Default `chat`.
    #[serde(default = "default_type", rename = "type")]
    pub kind: String,
    /// Message id; default generated (`MOCK{run}_{chat}_{n}`, the run's tag random per start). Must be new in the chat.
    #[serde(default)]
    pub id: Option<String>,
    /// Sender of an inbound group message. Groups only.
    #[serde(default)]
    pub author: Option<String>,
}

/// What [`MockGateway::push`] created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedMessage {
    /// The message id (`id.id`).
    pub id: String,
    /// The serialized id (`id._serialized`).
    pub serialized: String,
    /// Its `timestamp` (unix seconds).
    pub timestamp: i64,
}

/// Why a push failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushError {
    /// No such chat.
    UnknownChat(String),
    /// The id is already used in that chat.
    DuplicateId(String),
    /// The message is not acceptable (e.g. `author` in a private chat).
    Invalid(String),
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::UnknownChat(c) => write!(f, "chat not found: {c}"),
            PushError::DuplicateId(id) => write!(f, "message id already used in this chat: {id}"),
            PushError::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for PushError {}
