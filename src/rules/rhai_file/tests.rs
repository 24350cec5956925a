use super::*;
use serde_json::json;

fn host() -> Host {
    Host::default()
}

fn msg(body: &str) -> Value {
    json!({"body": body, "type": "chat", "from_me": false, "timestamp": 1_700_000_000, "id": "false_x@c.us_A"})
}

fn chat() -> Value {
    json!({"id": "966500000000@c.us", "name": "C", "is_group": false, "unread_count": 2})
}

const ESCALATE: &str = r#"
fn on_message(msg, chat) {
    if msg.from_me { return; }
    let n = state_get("urgent") ?? 0;
    if msg.body.contains("urgent") { n += 1; state_set("urgent", n); }
    if n >= 2 {
        webhook("https://hooks.example.com/escalate", #{ chat: chat.id, count: n, text: msg.body });
        log("warn", `escalated ${chat.name}`);
        state_set("urgent", 0);
    }
}
"#;

#[test]
fn a_rule_file_calls_webhook_log_and_keeps_state() {
    let h = host();
    let r = h
        .compile(Path::new("rules/escalate.rhai"), ESCALATE)
        .unwrap();
    assert_eq!(r.id, "escalate");
    assert!(r.on_message && !r.on_chat);
    let first = h.on_message(&r, msg("urgent please"), chat(), &serde_json::Map::new());
    assert_eq!(first.error, None);
    assert!(first.webhooks.is_empty());
    let state = first.state.unwrap();
    assert_eq!(state["urgent"], 1);
    let second = h.on_message(&r, msg("urgent!!"), chat(), &state);
    assert_eq!(
        second.webhooks,
        vec![(
            "https://hooks.example.com/escalate".to_string(),
            json!({"chat": "966500000000@c.us", "count": 2, "text": "urgent!!"})
        )]
    );
    assert_eq!(second.logs, vec![(Level::Warn, "escalated C".to_string())]);
    assert_eq!(second.state.unwrap()["urgent"], 0);
}

#[test]
fn compile_errors_name_the_file_line_and_column() {
    let d = host()
        .compile(
            Path::new("rules/bad.rhai"),
            "fn on_message(msg, chat) {\n  let x = ;\n}\n",
        )
        .unwrap_err();
    assert!(d.to_string().starts_with("rules/bad.rhai:2:"), "{d}");
    let d = host()
        .compile(Path::new("rules/none.rhai"), "fn helper() { 1 }")
        .unwrap_err();
    assert!(d.to_string().contains("defines neither"), "{d}");
    let d = host()
        .compile(
            Path::new("rules/imp.rhai"),
            "import \"x\" as y;\nfn on_chat(chat) {}",
        )
        .unwrap_err();
    assert!(
        d.to_string().starts_with("rules/imp.rhai:1:"),
        "import is refused: {d}"
    );
    let bomb = format!(
        "fn on_chat(chat) {{ let x = {}1{}; }}",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    assert!(
        host().compile(Path::new("rules/bomb.rhai"), &bomb).is_err(),
        "a parse bomb is refused at load"
    );
}

/// Each hostile script is stopped with an error naming its file and rule; nothing it asked
/// for before that is kept.
#[test]
fn hostile_scripts_are_stopped() {
    let cases = [
        ("loop", "fn on_chat(chat) { loop {} }", "stopped"),
        (
            "string-doubling",
            "fn on_chat(chat) { let s = \"x\"; loop { s += s; } }",
            "stopped",
        ),
        (
            "recursion",
            "fn f(n) { f(n + 1) }\nfn on_chat(chat) { f(0) }",
            "stopped",
        ),
        (
            "closure-flood",
            "fn on_chat(chat) { let a = []; loop { a.push(|x| x + 1); } }",
            "stopped",
        ),
        ("eval", "fn on_chat(chat) { eval(\"1\") }", ""),
        (
            "webhook-flood",
            "fn on_chat(chat) { for i in 0..10000 { webhook(\"https://x.example/\", #{i: i}); } }",
            "actions",
        ),
        (
            "state-flood",
            "fn on_chat(chat) { for i in 0..100000 { state_set(`k${i}`, i); } }",
            "state_set",
        ),
        (
            "bad-level",
            "fn on_chat(chat) { log(\"loud\", \"x\") }",
            "unknown level",
        ),
        (
            "bad-url",
            "fn on_chat(chat) { webhook(\"file:///etc/passwd\", #{}) }",
            "webhook",
        ),
    ];
    let h = host();
    for (name, src, why) in cases {
        let path = format!("rules/{name}.rhai");
        let r = match h.compile(Path::new(&path), src) {
            Ok(r) => r,
            Err(d) => {
                assert_eq!(name, "eval", "only eval may be refused at load: {d}");
                continue;
            }
        };
        let start = std::time::Instant::now();
        let out = h.on_chat(&r, chat(), &serde_json::Map::new());
        let err = out
            .error
            .unwrap_or_else(|| panic!("{name} was not stopped"));
        assert!(
            err.contains(&path) && err.contains(&format!("rule `{name}`")),
            "{name}: {err}"
        );
        assert!(
            err.contains(why),
            "{name} was stopped for the wrong reason: {err}"
        );
        assert!(
            out.webhooks.is_empty() && out.logs.is_empty() && out.state.is_none(),
            "{name}"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "{name} took {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn json_round_trips_through_rhai_values() {
    let v = json!({"a": [1, 2.5, "x", true, null], "b": {"c": "d"}});
    assert_eq!(to_json(&from_json(&v)), v);
}
