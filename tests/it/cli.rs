//! The command line: check, test, demo.

use crate::support::*;

#[test]
fn check_names_the_file_line_and_column_of_a_misspelled_key() {
    let ws = Workspace::new();
    ws.write(
        "rules/ok.yaml",
        "id: fine\nactions: [ { log: { message: ok } } ]\n",
    );
    ws.write(
        "rules/x.yaml",
        "id: typo\nmatch:\n  body:\n    anny: [\"بوت\"]\nactions: [ { log: { message: x } } ]\n",
    );
    let (code, out, err) = run_cli(&["check", "rules"], ws.path());
    assert_eq!(code, 1, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("rules/x.yaml:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.starts_with("rules/x.yaml:4:5: "), "{line}");
    assert!(line.contains("anny"), "{line}");
    assert!(out.contains("1 error(s)"), "{out}");
}

#[test]
fn check_validates_the_config_too() {
    let ws = Workspace::new();
    ws.write(
        "rules/ok.yaml",
        "id: fine\nactions: [ { log: { message: ok } } ]\n",
    );
    ws.write("cartat.yaml", "api:\n  base_url: https://api.cartat.net\n  token: ${CARTAT_TOKEN_FOR_CHECK_TEST}\nchats:\n  - \"00966500000000\"\n");
    let (code, out, _) = run_cli(&["check", "-c", "cartat.yaml"], ws.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cartat.yaml:5:5: ") && out.contains("did you mean 966500000000?"),
        "{out}"
    );
    assert!(
        out.contains("warning: environment variable `CARTAT_TOKEN_FOR_CHECK_TEST` is not set"),
        "{out}"
    );
}

#[test]
fn the_shipped_rules_and_demo_config_are_valid() {
    let (code, out, err) = run_cli(&["check", "-c", "examples/demo.yaml"], &root());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok:"), "{out}");
}

#[test]
fn test_explains_why_a_rule_did_not_fire() {
    let input = "tests/data/fixtures/12_constructed_arabic_seed_quirks_revoked_reaction.json";
    let (code, out, err) = run_cli(
        &["test", "--rules", "rules", "--input", input, "--explain"],
        &root(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("✓ bot-keyword fired"), "{out}");
    assert!(out.contains("normalized: \"بوت؟ ابي اكلم موظف\""), "{out}");
    assert!(
        out.contains("✗ bot-keyword: body.any: no keyword occurs"),
        "{out}"
    );
    assert!(
        out.contains("✓ order-number fired"),
        "the Arabic-Indic order number 456 is found: {out}"
    );
    assert!(
        out.contains("✗ bot-keyword: type: `revoked` is a notification"),
        "{out}"
    );
}

/// `cartat-rules test --rules rules --input INPUT --explain`, run in `dir`.
fn explain(input: &std::path::Path, dir: &std::path::Path) -> (i32, String, String) {
    let input = input.to_str().unwrap();
    run_cli(
        &["test", "--rules", "rules", "--input", input, "--explain"],
        dir,
    )
}

#[test]
fn test_reads_a_saved_reply_with_half_an_emoji_as_the_daemon_does() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("reply.json");
    std::fs::write(
        &input,
        r#"{"status":"success","chat":{"id":"966500000000@c.us","unreadCount":1},"messages":[
{"id":{"fromMe":false,"id":"A","_serialized":"false_966500000000@c.us_A"},"timestamp":1700000000,"body":"بوت \ud83d","type":"chat"}]}"#,
    )
    .unwrap();
    let (code, out, err) = explain(&input, &root());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("✓ bot-keyword fired"), "{out}");
    assert!(out.contains("normalized: \"بوت \u{fffd}\""), "{out}");
}

