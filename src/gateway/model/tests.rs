use super::*;

/// The parser as it was before the streaming one: through a `serde_json::Value` tree. Kept
/// as the oracle the streaming parser must agree with.
mod dom {
    use super::super::{
        Chat, ChatId, Message, MessageKey, Page, ReplyError, Skipped, fnv1a, plausible_seconds,
    };
    use serde_json::Value;

    pub(super) fn parse_reply_value(root: &Value, watched: &ChatId) -> Result<Page, ReplyError> {
        let status = root.get("status").and_then(Value::as_str).unwrap_or("");
        if status != "success" {
            return Err(ReplyError::NotSuccess {
                status: if status.is_empty() {
                    "(missing)".into()
                } else {
                    status.to_string()
                },
                message: root
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        }
        let chat = parse_chat(root.get("chat"), watched);
        let list = root
            .get("messages")
            .and_then(Value::as_array)
            .ok_or(ReplyError::NoMessages)?;
        let mut page = Page {
            chat,
            messages: Vec::with_capacity(list.len()),
            skipped: Vec::new(),
        };
        for (index, raw) in list.iter().enumerate() {
            match parse_message(raw) {
                Ok(m) => page.messages.push(m),
                Err(reason) => page.skipped.push(Skipped {
                    index,
                    reason,
                    identity: fnv1a(raw.to_string().as_bytes()),
                }),
            }
        }
        Ok(page)
    }

    fn parse_chat(v: Option<&Value>, watched: &ChatId) -> Chat {
        let Some(v) = v.filter(|v| v.is_object()) else {
            return Chat {
                id: watched.as_str().to_string(),
                ..Chat::default()
            };
        };
        let id = jid(v.get("id")).unwrap_or_else(|| watched.as_str().to_string());
        Chat {
            is_group: v
                .get("isGroup")
                .and_then(Value::as_bool)
                .unwrap_or(id.ends_with("@g.us")),
            id,
            name: v.get("name").and_then(Value::as_str).map(str::to_string),
            unread_count: v.get("unreadCount").and_then(as_i64),
            timestamp: v
                .get("timestamp")
                .and_then(as_i64)
                .and_then(plausible_seconds),
            archived: flag(v, "archived"),
            pinned: flag(v, "pinned"),
            is_muted: flag(v, "isMuted"),
        }
    }

    fn flag(v: &Value, key: &str) -> bool {
        v.get(key).and_then(Value::as_bool).unwrap_or(false)
    }

    /// A JID field: a string, or an object with `_serialized` (or `user` + `server`).
    fn jid(v: Option<&Value>) -> Option<String> {
        match v? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Object(o) => match o.get("_serialized").and_then(Value::as_str) {
                Some(s) if !s.is_empty() => Some(s.to_string()),
                _ => {
                    let user = o.get("user")?.as_str()?;
                    let server = o.get("server")?.as_str()?;
                    Some(format!("{user}@{server}"))
                }
            },
            _ => None,
        }
    }

    fn as_i64(v: &Value) -> Option<i64> {
        match v {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn parse_message(v: &Value) -> Result<Message, String> {
        if !v.is_object() {
            return Err("not a JSON object".into());
        }
        let data = v.get("_data").filter(|d| d.is_object());
        let id = v
            .get("id")
            .filter(|i| i.is_object())
            .or_else(|| data.and_then(|d| d.get("id")).filter(|i| i.is_object()))
            .ok_or_else(|| "no `id` object (not a whatsapp-web.js message)".to_string())?;
        let from_me = id
            .get("fromMe")
            .and_then(Value::as_bool)
            .ok_or_else(|| "`id.fromMe` missing".to_string())?;
        let msg_id = id
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| "`id.id` missing".to_string())?
            .to_string();
        let serialized_id = id
            .get("_serialized")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "{from_me}_{}_{msg_id}",
                    jid(id.get("remote")).unwrap_or_default()
                )
            });
        let top_ts = v
            .get("timestamp")
            .and_then(as_i64)
            .and_then(plausible_seconds);
        let data_ts = data
            .and_then(|d| d.get("t"))
            .and_then(as_i64)
            .and_then(plausible_seconds);
        // whatsapp-web.js copies `timestamp` from `_data.t`; when both are plausible but differ,
        // one is a typo, and the raw `_data.t` is the source.
        let timestamp = data_ts
            .or(top_ts)
            .ok_or_else(|| "no plausible `timestamp` or `_data.t`".to_string())?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .or_else(|| data.and_then(|d| d.get("type")).and_then(Value::as_str))
            .unwrap_or("chat")
            .to_string();
        let body = v
            .get("body")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Ok(Message {
            key: MessageKey {
                from_me,
                id: msg_id,
            },
            serialized_id,
            body,
            kind,
            timestamp,
            from: jid(v.get("from")).or_else(|| jid(data.and_then(|d| d.get("from")))),
            to: jid(v.get("to")).or_else(|| jid(data.and_then(|d| d.get("to")))),
            author: jid(v.get("author")).or_else(|| jid(data.and_then(|d| d.get("author")))),
            has_media: v.get("hasMedia").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

#[test]
fn chat_ids_in_every_accepted_form() {
    let ok = [
        ("966500000000", "966500000000@c.us", "966500000000"),
        (" 966500000000 ", "966500000000@c.us", "966500000000"),
        ("966500000000@c.us", "966500000000@c.us", "966500000000"),
        (
            "120363012345678901@g.us",
            "120363012345678901@g.us",
            "120363012345678901@g.us",
        ),
        (
            "900000000000001@lid",
            "900000000000001@lid",
            "900000000000001@lid",
        ),
        (
            "966500000000-1600000000@g.us",
            "966500000000-1600000000@g.us",
            "966500000000-1600000000@g.us",
        ),
    ];
    for (text, id, seg) in ok {
        let c = ChatId::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(c.as_str(), id);
        assert_eq!(c.path_segment(), seg);
    }
}

#[test]
fn a_chat_id_carries_its_account_in_its_key_never_in_the_url_or_the_id() {
    // (written, key, account, bare id, url segment)
    let cases = [
        (
            "966500000000",
            "966500000000@c.us",
            "default",
            "966500000000@c.us",
            "966500000000",
        ),
        (
            "default/966500000000",
            "966500000000@c.us",
            "default",
            "966500000000@c.us",
            "966500000000",
        ),
        (
            "sales/966500000000",
            "sales/966500000000@c.us",
            "sales",
            "966500000000@c.us",
            "966500000000",
        ),
        (
            "support-2/1203@g.us",
            "support-2/1203@g.us",
            "support-2",
            "1203@g.us",
            "1203@g.us",
        ),
    ];
    for (text, key, account, bare, seg) in cases {
        let c = ChatId::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            (c.as_str(), c.account(), c.bare(), c.path_segment()),
            (key, account, bare, seg),
            "{text}"
        );
    }
    let moved = ChatId::parse("sales/966500000000")
        .unwrap()
        .in_account("support");
    assert_eq!(moved.as_str(), "support/966500000000@c.us");
    assert_eq!(moved.in_account("default").as_str(), "966500000000@c.us");
    for bad in [
        "Sales/966500000000",
        "1x/966500000000",
        "/966500000000",
        "a b/966500000000",
    ] {
        let err = ChatId::parse(bad).expect_err(bad).0;
        assert!(err.contains("not an account name"), "{bad}: {err}");
    }
    assert!(ChatId::parse("sales/+966500000000").is_err());
    // A rule's `chats:` entry without an account names the chat in every account.
    let (any, sales, support) = (
        ChatId::parse("966500000000").unwrap(),
        ChatId::parse("sales/966500000000").unwrap(),
        ChatId::parse("support/966500000000").unwrap(),
    );
    assert!(any.selects(&sales) && any.selects(&support) && any.selects(&any));
    assert!(sales.selects(&sales) && !sales.selects(&support) && !sales.selects(&any));
    assert!(!ChatId::parse("966500000001").unwrap().selects(&sales));
}

#[test]
fn chat_id_errors_say_what_the_right_form_is() {
    let cases = [
        ("+966500000000", "did you mean 966500000000?"),
        ("00966500000000", "did you mean 966500000000?"),
        ("966 50 000 0000", "did you mean 966500000000?"),
        ("+966 50-000-0000", "did you mean 966500000000?"),
        ("0500000000", "starts with 0"),
        ("abc", "not a phone number"),
        ("9665000O0000", "not a phone number"),
        ("12345", "7 to 15"),
        ("966500000000@x.us", "unknown server"),
        ("abc@c.us", "must be digits"),
        ("", "empty"),
    ];
    for (text, want) in cases {
        let err = ChatId::parse(text).expect_err(text).0;
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn plausible_timestamps() {
    assert_eq!(plausible_seconds(1_691_347_263), Some(1_691_347_263));
    assert_eq!(plausible_seconds(1_691_347_263_123), Some(1_691_347_263));
    assert_eq!(
        plausible_seconds(16_983_472_633),
        None,
        "the documented 11-digit typo"
    );
    assert_eq!(plausible_seconds(0), None);
    assert_eq!(plausible_seconds(-5), None);
}

fn watched() -> ChatId {
    ChatId::parse("966500000000").unwrap()
}

#[test]
fn documented_sample_falls_back_to_data_t() {
    let doc = include_str!("../../../tests/data/upstream_sample.json");
    let page = parse_reply(doc.as_bytes(), &watched()).unwrap();
    assert_eq!(page.messages.len(), 1);
    let m = &page.messages[0];
    assert_eq!(
        m.timestamp, 1_691_347_263,
        "11-digit timestamp replaced by _data.t"
    );
    assert_eq!(m.body, "بوت");
    assert_eq!(
        m.key,
        MessageKey {
            from_me: false,
            id: "3A1F984EA23D284164C4".into()
        }
    );
    assert_eq!(page.chat.name.as_deref(), Some("Jhone Due"));
    assert!(!page.chat.is_group);
}

#[test]
fn a_plausible_but_wrong_top_level_timestamp_loses_to_data_t() {
    let body = br#"{"status":"success","messages":[{"id":{"fromMe":false,"id":"A"},"timestamp":4000000000,"_data":{"t":1700000000},"body":"x"}]}"#;
    assert_eq!(
        parse_reply(body, &watched()).unwrap().messages[0].timestamp,
        1_700_000_000
    );
    let only_top = br#"{"status":"success","messages":[{"id":{"fromMe":false,"id":"A"},"timestamp":1700000001,"body":"x"}]}"#;
    assert_eq!(
        parse_reply(only_top, &watched()).unwrap().messages[0].timestamp,
        1_700_000_001
    );
}

#[test]
fn not_success_and_not_json_are_errors() {
    let w = watched();
    assert!(matches!(
        parse_reply(b"<html>", &w),
        Err(ReplyError::NotJson(_))
    ));
    let e = parse_reply(br#"{"status":"error","message":"chat not found"}"#, &w).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the reply says status `error`: chat not found"
    );
    assert!(matches!(
        parse_reply(br#"{"status":"success"}"#, &w),
        Err(ReplyError::NoMessages)
    ));
}

#[test]
fn one_bad_message_never_fails_the_page() {
    let body = br#"{"status":"success","chat":{"id":"966500000000@c.us"},"messages":[
            42,
            {"id":"false_x@c.us_ABC","body":"string id"},
            {"id":{"fromMe":false,"id":"OK1"},"timestamp":1700000000,"body":"hi","type":"chat"},
            {"id":{"fromMe":false,"id":"NOTS"},"timestamp":"soon","body":"bad time"}
        ]}"#;
    let page = parse_reply(body, &watched()).unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].key.id, "OK1");
    assert_eq!(
        page.skipped.iter().map(|s| s.index).collect::<Vec<_>>(),
        vec![0, 1, 3]
    );
}

#[test]
fn invalid_utf8_in_a_body_does_not_fail_the_page() {
    let mut body = br#"{"status":"success","messages":[{"id":{"fromMe":false,"id":"U1"},"timestamp":1700000000,"body":"bad "#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#" bytes","type":"chat"}]}"#);
    let page = parse_reply(&body, &watched()).unwrap();
    assert_eq!(page.messages.len(), 1);
    assert!(page.messages[0].body.starts_with("bad "));
}

#[test]
fn deep_nesting_costs_the_message_not_the_page() {
    // Skipped values are skipped without recursion, so no depth overflows the stack.
    let body = format!(
        r#"{{"status":"success","messages":[{}1{},{{"id":{{"fromMe":false,"id":"D"}},"timestamp":1700000000,"_data":{{"x":{}2{}}}}}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000),
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let page = parse_reply(body.as_bytes(), &watched()).unwrap();
    assert_eq!(page.skipped.len(), 1);
    assert_eq!(page.skipped[0].reason, "not a JSON object");
    assert_eq!(
        page.messages.len(),
        1,
        "a deep field it does not read is skipped"
    );
    // Deep under a field that is read: the field reads as absent.
    let deep_chat = format!(
        r#"{{"status":"success","chat":{{"id":{}1{}}},"messages":[]}}"#,
        "{\"a\":".repeat(100_000),
        "}".repeat(100_000)
    );
    let page = parse_reply(deep_chat.as_bytes(), &watched()).unwrap();
    assert_eq!(page.chat.id, watched().as_str());
}

#[test]
fn a_skipped_message_keeps_its_identity_across_pages() {
    let a = br#"{"status":"success","messages":[{"id":"bad"},{"id":{"fromMe":false,"id":"OK1"},"timestamp":1700000000}]}"#;
    let b = br#"{"status":"success","messages":[{"id":{"fromMe":false,"id":"OK0"},"timestamp":1700000000},{"id":"bad"}]}"#;
    let (pa, pb) = (
        parse_reply(a, &watched()).unwrap(),
        parse_reply(b, &watched()).unwrap(),
    );
    assert_eq!(pa.skipped[0].identity, pb.skipped[0].identity);
    assert_ne!(pa.skipped[0].index, pb.skipped[0].index);
}

#[test]
fn unread_count_is_kept_and_unknown_when_the_reply_does_not_say() {
    let cases: [(&[u8], Option<i64>); 7] = [
            (
                br#"{"status":"success","chat":{"id":{"_serialized":"966500000000@c.us"},"unreadCount":-1},"messages":[]}"#,
                Some(-1),
            ),
            (
                br#"{"status":"success","chat":{"id":"966500000000@c.us","unreadCount":7},"messages":[]}"#,
                Some(7),
            ),
            (
                br#"{"status":"success","chat":{"id":"966500000000@c.us","unreadCount":0},"messages":[]}"#,
                Some(0),
            ),
            (
                br#"{"status":"success","chat":{"id":"966500000000@c.us"},"messages":[]}"#,
                None,
            ),
            (
                br#"{"status":"success","chat":{"id":"966500000000@c.us","unreadCount":null},"messages":[]}"#,
                None,
            ),
            (
                br#"{"status":"success","chat":{"id":"966500000000@c.us","unreadCount":"many"},"messages":[]}"#,
                None,
            ),
            (br#"{"status":"success","messages":[]}"#, None),
        ];
    for (body, want) in cases {
        let got = parse_reply(body, &watched()).unwrap().chat.unread_count;
        assert_eq!(got, want, "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn fingerprint_changes_with_type_or_body() {
    let body = br#"{"status":"success","messages":[{"id":{"fromMe":false,"id":"A"},"timestamp":1700000000,"body":"x","type":"chat"}]}"#;
    let m = parse_reply(body, &watched()).unwrap().messages.remove(0);
    let mut revoked = m.clone();
    revoked.kind = "revoked".into();
    revoked.body.clear();
    let mut edited = m.clone();
    edited.body = "y".into();
    assert_ne!(m.fingerprint(), revoked.fingerprint());
    assert_ne!(m.fingerprint(), edited.fingerprint());
    assert_eq!(m.fingerprint(), m.clone().fingerprint());
}

#[test]
fn lone_surrogates_become_the_replacement_character() {
    let cases: &[(&str, &str)] = &[
        (r#""\ud800""#, r#""\ufffd""#),                   // lone leading
        (r#""\udc00""#, r#""\ufffd""#),                   // lone trailing
        (r#""ab\uD83D""#, r#""ab\ufffd""#),               // leading at the end, upper case
        (r#""\ud800\u0041""#, r#""\ufffd\u0041""#),       // leading, then no trailing
        (r#""\ud83d\ude00""#, r#""\ud83d\ude00""#),       // a valid pair: 😀
        (r#""\ude00\ud83d""#, r#""\ufffd\ufffd""#),       // a reversed pair
        (r#""\\ud800""#, r#""\\ud800""#),                 // an escaped backslash: text
        (r#""\\\ud800""#, r#""\\\ufffd""#),               // backslash, then a lone one
        (r#"{"\ud800":1}"#, r#"{"\ufffd":1}"#),           // in a key
        (r#""\ud800 x \udbff""#, r#""\ufffd x \ufffd""#), // two in one string
        (r#""\"\ud800""#, r#""\"\ufffd""#),               // after an escaped quote
        (r#"[1, "ok", true]"#, r#"[1, "ok", true]"#),     // nothing to do
        (r#"\ud800 "x""#, r#"\ud800 "x""#),               // outside strings: untouched
        (r#""\ud8""#, r#""\ud8""#),                       // a short escape: left to serde
    ];
    for &(input, expected) in cases {
        let got = repair_lone_surrogates(input);
        assert_eq!(got, expected, "{input}");
        assert_eq!(
            matches!(got, Cow::Borrowed(_)),
            input == expected,
            "borrows exactly when nothing changes: {input}"
        );
    }
}

#[test]
fn a_lone_surrogate_costs_one_character_not_the_page() {
    let body = br#"{"status":"success","chat":{"id":"966500000000@c.us","unreadCount":2},"messages":[
            {"id":{"fromMe":false,"id":"A","_serialized":"false_966500000000@c.us_A"},"timestamp":1700000000,"body":"bot \ud83d","type":"chat"},
            {"id":{"fromMe":false,"id":"B","_serialized":"false_966500000000@c.us_B"},"timestamp":1700000001,"body":"bot \ud83d\ude00","type":"chat"}]}"#;
    let page = parse_reply(body, &watched()).unwrap();
    let bodies: Vec<&str> = page.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["bot \u{FFFD}", "bot 😀"]);
    assert!(page.skipped.is_empty());
}

/// Both parsers on one reply text; skipped messages compare by place and reason (the
/// identity hashes differ in what they hash: the raw text, or a tree re-serialized).
fn agree(text: &str) -> Result<(), String> {
    let w = ChatId::from_gateway("966500000000");
    let fast = parse_reply(text.as_bytes(), &w);
    let root: Result<serde_json::Value, _> = serde_json::from_str(text);
    let slow = match root {
        Ok(v) => dom::parse_reply_value(&v, &w),
        Err(e) => Err(ReplyError::NotJson(e.to_string())),
    };
    let strip = |r: Result<Page, ReplyError>| {
        r.map(|mut p| {
            p.skipped.iter_mut().for_each(|s| s.identity = 0);
            p
        })
        .map_err(|e| std::mem::discriminant(&e))
    };
    let (fast, slow) = (strip(fast), strip(slow));
    if fast == slow {
        Ok(())
    } else {
        Err(format!("streaming {fast:?}\n tree {slow:?}"))
    }
}

#[test]
fn the_streaming_parser_agrees_with_the_tree_on_every_fixture() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut files = vec![dir.join("upstream_sample.json")];
    files.extend(
        std::fs::read_dir(dir.join("fixtures"))
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    assert!(files.len() > 10);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        agree(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

/// Any JSON value a field might hold, the odd ones included.
fn any_field() -> impl proptest::strategy::Strategy<Value = serde_json::Value> + Clone {
    use proptest::prelude::*;
    use serde_json::json;
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        Just(json!(false)),
        (1_600_000_000i64..1_800_000_000).prop_map(|n| json!(n)),
        (1_600_000_000_000i64..1_800_000_000_000).prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        (1.6e9f64..1.8e9).prop_map(|f| json!(f)),
        (1_600_000_000i64..1_800_000_000).prop_map(|n| json!(format!(" {n} "))),
        "[a-zA-Z0-9@._ \\\"\n\u{0621}-\u{064A}]{0,12}".prop_map(|s| json!(s)),
        Just(json!("")),
        Just(json!("966500000000@c.us")),
        Just(json!({"_serialized": "966500000001@c.us"})),
        Just(json!({"_serialized": "", "user": "9665", "server": "c.us"})),
        Just(json!({"user": "9665"})),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-z_]{1,3}", inner, 0..3)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object of some of `keys`, each with `value`'s values (a key may also hold `fixed`).
fn object_of(
    keys: &'static [&'static str],
    value: impl proptest::strategy::Strategy<Value = serde_json::Value> + Clone,
) -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    proptest::collection::vec((proptest::sample::select(keys), value), 0..keys.len() + 2).prop_map(
        |pairs| {
            serde_json::Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        },
    )
}

proptest::proptest! {
    #[test]
    #[test]
    fn the_streaming_parser_agrees_with_the_tree_on_odd_messages(
        ids in proptest::collection::vec(object_of(&["fromMe", "id", "_serialized", "remote"], any_field()), 1..4),
        fields in proptest::collection::vec(object_of(
            &["timestamp", "type", "body", "from", "to", "author", "hasMedia", "x"], any_field()), 1..4),
        data in proptest::collection::vec(object_of(&["t", "type", "from", "to", "author", "y"], any_field()), 1..4),
        chat in object_of(&["id", "name", "isGroup", "unreadCount", "timestamp", "archived", "pinned", "isMuted"], any_field()),
        shape in 0u8..8,
    ) {
        use serde_json::json;
        let messages: Vec<serde_json::Value> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut m = f.clone();
                let id = ids[i % ids.len()].clone();
                let mut d = data[i % data.len()].clone();
                match (shape + i as u8) % 4 {
                    0 => { m["id"] = id; }
                    1 => { d["id"] = id; }
                    2 => { m["id"] = json!({"fromMe": i % 2 == 0, "id": format!("M{i}")}); d["t"] = json!(1_700_000_000 + i as i64); }
                    _ => { m["id"] = json!("false_x@c.us_ABC"); }
                }
                m["_data"] = d;
                m
            })
            .collect();
        let mut reply = json!({"status": "success", "chat": chat, "messages": messages});
        if shape == 7 {
            reply["chat"] = json!("not an object");
        }
        let text = reply.to_string();
        if let Err(e) = agree(&text) {
            proptest::prop_assert!(false, "{}\n{}", text, e);
        }
    }

    fn well_formed_json_is_borrowed_untouched(s in ".*") {
        let json = serde_json::to_string(&s).unwrap();
        let repaired = repair_lone_surrogates(&json);
        proptest::prop_assert!(matches!(repaired, Cow::Borrowed(_)));
    }

    #[test]
    fn injected_lone_surrogates_always_parse(
        parts in proptest::collection::vec((".{0,6}", 0xD800u32..0xE000), 0..6)
    ) {
        let mut json = String::from("\"");
        for (text, unit) in &parts {
            let quoted = serde_json::to_string(text).unwrap();
            json.push_str(&quoted[1..quoted.len() - 1]);
            json.push_str(&format!("\\u{unit:04x}"));
        }
        json.push('"');
        let repaired = repair_lone_surrogates(&json);
        let parsed: Result<String, _> = serde_json::from_str(&repaired);
        proptest::prop_assert!(parsed.is_ok(), "{} → {}", json, repaired);
    }
}
