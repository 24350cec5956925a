use super::*;
use crate::rules::{compile_rules, parse_file};
use std::path::Path;

fn set(yaml: &str) -> RuleSet {
    let (set, d) = compile_rules(vec![parse_file(Path::new("r.yaml"), yaml).unwrap()]);
    assert!(!d.has_errors(), "{d}");
    set
}

fn msg(id: &str, ts: i64, from_me: bool, body: &str) -> Message {
    let mut m = Message::text("966500000000@c.us", id, ts, from_me, body);
    m.from = None;
    m
}

fn chat(unread: i64) -> Chat {
    chat_with(Some(unread))
}

/// `None`: the reply had no `unreadCount`.
fn chat_with(unread: Option<i64>) -> Chat {
    Chat {
        id: "966500000000@c.us".into(),
        name: Some("C".into()),
        unread_count: unread,
        ..Chat::default()
    }
}

fn cid() -> ChatId {
    ChatId::from_gateway("966500000000@c.us")
}

#[test]
fn threshold_fires_on_the_nth_match_within_the_window_and_remembers_across_polls() {
    let rules = set(
        "id: urgent3\nmatch: { body: { any: [urgent] }, threshold: { count: 3, within: 10m } }\nactions: [ { log: { message: x } } ]\n",
    );
    let a = msg("a", 1000, false, "urgent");
    let b = msg("b", 1100, false, "urgent");
    // Poll 1: two matches, counted, nothing fires.
    let d = decide_with(
        &rules,
        &cid(),
        &chat(0),
        &[&a, &b],
        &Memory::default(),
        Clock::Now(1200),
    );
    assert!(d.firings.is_empty());
    assert_eq!(d.counted.len(), 2);
    assert_eq!(
        d.counted
            .iter()
            .map(|c| (c.hits, c.count, c.within.as_secs()))
            .collect::<Vec<_>>(),
        [(1, 3, 600), (2, 3, 600)]
    );
    assert_eq!(d.thresholds, [("urgent3".to_string(), vec![1000, 1100])]);
    // Poll 2 (after a restart: the memory comes from the store): the third fires.
    let memory = Memory {
        thresholds: d.thresholds.into_iter().collect(),
        ..Memory::default()
    };
    let c = msg("c", 1500, false, "urgent");
    let d = decide_with(&rules, &cid(), &chat(0), &[&c], &memory, Clock::Now(1500));
    assert_eq!(d.firings.len(), 1);
    assert_eq!(
        d.thresholds,
        [("urgent3".to_string(), vec![])],
        "the count starts again"
    );
    // Outside the window the old hits no longer count.
    let memory = Memory {
        thresholds: [("urgent3".to_string(), vec![1000, 1100])].into(),
        ..Memory::default()
    };
    let late = msg("late", 1000 + 601, false, "urgent");
    let d = decide_with(
        &rules,
        &cid(),
        &chat(0),
        &[&late],
        &memory,
        Clock::Now(1700),
    );
    assert!(d.firings.is_empty());
    assert_eq!(d.thresholds, [("urgent3".to_string(), vec![1100, 1601])]);
}

const UNREAD: &str = "id: unread-pileup\non: chat\nmatch:\n  unread_count: { gte: 5 }\n  for: 10m\ncooldown: 1h\nactions:\n  - webhook: { url: \"https://x.example/\" }\n";

