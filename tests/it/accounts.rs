//! Several gateway accounts (`accounts:`) in one daemon: two mock gateways with tokens of
//! their own, the same phone number watched in both. Each account's chats are read from its
//! own gateway with its own token and budget; a chat is (account, id) in the delivery ids, the
//! envelope (`chat.account`), rule selectors and the metrics' labels.

use crate::metrics::{get, metric, scrape};
use crate::poller::max_per_second;
use crate::support::*;
use cartat_rules::mock::MockGateway;
use cartat_rules::receiver::Receiver;
use std::collections::HashSet;
use std::time::Duration;

const SALES: &str = r#"
chats:
  - id: "966500000001"
    name: Sales line
    messages:
      - { at: 1s, body: "bot please", id: S1 }
"#;

const SUPPORT: &str = r#"
token: support-token
chats:
  - id: "966500000001"
    name: Support line
    messages:
      - { at: 1s, body: "bot please", id: T1 }
  - id: "966500000002"
    messages:
      - { at: 1s, body: "بوت", id: T2 }
"#;

/// The two gateways (accounts `sales` and `support`), a receiver, and the suite's bot rule
/// delivering to its `/hooks`.
async fn setup() -> (MockGateway, MockGateway, Receiver, Workspace) {
    let sales = gateway(SALES).await;
    let support = gateway(SUPPORT).await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write(
        "rules/bot.yaml",
        &bot_rule("bot-keyword", &[rx.url("/hooks")]),
    );
    (sales, support, rx, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_read_their_own_gateways_and_the_same_number_is_two_chats() {
    let (sales, support, rx, ws) = setup().await;
    // Selectors: a chat id without an account names it in every account, with one only there.
    ws.write(
        "rules/only.yaml",
        &format!(
            "id: only-support\nmatch:\n  chats: [\"support/966500000001\"]\n  body: {{ any: [bot] }}\nactions: [ {{ webhook: {{ url: \"{}\" }} }} ]\n",
            rx.url("/only")
        ),
    );
    let text = Config {
        server: Some("127.0.0.1:0"),
        accounts: vec![
            Account::on("sales", &sales, &["966500000001"]),
            Account::on("support", &support, &["966500000001", "966500000002"]),
        ],
        ..Config::new(&sales, &[] as &[&str])
    }
    .yaml();
    let cfg = ws.write("cartat.yaml", &text);
    let daemon = Daemon::spawn(&cfg);
    wait_received(&rx, 4, "three bot webhooks and one only-support").await;
    tokio::time::sleep(Duration::from_millis(1_000)).await; // anything extra would arrive now
    let out = daemon.output();
    let (status, health) = get(&out, "/healthz").await;
    assert_eq!(status, 200, "{health}");
    let metrics = scrape(&out).await;
    assert_eq!(daemon.stop(), 0, "{out}");

    let got = rx.received();
    let mut seen: Vec<(String, String, String, String)> = got
        .iter()
        .map(|r| {
            let v = r.json();
            (
                r.path.clone(),
                v["chat"]["account"].as_str().unwrap_or("?").to_string(),
                v["chat"]["id"].as_str().unwrap_or("?").to_string(),
                v["message"]["id"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    seen.sort();
    let want = [
        (
            "/hooks",
            "sales",
            "966500000001@c.us",
            "false_966500000001@c.us_S1",
        ),
        (
            "/hooks",
            "support",
            "966500000001@c.us",
            "false_966500000001@c.us_T1",
        ),
        (
            "/hooks",
            "support",
            "966500000002@c.us",
            "false_966500000002@c.us_T2",
        ),
        (
            "/only",
            "support",
            "966500000001@c.us",
            "false_966500000001@c.us_T1",
        ),
    ]
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()));
    assert_eq!(seen, want, "{out}");
    // Every delivery has an id of its own (the same number and rule in two accounts too).
    let ids: HashSet<&str> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap_or(""))
        .collect();
    assert_eq!(ids.len(), got.len(), "delivery ids: {ids:?}");
    assert_eq!(
        got.iter()
            .find(|r| r.json()["message"]["id"] == "false_966500000001@c.us_S1")
            .unwrap()
            .json()["chat"]["name"],
        "Sales line",
        "each account's chat is read from its own gateway"
    );

    // Each gateway saw only its own chats (a wrong token would have been refused: 401).
    for (gw, chats) in [
        (&sales, vec!["966500000001"]),
        (&support, vec!["966500000001", "966500000002"]),
    ] {
        let log = gw.requests();
        let asked: HashSet<&str> = log.iter().map(|r| r.chat.as_str()).collect();
        assert_eq!(asked, chats.into_iter().collect(), "{out}");
        assert!(log.iter().all(|r| r.status == 200), "{out}");
        let (busiest, _) = max_per_second(&log);
        assert!(busiest <= 20, "{busiest} requests in a second (budget 20)");
    }
    // The metrics say the account, never the phone.
    for account in ["sales", "support"] {
        let ok = metric(
            &metrics,
            &format!("cartat_polls_total{{account=\"{account}\",outcome=\"ok\"}}"),
        );
        assert!(ok.is_some_and(|n| n >= 1.0), "{account}: {ok:?}\n{metrics}");
        assert!(
            metric(
                &metrics,
                &format!("cartat_budget_wait_seconds_total{{account=\"{account}\"}}")
            )
            .is_some(),
            "{metrics}"
        );
    }
    assert!(!metrics.contains("9665"), "a phone number in the metrics");
    assert_eq!(metric(&metrics, "cartat_chats_watched"), Some(3.0));
    sales.shutdown().await;
    support.shutdown().await;
}

/// A config reload that adds a chat to one account polls it on that account's gateway only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_a_chat_into_one_account_and_the_other_is_untouched() {
    let (sales, support, rx, ws) = setup().await;
    let config = |support_chats: &[&str]| {
        Config {
            accounts: vec![
                Account::on("sales", &sales, &["966500000001"]),
                Account::on("support", &support, support_chats),
            ],
            ..Config::new(&sales, &[] as &[&str])
        }
        .yaml()
    };
    let cfg = ws.write("cartat.yaml", &config(&["966500000001"]));
    let daemon = Daemon::spawn(&cfg);
    wait_received(&rx, 2, "the first two webhooks").await;
    ws.write("cartat.yaml", &config(&["966500000001", "966500000002"]));
    wait_for("the chat the reload added", SOON, || {
        rx.received()
            .iter()
            .any(|r| r.json()["message"]["id"] == "false_966500000002@c.us_T2")
    })
    .await;
    let out = daemon.output();
    assert_eq!(daemon.stop(), 0, "{out}");
    assert!(
        !sales.requests().iter().any(|r| r.chat == "966500000002"),
        "the chat went to the account it is listed under"
    );
    assert!(
        out.contains("support/966500000002@c.us") && out.contains("now watching the chat"),
        "the reload's chat is named with its account:\n{out}"
    );
    assert!(
        !out.contains("restart"),
        "nothing waits for a restart:\n{out}"
    );
    sales.shutdown().await;
    support.shutdown().await;
}
