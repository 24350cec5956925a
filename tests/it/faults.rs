//! Each way the gateway fails, for one chat: that chat backs off (or skips what it cannot
//! read) and the other chats' messages are still delivered on time.

use crate::metrics::{metric, scrape};
use crate::poller::{bot_rule, bot_setup, config_text, log_only_setup};
use crate::support::*;
use cartat_rules::mock::RequestRecord;
use std::time::{Duration, Instant};

const FAULTY: &str = "966500000001";

/// Three chats: the faulty one and two good ones, each with one "bot" message; `fault` is the
/// `respond:` of a fault on the faulty chat (with `extra` keys such as `times`).
fn scenario(fault: &str) -> String {
    format!(
        r#"
chats:
  - {{ id: "{FAULTY}", messages: [ {{ at: 2s, body: "bot faulty", id: F1 }} ] }}
  - {{ id: "966500000002", messages: [ {{ at: 2s, body: "bot two", id: G2 }} ] }}
  - {{ id: "966500000003", messages: [ {{ at: 3s, body: "bot three", id: G3 }} ] }}
faults:
  - {{ chat: "{FAULTY}", {fault} }}
"#
    )
}

struct Outcome {
    log: Vec<RequestRecord>,
    out: String,
    metrics: String,
    bodies: Vec<String>,
    /// When each good chat's webhook arrived, after the mock started.
    good_latency: Duration,
    /// The daemon's peak resident memory, in MiB.
    peak_rss_mib: u64,
}

/// Runs the daemon on a faulty scenario; waits for the good chats' webhooks (and the faulty
/// chat's too when `recovers`), then `linger` more.
async fn run(scenario: &str, recovers: bool, linger: Duration) -> Outcome {
    let gw = gateway(scenario).await;
    let started = Instant::now();
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule(&rx));
    let cfg = ws.write(
        "cartat.yaml",
        &config_text(
            &gw,
            &[FAULTY, "966500000002", "966500000003"],
            "  rate_limit: { per_second: 20, burst: 5 }\n",
            "poll:\n  interval: 300ms\n  on_first_sight: replay_history\n",
        ),
    );
    let daemon = Daemon::spawn(&cfg);
    let good =
        |b: &[String]| b.iter().any(|x| x == "bot two") && b.iter().any(|x| x == "bot three");
    wait_for("the good chats' webhooks", Duration::from_secs(10), || {
        good(&bodies(&rx.received()))
    })
    .await;
    let good_latency = started.elapsed();
    if recovers {
        wait_for("the faulty chat's webhook", Duration::from_secs(30), || {
            bodies(&rx.received()).iter().any(|x| x == "bot faulty")
        })
        .await;
    }
    tokio::time::sleep(linger).await;
    let out = daemon.output();
    let metrics = scrape(&out).await;
    let peak_rss_mib = peak_rss_kib(daemon.child.id()) / 1024;
    assert_eq!(daemon.stop(), 0);
    let outcome = Outcome {
        log: gw.requests(),
        out,
        metrics,
        bodies: bodies(&rx.received()),
        good_latency,
        peak_rss_mib,
    };
    gw.shutdown().await;
    outcome
}

impl Outcome {
    fn faulty_requests(&self) -> Vec<&RequestRecord> {
        self.log.iter().filter(|r| r.chat == FAULTY).collect()
    }

    /// Checks what every fault case shares: the good chats on time, nothing twice.
    fn check_others_unharmed(&self) {
        // Messages at 2s and 3s; 300ms polls: on time means well under 6s after the start.
        assert!(
            self.good_latency < Duration::from_secs(6),
            "the good chats were late: {:?}\n{}",
            self.good_latency,
            self.out
        );
        let mut b = self.bodies.clone();
        b.sort();
        let n = b.len();
        b.dedup();
        assert_eq!(n, b.len(), "a webhook was repeated: {:?}", self.bodies);
    }

