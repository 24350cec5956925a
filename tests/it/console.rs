//! The operator's console with the real daemon over HTTP: the run history says what fired and
//! why the rest did not, the page shows it, and the admin actions need the token — as a bearer
//! token, or as the session cookie plus the CSRF token.

use crate::delivery::{chat_ids, wait_first_sight};
use crate::metrics::server_addr;
use crate::support::*;
use cartat_rules::mock::MockGateway;
use serde_json::{Value, json};
use std::time::Duration;

pub const TOKEN: &str = "console-admin-token";

/// A daemon with the console on, watching `chats`, its bot rule sending to `hook`.
pub fn console_daemon(
    ws: &Workspace,
    gw: &MockGateway,
    chats: &[String],
    hook: &str,
    rest: &str,
) -> Daemon {
    ws.write("rules/bot.yaml", &bot_rule("bot", &[hook.to_string()]));
    ws.write(
        "rules/refund.yaml",
        "id: refund-ar\nmatch:\n  from_me: true\n  body: { any: [\"استرجاع\"] }\nactions:\n  - log: { message: refund }\n",
    );
    let server = format!("127.0.0.1:0\n  admin_token: {TOKEN}");
    let text = Config {
        watch_rules: false,
        server: Some(&server),
        rest,
        ..Config::new(gw, chats)
    }
    .yaml();
    let cfg = ws.write("cartat.yaml", &text);
    Daemon::spawn(&cfg)
}

pub async fn base_of(daemon: &Daemon) -> String {
    wait_for("the server", Duration::from_secs(10), || {
        server_addr(&daemon.output()).is_some()
    })
    .await;
    format!("http://{}", server_addr(&daemon.output()).unwrap())
}

fn client() -> reqwest::Client {
    cartat_rules::install_crypto();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The history entries of `chat` once `n` are there.
pub async fn history(base: &str, chat: &str, n: usize) -> Vec<Value> {
    let url = format!("{base}/api/history?chat={chat}");
    let mut last = Value::Null;
    for _ in 0..100 {
        let r = client().get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200);
        last = r.json().await.unwrap();
        if last["entries"].as_array().is_some_and(|e| e.len() >= n) {
            return last["entries"].as_array().unwrap().clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{n} history entries of {chat} never came: {last}");
}

pub fn trace<'a>(entry: &'a Value, rule: &str) -> Option<&'a Value> {
    entry["rules"]
        .as_array()?
        .iter()
        .find(|t| t["rule"] == rule)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_says_why_and_the_admin_actions_need_the_token_and_the_csrf_token() {
    let chats = chat_ids("9665000044", 1);
    let gw = gateway(&quiet_chats(&chats)).await;
    let rx = receiver().await;
    let ws = Workspace::new();
    let daemon = console_daemon(&ws, &gw, &chats, &rx.url("/hooks"), "");
    let base = base_of(&daemon).await;
    wait_first_sight(&gw, &chats).await;

    gw.push_message(&chats[0], "أبي بوت الحجز", false);
    gw.push_message(&chats[0], "أبغى استرجاع المبلغ", false);
    wait_received(&rx, 1, "the bot webhook").await;
    let chat = format!("{}@c.us", chats[0]);
    let entries = history(&base, &chats[0], 2).await;
    // Newest first: the refund message, then the bot message.
    let (refund, bot) = (&entries[0], &entries[1]);
    assert_eq!(trace(bot, "bot").unwrap()["outcome"], "fired", "{bot}");
    let t = trace(refund, "refund-ar").unwrap();
    assert_eq!(t["outcome"], "not_matched", "{refund}");
    assert!(t["why"].as_str().unwrap().contains("from_me"), "{t}");
    assert!(
        trace(refund, "bot").is_none(),
        "bot was not a candidate: {refund}"
    );
    assert_eq!(refund["not_candidates"], 1);
    // Phone numbers are masked unless show_phone_numbers.
    assert_ne!(refund["chat"], chat.as_str());
    assert!(refund["chat"].as_str().unwrap().contains('*'), "{refund}");
    // No message body in the history.
    assert!(!entries.iter().any(|e| e.to_string().contains("المبلغ")));

    // /api/chats: the chat, polled, no error.
    let r = client()
        .get(format!("{base}/api/chats"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["chats"].as_array().unwrap().len(), 1, "{body}");
    assert!(body["chats"][0]["last_ok"].is_string(), "{body}");
    assert_eq!(body["chats"][0]["last_error"], Value::Null);

    // The page: open on loopback, Arabic reasons marked for direction, the rule fired.
    let page = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("refund-ar") && html.contains("fired"),
        "{html}"
    );
    assert!(html.contains("dir=\"auto\""));
    assert!(!html.contains(TOKEN), "the page never shows the token");
    assert!(
        html.contains("name=\"token\""),
        "a sign-in form when not signed in"
    );

    // Writes: nothing → 401; a wrong sign-in → 401; the cookie alone → 403 (CSRF); the cookie
    // and the page's CSRF token → done; the bearer token alone → done.
    let silence = json!({"rule": "bot", "for": "1h", "reason": "migration"});
    let r = client()
        .post(format!("{base}/api/silences"))
        .json(&silence)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let r = client()
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(TOKEN),
        "the cookie is derived from the token, not the token"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let r = client()
        .post(format!("{base}/api/silences"))
        .header("cookie", &session)
        .json(&silence)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "a cookie without the CSRF token is refused"
    );
    let r = client()
        .post(format!("{base}/api/silences"))
        .header("cookie", &session)
        .header("x-csrf-token", "0123")
        .json(&silence)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a wrong CSRF token is refused");
    assert_eq!(
        client()
            .get(format!("{base}/api/silences"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["silences"],
        json!([]),
        "nothing was added"
    );
    // Signed in, the page carries the CSRF token for its own script.
    let html = client()
        .get(format!("{base}/"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    assert_eq!(csrf.len(), 64, "{csrf}");
    let r = client()
        .post(format!("{base}/api/silences"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .json(&silence)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client()
        .delete(format!("{base}/api/silences/1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the bearer token needs no CSRF token");
    // The reads of the API need the token too (or the cookie).
    let r = client()
        .get(format!("{base}/api/history"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("{base}/api/history"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_prunes_the_history_to_history_keep() {
    let chats = chat_ids("9665000066", 1);
    let gw = gateway(&quiet_chats(&chats)).await;
    let rx = receiver().await;
    let ws = Workspace::new();
    let daemon = console_daemon(&ws, &gw, &chats, &rx.url("/hooks"), "history:\n  keep: 2\n");
    let base = base_of(&daemon).await;
    wait_first_sight(&gw, &chats).await;
    for i in 0..4 {
        gw.push_message(&chats[0], &format!("message {i}"), false);
        history(&base, &chats[0], i + 1).await;
    }
    daemon.stop();
    // The daemon prunes when it starts, then every minute.
    let cfg = ws.path().join("cartat.yaml");
    let daemon = Daemon::spawn(&cfg);
    let base = base_of(&daemon).await;
    let url = format!("{base}/api/history");
    let mut n = usize::MAX;
    for _ in 0..100 {
        let body: Value = client()
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        n = body["entries"].as_array().unwrap().len();
        if n == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n, 2, "history.keep: 2");
    daemon.stop();
}
