//! `/healthz` and `/metrics` of the real binary: the scrape is parsed and every family named
//! in the issue is there, with bounded labels only.

use crate::poller::{bot_rule, bot_setup, config_text};
use crate::support::*;
use std::time::Duration;

/// The address the daemon's health and metrics server bound (from its log).
pub fn server_addr(log: &str) -> Option<String> {
    let line = log
        .lines()
        .find(|l| l.contains("health and metrics server listening"))?;
    let at = line.find("addr=")? + 5;
    Some(
        line[at..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

/// GET a path of the daemon's server: (status, body).
pub async fn get(log: &str, path: &str) -> (u16, String) {
    let addr = server_addr(log).unwrap_or_else(|| panic!("no server address in the log:\n{log}"));
    cartat_rules::install_crypto();
    let resp = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("GET the daemon's server");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// The text of `/metrics`.
pub async fn scrape(log: &str) -> String {
    let (status, text) = get(log, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    text
}

/// Parses the exposition: `name{labels} value` lines (comments skipped).
pub fn parse(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {l:?}"));
            (series.to_string(), value)
        })
        .collect()
}

/// The value of one series (exact name and labels as printed).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    parse(text)
        .into_iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_a_parsed_metrics_scrape_name_every_family() {
    let (gw, rx, _ws, cfg) = bot_setup(
        r#"
chats:
  - { id: "966500000001", messages: [ { at: 1s, body: "bot please", id: A1 } ] }
  - { id: "966500000002", messages: [] }
"#,
        &["966500000001", "966500000002", "966500000404"],
        "  rate_limit: { per_second: 20, burst: 5 }\n",
        "poll:\n  interval: 300ms\n",
    )
    .await;
    let daemon = Daemon::spawn(&cfg);
    wait_for("the webhook", Duration::from_secs(15), || {
        !rx.received().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = daemon.output();
    let (status, health) = get(&out, "/healthz").await;
    assert_eq!(status, 200, "{health}");
    assert!(health.starts_with("ok"), "{health}");
    let text = scrape(&out).await;
    assert_eq!(daemon.stop(), 0);

    let series = parse(&text);
    let names: Vec<&str> = series
        .iter()
        .map(|(s, _)| s.split('{').next().unwrap())
        .collect();
    for family in [
        "cartat_polls_total",
        "cartat_poll_duration_seconds_bucket",
        "cartat_poll_duration_seconds_count",
        "cartat_messages_total",
        "cartat_rule_matches_total",
        "cartat_deliveries_total",
        "cartat_outbox_depth",
        "cartat_dead_letters",
        "cartat_budget_wait_seconds_total",
        "cartat_chat_lag_seconds_max",
        "cartat_gaps_detected_total",
        "cartat_chats_watched",
    ] {
        assert!(names.contains(&family), "no {family} in\n{text}");
    }
    assert!(
        metric(
            &text,
            "cartat_polls_total{account=\"default\",outcome=\"ok\"}"
        )
        .unwrap()
            >= 2.0
    );
    assert!(
        metric(
            &text,
            "cartat_polls_total{account=\"default\",outcome=\"not_found\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        metric(&text, "cartat_rule_matches_total{rule=\"bot-keyword\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "cartat_deliveries_total{outcome=\"delivered\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&text, "cartat_outbox_depth"), Some(0.0));
    assert_eq!(metric(&text, "cartat_chats_watched"), Some(3.0));
    // Series that never happened are there at 0 (an alert on increase() sees the first one).
    assert_eq!(
        metric(
            &text,
            "cartat_polls_total{account=\"default\",outcome=\"store_error\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "cartat_deliveries_total{outcome=\"dead\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "cartat_rule_errors_total{rule=\"bot-keyword\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            &format!(
                "cartat_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    // The process's own figures, under their usual names.
    let rss = metric(&text, "process_resident_memory_bytes").unwrap();
    assert!(rss > 1e6 && rss < 1e9, "{rss}");
    assert!(metric(&text, "process_cpu_seconds_total").unwrap() > 0.0);
    assert!(metric(&text, "process_open_fds").unwrap() >= 3.0);
    let started = metric(&text, "process_start_time_seconds").unwrap();
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!(
        (now - started).abs() < 600.0,
        "started {started}, now {now}"
    );
    assert!(text.contains("# TYPE process_open_fds gauge"), "{text}");
    // Bounded labels: no phone number, URL or error text anywhere in the exposition.
    for (s, _) in &series {
        assert!(!s.contains("9665"), "a phone number in a label: {s}");
        assert!(!s.contains("://"), "a URL in a label: {s}");
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_can_be_turned_off() {
    let gw = gateway("chats: [ { id: \"966500000001\", messages: [] } ]").await;
    let ws = Workspace::new();
    ws.write(
        "rules/r.yaml",
        "id: r\nactions: [ { log: { message: x } } ]\n",
    );
    let text = config_text(&gw, &["966500000001"], "", "")
        .replace("listen: 127.0.0.1:0", "listen: \"off\"");
    let cfg = ws.write("cartat.yaml", &text);
    let daemon = Daemon::spawn(&cfg);
    wait_for("a poll", Duration::from_secs(10), || {
        !gw.requests().is_empty()
    })
    .await;
    let out = daemon.output();
    assert_eq!(daemon.stop(), 0);
    assert!(server_addr(&out).is_none(), "{out}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_mask_every_phone_number_the_poller_logs() {
    let mut scenario = String::from(
        "chats:\n  - id: \"966500000001\"\n    messages:\n      - { at: -1h, body: \"old\", id: H0 }\n",
    );
    for i in 0..60 {
        scenario.push_str(&format!(
            "      - {{ at: 2s, body: \"bot {i}\", id: B{i:02} }}\n"
        ));
    }
    let gw = gateway(&scenario).await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule(&rx));
    let text = config_text(
        &gw,
        &["966500000001", "966500000404"],
        "  rate_limit: { per_second: 20, burst: 5 }\n  max_message_limit: 40\n",
        "poll:\n  interval: 300ms\n",
    )
    .replace(
        "log:\n  mask_phone_numbers: false",
        "log:\n  format: json\n  mask_phone_numbers: true",
    );
    let cfg = ws.write("cartat.yaml", &text);
    let daemon = Daemon::spawn(&cfg);
    wait_for("the gap and the webhooks", Duration::from_secs(20), || {
        let out = std::fs::read_to_string(&daemon.log).unwrap_or_default();
        out.contains("gap_detected") && rx.received().len() >= 40
    })
    .await;
    let out = daemon.output();
    assert_eq!(daemon.stop(), 0);
    let mut events = std::collections::BTreeSet::new();
    for line in out.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        // One `event` for machines and one `message` for people, never the same key twice
        // (a JSON parser would keep only the last); quotes inside values are escaped, so a
        // key is the only place `"event":` can appear unescaped.
        assert_eq!(line.matches("\"event\":").count(), 1, "{line}");
        assert_eq!(line.matches("\"message\":").count(), 1, "{line}");
        assert!(v["message"].is_string() && v["level"].is_string(), "{line}");
        events.insert(v["event"].as_str().unwrap().to_string());
    }
    for event in [
        "daemon.started",
        "poll.gap_detected",
        "poll.failed",
        "rule.fired",
        "chat.first_seen",
        "delivery.delivered",
    ] {
        assert!(events.contains(event), "no `{event}` in {events:?}\n{out}");
    }
    let fired = out
        .lines()
        .find(|l| l.contains("\"event\":\"rule.fired\""))
        .unwrap();
    let fired: serde_json::Value = serde_json::from_str(fired).unwrap();
    assert_eq!(fired["message"], "rule fired");
    assert!(
        fired["message_id"]
            .as_str()
            .unwrap()
            .contains("9665*****001@c.us"),
        "{fired}"
    );
    assert!(!out.contains("966500000001"), "an unmasked number:\n{out}");
    assert!(!out.contains("966500000404"), "an unmasked number:\n{out}");
    assert!(out.contains("9665*****001@c.us"), "{out}");
    assert!(out.contains("9665*****404@c.us"), "{out}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_over_the_api_reports_the_new_fingerprint_or_the_errors_and_keeps_the_last_good_set()
{
    let gw = gateway("chats:\n  - id: \"966500000001\"\n").await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &word_rule(&rx, "bot", "bot"));
    let text = Config {
        watch_rules: false,
        server: Some("127.0.0.1:0\n  admin_token: s3cret-admin-token"),
        ..Config::new(&gw, &["966500000001"])
    }
    .yaml();
    let cfg = ws.write("cartat.yaml", &text);
    let fingerprint_of = |dir: &str| {
        let (code, out, _) = run_cli(&["check", "--format", "json", dir], ws.path());
        assert_eq!(code, 0, "{out}");
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        doc["fingerprint"].as_str().unwrap().to_string()
    };
    let first = fingerprint_of("rules");
    assert_eq!(first.len(), 16);

    let daemon = Daemon::spawn(&cfg);
    wait_for("the server", Duration::from_secs(10), || {
        server_addr(&daemon.output()).is_some()
    })
    .await;
    let log = daemon.output();
    let addr = server_addr(&log).unwrap();
    let (status, health) = get(&log, "/healthz").await;
    assert_eq!(status, 200);
    assert!(health.contains(&format!("rule set {first}")), "{health}");
    let series = |fp: &str| format!("cartat_rule_set{{fingerprint=\"{fp}\"}}");
    assert_eq!(metric(&scrape(&log).await, &series(&first)), Some(1.0));

    // Without the token: refused, nothing reloaded.
    let url = format!("http://{addr}/api/reload");
    let (code, _, err) = run_cli(
        &[
            "reload",
            "-c",
            "cartat.yaml",
            "--url",
            &url,
            "--token",
            "wrong",
        ],
        ws.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("the daemon answered 401"), "{err}");

    // A second rule: reloaded, and the answer names the set check names.
    ws.write("rules/order.yaml", &word_rule(&rx, "order", "order"));
    let second = fingerprint_of("rules");
    assert_ne!(second, first);
    let (code, out, err) = run_cli(&["reload", "-c", "cartat.yaml", "--url", &url], ws.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.ends_with(&format!(
            "reloaded: rule set {second} in force (2 rule(s))\n"
        )),
        "{out}"
    );
    // The new set's warnings come back with it, as `check` prints them.
    assert!(
        out.contains("/rules/order.yaml:3:30: warning: rule `order` sends a webhook"),
        "{out}"
    );
    let (_, health) = get(&log, "/healthz").await;
    assert!(health.contains(&format!("rule set {second}")), "{health}");
    let scraped = scrape(&log).await;
    assert_eq!(metric(&scraped, &series(&second)), Some(1.0));
    assert_eq!(metric(&scraped, &series(&first)), None, "{scraped}");

    // What a deploy would change against the set the daemon has in force (its admin API).
    std::fs::create_dir_all(ws.path().join("next")).unwrap();
    std::fs::copy(
        ws.path().join("rules/bot.yaml"),
        ws.path().join("next/bot.yaml"),
    )
    .unwrap();
    let daemon_url = format!("http://{addr}");
    let (code, out, err) = run_cli(
        &[
            "plan",
            "--rules",
            "next",
            "--against",
            &daemon_url,
            "--token",
            "s3cret-admin-token",
        ],
        ws.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!(
            "plan: {daemon_url} (rule set {second}) (2 rules) → next (1 rules)\n"
        )),
        "{out}"
    );
    assert!(out.contains("- remove   order  (message rule, "), "{out}");
    assert!(out.ends_with("1 change(s), 1 rule(s) unchanged\n"), "{out}");
    let (code, _, err) = run_cli(
        &[
            "plan",
            "--rules",
            "next",
            "--against",
            &daemon_url,
            "--token",
            "wrong",
        ],
        ws.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("answered 401"), "{err}");

    // A bad set: its errors with path:line:col, and the last good set stays in force.
    ws.write(
        "rules/bad.yaml",
        "id: bad\nmatch:\n  from_me: nope\nactions: [ { log: { message: x } } ]\n",
    );
    let (code, out, _) = run_cli(&["reload", "-c", "cartat.yaml", "--url", &url], ws.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("rules/bad.yaml:3:12: error: invalid boolean"),
        "{out}"
    );
    assert!(
        out.ends_with(&format!(
            "not reloaded: the new rule set has errors; rule set {second} stays in force\n"
        )),
        "{out}"
    );
    let (code, out, _) = run_cli(
        &[
            "reload",
            "-c",
            "cartat.yaml",
            "--url",
            &url,
            "--format",
            "json",
        ],
        ws.path(),
    );
    assert_eq!(code, 1);
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["fingerprint"], second.as_str());
    assert_eq!(answer["errors"][0]["line"], 3);
    let (_, health) = get(&log, "/healthz").await;
    assert!(health.contains(&format!("rule set {second}")), "{health}");
    // The token never reaches the log.
    assert!(!daemon.output().contains("s3cret-admin-token"));
    assert_eq!(daemon.stop(), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_watches_a_new_chat_drops_a_removed_one_and_names_what_needs_a_restart() {
    let gw = gateway(
        "chats:\n  - id: \"966500000001\"\n  - id: \"966500000002\"\n    messages:\n      - { at: 2s, body: \"bot please\" }\n",
    )
    .await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &word_rule(&rx, "bot", "bot"));
    let config = |chat: &str, rate: &'static str, webhook_timeout: &'static str| {
        Config {
            watch_rules: false,
            rate_limit: Some(rate),
            webhook_timeout,
            server: Some("127.0.0.1:0\n  admin_token: s3cret-admin-token"),
            ..Config::new(&gw, &[chat])
        }
        .yaml()
    };
    let cfg = ws.write(
        "cartat.yaml",
        &config("966500000001", "{ per_second: 20, burst: 5 }", "2s"),
    );
    let daemon = Daemon::spawn(&cfg);
    wait_for("the first chat's polls", Duration::from_secs(10), || {
        server_addr(&daemon.output()).is_some()
            && gw.requests().iter().any(|r| r.chat == "966500000001")
    })
    .await;
    let log = daemon.output();
    let url = format!("http://{}/api/reload", server_addr(&log).unwrap());
    assert!(gw.requests().iter().all(|r| r.chat != "966500000002"));

    // The other chat instead, another rate, and a setting only a restart applies.
    ws.write(
        "cartat.yaml",
        &config("966500000002", "{ per_second: 10, burst: 5 }", "3s"),
    );
    let (code, out, err) = run_cli(&["reload", "-c", "cartat.yaml", "--url", &url], ws.path());
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        "config: now watching 966500000002@c.us\n",
        "config: no longer watching 966500000001@c.us\n",
        "config: the API rate limit changed\n",
        "config: changed, but applied only at the next start: webhooks.timeout\n",
    ] {
        assert!(out.contains(line), "no {line:?} in\n{out}");
    }
    // The new chat is polled and its message fires; the removed one is not polled again.
    wait_for("the new chat's webhook", Duration::from_secs(15), || {
        bodies(&rx.received()).iter().any(|b| b == "bot please")
    })
    .await;
    let polled_before = gw
        .requests()
        .iter()
        .filter(|r| r.chat == "966500000001")
        .count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let polled_after = gw
        .requests()
        .iter()
        .filter(|r| r.chat == "966500000001")
        .count();
    assert_eq!(
        polled_before, polled_after,
        "a removed chat is polled no more"
    );
    let (_, health) = get(&log, "/healthz").await;
    assert!(health.starts_with("ok: 1 chats watched"), "{health}");
    assert_eq!(
        metric(&scrape(&log).await, "cartat_chats_watched"),
        Some(1.0)
    );

    // A config with an error changes nothing, and says where the error is.
    let broken = config("966500000001", "{ per_second: 10, burst: 5 }", "3s")
        .replace("retry_scale: 0.01", "retry_scale: lots");
    ws.write("cartat.yaml", &broken);
    // (With --url and --token the command does not read the config itself.)
    let (code, out, _) = run_cli(
        &["reload", "--url", &url, "--token", "s3cret-admin-token"],
        ws.path(),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cartat.yaml:"), "{out}");
    assert!(out.contains("not reloaded: the config has errors"), "{out}");
    let (_, health) = get(&log, "/healthz").await;
    assert!(health.starts_with("ok: 1 chats watched"), "{health}");
    assert_eq!(daemon.stop(), 0);
    gw.shutdown().await;
}