#[test]
fn test_json_lines_carry_the_exact_webhook_bodies() {
    let input = "tests/data/fixtures/12_constructed_arabic_seed_quirks_revoked_reaction.json";
    // Chat rules are judged as of `--at` (default: now, which would differ between two runs
    // a second apart).
    let args = [
        "test",
        "--rules",
        "rules",
        "--input",
        input,
        "--format",
        "json",
        "--at",
        "2023-08-06T19:30:00Z",
    ];
    let (code, out, err) = run_cli(&args, &root());
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let bot = lines
        .iter()
        .find(|l| l["rule"] == "bot-keyword")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(bot["chat"], "966500000000@c.us");
    assert_eq!(
        bot["message_id"],
        "false_966500000000@c.us_3A2B3C4D5E6F70819203"
    );
    let hook = bot["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "webhook")
        .unwrap();
    assert_eq!(hook["body"]["type"], "rule.matched");
    assert_eq!(
        hook["body"]["fired_at"], "2023-08-06T18:41:40Z",
        "fired_at is the message time: reproducible"
    );
    assert_eq!(hook["headers"]["X-Team"], "bots");
    let log = bot["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "log")
        .unwrap();
    assert_eq!(log["level"], "info");
    // Same input, same output.
    let (_, again, _) = run_cli(&args, &root());
    assert_eq!(out, again);
}

#[test]
fn the_demo_runs_offline_from_any_folder_and_shows_the_arabic_matches() {
    // Not from the project folder: the config, rules and conversation are built in.
    let elsewhere = Workspace::new();
    let (code, out, err) = run_cli(&["demo", "--duration", "10s"], elsewhere.path());
    assert_eq!(code, 0, "{out}{err}");
    // The readable story is stdout; the engine's log lines stay out of it without -v.
    assert!(!err.contains("INFO") && !err.contains("WARN"), "{err}");
    // A chat rule judges the chat as it stands: the hour-old unanswered message.
    let first = out.lines().find(|l| l.contains("webhook →")).unwrap_or("");
    assert!(first.contains("rule=unanswered-sla"), "{out}");
    // The order desk's own body, the number extracted; never `matched=null`.
    assert!(out.contains(r#""order":"4521""#), "{out}");
    assert!(!out.contains("null"), "{out}");
    assert!(out.contains("text=\"بُوت\""), "tashkeel: {out}\n{err}");
    assert!(
        out.contains("text=\"ابغى اكلم البـوت لو سمحت\""),
        "proclitic + tatweel: {out}"
    );
    assert!(out.contains("text=\"Hi, is this a BOT?\""), "{out}");
    assert!(!out.contains("الروبوت"), "robot is not bot: {out}");
    assert!(!out.contains("robotics"), "{out}");
    assert!(!out.contains("السلام عليكم\""), "{out}");
    assert!(
        out.contains("signature ok") && !out.contains("SIGNATURE INVALID"),
        "{out}"
    );
    assert!(out.contains("demo finished"), "{out}");
}

#[test]
fn test_evaluates_chat_rules_as_of_a_given_time() {
    let input = "tests/data/fixtures/12_constructed_arabic_seed_quirks_revoked_reaction.json";
    let args = [
        "test",
        "--rules",
        "rules",
        "--input",
        input,
        "--explain",
        "--at",
    ];
    let (code, out, err) = run_cli(&[&args[..], &["2023-08-06T19:30:00Z"]].concat(), &root());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("✓ unanswered-sla fires"), "{out}");
    assert!(
        out.contains("\"waiting_since\":\"2023-08-06T18:41:03Z\""),
        "{out}"
    );
    // A chat rule's webhook is printed with its exact body, as a message rule's is.
    let sla = &out[out.find("✓ unanswered-sla fires").unwrap()..];
    assert!(sla.contains("webhook POST"), "{out}");
    assert!(sla.contains("\"rule\": \"unanswered-sla\""), "{out}");
    assert!(
        out.contains("✗ unread-pileup: unread_count: 3 is not >= 5"),
        "{out}"
    );
    // Ten minutes after the first message the customer has not waited 15 minutes yet.
    let (_, early, _) = run_cli(&[&args[..], &["2023-08-06T18:51:03Z"]].concat(), &root());
    assert!(
        early.contains("✗ unanswered-sla: unanswered_for: waiting 600s, less than 15m"),
        "{early}"
    );
    let (code, _, err) = run_cli(&[&args[..], &["yesterday"]].concat(), &root());
    assert_eq!(code, 2, "clap rejects a bad time");
    assert!(err.contains("RFC 3339"), "{err}");
}

#[test]
fn test_remembers_thresholds_and_rule_file_state_across_messages() {
    let ws = Workspace::new();
    let msg = |id: &str, t: i64, body: &str| {
        serde_json::json!({"id": {"fromMe": false, "id": id, "_serialized": format!("false_966500000000@c.us_{id}")},
                           "timestamp": t, "body": body, "type": "chat", "from": "966500000000@c.us"})
    };
    let reply = serde_json::json!({
        "status": "success",
        "chat": {"id": {"_serialized": "966500000000@c.us"}, "name": "Customer", "isGroup": false, "unreadCount": 3},
        "messages": [msg("U1", 1_700_000_000, "urgent please"), msg("U2", 1_700_000_060, "URGENT!!"), msg("U3", 1_700_000_120, "عاجل")]
    });
    let input = ws.write("reply.json", &reply.to_string());
    let (code, out, err) = run_cli(
        &[
            "test",
            "--rules",
            root().join("rules").to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--format",
            "json",
        ],
        ws.path(),
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let fired: Vec<(String, String)> = lines
        .iter()
        .filter(|l| l["message_id"].is_string())
        .map(|l| {
            (
                l["rule"].as_str().unwrap().to_string(),
                l["message_id"]
                    .as_str()
                    .unwrap()
                    .rsplit('_')
                    .next()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert!(
        fired.contains(&("escalation".into(), "U2".into())),
        "the rule file escalates on the second urgent message: {fired:?}"
    );
    assert!(
        fired.contains(&("urgent-threshold".into(), "U3".into())),
        "the threshold fires on the third: {fired:?}"
    );
    assert!(
        !fired
            .iter()
            .any(|(r, m)| r == "urgent-threshold" && m != "U3"),
        "{fired:?}"
    );
    assert!(
        !fired.iter().any(|(r, m)| r == "escalation" && m != "U2"),
        "{fired:?}"
    );
}

#[test]
fn check_reports_script_errors_duplicate_keys_and_suggestions_and_warns_with_exit_0() {
    let ws = Workspace::new();
    ws.write(
        "rules/bad.yaml",
        "- id: s\n  match:\n    script: 'msg.body.len( < 5'\n  actions: [ { log: { message: x } } ]\n- id: d\n  match:\n    from_me: false\n    from_me: true\n  actions: [ { log: { message: x } } ]\n",
    );
    ws.write(
        "rules/typo.yaml",
        "id: t\nmatch:\n  body: { any: [x], wrods: true }\nactions: [ { log: { message: x } } ]\n",
    );
    let (code, out, err) = run_cli(&["check", "rules"], ws.path());
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("rules/bad.yaml:8:5: "), "duplicate key: {out}");
    assert!(
        out.contains("rules/typo.yaml:3:21: unknown field `wrods`, did you mean `words`?"),
        "{out}"
    );

    let ws = Workspace::new();
    ws.write(
        "rules/warn.yaml",
        "id: w\nmatch:\n  script: 'msg.body.len() < 500'\n  body: { any: [\"بوت\", \"بُوت\"] }\nactions:\n  - webhook: { url: \"https://hooks.example.com/x\" }\n",
    );
    let (code, out, err) = run_cli(&["check", "rules"], ws.path());
    assert_eq!(code, 0, "warnings only: {out}{err}");
    assert!(
        out.contains(
            "rules/warn.yaml:4:24: warning: body.any: `بُوت` normalizes to the same text as `بوت`"
        ),
        "{out}"
    );
    assert!(
        out.contains(
            "rules/warn.yaml:6:21: warning: rule `w` sends a webhook and has no `match.from_me`"
        ),
        "{out}"
    );
    assert!(out.contains("ok: 1 rule(s) valid, 2 warning(s)"), "{out}");
}

#[test]
fn schema_prints_the_rule_file_json_schema() {
    let (code, out, err) = run_cli(&["schema"], &root());
    assert_eq!(code, 0, "{err}");
    let schema: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    let rule = &schema["definitions"]["RawRule"];
    assert_eq!(
        rule["additionalProperties"], false,
        "unknown keys are refused"
    );
    assert_eq!(
        rule["properties"]["cooldown"]["description"],
        "After firing for a chat, stay silent for that chat this long."
    );
}

#[test]
fn schema_config_prints_the_config_json_schema() {
    let (code, out, err) = run_cli(&["schema", "config"], &root());
    assert_eq!(code, 0, "{err}");
    let schema: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(schema["title"], "cartat-rules config (cartat.yaml)");
    assert_eq!(schema["additionalProperties"], false, "{out}");
    // `api:` (one account) or `accounts:` (several), exactly one of them.
    assert_eq!(
        schema["oneOf"][0]["required"],
        serde_json::json!(["api"]),
        "{out}"
    );
    assert_eq!(
        schema["oneOf"][1]["required"],
        serde_json::json!(["accounts"]),
        "{out}"
    );
    assert!(
        schema["definitions"]["RawAccount"]["properties"]["name"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("chat.account")),
        "{out}"
    );
    assert!(
        schema["definitions"]["RawApi"]["properties"]["token"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("Never logged")),
        "{out}"
    );
    let (code, _, err) = run_cli(&["schema", "cartat.yaml"], &root());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("possible values: rules, config"), "{err}");
}

#[test]
fn test_explains_a_failing_script_and_the_other_rules_still_fire() {
    let ws = Workspace::new();
    ws.write(
        "rules/s.yaml",
        "- id: broken-script\n  match:\n    from_me: false\n    script: 'msg.bodyy.len() > 0'\n  actions: [ { log: { message: x } } ]\n- id: short\n  match:\n    from_me: false\n    script: 'msg.body.len() < 30 && chat.is_group == false'\n  actions: [ { log: { message: \"short: {{ message.body }}\" } } ]\n",
    );
    let input =
        root().join("tests/data/fixtures/12_constructed_arabic_seed_quirks_revoked_reaction.json");
    let (code, out, err) = explain(&input, ws.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("✗ broken-script: script: rule `broken-script`: "),
        "{out}"
    );
    assert!(out.contains("✓ short fired"), "{out}");
}

#[test]
fn check_refuses_rule_files_that_import_eval_or_bomb_the_parser() {
    let ws = Workspace::new();
    ws.write(
        "rules/imports.rhai",
        "import \"fs\" as fs;\nfn on_chat(chat) {}\n",
    );
    ws.write(
        "rules/evals.rhai",
        "fn on_chat(chat) {\n    eval(\"1 + 1\")\n}\n",
    );
    let bomb = format!(
        "fn on_chat(chat) {{ let x = {}1{}; }}\n",
        "(".repeat(3000),
        ")".repeat(3000)
    );
    ws.write("rules/bomb.rhai", &bomb);
    ws.write(
        "rules/sleeps.rhai",
        "fn on_chat(chat) {\n    sleep(4);\n}\nfn on_message(msg, chat) { 1e300.sleep(); }\n",
    );
    ws.write(
        "rules/good.rhai",
        "fn on_chat(chat) { if chat.unread_count > 10 { log(\"warn\", \"busy\"); } }\n",
    );
    let (code, out, err) = run_cli(&["check", "rules"], ws.path());
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.lines().any(|l| l.starts_with("rules/imports.rhai:1:")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("rules/sleeps.rhai:") && l.contains("must never wait")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("rules/evals.rhai:2:")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("rules/bomb.rhai:1:")),
        "{out}"
    );
    assert!(!out.contains("good.rhai"), "{out}");
}

#[test]
fn an_empty_webhook_secret_is_refused_by_check_and_run() {
    let ws = Workspace::new();
    ws.write(
        "rules/ok.yaml",
        "id: fine\nactions: [ { log: { message: ok } } ]\n",
    );
    ws.write(
        "cartat.yaml",
        "api:\n  base_url: http://127.0.0.1:9\n  token: t\nchats: [\"966500000000\"]\n\
         webhooks:\n  secret: ${CARTAT_TEST_EMPTY_SECRET}\nserver: { listen: off }\n",
    );
    let run = |args: &[&str], secret: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cartat-rules"));
        cmd.args(args).current_dir(ws.path());
        match secret {
            Some(s) => cmd.env("CARTAT_TEST_EMPTY_SECRET", s),
            None => cmd.env_remove("CARTAT_TEST_EMPTY_SECRET"),
        };
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    };
    let want = "cartat.yaml:6:11: webhooks.secret is empty (`${CARTAT_TEST_EMPTY_SECRET}` is set to \"\"): webhooks would go out unsigned";
    for args in [
        &["check", "-c", "cartat.yaml"][..],
        &["run", "-c", "cartat.yaml"],
    ] {
        let (code, out) = run(args, Some(""));
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(out.contains(want), "{args:?}: {out}");
    }
    // `check` without the variable warns (it may be set where the daemon runs) and passes.
    let (code, out) = run(&["check", "-c", "cartat.yaml"], None);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("`CARTAT_TEST_EMPTY_SECRET` is not set"),
        "{out}"
    );
    // A real secret passes.
    let (code, out) = run(
        &["check", "-c", "cartat.yaml"],
        Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn credentials_in_a_webhook_url_never_reach_check_or_test_output() {
    let ws = Workspace::new();
    ws.write(
        "rules/leaky.yaml",
        "id: leaky\nactions:\n  - webhook: { url: \"https://admin:CANARY-PW-7781@hooks.example.com/x?token=CANARY-TOKEN-7782\" }\n",
    );
    ws.write(
        "cartat.yaml",
        "api:\n  base_url: https://api.cartat.net\n  token: t\nchats: [\"966500000000\"]\n",
    );
    ws.write(
        "reply.json",
        r#"{"status":"success","messages":[{"id":{"fromMe":false,"id":"A"},"timestamp":1700000000,"body":"hi"}]}"#,
    );
    let runs = [
        run_cli(&["check", "-c", "cartat.yaml"], ws.path()),
        run_cli(&["check", "rules"], ws.path()),
        run_cli(
            &["test", "--rules", "rules", "--input", "reply.json"],
            ws.path(),
        ),
    ];
    for (code, out, err) in runs {
        let all = format!("{out}{err}");
        assert_eq!(code, 1, "{all}");
        assert!(!all.contains("CANARY"), "a secret leaked:\n{all}");
        assert!(
            all.contains("https://***@hooks.example.com/x?token=***"),
            "{all}"
        );
        assert!(all.contains("must not carry credentials"), "{all}");
    }
    // A url without credentials is valid; `test` prints it and its headers without secrets.
    ws.write(
        "rules/leaky.yaml",
        "id: leaky\nactions:\n  - webhook: { url: \"https://hooks.example.com/x?token=CANARY-TOKEN-7783\", headers: { Authorization: \"Bearer CANARY-7784\", X-Team: support } }\n",
    );
    let (code, out, err) = run_cli(
        &["test", "--rules", "rules", "--input", "reply.json"],
        ws.path(),
    );
    let all = format!("{out}{err}");
    assert_eq!(code, 0, "{all}");
    assert!(!all.contains("CANARY"), "a secret leaked:\n{all}");
    assert!(
        all.contains("https://hooks.example.com/x?token=***"),
        "{all}"
    );
    assert!(
        all.contains("Authorization: ***") && all.contains("X-Team: support"),
        "{all}"
    );
}

#[test]
fn check_refuses_webhooks_to_private_addresses_the_policy_would_dead_letter() {
    let ws = Workspace::new();
    ws.write(
        "rules/private.yaml",
        "id: private\nactions:\n  - webhook: { url: \"http://127.0.0.1:9/x\" }\n  - webhook: { url: \"http://localhost:8080/y\" }\n  - webhook: { url: \"http://10.0.0.5/z\" }\n  - webhook: { url: \"https://hooks.example.com/ok\" }\n",
    );
    let config = |extra: &str| {
        format!(
            "api:\n  base_url: https://api.cartat.net\n  token: t\nchats: [\"966500000000\"]\n{extra}"
        )
    };
    ws.write("cartat.yaml", &config(""));
    let (code, out, _) = run_cli(&["check", "-c", "cartat.yaml"], ws.path());
    assert_eq!(code, 1, "{out}");
    for line in [3, 4, 5] {
        let at = format!("private.yaml:{line}:");
        let hit = out
            .lines()
            .find(|l| l.contains(&at))
            .unwrap_or_else(|| panic!("{at}\n{out}"));
        assert!(hit.contains("webhooks.allow_private_networks"), "{hit}");
    }
    assert!(
        !out.contains("private.yaml:6:"),
        "a public url is fine:\n{out}"
    );
    assert!(out.contains("3 error(s)"), "{out}");
    // Allowed by the config: valid.
    ws.write(
        "cartat.yaml",
        &config("webhooks:\n  allow_private_networks: true\n"),
    );
    let (code, out, _) = run_cli(&["check", "-c", "cartat.yaml"], ws.path());
    assert_eq!(code, 0, "{out}");
    // The rules alone (no config to say): their form only.
    std::fs::remove_file(ws.path().join("cartat.yaml")).unwrap();
    let (code, out, _) = run_cli(&["check", "rules"], ws.path());
    assert_eq!(code, 0, "{out}");
}

/// The ids of the messages `mock-gateway` (the real binary, one start) serves for one chat,
/// asked twice.
async fn mock_gateway_ids(scenario: &std::path::Path) -> (Vec<String>, Vec<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(BIN)
        .args([
            "mock-gateway",
            "--listen",
            "127.0.0.1:0",
            "-q",
            "--scenario",
        ])
        .arg(scenario)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start mock-gateway");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the listening line");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    cartat_rules::install_crypto();
    let client = reqwest::Client::new();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let reply: serde_json::Value = client
            .get(format!("http://{addr}/chats/966500000001"))
            .bearer_auth("mock-token")
            .send()
            .await
            .expect("GET /chats")
            .json()
            .await
            .expect("a JSON reply");
        let ids: Vec<String> = reply["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["id"]["id"].as_str().unwrap().to_owned())
            .collect();
        runs.push(ids);
    }
    let _ = child.kill();
    let _ = child.wait();
    let second = runs.pop().unwrap();
    (runs.pop().unwrap(), second)
}

#[tokio::test]
async fn the_mock_gateway_gives_each_start_its_own_message_ids() {
    let ws = Workspace::new();
    let scenario = ws.write(
        "scenario.yaml",
        "chats:\n  - id: \"966500000001\"\n    messages:\n      - { at: 0s, body: one }\n      - { at: 0s, body: two }\n      - { at: 0s, body: mine, id: FIXED1 }\n",
    );
    let (a1, a2) = mock_gateway_ids(&scenario).await;
    let (b1, _) = mock_gateway_ids(&scenario).await;
    assert_eq!(a1.len(), 3, "{a1:?}");
    assert_eq!(a1, a2, "ids change within one run");
    // A scenario's own id stays; generated ones carry the run's tag.
    assert!(a1.contains(&"FIXED1".to_owned()) && b1.contains(&"FIXED1".to_owned()));
    let generated = |ids: &[String]| -> Vec<String> {
        ids.iter().filter(|i| *i != "FIXED1").cloned().collect()
    };
    let (ga, gb) = (generated(&a1), generated(&b1));
    assert_eq!(ga.len(), 2);
    assert!(
        ga.iter().all(|id| !gb.contains(id)),
        "two starts served the same generated ids: {ga:?} and {gb:?}"
    );
}

#[test]
fn check_says_what_it_used_to_accept_silently() {
    let ws = Workspace::new();
    ws.write("rules/empty.yaml", "# nothing here yet\n");
    ws.write("rules/old.json", "{\"id\": \"j\", \"actions\": []}\n");
    ws.write("rules/notes.md", "not a rule, and not meant as one\n");
    ws.write(
        "rules/every.yaml",
        "id: every\nmatch:\n  body: { any: [] }\nactions: [ { log: { message: x } } ]\n",
    );
    let (code, out, _) = run_cli(&["check", "rules"], ws.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("rules/every.yaml:3:9:") && out.contains("would match every message"),
        "{out}"
    );
    assert!(
        out.contains("rules/empty.yaml") && out.contains("holds no rule"),
        "{out}"
    );
    assert!(
        out.contains("rules/old.json") && out.contains("rename it to .yaml"),
        "{out}"
    );
    assert!(!out.contains("notes.md"), "{out}");

    // A secret the environment lacks: check passes with a warning that says run would not.
    let cfg = ws.write(
        "cartat.yaml",
        "api:\n  base_url: http://127.0.0.1:1\n  token: ${CARTAT_TEST_UNSET_TOKEN}\nchats: [\"966500000001\"]\nrules:\n  paths: [./ok]\n",
    );
    ws.write("ok/r.yaml", "id: r\nactions: [ { log: { message: x } } ]\n");
    let (code, out, _) = run_cli(&["check", "-c", cfg.to_str().unwrap()], ws.path());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("`CARTAT_TEST_UNSET_TOKEN` is not set: `run` refuses to start without it"),
        "{out}"
    );
}

#[test]
fn the_shipped_saved_reply_explains_a_keyword_glued_to_a_word() {
    let (code, out, err) = run_cli(
        &[
            "test",
            "--rules",
            "rules",
            "--input",
            "examples/saved-chat.json",
            "--explain",
        ],
        &root(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("✓ bot-keyword fired"), "{out}");
    assert!(out.contains("✓ order-number fired"), "{out}");
    assert!(
        out.contains(
            "✗ bot-keyword: body.any: `بوت` occurs, but not as a whole word (words: true, suffixes: true)"
        ),
        "{out}"
    );
    assert!(
        out.contains("✗ bot-keyword: body.any: no keyword occurs"),
        "{out}"
    );
}

#[test]
fn check_errors_say_what_to_write_instead() {
    let ws = Workspace::new();
    ws.write(
        "rules/bool.yaml",
        "id: a\nmatch:\n  from_me: yes please\nactions: [ { log: { message: x } } ]\n",
    );
    ws.write(
        "rules/count.yaml",
        "id: b\nmatch:\n  threshold: { count: lots, within: 10m }\nactions: [ { log: { message: x } } ]\n",
    );
    ws.write("rules/notes.yaml", "* bot rule: call the bot\n* sla rule\n");
    ws.write("rules/prose.yaml", "*bold* words pasted from a chat\n");
    ws.write(
        "rules/template.yaml",
        "id: d\nactions:\n  - log: { message: \"{{ mesage.body }}\" }\n",
    );
    let (code, out, _) = run_cli(&["check", "rules"], ws.path());
    assert_eq!(code, 1, "{out}");
    for want in [
        "rules/bool.yaml:3:12: invalid boolean: write `true` or `false`",
        "rules/count.yaml:3:23: invalid u32: write a whole number of 0 or more",
        "rules/notes.yaml:1:1: this is not a YAML rule file",
        "rules/prose.yaml:1:1: this is not a YAML rule file",
        "rules/template.yaml:3:21: log.message: `mesage` is not a template variable, did you mean `message`?",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn check_reports_every_rule_s_problem_not_only_a_file_s_first() {
    let ws = Workspace::new();
    ws.write(
        "rules/many.yaml",
        "# four rules, four different problems, and a good one\n\
         - id: bad-bool\n  match:\n    from_me: nope\n  actions: [ { log: { message: x } } ]\n\
         - id: bad-regex\n  match:\n    body: { regex: '(unclosed' }\n  actions: [ { log: { message: x } } ]\n\
         - id: bad-duration\n  cooldown: 5 minutes\n  actions: [ { log: { message: x } } ]\n\
         - id: good\n  actions: [ { log: { message: x } } ]\n\
         - id: bad-template\n  actions:\n    - log: { message: \"{{ mesage.body }}\" }\n",
    );
    let (code, out, _) = run_cli(&["check", "rules"], ws.path());
    assert_eq!(code, 1, "{out}");
    for want in [
        "rules/many.yaml:4:14: invalid boolean",
        "rules/many.yaml:8:20: body.regex: error: unclosed group",
        "rules/many.yaml:11:13: `5 minutes` has an unknown unit",
        "rules/many.yaml:17:23: log.message: `mesage` is not a template variable",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert_eq!(out.matches("rules/many.yaml:").count(), 4, "{out}");
}

#[test]
fn check_speaks_json_and_github_annotations_and_strict_fails_on_warnings() {
    let ws = Workspace::new();
    ws.write(
        "rules/bad.yaml",
        "id: a\nmatch:\n  from_me: nope\nactions: [ { log: { message: x } } ]\n",
    );
    ws.write("rules/notes.json", "{}");
    let (code, out, _) = run_cli(&["check", "--format", "github", "rules"], ws.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("::error file=rules/bad.yaml,line=3,col=12::invalid boolean"),
        "{out}"
    );
    assert!(
        out.contains("::warning file=rules/notes.json::not read"),
        "{out}"
    );

    let (code, out, _) = run_cli(&["check", "--format", "json", "rules"], ws.path());
    assert_eq!(code, 1, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["errors"], 1);
    assert_eq!(doc["warnings"], 1);
    let first = &doc["diagnostics"][0];
    assert_eq!(first["path"], "rules/bad.yaml");
    assert_eq!(first["line"], 3);
    assert_eq!(first["column"], 12);
    assert_eq!(first["severity"], "error");

    // Warnings alone pass, unless --strict.
    std::fs::remove_file(ws.path().join("rules/bad.yaml")).unwrap();
    ws.write(
        "rules/ok.yaml",
        "id: b\nactions: [ { log: { message: x } } ]\n",
    );
    let (code, out, _) = run_cli(&["check", "rules"], ws.path());
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = run_cli(&["check", "--strict", "rules"], ws.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--strict makes them fail"), "{out}");
}

#[test]
fn check_refuses_a_script_that_calls_a_function_rule_scripts_lack() {
    let ws = Workspace::new();
    ws.write(
        "rules/script.yaml",
        "id: big-order\nmatch:\n  script: 'parse_xml(msg.body) > 1000'\nactions: [ { log: { message: x } } ]\n",
    );
    let (code, out, _) = run_cli(&["check", "rules"], ws.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("rules/script.yaml:3:")
            && out.contains("`parse_xml` is not a function rule scripts have"),
        "{out}"
    );
}

#[test]
fn init_writes_a_config_and_a_rule_that_check_passes_and_never_overwrites() {
    let ws = Workspace::new();
    let (code, out, err) = run_cli(&["init", "project"], ws.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("wrote project/cartat.yaml"), "{out}");
    assert!(
        out.contains("wrote project/rules/bot-keyword.yaml"),
        "{out}"
    );
    let (code, out, _) = run_cli(&["check", "-c", "project/cartat.yaml"], ws.path());
    assert_eq!(code, 0, "the config init writes passes check:\n{out}");
    assert!(out.contains("1 rule(s) valid"), "{out}");
    // A second init changes nothing that is there.
    ws.write("project/cartat.yaml", "# mine\n");
    let (code, out, err) = run_cli(&["init", "project"], ws.path());
    assert_eq!(code, 0);
    assert!(
        err.contains("project/cartat.yaml exists: left as it is"),
        "{err}"
    );
    assert!(!out.contains("wrote"), "{out}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("project/cartat.yaml")).unwrap(),
        "# mine\n"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _cartat__rules"),
        ("zsh", "#compdef cartat-rules"),
        ("fish", "complete -c cartat-rules"),
    ] {
        let (code, out, err) = run_cli(&["completions", shell], &root());
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains(marker),
            "{shell}: {}",
            &out[..out.len().min(300)]
        );
        assert!(out.contains("outbox"), "{shell}: subcommands listed");
    }
}

#[test]
fn rule_tests_pass_on_the_shipped_rules_and_a_wrong_expectation_fails_with_a_diff() {
    // The shipped rules and their tests: every one passes, and `run`/`check` do not read the
    // tests folder as rules.
    let (code, out, err) = run_cli(&["test", "--rules", "rules"], &root());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("9 files, 21 tests: all passed"), "{out}");
    let (code, out, _) = run_cli(&["check", "rules"], &root());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("9 rule(s) valid"), "{out}");

    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("rules")).unwrap();
    std::fs::copy(
        root().join("rules/bot-keyword.yaml"),
        ws.path().join("rules/bot-keyword.yaml"),
    )
    .unwrap();
    // Wrong on purpose: the tatweel form fires (it is the same word), and the webhook body
    // carries the message as written, not normalized.
    ws.write(
        "rules/tests/bot.yaml",
        r#"start: 2026-11-28T10:00:00Z
tests:
  - name: right
    chat: { id: "966500000001", messages: [ { at: 1s, body: "بوت" } ] }
    polls: [ { at: 2s, fires: [bot-keyword] } ]
  - name: wrong
    chat:
      id: "966500000001"
      messages:
        - { at: 1s, body: "البـوت" }
        - { at: 2s, body: "روبوت" }
    polls:
      - at: 5s
        fires: [ { rule: bot-keyword, webhook: { message: { body: "بوت" } } } ]
      - { at: 6s, fires: [bot-keyword] }
"#,
    );
    let (code, out, err) = run_cli(&["test", "--rules", "rules"], ws.path());
    assert_eq!(code, 1, "{out}{err}");
    let expected_diff = concat!(
        "  FAIL  wrong\n",
        "        poll 1 at 5s (2026-11-28T10:00:05Z):\n",
        "          ~ bot-keyword on \"البـوت\": webhook body at /message/body: expected \"بوت\", got \"البـوت\"\n",
        "          fired: bot-keyword on \"البـوت\"\n",
        "        poll 2 at 6s (2026-11-28T10:00:06Z):\n",
        "          - bot-keyword    expected, did not fire\n",
        "          fired: nothing\n",
    );
    assert!(out.contains("  ok    right (1 poll)\n"), "{out}");
    assert!(out.contains(expected_diff), "{out}");
    assert!(
        out.ends_with("1 file, 2 tests: 1 passed, 1 failed\n"),
        "{out}"
    );

    let (code, out, _) = run_cli(&["test", "--rules", "rules", "--format", "json"], ws.path());
    assert_eq!(code, 1);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(
        (
            doc["ok"].clone(),
            doc["passed"].clone(),
            doc["failed"].clone()
        ),
        (false.into(), 1.into(), 1.into())
    );
    let wrong = &doc["results"][1];
    assert_eq!(wrong["name"], "wrong");
    assert_eq!(wrong["polls"][0]["problems"][0]["kind"], "mismatch");
    assert_eq!(wrong["polls"][1]["problems"][0]["kind"], "missing");
    assert_eq!(wrong["polls"][0]["fired"][0]["message"], "البـوت");

    // A typo in a test file names the file, line and column.
    ws.write(
        "rules/tests/typo.yaml",
        "tests:\n  - name: t\n    chat: { id: \"966500000001\" }\n    pols: []\n",
    );
    let (code, out, _) = run_cli(
        &[
            "test",
            "--rules",
            "rules",
            "--tests",
            "rules/tests/typo.yaml",
        ],
        ws.path(),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("  FAIL  (the file)\n        4:5: "), "{out}");
}

#[test]
fn explain_says_how_far_a_threshold_is_and_when_a_rule_file_did_nothing() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("rules")).unwrap();
    for f in ["urgent-threshold.yaml", "escalation.rhai"] {
        std::fs::copy(
            root().join("rules").join(f),
            ws.path().join("rules").join(f),
        )
        .unwrap();
    }
    let input = ws.write(
        "reply.json",
        r#"{"status":"success","chat":{"id":"966500000000@c.us","name":"Noura","unreadCount":2},"messages":[
{"id":{"fromMe":false,"id":"A","_serialized":"false_966500000000@c.us_A"},"timestamp":1700000000,"body":"urgent","type":"chat"},
{"id":{"fromMe":false,"id":"B","_serialized":"false_966500000000@c.us_B"},"timestamp":1700000060,"body":"عاجل","type":"chat"}]}"#,
    );
    let (code, out, err) = explain(&input, ws.path());
    assert_eq!(code, 0, "{err}");
    let (first, second) = out
        .split_once("  message false_966500000000@c.us_B")
        .expect("two messages");
    assert!(
        first.contains(
            "✗ urgent-threshold: matched, 1 of 3 within 10m so far (it fires on the 3rd)"
        ),
        "{out}"
    );
    assert!(
        first.contains(
            "✗ escalation: the rule file ran and asked for nothing (no webhook, no log); its state is now {\"pending\":1}"
        ),
        "{out}"
    );
    assert!(second.contains("2 of 3 within 10m so far"), "{out}");
    assert!(second.contains("✓ escalation fired"), "{out}");
    assert!(!second.contains("✗ escalation"), "{out}");
}

