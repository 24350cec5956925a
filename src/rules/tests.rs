use super::*;
use crate::gateway::model::MessageKey;

fn compile_one(path: &str, yaml: &str) -> Result<RuleSet, Diagnostics> {
    let parsed = parse_file(Path::new(path), yaml)?;
    let (set, d) = compile_rules(vec![parsed]);
    if d.has_errors() { Err(d) } else { Ok(set) }
}

fn errors(path: &str, yaml: &str) -> Vec<String> {
    match compile_one(path, yaml) {
        Ok(_) => vec![],
        Err(d) => d.errors().map(ToString::to_string).collect(),
    }
}

fn msg(body: &str, from_me: bool, kind: &str) -> Message {
    Message {
        key: MessageKey {
            from_me,
            id: "ID1".into(),
        },
        serialized_id: format!("{from_me}_966500000000@c.us_ID1"),
        body: body.into(),
        kind: kind.into(),
        timestamp: 1_700_000_000,
        from: Some("966500000000@c.us".into()),
        to: None,
        author: None,
        has_media: false,
    }
}

fn fires(set: &RuleSet, chat: &Chat, m: &Message) -> Vec<String> {
    let id = ChatId::from_gateway(&chat.id);
    let p = set.prepare(&m.body);
    set.rules
        .iter()
        .filter(|r| matches!(set.eval_message(r, &id, chat, m, &p), Verdict::Fired(_)))
        .map(|r| r.id.clone())
        .collect()
}

fn private_chat() -> Chat {
    Chat {
        id: "966500000000@c.us".into(),
        name: Some("Jhone Due".into()),
        ..Chat::default()
    }
}

const BOT: &str = r#"
id: bot-keyword
match:
  from_me: false
  type: [chat, image]
  body:
    any: ["بوت", "bot"]
    words: true
actions:
  - log: { message: "{{ rule.id }} in {{ chat.name }}: {{ message.body }}" }
  - webhook: { url: "https://hooks.example.com/whatsapp" }
"#;

#[test]
fn the_bot_rule_fires_on_arabic_variants_and_not_on_lookalikes() {
    let set = compile_one("rules/bot.yaml", BOT).unwrap();
    let chat = private_chat();
    let cases = [
        ("بوت", true),
        ("بُوت", true),
        ("بـوت", true),
        ("البـوت", true),
        ("والبوت وينه؟", true),
        ("BOT please", true),
        ("روبوت", false),
        ("بوتات", false),
        ("robotics", false),
        ("hello", false),
    ];
    for (body, want) in cases {
        let got = !fires(&set, &chat, &msg(body, false, "chat")).is_empty();
        assert_eq!(got, want, "{body}");
    }
    assert!(
        fires(&set, &chat, &msg("بوت", true, "chat")).is_empty(),
        "from_me: false"
    );
    assert!(
        fires(&set, &chat, &msg("بوت", false, "video")).is_empty(),
        "type not listed"
    );
    assert_eq!(
        fires(&set, &chat, &msg("bot", false, "image")),
        ["bot-keyword"]
    );
}

#[test]
fn notifications_are_seen_only_by_rules_that_name_them() {
    let any = compile_one("r.yaml", "id: all\nactions:\n  - log: { message: x }\n").unwrap();
    let named = compile_one(
        "r.yaml",
        "id: rev\nmatch: { type: revoked }\nactions:\n  - log: { message: x }\n",
    )
    .unwrap();
    let chat = private_chat();
    assert_eq!(fires(&any, &chat, &msg("", false, "chat")), ["all"]);
    assert!(fires(&any, &chat, &msg("", false, "revoked")).is_empty());
    assert!(fires(&any, &chat, &msg("", false, "e2e_notification")).is_empty());
    assert_eq!(fires(&named, &chat, &msg("", false, "revoked")), ["rev"]);
}

#[test]
fn all_none_regex_and_nesting() {
    let yaml = r#"
- id: all-none
  match:
    body: { all: ["refund", "order"], none: ["thanks"] }
  actions: [ { log: { message: x } } ]
- id: order-regex
  match:
    body: { regex: '(?:order|طلب)\s*(?:رقم\s*)?#?(?P<order>\d{3,})' }
  actions: [ { log: { message: "{{ matched.captures.order }}" } } ]
- id: nested
  match:
    any_of:
      - body: { any: [urgent] }
      - all_of: [ { is_group: true }, { body: { any: ["عاجل"] } } ]
    not: { from_me: true }
  actions: [ { log: { message: x } } ]
"#;
    let set = compile_one("r.yaml", yaml).unwrap();
    let chat = private_chat();
    let group = Chat {
        id: "1203@g.us".into(),
        is_group: true,
        ..Chat::default()
    };
    assert_eq!(
        fires(&set, &chat, &msg("Refund my ORDER", false, "chat")),
        ["all-none"]
    );
    assert!(fires(&set, &chat, &msg("refund order, thanks", false, "chat")).is_empty());
    assert_eq!(
        fires(&set, &chat, &msg("مشكلة في الطلب رقم ٤٥٦", false, "chat")),
        ["order-regex"]
    );
    assert_eq!(
        fires(&set, &chat, &msg("URGENT", false, "chat")),
        ["nested"]
    );
    assert!(fires(&set, &chat, &msg("URGENT", true, "chat")).is_empty());
    assert!(
        fires(&set, &chat, &msg("عاجل", false, "chat")).is_empty(),
        "عاجل only counts in groups"
    );
    assert_eq!(fires(&set, &group, &msg("عاجل", false, "chat")), ["nested"]);

    let id = ChatId::from_gateway(&chat.id);
    let m = msg("الطلب رقم ٤٥٦", false, "chat");
    let p = set.prepare(&m.body);
    let Verdict::Fired(matched) = set.eval_message(&set.rules[1], &id, &chat, &m, &p) else {
        panic!()
    };
    assert_eq!(
        matched.captures.get("order").map(String::as_str),
        Some("456"),
        "regex sees normalized digits"
    );
}

