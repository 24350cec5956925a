//! The admin API's silences and outbox (`server.admin_token`), with the real daemon over HTTP:
//! what `cartat-rules silence` and `outbox` do, behind the token.

use crate::delivery::{chat_ids, wait_first_sight};
use crate::metrics::server_addr;
use crate::support::*;
use cartat_rules::receiver::Reply;
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "s3cret-admin-token";

/// (status, JSON body) of a request with the admin token (or `token`).
async fn call(
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    cartat_rules::install_crypto();
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("the server answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_and_dead_letters_through_the_admin_api() {
    use reqwest::Method;
    let chats = chat_ids("9665000033", 2);
    let gw = gateway(&quiet_chats(&chats)).await;
    let rx = receiver().await;
    rx.script([Reply::status(400)]);
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule("bot", &[rx.url("/hooks")]));
    let server = format!("127.0.0.1:0\n  admin_token: {TOKEN}");
    let text = Config {
        watch_rules: false,
        server: Some(&server),
        ..Config::new(&gw, &chats)
    }
    .yaml();
    let cfg = ws.write("cartat.yaml", &text);
    let daemon = Daemon::spawn(&cfg);
    wait_for("the server", Duration::from_secs(10), || {
        server_addr(&daemon.output()).is_some()
    })
    .await;
    let base = format!("http://{}", server_addr(&daemon.output()).unwrap());
    wait_first_sight(&gw, &chats).await;

    // Without the token: 401, and nothing changes.
    let (status, _) = call(Method::GET, &format!("{base}/api/silences"), "wrong", None).await;
    assert_eq!(status, 401);
    let (status, _) = call(
        Method::POST,
        &format!("{base}/api/silences"),
        "wrong",
        Some(json!({"rule": "bot", "for": "1h", "reason": "x"})),
    )
    .await;
    assert_eq!(status, 401);

    // A dead letter (the receiver answers 400 once), seen and re-sent through the API.
    gw.push_message(&chats[0], "bot dead", false);
    let dead_url = format!("{base}/api/outbox?state=dead");
    let mut dead = Value::Null;
    for _ in 0..100 {
        let (status, body) = call(Method::GET, &dead_url, TOKEN, None).await;
        assert_eq!(status, 200, "{body}");
        if body["deliveries"].as_array().is_some_and(|d| d.len() == 1) {
            dead = body["deliveries"][0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead["state"], "dead", "{dead}");
    assert_eq!(dead["last_status"], 400);
    assert!(dead.get("body").is_none(), "no message content: {dead}");
    let id = dead["delivery_id"].as_str().unwrap().to_string();
    let (status, body) = call(
        Method::POST,
        &format!("{base}/api/outbox/{id}/retry"),
        TOKEN,
        None,
    )
    .await;
    assert_eq!(
        (status, body["requeued"].clone()),
        (200, json!(1)),
        "{body}"
    );
    wait_received(&rx, 2, "the re-sent delivery").await;
    assert_eq!(rx.received()[1].header("webhook-id"), Some(id.as_str()));
    let (status, _) = call(
        Method::POST,
        &format!("{base}/api/outbox/nope/retry"),
        TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 404);

    // A silence on the second chat: bad ones refused, a good one muting at once.
    for (bad, want) in [
        (
            json!({"for": "1h", "reason": "x"}),
            "names a rule, a chat, or both",
        ),
        (json!({"rule": "bot", "reason": "x"}), "give one of `for`"),
        (
            json!({"rule": "bot", "for": "0s", "reason": "x"}),
            "mutes nothing",
        ),
        (json!({"chat": "+966", "for": "1h", "reason": "x"}), "chat:"),
        (
            json!({"rule": "bot", "for": "1h", "reason": " "}),
            "reason is empty",
        ),
        (
            json!({"rule": "bot", "for": "1h", "reason": "x", "extra": 1}),
            "not a silence",
        ),
    ] {
        let (status, body) = call(
            Method::POST,
            &format!("{base}/api/silences"),
            TOKEN,
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains(want),
            "{bad}: {body}"
        );
    }
    let (status, body) = call(
        Method::POST,
        &format!("{base}/api/silences"),
        TOKEN,
        Some(json!({"rule": "bot", "chat": chats[1], "for": "1h", "reason": "migration"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let sid = body["silence"]["id"].as_i64().unwrap();
    let (_, list) = call(Method::GET, &format!("{base}/api/silences"), TOKEN, None).await;
    assert_eq!(list["silences"][0]["reason"], "migration", "{list}");
    wait_for("the daemon to see it", Duration::from_secs(10), || {
        daemon.output().contains(&format!("ids=[{sid}]"))
    })
    .await;
    gw.push_message(&chats[1], "bot muted", false);
    wait_for("the muted firing", Duration::from_secs(10), || {
        daemon.output().contains(&format!("muted by silence {sid}"))
    })
    .await;
    let (status, _) = call(
        Method::DELETE,
        &format!("{base}/api/silences/{sid}"),
        TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        Method::DELETE,
        &format!("{base}/api/silences/{sid}"),
        TOKEN,
        None,
    )
    .await;
    assert_eq!(status, 404, "ended already");
    let (_, list) = call(Method::GET, &format!("{base}/api/silences"), TOKEN, None).await;
    assert_eq!(list["silences"], json!([]), "{list}");
    let (_, all) = call(
        Method::GET,
        &format!("{base}/api/silences?all=true"),
        TOKEN,
        None,
    )
    .await;
    assert_eq!(all["silences"].as_array().map(Vec::len), Some(1), "{all}");
    assert_eq!(daemon.stop(), 0);
    assert_eq!(
        bodies(&rx.received()),
        ["bot dead", "bot dead"],
        "the muted one was never sent"
    );
    gw.shutdown().await;
}
