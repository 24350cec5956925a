//! Delivery (SPEC §5, §6) with the real binary: 410, 3xx, a slow endpoint beside a fast one,
//! a receiver that is down and comes back, dead letters re-sent by `outbox retry`, SIGTERM with
//! deliveries in flight, and a corrupted state file.

use crate::support::*;
use cartat_rules::mock::MockGateway;
use cartat_rules::receiver::{Receiver, Reply};
use cartat_rules::store::{OutboxRow, Store};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// A config for these tests: `webhooks.timeout` and `retry_scale` chosen per test.
pub fn write_config(
    ws: &Workspace,
    gw: &MockGateway,
    chats: &[String],
    webhook_timeout: &str,
    retry_scale: f64,
    poll_extra: &str,
) -> PathBuf {
    let poll = format!("  interval: 200ms\n{poll_extra}");
    let text = Config {
        rate_limit: Some("{ per_second: 50, burst: 10 }"),
        poll: &poll,
        watch_rules: false,
        webhook_timeout,
        retry_scale,
        ..Config::new(gw, chats)
    }
    .yaml();
    ws.write("cartat.yaml", &text)
}

/// The real daemon with extra environment variables (fail points).
pub fn spawn_with_env(config: &Path, env: &[(&str, &str)]) -> Daemon {
    let log = config.with_file_name(format!(
        "daemon-{}.log",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env_remove(cartat_rules::failpoint::ENV)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Daemon {
        child: cmd.spawn().expect("spawn the daemon"),
        log,
    }
}

/// Waits until every chat has been polled twice: its first sight is committed, so what is
/// pushed from now on is new (not history).
pub async fn wait_first_sight(gw: &MockGateway, chats: &[String]) {
    wait_for("every chat polled twice", Duration::from_secs(20), || {
        let reqs = gw.requests();
        chats.iter().all(|c| {
            reqs.iter()
                .filter(|r| r.chat.starts_with(c.as_str()))
                .count()
                >= 2
        })
    })
    .await;
}

/// The outbox as the daemon left it (opened like `outbox list` does, next to a running daemon).
pub fn outbox(ws: &Workspace) -> Vec<OutboxRow> {
    Store::open_shared(&ws.path().join("state/test.db"))
        .unwrap()
        .list(None, 100_000)
        .unwrap()
}

/// [`wait_for`], with the daemon's log in the panic message.
pub async fn wait_logged(
    what: &str,
    timeout: Duration,
    daemon: &Daemon,
    mut cond: impl FnMut() -> bool,
) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}; daemon log:\n{}",
                daemon.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for `n` more `/chats` requests than so far.
pub async fn wait_more_polls(gw: &MockGateway, n: usize) {
    let before = gw.requests().len();
    wait_for("more polls", Duration::from_secs(10), || {
        gw.requests().len() >= before + n
    })
    .await;
}

pub fn chat_ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

fn scenario(chats: &[String]) -> String {
    quiet_chats(chats)
}

/// Quiet `chats`; a receiver that answers every request with `reply` (None: 200 at once); the
/// bot rule sending to the receiver's `path`; the config with `webhook_timeout` (retries
/// scaled by 0.01). The daemon is the test's to start.
async fn bot_to_receiver(
    chats: &[String],
    reply: Option<Reply>,
    path: &str,
    webhook_timeout: &str,
) -> (MockGateway, Receiver, Workspace, PathBuf) {
    let gw = gateway(&scenario(chats)).await;
    let rx = receiver().await;
    if reply.is_some() {
        rx.set_default(reply);
    }
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule("bot", &[rx.url(path)]));
    let cfg = write_config(&ws, &gw, chats, webhook_timeout, 0.01, "");
    (gw, rx, ws, cfg)
}

/// One quiet chat (`966500000001`) whose `bot` messages go to `url`, the daemon started and
/// its first poll done.
async fn one_chat_delivering_to(url: &str) -> (MockGateway, Workspace, Daemon) {
    let chats = vec!["966500000001".to_string()];
    let gw = gateway(&scenario(&chats)).await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule("bot", &[url.to_string()]));
    let cfg = write_config(&ws, &gw, &chats, "3s", 0.01, "");
    let daemon = Daemon::spawn_polled(&cfg, &gw).await;
    (gw, ws, daemon)
}