#[test]
fn normalize_false_matches_the_text_as_written() {
    let set = compile_one("r.yaml", "id: raw\nmatch: { body: { any: [BOT], normalize: false } }\nactions: [ { log: { message: x } } ]\n").unwrap();
    let chat = private_chat();
    assert_eq!(fires(&set, &chat, &msg("BOT", false, "chat")), ["raw"]);
    assert!(fires(&set, &chat, &msg("bot", false, "chat")).is_empty());
}

#[test]
fn chats_condition_accepts_phone_numbers() {
    let set = compile_one(
        "r.yaml",
        "id: c\nmatch: { chats: [\"966500000000\"] }\nactions: [ { log: { message: x } } ]\n",
    )
    .unwrap();
    assert_eq!(
        fires(&set, &private_chat(), &msg("x", false, "chat")),
        ["c"]
    );
    let other = Chat {
        id: "966511111111@c.us".into(),
        ..Chat::default()
    };
    assert!(fires(&set, &other, &msg("x", false, "chat")).is_empty());
}

#[test]
fn explain_names_the_first_failed_condition() {
    let set = compile_one("r.yaml", BOT).unwrap();
    let chat = private_chat();
    let id = ChatId::from_gateway(&chat.id);
    let m = msg("روبوت", false, "chat");
    let p = set.prepare(&m.body);
    assert_eq!(
        set.eval_message(&set.rules[0], &id, &chat, &m, &p),
        Verdict::Failed("body.any: no keyword occurs".into())
    );
    let m = msg("bot", true, "chat");
    let p = set.prepare(&m.body);
    let Verdict::Failed(why) = set.eval_message(&set.rules[0], &id, &chat, &m, &p) else {
        panic!()
    };
    assert!(why.starts_with("from_me"), "{why}");
}

#[test]
fn check_errors_carry_line_and_column() {
    // A misspelled key.
    let e = errors(
        "rules/x.yaml",
        "id: a\nmatch:\n  bdy: { any: [x] }\nactions: [ { log: { message: x } } ]\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("rules/x.yaml:3:3: ") && e[0].contains("bdy"),
        "{e:?}"
    );
    // A bad regex.
    let e = errors(
        "r.yaml",
        "id: a\nmatch:\n  body:\n    regex: '(unclosed'\nactions: [ { log: { message: x } } ]\n",
    );
    assert!(e[0].starts_with("r.yaml:4:12: body.regex"), "{e:?}");
    // A bad duration.
    let e = errors(
        "r.yaml",
        "id: a\ncooldown: 10 minutes\nactions: [ { log: { message: x } } ]\n",
    );
    assert!(e[0].starts_with("r.yaml:2:"), "{e:?}");
    // A bad chat id.
    let e = errors(
        "r.yaml",
        "id: a\nmatch:\n  chats: [\"+966500000000\"]\nactions: [ { log: { message: x } } ]\n",
    );
    assert!(
        e[0].starts_with("r.yaml:3:11: ") && e[0].contains("did you mean 966500000000?"),
        "{e:?}"
    );
    // An unknown template variable.
    let e = errors(
        "r.yaml",
        "id: a\nactions:\n  - log: { message: \"{{ mesage.body }}\" }\n",
    );
    assert!(
        e[0].starts_with("r.yaml:3:21: log.message") && e[0].contains("undefined"),
        "{e:?}"
    );
    // A JSON body template that is not JSON.
    let e = errors(
        "r.yaml",
        "id: a\nactions:\n  - webhook: { url: \"https://x.example/\", body: \"{ not json {{ rule.id }}\" }\n",
    );
    assert!(e[0].contains("valid JSON"), "{e:?}");
    // A header with a newline.
    let e = errors(
        "r.yaml",
        "id: a\nactions:\n  - webhook: { url: \"https://x.example/\", headers: { X-A: \"a\\nb\" } }\n",
    );
    assert!(e[0].contains("CR or LF"), "{e:?}");
    // No actions.
    let e = errors("r.yaml", "id: a\nactions: []\n");
    assert!(
        e[0].starts_with("r.yaml:2:") && e[0].contains("no actions"),
        "{e:?}"
    );
    // A bad URL scheme.
    let e = errors(
        "r.yaml",
        "id: a\nactions:\n  - webhook: { url: \"ftp://x.example/\" }\n",
    );
    assert!(e[0].starts_with("r.yaml:3:21: webhook.url"), "{e:?}");
}

