use super::*;

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
    let mut m = Message::text("966500000000@c.us", "ID1", 1_700_000_000, from_me, body);
    m.kind = kind.into();
    m.from = Some("966500000000@c.us".into());
    m
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
        unread_count: Some(0),
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
    let m = msg("hello there", false, "chat");
    let p = set.prepare(&m.body);
    assert_eq!(
        set.eval_message(&set.rules[0], &id, &chat, &m, &p),
        Verdict::Failed("body.any: no keyword occurs".into())
    );
    // With words: true, a keyword glued to other letters is there, but not as a word: say so.
    let m = msg("روبوت", false, "chat");
    let p = set.prepare(&m.body);
    assert_eq!(
        set.eval_message(&set.rules[0], &id, &chat, &m, &p),
        Verdict::Failed("body.any: `بوت` occurs, but not as a whole word (words: true)".into())
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
        "chat": { "id": "966500000000@c.us", "account": "default", "name": "Jhone Due", "is_group": false, "unread_count": 0 },
        "message": { "id": "false_966500000000@c.us_ID1", "body": "بوت", "type": "chat",
                     "timestamp": 1_700_000_000, "from": "966500000000@c.us", "author": null, "from_me": false },
        "matched": { "keywords": ["بوت"] },
        "fired_at": "2025-11-28T06:40:52Z"
    });
    assert_eq!(body, want);
    assert_eq!(d.deliveries[0].action_index, 1);
    // A reply without unreadCount: the envelope says null, not 0.
    let unknown = Chat {
        unread_count: None,
        ..chat
    };
    let d = crate::engine::decide::decide(
        &set,
        &id,
        &unknown,
        &[&m],
        &HashMap::new(),
        crate::engine::decide::Clock::Now(1_764_312_052),
    );
    let body: Value = serde_json::from_str(&d.deliveries[0].body).unwrap();
    assert_eq!(body["chat"]["unread_count"], Value::Null);
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
    assert_eq!(
        d.suppressed,
        [crate::engine::decide::RuleOnMessage {
            rule_id: "c".to_string(),
            message_index: 1
        }]
    );
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

fn warnings(path: &str, yaml: &str) -> Vec<String> {
    let parsed = parse_file(Path::new(path), yaml).expect("parses");
    let (_, d) = compile_rules(vec![parsed]);
    assert!(!d.has_errors(), "{d}");
    d.0.iter().map(ToString::to_string).collect()
}

const SCRIPTS: &str = r#"
- id: short-from-customer
  match:
    from_me: false
    script: 'msg.body.len() < 10 && msg.normalized == "bot" && !chat.is_group && chat.name == "Jhone Due" && msg.type == "chat"'
  actions: [ { log: { message: x } } ]
- id: broken
  match:
    from_me: false
    script: 'msg.bodyy.len() > 0'
  actions: [ { log: { message: x } } ]
- id: plain
  match: { from_me: false, body: { any: [bot] } }
  actions: [ { log: { message: x } } ]
"#;

#[test]
fn script_conditions_see_an_unknown_unread_count_as_unit() {
    let set = compile_one(
        "r.yaml",
        "- id: unknown\n  match: { script: 'chat.unread_count == ()' }\n  actions: [ { log: { message: x } } ]\n- id: seven\n  match: { script: 'chat.unread_count == 7' }\n  actions: [ { log: { message: x } } ]\n",
    )
    .unwrap();
    let m = msg("hi", false, "chat");
    let unknown = Chat {
        unread_count: None,
        ..private_chat()
    };
    assert_eq!(fires(&set, &unknown, &m), ["unknown"]);
    let seven = Chat {
        unread_count: Some(7),
        ..private_chat()
    };
    assert_eq!(fires(&set, &seven, &m), ["seven"]);
}