#[test]
fn a_chat_rule_fires_once_after_holding_for_its_duration_then_rearms() {
    let rules = set(UNREAD);
    let msgs = vec![msg("a", 900, false, "hi")];
    let mut memory = Memory::default();
    let step = |unread: i64, now: i64, memory: &mut Memory| -> Decision {
        let mut d = Decision::default();
        decide_chat(&rules, &cid(), &chat(unread), &msgs, memory, now, &mut d);
        for (r, st) in &d.chat_rules {
            memory.chat_rules.insert(r.clone(), *st);
        }
        for (r, until) in &d.cooldowns {
            memory.cooldowns.insert(r.clone(), *until);
        }
        d
    };
    assert!(
        step(6, 1000, &mut memory).chat_firings.is_empty(),
        "starts holding"
    );
    assert_eq!(
        memory.chat_rules["unread-pileup"],
        ChatRuleState {
            since: Some(1000),
            fired: false
        }
    );
    assert!(
        step(7, 1000 + 599, &mut memory).chat_firings.is_empty(),
        "not yet 10m"
    );
    let d = step(7, 1000 + 600, &mut memory);
    assert_eq!(d.chat_firings.len(), 1, "held 10 minutes: fires");
    assert_eq!(d.deliveries.len(), 1);
    let body: Value = serde_json::from_str(&d.deliveries[0].body).unwrap();
    assert_eq!(body["on"], "chat");
    assert_eq!(body["matched"]["unread_count"], 7);
    assert_eq!(body["matched"]["since"], rfc3339(1000));
    assert_eq!(body["message"]["id"], "false_966500000000@c.us_a");
    let first_id = d.deliveries[0].delivery_id.clone();
    assert!(
        step(8, 2000, &mut memory).chat_firings.is_empty(),
        "fires once per holding spell"
    );
    step(0, 2100, &mut memory);
    assert!(
        !memory.chat_rules.contains_key("unread-pileup")
            || memory.chat_rules["unread-pileup"] == ChatRuleState::default(),
        "re-armed"
    );
    // Holds again, but the 1h cooldown from 1600 silences it until 5200.
    step(9, 3000, &mut memory);
    assert!(
        step(9, 3000 + 600, &mut memory).chat_firings.is_empty(),
        "cooldown"
    );
    let d = step(9, 5200, &mut memory);
    assert_eq!(d.chat_firings.len(), 1, "after the cooldown");
    assert_ne!(
        d.deliveries[0].delivery_id, first_id,
        "a new holding spell is a new delivery"
    );
}

/// Runs polls of one chat through `decide_chat`, storing what each decided as the daemon
/// does; returns the poll times at which the rule fired and the timer after each poll.
fn run_polls(
    rules: &RuleSet,
    msgs: &[Message],
    polls: &[(Option<i64>, i64)],
) -> (Vec<i64>, Vec<Option<ChatRuleState>>) {
    let mut memory = Memory::default();
    let mut fired = Vec::new();
    let mut timers = Vec::new();
    for &(unread, now) in polls {
        let mut d = Decision::default();
        decide_chat(
            rules,
            &cid(),
            &chat_with(unread),
            msgs,
            &memory,
            now,
            &mut d,
        );
        for (r, st) in &d.chat_rules {
            memory.chat_rules.insert(r.clone(), *st);
        }
        for (r, until) in &d.cooldowns {
            memory.cooldowns.insert(r.clone(), *until);
        }
        fired.extend(d.chat_firings.iter().map(|_| now));
        timers.push(memory.chat_rules.get("pileup").copied());
    }
    (fired, timers)
}

