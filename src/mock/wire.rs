//! The reply in the exact whatsapp-web.js serialization the real gateway sends.

use super::*;

pub(super) struct ChatInfo {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) is_group: bool,
    pub(super) unread_count: i64,
}

impl ChatInfo {
    pub(super) fn of(chat: &ChatState) -> ChatInfo {
        ChatInfo {
            id: chat.id.clone(),
            name: chat.name.clone(),
            is_group: chat.is_group,
            unread_count: chat.unread_count,
        }
    }
}

#[derive(Serialize)]
pub(super) struct WireJid<'a> {
    pub(super) server: &'a str,
    pub(super) user: &'a str,
    #[serde(rename = "_serialized")]
    pub(super) serialized: &'a str,
}

impl<'a> WireJid<'a> {
    pub(super) fn of(id: &'a str) -> WireJid<'a> {
        let (user, server) = id.split_once('@').unwrap_or((id, ""));
        WireJid {
            server,
            user,
            serialized: id,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireMsgId<'a> {
    pub(super) from_me: bool,
    pub(super) remote: &'a str,
    pub(super) id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) participant: Option<WireJid<'a>>,
    #[serde(rename = "_serialized")]
    pub(super) serialized: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireData<'a> {
    pub(super) id: &'a WireMsgId<'a>,
    pub(super) viewed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) body: Option<&'a str>,
    #[serde(rename = "type")]
    pub(super) kind: &'a str,
    pub(super) t: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) notify_name: Option<&'a str>,
    pub(super) from: WireJid<'a>,
    pub(super) to: WireJid<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) author: Option<WireJid<'a>>,
    #[serde(rename = "self")]
    pub(super) direction: &'a str,
    pub(super) ack: u8,
    pub(super) invis: bool,
    pub(super) star: bool,
    pub(super) is_new_msg: bool,
    pub(super) is_from_template: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) subtype: Option<&'a str>,
    pub(super) latest_edit_msg_key: Option<&'a WireMsgId<'a>>,
    pub(super) latest_edit_sender_timestamp_ms: Option<i64>,
    pub(super) mentioned_jid_list: [(); 0],
    pub(super) group_mentions: [(); 0],
    pub(super) is_forwarded: bool,
    pub(super) has_reaction: bool,
    pub(super) links: [(); 0],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireMessage<'a> {
    #[serde(rename = "_data")]
    pub(super) data: WireData<'a>,
    pub(super) id: &'a WireMsgId<'a>,
    pub(super) ack: u8,
    pub(super) has_media: bool,
    pub(super) body: &'a str,
    #[serde(rename = "type")]
    pub(super) kind: &'a str,
    pub(super) timestamp: i64,
    pub(super) from: &'a str,
    pub(super) to: &'a str,
    pub(super) author: Option<&'a str>,
    pub(super) device_type: &'a str,
    pub(super) is_forwarded: bool,
    pub(super) forwarding_score: u32,
    pub(super) is_status: bool,
    pub(super) is_starred: bool,
    pub(super) from_me: bool,
    pub(super) has_quoted_msg: bool,
    pub(super) has_reaction: bool,
    pub(super) latest_edit_msg_key: Option<&'a WireMsgId<'a>>,
    pub(super) latest_edit_sender_timestamp_ms: Option<i64>,
    pub(super) v_cards: [(); 0],
    pub(super) mentioned_ids: [(); 0],
    pub(super) group_mentions: [(); 0],
    pub(super) is_gif: bool,
    pub(super) links: [(); 0],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireParticipant<'a> {
    pub(super) id: WireJid<'a>,
    pub(super) is_admin: bool,
    pub(super) is_super_admin: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireGroupMetadata<'a> {
    pub(super) id: WireJid<'a>,
    pub(super) creation: i64,
    pub(super) owner: WireJid<'a>,
    pub(super) subject: &'a str,
    pub(super) participants: [WireParticipant<'a>; 2],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireChat<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) group_metadata: Option<WireGroupMetadata<'a>>,
    pub(super) id: WireJid<'a>,
    pub(super) name: &'a str,
    pub(super) is_group: bool,
    pub(super) is_read_only: bool,
    pub(super) unread_count: i64,
    pub(super) timestamp: i64,
    pub(super) archived: bool,
    pub(super) pinned: bool,
    pub(super) is_muted: bool,
    pub(super) mute_expiration: i64,
}

#[derive(Serialize)]
pub(super) struct WireReply<'a> {
    pub(super) status: &'a str,
    pub(super) chat: WireChat<'a>,
    pub(super) messages: Vec<WireMessage<'a>>,
}

/// Per-message strings the wire shape borrows.
pub(super) struct Prepared<'a> {
    pub(super) view: &'a View,
    pub(super) serialized: String,
    pub(super) edit_serialized: String,
    pub(super) edit_id: String,
    pub(super) author: Option<&'a str>,
    pub(super) participant: Option<&'a str>,
}