#[test]
fn duplicate_ids_across_files_name_both_places() {
    let a = parse_file(
        Path::new("a.yaml"),
        "id: same\nactions: [ { log: { message: x } } ]\n",
    )
    .unwrap();
    let b = parse_file(
        Path::new("b.yaml"),
        "\n\nid: same\nactions: [ { log: { message: x } } ]\n",
    )
    .unwrap();
    let (_, d) = compile_rules(vec![a, b]);
    let e: Vec<String> = d.errors().map(ToString::to_string).collect();
    assert_eq!(
        e,
        ["b.yaml:3:5: rule id `same` is already used at a.yaml:1:5"]
    );
}

#[test]
fn structured_and_json_bodies_render() {
    let yaml = r#"
id: s
actions:
  - webhook:
      url: https://x.example/
      body:
        text: "{{ message.body }}"
        n: 3
        list: ["{{ rule.id }}", true]
  - webhook:
      url: https://x.example/
      body: '{"t": {{ message.body }}, "r": {{ rule.id }}}'
"#;
    let set = compile_one("r.yaml", yaml).unwrap();
    let chat = private_chat();
    let m = msg("he said \"hi\"", false, "chat");
    let id = ChatId::from_gateway(&chat.id);
    let d = crate::engine::decide::decide(
        &set,
        &id,
        &chat,
        &[&m],
        &HashMap::new(),
        crate::engine::decide::Clock::MessageTime,
    );
    assert_eq!(d.deliveries.len(), 2);
    let a: Value = serde_json::from_str(&d.deliveries[0].body).unwrap();
    assert_eq!(
        a,
        json!({"text": "he said \"hi\"", "n": 3, "list": ["s", true]})
    );
    let b: Value = serde_json::from_str(&d.deliveries[1].body).unwrap();
    assert_eq!(b, json!({"t": "he said \"hi\"", "r": "s"}));
}

#[test]
fn the_envelope_matches_the_spec() {
    let set = compile_one("r.yaml", BOT).unwrap();
    let chat = private_chat();
    let id = ChatId::from_gateway(&chat.id);
    let m = msg("بوت", false, "chat");
    let d = crate::engine::decide::decide(
        &set,
        &id,
        &chat,
        &[&m],
        &HashMap::new(),
        crate::engine::decide::Clock::Now(1_764_312_052),
    );
    assert_eq!(d.logs[0].text, "bot-keyword in Jhone Due: بوت");
    let body: Value = serde_json::from_str(&d.deliveries[0].body).unwrap();
    let want = json!({
        "type": "rule.matched",
        "rule": "bot-keyword",
        "delivery_id": d.deliveries[0].delivery_id,
        "chat": { "id": "966500000000@c.us", "name": "Jhone Due", "is_group": false, "unread_count": 0 },
        "message": { "id": "false_966500000000@c.us_ID1", "body": "بوت", "type": "chat",
                     "timestamp": 1_700_000_000, "from": "966500000000@c.us", "author": null, "from_me": false },
        "matched": { "keywords": ["بوت"] },
        "fired_at": "2025-11-28T06:40:52Z"
    });
    assert_eq!(body, want);
    assert_eq!(d.deliveries[0].action_index, 1);
}

#[test]
fn cooldown_and_max_age() {
    let yaml = "id: c\ncooldown: 10m\nmax_age: 1h\nmatch: { body: { any: [x] } }\nactions: [ { log: { message: x } } ]\n";
    let set = compile_one("r.yaml", yaml).unwrap();
    let chat = private_chat();
    let id = ChatId::from_gateway(&chat.id);
    let mut a = msg("x", false, "chat");
    let mut b = msg("x", false, "chat");
    let mut c = msg("x", false, "chat");
    a.timestamp = 1_000_000;
    b.timestamp = 1_000_000 + 300;
    c.timestamp = 1_000_000 + 601;
    b.key.id = "B".into();
    c.key.id = "C".into();
    let d = crate::engine::decide::decide(
        &set,
        &id,
        &chat,
        &[&a, &b, &c],
        &HashMap::new(),
        crate::engine::decide::Clock::Now(1_000_700),
    );
    assert_eq!(
        d.firings
            .iter()
            .map(|f| f.message_index)
            .collect::<Vec<_>>(),
        [0, 2]
    );
    assert_eq!(d.suppressed, [("c".to_string(), 1)]);
    assert_eq!(d.cooldowns, [("c".to_string(), 1_000_601 + 600)]);
    let d = crate::engine::decide::decide(
        &set,
        &id,
        &chat,
        &[&a],
        &HashMap::new(),
        crate::engine::decide::Clock::Now(1_000_000 + 3601),
    );
    assert_eq!(d.stale.len(), 1);
    assert!(d.firings.is_empty());
}