    /// The gaps between the faulty chat's failed requests grow (exponential backoff).
    fn check_backoff(&self, status: u16) {
        let failed: Vec<u64> = self
            .faulty_requests()
            .iter()
            .filter(|r| r.status == status)
            .map(|r| r.at_ms)
            .collect();
        assert!(failed.len() >= 3, "{failed:?}");
        let gaps: Vec<u64> = failed.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] >= 700, "the first retry came after {}ms", gaps[0]);
        assert!(
            gaps[1] as f64 >= gaps[0] as f64 * 1.2,
            "backoff does not grow: {gaps:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_5xx_backs_off_with_jitter_and_recovers() {
    let o = run(
        &scenario("times: 3, respond: { status: 503 }"),
        true,
        Duration::ZERO,
    )
    .await;
    o.check_others_unharmed();
    o.check_backoff(503);
    assert!(o.bodies.contains(&"bot faulty".to_string()));
    assert!(
        metric(
            &o.metrics,
            "cartat_polls_total{account=\"default\",outcome=\"server_error\"}"
        )
        .unwrap()
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_never_answers_times_out_and_recovers() {
    // api.timeout is 1s; the mock accepts and never answers, twice.
    let o = run(
        &scenario("times: 2, respond: { hang: true }"),
        true,
        Duration::ZERO,
    )
    .await;
    o.check_others_unharmed();
    assert_eq!(
        o.faulty_requests().iter().filter(|r| r.status == 0).count(),
        2
    );
    assert!(
        metric(
            &o.metrics,
            "cartat_polls_total{account=\"default\",outcome=\"timeout\"}"
        )
        .unwrap()
            >= 2.0
    );
}

/// One table row: a reply the faulty chat gets twice, then recovers.
async fn unreadable_reply(respond: &str) {
    let o = run(
        &scenario(&format!("times: 2, respond: {respond}")),
        true,
        Duration::ZERO,
    )
    .await;
    o.check_others_unharmed();
    assert!(
        metric(
            &o.metrics,
            "cartat_polls_total{account=\"default\",outcome=\"bad_reply\"}"
        )
        .unwrap()
            >= 2.0,
        "{respond}: {}",
        o.metrics
    );
    assert!(o.out.contains("poll failed"), "{}", o.out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_body_is_an_error_for_that_poll_only() {
    unreadable_reply("{ truncated: true }").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_json_is_an_error_for_that_poll_only() {
    unreadable_reply("{ malformed: true }").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_are_errors_for_that_poll_only() {
    for body in [
        r#"{"status":"success","chat":[],"messages":{"a":1}}"#.to_string(),
        r#"{"status":true,"messages":"none"}"#.to_string(),
    ] {
        let yaml_body = serde_json::to_string(&body).unwrap();
        unreadable_reply(&format!("{{ status: 200, body: {yaml_body} }}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_chat_backs_off_and_the_others_keep_their_latency() {
    let o = run(
        &scenario("respond: { status: 404 }"),
        false,
        Duration::from_secs(6),
    )
    .await;
    o.check_others_unharmed();
    o.check_backoff(404);
    // 300ms polls would be ~30 requests in 9s; backing off (1s, 2s, 4s, …) it is a handful.
    let n = o.faulty_requests().len();
    assert!(n <= 6, "the 404 chat was asked {n} times");
    let good = o.log.iter().filter(|r| r.chat == "966500000002").count();
    assert!(good >= 15, "the good chat was polled only {good} times");
    assert!(!o.bodies.contains(&"bot faulty".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_a_loud_error_and_a_slow_retry_not_a_loop() {
    let gw = gateway(
        r#"
token: another-token
chats:
  - { id: "966500000001", messages: [] }
  - { id: "966500000002", messages: [] }
  - { id: "966500000003", messages: [] }
"#,
    )
    .await;
    let (_ws, cfg) = log_only_setup(
        &gw,
        &["966500000001", "966500000002", "966500000003"],
        "  rate_limit: { per_second: 20, burst: 5 }\n",
        "poll:\n  interval: 300ms\n",
    );
    let daemon = Daemon::spawn(&cfg);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let out = daemon.output();
    let (status, _) = crate::metrics::get(&out, "/healthz").await;
    let text = scrape(&out).await;
    assert_eq!(daemon.stop(), 0);
    let n = gw.requests().len();
    // One round at most (the first answers arrive before the budget allows many more), then
    // a 30s pause: 300ms polls would have made ~80 requests.
    assert!((1..=3).contains(&n), "{n} requests with a refused token");
    assert!(
        out.contains("ERROR") && out.contains("refused the API token"),
        "{out}"
    );
    assert!(
        metric(
            &text,
            "cartat_polls_total{account=\"default\",outcome=\"unauthorized\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        status, 200,
        "the daemon itself is healthy; the log says what is wrong"
    );
    assert!(!out.contains("mock-token"), "the token is never logged");
    gw.shutdown().await;
}

/// From 1s on, the faulty chat serves, on every poll, a page with `first(now)` (a message's
/// JSON) and then the good message "bot faulty".
async fn page_from_1s(first: impl Fn(i64) -> String) -> Outcome {
    let ts = jiff::Timestamp::now().as_second();
    let first = first(ts);
    let page = format!(
        r#"{{"status":"success","chat":{{"id":"{FAULTY}@c.us","name":"F"}},"messages":[
{first},
{{"id":{{"fromMe":false,"id":"GOOD1","_serialized":"false_{FAULTY}@c.us_GOOD1"}},"timestamp":{ts},"body":"bot faulty","type":"chat"}}]}}"#
    );
    let body = serde_json::to_string(&page).unwrap();
    let scenario = scenario(&format!(
        "after: 1s, respond: {{ status: 200, body: {body} }}"
    ))
    .replace("{ at: 2s, body: \"bot faulty\", id: F1 }", "");
    run(&scenario, true, Duration::from_secs(2)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_an_emoji_costs_one_character_not_the_page() {
    // The first message ends in a lone UTF-16 surrogate escape (an emoji cut in half): strict
    // JSON parsers refuse the whole page.
    let o = page_from_1s(|ts| {
        format!(
            r#"{{"id":{{"fromMe":false,"id":"HALF","_serialized":"false_{FAULTY}@c.us_HALF"}},"timestamp":{ts},"body":"bot \ud83d","type":"chat"}}"#
        )
    })
    .await;
    o.check_others_unharmed();
    assert!(!o.out.contains("poll failed"), "{}", o.out);
    for want in ["bot \u{FFFD}", "bot faulty"] {
        assert_eq!(
            o.bodies.iter().filter(|b| *b == want).count(),
            1,
            "{want:?} delivered once: {:?}",
            o.bodies
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_message_in_a_good_page_is_skipped_counted_and_logged_once() {
    // A bad message (no usable id, no time) next to the good one.
    bad_message_skipped_once(
        r#"{"id":{"fromMe":false,"id":"NOID-BUT-BROKEN"},"timestamp":"not a time","body":"bot broken"}"#
            .to_string(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nested_5000_deep_is_skipped_not_a_crash_and_not_the_page() {
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    bad_message_skipped_once(deep.clone()).await;
    // Deep inside a message's `_data`, too.
    bad_message_skipped_once(format!(
        r#"{{"id":{{"fromMe":false,"id":"DEEP"}},"_data":{{"x":{deep}}},"body":"bot deep"}}"#
    ))
    .await;
}

/// `message` (JSON) next to a good one: skipped, counted and logged once; the page advances.
async fn bad_message_skipped_once(message: String) {
    let o = page_from_1s(move |_| message.clone()).await;
    o.check_others_unharmed();
    let polls = o
        .faulty_requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert!(polls >= 5, "the page was served {polls} times");
    let logged = o.out.matches("skipped a message").count();
    assert_eq!(logged, 1, "logged once over {polls} polls:\n{}", o.out);
    assert_eq!(
        metric(&o.metrics, "cartat_messages_total{kind=\"skipped\"}"),
        Some(1.0)
    );
    assert_eq!(
        o.bodies.iter().filter(|b| *b == "bot faulty").count(),
        1,
        "the page advanced: its good message fired once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_never_ends_costs_that_poll_not_the_daemons_memory() {
    // The faulty chat's reply streams as fast as it is read, twice; api.timeout is 1s (without
    // a cap the daemon buffered it all: hundreds of MB).
    let o = run(
        &scenario("times: 2, respond: { endless: true }"),
        true,
        Duration::ZERO,
    )
    .await;
    o.check_others_unharmed();
    let endless = o
        .faulty_requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert_eq!(endless, 2, "both endless replies were served");
    assert_eq!(
        o.out
            .matches("the reply is larger than 4521984 bytes (api.max_reply_bytes)")
            .count(),
        2,
        "{}",
        o.out
    );
    assert!(
        o.peak_rss_mib < 100,
        "peak RSS {} MiB\n{}",
        o.peak_rss_mib,
        o.out
    );
    eprintln!("peak RSS with two endless replies: {} MiB", o.peak_rss_mib);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_client_ignores_proxy_variables_unless_api_proxy_is_set() {
    // A "proxy" that counts who connects to it; the environment points every proxy variable at
    // it. The bearer token must not go there.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = proxy.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(sock);
        }
    });
    let (gw, rx, ws, cfg) = bot_setup(
        &scenario("times: 1, respond: { delay: 10ms }"),
        &[FAULTY, "966500000002", "966500000003"],
        "",
        "poll:\n  interval: 300ms\n  on_first_sight: replay_history\n",
    )
    .await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cartat-rules"))
        .args(["run", "-c"])
        .arg(&cfg)
        .envs(
            [
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "ALL_PROXY",
                "http_proxy",
                "https_proxy",
                "all_proxy",
            ]
            .map(|k| (k, proxy_url.as_str())),
        )
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(15), async {
        while bodies(&rx.received()).len() < 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the gateway client went through the environment's proxy"
    );
    assert!(
        waited.is_ok(),
        "the daemon polled the gateway directly: {:?}",
        bodies(&rx.received())
    );
    assert!(gw.requests().len() >= 3);
    // With `api.proxy`, the requests go there (this one hangs up: the polls fail, and say so).
    let cfg = ws.write(
        "cartat.yaml",
        &config_text(
            &gw,
            &[FAULTY],
            &format!("  proxy: {proxy_url}\n"),
            "poll:\n  interval: 300ms\n",
        )
        .replace("./state/test.db", "./state/proxied.db"),
    );
    let daemon = Daemon::spawn(&cfg);
    wait_for(
        "a request through api.proxy",
        Duration::from_secs(10),
        || connections.load(std::sync::atomic::Ordering::SeqCst) > 0,
    )
    .await;
    assert_eq!(daemon.stop(), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_only_one_chat_gets_backs_that_chat_off_and_pauses_nobody_else() {
    let o = run(
        &scenario("respond: { status: 401 }"),
        false,
        Duration::from_secs(4),
    )
    .await;
    o.check_others_unharmed();
    o.check_backoff(401);
    assert!(
        o.out.contains("the gateway refused this chat (401)"),
        "{}",
        o.out
    );
    assert!(!o.out.contains("every chat is paused"), "{}", o.out);
    // The good chats kept their 300ms pace through it all.
    let good = o.log.iter().filter(|r| r.chat == "966500000002").count();
    assert!(good >= 15, "the good chat was polled only {good} times");
}