fn cli(ws: &Workspace, cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["outbox", "-c", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    run_cli(&all, ws.path())
}

/// A daemon whose one webhook url answers 410, after its first delivery ("bot one") got it.
struct Gone {
    chats: Vec<String>,
    gw: MockGateway,
    rx: Receiver,
    ws: Workspace,
    cfg: PathBuf,
    daemon: Daemon,
}

async fn endpoint_gone(prefix: &str, chats: usize) -> Gone {
    let chats = chat_ids(prefix, chats);
    let gw = gateway(&scenario(&chats)).await;
    let rx = receiver().await;
    rx.set_default(Some(Reply::status(410)));
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule("bot", &[rx.url("/gone")]));
    let cfg = write_config(&ws, &gw, &chats, "2s", 0.01, "");
    let daemon = Daemon::spawn(&cfg);
    wait_first_sight(&gw, &chats).await;
    gw.push_message(&chats[0], "bot one", false);
    wait_for("the 410", Duration::from_secs(10), || {
        !rx.received().is_empty()
    })
    .await;
    Gone {
        chats,
        gw,
        rx,
        ws,
        cfg,
        daemon,
    }
}

/// The rule with a header added: a rules change, which enables a 410 url again.
fn bot_rule_with_header(rx: &Receiver) -> String {
    bot_rule("bot", &[rx.url("/gone")])
        .replace("webhook: {", "webhook: { headers: { X-Fixed: \"yes\" }, ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_endpoint_until_the_config_changes() {
    let Gone {
        chats,
        gw,
        rx,
        ws,
        cfg,
        daemon,
    } = endpoint_gone("9665000041", 2).await;
    gw.push_message(&chats[0], "bot two", false);
    gw.push_message(&chats[1], "bot three", false);
    wait_for(
        "the later rows parked as gone",
        Duration::from_secs(10),
        || outbox(&ws).iter().filter(|r| r.state == "gone").count() == 3,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let log = daemon.output();
    assert_eq!(daemon.stop(), 0);
    assert_eq!(
        rx.received().len(),
        1,
        "nothing is sent after a 410:\n{log}"
    );
    assert!(log.contains("ENDPOINT DISABLED"), "logged loudly:\n{log}");
    assert!(log.contains("/gone"), "the url is named:\n{log}");
    let (code, out, err) = cli(&ws, &cfg, &["list", "--state", "gone"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 4, "a header and 3 gone rows:\n{out}");
    assert!(
        err.contains("disabled by a 410") && err.contains("/gone"),
        "{err}"
    );

    // The same config after a restart: still disabled.
    rx.set_default(None);
    let daemon = Daemon::spawn(&cfg);
    wait_more_polls(&gw, 4).await;
    gw.push_message(&chats[1], "bot four", false);
    wait_for("bot four parked", Duration::from_secs(10), || {
        outbox(&ws).iter().filter(|r| r.state == "gone").count() == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(daemon.stop(), 0);
    assert_eq!(
        rx.received().len(),
        1,
        "still disabled under the same config"
    );

    // The rules change (a header added): the endpoint is enabled again; what was parked stays.
    ws.write("rules/bot.yaml", &bot_rule_with_header(&rx));
    let daemon = Daemon::spawn(&cfg);
    wait_more_polls(&gw, 4).await;
    gw.push_message(&chats[0], "bot five", false);
    wait_received(&rx, 2, "bot five delivered").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = daemon.output();
    assert_eq!(daemon.stop(), 0);
    let got = rx.received();
    assert_eq!(bodies(&got), ["bot one", "bot five"], "{log}");
    assert_eq!(got[1].header("x-fixed"), Some("yes"));
    assert!(log.contains("endpoint enabled again"), "{log}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_edit_picked_up_by_hot_reload_enables_a_410_endpoint_again() {
    let Gone {
        chats,
        gw,
        rx,
        ws,
        daemon,
        ..
    } = endpoint_gone("9665000043", 1).await;
    gw.push_message(&chats[0], "bot two", false);
    wait_for("bot two parked", Duration::from_secs(10), || {
        outbox(&ws).iter().filter(|r| r.state == "gone").count() == 2
    })
    .await;

    // The operator fixes the rule while the daemon runs and asks for a reload: no restart.
    rx.set_default(None);
    ws.write("rules/bot.yaml", &bot_rule_with_header(&rx));
    daemon.signal(libc::SIGHUP);
    wait_for("the reload", Duration::from_secs(10), || {
        daemon.output().contains("endpoint enabled again")
    })
    .await;
    gw.push_message(&chats[0], "bot three", false);
    wait_received(&rx, 2, "bot three delivered").await;
    let log = daemon.output();
    assert_eq!(daemon.stop(), 0);
    let got = rx.received();
    assert_eq!(bodies(&got), ["bot one", "bot three"], "{log}");
    assert_eq!(got[1].header("x-fixed"), Some("yes"));
    assert_eq!(
        outbox(&ws).iter().filter(|r| r.state == "gone").count(),
        2,
        "what was parked stays parked (`outbox retry` sends it)"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_a_failure_and_is_never_followed() {
    let chats = chat_ids("9665000042", 1);
    let gw = gateway(&scenario(&chats)).await;
    let target = receiver().await;
    let rx = receiver().await;
    let to = |code: u16| Reply {
        status: code,
        delay: Duration::ZERO,
        headers: vec![("Location".into(), target.url("/target"))],
    };
    rx.script([to(302), to(307), to(308)]);
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule("bot", &[rx.url("/moved")]));
    let cfg = write_config(&ws, &gw, &chats, "2s", 0.01, "");
    let daemon = Daemon::spawn(&cfg);
    wait_first_sight(&gw, &chats).await;
    for i in 1..=3 {
        gw.push_message(&chats[0], &format!("bot {i}"), false);
    }
    wait_for("three dead letters", Duration::from_secs(10), || {
        outbox(&ws).iter().filter(|r| r.state == "dead").count() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let log = daemon.output();
    assert_eq!(daemon.stop(), 0);
    assert_eq!(
        rx.received().len(),
        3,
        "each tried once, never again:\n{log}"
    );
    assert!(
        target.received().is_empty(),
        "the redirect target sees nothing"
    );
    for r in outbox(&ws) {
        assert_eq!(r.attempts, 1);
        assert!(
            r.last_error
                .as_deref()
                .unwrap_or("")
                .contains("redirect not followed"),
            "{r:?}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_does_not_hold_the_others() {
    let per_endpoint = cartat_rules::outbox::dispatcher::PER_ENDPOINT;
    let chats = chat_ids("9665000043", per_endpoint + 4);
    let gw = gateway(&scenario(&chats)).await;
    let slow = slow_receiver(Duration::from_secs(3)).await;
    let fast = receiver().await;
    let ws = Workspace::new();
    ws.write(
        "rules/bot.yaml",
        &bot_rule("bot", &[slow.url("/slow"), fast.url("/fast")]),
    );
    let cfg = write_config(&ws, &gw, &chats, "10s", 0.01, "");
    let daemon = Daemon::spawn(&cfg);
    wait_first_sight(&gw, &chats).await;

    for c in &chats {
        gw.push_message(c, "bot first", false);
    }
    let pushed = Instant::now();
    wait_for(
        "every chat's first delivery to the fast endpoint",
        Duration::from_secs(10),
        || fast.received().len() >= chats.len(),
    )
    .await;
    let first_round = pushed.elapsed();
    // The slow endpoint is now busy for ≥ 3 s with its first requests; more traffic arrives.
    for c in &chats[..3] {
        gw.push_message(c, "bot second", false);
    }
    let pushed = Instant::now();
    wait_logged(
        "the second round at the fast endpoint",
        Duration::from_secs(10),
        &daemon,
        || fast.received().len() >= chats.len() + 3,
    )
    .await;
    let second_round = pushed.elapsed();
    let log = daemon.output();
    daemon.kill();
    // Each slow request lasts 3 s: how many overlapped at most.
    let arrivals: Vec<SystemTime> = slow.received().iter().map(|r| r.at).collect();
    let most_at_once = arrivals
        .iter()
        .map(|t| {
            arrivals
                .iter()
                .filter(|u| *u <= t && t.duration_since(**u).unwrap() < Duration::from_secs(3))
                .count()
        })
        .max()
        .unwrap_or(0);

    assert!(
        first_round < Duration::from_millis(2500),
        "the fast endpoint waited for the slow one: {first_round:?}\n{log}"
    );
    assert!(
        second_round < Duration::from_millis(1500),
        "the fast endpoint waited for the slow one: {second_round:?}\n{log}"
    );
    assert!(
        most_at_once <= per_endpoint && most_at_once >= per_endpoint / 2,
        "the slow endpoint holds at most its {per_endpoint} slots: {most_at_once} at once"
    );
    gw.shutdown().await;
}

/// A port on 127.0.0.1 that is bound but not listening: connections to it are refused (the
/// receiver is down), and no other test can take it. `listen` brings the receiver up on it.
struct DownPort {
    fd: i32,
    port: u16,
}

impl DownPort {
    fn new() -> DownPort {
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(
                libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
                0
            );
            let mut out: libc::sockaddr_in = std::mem::zeroed();
            let mut olen = len;
            assert_eq!(
                libc::getsockname(fd, &mut out as *mut _ as *mut libc::sockaddr, &mut olen),
                0
            );
            DownPort {
                fd,
                port: u16::from_be(out.sin_port),
            }
        }
    }

    fn listen(self) -> tokio::net::TcpListener {
        use std::os::fd::FromRawFd;
        unsafe {
            assert_eq!(libc::listen(self.fd, 128), 0);
            let std = std::net::TcpListener::from_raw_fd(self.fd);
            std.set_nonblocking(true).unwrap();
            tokio::net::TcpListener::from_std(std).unwrap()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_everything_in_order_when_back() {
    let chats = chat_ids("9665000044", 4);
    let gw = gateway(&scenario(&chats)).await;
    let down = DownPort::new();
    let url = format!("http://127.0.0.1:{}/hooks", down.port);
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule("bot", &[url]));
    // Two days of retries compressed 1000×: 5 ms, 30 ms, 120 ms, 300 ms, 0.9 s, 1.8 s, 3.6 s…
    let cfg = write_config(&ws, &gw, &chats, "2s", 0.001, "");
    let daemon = Daemon::spawn(&cfg);
    wait_first_sight(&gw, &chats).await;

    let per_chat = 5;
    for i in 0..per_chat {
        for c in &chats {
            gw.push_message(c, &format!("bot {i}"), false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_for("every delivery queued", Duration::from_secs(10), || {
        outbox(&ws).len() == chats.len() * per_chat
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failed_attempts: u32 = outbox(&ws).iter().map(|r| r.attempts).sum();

    let rx = Receiver::start(down.listen(), None).await.unwrap();
    let want = chats.len() * per_chat;
    wait_received(&rx, want, "everything delivered").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let log = daemon.output();
    assert_eq!(daemon.stop(), 0);

    assert!(
        failed_attempts >= chats.len() as u32 * 3,
        "the heads were retried while it was down: {failed_attempts}"
    );
    let got = rx.received();
    assert_eq!(got.len(), want, "each exactly once:\n{log}");
    let mut per: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for r in &got {
        let v = r.json();
        per.entry(v["chat"]["id"].as_str().unwrap().to_string())
            .or_default()
            .push((
                v["message"]["body"].as_str().unwrap().to_string(),
                v["message"]["timestamp"].as_i64().unwrap(),
            ));
    }
    assert_eq!(per.len(), chats.len());
    for (chat, seq) in per {
        let want: Vec<String> = (0..per_chat).map(|i| format!("bot {i}")).collect();
        let bodies: Vec<String> = seq.iter().map(|(b, _)| b.clone()).collect();
        assert_eq!(bodies, want, "order in {chat}");
        assert!(
            seq.windows(2).all(|w| w[0].1 <= w[1].1),
            "timestamps in order in {chat}: {seq:?}"
        );
    }
    assert!(outbox(&ws).iter().all(|r| r.state == "delivered"), "{log}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_resent_by_outbox_retry_keeps_its_delivery_id() {
    let chats = chat_ids("9665000045", 2);
    let gw = gateway(&scenario(&chats)).await;
    let rx = receiver().await;
    rx.script([Reply::status(400), Reply::status(422)]);
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule("bot", &[rx.url("/hooks")]));
    let cfg = write_config(&ws, &gw, &chats, "2s", 0.01, "");
    let daemon = Daemon::spawn(&cfg);
    wait_first_sight(&gw, &chats).await;
    gw.push_message(&chats[0], "bot one", false);
    gw.push_message(&chats[1], "bot two", false);
    wait_for("two dead letters", Duration::from_secs(10), || {
        outbox(&ws).iter().filter(|r| r.state == "dead").count() == 2
    })
    .await;
    let first = rx.received();
    let id_of = |body: &str| {
        first
            .iter()
            .find(|r| r.json()["message"]["body"] == body)
            .map(|r| r.header("webhook-id").unwrap().to_string())
            .unwrap()
    };
    let (one, two) = (id_of("bot one"), id_of("bot two"));

    // `outbox list` shows them; `outbox retry ID` re-sends one while the daemon runs.
    let (code, out, err) = cli(&ws, &cfg, &["list", "--state", "dead"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&one) && out.contains(&two), "{out}");
    assert!(out.contains("400") && out.contains("422"), "{out}");
    // Its url and when it last changed are columns.
    assert!(out.contains(&rx.url("/hooks")), "{out}");
    let today = jiff::Timestamp::now().strftime("%Y-%m-%dT").to_string();
    assert!(out.contains(&today), "an RFC 3339 time column: {out}");
    // Options go after the subcommand too; a state that does not exist and an id that is not
    // in the outbox are errors, not an empty answer.
    let cfg_s = cfg.to_str().unwrap();
    let (code, out, err) = run_cli(
        &["outbox", "list", "--state", "dead", "-c", cfg_s],
        ws.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&one), "{out}");
    let (code, _, err) = run_cli(
        &["outbox", "list", "--state", "bogus", "-c", cfg_s],
        ws.path(),
    );
    assert_ne!(code, 0);
    assert!(err.contains("pending, delivered, dead, gone"), "{err}");
    let (code, _, err) = cli(&ws, &cfg, &["retry", "999999"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("`999999`") && err.contains("outbox list"),
        "{err}"
    );
    let (code, out, err) = cli(&ws, &cfg, &["retry", &one]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("queued 1"), "{out}");
    wait_received(&rx, 3, "the re-sent delivery").await;
    let again = rx.received().pop().unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(again.header("webhook-id"), Some(one.as_str()));
    assert_eq!(again.header("idempotency-key"), Some(one.as_str()));
    assert_eq!(again.json()["delivery_id"], one.as_str());
    assert_eq!(
        again.body,
        first
            .iter()
            .find(|r| r.header("webhook-id") == Some(one.as_str()))
            .unwrap()
            .body,
        "the same body"
    );
    assert_eq!(daemon.stop(), 0);

    // `outbox retry --dead` with the daemon stopped; the next start sends it.
    let (code, out, err) = cli(&ws, &cfg, &["retry", "--dead"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("queued 1"), "{out}");
    let daemon = Daemon::spawn(&cfg);
    wait_for(
        "the second re-sent delivery",
        Duration::from_secs(10),
        || rx.received().len() == 4,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(daemon.stop(), 0);
    let got = rx.received();
    assert_eq!(got.len(), 4);
    assert_eq!(got[3].header("webhook-id"), Some(two.as_str()));
    assert!(outbox(&ws).iter().all(|r| r.state == "delivered"));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_deliveries_finish_and_leaves_the_rest_pending() {
    let chats = chat_ids("9665000046", 3);
    let (gw, rx, ws, cfg) = bot_to_receiver(
        &chats,
        Some(Reply {
            status: 200,
            delay: Duration::from_millis(2000),
            headers: Vec::new(),
        }),
        "/slow",
        "10s",
    )
    .await;
    let mut daemon = Daemon::spawn(&cfg);
    wait_first_sight(&gw, &chats).await;
    for i in 0..3 {
        for c in &chats {
            gw.push_message(c, &format!("bot {i}"), false);
        }
    }
    wait_for(
        "one delivery per chat in flight",
        Duration::from_secs(10),
        || rx.received().len() >= chats.len(),
    )
    .await;
    wait_for("every delivery queued", Duration::from_secs(10), || {
        outbox(&ws).len() == 9
    })
    .await;
    let in_flight = rx.received().len();
    daemon.signal(libc::SIGTERM);
    let stopped_at = gw.elapsed_ms();
    let (status, took) = daemon.exit_within(Duration::from_secs(20)).await;
    let log = daemon.output();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        took < Duration::from_secs(8),
        "it waited for the in-flight deliveries (2 s each), no longer: {took:?}\n{log}"
    );
    assert_eq!(rx.received().len(), in_flight, "nothing new was started");
    let late_polls: Vec<_> = gw
        .requests()
        .into_iter()
        .filter(|r| r.at_ms > stopped_at + 300)
        .collect();
    assert!(late_polls.is_empty(), "polling stopped: {late_polls:?}");
    let rows = outbox(&ws);
    let delivered = rows.iter().filter(|r| r.state == "delivered").count();
    let pending = rows.iter().filter(|r| r.state == "pending").count();
    assert_eq!(
        (delivered, pending),
        (in_flight, 9 - in_flight),
        "the in-flight ones finished and were recorded; the rest wait:\n{log}"
    );

    // The next start sends the rest, and only the rest.
    rx.set_default(None);
    let daemon = Daemon::spawn(&cfg);
    wait_logged("the rest", Duration::from_secs(15), &daemon, || {
        rx.received().len() >= 9
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(daemon.stop(), 0);
    let got = rx.received();
    let mut ids: Vec<&str> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 9, "no delivery sent twice");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_state_file_is_refused_and_left_untouched() {
    let chats = chat_ids("9665000047", 1);
    let gw = gateway(&scenario(&chats)).await;
    let ws = Workspace::new();
    ws.write(
        "rules/bot.yaml",
        &bot_rule("bot", &["http://127.0.0.1:9/x".into()]),
    );
    let cfg = write_config(&ws, &gw, &chats, "2s", 0.01, "");
    let db = ws.path().join("state/test.db");

    // Not a database at all.
    let garbage = b"SQLite format 3\0 but then someone's spreadsheet".repeat(200);
    ws.write("state/test.db", "");
    std::fs::write(&db, &garbage).unwrap();
    let (code, _, err) = run_cli(&["run", "-c", cfg.to_str().unwrap()], ws.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("not a usable cartat-rules database") && err.contains("left untouched"),
        "{err}"
    );
    assert!(err.contains("test.db"), "the file is named: {err}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "the file is untouched"
    );

    // A real database, cut in half by a bad copy.
    std::fs::remove_file(&db).unwrap();
    let daemon = Daemon::spawn(&cfg);
    wait_first_sight(&gw, &chats).await;
    assert_eq!(daemon.stop(), 0);
    // A clean stop folds the write-ahead log into the file: the file alone is the whole state.
    let wal = std::fs::metadata(ws.path().join("state/test.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the write-ahead log is empty after a clean stop");
    let whole = std::fs::read(&db).unwrap();
    let half = whole[..whole.len() / 2].to_vec();
    std::fs::write(&db, &half).unwrap();
    let (code, _, err) = run_cli(&["run", "-c", cfg.to_str().unwrap()], ws.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a usable cartat-rules database"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), half, "the file is untouched");

    // Another program's SQLite file.
    std::fs::remove_file(&db).unwrap();
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL); INSERT INTO invoices VALUES (1, 9.5);")
            .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let (code, _, err) = run_cli(&["run", "-c", cfg.to_str().unwrap()], ws.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("something else"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), before, "the file is untouched");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_up_on_a_delivery_past_the_stop_deadline_and_resends_it_later() {
    let chats = chat_ids("9665000049", 1);
    let (gw, rx, ws, cfg) = bot_to_receiver(
        &chats,
        Some(Reply {
            status: 200,
            delay: Duration::from_secs(40),
            headers: Vec::new(),
        }),
        "/stuck",
        "60s",
    )
    .await;
    let mut daemon = Daemon::spawn(&cfg);
    wait_first_sight(&gw, &chats).await;
    gw.push_message(&chats[0], "bot stuck", false);
    wait_for("the request in flight", Duration::from_secs(10), || {
        !rx.received().is_empty()
    })
    .await;
    daemon.signal(libc::SIGTERM);
    let (status, took) = daemon.exit_within(Duration::from_secs(30)).await;
    let log = daemon.output();
    assert_eq!(status.code(), Some(0), "{log}");
    let deadline = cartat_rules::daemon::STOP_DEADLINE;
    assert!(
        took >= deadline - Duration::from_millis(500) && took < deadline + Duration::from_secs(5),
        "it waited until the stop deadline ({deadline:?}), no longer: {took:?}\n{log}"
    );
    assert!(log.contains("stop deadline reached"), "{log}");
    let rows = outbox(&ws);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, "pending", "left pending for the next start");

    rx.set_default(None);
    let daemon = Daemon::spawn(&cfg);
    wait_received(&rx, 2, "the re-sent delivery").await;
    assert_eq!(daemon.stop(), 0);
    let got = rx.received();
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_eq!(outbox(&ws)[0].state, "delivered");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_whose_answer_never_ends_is_delivered_once_and_costs_no_memory() {
    // A receiver that answers 200 and then streams its body as fast as it is read, for up to
    // 10s: the dispatcher needs the status only and must not buffer the body.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
                if sock.write_all(head).await.is_err() {
                    return;
                }
                let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
                let until = Instant::now() + Duration::from_secs(10);
                while Instant::now() < until {
                    if sock.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (gw, ws, daemon) = one_chat_delivering_to(&url).await;
    gw.push_message("966500000001", "bot, please", false);
    let store_path = ws.path().join("state/test.db");
    wait_for("the delivery recorded", Duration::from_secs(15), || {
        Store::open_shared(&store_path)
            .and_then(|s| s.list(Some("delivered"), 10))
            .is_ok_and(|rows| rows.len() == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let peak_kb = peak_rss_kib(daemon.child.id());
    let out = daemon.output();
    assert_eq!(daemon.stop(), 0);
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "delivered once, never retried:\n{out}"
    );
    assert!(peak_kb < 100 * 1024, "peak RSS {peak_kb} kB\n{out}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_to_one_receiver_share_a_kept_connection() {
    // A keep-alive receiver that answers every POST with a short JSON body, sent after the
    // head: the dispatcher reads that body, so the connection carries the next delivery (an
    // unread body closed it: a new connection for every webhook).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let posts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (counted, answered) = (connections.clone(), posts.clone());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut seen: Vec<u8> = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    // One whole request: its head, then Content-Length bytes of body.
                    let end = loop {
                        if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while seen.len() < end + length {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.drain(..end + length);
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    // The head, then the body a moment later (as Python's http.server
                    // writes them): the status is known before the body has arrived.
                    let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n";
                    if sock.write_all(head).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    if sock.write_all(b"{\"ok\":true}").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (gw, _ws, daemon) = one_chat_delivering_to(&url).await;
    for i in 0..3 {
        gw.push_message("966500000001", &format!("bot {i}"), false);
        let want = i + 1;
        wait_for("the delivery", Duration::from_secs(10), || {
            posts.load(std::sync::atomic::Ordering::SeqCst) >= want
        })
        .await;
    }
    let out = daemon.output();
    assert_eq!(daemon.stop(), 0);
    assert_eq!(posts.load(std::sync::atomic::Ordering::SeqCst), 3, "{out}");
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "three deliveries, one connection:\n{out}"
    );
    gw.shutdown().await;
}

/// Canary secrets — the gateway token, a token in a webhook url's query — through a 410, a
/// restart and `outbox list`: never in any output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_the_token_and_in_webhook_urls_reach_no_log_and_no_cli_output() {
    let chats = chat_ids("9665000047", 2);
    let gw = gateway(&format!("token: CANARY-TOKEN-5501\n{}", scenario(&chats))).await;
    let rx = receiver().await;
    rx.set_default(Some(Reply::status(410)));
    let ws = Workspace::new();
    ws.write(
        "rules/bot.yaml",
        &bot_rule("bot", &[rx.url("/gone?token=CANARY-QUERY-5502&x=1")]),
    );
    let cfg = write_config(&ws, &gw, &chats, "2s", 0.01, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("token: mock-token", "token: CANARY-TOKEN-5501");
    ws.write("cartat.yaml", &text);
    let spawn = || Daemon::spawn(&cfg);
    let daemon = spawn();
    wait_first_sight(&gw, &chats).await;
    gw.push_message(&chats[0], "bot one", false);
    gw.push_message(&chats[1], "bot two", false);
    wait_for(
        "the 410 and the parked row",
        Duration::from_secs(10),
        || outbox(&ws).iter().filter(|r| r.state == "gone").count() == 2,
    )
    .await;
    let mut outputs = vec![daemon.output()];
    assert_eq!(daemon.stop(), 0);
    let daemon = spawn();
    wait_more_polls(&gw, 4).await;
    outputs.push(daemon.output());
    assert_eq!(daemon.stop(), 0);
    for args in [
        &["list"][..],
        &["list", "--state", "gone"],
        &["list", "--dead"],
    ] {
        let (_, out, err) = cli(&ws, &cfg, args);
        outputs.push(format!("{out}{err}"));
    }
    let all = outputs.join("\n----\n");
    assert!(all.contains("ENDPOINT DISABLED"), "{all}");
    assert!(
        all.contains("/gone"),
        "the url is named, without its secrets:\n{all}"
    );
    assert!(!all.contains("CANARY"), "a secret leaked:\n{all}");
    gw.shutdown().await;
}

/// A receiver that answers 200 after `delay`.
async fn slow_receiver(delay: Duration) -> Receiver {
    let slow = receiver().await;
    slow.set_default(Some(Reply {
        status: 200,
        delay,
        headers: Vec::new(),
    }));
    slow
}

/// While every slot of an endpoint is taken, the rows waiting for it are not scanned for again
/// and again: the next freed slot asks for them. (The dispatcher once rescanned at once
/// whenever a due row waited behind a full endpoint: a busy loop while a receiver was slow.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_waiting_for_a_full_endpoint_are_not_rescanned_in_a_loop() {
    use crate::metrics::{metric, scrape};
    let per_endpoint = cartat_rules::outbox::dispatcher::PER_ENDPOINT;
    let chats = chat_ids("9665000044", per_endpoint + 4);
    let gw = gateway(&scenario(&chats)).await;
    let slow = slow_receiver(Duration::from_secs(3)).await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule("bot", &[slow.url("/slow")]));
    let text = Config {
        rate_limit: Some("{ per_second: 50, burst: 10 }"),
        poll: "  interval: 200ms\n",
        watch_rules: false,
        webhook_timeout: "10s",
        server: Some("127.0.0.1:0"),
        ..Config::new(&gw, &chats)
    }
    .yaml();
    let cfg = ws.write("cartat.yaml", &text);
    let daemon = Daemon::spawn(&cfg);
    wait_first_sight(&gw, &chats).await;
    for c in &chats {
        gw.push_message(c, "bot please", false);
    }
    wait_logged(
        "the endpoint's slots all taken",
        Duration::from_secs(10),
        &daemon,
        || slow.received().len() >= per_endpoint,
    )
    .await;
    let scans = |text: &str| metric(text, "cartat_outbox_scans_total{kind=\"full\"}").unwrap();
    let before = scans(&scrape(&daemon.output()).await);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let during = scans(&scrape(&daemon.output()).await) - before;
    // The periodic scan runs once a second: two in two seconds, a few more at most.
    assert!(
        during <= 6.0,
        "{during} full scans in 2 s while the endpoint was full"
    );
    // The rows that waited go as soon as slots free.
    wait_logged(
        "the waiting rows, once slots freed",
        Duration::from_secs(10),
        &daemon,
        || slow.received().len() >= chats.len(),
    )
    .await;
    assert_eq!(slow.received().len(), chats.len());
    daemon.kill();
    gw.shutdown().await;
}