#[test]
fn an_unknown_unread_count_neither_starts_resets_rearms_nor_fires() {
    // No cooldown, so only the timer and the fired flag stand between a spell and a second alert.
    let rules = set(
        "id: pileup\non: chat\nmatch:\n  unread_count: { gte: 5 }\n  for: 10m\nactions:\n  - webhook: { url: \"https://x.example/\" }\n",
    );
    let msgs = vec![msg("a", 900, false, "hi")];
    const T0: i64 = 1000;
    let held = |since: i64, fired: bool| {
        Some(ChatRuleState {
            since: Some(since),
            fired,
        })
    };
    type Case = (
        &'static str,
        Vec<(Option<i64>, i64)>,
        Vec<i64>,
        Vec<Option<ChatRuleState>>,
    );
    let cases: Vec<Case> = vec![
        (
            "7, missing, 7: the missing reply does not reset the timer; fires once at t0+10m",
            vec![(Some(7), T0), (None, T0 + 300), (Some(7), T0 + 600)],
            vec![T0 + 600],
            vec![held(T0, false), held(T0, false), held(T0, true)],
        ),
        (
            "missing while the timer is due: no firing on an unknown count",
            vec![(Some(7), T0), (None, T0 + 600), (Some(7), T0 + 700)],
            vec![T0 + 700],
            vec![held(T0, false), held(T0, false), held(T0, true)],
        ),
        (
            "fired with 7, then missing, then 7: no re-arm, no second alert",
            vec![
                (Some(7), T0),
                (Some(7), T0 + 600),
                (None, T0 + 700),
                (Some(7), T0 + 800),
                (Some(7), T0 + 1400),
                (Some(7), T0 + 2000),
            ],
            vec![T0 + 600],
            vec![
                held(T0, false),
                held(T0, true),
                held(T0, true),
                held(T0, true),
                held(T0, true),
                held(T0, true),
            ],
        ),
        (
            "7 then 0 re-arms as before; the next spell fires again",
            vec![
                (Some(7), T0),
                (Some(7), T0 + 600),
                (Some(0), T0 + 700),
                (Some(7), T0 + 800),
                (Some(7), T0 + 1400),
            ],
            vec![T0 + 600, T0 + 1400],
            vec![
                held(T0, false),
                held(T0, true),
                Some(ChatRuleState::default()),
                held(T0 + 800, false),
                held(T0 + 800, true),
            ],
        ),
        (
            "missing first: nothing starts",
            vec![(None, T0), (None, T0 + 600), (Some(7), T0 + 700)],
            vec![],
            vec![None, None, held(T0 + 700, false)],
        ),
        (
            "missing after 0: still armed, the next 7 starts the timer then",
            vec![(Some(0), T0), (None, T0 + 300), (Some(7), T0 + 600)],
            vec![],
            vec![None, None, held(T0 + 600, false)],
        ),
    ];
    for (name, polls, want_fired, want_timers) in cases {
        let (fired, timers) = run_polls(&rules, &msgs, &polls);
        assert_eq!(fired, want_fired, "{name}: firings");
        assert_eq!(timers, want_timers, "{name}: timers");
    }
}

#[test]
fn other_chat_conditions_still_decide_when_the_unread_count_is_unknown() {
    let msgs = vec![msg("q", 1000, false, "hello?")];
    let answered = vec![msg("q", 1000, false, "hello?"), msg("r", 1100, true, "hi!")];
    // A rule without unread_count is unaffected: it fires, and the envelope says null.
    let sla = set(
        "id: sla\non: chat\nmatch: { unanswered_for: 15m }\nactions:\n  - webhook: { url: \"https://x.example/\" }\n  - log: { message: \"{{ chat.unread_count }} unread\" }\n  - log: { message: \"{{ chat.unread_count if chat.unread_count is not none else 'unknown' }}\" }\n",
    );
    let mut d = Decision::default();
    decide_chat(
        &sla,
        &cid(),
        &chat_with(None),
        &msgs,
        &Memory::default(),
        1000 + 900,
        &mut d,
    );
    assert_eq!(d.chat_firings.len(), 1);
    let body: Value = serde_json::from_str(&d.deliveries[0].body).unwrap();
    assert_eq!(body["chat"]["unread_count"], Value::Null);
    assert_eq!(body["matched"]["unanswered_for"], "15m");
    // Text templates show minijinja's none; a template can test for it.
    assert_eq!(d.logs[0].text, "None unread");
    assert_eq!(d.logs[1].text, "unknown");

    // Both conditions: the unknown count leaves a running timer alone while the customer
    // still waits, but our reply (a condition that definitely fails) re-arms it.
    let both = set(
        "id: both\non: chat\nmatch:\n  unread_count: { gte: 1 }\n  unanswered_for: 15m\nactions: [ { log: { message: x } } ]\n",
    );
    let running = ChatRuleState {
        since: Some(1900),
        fired: true,
    };
    let memory = Memory {
        chat_rules: [("both".to_string(), running)].into(),
        ..Memory::default()
    };
    let mut d = Decision::default();
    decide_chat(
        &both,
        &cid(),
        &chat_with(None),
        &msgs,
        &memory,
        3000,
        &mut d,
    );
    assert!(d.chat_firings.is_empty());
    assert!(
        d.chat_rules.is_empty(),
        "unknown: the timer stays as it was"
    );
    let mut d = Decision::default();
    decide_chat(
        &both,
        &cid(),
        &chat_with(None),
        &answered,
        &memory,
        3000,
        &mut d,
    );
    assert_eq!(
        d.chat_rules,
        [("both".to_string(), ChatRuleState::default())],
        "answered: re-armed though the count is unknown"
    );
}

