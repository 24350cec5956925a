//! The pure per-poll path (issue 16), in µs per page: parse a `/chats/{id}` reply, diff it
//! against the chat's watermark, decide the rules. The page is what whatsapp-web.js serializes
//! and what the side-by-side benchmark's mock serves (`../shared/bench/wa_corpus.py`): 20
//! messages with their full `_data` (≈ 37 KB), Arabic and English bodies; the rules are the
//! benchmark's own (`benches/data/peer-rules.json`, a copy of `peers/rules.json`, as `run_cartat_rules.py` writes them:
//! one rule, its keywords in one `body.any` and each regex as `normalize: false`).
//!
//! - `parse_page`: bytes → `Page` (the streaming parser);
//! - `poll_known_page`: parse + diff + decide when every message is already known (an idle
//!   chat's poll);
//! - `poll_one_new`: the same with one new message (workload A's typical poll);
//! - `parse_page_as_tree`: the same bytes through a `serde_json::Value`, the parser before
//!   issue 16 (for the record);
//! - `memo_known_page` / `memo_one_new`: `poll_known_page` / `poll_one_new` as the daemon
//!   runs them, through the chat's reply memo (`gateway::memo`) primed with the last reply:
//!   the same page again, and the page shifted by one new message.
//!
//! Run: `cargo bench --bench poll` (figures in README "Performance: the cost of a poll").

#![recursion_limit = "256"]

use cartat_rules::config::FirstSight;
use cartat_rules::engine::decide::{Clock, Memory, decide_with};
use cartat_rules::engine::watermark::{ChatState, SeenId, diff};
use cartat_rules::gateway::memo::{Reading, ReplyMemo};
use cartat_rules::gateway::model::{ChatId, Message, Page, parse_reply};
use cartat_rules::rules::{RuleSet, compile_rules, parse_file};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use std::hint::black_box;
use std::path::Path;

const BODIES: &[&str] = &[
    "السلام عليكم، متى يوصل الطلب؟",
    "Hi, I need help with my order please",
    "شكرا جزيلا 🙏",
    "ابغى اكلم موظف خدمة العملاء",
    "Is the branch open on Friday?",
    "طلب رقم 48213 ما وصل للحين",
    "ok",
    "كم سعر التوصيل للرياض؟",
];

fn wid(serialized: &str) -> Value {
    let (user, server) = serialized.split_once('@').unwrap();
    json!({"server": server, "user": user, "_serialized": serialized})
}

/// One message as whatsapp-web.js serializes it (the same keys as the benchmark's corpus).
fn message(phone: &str, me: &str, body: &str, ts: i64, hex: &str) -> Value {
    let remote = format!("{phone}@c.us");
    let mid = json!({"fromMe": false, "remote": remote, "id": hex,
                     "_serialized": format!("false_{remote}_{hex}")});
    let data = json!({
        "id": mid, "rowId": 1000000000, "viewed": false, "body": body, "type": "chat", "t": ts,
        "notifyName": "", "from": wid(&remote), "to": wid(me), "self": "in", "ack": 3,
        "invis": true, "isNewMsg": true, "star": false, "kicNotified": false, "recvFresh": true,
        "isFromTemplate": false, "pollOptions": [], "pollInvalidated": false, "labels": [],
        "isSentCagPollCreation": false, "latestEditMsgKey": null,
        "latestEditSenderTimestampMs": null, "mentionedJidList": [], "groupMentions": [],
        "isEventCanceled": false, "eventInvalidated": false, "isVcardOverMmsDocument": false,
        "isForwarded": false, "hasReaction": false, "viewMode": "VISIBLE", "messageSecret": null,
        "productHeaderImageRejected": false, "lastPlaybackProgress": 0,
        "isDynamicReplyButtonsMsg": false, "isCarouselCard": false, "parentMsgId": null,
        "isMdHistoryMsg": false, "stickerSentTs": 0, "isAvatar": false,
        "lastUpdateFromServerTs": 0, "invokedBotWid": null, "bizBotType": null,
        "botResponseTargetId": null, "botPluginType": null, "botPluginReferenceIndex": null,
        "botPluginSearchProvider": null, "botPluginSearchUrl": null,
        "botPluginSearchQuery": null, "botPluginMaybeParent": false,
        "botReelPluginThumbnailCdnUrl": null, "botMsgBodyType": null,
        "requiresDirectConnection": null, "bizContentPlaceholderType": null,
        "hostedBizEncStateMismatch": false, "senderOrRecipientAccountTypeHosted": false,
        "placeholderCreatedWhenAccountIsHosted": false, "links": [],
    });
    json!({
        "_data": data, "id": mid, "ack": 3, "hasMedia": false, "body": body, "type": "chat",
        "timestamp": ts, "from": remote, "to": me, "deviceType": "android", "isForwarded": false,
        "forwardingScore": 0, "isStatus": false, "isStarred": false, "fromMe": false,
        "hasQuotedMsg": false, "hasReaction": false, "vCards": [], "mentionedIds": [],
        "groupMentions": [], "isGif": false, "links": [],
    })
}

/// A reply of `n` messages, the newest last.
fn page(n: usize) -> Vec<u8> {
    page_from(0, n)
}

