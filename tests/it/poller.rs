//! The poller against the mock gateway's request log: the rate budget in every one-second
//! window, `Retry-After` pausing every chat, gap recovery (200 messages while `limit` is 20)
//! and `gap_detected` past the cap, adaptive scheduling within each chat's interval.

use crate::metrics::{metric, scrape};
use crate::support::*;
use cartat_rules::mock::{MockGateway, RequestRecord};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// A config for these tests: `api_extra` lines go inside `api:`, `rest` at the end.
pub fn config_text(gw: &MockGateway, chats: &[&str], api_extra: &str, rest: &str) -> String {
    Config {
        api_timeout: "1s",
        rate_limit: None,
        api_extra,
        poll: "",
        server: Some("127.0.0.1:0"),
        rest,
        ..Config::new(gw, chats)
    }
    .yaml()
}

/// The suite's bot rule ([`crate::support::bot_rule`]) as `bot-keyword`, delivering to `rx`.
pub fn bot_rule(rx: &cartat_rules::receiver::Receiver) -> String {
    crate::support::bot_rule("bot-keyword", &[rx.url("/hooks/bot")])
}

/// What most poller, fault and metrics tests start from: a mock gateway on `scenario`, a
/// receiver, and a workspace whose `cartat.yaml` ([`config_text`]) watches `chats` with the bot
/// rule ([`bot_rule`]) delivering to the receiver.
pub async fn bot_setup(
    scenario: &str,
    chats: &[&str],
    api_extra: &str,
    rest: &str,
) -> (
    MockGateway,
    cartat_rules::receiver::Receiver,
    Workspace,
    std::path::PathBuf,
) {
    let gw = gateway(scenario).await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule(&rx));
    let cfg = ws.write("cartat.yaml", &config_text(&gw, chats, api_extra, rest));
    (gw, rx, ws, cfg)
}

/// A workspace with one rule that only logs, and a config ([`config_text`]) watching `chats`
/// on `gw`: for tests that look at the polls, not at deliveries.
pub fn log_only_setup(
    gw: &MockGateway,
    chats: &[&str],
    api_extra: &str,
    rest: &str,
) -> (Workspace, std::path::PathBuf) {
    let ws = Workspace::new();
    ws.write(
        "rules/r.yaml",
        "id: r\nactions: [ { log: { message: x } } ]\n",
    );
    let cfg = ws.write("cartat.yaml", &config_text(gw, chats, api_extra, rest));
    (ws, cfg)
}

/// Requests sent before the client read a 429 may reach the gateway this long after it.
pub const IN_FLIGHT_MS: u64 = 300;

