use super::*;
use crate::engine::decide::{Clock, decide_chat, decide_with};
use crate::gateway::model::{Chat, ChatId, Message};
use crate::model::{DigestItem, Memory};
use crate::rules::{compile_rules, parse_file};
use crate::store::{PollCommit, Store};
use std::path::Path;

fn set(yaml: &str) -> RuleSet {
    let (set, d) = compile_rules(vec![parse_file(Path::new("r.yaml"), yaml).unwrap()]);
    assert!(!d.has_errors(), "{d}");
    set
}

fn msg(chat: &str, id: &str, ts: i64, body: &str) -> Message {
    let mut m = Message::text(chat, id, ts, false, body);
    m.from = None;
    m
}

fn chat(id: &str, name: &str) -> Chat {
    Chat {
        id: id.into(),
        name: Some(name.into()),
        unread_count: Some(1),
        ..Chat::default()
    }
}

const A: &str = "966500000001@c.us";
const B: &str = "966500000002@c.us";

const RULES: &str = "
- id: digest-all
  match: { from_me: false, body: { any: [bot] } }
  digest: { every: 15m, max_items: 2 }
  actions: [ { webhook: { url: \"https://hooks.example.com/d\" } } ]
- id: digest-chat
  match: { from_me: false, body: { any: [bot] } }
  digest: { every: 1h, group_by: [chat] }
  actions:
    - log: { message: \"{{ digest.count }} in {{ chat.name }}\" }
    - webhook: { url: \"https://hooks.example.com/c\", body: { n: \"{{ digest.count }}\", first: \"{{ digest.items[0].message.body }}\" } }
- id: now
  match: { from_me: false, body: { any: [bot] } }
  actions: [ { webhook: { url: \"https://hooks.example.com/n\" } } ]
";

/// The items two chats' polls collect (one message each at `t`, another in chat A at `t2`).
fn collected(rules: &RuleSet, now: i64) -> Vec<DigestItem> {
    let mut items = Vec::new();
    for (c, name, id) in [(A, "Alia", "a1"), (B, "Badr", "b1")] {
        let m = msg(c, id, now - 5, &format!("bot {id}"));
        let d = decide_with(
            rules,
            &ChatId::from_gateway(c),
            &chat(c, name),
            &[&m],
            &Memory::default(),
            Clock::Now(now),
        );
        // The rule without a digest acts at once; the digest rules only collect.
        assert_eq!(d.deliveries.len(), 1, "{d:?}");
        assert_eq!(d.deliveries[0].rule_id, "now");
        assert_eq!(d.firings.len(), 3, "every firing is still a firing");
        items.extend(d.digest_items);
    }
    items
}

#[test]
fn a_digest_rule_collects_its_firings_into_the_window_of_now_instead_of_acting() {
    let rules = set(RULES);
    let now = 1_800_000_000 + 7 * 60; // 7 minutes into a 15-minute window
    let items = collected(&rules, now);
    let all: Vec<&DigestItem> = items.iter().filter(|i| i.rule_id == "digest-all").collect();
    assert_eq!(all.len(), 2);
    for i in &all {
        assert_eq!(i.group, "*", "group_by: [rule] (the default) is one group");
        assert_eq!(i.window_start, 1_800_000_000);
        assert_eq!(i.window_secs, 900);
        assert_eq!(i.fired_at, now);
    }
    let per_chat: Vec<&DigestItem> = items
        .iter()
        .filter(|i| i.rule_id == "digest-chat")
        .collect();
    assert_eq!(
        per_chat
            .iter()
            .map(|i| i.group.as_str())
            .collect::<Vec<_>>(),
        [A, B]
    );
    assert_eq!(per_chat[0].window_start, now - now % 3600);
    let item: Value = serde_json::from_str(&all[0].item).unwrap();
    assert_eq!(item["message"]["body"], "bot a1");
    assert_eq!(item["chat"]["name"], "Alia");
    assert_eq!(item["matched"]["keywords"], json!(["bot"]));
}

#[test]
fn a_chat_rule_with_a_digest_collects_too() {
    let rules = set(
        "id: waiting\non: chat\nmatch: { unread_count: { gte: 1 } }\ndigest: { every: 10m }\nactions: [ { webhook: { url: \"https://hooks.example.com/w\" } } ]\n",
    );
    let m = msg(A, "a1", 1_000, "hello");
    let mut d = Decision::default();
    decide_chat(
        &rules,
        &ChatId::from_gateway(A),
        &chat(A, "Alia"),
        &[m],
        &Memory::default(),
        1_800_000_030,
        &mut d,
    );
    assert!(d.deliveries.is_empty());
    assert_eq!(d.chat_firings.len(), 1);
    assert_eq!(d.digest_items.len(), 1);
    assert_eq!(d.digest_items[0].item_key, "false_chat@1800000030");
    assert_eq!(d.digest_items[0].window_start, 1_800_000_000);
}

fn window(rule: &str, group: &str, start: i64, secs: i64) -> DigestWindow {
    DigestWindow {
        rule_id: rule.into(),
        group: group.into(),
        window_start: start,
        window_secs: secs,
    }
}

#[test]
fn a_sealed_digest_lists_at_most_max_items_and_counts_the_rest() {
    let rules = set(RULES);
    let now = 1_800_000_000 + 60;
    let items: Vec<String> = collected(&rules, now)
        .into_iter()
        .filter(|i| i.rule_id == "digest-all")
        .map(|i| i.item)
        .collect();
    let w = window("digest-all", "*", 1_800_000_000, 900);
    // Five firings in the window, the first two listed (max_items: 2).
    let d = seal(&rules, &w, &items, 5, 1_800_000_901).unwrap();
    assert_eq!(d.deliveries.len(), 1);
    let delivery = &d.deliveries[0];
    assert_eq!(delivery.chat_id, "*");
    assert_eq!(delivery.url, "https://hooks.example.com/d");
    let body: Value = serde_json::from_str(&delivery.body).unwrap();
    assert_eq!(body["type"], "rule.digest");
    assert_eq!(body["rule"], "digest-all");
    assert_eq!(body["delivery_id"], delivery.delivery_id.as_str());
    assert_eq!(body["chat"], Value::Null);
    assert_eq!(body["count"], 5);
    assert_eq!(body["more"], 3);
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
    assert_eq!(body["items"][1]["message"]["body"], "bot b1");
    assert_eq!(
        body["window"],
        json!({"start": "2027-01-15T08:00:00Z", "end": "2027-01-15T08:15:00Z"})
    );

    // The id is the rule's, the group's and the window's: sealing again gives the same one,
    // another window or group another.
    let again = seal(&rules, &w, &items[..1], 1, 1_800_001_000).unwrap();
    assert_eq!(again.deliveries[0].delivery_id, delivery.delivery_id);
    let next = seal(
        &rules,
        &window("digest-all", "*", 1_800_000_900, 900),
        &items,
        2,
        0,
    )
    .unwrap();
    assert_ne!(next.deliveries[0].delivery_id, delivery.delivery_id);
    let other = seal(
        &rules,
        &window("digest-chat", A, 1_800_000_000, 900),
        &items,
        2,
        0,
    )
    .unwrap();
    assert_ne!(other.deliveries[0].delivery_id, delivery.delivery_id);
}

#[test]
fn a_digest_by_chat_renders_its_templates_on_the_list_and_the_chat() {
    let rules = set(RULES);
    let items: Vec<String> = collected(&rules, 1_800_000_000)
        .into_iter()
        .filter(|i| i.rule_id == "digest-chat" && i.group == A)
        .map(|i| i.item)
        .collect();
    let d = seal(
        &rules,
        &window("digest-chat", A, 1_799_996_400, 3600),
        &items,
        1,
        0,
    )
    .unwrap();
    assert_eq!(d.logs.len(), 1);
    assert_eq!(d.logs[0].text, "1 in Alia");
    assert_eq!(d.deliveries.len(), 1);
    assert_eq!(d.deliveries[0].chat_id, A);
    assert_eq!(
        serde_json::from_str::<Value>(&d.deliveries[0].body).unwrap(),
        json!({"n": "1", "first": "bot a1"})
    );
}

#[test]
fn the_firings_of_a_rule_that_is_gone_or_no_longer_a_digest_are_not_sealed() {
    let rules = set(RULES);
    for rule in ["gone", "now"] {
        let e = seal(&rules, &window(rule, "*", 0, 60), &[], 3, 0).unwrap_err();
        assert!(e.contains(rule), "{e}");
    }
}

fn commit(chat: &str, items: Vec<DigestItem>, now_ms: i64) -> PollCommit {
    PollCommit {
        chat_id: chat.into(),
        watermark: now_ms / 1000,
        digest_items: items,
        now_ms,
        ..PollCommit::default()
    }
}

/// Seals at `now_s` with the real [`seal`]; returns the deliveries' bodies.
fn seal_at(store: &Store, rules: &RuleSet, now_s: i64) -> Vec<Value> {
    let mut bodies = Vec::new();
    store
        .seal_digests(now_s, now_s, &mut |w, items, count| {
            let d = seal(rules, w, items, count, now_s).unwrap();
            bodies.extend(
                d.deliveries
                    .iter()
                    .map(|x| serde_json::from_str::<Value>(&x.body).unwrap()),
            );
            d.deliveries
        })
        .unwrap();
    bodies
}

/// A store (and the folder of its file), the rules, a window's start and two firings.
type OnBackend = (
    Option<tempfile::TempDir>,
    Store,
    RuleSet,
    i64,
    Vec<DigestItem>,
);

/// On each backend (a new SQLite file; a new PostgreSQL database when the tests have a
/// server): the store, the test's rules, a window's start and the two firings `digest-all`
/// collects a minute into it.
fn stores_and_two_firings() -> Vec<OnBackend> {
    let t0 = 1_800_000_000;
    let firings = || -> (RuleSet, Vec<DigestItem>) {
        let rules = set(RULES);
        let items = collected(&rules, t0 + 60)
            .into_iter()
            .filter(|i| i.rule_id == "digest-all")
            .collect();
        (rules, items)
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&dir.path().join("s.db")).unwrap();
    let (rules, items) = firings();
    let mut out = vec![(Some(dir), sqlite, rules, t0, items)];
    if let Some(url) = crate::pgtest::database() {
        let (rules, items) = firings();
        out.push((
            None,
            Store::open_postgres(&url, true).unwrap(),
            rules,
            t0,
            items,
        ));
    }
    out
}

#[test]
fn the_store_seals_a_window_once_after_it_ends_and_moves_a_late_firing_to_the_next() {
    for (_dir, store, rules, t0, items) in stores_and_two_firings() {
        let (a, b) = (items[0].clone(), items[1].clone());
        store
            .commit_poll(&commit(A, vec![a.clone()], (t0 + 60) * 1000))
            .unwrap();
        // The same firing committed again (a poll replayed) is one firing.
        store
            .commit_poll(&commit(A, vec![a.clone()], (t0 + 61) * 1000))
            .unwrap();
        assert!(
            seal_at(&store, &rules, t0 + 899).is_empty(),
            "the window has not ended"
        );
        assert_eq!(store.pending_digest_items().unwrap()["digest-all"], 1);
        let sealed = seal_at(&store, &rules, t0 + 900);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0]["count"], 1);
        assert!(seal_at(&store, &rules, t0 + 901).is_empty(), "sealed once");
        assert!(store.pending_digest_items().unwrap().is_empty());

        // Chat B's poll decided inside the window but committed after it was sealed: its firing
        // goes to the next window, not lost and not a second digest of the first.
        store
            .commit_poll(&commit(B, vec![b], (t0 + 902) * 1000))
            .unwrap();
        assert!(seal_at(&store, &rules, t0 + 1799).is_empty());
        let next = seal_at(&store, &rules, t0 + 1800);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0]["count"], 1);
        assert_eq!(next[0]["items"][0]["message"]["body"], "bot b1");
        assert_eq!(next[0]["window"]["start"], rfc3339(t0 + 900));
        assert_eq!(store.list(None, 10).unwrap().len(), 2);
    }
}

#[test]
fn a_seal_that_fails_before_its_commit_leaves_every_firing_to_seal_again() {
    for (_dir, store, rules, t0, items) in stores_and_two_firings() {
        store
            .commit_poll(&commit(A, items, (t0 + 60) * 1000))
            .unwrap();
        // The sealing dies inside its transaction (a panic in the middle of it here; a crash in
        // the integration tests): nothing of it stays.
        let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.seal_digests(t0 + 900, t0 + 900, &mut |w, items, count| {
                let _ = seal(&rules, w, items, count, t0 + 900);
                panic!("crash inside the seal");
            })
        }));
        assert!(died.is_err());
        assert!(store.list(None, 10).unwrap().is_empty());
        assert_eq!(store.pending_digest_items().unwrap()["digest-all"], 2);
        let sealed = seal_at(&store, &rules, t0 + 905);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0]["count"], 2);
    }
}