/// A reply of messages `first..first + n`, the newest last.
fn page_from(first: usize, n: usize) -> Vec<u8> {
    let phone = "966510000000";
    let me = "966500000001@c.us";
    let messages: Vec<Value> = (first..first + n)
        .map(|i| {
            message(
                phone,
                me,
                BODIES[i % BODIES.len()],
                1_764_000_000 + i as i64,
                &format!("{:020X}", 0x3A1F_0000_0000_u64 + i as u64),
            )
        })
        .collect();
    let chat = json!({"id": wid(&format!("{phone}@c.us")), "name": "Customer 0",
                      "isGroup": false, "isReadOnly": false, "unreadCount": 1,
                      "timestamp": 1_764_000_000 + (first + n) as i64, "archived": false, "pinned": false,
                      "isMuted": false, "muteExpiration": 0});
    serde_json::to_vec(&json!({"status": "success", "chat": chat, "messages": messages})).unwrap()
}

/// The benchmark's 50 rules as `run_cartat_rules.py` writes them.
fn rules() -> RuleSet {
    let list: Vec<Value> =
        serde_json::from_str(include_str!("data/peer-rules.json")).expect("peer rules");
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let keywords: Vec<String> = list
        .iter()
        .filter(|r| r["type"] == "keyword")
        .map(|r| q(r["value"].as_str().unwrap()))
        .collect();
    let mut yaml = format!(
        "id: bench-any\nmatch:\n  from_me: false\n  any_of:\n    - body: {{ any: [{}] }}\n",
        keywords.join(", ")
    );
    for r in list.iter().filter(|r| r["type"] == "regex") {
        let flags = if r["flags"].as_str().unwrap_or("").contains('i') {
            "(?i)"
        } else {
            ""
        };
        let rx = format!("{flags}{}", r["pattern"].as_str().unwrap());
        yaml.push_str(&format!(
            "    - body: {{ regex: {}, normalize: false }}\n",
            q(&rx)
        ));
    }
    yaml.push_str("actions:\n  - webhook: { url: \"https://hooks.example.com/x\" }\n");
    let parsed = parse_file(Path::new("bench.yaml"), &yaml).expect("bench rules parse");
    let (set, d) = compile_rules(vec![parsed]);
    assert!(!d.has_errors(), "{d}");
    set
}

fn known(messages: &[Message]) -> ChatState {
    ChatState {
        known: true,
        watermark: messages.iter().map(|m| m.timestamp).max().unwrap_or(0),
        low_water: 0,
        first_seen: 1,
        seen: messages
            .iter()
            .map(|m| {
                let seen = SeenId {
                    ts: m.timestamp,
                    fingerprint: m.fingerprint(),
                };
                (m.key.clone(), seen)
            })
            .collect(),
    }
}

/// Parse + diff + decide, as the poller does between fetch and commit.
fn poll(bytes: &[u8], state: &ChatState, rules: &RuleSet, chat: &ChatId) -> usize {
    decide_page(parse_reply(bytes, chat).unwrap(), state, rules, chat)
}

fn decide_page(page: Page, state: &ChatState, rules: &RuleSet, chat: &ChatId) -> usize {
    let d = diff(state, &page.messages, 20, FirstSight::SkipHistory);
    let new: Vec<&Message> = d.new.iter().map(|&i| &page.messages[i]).collect();
    let decision = decide_with(
        rules,
        chat,
        &page.chat,
        &new,
        &Memory::default(),
        Clock::Now(1_764_000_100),
    );
    decision.deliveries.len() + d.new.len()
}

fn bench(c: &mut Criterion) {
    let bytes = page(20);
    let chat = ChatId::parse("966510000000").unwrap();
    let rules = rules();
    let parsed = parse_reply(&bytes, &chat).unwrap();
    assert_eq!(parsed.messages.len(), 20);
    let all_known = known(&parsed.messages);
    let one_new = known(&parsed.messages[..19]);
    assert_eq!(poll(&bytes, &all_known, &rules, &chat), 0);
    assert_eq!(poll(&bytes, &one_new, &rules, &chat), 1);

    let mut g = c.benchmark_group("poll");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("parse_page", |b| {
        b.iter(|| parse_reply(black_box(&bytes), &chat).unwrap())
    });
    g.bench_function("poll_known_page", |b| {
        b.iter(|| poll(black_box(&bytes), &all_known, &rules, &chat))
    });
    g.bench_function("poll_one_new", |b| {
        b.iter(|| poll(black_box(&bytes), &one_new, &rules, &chat))
    });
    let mut primed = ReplyMemo::default();
    primed.parse(&bytes, &chat).unwrap();
    let mut again = ReplyMemo::default();
    again.parse(&bytes, &chat).unwrap();
    let next = page_from(1, 20);
    let (_, how) = again.parse_how(&next, &chat).unwrap();
    assert_eq!(how, Reading::Reused { reused: 19 });
    let next_state = known(&parse_reply(&next, &chat).unwrap().messages[..19]);
    g.bench_function("memo_known_page", |b| {
        b.iter(|| {
            let page = primed.parse(black_box(&bytes), &chat).unwrap();
            decide_page(page, &all_known, &rules, &chat)
        })
    });
    g.bench_function("memo_one_new", |b| {
        b.iter_batched(
            || {
                let mut m = ReplyMemo::default();
                m.parse(&bytes, &chat).unwrap();
                m
            },
            |mut m| {
                let page = m.parse(black_box(&next), &chat).unwrap();
                (decide_page(page, &next_state, &rules, &chat), m)
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("parse_page_as_tree", |b| {
        b.iter(|| serde_json::from_slice::<Value>(black_box(&bytes)).unwrap())
    });
    g.finish();
    eprintln!("page: {} bytes, 20 messages", bytes.len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