/// The most requests the gateway saw in any one-second window (starting at a request).
pub fn max_per_second(log: &[RequestRecord]) -> (usize, u64) {
    let mut times: Vec<u64> = log.iter().map(|r| r.at_ms).collect();
    times.sort_unstable();
    let mut best = (0, 0);
    let mut j = 0;
    for i in 0..times.len() {
        while j < times.len() && times[j] < times[i] + 1000 {
            j += 1;
        }
        if j - i > best.0 {
            best = (j - i, times[i]);
        }
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_is_never_exceeded_in_any_second_over_a_20_second_run() {
    // 40 chats every 300ms want ~130 requests/s; the budget is 10/s with a full burst, and a
    // 429 in the middle pauses everyone (a burst right after start and right after the pause).
    let chats: Vec<String> = (0..40).map(|i| format!("9665000001{i:02}")).collect();
    let mut scenario = String::from("chats:\n");
    for (i, c) in chats.iter().enumerate() {
        scenario.push_str(&format!(
            "  - {{ id: \"{c}\", messages: [ {{ at: {}s, body: \"bot {i}\", id: M{i} }} ] }}\n",
            2 + i % 15
        ));
    }
    scenario.push_str(
        "faults:\n  - { after: 8s, times: 1, respond: { status: 429, retry_after: \"2\" } }\n",
    );
    let ids: Vec<&str> = chats.iter().map(String::as_str).collect();
    let (gw, rx, _ws, cfg) = bot_setup(
        &scenario,
        &ids,
        "  rate_limit: { per_second: 10, burst: 10 }\n",
        "poll:\n  interval: 300ms\n  on_first_sight: replay_history\n",
    )
    .await;
    let daemon = Daemon::spawn(&cfg);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let out = daemon.output();
    assert_eq!(daemon.stop(), 0);
    let log = gw.requests();
    let (most, at) = max_per_second(&log);
    assert!(
        most <= 10,
        "{most} requests in the second from {at}ms: the budget is 10/s\n{out}"
    );
    // The budget was the bottleneck the whole time (the test would prove nothing otherwise).
    assert!(log.len() >= 140, "only {} requests in 20s", log.len());
    let first_second = log.iter().filter(|r| r.at_ms < log[0].at_ms + 1000).count();
    assert!(first_second <= 10, "right after start: {first_second}");
    let limited = log
        .iter()
        .find(|r| r.status == 429)
        .expect("the 429 fault fired");
    let after_pause: Vec<&RequestRecord> = log
        .iter()
        .filter(|r| r.at_ms >= limited.at_ms + 2000 && r.at_ms < limited.at_ms + 3000)
        .collect();
    assert!(
        (1..=10).contains(&after_pause.len()),
        "right after the pause: {}",
        after_pause.len()
    );
    // Requests already on the wire when the 429 was answered arrive just after it; after that,
    // nobody polls during the pause.
    let during: Vec<&RequestRecord> = log
        .iter()
        .filter(|r| r.at_ms > limited.at_ms + IN_FLIGHT_MS && r.at_ms < limited.at_ms + 2000)
        .collect();
    assert!(during.is_empty(), "polls during the pause: {during:?}");
    // Every chat's message still arrived, once.
    let mut bodies = bodies(&rx.received());
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 40, "{out}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_http_date_pauses_every_chat_until_then() {
    // The pause ends at a wall-clock date 4s after the mock starts; the 429 comes at 1s.
    let until = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(4);
    let date = jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(&until)
        .unwrap();
    let scenario = format!(
        "chats:\n  - {{ id: \"966500000001\", messages: [] }}\n  - {{ id: \"966500000002\", messages: [] }}\n  - {{ id: \"966500000003\", messages: [] }}\n\
         faults:\n  - {{ after: 1s, times: 1, respond: {{ status: 429, retry_after: \"{date}\" }} }}\n"
    );
    let gw = gateway(&scenario).await;
    let (_ws, cfg) = log_only_setup(
        &gw,
        &["966500000001", "966500000002", "966500000003"],
        "  rate_limit: { per_second: 10, burst: 2 }\n",
        "poll:\n  interval: 200ms\n",
    );
    let daemon = Daemon::spawn(&cfg);
    wait_for("polls after the pause", Duration::from_secs(15), || {
        gw.requests().iter().any(|r| r.at_ms > 5500)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = daemon.output();
    assert_eq!(daemon.stop(), 0);
    let log = gw.requests();
    let t = log.iter().find(|r| r.status == 429).unwrap().at_ms;
    let resumed = log
        .iter()
        .find(|r| r.at_ms > t + IN_FLIGHT_MS)
        .unwrap()
        .at_ms;
    // The date has whole seconds: the pause lasts until between 2s and 4s after the 429.
    assert!(
        resumed >= t + 2000 && resumed <= t + 4500,
        "429 at {t}ms, next request at {resumed}ms\n{out}"
    );
    let chats_after: HashSet<&str> = log
        .iter()
        .filter(|r| r.at_ms >= resumed)
        .map(|r| r.chat.as_str())
        .collect();
    assert_eq!(chats_after.len(), 3, "every chat resumes: {chats_after:?}");
    gw.shutdown().await;
}

/// A chat that gets `n` messages at 3s, all at once, and a quiet one.
fn burst_scenario(n: usize) -> String {
    let mut s = String::from(
        "chats:\n  - id: \"966500000001\"\n    messages:\n      - { at: -1h, body: \"history\", id: H0 }\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "      - {{ at: 3s, body: \"bot {i}\", id: B{i:03} }}\n"
        ));
    }
    s.push_str(
        "  - { id: \"966500000002\", messages: [ { at: 4s, body: \"bot other\", id: O1 } ] }\n",
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_messages_in_a_burst_with_limit_20_are_all_delivered() {
    let (gw, rx, _ws, cfg) = bot_setup(
        &burst_scenario(200),
        &["966500000001", "966500000002"],
        "  rate_limit: { per_second: 20, burst: 5 }\n",
        "poll:\n  interval: 500ms\n",
    )
    .await;
    let daemon = Daemon::spawn(&cfg);
    wait_received(&rx, 201, "201 webhooks").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let out = daemon.output();
    let text = scrape(&out).await;
    assert_eq!(daemon.stop(), 0);
    let mut per_body: HashMap<String, usize> = HashMap::new();
    for b in bodies(&rx.received()) {
        *per_body.entry(b).or_default() += 1;
    }
    assert_eq!(per_body.len(), 201, "{out}");
    assert!(per_body.values().all(|&n| n == 1), "each exactly once");
    // The limit grew until the page reached the last known message.
    let limits: Vec<u64> = gw
        .requests()
        .iter()
        .filter(|r| r.chat == "966500000001")
        .filter_map(|r| r.limit)
        .collect();
    assert!(
        limits.iter().any(|&l| l >= 200),
        "the limit never grew past 200: {limits:?}"
    );
    assert!(!out.contains("gap_detected"), "{out}");
    assert_eq!(metric(&text, "cartat_gaps_detected_total"), Some(0.0));
    assert_eq!(
        metric(&text, "cartat_messages_total{kind=\"new\"}"),
        Some(201.0)
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_largest_limit_a_gap_is_detected_with_the_chat_and_time_range() {
    let (gw, rx, _ws, cfg) = bot_setup(
        &burst_scenario(200),
        &["966500000001", "966500000002"],
        "  rate_limit: { per_second: 20, burst: 5 }\n  max_message_limit: 80\n",
        "poll:\n  interval: 500ms\n",
    )
    .await;
    let daemon = Daemon::spawn(&cfg);
    wait_for("the gap", Duration::from_secs(20), || {
        std::fs::read_to_string(&daemon.log)
            .unwrap_or_default()
            .contains("gap_detected")
    })
    .await;
    wait_for("the other chat's webhook", Duration::from_secs(10), || {
        bodies(&rx.received()).iter().any(|b| b == "bot other")
    })
    .await;
    let out = daemon.output();
    let text = scrape(&out).await;
    assert_eq!(daemon.stop(), 0);
    let line = out.lines().find(|l| l.contains("gap_detected")).unwrap();
    let start_s = gw.start_unix_ms() / 1000;
    assert!(line.contains("chat=966500000001@c.us"), "{line}");
    assert!(
        line.contains(&format!("from_ts={}", start_s - 3600)),
        "{line}"
    );
    assert!(line.contains(&format!("to_ts={}", start_s + 3)), "{line}");
    assert!(line.contains("limit=80"), "{line}");
    assert_eq!(metric(&text, "cartat_gaps_detected_total"), Some(1.0));
    // What the largest page held was still delivered, and nothing twice.
    let got = bodies(&rx.received());
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len());
    assert!(got.len() >= 80, "{}", got.len());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_chats_are_polled_sooner_and_every_chat_within_its_interval() {
    let chats: Vec<String> = (0..20).map(|i| format!("9665000002{i:02}")).collect();
    let gw = gateway(&quiet_chats(&chats)).await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule(&rx));
    let ids: Vec<&str> = chats.iter().map(String::as_str).collect();
    let cfg = ws.write(
        "cartat.yaml",
        &config_text(
            &gw,
            &ids,
            "  rate_limit: { per_second: 20, burst: 5 }\n",
            "poll:\n  interval: 4s\n  scheduler: adaptive\n",
        ),
    );
    let daemon = Daemon::spawn(&cfg);
    // One chat talks every 400ms for 12 seconds.
    for i in 0..30 {
        gw.push_message(&chats[0], &format!("message {i}"), false);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let out = daemon.output();
    assert_eq!(daemon.stop(), 0);
    let log = gw.requests();
    let per_chat = |c: &str| -> Vec<u64> {
        log.iter()
            .filter(|r| r.chat == c)
            .map(|r| r.at_ms)
            .collect()
    };
    let busy = per_chat(&chats[0]);
    for c in &chats[1..] {
        let times = per_chat(c);
        let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().all(|&g| g <= 4100),
            "{c} waited longer than its interval: {gaps:?}\n{out}"
        );
        assert!(
            times.len() <= 5,
            "{c} is idle but was polled {} times",
            times.len()
        );
    }
    assert!(
        busy.len() >= 12,
        "the busy chat was polled {} times in 12s\n{out}",
        busy.len()
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_from_the_start_misses_nothing_and_repeats_nothing() {
    // 20 chats, 3 messages each from 1s to 9s after start; the budget is 10 requests/s and the
    // gateway answers one request in five with 429 and `Retry-After: 1`, from the first one on:
    // many chats' first successful poll comes after their first message. With `skip_history`
    // (the default), what arrived since the daemon started is still new.
    let chats: Vec<String> = (0..20).map(|i| format!("9665000002{i:02}")).collect();
    let mut scenario = String::from("chats:\n");
    for (i, c) in chats.iter().enumerate() {
        scenario.push_str(&format!("  - id: \"{c}\"\n    messages:\n"));
        scenario.push_str(&format!(
            "      - {{ at: -1h, body: \"bot history {i}\", id: H{i} }}\n"
        ));
        for k in 0..3 {
            let ms = 1000 + (i as u64 * 137 + k * 2900) % 8000;
            scenario.push_str(&format!(
                "      - {{ at: {ms}ms, body: \"bot {i}-{k}\", id: M{i}x{k} }}\n"
            ));
        }
    }
    scenario.push_str("faults:\n  - { every: 5, respond: { status: 429, retry_after: \"1\" } }\n");
    let ids: Vec<&str> = chats.iter().map(String::as_str).collect();
    let (gw, rx, _ws, cfg) = bot_setup(
        &scenario,
        &ids,
        "  rate_limit: { per_second: 10, burst: 10 }\n",
        "poll:\n  interval: 2s\n",
    )
    .await;
    let daemon = Daemon::spawn(&cfg);
    let want: Vec<String> = (0..20)
        .flat_map(|i| (0..3).map(move |k| format!("bot {i}-{k}")))
        .collect();
    wait_for(
        "every message of the storm",
        Duration::from_secs(60),
        || {
            let got: HashSet<String> = bodies(&rx.received()).into_iter().collect();
            want.iter().all(|w| got.contains(w))
        },
    )
    .await;
    // Let the retries of anything in flight land, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = daemon.output();
    assert_eq!(daemon.stop(), 0);
    let log = gw.requests();
    let limited = log.iter().filter(|r| r.status == 429).count();
    assert!(limited >= 10, "the storm happened: {limited} 429s");
    let mut got = bodies(&rx.received());
    got.sort();
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(got, unique, "nothing delivered twice");
    let mut want = want;
    want.sort();
    assert_eq!(unique, want, "every message once, no history\n{out}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_burst_of_due_chats_is_on_the_wire_at_once() {
    // 100 chats all due at start, a budget whose burst is 100, and a gateway that never
    // answers: every request must be sent without waiting for an answer. (An in-flight bound
    // below the burst held the rest back until answers came, and the budget's window then
    // kept them spread — one wake-up of the daemon per poll, for good.)
    let chats: Vec<String> = (0..100).map(|i| format!("9665000002{i:02}")).collect();
    let scenario = quiet_chats(&chats) + "faults:\n  - { respond: { hang: true } }\n";
    let gw = gateway(&scenario).await;
    let ws = Workspace::new();
    ws.write(
        "rules/r.yaml",
        "id: r\nactions: [ { log: { message: x } } ]\n",
    );
    let ids: Vec<&str> = chats.iter().map(String::as_str).collect();
    let cfg = ws.write(
        "cartat.yaml",
        &config_text(
            &gw,
            &ids,
            "  rate_limit: { per_second: 100, burst: 100 }\n",
            "poll:\n  interval: 30s\n",
        )
        .replace("timeout: 1s", "timeout: 20s"),
    );
    let daemon = Daemon::spawn(&cfg);
    // Well before the first request times out (5s) and frees its slot.
    wait_for("100 requests on the wire", Duration::from_secs(4), || {
        gw.requests().len() >= 100
    })
    .await;
    let log = gw.requests();
    let distinct: HashSet<&str> = log.iter().map(|r| r.chat.as_str()).collect();
    assert_eq!(distinct.len(), 100, "one request per chat");
    assert!(
        log.iter().all(|r| r.status == 0),
        "none answered: every request went out without waiting for another's answer"
    );
    // The hung requests end with the gateway.
    gw.shutdown().await;
    assert_eq!(daemon.stop(), 0);
}