#[test]
fn the_chat_rule_delivery_id_depends_on_when_the_condition_started() {
    let rules = set(UNREAD);
    let msgs = vec![msg("a", 900, false, "hi")];
    let memory = Memory {
        chat_rules: [(
            "unread-pileup".to_string(),
            ChatRuleState {
                since: Some(1000),
                fired: false,
            },
        )]
        .into(),
        ..Memory::default()
    };
    let mut d1 = Decision::default();
    decide_chat(&rules, &cid(), &chat(6), &msgs, &memory, 1700, &mut d1);
    let mut d2 = Decision::default();
    decide_chat(&rules, &cid(), &chat(9), &msgs, &memory, 1900, &mut d2);
    assert_eq!(
        d1.deliveries[0].delivery_id, d2.deliveries[0].delivery_id,
        "a re-evaluation after a crash gives the same id"
    );
}

#[test]
fn unanswered_for_counts_from_the_first_unanswered_message() {
    let rules = set(
        "id: sla\non: chat\nmatch: { unanswered_for: 15m }\nactions: [ { log: { message: \"waiting since {{ matched.waiting_since }}\" } } ]\n",
    );
    let msgs = vec![
        msg("q1", 1000, false, "hello?"),
        msg("r", 1100, true, "hi!"),
        msg("q2", 2000, false, "still there?"),
        msg("q3", 2300, false, "??"),
    ];
    let mut d = Decision::default();
    decide_chat(
        &rules,
        &cid(),
        &chat(2),
        &msgs,
        &Memory::default(),
        2000 + 899,
        &mut d,
    );
    assert!(d.chat_firings.is_empty());
    let mut d = Decision::default();
    decide_chat(
        &rules,
        &cid(),
        &chat(2),
        &msgs,
        &Memory::default(),
        2000 + 900,
        &mut d,
    );
    assert_eq!(d.chat_firings.len(), 1);
    assert_eq!(d.logs[0].text, format!("waiting since {}", rfc3339(2000)));
    // Our reply stops it.
    let mut answered = msgs.clone();
    answered.push(msg("r2", 2400, true, "sorry, here"));
    let mut d = Decision::default();
    decide_chat(
        &rules,
        &cid(),
        &chat(0),
        &answered,
        &Memory::default(),
        9999,
        &mut d,
    );
    assert!(d.chat_firings.is_empty());
}

#[test]
fn marked_unread_counts_as_one() {
    let rules = set(
        "id: u\non: chat\nmatch: { unread_count: { gte: 1 } }\nactions: [ { log: { message: x } } ]\n",
    );
    let mut d = Decision::default();
    decide_chat(
        &rules,
        &cid(),
        &chat(-1),
        &[],
        &Memory::default(),
        100,
        &mut d,
    );
    assert_eq!(d.chat_firings.len(), 1);
}

