//! Silences with the real binary and the real command: a silence added next to a running
//! daemon mutes its rule within a second, survives a restart, and ends on time (or when
//! expired); what fired while muted is never sent.

use crate::delivery::{chat_ids, spawn_with_env, wait_first_sight, wait_logged, write_config};
use crate::support::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_mutes_its_rule_across_a_restart_until_it_ends_or_is_expired() {
    let chats = chat_ids("9665000099", 2);
    let gw = gateway(&quiet_chats(&chats)).await;
    let rx = receiver().await;
    let ws = Workspace::new();
    ws.write("rules/bot.yaml", &bot_rule("bot", &[rx.url("/bot")]));
    let cfg = write_config(&ws, &gw, &chats, "2s", 0.01, "");
    let cfg_arg = cfg.to_str().unwrap();
    let daemon = spawn_with_env(&cfg, &[]);
    wait_first_sight(&gw, &chats).await;

    // Rule `bot` in the first chat, for 8 s.
    let (code, out, err) = run_cli(
        &[
            "silence",
            "add",
            "--rule",
            "bot",
            "--chat",
            &chats[0],
            "--for",
            "8s",
            "--reason",
            "migration",
            "-c",
            cfg_arg,
        ],
        ws.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let added = Instant::now();
    assert!(out.starts_with("silence 1: rule bot in chat "), "{out}");
    assert!(out.contains("(migration)"), "{out}");
    let (_, list, _) = run_cli(&["silence", "list", "-c", cfg_arg], ws.path());
    assert!(
        list.lines()
            .nth(1)
            .is_some_and(|l| l.contains("active") && l.contains("migration")),
        "{list}"
    );
    wait_logged(
        "the daemon to see the silence",
        Duration::from_secs(10),
        &daemon,
        || daemon.output().contains("silences.changed"),
    )
    .await;

    gw.push_message(&chats[0], "bot while muted", false);
    gw.push_message(&chats[1], "bot in the other chat", false);
    wait_received(&rx, 1, "the other chat's webhook").await;
    wait_logged(
        "the muted firing logged",
        Duration::from_secs(10),
        &daemon,
        || daemon.output().contains("muted by silence 1"),
    )
    .await;
    assert_eq!(daemon.stop(), 0);

    // A restart: the silence is still in force from the first poll on.
    let daemon = spawn_with_env(&cfg, &[]);
    gw.push_message(&chats[0], "bot after the restart", false);
    wait_logged(
        "the second muted firing",
        Duration::from_secs(10),
        &daemon,
        || daemon.output().contains("muted by silence 1"),
    )
    .await;
    assert!(
        added.elapsed() < Duration::from_secs(8),
        "the machine was too slow: the silence ended before the test could use it"
    );

    // It ends on time: the next message fires.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(added.elapsed())).await;
    gw.push_message(&chats[0], "bot after the silence", false);
    wait_received(&rx, 2, "the webhook after the silence").await;

    // Expired by hand before its time: every rule in the second chat for an hour.
    let (code, out, _) = run_cli(
        &[
            "silence", "-c", cfg_arg, "add", "--chat", &chats[1], "--for", "1h", "--reason",
            "noisy",
        ],
        ws.path(),
    );
    assert_eq!(code, 0, "{out}");
    wait_logged(
        "the daemon to see the second silence",
        Duration::from_secs(10),
        &daemon,
        || daemon.output().contains("ids=[2]"),
    )
    .await;
    gw.push_message(&chats[1], "bot while the chat is muted", false);
    wait_logged(
        "the chat's muted firing",
        Duration::from_secs(10),
        &daemon,
        || daemon.output().contains("muted by silence 2"),
    )
    .await;
    let (code, out, _) = run_cli(&["silence", "expire", "2", "-c", cfg_arg], ws.path());
    assert_eq!((code, out.trim()), (0, "silence 2 ended"));
    let (code, _, err) = run_cli(&["silence", "expire", "2", "-c", cfg_arg], ws.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no silence 2 in force"), "{err}");
    wait_logged(
        "the daemon to see it ended",
        Duration::from_secs(10),
        &daemon,
        || {
            let out = daemon.output();
            out.rfind("ids=[2]")
                .is_some_and(|at| out[at..].contains("ids=[]"))
        },
    )
    .await;
    gw.push_message(&chats[1], "bot once the chat is heard again", false);
    wait_received(&rx, 3, "the webhook after the expiry").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(daemon.stop(), 0);

    let mut got = bodies(&rx.received());
    got.sort();
    assert_eq!(
        got,
        [
            "bot after the silence",
            "bot in the other chat",
            "bot once the chat is heard again"
        ],
        "what fired while muted is never sent"
    );
    let (_, list, _) = run_cli(&["silence", "list", "--all", "-c", cfg_arg], ws.path());
    assert_eq!(list.matches("ended").count(), 2, "{list}");
    let (_, list, _) = run_cli(&["silence", "list", "-c", cfg_arg], ws.path());
    assert_eq!(list.lines().count(), 1, "none in force: {list}");
    gw.shutdown().await;
}

#[test]
fn silence_add_refuses_what_would_mute_nothing_or_never_end() {
    let ws = Workspace::new();
    ws.write(
        "rules/bot.yaml",
        "id: bot\nmatch: { body: { any: [bot] } }\nactions: [ { log: { message: x } } ]\n",
    );
    ws.write(
        "cartat.yaml",
        "api: { base_url: \"http://127.0.0.1:9\", token: t }\nchats: [\"966500000000\"]\nstate: { path: ./state/s.db }\nrules: { paths: [./rules] }\n",
    );
    let cases: [(&[&str], &str); 4] = [
        (&["--for", "1h", "--reason", "x"], "--rule"),
        (&["--rule", "bot", "--reason", "x"], "--for"),
        (
            &[
                "--rule",
                "bot",
                "--for",
                "1h",
                "--reason",
                "x",
                "--chat",
                "+966500000000",
            ],
            "--chat",
        ),
        (
            &[
                "--rule",
                "bot",
                "--until",
                "2020-01-01T00:00:00Z",
                "--reason",
                "x",
            ],
            "not in the future",
        ),
    ];
    for (args, want) in cases {
        let (code, out, err) = run_cli(&[&["silence", "add"][..], args].concat(), ws.path());
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let (code, out, err) = run_cli(
        &[
            "silence", "add", "--rule", "bott", "--for", "1h", "--reason", "typo",
        ],
        ws.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: no rule `bott`"), "{err}");
    assert!(out.contains("rule bott in every chat muted until"), "{out}");
}