#[test]
fn with_no_digest_rule_left_the_firings_of_the_rules_that_are_gone_are_dropped_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    let t0 = 1_800_000_000;
    let items: Vec<DigestItem> = collected(&set(RULES), t0 + 60);
    store
        .commit_poll(&commit(A, items, (t0 + 60) * 1000))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let commits = crate::store::group::CommitQueue::start(store.clone()).unwrap();
        // Still digest rules: the windows that have not ended wait.
        let pass = seal_due(&commits, Arc::new(set(RULES)), t0 + 61)
            .await
            .unwrap();
        assert!(pass.sealed.is_empty() && pass.dropped.is_empty());
        // The rules lost their digests (a reload): everything waiting is dropped, said once
        // per window, before its window ends.
        let plain =
            set("id: now\nmatch: { body: { any: [bot] } }\nactions: [ { log: { message: x } } ]\n");
        let pass = seal_due(&commits, Arc::new(plain), t0 + 62).await.unwrap();
        let mut dropped: Vec<(String, usize)> = pass
            .dropped
            .iter()
            .map(|(r, n, _)| (r.clone(), *n))
            .collect();
        dropped.sort();
        assert_eq!(
            dropped,
            [
                ("digest-all".to_string(), 2),
                ("digest-chat".to_string(), 1),
                ("digest-chat".to_string(), 1)
            ]
        );
        assert!(pass.deliveries.is_empty());
    });
    assert!(store.pending_digest_items().unwrap().is_empty());
    assert!(store.list(None, 10).unwrap().is_empty());
}