#[test]
fn chat_rules_refuse_message_conditions() {
    let (_, d) = compile_rules(vec![parse_file(Path::new("r.yaml"), "id: u\non: chat\nmatch:\n  unread_count: { gte: 1 }\n  type: [chat]\nactions: [ { log: { message: x } } ]\n").unwrap()]);
    let e = d.to_string();
    assert!(
        e.contains("r.yaml:5:9: `type` is a message condition"),
        "{e}"
    );
    let (_, d) = compile_rules(vec![
        parse_file(
            Path::new("r.yaml"),
            "id: m\nmatch:\n  unanswered_for: 15m\nactions: [ { log: { message: x } } ]\n",
        )
        .unwrap(),
    ]);
    assert!(
        d.to_string()
            .contains("r.yaml:3:19: `unanswered_for` is a chat-rule condition: add `on: chat`"),
        "{d}"
    );
}

#[test]
fn a_chat_rule_with_notify_resolved_says_once_that_its_alert_is_over() {
    let rules = set(
        "id: pileup\non: chat\nmatch: { unread_count: { gte: 5 }, for: 1m }\nnotify_resolved: true\nactions:\n  - log: { message: \"{% if resolved %}over{% else %}pile{% endif %}\" }\n  - webhook: { url: \"https://hooks.example.com/a\" }\n  - webhook: { url: \"https://hooks.example.com/b\", body: { state: \"{% if resolved %}resolved{% else %}firing{% endif %}\" } }\n",
    );
    let msgs = vec![msg("a", 900, false, "hi")];
    let mut memory = Memory::default();
    let step = |unread: Option<i64>, now: i64, page: &[Message], memory: &mut Memory| {
        let mut d = Decision::default();
        decide_chat(
            &rules,
            &cid(),
            &chat_with(unread),
            page,
            memory,
            now,
            &mut d,
        );
        for (r, st) in &d.chat_rules {
            memory.chat_rules.insert(r.clone(), *st);
        }
        d
    };
    // Holds, but clears before it fired: nothing to resolve.
    step(Some(6), 1000, &msgs, &mut memory);
    let d = step(Some(0), 1030, &msgs, &mut memory);
    assert!(d.deliveries.is_empty() && d.resolved.is_empty(), "{d:?}");
    // Holds for a minute: fires (a log line and two webhooks).
    step(Some(6), 2000, &msgs, &mut memory);
    let fired = step(Some(6), 2060, &msgs, &mut memory);
    assert_eq!(fired.deliveries.len(), 2);
    assert_eq!(fired.logs[0].text, "pile");
    // An unknown count or an empty page says nothing: no resolve.
    for (unread, page) in [(None, &msgs[..]), (Some(0), &[][..])] {
        let d = step(unread, 2100, page, &mut memory);
        assert!(d.deliveries.is_empty() && d.resolved.is_empty(), "{d:?}");
    }
    // It stops holding: each webhook once more, as the resolved event of its firing.
    let d = step(Some(0), 2200, &msgs, &mut memory);
    assert_eq!(d.resolved, ["pileup"]);
    assert!(d.logs.is_empty(), "log actions are for firings");
    assert_eq!(d.deliveries.len(), 2);
    for (f, r) in fired.deliveries.iter().zip(&d.deliveries) {
        assert_eq!(r.delivery_id, format!("{}:resolved", f.delivery_id));
        assert_eq!((&r.url, &r.message_key), (&f.url, &f.message_key));
    }
    let body: Value = serde_json::from_str(&d.deliveries[0].body).unwrap();
    assert_eq!(body["type"], "rule.resolved");
    assert_eq!(body["resolves"], fired.deliveries[0].delivery_id.as_str());
    assert_eq!(body["delivery_id"], d.deliveries[0].delivery_id.as_str());
    assert_eq!(body["matched"]["since"], rfc3339(2000));
    assert_eq!(body["resolved_at"], rfc3339(2200));
    assert_eq!(d.deliveries[1].body, r#"{"state":"resolved"}"#);
    assert_eq!(fired.deliveries[1].body, r#"{"state":"firing"}"#);
    // Once: the rule is re-armed in the same decision.
    let d = step(Some(0), 2300, &msgs, &mut memory);
    assert!(d.deliveries.is_empty() && d.resolved.is_empty());
}
