//! End to end: the real daemon, the mock gateway, a real receiver.

use crate::support::*;
use std::collections::HashMap;
use std::time::Duration;

/// The suite's bot rule as `bot-keyword`, delivering to the receiver's `/hooks/bot`.
fn bot_rule(receiver: &cartat_rules::receiver::Receiver) -> String {
    crate::support::bot_rule("bot-keyword", &[receiver.url("/hooks/bot")])
}

const THREE_CHATS: &str = r#"
chats:
  - id: "966500000001"
    name: Abu Fahad
    messages:
      - { at: -1h, body: "بوت", id: HIST1 }
      - { at: 1s, body: "مرحبا", id: A1 }
      - { at: 2s, body: "بُوت", id: A2 }
      - { at: 2s, body: "والبـوت وينه", id: A3 }
  - id: "966500000002"
    name: Sarah
    messages:
      - { at: 3s, body: "hello", id: B1 }
      - { at: 4s, body: "I want the BOT", id: B2 }
      - { at: 4s, body: "bot", from_me: true, id: B3 }
  - id: "120363000000000009@g.us"
    name: Team
    messages:
      - { at: 5s, body: "الروبوت خربان", id: C1 }
      - { at: 5s, body: "bot?", id: C2, author: "966511111112@c.us" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_matching_message_becomes_exactly_one_webhook() {
    let gw = gateway(THREE_CHATS).await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule(&rx));
    let cfg = ws.config(
        &gw,
        &["966500000001", "966500000002", "120363000000000009@g.us"],
        "",
    );
    let daemon = Daemon::spawn(&cfg);

    wait_received(&rx, 4, "4 webhooks").await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // anything extra would arrive now
    let out = daemon.output();
    assert_eq!(daemon.stop(), 0, "graceful stop exits 0");

    let got = rx.received();
    let mut bodies = bodies(&got);
    bodies.sort();
    let mut want = vec!["bot?", "I want the BOT", "بُوت", "والبـوت وينه"];
    want.sort();
    assert_eq!(bodies, want, "daemon log:\n{out}");

    // The SPEC §5 envelope, with the delivery id in both headers.
    for r in &got {
        let v = r.json();
        assert_eq!(r.path, "/hooks/bot");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(v["type"], "rule.matched");
        assert_eq!(v["rule"], "bot-keyword");
        let id = v["delivery_id"].as_str().unwrap();
        assert_eq!(r.header("webhook-id"), Some(id));
        assert_eq!(r.header("idempotency-key"), Some(id));
        assert!(r.header("webhook-timestamp").is_some());
        assert!(v["fired_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["message"]["from_me"], false);
    }
    let arabic = got
        .iter()
        .map(|r| r.json())
        .find(|v| v["message"]["body"] == "بُوت")
        .unwrap();
    assert_eq!(arabic["chat"]["id"], "966500000001@c.us");
    assert_eq!(arabic["chat"]["name"], "Abu Fahad");
    assert_eq!(arabic["chat"]["is_group"], false);
    assert_eq!(arabic["message"]["id"], "false_966500000001@c.us_A2");
    assert_eq!(arabic["message"]["type"], "chat");
    assert_eq!(arabic["matched"]["keywords"], serde_json::json!(["بوت"]));
    let group = got
        .iter()
        .map(|r| r.json())
        .find(|v| v["message"]["body"] == "bot?")
        .unwrap();
    assert_eq!(group["chat"]["is_group"], true);
    assert_eq!(group["message"]["author"], "966511111112@c.us");
    gw.shutdown().await;
}

const SPREAD: &str = r#"
chats:
  - id: "966500000001"
    messages:
      - { at: -10m, body: "bot from before the first start", id: H1 }
      - { at: 1s, body: "bot 1", id: M1 }
      - { at: 2s, body: "bot 2", id: M2 }
      - { at: 2s, body: "not this one", id: N1 }
      - { at: 3s, body: "bot 3", id: M3 }
      - { at: 5s, body: "bot 4", id: M4 }
      - { at: 6s, body: "bot 5", id: M5 }
  - id: "966500000002"
    messages:
      - { at: -5m, body: "bot history", id: H2 }
      - { at: 2s, body: "bot 6", id: M6 }
      - { at: 6s, body: "bot 7", id: M7 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_neither_repeats_nor_misses_and_history_never_fires() {
    let gw = gateway(SPREAD).await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule(&rx));
    let cfg = ws.config(&gw, &["966500000001", "966500000002"], "");

    let first = Daemon::spawn(&cfg);
    wait_received(&rx, 2, "the first webhooks").await;
    let log1 = first.output();
    assert_eq!(first.stop(), 0, "SIGTERM is a clean stop:\n{log1}");
    let before = rx.received().len();
    tokio::time::sleep(Duration::from_millis(800)).await; // messages keep arriving while it is down

    let second = Daemon::spawn(&cfg);
    wait_received(&rx, 7, "all 7 webhooks").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log2 = second.output();
    assert_eq!(second.stop(), 0);

    let got = rx.received();
    let mut per_body: HashMap<String, usize> = HashMap::new();
    for b in bodies(&got) {
        *per_body.entry(b).or_default() += 1;
    }
    let mut want: Vec<String> = (1..=7).map(|i| format!("bot {i}")).collect();
    want.sort();
    let mut keys: Vec<String> = per_body.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys, want,
        "first run delivered {before}\nfirst log:\n{log1}\nsecond log:\n{log2}"
    );
    assert!(
        per_body.values().all(|&n| n == 1),
        "each exactly once: {per_body:?}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_every_chat_for_its_retry_after() {
    let gw = gateway(
        r#"
chats:
  - { id: "966500000001", messages: [ { at: 3s, body: "bot after the pause", id: P1 } ] }
  - { id: "966500000002", messages: [] }
  - { id: "966500000003", messages: [] }
faults:
  - { after: 1s, times: 1, respond: { status: 429, retry_after: "2" } }
"#,
    )
    .await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule(&rx));
    let text = format!(
        "api:\n  base_url: {}\n  token: mock-token\n  rate_limit: {{ per_second: 5, burst: 1 }}\n\
         chats: [\"966500000001\", \"966500000002\", \"966500000003\"]\npoll:\n  interval: 200ms\n\
         state:\n  path: ./state/test.db\nrules:\n  paths: [./rules]\nwebhooks:\n  allow_private_networks: [127.0.0.1/32]\nserver:\n  listen: \"off\"\n",
        gw.base_url()
    );
    let cfg = ws.write("cartat.yaml", &text);
    let daemon = Daemon::spawn(&cfg);
    wait_for(
        "the webhook after the pause",
        Duration::from_secs(20),
        || !rx.received().is_empty(),
    )
    .await;
    // The budget spreads the chats after the pause (5/s, burst 1): give them time to resume.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = daemon.output();
    assert_eq!(daemon.stop(), 0);

    let log = gw.requests();
    let limited: Vec<_> = log.iter().filter(|r| r.status == 429).collect();
    assert_eq!(limited.len(), 1, "{log:?}");
    let t = limited[0].at_ms;
    let during: Vec<_> = log
        .iter()
        .filter(|r| r.at_ms > t && r.at_ms < t + 2000)
        .collect();
    assert!(
        during.is_empty(),
        "requests during the Retry-After pause: {during:?}\n{out}"
    );
    let chats_after: std::collections::HashSet<_> = log
        .iter()
        .filter(|r| r.at_ms >= t + 2000)
        .map(|r| r.chat.clone())
        .collect();
    assert_eq!(
        chats_after.len(),
        3,
        "every chat resumes after the pause: {chats_after:?}"
    );
    assert!(out.contains("429"), "the pause is logged:\n{out}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_refuses_to_start() {
    let gw = gateway("chats: [ { id: \"966500000001\", messages: [] } ]").await;
    let ws = Workspace::new();
    ws.write(
        "rules/r.yaml",
        "id: r\nactions: [ { log: { message: x } } ]\n",
    );
    let cfg = ws.config(&gw, &["966500000001"], "");
    let first = Daemon::spawn(&cfg);
    wait_for("the first daemon to poll", Duration::from_secs(10), || {
        !gw.requests().is_empty()
    })
    .await;
    let (code, _, err) = run_cli(&["run", "-c", cfg.to_str().unwrap()], ws.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already running"), "{err}");
    assert_eq!(first.stop(), 0);
    gw.shutdown().await;
}
