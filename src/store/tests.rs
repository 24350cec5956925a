use super::*;
use crate::model::{ChatRuleState, Delivery};

fn delivery(id: &str, chat: &str, url: &str) -> Delivery {
    Delivery {
        delivery_id: id.into(),
        rule_id: "r".into(),
        chat_id: chat.into(),
        message_key: format!("false_{id}"),
        action_index: 0,
        url: url.into(),
        headers: vec![("X-Team".into(), "support".into())],
        body: "{}".into(),
    }
}

/// Runs `test` on a new SQLite file, then on a new PostgreSQL database (when the tests have
/// a server: see `crate::pgtest`): both backends must behave alike.
fn for_each_backend(test: impl Fn(&Store)) {
    let dir = tempfile::tempdir().unwrap();
    test(&Store::open(&dir.path().join("s.db")).unwrap());
    if let Some(url) = crate::pgtest::database() {
        test(&Store::open_postgres(&url, true).unwrap());
    }
}

fn key(id: &str) -> MessageKey {
    MessageKey {
        from_me: false,
        id: id.into(),
    }
}

#[test]
fn a_poll_commit_moves_the_watermark_and_queues_once() {
    for_each_backend(|store| {
        let (state, _) = store.load_chat("c@c.us").unwrap();
        assert!(!state.known);
        let commit = PollCommit {
            chat_id: "c@c.us".into(),
            watermark: 100,
            low_water: 0,
            seen: vec![(key("a"), 100, 7)],
            deliveries: vec![delivery("d1", "c@c.us", "http://x/")],
            lease: None,
            history: Vec::new(),
            digest_items: Vec::new(),
            cooldowns: vec![("r".into(), 5_000_000_000)],
            thresholds: vec![("t".into(), vec![1, 2])],
            chat_rules: vec![(
                "cr".into(),
                ChatRuleState {
                    since: Some(90),
                    fired: true,
                },
            )],
            script_state: vec![(
                "esc".into(),
                serde_json::json!({"pending": 2})
                    .as_object()
                    .unwrap()
                    .clone(),
            )],
            first_seen: 0,
            now_ms: 1_000,
        };
        assert_eq!(store.commit_poll(&commit).unwrap(), 1);
        assert_eq!(
            store.commit_poll(&commit).unwrap(),
            0,
            "the same delivery_id is never queued twice"
        );
        let (state, memory) = store.load_chat("c@c.us").unwrap();
        assert!(state.known);
        assert_eq!(state.watermark, 100);
        assert_eq!(state.seen.get(&key("a")).map(|s| s.fingerprint), Some(7));
        assert!(!state.seen.contains_key(&key("b")));
        assert_eq!(memory.cooldowns.get("r"), Some(&5_000_000_000));
        assert_eq!(memory.thresholds.get("t"), Some(&vec![1, 2]));
        assert_eq!(
            memory.chat_rules.get("cr"),
            Some(&ChatRuleState {
                since: Some(90),
                fired: true
            })
        );
        assert_eq!(memory.script_state["esc"]["pending"], 2);
        // Clearing: an empty hit list and a default timer delete their rows.
        let clear = PollCommit {
            chat_id: "c@c.us".into(),
            thresholds: vec![("t".into(), vec![])],
            chat_rules: vec![("cr".into(), ChatRuleState::default())],
            now_ms: 2_000,
            ..PollCommit::default()
        };
        store.commit_poll(&clear).unwrap();
        let memory = store.rule_memory("c@c.us").unwrap();
        assert!(memory.thresholds.is_empty() && memory.chat_rules.is_empty());
        let due = store.due(2_000, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].delivery.headers,
            vec![("X-Team".to_string(), "support".to_string())]
        );
    });
}