#[test]
fn script_conditions_see_msg_and_chat() {
    let set = compile_one("r.yaml", SCRIPTS).unwrap();
    let chat = private_chat();
    assert_eq!(
        fires(&set, &chat, &msg("BOT", false, "chat")),
        ["short-from-customer", "plain"],
        "the broken script does not stop the others"
    );
    assert_eq!(
        fires(&set, &chat, &msg("bot bot bot bot", false, "chat")),
        ["plain"]
    );
    let m = msg("BOT", false, "chat");
    let id = ChatId::from_gateway(&chat.id);
    let p = set.prepare(&m.body);
    let Verdict::Failed(why) = set.eval_message(&set.rules[1], &id, &chat, &m, &p) else {
        panic!()
    };
    assert!(
        why.starts_with("script: rule `broken`: ") && why.contains("bodyy"),
        "{why}"
    );
    let m = msg("bot bot bot bot", false, "chat");
    let p = set.prepare(&m.body);
    assert_eq!(
        set.eval_message(&set.rules[0], &id, &chat, &m, &p),
        Verdict::Failed("script: returned false".into())
    );
}

#[test]
fn a_runaway_script_is_stopped_and_the_other_rules_still_fire() {
    let zeros = format!("[{}]", vec!["0"; 90].join(","));
    let yaml = format!(
        "- id: runaway\n  match:\n    script: '{zeros}.map(|x| {zeros}.map(|y| {zeros}.map(|z| z).len()).len()).len() > 0'\n  actions: [ {{ log: {{ message: x }} }} ]\n- id: after\n  actions: [ {{ log: {{ message: x }} }} ]\n"
    );
    let set = compile_one("r.yaml", &yaml).unwrap();
    let chat = private_chat();
    let started = std::time::Instant::now();
    assert_eq!(fires(&set, &chat, &msg("x", false, "chat")), ["after"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let id = ChatId::from_gateway(&chat.id);
    let m = msg("x", false, "chat");
    let p = set.prepare(&m.body);
    let Verdict::Failed(why) = set.eval_message(&set.rules[0], &id, &chat, &m, &p) else {
        panic!()
    };
    assert!(why.starts_with("script: rule `runaway`: stopped"), "{why}");
}

#[test]
fn check_reports_a_bad_script_at_its_line_and_column() {
    let e = errors(
        "r.yaml",
        "id: a\nmatch:\n  script: 'msg.body.len( < 5'\nactions: [ { log: { message: x } } ]\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("r.yaml:3:11: script: "), "{e:?}");
    assert!(e[0].contains("of the expression)"), "{e:?}");
    // An unknown variable is caught at load, not on the first message.
    let e = errors(
        "r.yaml",
        "id: a\nmatch:\n  script: 'mesage.body == \"\"'\nactions: [ { log: { message: x } } ]\n",
    );
    assert!(
        e[0].starts_with("r.yaml:3:11: script: ") && e[0].contains("mesage"),
        "{e:?}"
    );
}

#[test]
fn check_refuses_a_script_parse_bomb() {
    let bomb = format!("{}true{}", "(".repeat(5_000), ")".repeat(5_000));
    let e = errors(
        "r.yaml",
        &format!("id: a\nmatch:\n  script: '{bomb}'\nactions: [ {{ log: {{ message: x }} }} ]\n"),
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("r.yaml:3:11: script: "), "{e:?}");
    let deep = format!("{}true{}", "!(".repeat(200), ")".repeat(200));
    let e = errors(
        "r.yaml",
        &format!("id: a\nmatch:\n  script: '{deep}'\nactions: [ {{ log: {{ message: x }} }} ]\n"),
    );
    assert!(e[0].starts_with("r.yaml:3:11: script: "), "{e:?}");
}

#[test]
fn check_suggests_the_key_that_was_meant() {
    let e = errors(
        "r.yaml",
        "id: a\nmatch:\n  body:\n    any: [x]\n    wrods: true\nactions: [ { log: { message: x } } ]\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("r.yaml:5:5: unknown field `wrods`, did you mean `words`?"),
        "{e:?}"
    );
    let e = errors(
        "r.yaml",
        "id: a\ncoldown: 10m\nactions: [ { log: { message: x } } ]\n",
    );
    assert!(
        e[0].starts_with("r.yaml:2:1: unknown field `coldown`, did you mean `cooldown`?"),
        "{e:?}"
    );
}

#[test]
fn check_refuses_duplicate_keys() {
    let e = errors(
        "r.yaml",
        "id: a\nmatch:\n  from_me: false\n  from_me: true\nactions: [ { log: { message: x } } ]\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("r.yaml:4:3: ") && e[0].contains("from_me"),
        "{e:?}"
    );
    let e = errors(
        "r.yaml",
        "id: a\nactions:\n  - webhook:\n      url: https://x.example/\n      headers: { X-A: a, X-A: b }\n",
    );
    assert!(
        e[0].starts_with("r.yaml:5:26: ") && e[0].contains("X-A"),
        "{e:?}"
    );
}

#[test]
fn check_warns_about_keywords_that_normalize_to_the_same_text() {
    let w = warnings(
        "r.yaml",
        "id: a\nmatch:\n  from_me: false\n  body:\n    any: [\"بوت\", \"بُوت\", BOT]\n    none: [bot]\nactions: [ { log: { message: x } } ]\n",
    );
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with(
            "r.yaml:5:18: warning: body.any: `بُوت` normalizes to the same text as `بوت`"
        ),
        "{w:?}"
    );
    assert!(
        w[1].starts_with(
            "r.yaml:6:12: warning: body.none: `bot` normalizes to the same text as `BOT`"
        ),
        "{w:?}"
    );
    // The same keyword in two branches of an any_of is fine.
    let w = warnings(
        "r.yaml",
        "id: a\nmatch:\n  from_me: false\n  any_of:\n    - body: { any: [x] }\n    - { is_group: true, body: { any: [x] } }\nactions: [ { log: { message: x } } ]\n",
    );
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn check_warns_about_a_webhook_rule_that_would_fire_on_our_own_messages() {
    let w = warnings(
        "r.yaml",
        "id: a\nmatch:\n  body: { any: [x] }\nactions:\n  - log: { message: x }\n  - webhook: { url: \"https://x.example/\" }\n",
    );
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(
            "r.yaml:6:21: warning: rule `a` sends a webhook and has no `match.from_me`"
        ),
        "{w:?}"
    );
    // `from_me` set at the top level (either way), or no webhook: no warning.
    for yaml in [
        "id: a\nmatch: { from_me: true }\nactions:\n  - webhook: { url: \"https://x.example/\" }\n",
        "id: a\nmatch: { from_me: false }\nactions:\n  - webhook: { url: \"https://x.example/\" }\n",
        "id: a\nactions:\n  - log: { message: x }\n",
    ] {
        assert!(warnings("r.yaml", yaml).is_empty(), "{yaml}");
    }
}

#[test]
fn check_warns_about_a_keyword_that_can_never_match() {
    let w = warnings(
        "r.yaml",
        "id: a\nmatch:\n  body:\n    any: [x, \"\u{64e}\u{640}\"]\nactions: [ { log: { message: x } } ]\n",
    );
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("r.yaml:4:14: warning: body.any: ") && w[0].contains("can never match"),
        "{w:?}"
    );
}

/// The hot path (`fired`, with keyword gating) and the explaining path (`eval_message`)
/// must agree on every rule and message.
#[test]
fn the_fast_path_agrees_with_eval_message() {
    let yaml = r#"
- id: any-words
  match: { body: { any: ["بوت", bot], words: true } }
  actions: [ { log: { message: x } } ]
- id: all
  match: { body: { all: [refund, order] } }
  actions: [ { log: { message: x } } ]
- id: none-only
  match: { body: { none: [thanks] } }
  actions: [ { log: { message: x } } ]
- id: regex
  match: { body: { regex: '(?:order|طلب)\s*#?(\d+)' } }
  actions: [ { log: { message: x } } ]
- id: any-of
  match:
    any_of: [ { body: { any: [urgent] } }, { body: { any: ["عاجل"] } } ]
  actions: [ { log: { message: x } } ]
- id: raw
  match: { from_me: false, body: { any: [BOT], normalize: false } }
  actions: [ { log: { message: x } } ]
- id: rev
  match: { type: [revoked, chat] }
  actions: [ { log: { message: x } } ]
- id: regex-raw
  match: { body: { regex: 'BOT', normalize: false } }
  actions: [ { log: { message: x } } ]
- id: regex-none
  match: { from_me: false, body: { regex: 'order|طلب', none: [thanks] } }
  actions: [ { log: { message: x } } ]
- id: regex-nested
  match: { any_of: [ { body: { regex: '\d{3}' } }, { is_group: true } ] }
  actions: [ { log: { message: x } } ]
"#;
    let set = compile_one("r.yaml", yaml).unwrap();
    let chat = private_chat();
    let id = ChatId::from_gateway(&chat.id);
    let bodies = [
        "",
        "bot",
        "BOT",
        "روبوت",
        "والبوت",
        "refund my order",
        "refund, thanks",
        "order #123",
        "الطلب رقم ٤٥٦",
        "URGENT عاجل",
        "thanks bot",
        "thanks for the order",
    ];
    for body in bodies {
        for (from_me, kind) in [(false, "chat"), (true, "chat"), (false, "revoked")] {
            let m = msg(body, from_me, kind);
            let p = set.prepare(&m.body);
            let slow: Vec<(String, Matched)> = set
                .rules
                .iter()
                .filter_map(|r| match set.eval_message(r, &id, &chat, &m, &p) {
                    Verdict::Fired(matched) => Some((r.id.clone(), matched)),
                    Verdict::Failed(_) => None,
                })
                .collect();
            let fast: Vec<(String, Matched)> = set
                .fired(&id, &chat, &m, &p)
                .map(|(r, matched)| (r.id.clone(), matched))
                .collect();
            assert_eq!(fast, slow, "{body:?} from_me={from_me} {kind}");
        }
    }
}

/// One case per kind of `check` error, each with its exact `path:line:col`.
#[test]
fn every_check_error_kind_has_an_exact_position() {
    let ok_actions = "actions: [ { log: { message: x } } ]\n";
    let cases: &[(&str, String, &str)] = &[
        (
            "yaml syntax",
            format!("id: a\nmatch:\n  from_me: \"false\n{ok_actions}"),
            "r.yaml:3:12: ",
        ),
        (
            "unknown key",
            format!("id: a\nmatch:\n  bdy: {{ any: [x] }}\n{ok_actions}"),
            "r.yaml:3:3: unknown field `bdy`, did you mean `body`?",
        ),
        (
            "wrong type",
            format!("id: a\nmatch:\n  from_me: maybe\n{ok_actions}"),
            "r.yaml:3:12: ",
        ),
        (
            "duplicate key",
            format!("id: a\nid: b\n{ok_actions}"),
            "r.yaml:2:1: ",
        ),
        (
            "bad regex",
            format!("id: a\nmatch:\n  body:\n    regex: '(unclosed'\n{ok_actions}"),
            "r.yaml:4:12: body.regex: ",
        ),
        (
            "template",
            "id: a\nactions:\n  - log: { message: \"{{ mesage.body }}\" }\n".to_string(),
            "r.yaml:3:21: log.message: ",
        ),
        (
            "bad duration",
            format!("id: a\ncooldown: 10 minutes\n{ok_actions}"),
            "r.yaml:2:11: ",
        ),
        (
            "bad chat id",
            format!("id: a\nmatch:\n  chats: [\"+966500000000\"]\n{ok_actions}"),
            "r.yaml:3:11: ",
        ),
        (
            "bad rhai expression",
            format!("id: a\nmatch:\n  script: 'msg.body ==== 1'\n{ok_actions}"),
            "r.yaml:3:11: script: ",
        ),
    ];
    let mut wrong = Vec::new();
    for (kind, yaml, want) in cases {
        let e = errors("r.yaml", yaml);
        if e.len() != 1 || !e[0].starts_with(want) {
            wrong.push(format!("{kind}: want {want:?}, got {e:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The keyword automaton normalizes the body straight into its own encoding; the normalized
/// text that regexes and scripts read is built on first use. Both must agree with
/// `normalize`, whether the body takes the fast path (Gulf chat text) or the general one.
#[test]
fn keywords_and_regexes_see_the_same_normalized_text_on_both_paths() {
    let yaml = r#"
- id: kw
  match: { body: { any: ["طلب كبير"] } }
  actions: [ { log: { message: x } } ]
- id: re
  match: { body: { regex: 'طلب كبير (\d+)' } }
  actions: [ { log: { message: x } } ]
"#;
    let set = compile_one("r.yaml", yaml).unwrap();
    let chat = private_chat();
    for body in [
        "طلـبٌ كبيرٌ ٤٥",            // fast path: tatweel, tashkeel, Arabic-Indic digits
        "ﻃﻠﺐ كبير ٤٥ café",        // general path: presentation forms, é
        "CAFÉ\u{00A0}طلب كبير 45", // general path: NBSP
    ] {
        assert_eq!(
            fires(&set, &chat, &msg(body, false, "chat")),
            ["kw", "re"],
            "{body:?}"
        );
        let p = set.prepare(body);
        assert_eq!(p.normalized(), normalize(body), "{body:?}");
    }
}

#[test]
fn numbers_in_the_body_compare_in_three_digit_systems() {
    let set = compile_one(
        "r.yaml",
        "id: big\nmatch: { body: { number: { gte: 1000 } } }\nactions: [ { log: { message: '{{ matched.number }}' } } ]\n",
    )
    .unwrap();
    let chat = private_chat();
    let id = ChatId::from_gateway(&chat.id);
    for (body, fires_or_why) in [
        ("order of 1500 SAR", Ok(1500.0)),
        ("طلب بقيمة ١٬٥٠٠ ريال", Ok(1500.0)),
        ("سفارش ۲۰۰۰", Ok(2000.0)),
        ("only 750", Err("body.number: 750 is not >= 1000")),
        ("no amount", Err("body.number: the text has no number")),
    ] {
        let m = msg(body, false, "chat");
        let p = set.prepare(&m.body);
        match (
            set.eval_message(&set.rules[0], &id, &chat, &m, &p),
            fires_or_why,
        ) {
            (Verdict::Fired(matched), Ok(n)) => assert_eq!(matched.number, Some(n), "{body}"),
            (Verdict::Failed(why), Err(want)) => assert_eq!(why, want, "{body}"),
            (v, want) => panic!("{body}: {v:?}, expected {want:?}"),
        }
    }
    // A named capture, compared as a number; the rest of the body does not count.
    let set = compile_one(
        "r.yaml",
        "id: big-order\nmatch:\n  body:\n    regex: '(?:order|طلب)\\s*#?(?P<order>\\d+)'\n    number: { capture: order, gt: 5000, lt: 9000 }\nactions: [ { log: { message: x } } ]\n",
    )
    .unwrap();
    for (body, fired) in [
        ("order #7000 costs 12 SAR", true),
        ("12 items, order #4000", false),
        ("طلب ٨٠٠٠", true),
        ("order #9500", false),
    ] {
        let m = msg(body, false, "chat");
        let p = set.prepare(&m.body);
        assert_eq!(
            matches!(
                set.eval_message(&set.rules[0], &id, &chat, &m, &p),
                Verdict::Fired(_)
            ),
            fired,
            "{body}"
        );
    }
}

#[test]
fn check_refuses_a_number_condition_that_cannot_hold() {
    let e = errors(
        "r.yaml",
        "id: a\nmatch:\n  body:\n    number: { capture: amount }\nactions: [ { log: { message: x } } ]\n",
    );
    assert_eq!(
        e,
        ["r.yaml:4:13: body.number: give a comparison: gt, gte, lt, lte or eq"]
    );
    let e = errors(
        "r.yaml",
        "id: a\nmatch:\n  body:\n    regex: '(?P<total>\\d+)'\n    number: { capture: amount, gt: 1 }\nactions: [ { log: { message: x } } ]\n",
    );
    assert!(
        e[0].starts_with("r.yaml:5:13: body.number.capture: the regex has no group named `amount`"),
        "{e:?}"
    );
    for bounds in ["{ gt: 10, lt: 5 }", "{ eq: 3, gt: 4 }", "{ gte: 5, lt: 5 }"] {
        let e = errors(
            "r.yaml",
            &format!(
                "id: a\nmatch:\n  body:\n    number: {bounds}\nactions: [ {{ log: {{ message: x }} }} ]\n"
            ),
        );
        assert!(
            e.iter()
                .any(|e| e.contains("no number meets all of these bounds")),
            "{bounds}: {e:?}"
        );
    }
    for bounds in [
        "{ gt: 10, lt: 11 }",
        "{ gte: 5, lte: 5 }",
        "{ eq: 0.5 }",
        "{ gt: 1000 }",
    ] {
        let e = errors(
            "r.yaml",
            &format!(
                "id: a\nmatch:\n  body:\n    number: {bounds}\nactions: [ {{ log: {{ message: x }} }} ]\n"
            ),
        );
        assert!(e.is_empty(), "{bounds}: {e:?}");
    }
    let w = warnings(
        "r.yaml",
        "id: a\nmatch:\n  body: { any: [بوت], suffixes: true }\nactions: [ { log: { message: x } } ]\n",
    );
    assert!(
        w.iter()
            .any(|w| w.contains("body.suffixes: has effect only with `words: true`")),
        "{w:?}"
    );
}

#[test]
fn suffixes_reach_the_rule_and_explain_names_the_word_rule() {
    let set = compile_one(
        "r.yaml",
        "id: bot\nmatch: { body: { any: [بوت], words: true, suffixes: true } }\nactions: [ { log: { message: x } } ]\n",
    )
    .unwrap();
    let chat = private_chat();
    let id = ChatId::from_gateway(&chat.id);
    assert_eq!(
        fires(&set, &chat, &msg("ابي بوتكم", false, "chat")),
        ["bot"]
    );
    assert!(fires(&set, &chat, &msg("عندكم بوتات؟", false, "chat")).is_empty());
    let m = msg("بوتات", false, "chat");
    let p = set.prepare(&m.body);
    assert_eq!(
        set.eval_message(&set.rules[0], &id, &chat, &m, &p),
        Verdict::Failed(
            "body.any: `بوت` occurs, but not as a whole word (words: true, suffixes: true)".into()
        )
    );
}

/// A rule that fires on any message within `when` (YAML flow map).
fn when_rule(when: &str) -> RuleSet {
    compile_one(
        "r.yaml",
        &format!(
            "id: hours\nmatch: {{ when: {when} }}\nactions: [ {{ log: {{ message: x }} }} ]\n"
        ),
    )
    .unwrap()
}

/// Whether the `when` rule fires on a message sent at `at` (RFC 3339), and why not.
fn fires_at(set: &RuleSet, at: &str) -> Result<(), String> {
    let chat = private_chat();
    let id = ChatId::from_gateway(&chat.id);
    let mut m = msg("hello", false, "chat");
    m.timestamp = at.parse::<jiff::Timestamp>().unwrap().as_second();
    let p = set.prepare(&m.body);
    match set.eval_message(&set.rules[0], &id, &chat, &m, &p) {
        Verdict::Fired(_) => Ok(()),
        Verdict::Failed(why) => Err(why),
    }
}

#[test]
fn business_hours_in_riyadh_hold_on_the_local_week_and_clock() {
    // Riyadh is UTC+3 all year; the Saudi week is Sunday to Thursday.
    let set = when_rule(
        "{ days: [sun, mon, tue, wed, thu], between: \"08:00-17:00\", tz: Asia/Riyadh, holidays: [2026-12-02] }",
    );
    let table: &[(&str, Result<(), &str>)] = &[
        ("2026-11-29T05:00:00Z", Ok(())), // Sunday 08:00 local: the first minute
        (
            "2026-11-29T04:59:59Z",
            Err("when: 07:59 (Asia/Riyadh) is not between 08:00 and 17:00"),
        ),
        ("2026-11-29T13:59:00Z", Ok(())), // 16:59
        (
            "2026-11-29T14:00:00Z",
            Err("when: 17:00 (Asia/Riyadh) is not between 08:00 and 17:00"),
        ),
        // Thursday 23:00 UTC is already Friday 02:00 in Riyadh: the weekend.
        (
            "2026-11-26T23:00:00Z",
            Err("when: 2026-11-27 is a fri (Asia/Riyadh), not one of the days"),
        ),
        (
            "2026-11-28T10:00:00Z",
            Err("when: 2026-11-28 is a sat (Asia/Riyadh), not one of the days"),
        ),
        // Saturday 21:30 UTC is Sunday 00:30 local: a working day, but before hours.
        (
            "2026-11-28T21:30:00Z",
            Err("when: 00:30 (Asia/Riyadh) is not between 08:00 and 17:00"),
        ),
        (
            "2026-12-02T09:00:00Z",
            Err("when: 2026-12-02 is a holiday (Asia/Riyadh)"),
        ),
        ("2026-12-03T09:00:00Z", Ok(())),
    ];
    for (at, want) in table {
        assert_eq!(fires_at(&set, at), want.map_err(str::to_string), "{at}");
    }
}

#[test]
fn a_zone_with_daylight_saving_follows_its_clock_and_night_windows_span_midnight() {
    // Berlin: UTC+1 in winter, UTC+2 from 2026-03-29 02:00 local.
    let set = when_rule("{ between: \"09:00-10:00\", tz: Europe/Berlin }");
    assert_eq!(fires_at(&set, "2026-03-28T08:30:00Z"), Ok(())); // 09:30 CET
    assert!(fires_at(&set, "2026-03-30T08:30:00Z").is_err()); // 10:30 CEST
    assert_eq!(fires_at(&set, "2026-03-30T07:30:00Z"), Ok(())); // 09:30 CEST
    // After hours in Dubai (UTC+4), across midnight.
    let night = when_rule("{ between: \"22:00-06:00\", tz: Asia/Dubai }");
    assert_eq!(fires_at(&night, "2026-11-28T18:00:00Z"), Ok(())); // 22:00
    assert_eq!(fires_at(&night, "2026-11-29T01:59:00Z"), Ok(())); // 05:59
    assert!(fires_at(&night, "2026-11-29T02:00:00Z").is_err()); // 06:00
    assert!(fires_at(&night, "2026-11-29T12:00:00Z").is_err()); // 16:00
    // Without a zone: UTC (or the config's rules.timezone).
    let utc = when_rule("{ between: \"09:00-10:00\" }");
    assert_eq!(fires_at(&utc, "2026-11-28T09:15:00Z"), Ok(()));
    let set = compile_rules_with(
        vec![parse_file(
            Path::new("r.yaml"),
            "id: hours\nmatch: { when: { between: \"09:00-10:00\" } }\nactions: [ { log: { message: x } } ]\n",
        )
        .unwrap()],
        &crate::net::ssrf::NetPolicy::AllowAll,
        Some(&jiff::tz::TimeZone::get("Asia/Riyadh").unwrap()),
    )
    .0;
    assert_eq!(fires_at(&set, "2026-11-28T06:15:00Z"), Ok(())); // 09:15 in Riyadh
    assert!(fires_at(&set, "2026-11-28T09:15:00Z").is_err());
}

#[test]
fn check_names_a_bad_when_at_its_key() {
    let e = |when: &str| {
        errors(
            "r.yaml",
            &format!("id: a\nmatch:\n  when: {when}\nactions: [ {{ log: {{ message: x }} }} ]\n"),
        )
    };
    assert_eq!(
        e("{ days: [sun, funday] }"),
        ["r.yaml:3:9: when.days: `funday` is not a day; write sun, mon, tue, wed, thu, fri or sat"]
    );
    assert!(
        e("{ between: \"8-17\" }")[0]
            .contains("when.between: `8-17` is not a window like 08:00-17:00")
    );
    assert!(e("{ between: \"09:00-09:00\" }")[0].contains("starts and ends at the same time"));
    assert!(e("{ tz: Riyadh }")[0].contains("when.tz: `Riyadh` is not a time zone"));
    assert!(
        e("{ holidays: [2026-13-01] }")[0].contains("when.holidays: `2026-13-01` is not a date")
    );
}

#[test]
fn the_small_hours_of_a_night_window_belong_to_the_night_it_started() {
    // Thursday nights only, in Riyadh (UTC+3).
    let set = when_rule(
        "{ days: [thu], between: \"22:00-06:00\", tz: Asia/Riyadh, holidays: [2026-12-10] }",
    );
    assert_eq!(fires_at(&set, "2026-12-03T19:30:00Z"), Ok(())); // Thu 22:30
    assert_eq!(fires_at(&set, "2026-12-04T00:00:00Z"), Ok(())); // Fri 03:00: Thursday's night
    assert!(fires_at(&set, "2026-12-03T00:00:00Z").is_err()); // Thu 03:00: Wednesday's night
    assert!(fires_at(&set, "2026-12-04T19:30:00Z").is_err()); // Fri 22:30
    // A holiday Thursday: its night is off, into Friday's small hours.
    assert!(fires_at(&set, "2026-12-10T19:30:00Z").is_err());
    assert!(fires_at(&set, "2026-12-11T00:00:00Z").is_err());
}

#[test]
fn a_number_seen_in_a_branch_that_failed_is_not_reported() {
    let set = compile_one(
        "r.yaml",
        "id: r\nmatch:\n  any_of:\n    - all_of: [ { body: { number: { gt: 100 } } }, { from_me: true } ]\n    - { body: { any: [hello] } }\nactions: [ { log: { message: x } } ]\n",
    )
    .unwrap();
    let chat = private_chat();
    let id = ChatId::from_gateway(&chat.id);
    let m = msg("hello 500", false, "chat");
    let p = set.prepare(&m.body);
    let Verdict::Fired(matched) = set.eval_message(&set.rules[0], &id, &chat, &m, &p) else {
        panic!("the second branch holds")
    };
    assert_eq!(matched.number, None);
}

#[test]
fn a_bad_digest_is_an_error_at_its_line_and_column() {
    let rule = |digest: &str, action: &str| {
        format!(
            "id: d\nmatch: {{ body: {{ any: [x] }} }}\ndigest: {digest}\nactions: [ {action} ]\n"
        )
    };
    let log = "{ log: { message: x } }";
    let table: &[(&str, &str, &str)] = &[
        (
            "{ every: 500ms }",
            log,
            "r.yaml:3:9: digest.every: a window is a whole number of seconds",
        ),
        ("{ every: 0 }", log, "r.yaml:3:9: digest.every"),
        (
            "{ every: 8d }",
            log,
            "r.yaml:3:9: digest.every: a window is at most 7d",
        ),
        (
            "{ every: 1m, max_items: 0 }",
            log,
            "r.yaml:3:9: digest.max_items: 0 is not between 1 and 1000",
        ),
        (
            "{ every: 1m, max_items: 1001 }",
            log,
            "digest.max_items: 1001",
        ),
        ("{ every: 1m, group_by: [team] }", log, "r.yaml:3:"),
        ("{ evry: 1m }", log, "evry"),
        // A digest's templates see the list, not one message.
        (
            "{ every: 1m }",
            "{ log: { message: \"{{ message.body }}\" } }",
            "`message` is not a template variable of a digest (they are rule, digest, now, delivery_id; each of digest.items has chat, message, matched and fired_at",
        ),
        // `chat` only where there is one chat: group_by: [chat].
        (
            "{ every: 1m }",
            "{ log: { message: \"{{ chat.name }}\" } }",
            "log.message",
        ),
    ];
    for (digest, action, want) in table {
        let e = errors("r.yaml", &rule(digest, action));
        assert_eq!(e.len(), 1, "{digest} {action}: {e:?}");
        assert!(e[0].contains(want), "{digest} {action}: {e:?}");
    }
    // And what is right compiles.
    for (digest, action) in [
        (
            "{ every: 1m, group_by: [chat] }",
            "{ log: { message: \"{{ chat.name }}: {{ digest.count }}\" } }",
        ),
        (
            "{ every: 15m, group_by: [rule], max_items: 1000 }",
            "{ log: { message: \"{% for i in digest.items %}{{ i.message.body }} {% endfor %}{{ digest.more }}\" } }",
        ),
        (
            "{ every: 1h }",
            "{ webhook: { url: \"https://hooks.example.com/x\", body: { n: \"{{ digest.count }}\" } } }",
        ),
    ] {
        let e = errors("r.yaml", &rule(digest, action));
        assert!(e.is_empty(), "{digest} {action}: {e:?}");
    }
}

#[test]
fn notify_resolved_is_for_chat_rules_without_a_digest() {
    let e = errors(
        "r.yaml",
        "id: m\nmatch: { body: { any: [x] } }\nnotify_resolved: true\nactions: [ { log: { message: x } } ]\n",
    );
    assert!(
        e.len() == 1
            && e[0].starts_with("r.yaml:1:5: rule `m`: notify_resolved applies to chat rules"),
        "{e:?}"
    );
    let e = errors(
        "r.yaml",
        "id: c\non: chat\nmatch: { unread_count: { gte: 5 } }\nnotify_resolved: true\ndigest: { every: 1h }\nactions: [ { log: { message: x } } ]\n",
    );
    assert!(
        e.len() == 1 && e[0].contains("notify_resolved and digest do not go together"),
        "{e:?}"
    );
    let e = errors(
        "r.yaml",
        "id: c\non: chat\nmatch: { unread_count: { gte: 5 } }\nnotify_resolved: true\nactions: [ { log: { message: \"{% if resolved %}ok{% endif %}\" } } ]\n",
    );
    assert!(e.is_empty(), "{e:?}");
}
