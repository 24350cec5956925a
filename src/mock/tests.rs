use super::*;
use serde_json::Value;

// ---- helpers ------------------------------------------------------------------------

async fn start(yaml: &str) -> MockGateway {
    let scenario = Scenario::from_yaml(yaml).expect("scenario");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    MockGateway::start(listener, scenario).await.expect("start")
}

fn client() -> reqwest::Client {
    // The project's reqwest uses rustls without a built-in provider; plain HTTP still builds TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// GET /chats/{chat} with the right token; `limit` sent in the body when given.
async fn fetch(gw: &MockGateway, chat: &str, limit: Option<u64>) -> reqwest::Response {
    let mut req = client()
        .get(format!("{}/chats/{chat}", gw.base_url()))
        .bearer_auth(gw.token())
        .header("Accept", "application/json");
    if let Some(l) = limit {
        req = req.json(&serde_json::json!({ "limit": l }));
    }
    req.send().await.expect("request")
}

async fn fetch_json(gw: &MockGateway, chat: &str, limit: Option<u64>) -> Value {
    let r = fetch(gw, chat, limit).await;
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

fn bodies(reply: &Value) -> Vec<String> {
    reply["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["body"].as_str().expect("body").to_owned())
        .collect()
}

fn ids(reply: &Value) -> Vec<String> {
    reply["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"]["id"].as_str().expect("id").to_owned())
        .collect()
}

fn world(yaml: &str) -> World {
    World::compile(&Scenario::from_yaml(yaml).expect("scenario")).expect("world")
}

const START_MS: i64 = 1_764_775_896_400;

fn reply_at(w: &World, chat: &str, limit: Option<u64>, now_ms: i64) -> Value {
    serde_json::from_str(&w.reply(chat, limit, now_ms, START_MS).expect("chat")).expect("json")
}

const FIVE: &str = r#"
chats:
  - id: "966500000000"
    name: Jhone Due
    messages:
      - { at: -1h, body: "m1" }
      - { at: -30m, body: "m2" }
      - { at: -10m, body: "m3", from_me: true }
      - { at: -5m, body: "m4" }
      - { at: -1m, body: "m5" }
"#;

// ---- auth, limit, shape -------------------------------------------------------------

#[tokio::test]
async fn answers_401_without_or_with_a_wrong_token() {
    let gw = start(FIVE).await;
    let url = format!("{}/chats/966500000000", gw.base_url());
    for req in [
        client().get(&url),
        client().get(&url).bearer_auth("wrong"),
        client().get(&url).basic_auth("mock-token", None::<&str>),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"status": "error", "message": "unauthorized"})
        );
    }
    assert_eq!(fetch(&gw, "966500000000", None).await.status(), 200);
    let statuses: Vec<u16> = gw.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 401, 401, 200]);
    gw.shutdown().await;
}

