//! Rules that remember: chat rules, `for`, cooldowns and thresholds across restarts.

use crate::support::*;
use std::time::Duration;

fn unix(rfc3339: &str) -> i64 {
    rfc3339.parse::<jiff::Timestamp>().unwrap().as_second()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_for_fires_once_across_a_restart_inside_its_window() {
    let gw = gateway(
        r#"
chats:
  - id: "966500000001"
    name: Waiting customer
    messages:
      - { at: -1h, body: "earlier question", id: Q0 }
      - { at: -59m, body: "earlier answer", id: R0, from_me: true }
      - { at: 1s, body: "hello? anyone?", id: Q1 }
  - id: "966500000002"
    name: Answered customer
    messages:
      - { at: 1s, body: "hi", id: Q2 }
      - { at: 2s, body: "hello, how can we help?", id: R2, from_me: true }
"#,
    )
    .await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write(
        "rules/sla.yaml",
        &format!("id: sla\non: chat\nmatch: {{ unanswered_for: 5s }}\nactions:\n  - webhook: {{ url: \"{}\" }}\n", rx.url("/sla")),
    );
    let cfg = ws.config(&gw, &["966500000001", "966500000002"], "");
    let first = Daemon::spawn(&cfg);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    first.kill(); // SIGKILL inside the window
    let second = Daemon::spawn(&cfg);
    wait_for("the SLA alert", Duration::from_secs(20), || {
        !rx.received().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = second.output();
    assert_eq!(second.stop(), 0);
    let got = rx.received();
    assert_eq!(
        got.len(),
        1,
        "exactly one alert: {:?}\n{log}",
        got.iter().map(|r| r.body.clone()).collect::<Vec<_>>()
    );
    let v = got[0].json();
    assert_eq!(v["on"], "chat");
    assert_eq!(v["rule"], "sla");
    assert_eq!(v["chat"]["name"], "Waiting customer");
    assert_eq!(v["matched"]["unanswered_for"], "5s");
    assert_eq!(v["message"]["body"], "hello? anyone?");
    let waited = unix(v["fired_at"].as_str().unwrap())
        - unix(v["matched"]["waiting_since"].as_str().unwrap());
    assert!(
        (5..=9).contains(&waited),
        "fired {waited}s after the question"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_neither_resets_a_for_timer_nor_fires_twice() {
    let gw = gateway("chats:\n  - { id: \"966500000001\", name: Busy, unread_count: 7, messages: [ { at: -1m, body: x } ] }\n").await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write(
        "rules/pileup.yaml",
        &format!("id: pileup\non: chat\nmatch:\n  unread_count: {{ gte: 5 }}\n  for: 6s\ncooldown: 1h\nactions:\n  - webhook: {{ url: \"{}\" }}\n", rx.url("/pileup")),
    );
    let cfg = ws.config(&gw, &["966500000001"], "");
    let started = jiff::Timestamp::now().as_second();
    let first = Daemon::spawn(&cfg);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    first.kill();
    let restarted = jiff::Timestamp::now().as_second();
    let second = Daemon::spawn(&cfg);
    wait_for("the pile-up alert", Duration::from_secs(20), || {
        !rx.received().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(second.stop(), 0);
    let got = rx.received();
    assert_eq!(got.len(), 1, "fires once");
    let v = got[0].json();
    assert_eq!(v["matched"]["unread_count"], 7);
    let since = unix(v["matched"]["since"].as_str().unwrap());
    assert!(
        since <= restarted,
        "the timer started before the restart and survived it (since {since}, restart {restarted}, start {started})"
    );
    let held = unix(v["fired_at"].as_str().unwrap()) - since;
    assert!((6..=9).contains(&held), "fired after holding {held}s");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldowns_and_thresholds_survive_a_restart() {
    let gw = gateway("chats:\n  - { id: \"966500000001\", messages: [] }\n").await;
    let rx = receiver().await;
    let ws = Workspace::new();
    let url = rx.url("/hook");
    ws.write(
        "rules/r.yaml",
        &format!(
            "- id: quiet\n  match: {{ body: {{ any: [help] }} }}\n  cooldown: 1h\n  actions: [ {{ webhook: {{ url: \"{url}\" }} }} ]\n\
             - id: twice\n  match: {{ body: {{ any: [urgent] }}, threshold: {{ count: 2, within: 10m }} }}\n  actions: [ {{ webhook: {{ url: \"{url}\" }} }} ]\n"
        ),
    );
    let cfg = ws.config(&gw, &["966500000001"], "");
    let first = Daemon::spawn_polled(&cfg, &gw).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.push_message("966500000001", "help please", false);
    gw.push_message("966500000001", "urgent 1", false);
    wait_received(&rx, 1, "the first help").await;
    tokio::time::sleep(Duration::from_millis(1000)).await; // the urgent hit is committed
    assert_eq!(first.stop(), 0);

    let second = Daemon::spawn(&cfg);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    gw.push_message("966500000001", "help again", false);
    gw.push_message("966500000001", "urgent 2", false);
    wait_received(&rx, 2, "the threshold alert").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(second.stop(), 0);
    let rules: Vec<String> = rx
        .received()
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r.json()["rule"].as_str().unwrap(),
                r.json()["message"]["body"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        rules,
        ["quiet:help please", "twice:urgent 2"],
        "help again is silenced by the cooldown; urgent 2 is the second hit"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_edit_is_picked_up_and_a_broken_edit_keeps_the_last_good_set() {
    let gw = gateway("chats:\n  - { id: \"966500000001\", messages: [] }\n").await;
    let rx = receiver().await;
    let ws = Workspace::new();
    let rule = |word: &str| word_rule(&rx, "word", word);
    ws.write("rules/word.yaml", &rule("alpha"));
    let cfg = ws.config(&gw, &["966500000001"], "");
    let daemon = Daemon::spawn_polled(&cfg, &gw).await;
    gw.push_message("966500000001", "alpha 1", false);
    wait_received(&rx, 1, "alpha 1").await;

    // A good edit: the rule now wants "beta".
    ws.write("rules/word.yaml", &rule("beta"));
    wait_for("the reload", Duration::from_secs(10), || {
        daemon.output().contains("rules reloaded")
    })
    .await;
    gw.push_message("966500000001", "alpha 2", false);
    gw.push_message("966500000001", "beta 1", false);
    wait_received(&rx, 2, "beta 1").await;

    // A broken edit: logged with its position, the "beta" set stays in force.
    ws.write(
        "rules/word.yaml",
        "id: word\nmatch:\n  bdy: {}\nactions: []\n",
    );
    wait_for("the refused reload", Duration::from_secs(10), || {
        daemon.output().contains("rules not reloaded")
    })
    .await;
    gw.push_message("966500000001", "beta 2", false);
    wait_received(&rx, 3, "beta 2").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let log = daemon.output();
    assert_eq!(daemon.stop(), 0);
    assert!(
        log.contains("rules/word.yaml:3:3:"),
        "the error names the place:\n{log}"
    );
    let bodies = bodies(&rx.received());
    assert_eq!(
        bodies,
        ["alpha 1", "beta 1", "beta 2"],
        "nothing missed, nothing twice"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_rules_when_watching_is_off() {
    let gw = gateway("chats:\n  - { id: \"966500000001\", messages: [] }\n").await;
    let rx = receiver().await;
    let ws = Workspace::new();
    let rule = |word: &str| word_rule(&rx, "word", word);
    ws.write("rules/word.yaml", &rule("alpha"));
    let text = format!(
        "api:\n  base_url: {}\n  token: mock-token\nchats: [\"966500000001\"]\npoll:\n  interval: 300ms\nstate:\n  path: ./state/test.db\n\
         rules:\n  paths: [./rules]\n  watch: false\nwebhooks:\n  allow_private_networks: [127.0.0.1/32]\nserver:\n  listen: \"off\"\n",
        gw.base_url()
    );
    let cfg = ws.write("cartat.yaml", &text);
    let daemon = Daemon::spawn_polled(&cfg, &gw).await;
    ws.write("rules/word.yaml", &rule("beta"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !daemon.output().contains("rules reloaded"),
        "watch: false does not reload by itself"
    );
    daemon.signal(libc::SIGHUP);
    wait_for("the SIGHUP reload", Duration::from_secs(10), || {
        daemon.output().contains("rules reloaded")
    })
    .await;
    gw.push_message("966500000001", "beta 1", false);
    wait_received(&rx, 1, "beta 1").await;
    assert_eq!(daemon.stop(), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rhai_rule_file_escalates_and_a_hostile_one_harms_nobody() {
    let gw = gateway("chats:\n  - { id: \"966500000001\", name: Customer, messages: [] }\n").await;
    let rx = receiver().await;
    let ws = Workspace::new();
    let escalation = std::fs::read_to_string(root().join("rules/escalation.rhai"))
        .unwrap()
        .replace("http://127.0.0.1:47812", &rx.url(""));
    ws.write("rules/escalation.rhai", &escalation);
    // Every hostile script that compiles, side by side with the good rules.
    let hostile = [
        ("spin", "fn on_message(msg, chat) { loop { } }", "stopped"),
        (
            "doubling",
            "fn on_message(msg, chat) { let s = \"x\"; loop { s += s; } }",
            "stopped",
        ),
        (
            "recursion",
            "fn f(n) { f(n + 1) }\nfn on_message(msg, chat) { f(0) }",
            "stopped",
        ),
        (
            "closures",
            "fn on_message(msg, chat) { let a = []; loop { a.push(|x| x + 1); } }",
            "stopped",
        ),
        (
            "flood",
            "fn on_message(msg, chat) { for i in 0..10000 { webhook(\"http://127.0.0.1:9/x\", #{i: i}); } }",
            "more than 10 actions",
        ),
        (
            "hoard",
            "fn on_message(msg, chat) { for i in 0..100000 { state_set(`k${i}`, i); } }",
            "state_set",
        ),
        (
            "selfcall",
            "fn on_message(msg, chat) { let f = 0; f = |n| f.call(n); f.call(1); }",
            "a closure called itself",
        ),
        (
            // `sleep(4)` itself is refused at load; through a function pointer it fails at once.
            "sleeper",
            "fn on_message(msg, chat) { Fn(\"sleep\").call(4); }",
            "not available to rule scripts",
        ),
    ];
    for (name, src, _) in hostile {
        ws.write(&format!("rules/{name}.rhai"), &format!("{src}\n"));
    }
    ws.write("rules/bot.yaml", &format!("id: bot\nmatch: {{ body: {{ any: [bot] }} }}\nactions: [ {{ webhook: {{ url: \"{}\" }} }} ]\n", rx.url("/bot")));
    let cfg = ws.config(&gw, &["966500000001"], "");
    let daemon = Daemon::spawn_polled(&cfg, &gw).await;
    gw.push_message("966500000001", "urgent: my order", false);
    gw.push_message("966500000001", "bot?", false);
    wait_received(&rx, 1, "the bot webhook").await;
    gw.push_message("966500000001", "URGENT again", false);
    wait_received(&rx, 2, "the escalation").await;
    gw.push_message("966500000001", "urgent a third time", false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = daemon.output();
    let peak_kb = peak_rss_kib(daemon.child.id());
    assert!(peak_kb < 200_000, "memory stays bounded: peak {peak_kb} kB");
    assert_eq!(daemon.stop(), 0, "the daemon stayed up:\n{log}");
    for (name, _, why) in hostile {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("{name}.rhai (rule `{name}`, on_message)")))
            .unwrap_or_else(|| panic!("{name} not reported:\n{log}"));
        assert!(line.contains(why), "{name}: {line}");
    }
    let got = rx.received();
    assert_eq!(
        got.len(),
        2,
        "{:?}",
        got.iter().map(|r| r.body.clone()).collect::<Vec<_>>()
    );
    assert_eq!(got[0].path, "/bot");
    assert_eq!(got[1].path, "/hooks/escalations");
    let v = got[1].json();
    assert_eq!(v["rule"], "escalation");
    assert_eq!(v["name"], "Customer");
    assert!(v["text"].as_str().unwrap().contains("URGENT again"));
    assert!(got[1].header("webhook-id").is_some());

    assert!(
        log.contains("flood.rhai (rule `flood`, on_message): ")
            && log.contains("more than 10 actions"),
        "{log}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_would_drop_every_rule_is_refused_unless_allowed() {
    for allow_empty in [false, true] {
        let gw = gateway("chats:\n  - { id: \"966500000001\", messages: [] }\n").await;
        let rx = receiver().await;
        let ws = Workspace::new();
        ws.write(
            "rules/word.yaml",
            &format!(
                "id: word\nmatch: {{ body: {{ any: [alpha] }} }}\nactions: [ {{ webhook: {{ url: \"{}\" }} }} ]\n",
                rx.url("/w")
            ),
        );
        let text = format!(
            "api:\n  base_url: {}\n  token: mock-token\nchats: [\"966500000001\"]\npoll:\n  interval: 300ms\nstate:\n  path: ./state/test.db\n\
             rules:\n  paths: [./rules]\n  allow_empty: {allow_empty}\nwebhooks:\n  allow_private_networks: [127.0.0.1/32]\nserver:\n  listen: \"off\"\n",
            gw.base_url()
        );
        let cfg = ws.write("cartat.yaml", &text);
        let daemon = Daemon::spawn_polled(&cfg, &gw).await;
        // A deploy that wiped the folder.
        std::fs::remove_file(ws.path().join("rules/word.yaml")).unwrap();
        let said = if allow_empty {
            "rules reloaded"
        } else {
            "rules not reloaded: the new rule set is empty"
        };
        wait_for(said, Duration::from_secs(10), || {
            daemon.output().contains(said)
        })
        .await;
        gw.push_message("966500000001", "alpha 1", false);
        if allow_empty {
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert!(rx.received().is_empty(), "no rule, no webhook");
        } else {
            wait_for(
                "alpha 1 under the last set",
                Duration::from_secs(10),
                || rx.received().len() == 1,
            )
            .await;
        }
        assert_eq!(daemon.stop(), 0);
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_cannot_forge_a_log_line_through_a_log_action() {
    let gw = gateway("chats:\n  - { id: \"966500000001\", messages: [] }\n").await;
    let ws = Workspace::new();
    ws.write(
        "rules/echo.yaml",
        "id: echo\nmatch: { body: { any: [bot] } }\nactions:\n  - log: { message: \"said: {{ message.body }}\" }\n",
    );
    let text = format!(
        "api:\n  base_url: {}\n  token: mock-token\nchats: [\"966500000001\"]\npoll:\n  interval: 300ms\nstate:\n  path: ./state/test.db\n\
         rules:\n  paths: [./rules]\nserver:\n  listen: \"off\"\n",
        gw.base_url()
    );
    let cfg = ws.write("cartat.yaml", &text);
    let daemon = Daemon::spawn_polled(&cfg, &gw).await;
    gw.push_message(
        "966500000001",
        "bot\n2026-12-02T00:00:00Z  INFO FORGED admin logged in\r\u{202E}gnp.exe\0",
        false,
    );
    wait_for("the log action", Duration::from_secs(10), || {
        daemon.output().contains("said: bot")
    })
    .await;
    let out = daemon.output();
    assert_eq!(daemon.stop(), 0);
    assert!(
        !out.lines()
            .any(|l| l.contains("INFO FORGED") && !l.contains("said: bot")),
        "a forged line:\n{out}"
    );
    assert!(
        out.contains("said: bot\\n2026-12-02T00:00:00Z  INFO FORGED admin logged in\\r\\u{202e}gnp.exe\\u{0000}"),
        "{out}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_fails_on_every_message_and_poll_logs_once_a_minute_and_counts_each() {
    let gw = gateway("chats:\n  - { id: \"966500000001\", messages: [] }\n").await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write(
        "rules/thrower.rhai",
        "fn on_message(msg, chat) { throw \"broken on purpose\"; }\nfn on_chat(chat) { throw \"broken on purpose too\"; }\n",
    );
    ws.write("rules/bot.yaml", &crate::poller::bot_rule(&rx));
    let cfg = ws.write(
        "cartat.yaml",
        &crate::poller::config_text(&gw, &["966500000001"], "", "poll:\n  interval: 200ms\n"),
    );
    let daemon = Daemon::spawn_polled(&cfg, &gw).await;
    for i in 0..10 {
        gw.push_message("966500000001", &format!("bot {i}"), false);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    wait_for(
        "the good rule's ten webhooks",
        Duration::from_secs(10),
        || rx.received().len() == 10,
    )
    .await;
    let out = daemon.output();
    let metrics = crate::metrics::scrape(&out).await;
    assert_eq!(daemon.stop(), 0);
    let errors = out
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("thrower"))
        .count();
    assert_eq!(
        errors, 1,
        "one line for the (rule, chat) in the first minute:\n{out}"
    );
    let counted = crate::metrics::metric(&metrics, "cartat_rule_errors_total{rule=\"thrower\"}")
        .unwrap_or(0.0);
    // on_message on each of the ten messages, on_chat on every poll.
    let polls = crate::metrics::metric(
        &metrics,
        "cartat_polls_total{account=\"default\",outcome=\"ok\"}",
    )
    .unwrap();
    assert!(polls >= 5.0, "{metrics}");
    // (A poll may be between its rule errors and its own count when the scrape comes.)
    assert!(
        counted == 10.0 + polls || counted == 11.0 + polls,
        "{counted} errors, {polls} polls\n{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_scripts_share_one_budget_per_poll_and_the_yaml_rules_still_fire() {
    let gw = gateway("chats:\n  - { id: \"966500000003\", name: Customer, messages: [] }\n").await;
    let rx = receiver().await;
    let ws = Workspace::new();
    // Six scripts that each run to their 50 ms deadline (few operations, each a scan of a
    // 250 KB string): 300 ms a message, past the 250 ms the scripts of one poll may take
    // together.
    for i in 0..6 {
        ws.write(
            &format!("rules/spin{i}.rhai"),
            "fn on_message(msg, chat) { let s = \"x\"; s.pad(250000, \"y\"); for i in 0..100000 { s.index_of(\"q\"); } }\n",
        );
    }
    ws.write("rules/bot.yaml", &format!("id: bot\nmatch: {{ body: {{ any: [bot] }} }}\nactions: [ {{ webhook: {{ url: \"{}\" }} }} ]\n", rx.url("/bot")));
    let cfg = ws.config(&gw, &["966500000003"], "");
    let daemon = Daemon::spawn_polled(&cfg, &gw).await;
    for i in 0..4 {
        gw.push_message("966500000003", &format!("bot {i}"), false);
    }
    wait_received(&rx, 4, "the bot webhooks").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = daemon.output();
    assert_eq!(daemon.stop(), 0, "the daemon stayed up:\n{log}");
    assert!(
        log.contains("the budget per poll"),
        "the scripts past the poll's budget are stopped and say why:\n{log}"
    );
    assert_eq!(
        bodies(&rx.received()).len(),
        4,
        "every YAML rule fired once"
    );
    gw.shutdown().await;
}