#[test]
fn plan_shows_what_a_deploy_changes_rule_by_rule() {
    let ws = Workspace::new();
    for set in ["old", "new"] {
        std::fs::create_dir_all(ws.path().join(set)).unwrap();
        for entry in std::fs::read_dir(root().join("rules")).unwrap().flatten() {
            if entry.path().is_file() {
                std::fs::copy(entry.path(), ws.path().join(set).join(entry.file_name())).unwrap();
            }
        }
    }
    let new = ws.path().join("new");
    let edit = |file: &str, from: &str, to: &str| {
        let text = std::fs::read_to_string(new.join(file)).unwrap();
        assert!(text.contains(from), "{file}: {from}");
        std::fs::write(new.join(file), text.replace(from, to)).unwrap();
    };
    edit(
        "bot-keyword.yaml",
        r#"any: ["بوت", "bot"]"#,
        r#"any: ["بوت", "bot", "روبوت"]"#,
    );
    edit("bot-keyword.yaml", "47812/hooks/bot", "47812/hooks/bot-v2");
    edit(
        "urgent-group.yaml",
        "- id: urgent-group",
        "- id: urgent-groups",
    );
    edit("unanswered-sla.yaml", "cooldown: 30m", "cooldown: 1h");
    std::fs::remove_file(new.join("unread-pileup.yaml")).unwrap();
    // Moved to another file and reformatted: not a change.
    let order = std::fs::read_to_string(new.join("order-number.yaml")).unwrap();
    std::fs::remove_file(new.join("order-number.yaml")).unwrap();
    std::fs::write(new.join("orders.yaml"), format!("# moved\n{order}\n\n")).unwrap();

    let (code, out, err) = run_cli(&["plan", "--rules", "new", "--against", "old"], ws.path());
    assert_eq!(code, 0, "{out}{err}");
    let expected = [
        "plan: old (9 rules) → new (8 rules)\n",
        "~ change   bot-keyword  (new/bot-keyword.yaml)\n",
        "    actions[1].webhook.url: \"http://127.0.0.1:47812/hooks/bot\" → \"http://127.0.0.1:47812/hooks/bot-v2\"\n",
        "    match.body.any: [\"بوت\",\"bot\"] → [\"بوت\",\"bot\",\"روبوت\"]\n",
        "~ change   unanswered-sla  (new/unanswered-sla.yaml)\n",
        "    cooldown: \"30m\" → \"1h\"\n",
        "    ! cooldowns already running keep the end they had; the new length applies from the next firing\n",
        "- remove   unread-pileup  (chat rule, old/unread-pileup.yaml)\n",
        "    ! its timers (how long its condition has held), its running cooldowns stay in the state unused",
        "~ rename   urgent-group → urgent-groups  (same conditions and actions; new/urgent-group.yaml)\n",
        "    ! state is kept by rule id: its running cooldowns under `urgent-group` do not carry over, so `urgent-groups` starts from nothing",
        "4 change(s), 5 rule(s) unchanged\n",
    ];
    let mut at = 0;
    for line in expected {
        let found = out[at..]
            .find(line)
            .unwrap_or_else(|| panic!("no {line:?} after byte {at} in\n{out}"));
        at += found + line.len();
    }

    let (code, out, _) = run_cli(
        &[
            "plan",
            "--rules",
            "new",
            "--against",
            "old",
            "--format",
            "json",
        ],
        ws.path(),
    );
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(doc["unchanged"], 5);
    assert_eq!(
        doc["changes"][0]["fields"][0]["path"],
        "actions[1].webhook.url"
    );
    assert_eq!(doc["changes"][3]["change"], "rename");

    // A new set that would not deploy is refused with its errors.
    edit("bot-keyword.yaml", "words: true", "words: sure");
    let (code, _, err) = run_cli(&["plan", "--rules", "new", "--against", "old"], ws.path());
    assert_eq!(code, 1);
    assert!(err.contains("the new rules (new) do not load"), "{err}");
    assert!(err.contains("new/bot-keyword.yaml:10:"), "{err}");
}

#[test]
fn check_mentions_disabled_rules_without_failing_on_them() {
    let ws = Workspace::new();
    ws.write(
        "rules/r.yaml",
        "- id: on\n  actions: [ { log: { message: x } } ]\n- id: parked\n  enabled: false\n  actions: [ { log: { message: y } } ]\n",
    );
    let (code, out, _) = run_cli(&["check", "--strict", "rules"], ws.path());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(
            "ok: 1 rule(s) valid (1 disabled, not run: parked), 0 warning(s); rule set "
        ),
        "{out}"
    );
    let (_, out, _) = run_cli(&["check", "--format", "json", "rules"], ws.path());
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["disabled"], serde_json::json!(["parked"]));
}