pub(super) fn render_reply(chat: &ChatInfo, views: &[View], start_unix_ms: i64) -> String {
    let start_secs = start_unix_ms.div_euclid(1000);
    let remote = chat.id.as_str();
    let prepared: Vec<Prepared<'_>> = views
        .iter()
        .map(|v| {
            let author = chat.is_group.then(|| {
                if v.from_me {
                    BUSINESS_ID
                } else {
                    v.author.as_deref().unwrap_or(GROUP_MEMBER_ID)
                }
            });
            let participant = author.filter(|_| !v.from_me);
            let serialized = match participant {
                Some(p) => format!("{}_{remote}_{}_{p}", v.from_me, v.id),
                None => format!("{}_{remote}_{}", v.from_me, v.id),
            };
            let edit_id = format!("{}E", v.id);
            let edit_serialized = format!("{}_{remote}_{edit_id}", v.from_me);
            Prepared {
                view: v,
                serialized,
                edit_serialized,
                edit_id,
                author,
                participant,
            }
        })
        .collect();
    let ids: Vec<WireMsgId<'_>> = prepared
        .iter()
        .map(|p| WireMsgId {
            from_me: p.view.from_me,
            remote,
            id: &p.view.id,
            participant: p.participant.map(WireJid::of),
            serialized: &p.serialized,
        })
        .collect();
    let edit_keys: Vec<WireMsgId<'_>> = prepared
        .iter()
        .map(|p| WireMsgId {
            from_me: p.view.from_me,
            remote,
            id: &p.edit_id,
            participant: None,
            serialized: &p.edit_serialized,
        })
        .collect();
    let messages = prepared
        .iter()
        .zip(&ids)
        .zip(&edit_keys)
        .map(|((p, id), edit_key)| {
            let v = p.view;
            let (from, to) = if v.from_me {
                (BUSINESS_ID, remote)
            } else {
                (remote, BUSINESS_ID)
            };
            let t = timestamp_of(start_unix_ms, v.at_ms);
            let revoked = v.body.is_none();
            let ack = if v.from_me { 2 } else { 1 };
            let edit_ms = v.edited_at_ms.map(|at| start_unix_ms + at);
            let edit_key = edit_ms.map(|_| edit_key);
            WireMessage {
                data: WireData {
                    id,
                    viewed: false,
                    body: v.body.as_deref(),
                    kind: &v.kind,
                    t,
                    notify_name: (!v.from_me).then_some(if chat.is_group {
                        ""
                    } else {
                        chat.name.as_str()
                    }),
                    from: WireJid::of(from),
                    to: WireJid::of(to),
                    author: p.author.map(WireJid::of),
                    direction: if v.from_me { "out" } else { "in" },
                    ack,
                    invis: false,
                    star: false,
                    is_new_msg: true,
                    is_from_template: false,
                    subtype: revoked.then_some("sender_revoke"),
                    latest_edit_msg_key: edit_key,
                    latest_edit_sender_timestamp_ms: edit_ms,
                    mentioned_jid_list: [],
                    group_mentions: [],
                    is_forwarded: false,
                    has_reaction: false,
                    links: [],
                },
                id,
                ack,
                has_media: false,
                body: v.body.as_deref().unwrap_or(""),
                kind: &v.kind,
                timestamp: t,
                from,
                to,
                author: p.author,
                device_type: if v.from_me { "web" } else { "android" },
                is_forwarded: false,
                forwarding_score: 0,
                is_status: false,
                is_starred: false,
                from_me: v.from_me,
                has_quoted_msg: false,
                has_reaction: false,
                latest_edit_msg_key: edit_key,
                latest_edit_sender_timestamp_ms: edit_ms,
                v_cards: [],
                mentioned_ids: [],
                group_mentions: [],
                is_gif: false,
                links: [],
            }
        })
        .collect();
    let timestamp = views
        .last()
        .map_or(start_secs, |v| timestamp_of(start_unix_ms, v.at_ms));
    let group_metadata = chat.is_group.then(|| WireGroupMetadata {
        id: WireJid::of(remote),
        creation: start_secs,
        owner: WireJid::of(BUSINESS_ID),
        subject: &chat.name,
        participants: [
            WireParticipant {
                id: WireJid::of(BUSINESS_ID),
                is_admin: true,
                is_super_admin: true,
            },
            WireParticipant {
                id: WireJid::of(GROUP_MEMBER_ID),
                is_admin: false,
                is_super_admin: false,
            },
        ],
    });
    let reply = WireReply {
        status: "success",
        chat: WireChat {
            group_metadata,
            id: WireJid::of(remote),
            name: &chat.name,
            is_group: chat.is_group,
            is_read_only: false,
            unread_count: chat.unread_count,
            timestamp,
            archived: false,
            pinned: false,
            is_muted: false,
            mute_expiration: 0,
        },
        messages,
    };
    serde_json::to_string(&reply)
        .unwrap_or_else(|_| r#"{"status":"error","message":"mock could not serialize"}"#.to_owned())
}