#[test]
fn due_returns_only_the_head_of_each_chat_and_endpoint() {
    for_each_backend(|store| {
        let commit = PollCommit {
            chat_id: "c".into(),
            deliveries: vec![
                delivery("1", "c", "http://a/"),
                delivery("2", "c", "http://a/"),
                delivery("3", "c", "http://b/"),
                delivery("4", "d", "http://a/"),
            ],
            now_ms: 0,
            ..PollCommit::default()
        };
        store.commit_poll(&commit).unwrap();
        let ids = |rows: Vec<OutboxRow>| {
            rows.into_iter()
                .map(|r| r.delivery.delivery_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(store.due(10, 10).unwrap()), ["1", "3", "4"]);
        // The head is retrying later: the row behind it waits (order per chat and endpoint).
        let head = store.due(10, 10).unwrap().remove(0);
        store
            .record_attempt(
                head.id,
                &AttemptRecord {
                    outcome: Lifecycle::Retry {
                        at_ms: 1_000,
                        attempt: 1,
                    },
                    status: Some(500),
                    error: Some("500".into()),
                },
                10,
            )
            .unwrap();
        assert_eq!(ids(store.due(20, 10).unwrap()), ["3", "4"]);
        assert_eq!(ids(store.due(1_000, 10).unwrap()), ["1", "3", "4"]);
        store
            .record_attempt(
                head.id,
                &AttemptRecord {
                    outcome: Lifecycle::Delivered { attempts: 1 },
                    status: Some(200),
                    error: None,
                },
                1_000,
            )
            .unwrap();
        assert_eq!(ids(store.due(1_000, 10).unwrap()), ["2", "3", "4"]);
    });
}

#[test]
fn dead_letters_can_be_requeued_with_their_id() {
    for_each_backend(|store| {
        store
            .commit_poll(&PollCommit {
                chat_id: "c".into(),
                deliveries: vec![delivery("dead1", "c", "http://a/")],
                ..PollCommit::default()
            })
            .unwrap();
        let row = store.due(0, 1).unwrap().remove(0);
        store
            .record_attempt(
                row.id,
                &AttemptRecord {
                    outcome: Lifecycle::Dead {
                        reason: DeadReason::Rejected("HTTP 400".into()),
                        attempts: 1,
                    },
                    status: Some(404),
                    error: Some("404".into()),
                },
                5,
            )
            .unwrap();
        assert!(store.due(100, 10).unwrap().is_empty());
        assert_eq!(store.list(Some("dead"), 10).unwrap().len(), 1);
        assert_eq!(store.requeue(Requeue::One("dead1"), 200).unwrap(), 1);
        let again = store.due(200, 10).unwrap();
        assert_eq!(again[0].delivery.delivery_id, "dead1");
        assert_eq!(again[0].attempts, 0);
    });
}

#[test]
fn a_410_disables_the_endpoint_until_the_config_changes() {
    for_each_backend(|store| {
        let queue = |ids: &[(&str, &str)]| {
            store
                .commit_poll(&PollCommit {
                    chat_id: "c".into(),
                    deliveries: ids.iter().map(|(id, url)| delivery(id, "c", url)).collect(),
                    ..PollCommit::default()
                })
                .unwrap();
        };
        queue(&[
            ("1", "http://gone/"),
            ("2", "http://gone/"),
            ("3", "http://ok/"),
        ]);
        let head = store.due(0, 10).unwrap().remove(0);
        assert_eq!(head.delivery.delivery_id, "1");
        let record = AttemptRecord {
            outcome: Lifecycle::Dead {
                reason: DeadReason::EndpointGone,
                attempts: 1,
            },
            status: Some(410),
            error: None,
        };
        let parked = store
            .disable_endpoint(head.id, "http://gone/", "cfg-A", &record, 5)
            .unwrap();
        assert_eq!(parked, 1, "the row behind it is parked too");
        assert_eq!(store.disabled_endpoints().unwrap(), ["http://gone/"]);
        let state_of = |id: &str| {
            store
                .list(None, 100)
                .unwrap()
                .into_iter()
                .find(|r| r.delivery.delivery_id == id)
                .unwrap()
                .state
        };
        assert_eq!(state_of("1"), "gone");
        assert_eq!(state_of("2"), "gone");
        assert_eq!(state_of("3"), "pending");
        // New rows for a disabled endpoint go straight to `gone`; other endpoints are untouched.
        queue(&[("4", "http://gone/"), ("5", "http://ok/")]);
        assert_eq!(state_of("4"), "gone");
        assert_eq!(state_of("5"), "pending");
        // The same config: still disabled. Another config: enabled again, old rows stay gone.
        assert!(store.reenable_endpoints("cfg-A").unwrap().is_empty());
        assert_eq!(store.reenable_endpoints("cfg-B").unwrap(), ["http://gone/"]);
        assert!(store.disabled_endpoints().unwrap().is_empty());
        queue(&[("6", "http://gone/")]);
        assert_eq!(state_of("6"), "pending");
        assert_eq!(state_of("4"), "gone");
        // `outbox retry --dead` re-sends the parked rows with their ids.
        assert_eq!(store.requeue(Requeue::AllDead, 10).unwrap(), 3);
        assert_eq!(state_of("1"), "pending");
    });
}

#[test]
fn an_operator_retry_enables_a_disabled_endpoint() {
    for_each_backend(|store| {
        store
            .commit_poll(&PollCommit {
                chat_id: "c".into(),
                deliveries: vec![delivery("1", "c", "http://gone/")],
                ..PollCommit::default()
            })
            .unwrap();
        let head = store.due(0, 10).unwrap().remove(0);
        let record = AttemptRecord {
            outcome: Lifecycle::Dead {
                reason: DeadReason::EndpointGone,
                attempts: 1,
            },
            status: Some(410),
            error: None,
        };
        store
            .disable_endpoint(head.id, "http://gone/", "cfg", &record, 5)
            .unwrap();
        assert_eq!(store.requeue(Requeue::One("1"), 10).unwrap(), 1);
        assert!(store.disabled_endpoints().unwrap().is_empty());
        let row = store.due(10, 10).unwrap().remove(0);
        assert_eq!(row.lifecycle(), Some(Lifecycle::Pending));
    });
}

#[test]
fn a_second_store_on_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let _first = Store::open(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("already running"), "{err}");
}