#[tokio::test]
async fn limit_in_the_body_or_the_query_gives_the_newest_oldest_first() {
    let gw = start(FIVE).await;
    let all = fetch_json(&gw, "966500000000", None).await;
    assert_eq!(bodies(&all), ["m1", "m2", "m3", "m4", "m5"]);

    let by_body = fetch_json(&gw, "966500000000", Some(2)).await;
    assert_eq!(bodies(&by_body), ["m4", "m5"]);

    let url = format!("{}/chats/966500000000", gw.base_url());
    let by_query: Value = client()
        .get(&url)
        .bearer_auth("mock-token")
        .query(&[("limit", "3")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bodies(&by_query), ["m3", "m4", "m5"]);

    let query_wins: Value = client()
        .get(&url)
        .bearer_auth("mock-token")
        .query(&[("limit", "1")])
        .json(&serde_json::json!({"limit": 4}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bodies(&query_wins), ["m5"]);

    let infinity: Value = client()
        .get(&url)
        .bearer_auth("mock-token")
        .json(&serde_json::json!({"limit": "Infinity"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bodies(&infinity).len(), 5);

    let bad = client()
        .get(&url)
        .bearer_auth("mock-token")
        .query(&[("limit", "-1")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let limits: Vec<Option<u64>> = gw.requests().iter().map(|r| r.limit).collect();
    assert_eq!(limits, [None, Some(2), Some(3), Some(1), None, None]);
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_chat_is_404() {
    let gw = start(FIVE).await;
    let r = fetch(&gw, "966599999999", Some(5)).await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"status": "error", "message": "chat not found"})
    );
    gw.shutdown().await;
}

#[test]
fn private_reply_matches_the_whatsapp_web_js_shape() {
    let w = world(FIVE);
    let reply = reply_at(&w, "966500000000", Some(2), 0);
    assert_eq!(reply["status"], "success");
    let chat = &reply["chat"];
    assert_eq!(
        chat["id"],
        serde_json::json!({"server": "c.us", "user": "966500000000", "_serialized": "966500000000@c.us"})
    );
    assert_eq!(chat["name"], "Jhone Due");
    assert_eq!(chat["isGroup"], false);
    assert_eq!(chat["timestamp"], START_MS / 1000 - 60);
    for key in [
        "isReadOnly",
        "unreadCount",
        "archived",
        "pinned",
        "isMuted",
        "muteExpiration",
    ] {
        assert!(chat.get(key).is_some(), "chat.{key}");
    }
    assert!(chat.get("groupMetadata").is_none());

    let messages = reply["messages"].as_array().unwrap();
    let outbound = &messages[0];
    assert_eq!(outbound["body"], "m4");
    let inbound = &messages[1];
    for key in [
        "_data",
        "id",
        "ack",
        "hasMedia",
        "body",
        "type",
        "timestamp",
        "from",
        "to",
        "author",
        "deviceType",
        "isForwarded",
        "forwardingScore",
        "isStatus",
        "isStarred",
        "fromMe",
        "hasQuotedMsg",
        "hasReaction",
        "vCards",
        "mentionedIds",
        "groupMentions",
        "isGif",
        "links",
    ] {
        assert!(inbound.get(key).is_some(), "message.{key}");
    }
    for key in [
        "id",
        "viewed",
        "body",
        "type",
        "t",
        "from",
        "to",
        "self",
        "ack",
        "invis",
        "star",
        "latestEditMsgKey",
    ] {
        assert!(inbound["_data"].get(key).is_some(), "_data.{key}");
    }
    assert_eq!(inbound["_data"]["id"], inbound["id"]);
    assert_eq!(
        inbound["id"]["_serialized"],
        format!("false_966500000000@c.us_MOCK{}_0_4", w.run)
    );
    assert_eq!(inbound["id"]["fromMe"], false);
    assert_eq!(inbound["id"]["remote"], "966500000000@c.us");
    assert_eq!(inbound["from"], "966500000000@c.us");
    assert_eq!(inbound["to"], BUSINESS_ID);
    assert_eq!(inbound["author"], Value::Null);
    assert!(inbound["_data"].get("author").is_none());
    assert_eq!(inbound["_data"]["from"]["_serialized"], "966500000000@c.us");
    assert_eq!(inbound["_data"]["self"], "in");
    assert_eq!(inbound["_data"]["t"], inbound["timestamp"]);
    assert_eq!(inbound["timestamp"], START_MS / 1000 - 60);
    assert_eq!(inbound["hasMedia"], false);
    assert_eq!(inbound["type"], "chat");

    let m3 = &reply_at(&w, "966500000000", Some(3), 0)["messages"][0];
    assert_eq!(m3["fromMe"], true);
    assert_eq!(m3["from"], BUSINESS_ID);
    assert_eq!(m3["to"], "966500000000@c.us");
    assert_eq!(m3["_data"]["self"], "out");
    assert_eq!(
        m3["id"]["_serialized"],
        format!("true_966500000000@c.us_MOCK{}_0_2", w.run)
    );
}

#[test]
fn group_messages_carry_author_and_participant() {
    let w = world(
        r#"
chats:
  - id: "120363000000000001@g.us"
    name: Team
    messages:
      - { at: -2s, body: "from a member" }
      - { at: -1s, body: "from a lid", author: "900000000000002@lid", id: G2 }
      - { at: -1s, body: "from us", from_me: true }
"#,
    );
    let reply = reply_at(&w, "120363000000000001@g.us", None, 0);
    assert_eq!(reply["chat"]["isGroup"], true);
    assert_eq!(reply["chat"]["groupMetadata"]["subject"], "Team");
    let m = reply["messages"].as_array().unwrap();
    assert_eq!(m[0]["author"], GROUP_MEMBER_ID);
    assert_eq!(m[0]["_data"]["author"]["_serialized"], GROUP_MEMBER_ID);
    assert_eq!(m[1]["author"], "900000000000002@lid");
    assert_eq!(m[1]["id"]["participant"]["server"], "lid");
    assert_eq!(
        m[1]["id"]["_serialized"],
        "false_120363000000000001@g.us_G2_900000000000002@lid"
    );
    assert_eq!(m[1]["from"], "120363000000000001@g.us");
    assert_eq!(m[2]["author"], BUSINESS_ID);
    assert!(m[2]["id"].get("participant").is_none());
}

// ---- time ---------------------------------------------------------------------------

#[tokio::test]
async fn messages_appear_at_their_offset() {
    let gw = start(
        r#"
chats:
  - id: "966500000000"
    messages:
      - { at: -1h, body: "old history" }
      - { at: 400ms, body: "soon" }
"#,
    )
    .await;
    let early = fetch_json(&gw, "966500000000", None).await;
    if gw.requests()[0].at_ms < 400 {
        // (A machine stalled past 400ms before this request proves nothing here.)
        assert_eq!(bodies(&early), ["old history"]);
    }
    while gw.elapsed_ms() < 420 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = fetch_json(&gw, "966500000000", None).await;
    assert_eq!(bodies(&reply), ["old history", "soon"]);
    let start_secs = gw.start_unix_ms().div_euclid(1000);
    assert_eq!(reply["messages"][0]["timestamp"], start_secs - 3600);
    assert_eq!(reply["messages"][1]["timestamp"], start_secs);
    assert_eq!(reply["chat"]["timestamp"], start_secs);
    gw.shutdown().await;
}

#[test]
fn visibility_and_timestamps_follow_the_offsets() {
    let w = world(
        r#"
chats:
  - id: "966500000000"
    messages:
      - { at: 2s, body: "بُوت", id: AR1 }
      - { at: 2s, body: "second in the same second", from_me: false, type: chat, author: null }
      - { at: 2900ms, body: "same second too" }
      - { at: 3s, body: "next second" }
"#,
    );
    assert!(bodies(&reply_at(&w, "966500000000", None, 1999)).is_empty());
    assert_eq!(
        reply_at(&w, "966500000000", None, 1999)["chat"]["timestamp"],
        START_MS / 1000
    );
    let reply = reply_at(&w, "966500000000", None, 3000);
    let generated = |n: usize| format!("MOCK{}_0_{n}", w.run);
    assert_eq!(
        ids(&reply),
        ["AR1".to_owned(), generated(1), generated(2), generated(3)]
    );
    let ts: Vec<i64> = reply["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["timestamp"].as_i64().unwrap())
        .collect();
    let base = START_MS / 1000;
    assert_eq!(ts, [base + 2, base + 2, base + 2, base + 3]);
    assert_eq!(
        bodies(&reply_at(&w, "966500000000", Some(1), 2899)),
        ["second in the same second"]
    );
}

#[tokio::test]
async fn same_second_ties_share_a_timestamp_over_http() {
    let gw = start(
        r#"
chats:
  - id: "966500000000"
    messages:
      - { at: -10s, body: "a" }
      - { at: -10s, body: "b" }
      - { at: -9500ms, body: "c" }
"#,
    )
    .await;
    let reply = fetch_json(&gw, "966500000000", None).await;
    let ts: Vec<&Value> = reply["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["timestamp"])
        .collect();
    assert_eq!(ts[0], ts[1]);
    assert_eq!(ts[1], ts[2]);
    assert_eq!(bodies(&reply), ["a", "b", "c"]);
    gw.shutdown().await;
}

#[test]
fn revoke_and_edit_update_the_same_id() {
    let w = world(
        r#"
chats:
  - id: "966500000000"
    messages:
      - { at: 1s, body: "typo", id: E1, edit: { at: 3s, body: "fixed" } }
      - { at: 1s, body: "oops", id: R1, revoke_at: 5s }
"#,
    );
    let before = reply_at(&w, "966500000000", None, 2000);
    assert_eq!(ids(&before), ["E1", "R1"]);
    assert_eq!(bodies(&before), ["typo", "oops"]);
    assert_eq!(
        before["messages"][0]["latestEditSenderTimestampMs"],
        Value::Null
    );

    let edited = reply_at(&w, "966500000000", None, 3000);
    assert_eq!(ids(&edited), ["E1", "R1"]);
    assert_eq!(bodies(&edited), ["fixed", "oops"]);
    assert_eq!(edited["messages"][0]["type"], "chat");
    assert_eq!(edited["messages"][0]["_data"]["body"], "fixed");
    assert_eq!(
        edited["messages"][0]["latestEditSenderTimestampMs"],
        START_MS + 3000
    );
    assert_eq!(
        edited["messages"][0]["timestamp"],
        before["messages"][0]["timestamp"]
    );

    let revoked = reply_at(&w, "966500000000", None, 5000);
    let r1 = &revoked["messages"][1];
    assert_eq!(r1["id"], before["messages"][1]["id"]);
    assert_eq!(r1["type"], "revoked");
    assert_eq!(r1["body"], "");
    assert_eq!(r1["_data"]["type"], "revoked");
    assert!(r1["_data"].get("body").is_none());
    assert_eq!(r1["_data"]["subtype"], "sender_revoke");
    assert_eq!(r1["timestamp"], before["messages"][1]["timestamp"]);
}

// ---- faults -------------------------------------------------------------------------

#[tokio::test]
async fn a_429_fault_sends_retry_after_and_is_used_times_times() {
    let gw = start(&format!(
            "{FIVE}faults:\n  - {{ chat: \"966500000000\", times: 2, respond: {{ status: 429, retry_after: \"2\" }} }}\n"
        ))
        .await;
    for _ in 0..2 {
        let r = fetch(&gw, "966500000000", Some(1)).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "2");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "error");
    }
    assert_eq!(fetch(&gw, "966500000000", Some(1)).await.status(), 200);
    let faults: Vec<(u16, Option<usize>)> =
        gw.requests().iter().map(|r| (r.status, r.fault)).collect();
    assert_eq!(faults, [(429, Some(0)), (429, Some(0)), (200, None)]);
    gw.shutdown().await;
}

#[test]
fn faults_match_by_window_chat_and_remaining_uses() {
    let scenario = Scenario::from_yaml(
            r#"
faults:
  - { after: 3s, until: 10s, chat: "966500000000", times: 1, respond: { status: 429, retry_after: 2 } }
  - { chat: "966500000001@c.us", respond: { status: 500 } }
  - { after: 20s, respond: { malformed: true } }
"#,
        )
        .unwrap();
    let mut faults: Vec<Fault> = scenario
        .faults
        .iter()
        .map(|f| Fault::compile(f).unwrap())
        .collect();
    let mut pick = |chat: &str, now: i64| pick_fault(&mut faults, chat, now).map(|(i, _, _)| i);
    assert_eq!(pick("966500000000", 2999), None);
    assert_eq!(pick("966500000002", 5000), None);
    assert_eq!(pick("966500000000@c.us", 3000), Some(0));
    assert_eq!(pick("966500000000", 3001), None, "times: 1 is used up");
    assert_eq!(pick("966500000001", 0), Some(1));
    assert_eq!(
        pick("966500000001", 99_000),
        Some(1),
        "unlimited, earlier fault first"
    );
    assert_eq!(pick("966500000002", 20_000), Some(2));
    let FaultAction::Status { retry_after, .. } =
        &Fault::compile(&scenario.faults[0]).unwrap().action
    else {
        panic!("status fault");
    };
    assert_eq!(
        retry_after.as_deref(),
        Some("2"),
        "an unquoted number is read as text"
    );
}

#[tokio::test]
async fn a_500_fault_and_a_custom_body() {
    let gw = start(&format!(
            "{FIVE}faults:\n  - {{ times: 1, respond: {{ status: 500 }} }}\n  - {{ times: 1, respond: {{ status: 200, body: '{{\"status\":\"error\",\"message\":\"session closed\"}}' }} }}\n"
        ))
        .await;
    let r = fetch(&gw, "966500000000", None).await;
    assert_eq!(r.status(), 500);
    let r = fetch(&gw, "966500000000", None).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "error");
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_and_truncated_bodies_are_not_json() {
    let gw = start(&format!(
            "{FIVE}faults:\n  - {{ times: 1, respond: {{ malformed: true }} }}\n  - {{ times: 1, respond: {{ truncated: true }} }}\n"
        ))
        .await;
    let malformed = fetch(&gw, "966500000000", None).await;
    assert_eq!(malformed.status(), 200);
    let text = malformed.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");

    let truncated = fetch(&gw, "966500000000", None).await;
    assert_eq!(truncated.status(), 200);
    let cut = truncated.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&cut).is_err());
    let whole = fetch(&gw, "966500000000", None).await.text().await.unwrap();
    assert!(whole.starts_with(&cut), "a prefix of the real reply");
    assert!(cut.len() * 2 <= whole.len() && cut.len() * 2 + 8 >= whole.len());
    assert!(cut.starts_with(r#"{"status":"success""#));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_delay_fault_answers_normally_late() {
    let gw = start(&format!(
        "{FIVE}faults:\n  - {{ times: 1, respond: {{ delay: 300ms }} }}\n"
    ))
    .await;
    let t0 = std::time::Instant::now();
    let reply = fetch_json(&gw, "966500000000", Some(1)).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(bodies(&reply), ["m5"]);
    fetch_json(&gw, "966500000000", Some(1)).await;
    let used: Vec<(u16, Option<usize>)> =
        gw.requests().iter().map(|r| (r.status, r.fault)).collect();
    assert_eq!(used, [(200, Some(0)), (200, None)], "times: 1");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_hang_fault_never_answers_and_shutdown_releases_it() {
    let gw = start(&format!(
        "{FIVE}faults:\n  - {{ times: 1, respond: {{ hang: true }} }}\n"
    ))
    .await;
    let err = client()
        .get(format!("{}/chats/966500000000", gw.base_url()))
        .bearer_auth("mock-token")
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .expect_err("hangs");
    assert!(err.is_timeout(), "{err}");
    assert_eq!(gw.requests()[0].status, 0);
    assert_eq!(
        fetch(&gw, "966500000000", None).await.status(),
        200,
        "times: 1"
    );

    // A second hang still in flight when shutting down.
    let gw2 = start(&format!(
        "{FIVE}faults:\n  - {{ respond: {{ hang: true }} }}\n"
    ))
    .await;
    let url = format!("{}/chats/966500000000", gw2.base_url());
    let pending =
        tokio::spawn(async move { client().get(url).bearer_auth("mock-token").send().await });
    while gw2.requests().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::timeout(Duration::from_secs(5), gw2.shutdown())
        .await
        .expect("shutdown is prompt");
    let released = pending.await.unwrap().expect("answered on shutdown");
    assert_eq!(released.status(), 503);
    gw.shutdown().await;
}

// ---- observability ------------------------------------------------------------------

#[tokio::test]
async fn the_request_log_records_chat_limit_and_status() {
    let gw = start(FIVE).await;
    fetch(&gw, "966500000000", Some(7)).await;
    fetch(&gw, "966500000000@c.us", None).await;
    fetch(&gw, "966599999999", Some(1)).await;
    let log = gw.requests();
    let seen: Vec<(&str, Option<u64>, u16)> = log
        .iter()
        .map(|r| (r.chat.as_str(), r.limit, r.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("966500000000", Some(7), 200),
            ("966500000000@c.us", None, 200),
            ("966599999999", Some(1), 404)
        ]
    );
    assert!(log.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    assert!(
        log.iter()
            .all(|r| r.unix_ms == gw.start_unix_ms() + i64::try_from(r.at_ms).unwrap())
    );

    let over_http: Vec<RequestRecord> = client()
        .get(format!("{}/__mock/requests", gw.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        over_http, log,
        "admin routes need no token and are not recorded"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_pushed_message_appears_in_the_next_reply() {
    let gw = start(FIVE).await;
    let id = gw.push_message("966500000000", "بوت please", false);
    let reply = fetch_json(&gw, "966500000000", Some(2)).await;
    assert_eq!(bodies(&reply), ["m5", "بوت please"]);
    assert_eq!(ids(&reply)[1], id);
    assert_eq!(
        reply["messages"][1]["timestamp"],
        reply["chat"]["timestamp"]
    );

    let url = format!("{}/__mock/chats/966500000000/messages", gw.base_url());
    let created: Value = client()
        .post(&url)
        .json(&serde_json::json!({"body": "reply", "from_me": true, "type": "chat", "id": "OUT1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["id"], "OUT1");
    assert_eq!(created["serialized"], "true_966500000000@c.us_OUT1");
    let reply = fetch_json(&gw, "966500000000", Some(1)).await;
    assert_eq!(ids(&reply), ["OUT1"]);
    assert_eq!(reply["messages"][0]["fromMe"], true);

    let dup = client()
        .post(&url)
        .json(&serde_json::json!({"body": "again", "id": "OUT1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), 409);
    let unknown = client()
        .post(format!(
            "{}/__mock/chats/966599999999/messages",
            gw.base_url()
        ))
        .json(&serde_json::json!({"body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let bad = client()
        .post(&url)
        .json(&serde_json::json!({"text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(matches!(
        gw.push("966599999999", NewMessage::default()),
        Err(PushError::UnknownChat(_))
    ));
    gw.shutdown().await;
}

#[test]
fn a_push_lands_before_scheduled_future_messages() {
    let mut w = world(
        r#"
chats:
  - id: "966500000000"
    messages:
      - { at: -1s, body: "past" }
      - { at: 10s, body: "future" }
"#,
    );
    let id = w
        .push(
            "966500000000",
            NewMessage {
                body: "now".into(),
                ..NewMessage::default()
            },
            500,
        )
        .unwrap()
        .1;
    assert_eq!(id, format!("MOCK{}_0_2", w.run));
    assert_eq!(
        bodies(&reply_at(&w, "966500000000", None, 600)),
        ["past", "now"]
    );
    assert_eq!(
        bodies(&reply_at(&w, "966500000000", None, 10_000)),
        ["past", "now", "future"]
    );
}

// ---- synthetic ----------------------------------------------------------------------

const SYNTH: &str = r#"
synthetic:
  chats: 40
  active_fraction: 0.25
  messages_per_second: 100
  keyword: "بوت"
  keyword_every: 10
  seed: 42
"#;

#[test]
fn synthetic_chats_are_spread_and_named_from_the_index() {
    let w = world(SYNTH);
    let s = w.synthetic.as_ref().unwrap();
    assert_eq!(synthetic_chat_id(0), "966510000000");
    assert_eq!(synthetic_chat_id(39), "966510000039");
    assert_eq!((0..40).filter(|&c| s.is_active(c)).count(), 10);
    assert_eq!(w.resolve("966510000039"), Some(ChatRef::Synthetic(39)));
    assert_eq!(w.resolve("966510000040"), None);
    let inactive = (0..40).find(|&c| !s.is_active(c)).unwrap();
    let reply = reply_at(&w, &synthetic_chat_id(inactive), None, 60_000);
    assert!(
        bodies(&reply).is_empty(),
        "an inactive chat exists but stays quiet"
    );
}

#[test]
fn synthetic_traffic_is_deterministic_for_a_seed() {
    let a = world(SYNTH);
    let b = world(SYNTH);
    let c = world(&SYNTH.replace("seed: 42", "seed: 43"));
    let active: Vec<u64> = (0..40)
        .filter(|&i| a.synthetic.as_ref().unwrap().is_active(i))
        .collect();
    let mut differs = false;
    for &i in &active {
        let chat = synthetic_chat_id(i);
        // The same traffic, but each world's ids carry its own run tag.
        let ra = a
            .reply(&chat, None, 10_000, START_MS)
            .unwrap()
            .replace(&a.run, "RUN");
        assert_ne!(a.run, b.run);
        assert_eq!(
            ra,
            b.reply(&chat, None, 10_000, START_MS)
                .unwrap()
                .replace(&b.run, "RUN")
        );
        differs |= ra
            != c.reply(&chat, None, 10_000, START_MS)
                .unwrap()
                .replace(&c.run, "RUN");
        let v: Value = serde_json::from_str(&ra).unwrap();
        let n = v["messages"].as_array().unwrap().len();
        assert!(
            (90..=110).contains(&n),
            "10 active chats share 100 msg/s: {n} in 10s"
        );
        let ts: Vec<i64> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["timestamp"].as_i64().unwrap())
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "oldest first");
    }
    assert!(differs, "another seed gives other traffic");
}

#[test]
fn a_synthetic_reply_costs_o_limit() {
    // A billion messages visible in one chat: only the newest `limit` are derived.
    let w = world(
        "synthetic: { chats: 10000, active_fraction: 0.0001, messages_per_second: 1000000, seed: 7 }",
    );
    let s = w.synthetic.as_ref().unwrap();
    let chat = (0..10_000).find(|&c| s.is_active(c)).unwrap();
    let now = 1_000_000; // 1000 s
    assert!(s.visible_count(chat, now) > 900_000_000);
    let t0 = std::time::Instant::now();
    let reply = reply_at(&w, &synthetic_chat_id(chat), Some(50), now);
    assert!(t0.elapsed() < Duration::from_secs(1));
    let got = ids(&reply);
    assert_eq!(got.len(), 50);
    let n = s.visible_count(chat, now);
    assert_eq!(got[49], format!("MOCKS{}_{chat}_{}", w.run, n - 1));
    assert_eq!(got[0], format!("MOCKS{}_{chat}_{}", w.run, n - 50));
}

#[test]
fn filler_never_contains_the_keyword() {
    let w =
        world("synthetic: { chats: 1, messages_per_second: 1, keyword: OK, keyword_every: 1000 }");
    let s = w.synthetic.as_ref().unwrap();
    assert!(s.filler.len() < FILLER.len());
    assert!((0..500).all(|k| !s.message(0, k).body.unwrap().to_lowercase().contains("ok")));
}

#[test]
fn visible_count_agrees_with_message_times() {
    let w = world(SYNTH);
    let s = w.synthetic.as_ref().unwrap();
    for c in (0..40).filter(|&c| s.is_active(c)) {
        for now in [0, 1, 57, 999, 1000, 4321, 10_000] {
            let n = s.visible_count(c, now);
            if n > 0 {
                assert!(s.message(c, n - 1).at_ms <= now);
            }
            assert!(
                s.message(c, n).at_ms >= now - 1,
                "message {n} of {c} is not yet visible at {now}"
            );
        }
    }
}

#[test]
fn planted_lists_exactly_the_served_keyword_messages() {
    let w = world(SYNTH);
    let now = 7_500;
    let planted: HashSet<PlantedMessage> = w
        .planted(now, START_MS)
        .into_iter()
        .map(|p| {
            assert!(p.at_unix_ms <= START_MS + now);
            PlantedMessage { at_unix_ms: 0, ..p }
        })
        .collect();
    let mut served = HashSet::new();
    for c in 0..40 {
        let reply = reply_at(&w, &synthetic_chat_id(c), None, now);
        for m in reply["messages"].as_array().unwrap() {
            if m["body"].as_str().unwrap().contains("بوت") {
                assert_eq!(m["fromMe"], false, "planted messages are inbound");
                served.insert(PlantedMessage {
                    chat: m["from"].as_str().unwrap().to_owned(),
                    message_id: m["id"]["_serialized"].as_str().unwrap().to_owned(),
                    timestamp: m["timestamp"].as_i64().unwrap(),
                    at_unix_ms: 0,
                });
            }
        }
    }
    assert!(planted.len() > 50, "{}", planted.len());
    assert_eq!(planted, served);
}

#[tokio::test]
async fn synthetic_over_http_with_a_traffic_window() {
    let yaml = "synthetic: { chats: 5, messages_per_second: 200, keyword: bot, keyword_every: 3, seed: 1, until: 200ms }\n";
    let gw = start(yaml).await;
    let gw2 = start(yaml).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let planted: Vec<PlantedMessage> = client()
        .get(format!("{}/__mock/planted", gw.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(planted, gw.planted(), "traffic stopped at 200ms");
    let mut served = 0;
    for c in 0..5 {
        let chat = synthetic_chat_id(c);
        let reply = fetch_json(&gw, &chat, None).await;
        let reply2 = fetch_json(&gw2, &chat, None).await;
        // Ids are MOCKS{run}_{chat}_{n}: the same but for each start's run tag.
        let untagged = |ids: Vec<String>| -> Vec<String> {
            ids.into_iter()
                .map(|i| {
                    i.split_once('_')
                        .map_or(i.clone(), |(_, rest)| rest.to_owned())
                })
                .collect()
        };
        assert_eq!(
            untagged(ids(&reply)),
            untagged(ids(&reply2)),
            "same seed, same traffic"
        );
        assert_eq!(bodies(&reply), bodies(&reply2));
        assert!(
            (7..=9).contains(&ids(&reply).len()),
            "40 msg/s per chat for 200ms"
        );
        served += bodies(&reply)
            .iter()
            .filter(|b| b.split(' ').any(|w| w == "bot"))
            .count();
    }
    assert_eq!(served, planted.len());
    let pushed = gw.push_message(&synthetic_chat_id(2), "hello there", false);
    let reply = fetch_json(&gw, &synthetic_chat_id(2), Some(2)).await;
    assert_eq!(ids(&reply)[1], pushed);
    gw.shutdown().await;
    gw2.shutdown().await;
}

// ---- scenario files -----------------------------------------------------------------

#[test]
fn an_unknown_key_fails_with_line_and_column() {
    let err = Scenario::from_yaml("token: t\nchats:\n  - id: \"966500000000\"\n    colour: red\n")
        .unwrap_err();
    assert!(err.starts_with("4:5: unknown field `colour`"), "{err}");
    let err =
        Scenario::from_yaml("faults:\n  - { respond: { status: 429, retry: 2 } }\n").unwrap_err();
    assert!(err.starts_with("2:"), "{err}");
    assert!(err.contains("`retry`"), "{err}");
}

#[test]
fn from_file_names_the_file() {
    let dir = std::env::temp_dir().join(format!("cartat-mock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.yaml");
    std::fs::write(&path, "chats: []\nnope: 1\n").unwrap();
    let err = Scenario::from_file(&path).unwrap_err();
    assert!(
        err.starts_with(&format!("{}:2:1: unknown field `nope`", path.display())),
        "{err}"
    );
    let good = dir.join("good.yaml");
    std::fs::write(&good, FIVE).unwrap();
    assert_eq!(
        Scenario::from_file(&good).unwrap().chats[0].messages.len(),
        5
    );
    let missing = Scenario::from_file(&dir.join("missing.yaml")).unwrap_err();
    assert!(missing.contains("missing.yaml"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn semantic_errors_name_the_field() {
    let cases = [
        (
            "chats: [ { id: \"+966500000000\" } ]",
            "did you mean 966500000000?",
        ),
        (
            "chats: [ { id: \"1\" }, { id: \"1@c.us\" } ]",
            "chats[1]: chat `1@c.us` is listed twice",
        ),
        (
            "chats: [ { id: \"1\", messages: [ { at: 1s, author: \"2@c.us\" } ] } ]",
            "only for group chats",
        ),
        (
            "chats: [ { id: \"1\", messages: [ { at: 5s, revoke_at: 1s } ] } ]",
            "chats[0].messages[0]: `revoke_at`",
        ),
        (
            "chats: [ { id: \"1\", messages: [ { at: 1s, id: X }, { at: 2s, id: X } ] } ]",
            "used twice",
        ),
        ("chats: [ { id: \"1\", messages: [ { at: soon } ] } ]", "1:"),
        (
            "faults: [ { respond: { status: 500, malformed: true } } ]",
            "faults[0]: respond: choose one",
        ),
        (
            "faults: [ { respond: {} } ]",
            "faults[0]: respond: says nothing",
        ),
        (
            "faults: [ { respond: { malformed: true, retry_after: \"1\" } } ]",
            "go with status",
        ),
        (
            "faults: [ { after: 5s, until: 1s, respond: { hang: true } } ]",
            "until must be later",
        ),
        (
            "faults: [ { times: 0, respond: { hang: true } } ]",
            "at least 1",
        ),
        (
            "synthetic: { chats: 0, messages_per_second: 1 }",
            "synthetic.chats",
        ),
        (
            "synthetic: { chats: 5, messages_per_second: 1 }\nchats: [ { id: \"966510000003\" } ]",
            "also a synthetic chat",
        ),
        ("token: \"\"", "token"),
    ];
    for (yaml, want) in cases {
        let err = Scenario::from_yaml(yaml).expect_err(yaml);
        assert!(err.contains(want), "{yaml}\n  gave: {err}\n  want: {want}");
    }
}

#[test]
fn offsets_are_signed_durations() {
    let cases = [
        ("-1h", -3_600_000),
        ("2s", 2000),
        ("500ms", 500),
        ("0", 0),
        ("+5m", 300_000),
        ("-0", 0),
    ];
    for (text, ms) in cases {
        assert_eq!(
            text.parse::<Offset>().map(Offset::as_millis),
            Ok(ms),
            "{text}"
        );
    }
    assert!("-".parse::<Offset>().is_err());
    assert!("1.5s".parse::<Offset>().is_err());
    assert_eq!(Offset::from_millis(-3_600_000).to_string(), "-1h");
    assert_eq!(
        timestamp_of(1_000_999, -1),
        999,
        "history rounds down to whole seconds"
    );
}

#[test]
fn defaults_are_the_documented_ones() {
    let s = Scenario::from_yaml(
        "chats: [ { id: \"120363000000000001@g.us\" }, { id: \"966500000000\" } ]",
    )
    .unwrap();
    assert_eq!(s.token, DEFAULT_TOKEN);
    assert!(
        !format!("{s:?}").contains(DEFAULT_TOKEN),
        "the token stays out of Debug"
    );
    let w = World::compile(&s).unwrap();
    assert!(w.chats[0].is_group);
    assert!(!w.chats[1].is_group);
    assert_eq!(w.chats[1].name, "966500000000");
    assert_eq!(w.chats[1].id, "966500000000@c.us");
    assert!(Scenario::default().validate().is_ok());
}

#[tokio::test]
async fn serve_runs_until_its_token_is_cancelled() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        Scenario::from_yaml(FIVE).unwrap(),
        token.clone(),
    ));
    let r = client()
        .get(format!("http://{addr}/chats/966500000000"))
        .bearer_auth(DEFAULT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad = Scenario {
        token: String::new(),
        ..Scenario::default()
    };
    let err = serve(listener, bad, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