#[test]
fn a_broken_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let garbage = b"this is not a database, but it is someone's file".repeat(100);
    std::fs::write(&path, &garbage).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Broken { .. }), "{err}");
    assert!(err.to_string().contains("left untouched"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

#[test]
fn pruning_keeps_ids_at_or_above_the_low_water_mark() {
    for_each_backend(|store| {
        let seen = vec![
            (key("old"), 90, 1),
            (key("edge"), 100, 1),
            (key("new"), 110, 1),
        ];
        store
            .commit_poll(&PollCommit {
                chat_id: "c".into(),
                watermark: 110,
                low_water: 100,
                seen,
                ..PollCommit::default()
            })
            .unwrap();
        let (state, _) = store.load_chat("c").unwrap();
        assert_eq!(state.seen.len(), 2);
        assert!(!state.seen.contains_key(&key("old")));
        assert_eq!(state.low_water, 100);
    });
}

fn simple_commit(chat: &str, ts: i64) -> PollCommit {
    PollCommit {
        chat_id: chat.into(),
        watermark: ts,
        seen: vec![(key(&format!("m{ts}")), ts, 1)],
        deliveries: vec![delivery(&format!("{chat}:{ts}"), chat, "http://x/")],
        now_ms: 1_000,
        ..PollCommit::default()
    }
}

#[test]
fn a_group_commit_writes_every_poll_but_the_one_that_fails() {
    for_each_backend(|store| {
        match store {
            Store::Sqlite(s) => s
                .conn()
                .execute_batch(
                    "CREATE TRIGGER refuse BEFORE INSERT ON chats WHEN NEW.chat_id = 'bad@c.us'
                     BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
                )
                .unwrap(),
            Store::Postgres(p) => p
                .execute_batch(
                    "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN
                       IF NEW.chat_id = 'bad@c.us' THEN RAISE EXCEPTION 'refused by the test'; END IF;
                       RETURN NEW; END $$ LANGUAGE plpgsql;
                     CREATE TRIGGER refuse BEFORE INSERT ON chats FOR EACH ROW EXECUTE FUNCTION refuse();",
                )
                .unwrap(),
        }
        let (a, bad, b) = (
            simple_commit("a@c.us", 100),
            simple_commit("bad@c.us", 100),
            simple_commit("b@c.us", 200),
        );
        let results = store.commit_polls(&[&a, &bad, &b]);
        assert_eq!(results[0], Ok(1));
        assert!(
            results[1]
                .as_ref()
                .unwrap_err()
                .contains("refused by the test"),
            "{:?}",
            results[1]
        );
        assert_eq!(results[2], Ok(1));
        let (sa, _) = store.load_chat("a@c.us").unwrap();
        let (sbad, _) = store.load_chat("bad@c.us").unwrap();
        let (sb, _) = store.load_chat("b@c.us").unwrap();
        assert!(sa.known && sa.watermark == 100 && sa.seen.len() == 1);
        assert!(
            !sbad.known && sbad.seen.is_empty(),
            "the failed poll left nothing"
        );
        assert!(sb.known && sb.watermark == 200);
        let queued = store.list(None, 100).unwrap().len();
        assert_eq!(queued, 2, "the failed poll's delivery is not queued");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_queue_commits_concurrent_polls_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    let queue = group::CommitQueue::start(store.clone()).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let c = simple_commit(&format!("c{}@c.us", i % 20), 1_000 + i);
                let (back, result) = queue.commit(c.clone()).await;
                assert_eq!(back.chat_id, c.chat_id, "the commit comes back");
                result
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(1));
    }
    let queued: i64 = store
        .sqlite()
        .conn()
        .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(queued, 200);
    for i in 0..20 {
        let (s, _) = store.load_chat(&format!("c{i}@c.us")).unwrap();
        assert_eq!(s.seen.len(), 10, "chat {i}");
    }
}

#[test]
fn a_cached_statement_is_planned_once_whatever_it_is_bound_to() {
    // Re-planning on every new binding cost a tenth of the daemon's CPU (see `plan_once`).
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    let groups: Vec<(String, String)> = (0..50)
        .map(|i| {
            (
                format!("96650000{i:04}@c.us"),
                format!("http://hooks.test/{i}"),
            )
        })
        .collect();
    for _ in 0..3 {
        store.heads(&groups).unwrap();
    }
    let conn = store.sqlite().conn();
    let stmt = conn.prepare_cached(HEADS).unwrap();
    assert_eq!(
        stmt.get_status(rusqlite::StatementStatus::RePrepare),
        0,
        "re-prepared on new bindings"
    );
}

#[test]
fn the_due_scan_needs_no_temporary_table_or_sort() {
    // Each temporary table (a materialized subquery, an IN list, a sort) is a page cache
    // allocated and freed per query: a tenth of the daemon's CPU at workload A, where the
    // dispatcher scans on every freed slot.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    let conn = store.sqlite().conn();
    for (sql, params) in [(DUE, 3), (NEXT_DUE, 0)] {
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(
                rusqlite::params_from_iter(
                    [&0i64 as &dyn rusqlite::ToSql, &10i64, &"[]"]
                        .into_iter()
                        .take(params),
                ),
                |r| r.get::<_, String>(3),
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let text = plan.join("\n");
        for bad in ["TEMP B-TREE", "MATERIALIZE", "LIST SUBQUERY", "SCAN o"] {
            assert!(!text.contains(bad), "{bad} in the plan of {sql}:\n{text}");
        }
        assert!(text.contains("outbox_by_state"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_through_the_commit_queue_are_recorded_each_once_and_a_bad_one_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    store
        .commit_poll(&PollCommit {
            chat_id: "c".into(),
            deliveries: (0..20)
                .map(|i| delivery(&i.to_string(), "c", &format!("http://ok/{i}")))
                .chain([
                    delivery("g1", "c", "http://gone/"),
                    delivery("g2", "c", "http://gone/"),
                ])
                .collect(),
            ..PollCommit::default()
        })
        .unwrap();
    let rows = store.list(None, 100).unwrap();
    let id_of = |d: &str| {
        rows.iter()
            .find(|r| r.delivery.delivery_id == d)
            .unwrap()
            .id
    };
    let delivered = AttemptRecord {
        outcome: Lifecycle::Delivered { attempts: 1 },
        status: Some(200),
        error: None,
    };
    let queue = group::CommitQueue::start(store.clone()).unwrap();
    // Twenty deliveries finishing at once, a 410, and an outcome that cannot be stored.
    let mut tasks: Vec<_> = (0..20)
        .map(|i| {
            let (queue, record) = (queue.clone(), delivered.clone());
            let id = id_of(&i.to_string());
            tokio::spawn(async move {
                queue
                    .record(Outcome {
                        id,
                        record,
                        now_ms: 7,
                        gone: None,
                    })
                    .await
            })
        })
        .collect();
    let gone = AttemptRecord {
        outcome: Lifecycle::Dead {
            reason: DeadReason::EndpointGone,
            attempts: 1,
        },
        status: Some(410),
        error: None,
    };
    let id = id_of("g1");
    let q = queue.clone();
    tasks.push(tokio::spawn(async move {
        q.record(Outcome {
            id,
            record: gone,
            now_ms: 7,
            gone: Some(("http://gone/".into(), "cfg".into())),
        })
        .await
    }));
    let bad = queue
        .record(Outcome {
            id: id_of("0"),
            record: AttemptRecord {
                outcome: Lifecycle::InFlight { attempt: 1 },
                status: None,
                error: None,
            },
            now_ms: 7,
            gone: None,
        })
        .await;
    assert!(
        bad.unwrap_err().contains("in-flight"),
        "an in-flight outcome is refused"
    );
    let results: Vec<_> = futures_join(tasks).await;
    assert!(results[..20].iter().all(|r| *r == Ok(None)), "{results:?}");
    assert_eq!(results[20], Ok(Some(1)), "the 410 parked the row behind it");
    let state_of = |d: &str| {
        store
            .list(None, 100)
            .unwrap()
            .into_iter()
            .find(|r| r.delivery.delivery_id == d)
            .unwrap()
            .state
    };
    for i in 0..20 {
        assert_eq!(state_of(&i.to_string()), "delivered", "delivery {i}");
    }
    assert_eq!(state_of("g1"), "gone");
    assert_eq!(state_of("g2"), "gone");
    assert_eq!(store.disabled_endpoints().unwrap(), ["http://gone/"]);
}

async fn futures_join<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[test]
fn the_log_is_checkpointed_by_its_own_thread_not_by_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = Store::open(&path).unwrap();
    let checkpointer = store.start_checkpointer().unwrap();
    let auto: i64 = store
        .sqlite()
        .conn()
        .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
        .unwrap();
    assert_eq!(auto, 0, "a commit never checkpoints");
    let db_len = || std::fs::metadata(&path).unwrap().len();
    let before = db_len();
    // Commits until the log is past the threshold: nothing reaches the state file itself yet.
    let mut n = 0;
    let wal = dir.path().join("s.db-wal");
    while std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) <= sqlite::CHECKPOINT_LOG_BYTES {
        let seen = (0..500)
            .map(|i| (key(&format!("{n}-{i}-{}", "x".repeat(40))), i as i64, 0))
            .collect();
        store
            .commit_poll(&PollCommit {
                chat_id: format!("c{n}"),
                watermark: 1,
                seen,
                ..PollCommit::default()
            })
            .unwrap();
        n += 1;
    }
    assert!(db_len() < before + 1_000_000, "a commit checkpointed");
    // The checkpoint thread moves the log into the file within a few of its rounds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db_len() < before + 1_000_000 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(db_len() >= before + 1_000_000, "no checkpoint in 10 s");
    drop(checkpointer);
}

#[test]
fn a_second_daemon_on_the_same_postgres_database_is_refused_and_a_command_is_not() {
    let Some(url) = crate::pgtest::database() else {
        return;
    };
    let first = Store::open_postgres(&url, true).unwrap();
    // The same database, with a password the server does not ask for (trust): never shown.
    let with_password = format!("{url}?password=s3cret");
    let e = Store::open_postgres(&with_password, true).unwrap_err();
    assert!(matches!(e, StoreError::LockedDatabase { .. }), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    // `outbox list` and `silence` beside the daemon.
    let beside = Store::open_postgres(&url, false).unwrap();
    assert!(beside.list(None, 10).unwrap().is_empty());
    drop(first);
    // The daemon's connection closed with its last handle: the lock is free again.
    let mut again = None;
    for _ in 0..50 {
        match Store::open_postgres(&url, true) {
            Ok(s) => {
                again = Some(s);
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    assert!(again.is_some(), "the lock outlived its daemon");
}

#[test]
fn a_postgres_url_s_password_is_never_shown() {
    assert_eq!(
        postgres::redacted("postgres://app:s3cret@db.example.com:5432/cartat"),
        "postgres://app@db.example.com:5432/cartat"
    );
    assert_eq!(
        postgres::redacted("postgres://app@db:5432/c"),
        "postgres://app@db:5432/c"
    );
    assert_eq!(
        postgres::redacted("postgres://app@db/c?password=s3cret&sslmode=disable"),
        "postgres://app@db:5432/c"
    );
    assert!(!postgres::redacted("postgres://app:s3cret@[bad").contains("s3cret"));
    let e = Store::open_postgres("postgres://app:s3cret@127.0.0.1:1/cartat", true).unwrap_err();
    assert!(!e.to_string().contains("s3cret"), "{e}");
    assert!(
        e.to_string().contains("postgres://app@127.0.0.1:1/cartat"),
        "{e}"
    );
}

fn entry(chat: &str, at_ms: i64, rules: &[(&str, &str)]) -> HistoryEntry {
    HistoryEntry {
        id: 0,
        at_ms,
        chat_id: chat.into(),
        message_id: Some(format!("false_{chat}_{at_ms}")),
        kind: Some("chat".into()),
        from_me: false,
        rules: rules
            .iter()
            .map(|(r, o)| crate::model::RuleTrace {
                rule: (*r).into(),
                outcome: (*o).into(),
                why: (*o != "fired").then(|| "body: no keyword «بوت»".into()),
            })
            .collect(),
        not_candidates: 2,
    }
}

#[test]
fn the_run_history_is_written_with_the_poll_searched_and_pruned() {
    for_each_backend(|store| {
        let poll = |chat: &str, at_ms: i64, history: Vec<HistoryEntry>| PollCommit {
            chat_id: chat.into(),
            watermark: at_ms / 1000,
            now_ms: at_ms,
            history,
            ..PollCommit::default()
        };
        store
            .commit_poll(&poll(
                "sales/a@c.us",
                500,
                vec![entry("sales/a@c.us", 500, &[("bot", "fired")])],
            ))
            .unwrap();
        store
            .commit_poll(&poll(
                "a@c.us",
                1_000,
                vec![entry(
                    "a@c.us",
                    1_000,
                    &[("bot", "fired"), ("bot-2", "not_matched")],
                )],
            ))
            .unwrap();
        store
            .commit_poll(&poll(
                "b@c.us",
                2_000,
                vec![entry("b@c.us", 2_000, &[("sla", "counted")])],
            ))
            .unwrap();
        store
            .commit_poll(&poll(
                "a@c.us",
                3_000,
                vec![entry("a@c.us", 3_000, &[("sla", "fired")])],
            ))
            .unwrap();
        let q = |chat: Option<&str>, rule: Option<&str>| {
            store
                .history(&HistoryQuery {
                    chat: chat.map(str::to_string),
                    rule: rule.map(str::to_string),
                    limit: 10,
                })
                .unwrap()
        };
        let all = q(None, None);
        assert_eq!(
            all.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            [3_000, 2_000, 1_000, 500],
            "newest first"
        );
        assert!(all.iter().all(|e| e.id > 0));
        assert_eq!(
            all[2].rules[1].why.as_deref(),
            Some("body: no keyword «بوت»")
        );
        // A chat without its account: that id in every account; with it, that chat only.
        assert_eq!(q(Some("a@c.us"), None).len(), 3);
        assert_eq!(q(Some("sales/a@c.us"), None).len(), 1);
        assert_eq!(q(Some("support/a@c.us"), None).len(), 0);
        assert_eq!(q(Some("c.us"), None).len(), 0, "a whole id, not its end");
        assert_eq!(q(None, Some("sla")).len(), 2);
        // `bot` names a whole rule, not a prefix of `bot-2`.
        assert_eq!(q(None, Some("bot")).len(), 2);
        assert_eq!(q(None, Some("bo")).len(), 0);
        assert_eq!(q(Some("b@c.us"), Some("bot")).len(), 0);

        // Retention: by age, then by count (the newest kept).
        assert_eq!(store.prune_history(10, 1_500).unwrap(), 2);
        assert_eq!(q(None, None).len(), 2);
        assert_eq!(store.prune_history(1, 0).unwrap(), 1);
        let left = q(None, None);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].at_ms, 3_000);
        assert_eq!(store.prune_history(1, 0).unwrap(), 0, "nothing more to cut");
    });
}

#[test]
fn a_joiner_takes_chats_only_once_the_others_lowered_their_budget_share_a_window_ago() {
    let Some(url) = crate::pgtest::database() else {
        return;
    };
    let store = Store::open_postgres(&url, false).unwrap();
    let chats: Vec<String> = (0..6).map(|i| format!("c{i}@c.us")).collect();
    let wait = postgres::JoinWait {
        window_ms: 400,
        settle_ms: 60_000,
    };
    let cycle = |me: &str, joining: bool| {
        store
            .lease_cycle(me, &chats, 10_000, joining.then_some(wait))
            .unwrap()
    };
    // Alone: settled at once, every chat taken.
    let a = cycle("a", true);
    assert!(a.settled);
    assert_eq!((a.live, a.held.len()), (1, 6));
    // B joins: A still takes the share of one instance, so B takes nothing.
    let b = cycle("b", true);
    assert_eq!((b.live, b.settled, b.held.len()), (2, false, 0));
    // A's cycle lowers its share (and gives up what is over it); until a window has passed
    // since, B still waits.
    let a = cycle("a", false);
    assert_eq!(a.live, 2);
    let b = cycle("b", true);
    assert_eq!((b.settled, b.held.len()), (false, 0));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let b = cycle("b", true);
    assert!(b.settled);
    assert_eq!(b.held.len(), 3, "B takes its share");
    // An instance that does not say its share (an older version, divisor 0) counts as lowered
    // only `settle_ms` after the joiner's start.
    let mut raw = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    raw.execute(
        "INSERT INTO instances (id, seen_at, started_at) VALUES ('old', (extract(epoch from clock_timestamp()) * 1000)::BIGINT, 0)",
        &[],
    )
    .unwrap();
    let c = cycle("c", true);
    assert_eq!((c.live, c.settled, c.held.len()), (4, false, 0));
    // No window to wait and no settle time: only what the others said counts.
    let at_once = || {
        store
            .lease_cycle(
                "c",
                &chats,
                10_000,
                Some(postgres::JoinWait {
                    window_ms: 0,
                    settle_ms: 0,
                }),
            )
            .unwrap()
    };
    let c = at_once();
    assert!(
        !c.settled,
        "a and b have not lowered theirs to a quarter yet"
    );
    cycle("a", false);
    cycle("b", false);
    let c = at_once();
    assert!(
        c.settled,
        "a and b said a quarter; the old one is past settle_ms"
    );
}
